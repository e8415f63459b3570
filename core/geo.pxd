"""C-level declarations of regionlock.core.geo for modules that cimport it: batch lookups of address texts."""

from libc.stdint cimport int32_t, uint32_t, uint64_t


cdef struct GeoHit:
    uint64_t hi  # the matched network's address (IPv4: in lo), masked to prefix
    uint64_t lo
    uint32_t region  # region id, 0: in no network
    int32_t prefix  # prefix length of the matched network; -1: not an IP address
    int32_t v6


cdef int lookup_texts(object db, const char* const* texts, const Py_ssize_t* lengths, GeoHit* out,
                      Py_ssize_t n) except -1
cdef Py_ssize_t format_hit_network(const GeoHit* hit, char* buf) noexcept nogil
