"""Cython's view of geo_walk.h: the reader's tables and its single and batch lookups, cimported by geo.pyx."""

from libc.stdint cimport uint8_t, uint32_t, uint64_t

from regionlock.core.trie cimport rl_node


cdef extern from "geo_walk.h" nogil:
    int RL_MAX_ALIASES
    ctypedef struct rl_addr:
        int v6
        uint64_t hi
        uint64_t lo
    ctypedef struct rl_alias:
        uint64_t hi
        uint64_t lo
        uint64_t mhi
        uint64_t mlo
        int len
    ctypedef struct rl_tables:
        const uint32_t* tbl24
        const uint32_t* tbl8
        uint32_t ngroups
        const uint32_t* direct
        const rl_node* nodes
        uint32_t nnodes
        const uint32_t* leaves
        uint32_t nleaves
        const rl_alias* aliases
        uint32_t naliases
        const uint64_t* alias_top
    ctypedef void (*rl_walk_fn)(const rl_tables*, const rl_addr*, uint32_t*, Py_ssize_t) noexcept nogil
    uint64_t rl_load_be64(const uint8_t* p) noexcept
    void rl_packed6_to_addr(const uint8_t* p, rl_addr* a) noexcept
    int rl_mask_network(const rl_addr* a, uint32_t leaf, uint64_t* hi, uint64_t* lo) noexcept
    uint32_t rl_leaf4(const rl_tables* t, uint32_t a) noexcept
    uint32_t rl_leaf6(const rl_tables* t, const rl_addr* a) noexcept
    void rl_walk_sw(const rl_tables* t, const rl_addr* a, uint32_t* out, Py_ssize_t n) noexcept
    void rl_walk_hw(const rl_tables* t, const rl_addr* a, uint32_t* out, Py_ssize_t n) noexcept
    int rl_have_hw_popcount() noexcept
