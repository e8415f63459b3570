"""C-level declarations of regionlock.core.ipaddr, for the geo reader that cimports it."""

from libc.stdint cimport uint64_t

from regionlock.core.geo_walk cimport rl_addr


cdef int parse_text(const char* s, Py_ssize_t n, rl_addr* a) noexcept nogil
cdef int parse_object(object ip, rl_addr* a) except -1
cdef Py_ssize_t format_network_text(char* buf, bint v6, uint64_t hi, uint64_t lo, int prefix) noexcept nogil
cdef str format_network(bint v6, uint64_t hi, uint64_t lo, int prefix)
