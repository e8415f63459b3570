/* The geo trie's node layout and walk constants: one definition for the reader (geo.pyx) and the builder (geo_compile.pyx). */
#ifndef REGIONLOCK_TRIE_H
#define REGIONLOCK_TRIE_H

#include <stdint.h>

/* A table entry with this bit set points at a tbl8 group (IPv4) or a Poptrie node (IPv6); clear, it is a leaf. */
#define RL_PTR 0x80000000u
/* IPv6 starts at a direct table indexed by the top 16 bits, then walks nodes of 6-bit stride. */
#define RL_V6_DIRECT_BITS 16
#define RL_STRIDE 6
/* The last node a walk may visit starts at bit 124: offsets 16, 22, ..., 124 are 19 levels. */
#define RL_MAX_OFFSET 124
#define RL_MAX_DEPTH ((RL_MAX_OFFSET - RL_V6_DIRECT_BITS) / RL_STRIDE + 1)

/* A leaf is a region id (0: in no network) | the matched network's prefix length << RL_LEAF_PREFIX_SHIFT. */
#define RL_LEAF_REGION_MASK 0xFFFFu
#define RL_LEAF_PREFIX_SHIFT 16
#define RL_LEAF_PREFIX_MASK 0xFFu

/* A Poptrie node, 24 bytes in the file: child v is a node if bit v of vector is set, else a leaf. */
typedef struct { uint64_t vector; uint64_t leafvec; uint32_t base0; uint32_t base1; } rl_node;

/* The 6 bits of a 128-bit address hi:lo starting at bit offset (0 = most significant), zero-padded past 128. */
static inline uint32_t rl_bits6(uint64_t hi, uint64_t lo, int offset) {
    if (offset <= 58) return (uint32_t)(hi >> (58 - offset)) & 63;
    if (offset >= 64) {
        offset -= 64;
        if (offset <= 58) return (uint32_t)(lo >> (58 - offset)) & 63;
        return (uint32_t)(lo << (offset - 58)) & 63;
    }
    return (uint32_t)((hi << (offset - 58)) | (lo >> (122 - offset))) & 63;
}

#endif
