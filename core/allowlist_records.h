/* An allowlist record's header bits, its packed size and the fmix64 hash round: for the reader, the sort and the demo. */
#ifndef REGIONLOCK_ALLOWLIST_RECORDS_H
#define REGIONLOCK_ALLOWLIST_RECORDS_H

#include <Python.h>
#include <stdint.h>

/* A record's uint16 header is (length - 1) << RL_REC_LENGTH_SHIFT | market id: 5 bits of length (1..32), 11 of
   market (MAX_MARKETS = 2048). The same numbers as allowlist_format.RECORD_LENGTH_SHIFT and RECORD_MARKET_MASK,
   which the compiled reader checks at import. */
#define RL_REC_LENGTH_SHIFT 11
#define RL_REC_MARKET_MASK 0x7FF
#define RL_REC_LENGTH_MASK 0xF800

/* The length of the serial a record header holds. */
static inline int rl_rec_length(uint16_t hdr) { return (hdr >> RL_REC_LENGTH_SHIFT) + 1; }

/* Bytes of the packed form of a serial of length characters: three base-40 digits per uint16. */
static inline Py_ssize_t rl_packed_size(int length) { return 2 * ((length + 2) / 3); }

/* MurmurHash3's 64-bit finalizer: the serial hash's rounds, and the demo's row scrambler. */
static inline uint64_t rl_fmix64(uint64_t h) {
    h ^= h >> 33;
    h *= 0xFF51AFD7ED558CCDULL;
    h ^= h >> 33;
    h *= 0xC4CEB9FE1A85EC53ULL;
    h ^= h >> 33;
    return h;
}

#endif
