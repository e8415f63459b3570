"""Cython's view of trie.h: the geo trie's node layout and walk constants, cimported by the reader and the builder."""

from libc.stdint cimport uint32_t, uint64_t


cdef extern from "trie.h" nogil:
    uint32_t RL_PTR
    int RL_V6_DIRECT_BITS
    int RL_STRIDE
    int RL_MAX_OFFSET
    int RL_MAX_DEPTH
    uint32_t RL_LEAF_REGION_MASK
    int RL_LEAF_PREFIX_SHIFT
    uint32_t RL_LEAF_PREFIX_MASK
    ctypedef struct rl_node:
        uint64_t vector
        uint64_t leafvec
        uint32_t base0
        uint32_t base1
    uint32_t rl_bits6(uint64_t hi, uint64_t lo, int offset) noexcept
