"""The serial allowlist: a bucketed hash index of packed serials (served from a private copy of its file), and the builder's C kernels."""

from cpython.list cimport PyList_GET_ITEM
from cpython.unicode cimport PyUnicode_1BYTE_DATA, PyUnicode_1BYTE_KIND, PyUnicode_GET_LENGTH, PyUnicode_KIND
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcmp, memcpy, memset

from regionlock.core.release_gil cimport RELEASE_GIL_MIN_ITEMS

import array
import os

from regionlock.core import _allowlist_reference as _ref
from regionlock.core.errors import CorruptFileError
from regionlock.core.fileformat import load_data_file
from regionlock.core.serials import normalize_serial

cdef extern from *:
    void __builtin_prefetch(const void *addr) noexcept nogil


# Rec, a serial being looked up or sorted (32 bytes), is declared in allowlist.pxd.

cdef uint64_t EMPTY_DIRECTORY[2]
cdef Py_ssize_t PIPELINE_DEPTH = 24  # get_many: lookups between a directory read and its use
cdef uint8_t CODE[256]
cdef uint8_t SPACE[256]
cdef char ALPHA[40]


cdef void _init_tables() noexcept:
    cdef int i
    cdef bytes alphabet = _ref.ALPHABET.encode()
    memset(CODE, 0xFF, 256)
    memset(SPACE, 0, 256)
    for i in range(40):
        ALPHA[i] = alphabet[i]
        CODE[<uint8_t>alphabet[i]] = i
        if 65 <= alphabet[i] <= 90:
            CODE[alphabet[i] + 32] = i
    # the ASCII characters that str.strip() removes; bytes >= 0x80 take the Python path
    for i in (9, 10, 11, 12, 13, 28, 29, 30, 31, 32):
        SPACE[i] = 1


_init_tables()
cdef Py_ssize_t STRIDE = _ref.SAMPLE_STRIDE


cdef inline uint64_t _fmix64(uint64_t h) noexcept nogil:
    h ^= h >> 33
    h *= 0xFF51AFD7ED558CCDULL
    h ^= h >> 33
    h *= 0xC4CEB9FE1A85EC53ULL
    h ^= h >> 33
    return h


cdef inline int _pack(const uint8_t* s, Py_ssize_t n, Rec* rec) noexcept nogil:
    """Trim ASCII white space, pack and hash s[:n] into rec; 0 on success, -1 if the fast path can't."""
    cdef Py_ssize_t i, g
    cdef uint8_t c0, c1, c2
    cdef uint64_t w[3]
    cdef uint64_t h
    while n > 0 and SPACE[s[0]]:
        s += 1
        n -= 1
    while n > 0 and SPACE[s[n - 1]]:
        n -= 1
    if n < 1 or n > 32:
        return -1
    memset(rec.key, 0, 22)
    g = 0
    i = 0
    while i < n:
        c0 = CODE[s[i]]
        c1 = CODE[s[i + 1]] if i + 1 < n else 0
        c2 = CODE[s[i + 2]] if i + 2 < n else 0
        if c0 >= 40 or c1 >= 40 or c2 >= 40:
            return -1
        rec.key[g] = c0 * 1600 + c1 * 40 + c2
        g += 1
        i += 3
    memset(w, 0, 24)
    memcpy(w, rec.key, 22)
    h = <uint64_t>n * 0x9E3779B97F4A7C15ULL
    h = _fmix64(h ^ w[0])
    h = _fmix64(h ^ w[1])
    h = _fmix64(h ^ w[2])
    rec.hash = h
    rec.hdr = <uint16_t>((n - 1) << 11)
    return 0


cdef int _pack_str(object serial, Rec* rec) except -1:
    """Normalize and pack a Python str; raise ValueError (from normalize_serial) if it is not a serial."""
    cdef bytes normalized
    if type(serial) is str and PyUnicode_KIND(serial) == PyUnicode_1BYTE_KIND:
        if _pack(PyUnicode_1BYTE_DATA(serial), PyUnicode_GET_LENGTH(serial), rec) == 0:
            return 0
    normalized = normalize_serial(serial).encode("ascii")  # raises the one ValueError message
    if _pack(normalized, len(normalized), rec) != 0:
        raise AssertionError(f"normalized serial {normalized!r} did not pack")
    return 0


cdef inline uint64_t _load64(const uint8_t* p) noexcept nogil:
    cdef uint64_t v
    memcpy(&v, p, 8)
    return v


cdef inline uint16_t _load16(const uint8_t* p) noexcept nogil:
    cdef uint16_t v
    memcpy(&v, p, 2)
    return v


cdef inline Py_ssize_t _packed_size(int length) noexcept nogil:
    return 2 * ((length + 2) // 3)


cdef str _unpack_str(const uint8_t* key, int length):
    cdef char buf[33]
    cdef int i, v
    for i in range(length):
        v = _load16(key + 2 * (i // 3))
        if i % 3 == 0:
            buf[i] = ALPHA[(v // 1600) % 40]
        elif i % 3 == 1:
            buf[i] = ALPHA[(v // 40) % 40]
        else:
            buf[i] = ALPHA[v % 40]
    return buf[:length].decode("ascii")


def _check_codec(str serial):
    """(packed bytes, hash) of a serial through the C codec: for differential tests."""
    cdef Rec rec
    _pack_str(serial, &rec)
    return bytes((<uint8_t*>rec.key)[:_packed_size((rec.hdr >> 11) + 1)]), rec.hash


cdef class Allowlist:
    """A read-only allowlist, its file read once into private memory: serial -> market.

    get() and get_many() normalize like regionlock.core.serials.normalize_serial and raise its ValueError
    for an invalid serial; a damaged file found during a lookup raises CorruptFileError; nothing crashes.
    """

    cdef object _mapping
    cdef object _header
    cdef const uint8_t[::1] _view
    cdef const uint8_t* _coarse
    cdef const uint8_t* _fine
    cdef const uint8_t* _samples
    cdef const uint8_t* _records
    cdef uint64_t _records_len
    cdef uint64_t _count
    cdef uint64_t _nbuckets
    cdef int _shift
    cdef int _gbits
    cdef uint64_t _gmask
    cdef uint64_t _avg_bucket  # records bytes per bucket, in 1/256ths
    cdef uint16_t _nmarkets
    cdef tuple _markets
    cdef readonly str path

    def __cinit__(self):
        # an instance made without open() is an empty allowlist, never a NULL dereference
        EMPTY_DIRECTORY[0] = EMPTY_DIRECTORY[1] = 0
        self._coarse = <const uint8_t*>EMPTY_DIRECTORY
        self._fine = <const uint8_t*>EMPTY_DIRECTORY
        self._samples = <const uint8_t*>EMPTY_DIRECTORY
        self._records = <const uint8_t*>EMPTY_DIRECTORY
        self._shift = 64
        self._markets = ()
        self.path = "<not opened>"

    def __init__(self, *args, **kwargs):
        raise TypeError("use Allowlist.open(path)")

    @classmethod
    def open(cls, path, verify=True):
        """Read an allowlist file into private memory (load_data_file); check its header and layout and, with
        verify, its payload."""
        cdef Allowlist self = cls.__new__(cls)
        name = os.fspath(path)
        mapping, header = load_data_file(path, _ref.MAGIC, _ref.FORMAT_VERSION, bool(verify))
        try:
            layout = _ref.check_layout(header, name)
        except BaseException:
            mapping.close()
            raise
        self.path = name
        self._mapping = mapping
        self._header = header
        self._view = mapping
        cdef Py_ssize_t base = header.payload_offset
        cdef Py_ssize_t coarse_off = layout["coarse"][0]
        cdef Py_ssize_t fine_off = layout["fine"][0]
        cdef Py_ssize_t smp_off = layout["samples"][0]
        cdef Py_ssize_t rec_off = layout["records"][0]
        self._coarse = &self._view[0] + base + coarse_off
        self._fine = &self._view[0] + base + fine_off
        self._samples = &self._view[0] + base + smp_off
        self._records = &self._view[0] + base + rec_off
        self._records_len = layout["records"][1]
        self._count = layout["count"]
        self._nbuckets = 1ULL << layout["bucket_bits"]
        self._shift = 64 - layout["bucket_bits"]
        self._gbits = layout["group_bits"]
        self._gmask = (1ULL << self._gbits) - 1
        self._avg_bucket = (self._records_len << 8) // self._nbuckets if self._records_len < (1ULL << 55) else 0
        self._markets = tuple(layout["markets"])
        self._nmarkets = len(self._markets)
        if _load64(self._coarse) != 0 or _load64(
            self._coarse + 8 * (self._nbuckets >> self._gbits)
        ) != self._records_len:
            self._view = None
            mapping.close()
            raise CorruptFileError(f"{name}: corrupt allowlist: directory does not span the records")
        return self

    cdef inline int64_t _find(self, const Rec* q) noexcept nogil:
        """The market id of q, -1 if absent, -2 if the file is damaged there."""
        cdef uint64_t b = (q.hash >> self._shift) if self._shift < 64 else 0
        cdef uint64_t g = b >> self._gbits
        cdef uint64_t base = _load64(self._coarse + 8 * g)
        cdef uint64_t lo, hi
        cdef uint16_t qlen = q.hdr >> 11
        cdef uint16_t hdr
        cdef Py_ssize_t size
        if base > self._records_len:
            return -2
        # warm the TLB and maybe the cache line for the bucket's likely place while the fine entry loads
        lo = base + (((b & self._gmask) * self._avg_bucket) >> 8)
        if lo < self._records_len:
            __builtin_prefetch(self._records + lo)
        lo = base + _load16(self._fine + 2 * b)
        if ((b + 1) & self._gmask) == 0:
            hi = _load64(self._coarse + 8 * g + 8)
        else:
            hi = base + _load16(self._fine + 2 * b + 2)
        if lo > hi or hi > self._records_len:
            return -2
        while lo < hi:
            if hi - lo < 2:
                return -2
            hdr = _load16(self._records + lo)
            size = 2 + _packed_size((hdr >> 11) + 1)
            if <uint64_t>size > hi - lo:
                return -2
            if (hdr >> 11) == qlen and memcmp(self._records + lo + 2, q.key, size - 2) == 0:
                if (hdr & 0x7FF) >= self._nmarkets:
                    return -2
                return hdr & 0x7FF
            lo += size
        return -1

    cdef void _find_batch(self, const Rec* q, int64_t* out, Py_ssize_t n) noexcept nogil:
        """_find over a batch, software-pipelined: directory reads run 2 * D lookups ahead, record reads D."""
        cdef Py_ssize_t i, j, D = PIPELINE_DEPTH
        cdef uint64_t b, lo
        for i in range(n + 2 * D):
            if i < n:
                b = (q[i].hash >> self._shift) if self._shift < 64 else 0
                __builtin_prefetch(self._coarse + 8 * (b >> self._gbits))
                __builtin_prefetch(self._fine + 2 * b)
            j = i - D
            if 0 <= j < n:
                b = (q[j].hash >> self._shift) if self._shift < 64 else 0
                lo = _load64(self._coarse + 8 * (b >> self._gbits))
                if lo < self._records_len:
                    __builtin_prefetch(self._records + lo + _load16(self._fine + 2 * b))
            j = i - 2 * D
            if j >= 0:
                out[j] = self._find(&q[j])

    def get(self, serial):
        """The market `serial` was sold for, or None; ValueError if it is not a valid serial."""
        cdef Rec q
        cdef int64_t r
        _pack_str(serial, &q)
        r = self._find(&q)
        if r >= 0:
            return self._markets[r]
        if r == -1:
            return None
        raise CorruptFileError(f"{self.path}: corrupt allowlist: bad bucket for {serial!r}")

    def __contains__(self, serial):
        cdef Rec q
        if not isinstance(serial, str):
            return False
        try:
            _pack_str(serial, &q)
        except ValueError:
            return False
        return self.get(serial) is not None

    cdef int64_t* _lookup_ids(self, serials, Py_ssize_t* n_out) except NULL:
        cdef list items = list(serials)
        cdef Py_ssize_t n = len(items)
        cdef Py_ssize_t i
        cdef Rec* q = <Rec*>malloc(max(n, 1) * (sizeof(Rec) + sizeof(int64_t)))
        cdef int64_t* out
        if q == NULL:
            raise MemoryError()
        out = <int64_t*>(q + max(n, 1))
        i = 0
        try:
            try:
                while i < n:
                    _pack_str(<object>PyList_GET_ITEM(items, i), &q[i])
                    i += 1
            except ValueError as exc:
                raise ValueError(f"serials[{i}]: {exc}") from None
            with nogil:
                self._find_batch(q, out, n)
            for i in range(n):
                if out[i] == -2:
                    raise CorruptFileError(f"{self.path}: corrupt allowlist: bad bucket for {items[i]!r}")
        except BaseException:
            free(q)
            raise
        n_out[0] = n
        return out

    def get_many(self, serials):
        """get() for each serial of an iterable, the lookups without the GIL; ValueError names the index."""
        cdef Py_ssize_t n, i
        cdef int64_t* out = self._lookup_ids(serials, &n)
        cdef list result = [None] * n
        cdef tuple markets = self._markets
        try:
            for i in range(n):
                if out[i] >= 0:
                    result[i] = markets[out[i]]
        finally:
            free(<Rec*>out - max(n, 1))
        return result

    def get_many_ids(self, serials):
        """The packed batch path: array('h') of indexes into `markets`, -1 for unknown serials."""
        cdef Py_ssize_t n, i
        cdef int64_t* out = self._lookup_ids(serials, &n)
        result = array.array("h", bytes(2 * n))
        cdef short[::1] view = result
        try:
            for i in range(n):
                view[i] = <short>out[i]
        finally:
            free(<Rec*>out - max(n, 1))
        return result

    def __len__(self):
        return self._count

    def entry(self, Py_ssize_t i):
        """The i-th stored (serial, market), 0 <= i < len: for drawing sample serials."""
        cdef uint64_t pos, k
        cdef uint16_t hdr
        cdef Py_ssize_t size
        if i < 0 or <uint64_t>i >= self._count:
            raise IndexError("allowlist entry index out of range")
        pos = _load64(self._samples + 8 * (i // STRIDE))
        k = i % STRIDE
        while True:
            if pos + 2 > self._records_len:
                break
            hdr = _load16(self._records + pos)
            size = 2 + _packed_size((hdr >> 11) + 1)
            if pos + size > self._records_len:
                break
            if k == 0:
                if (hdr & 0x7FF) >= self._nmarkets:
                    break
                return _unpack_str(self._records + pos + 2, (hdr >> 11) + 1), self._markets[hdr & 0x7FF]
            k -= 1
            pos += size
        raise CorruptFileError(f"{self.path}: corrupt allowlist: entry {i} out of bounds")

    @property
    def markets(self):
        """The market table: market ids index this list."""
        return list(self._markets)

    @property
    def build_id(self):
        """First 16 hex digits of the payload's SHA-256."""
        return self._header.build_id

    @property
    def header(self):
        return self._header

    @property
    def info(self):
        """The header as a JSON-ready dict: build time, sources, count, markets, checksum, ..."""
        return _ref.info_dict(self.path, self._header)

    def __repr__(self):
        return f"<Allowlist {self.path!r} {self._count} serials build {self.build_id}>"


# ----------------------------------------------------------------------------------------------------------
# Builder kernels (used by allowlist_build.py)

cdef inline int _rec_cmp(const Rec* a, const Rec* b) noexcept nogil:
    """Order by hash, length, packed serial; the market is not part of the order."""
    if a.hash != b.hash:
        return -1 if a.hash < b.hash else 1
    if (a.hdr >> 11) != (b.hdr >> 11):
        return -1 if (a.hdr >> 11) < (b.hdr >> 11) else 1
    return memcmp(a.key, b.key, 22)


cdef void _insertion_sort(Rec* a, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i, j
    cdef Rec t
    for i in range(1, n):
        if _rec_cmp(&a[i - 1], &a[i]) <= 0:
            continue
        t = a[i]
        j = i
        while j > 0 and _rec_cmp(&a[j - 1], &t) > 0:
            a[j] = a[j - 1]
            j -= 1
        a[j] = t


cdef void _radix_sort(Rec* a, Py_ssize_t n, int shift) noexcept nogil:
    """In-place MSD radix sort (American flag) on hash byte `shift / 8`, down to insertion sort."""
    cdef Py_ssize_t count[256]
    cdef Py_ssize_t head[256]
    cdef Py_ssize_t tail[256]
    cdef Py_ssize_t i, k, pos
    cdef Rec t, u
    cdef int d
    if n <= 48 or shift < 0:
        _insertion_sort(a, n)
        return
    memset(count, 0, sizeof(count))
    for i in range(n):
        count[(a[i].hash >> shift) & 0xFF] += 1
    pos = 0
    for k in range(256):
        head[k] = pos
        pos += count[k]
        tail[k] = pos
    for k in range(256):
        while head[k] < tail[k]:
            t = a[head[k]]
            d = (t.hash >> shift) & 0xFF
            while d != k:
                u = a[head[d]]
                a[head[d]] = t
                head[d] += 1
                t = u
                d = (t.hash >> shift) & 0xFF
            a[head[k]] = t
            head[k] += 1
    pos = 0
    for k in range(256):
        if count[k] > 1:
            _radix_sort(a + pos, count[k], shift - 8)
        pos += count[k]


cdef class RunBuffer:
    """A bounded buffer of packed rows: parses CSV bytes into it, sorts and deduplicates it (without the GIL)."""

    cdef Rec* recs
    cdef readonly Py_ssize_t capacity
    cdef readonly Py_ssize_t size
    cdef readonly Py_ssize_t rows
    cdef readonly Py_ssize_t lines
    cdef readonly dict market_ids
    cdef readonly list markets
    cdef uint8_t mkeys[2048][17]
    cdef uint8_t mlens[2048]
    cdef int nm

    def __cinit__(self, Py_ssize_t capacity):
        self.capacity = max(capacity, 1)
        self.recs = <Rec*>malloc(self.capacity * sizeof(Rec))
        if self.recs == NULL:
            raise MemoryError()
        self.market_ids = {}
        self.markets = []

    def __dealloc__(self):
        free(self.recs)

    def clear(self):
        self.size = 0

    cdef int _market_fast(self, const uint8_t* s, Py_ssize_t n) noexcept nogil:
        """Local id of a market already seen, spelled exactly as seen; -1 otherwise."""
        cdef Py_ssize_t i
        if n > 16:
            return -1
        for i in range(self.nm):
            if self.mlens[i] == n and memcmp(self.mkeys[i], s, n) == 0:
                return i
        return -1

    def market_id(self, str market):
        """The local id of a normalized market, added to the table if new."""
        cdef Py_ssize_t i
        cdef bytes raw = market.encode("ascii")
        if market in self.market_ids:
            return self.market_ids[market]
        i = len(self.markets)
        if i >= 2048:
            raise ValueError("more than 2048 distinct markets")
        self.market_ids[market] = i
        self.markets.append(market)
        memcpy(self.mkeys[i], <const char*>raw, len(raw))
        self.mlens[i] = len(raw)
        self.nm = i + 1
        return i

    def add(self, str serial, str market):
        """Add one row given as Python strings (the slow path: normalizes through serials.py)."""
        cdef Rec rec
        _pack_str(serial, &rec)
        rec.hdr = rec.hdr | self.market_id(market)
        self.recs[self.size] = rec
        self.size += 1

    def parse(self, const uint8_t[::1] data, Py_ssize_t start, int serial_col, int market_col, int ncols):
        """Parse complete lines of data[start:] (each ends with a newline) until the buffer is full.

        Returns (position after the last line taken, status): status 0 = consumed all, 1 = buffer full,
        2 = the line at position needs the Python path (quotes, white space, invalid or new market).
        `lines` counts every line taken, `rows` every row stored.
        """
        cdef Py_ssize_t n = data.shape[0]
        cdef Py_ssize_t pos = start, end, fstart, fend, col
        cdef const uint8_t* p
        cdef const uint8_t* sp = NULL
        cdef const uint8_t* mp = NULL
        cdef Py_ssize_t sn = 0, mn = 0
        cdef int mid, status = 0
        cdef Rec* rec
        if n == 0:
            return pos, 0
        p = &data[0]
        with nogil:
            while pos < n:
                if self.size >= self.capacity:
                    status = 1
                    break
                end = pos
                while end < n and p[end] != 10:
                    end += 1
                if end == n:
                    status = 2  # no newline: the caller gives only complete lines
                    break
                fend = end
                if fend > pos and p[fend - 1] == 13:
                    fend -= 1
                if fend == pos:
                    pos = end + 1
                    self.lines += 1
                    continue
                col = 0
                fstart = pos
                sp = NULL
                mp = NULL
                while True:
                    fend = fstart
                    while fend < end and p[fend] != 44 and p[fend] != 13:
                        fend += 1
                    if fend < end and p[fend] == 13 and fend + 1 != end:
                        col = -1
                        break
                    if col == serial_col:
                        sp = p + fstart
                        sn = fend - fstart
                    elif col == market_col:
                        mp = p + fstart
                        mn = fend - fstart
                    col += 1
                    if fend >= end or p[fend] == 13:
                        break
                    fstart = fend + 1
                if col != ncols or sp == NULL or mp == NULL:
                    status = 2
                    break
                rec = &self.recs[self.size]
                if _pack(sp, sn, rec) != 0:
                    status = 2
                    break
                mid = self._market_fast(mp, mn)
                if mid < 0:
                    status = 2
                    break
                rec.hdr = rec.hdr | mid
                self.size += 1
                self.rows += 1
                self.lines += 1
                pos = end + 1
        return pos, status

    def count_line(self, bint stored):
        """Count one line handled by the Python path."""
        self.lines += 1
        if stored:
            self.rows += 1

    def sort_dedup(self):
        """Sort, drop exact duplicates; return (duplicates dropped, conflicts as (serial, market, market))."""
        cdef Py_ssize_t i, w, dups = 0
        cdef list conflicts = []
        if self.size == 0:
            return 0, conflicts
        with nogil:
            _radix_sort(self.recs, self.size, 56)
        w = 0
        for i in range(1, self.size):
            if _rec_cmp(&self.recs[w], &self.recs[i]) == 0:
                if self.recs[w].hdr != self.recs[i].hdr and len(conflicts) < 20:
                    conflicts.append((
                        _unpack_str(<uint8_t*>self.recs[w].key, (self.recs[w].hdr >> 11) + 1),
                        self.markets[self.recs[w].hdr & 0x7FF],
                        self.markets[self.recs[i].hdr & 0x7FF],
                    ))
                dups += 1
                continue
            w += 1
            if w != i:
                self.recs[w] = self.recs[i]
        self.size = w + 1
        return dups, conflicts

    def write_to(self, f):
        """Write the buffer's records (32 bytes each) to a binary file."""
        cdef Py_ssize_t chunk = 1 << 16, i
        for i in range(0, self.size, chunk):
            f.write((<uint8_t*>(self.recs + i))[:min(chunk, self.size - i) * sizeof(Rec)])


REC_SIZE = sizeof(Rec)


cdef class Merger:
    """k-way merge of sorted runs into the record stream, the fine directory and the samples."""

    cdef list files
    cdef list bufs
    cdef Rec** heads
    cdef Py_ssize_t* left
    cdef Py_ssize_t* avail
    cdef int k
    cdef int* heap
    cdef int nheap
    cdef uint16_t* remap
    cdef Py_ssize_t buf_recs
    cdef int fine_bits
    cdef readonly Py_ssize_t count
    cdef readonly Py_ssize_t duplicates
    cdef readonly uint64_t records_len
    cdef readonly list conflicts
    cdef list run_markets
    cdef list markets
    cdef uint64_t next_bucket
    cdef Py_ssize_t mcount[2048]
    cdef readonly object samples

    def __cinit__(self, list runs, list markets, int fine_bits, Py_ssize_t buf_bytes):
        """runs: (file object, record count, local market list); markets: the global sorted market table."""
        cdef int i, j
        self.k = len(runs)
        self.files = [r[0] for r in runs]
        self.run_markets = [r[2] for r in runs]
        self.markets = markets
        self.buf_recs = max(buf_bytes // sizeof(Rec), 16)
        self.bufs = [bytearray(self.buf_recs * sizeof(Rec)) for _ in range(self.k)]
        self.heads = <Rec**>malloc(max(self.k, 1) * sizeof(Rec*))
        self.left = <Py_ssize_t*>malloc(max(self.k, 1) * sizeof(Py_ssize_t))
        self.avail = <Py_ssize_t*>malloc(max(self.k, 1) * sizeof(Py_ssize_t))
        self.heap = <int*>malloc(max(self.k, 1) * sizeof(int))
        self.remap = <uint16_t*>malloc(max(self.k, 1) * 2048 * sizeof(uint16_t))
        if not (self.heads and self.left and self.avail and self.heap and self.remap):
            raise MemoryError()
        index = {m: n for n, m in enumerate(markets)}
        for i in range(self.k):
            self.left[i] = runs[i][1]
            self.avail[i] = 0
            for j, m in enumerate(runs[i][2]):
                self.remap[i * 2048 + j] = index[m]
        self.fine_bits = fine_bits
        self.conflicts = []
        self.samples = array.array("Q")
        memset(self.mcount, 0, sizeof(self.mcount))

    @property
    def market_counts(self):
        return [self.mcount[i] for i in range(len(self.markets))]

    def __dealloc__(self):
        free(self.heads)
        free(self.left)
        free(self.avail)
        free(self.heap)
        free(self.remap)

    cdef int _refill(self, int i) except -1:
        cdef Py_ssize_t want = min(self.buf_recs, self.left[i])
        cdef bytearray buf = self.bufs[i]
        cdef Py_ssize_t got
        if want == 0:
            self.avail[i] = 0
            return 0
        got = self.files[i].readinto(memoryview(buf)[: want * sizeof(Rec)])
        if got != want * sizeof(Rec):
            raise OSError("sort run file is shorter than expected")
        self.heads[i] = <Rec*><char*>buf
        self.avail[i] = want
        self.left[i] -= want
        return 0

    cdef inline bint _less(self, int a, int b) noexcept:
        cdef int c = _rec_cmp(self.heads[a], self.heads[b])
        return c < 0 or (c == 0 and a < b)

    cdef void _sift(self, int i) noexcept:
        cdef int c, t
        while True:
            c = 2 * i + 1
            if c >= self.nheap:
                return
            if c + 1 < self.nheap and self._less(self.heap[c + 1], self.heap[c]):
                c += 1
            if not self._less(self.heap[c], self.heap[i]):
                return
            t = self.heap[c]
            self.heap[c] = self.heap[i]
            self.heap[i] = t
            i = c

    cdef Py_ssize_t _start_buckets(self, uint64_t bucket, uint64_t* directory, Py_ssize_t dlen, dbuf,
                                   dir_out) except -1:
        """Start every bucket up to `bucket` at the current records offset; write the directory out as it fills."""
        while self.next_bucket <= bucket:
            directory[dlen] = self.records_len
            dlen += 1
            self.next_bucket += 1
            if dlen == 65536:
                dir_out.write(dbuf)
                dlen = 0
        return dlen

    def run(self, records_out, dir_out, Py_ssize_t out_bytes=1 << 22):
        """Merge everything: records to records_out, fine directory (uint64) to dir_out, samples appended."""
        cdef int i, top
        cdef Rec last
        cdef bint have_last = False
        cdef bytearray obuf = bytearray(out_bytes + 64)
        cdef uint8_t* op = <uint8_t*><char*>obuf
        cdef Py_ssize_t olen = 0
        dbuf = array.array("Q", bytes(8 * 65536))
        cdef uint64_t[::1] dview = dbuf
        cdef Py_ssize_t dlen = 0
        cdef uint64_t bucket, nb = 1ULL << self.fine_bits
        cdef int fshift = 64 - self.fine_bits
        cdef Rec* r
        cdef uint16_t hdr
        cdef Py_ssize_t size
        cdef int length
        self.next_bucket = 0
        self.nheap = 0
        for i in range(self.k):
            self._refill(i)
            if self.avail[i]:
                self.heap[self.nheap] = i
                self.nheap += 1
        for i in range(self.nheap // 2 - 1, -1, -1):
            self._sift(i)
        while self.nheap:
            top = self.heap[0]
            r = self.heads[top]
            if have_last and _rec_cmp(&last, r) == 0:
                if self.remap[top * 2048 + (r.hdr & 0x7FF)] != (last.hdr & 0x7FF):
                    if len(self.conflicts) < 20:
                        self.conflicts.append((
                            _unpack_str(<uint8_t*>last.key, (last.hdr >> 11) + 1),
                            self.markets[last.hdr & 0x7FF],
                            self.markets[self.remap[top * 2048 + (r.hdr & 0x7FF)]],
                        ))
                self.duplicates += 1
            else:
                last = r[0]
                last.hdr = (r.hdr & 0xF800) | self.remap[top * 2048 + (r.hdr & 0x7FF)]
                have_last = True
                bucket = (r.hash >> fshift) if fshift < 64 else 0
                dlen = self._start_buckets(bucket, &dview[0], dlen, dbuf, dir_out)
                if self.count % STRIDE == 0:
                    self.samples.append(self.records_len)
                length = (last.hdr >> 11) + 1
                size = _packed_size(length)
                memcpy(op + olen, &last.hdr, 2)
                memcpy(op + olen + 2, last.key, size)
                olen += 2 + size
                self.records_len += 2 + size
                self.count += 1
                self.mcount[last.hdr & 0x7FF] += 1
                if olen >= out_bytes:
                    records_out.write(obuf[:olen])
                    olen = 0
            self.heads[top] += 1
            self.avail[top] -= 1
            if self.avail[top] == 0:
                self._refill(top)
                if self.avail[top] == 0:
                    self.nheap -= 1
                    self.heap[0] = self.heap[self.nheap]
            self._sift(0)
        records_out.write(obuf[:olen])
        dlen = self._start_buckets(nb, &dview[0], dlen, dbuf, dir_out)
        dir_out.write(dbuf[:dlen])


cdef inline void _put_u(uint8_t* p, uint64_t v, int width, int base, const char* digits) noexcept nogil:
    cdef int j
    for j in range(width - 1, -1, -1):
        p[j] = digits[v % base]
        v //= base


def split_directory(const uint64_t[::1] offsets, int gbits):
    """Absolute bucket offsets (a multiple of 2**gbits of them) -> (coarse uint64 per group, fine uint16
    offsets from the group's start), or None if a group spans 64 KiB or more."""
    cdef Py_ssize_t n = offsets.shape[0], i
    cdef uint64_t gmask = (1ULL << gbits) - 1
    cdef uint64_t base = 0, d
    coarse = array.array("Q", bytes(8 * (n >> gbits)))
    fine = bytearray(2 * n)
    cdef uint64_t[::1] cv = coarse
    cdef uint16_t* fv = <uint16_t*><char*>fine
    for i in range(n):
        if (<uint64_t>i & gmask) == 0:
            base = offsets[i]
            cv[i >> gbits] = base
        d = offsets[i] - base
        if offsets[i] < base or d > 65535:
            return None
        fv[i] = <uint16_t>d
    return coarse, fine


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
            r = _fmix64(idx * 0xD1B54A32D192ED03ULL + seed + 1)
            fmt = r % 100
            q = _fmix64(r ^ 0x5851F42D4C957F2DULL)  # filler characters
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


# ----------------------------------------------------------------------------------------------------------
# The C-level lookup API, for modules that cimport this one (declared in allowlist.pxd)

cdef int pack_serial(const uint8_t* s, Py_ssize_t n, Rec* rec) noexcept nogil:
    """Normalize (trim ASCII white space, any case) and pack the UTF-8 text s[:n]; 0, or -1 when the fast path
    can't: then the text is either not a serial or needs normalize_serial (non-ASCII white space)."""
    return _pack(s, n, rec)


cdef str serial_text(const Rec* rec):
    """The normalized serial a packed Rec holds."""
    return _unpack_str(<const uint8_t*>rec.key, (rec.hdr >> 11) + 1)


cdef int find_many(object allowlist, const Rec* q, int64_t* out, Py_ssize_t n) except -1:
    """out[i]: the market id of q[i] (an index into `markets`), -1 if absent, -2 if the file is damaged there;
    without the GIL."""
    cdef Allowlist self = <Allowlist?>allowlist
    if n >= RELEASE_GIL_MIN_ITEMS:
        with nogil:
            self._find_batch(q, out, n)
    else:
        self._find_batch(q, out, n)  # a thread switch would cost more than these few lookups
    return 0
