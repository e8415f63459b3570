# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""IP addresses for the geo reader: text, bytes and ints parsed as strictly as ipaddress, networks formatted as it does."""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_FromStringAndSize
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memchr

from regionlock.core.geo_walk cimport rl_addr, rl_packed6_to_addr

import ipaddress

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object, Py_ssize_t*) except NULL


# --- parsing IP address text, as strictly as the ipaddress module ---------------------------------------------

cdef int parse_v4(const char* s, Py_ssize_t n, uint32_t* out) noexcept nogil:
    """Dotted-quad IPv4: 4 decimal octets, no leading zeros, each <= 255. Return 1 if valid, else 0."""
    cdef uint32_t addr = 0, octet
    cdef int parts = 0, digits
    cdef Py_ssize_t i = 0
    cdef char first
    while True:
        if i >= n:
            return 0
        first = s[i]
        digits = 0
        octet = 0
        while i < n and c'0' <= s[i] <= c'9':
            octet = octet * 10 + <uint32_t>(s[i] - c'0')
            digits += 1
            i += 1
            if digits > 3:
                return 0
        if digits == 0 or (digits > 1 and first == c'0') or octet > 255:
            return 0
        addr = (addr << 8) | octet
        parts += 1
        if parts == 4:
            if i != n:
                return 0
            out[0] = addr
            return 1
        if i >= n or s[i] != c'.':
            return 0
        i += 1


cdef inline int hex_value(char c) noexcept nogil:
    if c'0' <= c <= c'9':
        return c - c'0'
    if c'a' <= c <= c'f':
        return c - c'a' + 10
    if c'A' <= c <= c'F':
        return c - c'A' + 10
    return -1


cdef int parse_v6(const char* s, Py_ssize_t n, uint64_t* hi, uint64_t* lo) noexcept nogil:
    """IPv6 text with '::' and an IPv4 tail, by the rules of ipaddress (no zone id). 1 if valid, else 0."""
    cdef Py_ssize_t starts[10]
    cdef Py_ssize_t lens[10]  # -1: a hextet already parsed from an IPv4 tail, value in vals
    cdef uint32_t vals[10]
    cdef uint32_t v4, h
    cdef uint32_t hextets[8]
    cdef int np = 0, skip = -1, parts_hi, parts_lo, skipped, i, j, k, d
    cdef Py_ssize_t b = 0, p
    if n > 45:
        return 0
    for p in range(n + 1):
        if p == n or s[p] == c':':
            if np >= 9:
                return 0
            starts[np] = b
            lens[np] = p - b
            np += 1
            b = p + 1
    if np < 3:
        return 0
    if memchr(s + starts[np - 1], c'.', lens[np - 1]) != NULL:
        if not parse_v4(s + starts[np - 1], lens[np - 1], &v4) or np >= 9:
            return 0
        lens[np - 1] = -1
        vals[np - 1] = v4 >> 16
        lens[np] = -1
        vals[np] = v4 & 0xFFFF
        np += 1
    for i in range(1, np - 1):
        if lens[i] == 0:
            if skip >= 0:
                return 0
            skip = i
    if skip >= 0:
        parts_hi = skip
        parts_lo = np - skip - 1
        if lens[0] == 0:
            parts_hi -= 1
            if parts_hi:
                return 0
        if lens[np - 1] == 0:
            parts_lo -= 1
            if parts_lo:
                return 0
        skipped = 8 - (parts_hi + parts_lo)
        if skipped < 1:
            return 0
    else:
        if np != 8 or lens[0] == 0 or lens[np - 1] == 0:
            return 0
        parts_hi = np
        parts_lo = 0
        skipped = 0
    k = 0
    for i in range(np):
        if i < parts_hi or i >= np - parts_lo:
            if lens[i] == -1:
                h = vals[i]
            else:
                if lens[i] < 1 or lens[i] > 4:
                    return 0
                h = 0
                for j in range(lens[i]):
                    d = hex_value(s[starts[i] + j])
                    if d < 0:
                        return 0
                    h = (h << 4) | <uint32_t>d
            hextets[k] = h
            k += 1
        if i == parts_hi - 1 or (parts_hi == 0 and i == 0):
            for j in range(skipped):
                hextets[k] = 0
                k += 1
    if k != 8:
        return 0
    hi[0] = 0
    lo[0] = 0
    for i in range(4):
        hi[0] = (hi[0] << 16) | hextets[i]
        lo[0] = (lo[0] << 16) | hextets[i + 4]
    return 1


cdef int parse_text(const char* s, Py_ssize_t n, rl_addr* a) noexcept nogil:
    """Parse IPv4 or IPv6 text into a; an IPv4-mapped IPv6 address becomes IPv4. 1 if valid, else 0."""
    cdef uint32_t v4
    if memchr(s, c':', n) == NULL:
        a.v6 = False
        a.hi = 0
        if not parse_v4(s, n, &v4):
            return 0
        a.lo = v4
        return 1
    if not parse_v6(s, n, &a.hi, &a.lo):
        return 0
    a.v6 = not (a.hi == 0 and (a.lo >> 32) == 0xFFFF)
    if not a.v6:
        a.lo &= 0xFFFFFFFFUL
    return 1


cdef int parse_object(object ip, rl_addr* a) except -1:
    """Parse str, bytes (4 or 16), int (below 2**32: IPv4, else IPv6) or an ipaddress address into a."""
    cdef Py_ssize_t n
    cdef const char* s
    if type(ip) is str:
        try:
            s = PyUnicode_AsUTF8AndSize(ip, &n)
        except UnicodeError:
            raise ValueError(f"invalid IP address: {ip!r}") from None
        if parse_text(s, n, a):
            return 0
        raise ValueError(f"invalid IP address: {ip!r}")
    if isinstance(ip, bytes):
        n = PyBytes_GET_SIZE(ip)
        s = PyBytes_AS_STRING(ip)
        if n == 4:
            a.v6 = False
            a.hi = 0
            a.lo = (<uint32_t>(<uint8_t>s[0]) << 24) | (<uint32_t>(<uint8_t>s[1]) << 16) | \
                   (<uint32_t>(<uint8_t>s[2]) << 8) | <uint8_t>s[3]
            return 0
        if n == 16:
            rl_packed6_to_addr(<const uint8_t*>s, a)
            return 0
        raise ValueError(f"invalid IP address: {ip!r} (packed addresses are 4 or 16 bytes)")
    if isinstance(ip, int):
        if ip < 0 or ip >= (1 << 128):
            raise ValueError(f"invalid IP address: {ip!r} (out of range)")
        if ip < (1 << 32):
            a.v6 = False
            a.hi = 0
            a.lo = <uint64_t>ip
            return 0
        packed = ip.to_bytes(16, "big")
        rl_packed6_to_addr(<const uint8_t*>PyBytes_AS_STRING(packed), a)
        return 0
    if isinstance(ip, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return parse_object(ip.packed, a)
    if isinstance(ip, str):  # a str subclass
        return parse_object(str(ip), a)
    raise TypeError(f"an IP address is str, bytes or int, not {type(ip).__name__}: {ip!r}")


def parse_ip(ip) -> tuple:
    """(4, int) or (6, int) for an address given as lookup() takes it; IPv4-mapped IPv6 gives (4, ...)."""
    cdef rl_addr a
    parse_object(ip, &a)
    if a.v6:
        return 6, (<object>a.hi << 64) | a.lo
    return 4, a.lo


# --- formatting networks, as str(ipaddress.ip_network(...)) does ---------------------------------------------

cdef inline Py_ssize_t put_decimal(char* buf, uint32_t v) noexcept nogil:
    """v in decimal at buf (no leading zeros); the number of characters written (at most 10)."""
    cdef char tmp[10]
    cdef Py_ssize_t n = 0, i
    while True:
        tmp[n] = c'0' + <char>(v % 10)
        n += 1
        v //= 10
        if v == 0:
            break
    for i in range(n):
        buf[i] = tmp[n - 1 - i]
    return n


cdef Py_ssize_t format_network_text(char* buf, bint v6, uint64_t hi, uint64_t lo, int prefix) noexcept nogil:
    """The network as str(ipaddress.ip_network(...)) spells it, into buf (at least 48 bytes); its length."""
    cdef uint32_t h[8]
    cdef int i, n = 0, best = -1, best_len = 0, run = -1, run_len = 0
    cdef const char* digits = b"0123456789abcdef"
    cdef int shift
    cdef bint started
    if not v6:
        for i in range(4):
            n += put_decimal(buf + n, (lo >> (24 - 8 * i)) & 255)
            buf[n] = c'.' if i < 3 else c'/'
            n += 1
        return n + put_decimal(buf + n, <uint32_t>prefix)
    for i in range(4):
        h[i] = (hi >> (48 - 16 * i)) & 0xFFFF
        h[i + 4] = (lo >> (48 - 16 * i)) & 0xFFFF
    for i in range(8):
        if h[i] == 0:
            if run < 0:
                run = i
                run_len = 0
            run_len += 1
            if run_len > best_len:
                best = run
                best_len = run_len
        else:
            run = -1
    if best_len < 2:
        best = -1
    i = 0
    while i < 8:
        if i == best:
            if i == 0:
                buf[n] = c':'
                n += 1
            buf[n] = c':'
            n += 1
            i += best_len
            continue
        started = False
        for shift in range(12, -4, -4):
            if started or (h[i] >> shift) & 15 or shift == 0:
                buf[n] = digits[(h[i] >> shift) & 15]
                n += 1
                started = True
        if i != 7:
            buf[n] = c':'
            n += 1
        i += 1
    buf[n] = c'/'
    n += 1
    return n + put_decimal(buf + n, <uint32_t>prefix)


cdef str format_network(bint v6, uint64_t hi, uint64_t lo, int prefix):
    cdef char buf[48]
    return PyUnicode_FromStringAndSize(buf, format_network_text(buf, v6, hi, lo, prefix))
