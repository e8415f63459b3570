"""The demo allowlist's rows in C: deterministic, unique synthetic serials with a plausible mix of markets."""

from libc.stdint cimport uint8_t, uint64_t
from libc.string cimport memcpy

from regionlock.core.allowlist cimport rl_fmix64

# The shapes and the market mix are described in allowlist_demo.py, which writes these rows as CSV.


cdef inline void _put_u(uint8_t* p, uint64_t v, int width, int base, const char* digits) noexcept nogil:
    cdef int j
    for j in range(width - 1, -1, -1):
        p[j] = digits[v % base]
        v //= base


def demo_rows(uint64_t seed, uint64_t start, Py_ssize_t count):
    """CSV lines `serial,market` for demo rows start .. start + count: deterministic, unique serials."""
    cdef bytearray out = bytearray(count * 40)
    cdef uint8_t* p = <uint8_t*><char*>out
    cdef Py_ssize_t n = 0, i, j
    cdef uint64_t idx, u, r, q, fmt, m
    cdef const char* digits = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    cdef const char* market
    cdef int mlen
    with nogil:
        for i in range(count):
            idx = start + <uint64_t>i
            # u: a bijection of idx on [0, 2^40) that looks random; r: the row's random bits
            u = ((idx * 0x9E3779B97F4BULL) + seed * 0x2545F491ULL) & ((1ULL << 40) - 1)
            r = rl_fmix64(idx * 0xD1B54A32D192ED03ULL + seed + 1)
            fmt = r % 100
            q = rl_fmix64(r ^ 0x5851F42D4C957F2DULL)  # filler characters
            if fmt < 40:  # phone style: R + plant digits + model letter + 9 base-36 characters (13)
                p[n] = 82
                p[n + 1] = digits[(r >> 8) % 10]
                p[n + 2] = digits[(r >> 16) % 10]
                p[n + 3] = digits[10 + (r >> 24) % 26]
                p[n + 4] = digits[q % 36]
                _put_u(p + n + 5, u, 8, 36, digits)
                n += 13
            elif fmt < 70:  # IMEI-like: 35 + 13 digits (15)
                p[n] = 51
                p[n + 1] = 53
                _put_u(p + n + 2, u, 13, 10, digits)
                n += 15
            elif fmt < 90:  # SN-2YWW- + 10 base-36 characters (18)
                memcpy(p + n, b"SN-2", 4)
                p[n + 4] = digits[(r >> 12) % 6]
                p[n + 5] = digits[(r >> 20) % 6]
                p[n + 6] = digits[(r >> 28) % 10]
                p[n + 7] = 45
                p[n + 8] = digits[q % 36]
                p[n + 9] = digits[(q >> 8) % 36]
                _put_u(p + n + 10, u, 8, 36, digits)
                n += 18
            else:  # laptop style: C02 + 8 base-36 characters / 5 base-36 characters (17)
                memcpy(p + n, b"C02", 3)
                for j in range(5):
                    p[n + 3 + j] = digits[(q >> (6 * j)) % 36]
                _put_u(p + n + 8, u >> 25, 3, 36, digits)
                p[n + 11] = 47
                _put_u(p + n + 12, u & ((1ULL << 25) - 1), 5, 36, digits)
                n += 17
            m = (r >> 40) % 100
            if m < 30:
                market = b"EEA"
            elif m < 50:
                market = b"GLOBAL"
            elif m < 65:
                market = b"CN"
            elif m < 80:
                market = b"IN"
            elif m < 92:
                market = b"US"
            else:
                market = b"RU"
            p[n] = 44
            n += 1
            mlen = 0
            while market[mlen] != 0:
                p[n] = market[mlen]
                n += 1
                mlen += 1
            p[n] = 10
            n += 1
    del out[n:]
    return out
