"""The serial allowlist reader: a bucketed hash index of packed serials, served from a private copy of its file."""

from cpython.list cimport PyList_GET_ITEM
from cpython.unicode cimport PyUnicode_1BYTE_DATA, PyUnicode_1BYTE_KIND, PyUnicode_GET_LENGTH, PyUnicode_KIND
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcmp, memcpy, memset

from regionlock.core.release_gil cimport RELEASE_GIL_MIN_ITEMS

import array
import os

from regionlock.core import allowlist_format as _format
from regionlock.core.errors import CorruptFileError
from regionlock.core.fileformat import check_little_endian_host, load_data_file
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
    cdef bytes alphabet = _format.ALPHABET.encode()
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
# allowlist_records.h spells the record header's bits for C; allowlist_format for Python: they must agree
if (RL_REC_LENGTH_SHIFT, RL_REC_MARKET_MASK) != (_format.RECORD_LENGTH_SHIFT, _format.RECORD_MARKET_MASK):
    raise ImportError("allowlist_records.h and allowlist_format.py disagree on the record header")
cdef Py_ssize_t STRIDE = _format.SAMPLE_STRIDE


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
    h = rl_fmix64(h ^ w[0])
    h = rl_fmix64(h ^ w[1])
    h = rl_fmix64(h ^ w[2])
    rec.hash = h
    rec.hdr = <uint16_t>((n - 1) << RL_REC_LENGTH_SHIFT)
    return 0


cdef int pack_str(object serial, Rec* rec) except -1:
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
    pack_str(serial, &rec)
    return bytes((<uint8_t*>rec.key)[:rl_packed_size(rl_rec_length(rec.hdr))]), rec.hash


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
        check_little_endian_host("allowlists")
        cdef Allowlist self = cls.__new__(cls)
        name = os.fspath(path)
        mapping, header = load_data_file(path, _format.MAGIC, _format.FORMAT_VERSION, bool(verify))
        try:
            layout = _format.check_layout(header, name)
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
        cdef uint16_t qlen = q.hdr >> RL_REC_LENGTH_SHIFT
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
            size = 2 + rl_packed_size(rl_rec_length(hdr))
            if <uint64_t>size > hi - lo:
                return -2
            if (hdr >> RL_REC_LENGTH_SHIFT) == qlen and memcmp(self._records + lo + 2, q.key, size - 2) == 0:
                if (hdr & RL_REC_MARKET_MASK) >= self._nmarkets:
                    return -2
                return hdr & RL_REC_MARKET_MASK
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
        pack_str(serial, &q)
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
            pack_str(serial, &q)
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
                    pack_str(<object>PyList_GET_ITEM(items, i), &q[i])
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
            size = 2 + rl_packed_size(rl_rec_length(hdr))
            if pos + size > self._records_len:
                break
            if k == 0:
                if (hdr & RL_REC_MARKET_MASK) >= self._nmarkets:
                    break
                return _unpack_str(self._records + pos + 2, rl_rec_length(hdr)), self._markets[hdr & RL_REC_MARKET_MASK]
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
        return _format.info_dict(self.path, self._header)

    def __repr__(self):
        return f"<Allowlist {self.path!r} {self._count} serials build {self.build_id}>"


# --- the C-level lookup API, for modules that cimport this one (declared in allowlist.pxd)

cdef int pack_serial(const uint8_t* s, Py_ssize_t n, Rec* rec) noexcept nogil:
    """Normalize (trim ASCII white space, any case) and pack the UTF-8 text s[:n]; 0, or -1 when the fast path
    can't: then the text is either not a serial or needs normalize_serial (non-ASCII white space)."""
    return _pack(s, n, rec)


cdef str serial_text(const Rec* rec):
    """The normalized serial a packed Rec holds."""
    return _unpack_str(<const uint8_t*>rec.key, rl_rec_length(rec.hdr))


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
