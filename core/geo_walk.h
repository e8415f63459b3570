/* The geo reader's lookups in C: IPv4 DIR-24-8, IPv6 Poptrie with the IPv4 aliases, and the interleaved batch walk. */
#ifndef REGIONLOCK_GEO_WALK_H
#define REGIONLOCK_GEO_WALK_H

/* Py_ssize_t, and Python.h first as it must be; the Cython module has included it already. */
#include <Python.h>
#include <stdint.h>

#include "trie.h"

/* The payload layout, the leaf encoding and the Poptrie child rule are documented atop geo.pyx. */
#define RL_LANES 16
#define RL_MAX_ALIASES 16
typedef struct { int v6; uint64_t hi; uint64_t lo; } rl_addr;  /* IPv4: lo, with hi == 0 */
/* An IPv6 alias of the IPv4 space: (hi, lo) & (mhi, mlo) == (hi, lo) inside it; the IPv4 address is the 32
   bits after its first len bits. */
typedef struct { uint64_t hi; uint64_t lo; uint64_t mhi; uint64_t mlo; int len; } rl_alias;
typedef struct {
    const uint32_t* tbl24; const uint32_t* tbl8; uint32_t ngroups;
    const uint32_t* direct; const rl_node* nodes; uint32_t nnodes; const uint32_t* leaves; uint32_t nleaves;
    const rl_alias* aliases; uint32_t naliases;
    const uint64_t* alias_top;  /* 65536 bits: bit v set if an alias holds addresses whose top 16 bits are v */
} rl_tables;

/* A big-endian 64-bit load, byte by byte: no alignment needed. */
static inline uint64_t rl_load_be64(const uint8_t* p) {
    uint64_t v = 0;
    int i;
    for (i = 0; i < 8; i++) v = (v << 8) | p[i];
    return v;
}
/* 16 bytes in network order (ip.packed) as an address; an IPv4-mapped one becomes IPv4, as parsing does. */
static inline void rl_packed6_to_addr(const uint8_t* p, rl_addr* a) {
    a->hi = rl_load_be64(p);
    a->lo = rl_load_be64(p + 8);
    a->v6 = !(a->hi == 0 && (a->lo >> 32) == 0xFFFF);
    if (!a->v6) a->lo &= 0xFFFFFFFFULL;
}
/* The prefix length of a leaf's network (clamped to the address family), and the address masked to it. */
static inline int rl_mask_network(const rl_addr* a, uint32_t leaf, uint64_t* hi, uint64_t* lo) {
    int prefix = (leaf >> RL_LEAF_PREFIX_SHIFT) & RL_LEAF_PREFIX_MASK;
    if (a->v6) {
        if (prefix > 128) prefix = 128;
        *hi = a->hi & (prefix == 0 ? 0 : prefix < 64 ? (~(uint64_t)0) << (64 - prefix) : ~(uint64_t)0);
        *lo = a->lo & (prefix <= 64 ? 0 : prefix < 128 ? (~(uint64_t)0) << (128 - prefix) : ~(uint64_t)0);
    } else {
        if (prefix > 32) prefix = 32;
        *hi = 0;
        *lo = a->lo & (prefix == 0 ? 0 : (0xFFFFFFFFULL << (32 - prefix)) & 0xFFFFFFFFULL);
    }
    return prefix;
}
static inline unsigned rl_popcount(uint64_t x) {
    x = x - ((x >> 1) & 0x5555555555555555ULL);
    x = (x & 0x3333333333333333ULL) + ((x >> 2) & 0x3333333333333333ULL);
    x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0FULL;
    return (unsigned)((x * 0x0101010101010101ULL) >> 56);
}
static inline uint32_t rl_leaf4(const rl_tables* t, uint32_t a) {
    uint32_t e = t->tbl24[a >> 8];
    if (e & RL_PTR) {
        e &= ~RL_PTR;
        if (e >= t->ngroups) return 0;
        e = t->tbl8[((size_t)e << 8) | (a & 255)];
        if (e & RL_PTR) return 0;
    }
    return e;
}
/* The 32 bits of an address after its first len bits (0 <= len <= 96). */
static inline uint32_t rl_bits32(uint64_t hi, uint64_t lo, int len) {
    if (len <= 32) return (uint32_t)(hi >> (32 - len));
    if (len < 64) return (uint32_t)((hi << (len - 32)) | (lo >> (96 - len)));
    return (uint32_t)(lo >> (96 - len));
}
/* 1 with *out the leaf (prefix length in IPv6 bits) if an IPv6 address is in an alias of the IPv4 space,
   else 0: one bit test for most addresses, then a compare or two per alias. */
static inline int rl_alias_leaf(const rl_tables* t, const rl_addr* a, uint32_t* out) {
    uint32_t k, e, top = (uint32_t)(a->hi >> 48);
    const rl_alias* al;
    if (!((t->alias_top[top >> 6] >> (top & 63)) & 1)) return 0;
    for (k = 0; k < t->naliases; k++) {
        al = &t->aliases[k];
        if (((a->hi & al->mhi) == al->hi) & ((a->lo & al->mlo) == al->lo)) {
            e = rl_leaf4(t, rl_bits32(a->hi, a->lo, al->len));
            *out = e ? e + ((uint32_t)al->len << RL_LEAF_PREFIX_SHIFT) : 0;
            return 1;
        }
    }
    return 0;
}
/* One step of an IPv6 walk at node *index: 1 = went down a level, 0 = done with *out set. */
static inline __attribute__((always_inline)) int rl_step6(
        const rl_tables* t, const rl_addr* a, uint32_t* index, int* offset, uint32_t* out, const int hw) {
    const rl_node* node;
    uint64_t bit, below;
    unsigned count;
    uint32_t li;
    if (*index >= t->nnodes || *offset > RL_MAX_OFFSET) { *out = 0; return 0; }
    node = &t->nodes[*index];
    bit = (uint64_t)1 << rl_bits6(a->hi, a->lo, *offset);
    below = bit | (bit - 1);
    if (node->vector & bit) {
        count = hw ? (unsigned)__builtin_popcountll(node->vector & below) : rl_popcount(node->vector & below);
        *index = node->base1 + count - 1;
        *offset += RL_STRIDE;
        return 1;
    }
    count = hw ? (unsigned)__builtin_popcountll(node->leafvec & below) : rl_popcount(node->leafvec & below);
    li = node->base0 + count - 1;
    *out = (count && li < t->nleaves) ? t->leaves[li] : 0;
    return 0;
}
static inline uint32_t rl_leaf6(const rl_tables* t, const rl_addr* a) {
    uint32_t e, index, out;
    int offset = RL_V6_DIRECT_BITS;
    if (rl_alias_leaf(t, a, &out)) return out;
    e = t->direct[a->hi >> (64 - RL_V6_DIRECT_BITS)];
    if (!(e & RL_PTR)) return e;
    index = e & ~RL_PTR;
    while (rl_step6(t, a, &index, &offset, &out, 0)) {}
    return out;
}
/* The batch walk's lanes: per in-flight IPv6 lookup, the address bits not yet used (hi:lo shifted left, the
   next 6-bit chunk on top), the node index, the steps left before the depth limit, and the input position. */
typedef struct {
    uint64_t hi[RL_LANES]; uint64_t lo[RL_LANES]; uint32_t index[RL_LANES]; int left[RL_LANES];
    Py_ssize_t pos[RL_LANES];
} rl_lanes;
/* Start the walk of the next IPv6 address of a[*i..n) in lane k (finishing IPv4, alias and direct-table
   hits on the way): 1 if one was started, 0 at the end of the input. The lane's first node is prefetched. */
static inline __attribute__((always_inline)) int rl_take6(
        const rl_tables* t, const rl_addr* a, uint32_t* out, Py_ssize_t n, Py_ssize_t* i, rl_lanes* s, int k) {
    uint32_t e;
    Py_ssize_t j;
    for (j = *i; j < n; j++) {
        if (!a[j].v6) { out[j] = rl_leaf4(t, (uint32_t)a[j].lo); continue; }
        if (rl_alias_leaf(t, &a[j], &out[j])) continue;
        e = t->direct[a[j].hi >> (64 - RL_V6_DIRECT_BITS)];
        if (!(e & RL_PTR)) { out[j] = e; continue; }
        s->index[k] = e & ~RL_PTR;
        s->hi[k] = (a[j].hi << 16) | (a[j].lo >> 48);
        s->lo[k] = a[j].lo << 16;
        s->left[k] = RL_MAX_DEPTH;  /* nodes at bit offsets 16, 22, ..., 124: as rl_leaf6 */
        s->pos[k] = j;
        *i = j + 1;
        __builtin_prefetch(&t->nodes[s->index[k]]);
        return 1;
    }
    *i = n;
    return 0;
}
/* out[i] = the leaf of a[i], as rl_leaf6 and rl_leaf4 give it. IPv6 walks run interleaved in lanes so that
   their memory reads overlap: each step prefetches the lane's next node, and a finished lane at once takes
   the next address. */
static inline __attribute__((always_inline)) void rl_walk_body(
        const rl_tables* tables, const rl_addr* a, uint32_t* out, Py_ssize_t n, const int hw) {
    const rl_tables copy = *tables;  /* a local copy: the stores to out can't alias it */
    const rl_tables* t = &copy;
    rl_lanes s;
    Py_ssize_t i = 0;
    int k, active = 0;
    const rl_node* node;
    uint64_t x, below;
    unsigned v, count;
    uint32_t index, li;
    while (active < RL_LANES && rl_take6(t, a, out, n, &i, &s, active))
        active++;
    while (active) {
        for (k = 0; k < active;) {
            index = s.index[k];
            if (__builtin_expect(index >= t->nnodes || s.left[k] == 0, 0)) {
                out[s.pos[k]] = 0;
            } else {
                node = &t->nodes[index];
                v = (unsigned)(s.hi[k] >> 58);
                below = ~(uint64_t)0 >> (63 - v);  /* bits 0..v */
                x = node->vector & below;
                if (node->vector >> v & 1) {
                    count = hw ? (unsigned)__builtin_popcountll(x) : rl_popcount(x);
                    s.index[k] = node->base1 + count - 1;
                    s.hi[k] = (s.hi[k] << 6) | (s.lo[k] >> 58);
                    s.lo[k] <<= 6;
                    s.left[k]--;
                    __builtin_prefetch(&t->nodes[s.index[k]]);
                    k++;
                    continue;
                }
                x = node->leafvec & below;
                count = hw ? (unsigned)__builtin_popcountll(x) : rl_popcount(x);
                li = node->base0 + count - 1;
                out[s.pos[k]] = (count && li < t->nleaves) ? t->leaves[li] : 0;
            }
            if (rl_take6(t, a, out, n, &i, &s, k)) { k++; continue; }
            active--;  /* no more input: the last active lane takes this one's place */
            s.hi[k] = s.hi[active]; s.lo[k] = s.lo[active]; s.index[k] = s.index[active];
            s.left[k] = s.left[active]; s.pos[k] = s.pos[active];
        }
    }
}
static void rl_walk_sw(const rl_tables* t, const rl_addr* a, uint32_t* out, Py_ssize_t n) {
    rl_walk_body(t, a, out, n, 0);
}
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
__attribute__((target("popcnt"))) static void rl_walk_hw(
        const rl_tables* t, const rl_addr* a, uint32_t* out, Py_ssize_t n) {
    rl_walk_body(t, a, out, n, 1);
}
static int rl_have_hw_popcount(void) { __builtin_cpu_init(); return __builtin_cpu_supports("popcnt"); }
#else
static void rl_walk_hw(const rl_tables* t, const rl_addr* a, uint32_t* out, Py_ssize_t n) {
    rl_walk_body(t, a, out, n, 1);
}
static int rl_have_hw_popcount(void) { return 1; }
#endif
typedef void (*rl_walk_fn)(const rl_tables*, const rl_addr*, uint32_t*, Py_ssize_t);

#endif
