/* The machine's own ceiling for the allowlist benchmark, measured in the same run: compiled and run by
 * benchmarks/allowlist.py (gcc -O2), never part of the product.
 *
 *   memory_ceiling N_KEYS N_QUERIES
 *
 * prints one JSON object:
 *   dependent_read_ns   a pointer chase through a random cycle of up to 2^25 8-byte slots (256 MiB):
 *                       the cost of one random memory read that nothing can overlap;
 *   bucket_index_per_s  random lookups (3/4 present) in N_KEYS sorted 64-bit keys through a top-bits bucket
 *                       directory (uint32 start per bucket, about 1.5 keys per bucket): a directory read, then
 *                       a short scan of the keys; the best a C index of bare hashes does here, one core.
 * Keys and queries come from a fixed-seed splitmix64, so every run uses the same data.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

static uint64_t state = 0x5EED;

static uint64_t splitmix64(void) {
    uint64_t z = (state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Large arrays get 2 MiB pages when the kernel allows it, as the page-cache mapping of the allowlist does. */
static void *big_alloc(size_t bytes) {
    void *p = NULL;
    if (posix_memalign(&p, 1 << 21, bytes) != 0) {
        fprintf(stderr, "memory_ceiling: out of memory\n");
        exit(1);
    }
    madvise(p, bytes, MADV_HUGEPAGE);
    return p;
}

static double dependent_read_ns(size_t slots, size_t steps) {
    uint64_t *next = big_alloc(slots * sizeof(uint64_t));
    for (size_t i = 0; i < slots; i++) next[i] = i;
    /* Sattolo's shuffle: one cycle through every slot, so the chase never settles in a short loop */
    for (size_t i = slots - 1; i > 0; i--) {
        size_t j = splitmix64() % i;
        uint64_t t = next[i];
        next[i] = next[j];
        next[j] = t;
    }
    uint64_t at = 0;
    for (size_t i = 0; i < steps / 10; i++) at = next[at]; /* warm the TLB and page tables */
    double start = now();
    for (size_t i = 0; i < steps; i++) at = next[at];
    double seconds = now() - start;
    if (at == slots) puts("impossible"); /* keeps the chase from being optimized away */
    free(next);
    return seconds / steps * 1e9;
}

static double bucket_index_per_s(size_t n_keys, size_t n_queries) {
    uint64_t *keys = big_alloc(n_keys * sizeof(uint64_t));
    /* sorted uniform keys without a sort: random gaps averaging 2^64 / n_keys */
    uint64_t gap = UINT64_MAX / n_keys, key = 0;
    for (size_t i = 0; i < n_keys; i++) {
        key += 1 + splitmix64() % (2 * gap - 1);
        keys[i] = key;
    }
    int bits = 0;
    while ((1ULL << (bits + 1)) <= n_keys / 1.5) bits++;
    size_t n_buckets = (size_t)1 << bits;
    uint32_t *start = big_alloc((n_buckets + 1) * sizeof(uint32_t));
    size_t k = 0;
    for (size_t b = 0; b < n_buckets; b++) {
        while (k < n_keys && (keys[k] >> (64 - bits)) < b) k++;
        start[b] = (uint32_t)k;
    }
    start[n_buckets] = (uint32_t)n_keys;
    uint64_t *queries = malloc(n_queries * sizeof(uint64_t));
    for (size_t i = 0; i < n_queries; i++)
        queries[i] = (i % 4) ? keys[splitmix64() % n_keys] : splitmix64();
    size_t found = 0;
    double start_s = now();
    for (size_t i = 0; i < n_queries; i++) {
        uint64_t q = queries[i], b = q >> (64 - bits);
        for (uint32_t j = start[b]; j < start[b + 1]; j++) {
            if (keys[j] == q) {
                found++;
                break;
            }
        }
    }
    double seconds = now() - start_s;
    if (found < n_queries / 2) {
        fprintf(stderr, "memory_ceiling: only %zu of %zu found\n", found, n_queries);
        exit(1);
    }
    free(queries);
    free(start);
    free(keys);
    return n_queries / seconds;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: memory_ceiling N_KEYS N_QUERIES\n");
        return 2;
    }
    size_t n_keys = strtoull(argv[1], NULL, 10), n_queries = strtoull(argv[2], NULL, 10);
    if (n_keys < 16 || n_keys > UINT32_MAX || n_queries < 1) {
        fprintf(stderr, "memory_ceiling: N_KEYS must be 16 to 2^32-1 and N_QUERIES at least 1\n");
        return 2;
    }
    double index_rate = bucket_index_per_s(n_keys, n_queries);
    /* 2^25 slots (256 MiB) span far beyond any cache and take seconds, not minutes, to shuffle */
    double read_ns = dependent_read_ns(n_keys < (1u << 25) ? n_keys : (1u << 25), 10000000);
    printf("{\"keys\": %zu, \"queries\": %zu, \"bucket_index_per_s\": %.0f, \"dependent_read_ns\": %.1f}\n", n_keys,
           n_queries, index_rate, read_ns);
    return 0;
}
