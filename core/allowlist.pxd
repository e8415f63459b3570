"""C-level declarations of regionlock.core.allowlist for modules that cimport it: packed serials, batch lookups."""

from libc.stdint cimport int64_t, uint8_t, uint16_t, uint64_t


cdef extern from "allowlist_records.h" nogil:
    int RL_REC_LENGTH_SHIFT
    int RL_REC_MARKET_MASK
    int RL_REC_LENGTH_MASK
    int rl_rec_length(uint16_t hdr) noexcept
    Py_ssize_t rl_packed_size(int length) noexcept
    uint64_t rl_fmix64(uint64_t h) noexcept


# A serial being looked up or sorted: 32 bytes. hdr = (length - 1) << RL_REC_LENGTH_SHIFT | market id.
ctypedef struct Rec:
    uint64_t hash
    uint16_t key[11]
    uint16_t hdr


cdef int pack_serial(const uint8_t* s, Py_ssize_t n, Rec* rec) noexcept nogil
cdef int pack_str(object serial, Rec* rec) except -1
cdef str serial_text(const Rec* rec)
cdef int find_many(object allowlist, const Rec* q, int64_t* out, Py_ssize_t n) except -1
