"""Cython's view of growbuf.h: the growable byte buffer the geo build loops (mmdb_read, geo_compile) share."""


cdef extern from "growbuf.h":
    ctypedef struct rl_buf:
        char* data
        size_t length
        size_t capacity
    int rl_buf_reserve(rl_buf* b, size_t extra) except -1
    int rl_buf_push(rl_buf* b, const void* item, size_t size) except -1
