"""The allowlist builder's C loops: CSV rows packed into sorted, deduplicated runs, their k-way merge, the directory."""

from libc.stdint cimport uint8_t, uint16_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcmp, memcpy, memset

from regionlock.core.allowlist cimport (
    RL_REC_LENGTH_MASK, RL_REC_LENGTH_SHIFT, RL_REC_MARKET_MASK, Rec, pack_serial, pack_str, rl_packed_size,
    rl_rec_length, serial_text,
)

import array

from regionlock.core.allowlist_format import SAMPLE_STRIDE

cdef Py_ssize_t STRIDE = SAMPLE_STRIDE


cdef inline int _rec_cmp(const Rec* a, const Rec* b) noexcept nogil:
    """Order by hash, length, packed serial; the market is not part of the order."""
    if a.hash != b.hash:
        return -1 if a.hash < b.hash else 1
    if (a.hdr >> RL_REC_LENGTH_SHIFT) != (b.hdr >> RL_REC_LENGTH_SHIFT):
        return -1 if (a.hdr >> RL_REC_LENGTH_SHIFT) < (b.hdr >> RL_REC_LENGTH_SHIFT) else 1
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
        pack_str(serial, &rec)
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
                if pack_serial(sp, sn, rec) != 0:
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
                        serial_text(&self.recs[w]),
                        self.markets[self.recs[w].hdr & RL_REC_MARKET_MASK],
                        self.markets[self.recs[i].hdr & RL_REC_MARKET_MASK],
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
                if self.remap[top * 2048 + (r.hdr & RL_REC_MARKET_MASK)] != (last.hdr & RL_REC_MARKET_MASK):
                    if len(self.conflicts) < 20:
                        self.conflicts.append((
                            serial_text(&last),
                            self.markets[last.hdr & RL_REC_MARKET_MASK],
                            self.markets[self.remap[top * 2048 + (r.hdr & RL_REC_MARKET_MASK)]],
                        ))
                self.duplicates += 1
            else:
                last = r[0]
                last.hdr = (r.hdr & RL_REC_LENGTH_MASK) | self.remap[top * 2048 + (r.hdr & RL_REC_MARKET_MASK)]
                have_last = True
                bucket = (r.hash >> fshift) if fshift < 64 else 0
                dlen = self._start_buckets(bucket, &dview[0], dlen, dbuf, dir_out)
                if self.count % STRIDE == 0:
                    self.samples.append(self.records_len)
                length = rl_rec_length(last.hdr)
                size = rl_packed_size(length)
                memcpy(op + olen, &last.hdr, 2)
                memcpy(op + olen + 2, last.key, size)
                olen += 2 + size
                self.records_len += 2 + size
                self.count += 1
                self.mcount[last.hdr & RL_REC_MARKET_MASK] += 1
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
