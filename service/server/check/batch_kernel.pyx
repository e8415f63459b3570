# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The CheckDevices fast path: the request's wire format in, decisions by outcome table, the response's out."""

# Wire format (proto/regionlock/v1/device_check.proto), read as strictly as the protobuf runtime (upb) reads it:
#   CheckDevicesRequest  1: checks (repeated CheckDeviceRequest)
#   CheckDeviceRequest   1: serial, 2: ip, 3: request_id (strings, valid UTF-8), 4: explain (bool)
#   CheckDevicesResponse 1: results (repeated CheckDeviceResult)
#   CheckDeviceResult    1: request_id, 2: response (CheckDeviceResponse) | 3: error (google.rpc.Status)
#   CheckDeviceResponse  1: request_id, 2: verdict, 3: reason, 4: rule_id, 5: region, 6: sold_market,
#                        7: enforced, 8: message, 9: cache_ttl_seconds, 10: versions, 11: decision_id
# Unknown fields are skipped (groups to a depth of 100, as upb), a known field with another wire type is an
# unknown field, the last of repeated scalars wins. A response is written field by field in field-number
# order, the constant parts (outcome, region, market, versions) pre-encoded by the protobuf runtime itself
# (server/check/tables.py), so that the bytes are those SerializeToString() gives.

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.pyport cimport PY_SSIZE_T_MAX
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy, memset

from regionlock.core.allowlist cimport Rec, find_many, pack_serial, serial_text
from regionlock.core.geo cimport GeoHit, format_hit_network, lookup_texts
from regionlock.core.release_gil cimport RELEASE_GIL_MIN_ITEMS

MAX_DEPTH = 100  # nested messages and groups, as the protobuf runtime allows

cdef int C_MAX_DEPTH = MAX_DEPTH
cdef Py_ssize_t RELEASE_GIL_MIN_BYTES = 4096  # parsing: about RELEASE_GIL_MIN_ITEMS items
cdef uint64_t ASCII_MASK = 0x8080808080808080ULL


class TooManyItems(ValueError):
    """A CheckDevicesRequest with more items than the caller allows; the parse stopped at the first one over."""


cdef struct Item:
    const uint8_t* serial
    const uint8_t* ip
    const uint8_t* request_id
    uint32_t serial_len
    uint32_t ip_len
    uint32_t request_id_len
    uint32_t explain


cdef struct Out:
    uint32_t body_len  # the CheckDeviceResponse (fast items) or the CheckDeviceResult (slow ones)
    uint32_t result_len  # the CheckDeviceResult
    uint16_t outcome
    uint16_t net_len
    char net[48]


cdef struct Encoding:
    # what encode()'s two passes read, copied by value: stores through the output bytes can't alias it
    const uint16_t* cells
    Py_ssize_t ncols
    Py_ssize_t n
    Out* outs
    const Item* items
    const GeoHit* hits
    const uint8_t* slow
    const int64_t* markets
    Py_ssize_t* counts
    const uint8_t* heads
    const uint32_t* heads_off
    const uint8_t* tails
    const uint32_t* tails_off
    const uint8_t* regions
    const uint32_t* regions_off
    const uint8_t* sold
    const uint32_t* sold_off
    const uint8_t* versions
    Py_ssize_t versions_len
    const char* prefix
    Py_ssize_t prefix_len
    uint64_t first_id
    const uint8_t** slow_data
    const Py_ssize_t* slow_len


# --- reading the wire format: each reader returns the position after what it read, or NULL if malformed ---

cdef inline const uint8_t* read_varint(const uint8_t* p, const uint8_t* end, uint64_t* value) noexcept nogil:
    """A varint of at most 10 bytes (bits beyond 64 dropped)."""
    cdef uint64_t v = 0
    cdef int shift = 0
    cdef uint8_t b
    while shift < 70:
        if p >= end:
            return NULL
        b = p[0]
        p += 1
        if shift < 64:
            v |= <uint64_t>(b & 0x7F) << shift
        if not (b & 0x80):
            value[0] = v
            return p
        shift += 7
    return NULL


cdef inline const uint8_t* read_varint5(const uint8_t* p, const uint8_t* end, uint64_t* value) noexcept nogil:
    """A varint of at most 5 bytes (tags and length prefixes); up to 35 bits, which callers bound."""
    cdef uint64_t v = 0
    cdef int i
    cdef uint8_t b
    for i in range(5):
        if p >= end:
            return NULL
        b = p[0]
        p += 1
        v |= <uint64_t>(b & 0x7F) << (7 * i)
        if not (b & 0x80):
            value[0] = v
            return p
    return NULL


cdef inline const uint8_t* read_tag(const uint8_t* p, const uint8_t* end, uint32_t* field,
                                     uint32_t* wire_type) noexcept nogil:
    """A tag: a varint of at most 5 bytes that fits 32 bits (a message's fields are not numbered 0, but the
    fields of a group being skipped may be: callers check)."""
    cdef uint64_t v
    if p < end and p[0] < 0x80:  # the common one-byte tag
        v = p[0]
        p += 1
    else:
        p = read_varint5(p, end, &v)
        if p == NULL or v > 0xFFFFFFFFULL:
            return NULL
    field[0] = <uint32_t>(v >> 3)
    wire_type[0] = <uint32_t>(v & 7)
    return p


cdef inline const uint8_t* read_size(const uint8_t* p, const uint8_t* end, Py_ssize_t* size) noexcept nogil:
    """A length prefix: a varint of at most 5 bytes, no more than the bytes left."""
    cdef uint64_t v
    p = read_varint5(p, end, &v)
    if p == NULL or v > <uint64_t>(end - p):
        return NULL
    size[0] = <Py_ssize_t>v
    return p


cdef const uint8_t* skip_field(const uint8_t* p, const uint8_t* end, uint32_t field, uint32_t wire_type,
                               int depth) noexcept nogil:
    """Skip the value of an unknown field; depth: how many more groups may nest."""
    cdef uint64_t v
    cdef Py_ssize_t size
    cdef uint32_t f, w
    if wire_type == 0:
        return read_varint(p, end, &v)
    if wire_type == 1:
        return p + 8 if end - p >= 8 else NULL
    if wire_type == 2:
        p = read_size(p, end, &size)
        if p == NULL:
            return NULL
        return p + size
    if wire_type == 5:
        return p + 4 if end - p >= 4 else NULL
    if wire_type == 3:
        if depth <= 0:
            return NULL
        while True:
            p = read_tag(p, end, &f, &w)
            if p == NULL:
                return NULL
            if w == 4:
                return p if f == field else NULL
            p = skip_field(p, end, f, w, depth - 1)
            if p == NULL:
                return NULL
    return NULL  # 4 (an end-group outside its group), 6, 7


cdef inline bint valid_utf8(const uint8_t* s, Py_ssize_t n) noexcept nogil:
    """Strict UTF-8: no overlong forms, no surrogates, nothing above U+10FFFF."""
    cdef Py_ssize_t i = 0
    cdef uint64_t w
    cdef uint8_t c, c1
    while i < n:
        if n - i >= 8:
            memcpy(&w, s + i, 8)
            if not (w & ASCII_MASK):
                i += 8
                continue
        c = s[i]
        if c < 0x80:
            i += 1
            continue
        if c < 0xC2 or c > 0xF4:
            return False
        if c < 0xE0:
            if n - i < 2 or (s[i + 1] & 0xC0) != 0x80:
                return False
            i += 2
            continue
        if c < 0xF0:
            if n - i < 3 or (s[i + 1] & 0xC0) != 0x80 or (s[i + 2] & 0xC0) != 0x80:
                return False
            c1 = s[i + 1]
            if (c == 0xE0 and c1 < 0xA0) or (c == 0xED and c1 >= 0xA0):
                return False
            i += 3
            continue
        if n - i < 4 or (s[i + 1] & 0xC0) != 0x80 or (s[i + 2] & 0xC0) != 0x80 or (s[i + 3] & 0xC0) != 0x80:
            return False
        c1 = s[i + 1]
        if (c == 0xF0 and c1 < 0x90) or (c == 0xF4 and c1 >= 0x90):
            return False
        i += 4
    return True


cdef int parse_item(const uint8_t* p, const uint8_t* end, Item* item, int depth) noexcept nogil:
    """One CheckDeviceRequest; 0, -1 if malformed, -2 if a string is not UTF-8."""
    cdef uint32_t field, wire_type
    cdef Py_ssize_t size
    cdef uint64_t v
    memset(item, 0, sizeof(Item))
    while p < end:
        p = read_tag(p, end, &field, &wire_type)
        if p == NULL or field == 0:
            return -1
        if wire_type == 2 and 1 <= field <= 3:
            p = read_size(p, end, &size)
            if p == NULL:
                return -1
            if not valid_utf8(p, size):
                return -2
            if field == 1:
                item.serial = p
                item.serial_len = <uint32_t>size
            elif field == 2:
                item.ip = p
                item.ip_len = <uint32_t>size
            else:
                item.request_id = p
                item.request_id_len = <uint32_t>size
            p += size
        elif wire_type == 0 and field == 4:
            p = read_varint(p, end, &v)
            if p == NULL:
                return -1
            item.explain = v != 0
        else:
            p = skip_field(p, end, field, wire_type, depth)
            if p == NULL:
                return -1
    return 0


# --- writing the wire format ---

cdef inline Py_ssize_t varint_size(uint64_t v) noexcept nogil:
    cdef Py_ssize_t n = 1
    while v >= 0x80:
        v >>= 7
        n += 1
    return n


cdef inline uint8_t* put_varint(uint8_t* p, uint64_t v) noexcept nogil:
    while v >= 0x80:
        p[0] = <uint8_t>(v | 0x80)
        v >>= 7
        p += 1
    p[0] = <uint8_t>v
    return p + 1


cdef inline uint8_t* put_field(uint8_t* p, uint8_t tag, const void* data, Py_ssize_t n) noexcept nogil:
    """A length-delimited field with a one-byte tag."""
    p[0] = tag
    p = put_varint(p + 1, <uint64_t>n)
    memcpy(p, data, n)
    return p + n


cdef inline Py_ssize_t field_size(Py_ssize_t n) noexcept nogil:
    return 1 + varint_size(<uint64_t>n) + n


cdef inline Py_ssize_t span(const uint32_t* offsets, Py_ssize_t i) noexcept nogil:
    """The size of blob i of a Blobs' offsets."""
    return offsets[i + 1] - offsets[i]


cdef inline uint8_t* put_span(uint8_t* p, const uint8_t* base, const uint32_t* offsets, Py_ssize_t i) noexcept nogil:
    """Blob i of a Blobs' buffer and offsets."""
    cdef Py_ssize_t n = offsets[i + 1] - offsets[i]
    memcpy(p, base + offsets[i], n)
    return p + n


cdef inline int hex_digits(uint64_t v) noexcept nogil:
    cdef int n = 1
    while v >= 16:
        v >>= 4
        n += 1
    return n


cdef Py_ssize_t measure(Encoding e) noexcept nogil:
    """encode()'s pass 1: each item's outcome and sizes (and its network's text); the response's size."""
    cdef Py_ssize_t i, k, body, rid, total = 0
    cdef Out* o
    cdef const Item* it
    cdef const GeoHit* hit
    cdef int64_t market
    cdef int digits
    k = 0
    for i in range(e.n):
        o = &e.outs[i]
        it = &e.items[i]
        if e.slow[i]:
            o.body_len = <uint32_t>e.slow_len[k]
            o.result_len = o.body_len
            k += 1
            total += field_size(o.result_len)
            continue
        hit = &e.hits[i]
        market = e.markets[i]
        o.outcome = e.cells[hit.region * e.ncols + (market if market >= 0 else e.ncols - 1)]
        e.counts[o.outcome] += 1
        rid = field_size(it.request_id_len) if it.request_id_len else 0
        body = rid + span(e.heads_off, o.outcome) + span(e.tails_off, o.outcome) + e.versions_len
        if hit.region:
            o.net_len = <uint16_t>format_hit_network(hit, o.net)
            body += field_size(span(e.regions_off, hit.region) + field_size(o.net_len))
        if market >= 0:
            body += span(e.sold_off, market)
        digits = hex_digits(e.first_id + <uint64_t>i)
        body += field_size(e.prefix_len + (digits if digits > 10 else 10))
        o.body_len = <uint32_t>body
        o.result_len = <uint32_t>(rid + field_size(body))
        total += field_size(o.result_len)
    return total


cdef uint8_t* write(Encoding e, uint8_t* w) noexcept nogil:
    """encode()'s pass 2: the bytes, from w (sized by measure()); the end of what was written."""
    cdef Py_ssize_t i, k, inner, col
    cdef Out* o
    cdef const Item* it
    cdef const GeoHit* hit
    cdef int64_t market
    cdef int digits
    cdef uint64_t ident
    cdef const char* hexdigits = b"0123456789abcdef"
    k = 0
    for i in range(e.n):
        o = &e.outs[i]
        it = &e.items[i]
        w[0] = 0x0A  # CheckDevicesResponse.results
        w = put_varint(w + 1, o.result_len)
        if e.slow[i]:
            memcpy(w, e.slow_data[k], e.slow_len[k])
            w += e.slow_len[k]
            k += 1
            continue
        hit = &e.hits[i]
        market = e.markets[i]
        if it.request_id_len:  # CheckDeviceResult.request_id
            w = put_field(w, 0x0A, it.request_id, it.request_id_len)
        w[0] = 0x12  # CheckDeviceResult.response
        w = put_varint(w + 1, o.body_len)
        if it.request_id_len:  # CheckDeviceResponse.request_id
            w = put_field(w, 0x0A, it.request_id, it.request_id_len)
        w = put_span(w, e.heads, e.heads_off, o.outcome)  # verdict, reason, rule_id
        if hit.region:  # region: country, subdivision pre-encoded, then the network
            inner = span(e.regions_off, hit.region)
            w[0] = 0x2A
            w = put_varint(w + 1, <uint64_t>(inner + field_size(o.net_len)))
            w = put_span(w, e.regions, e.regions_off, hit.region)
            w = put_field(w, 0x1A, o.net, o.net_len)
        if market >= 0:  # sold_market
            w = put_span(w, e.sold, e.sold_off, market)
        w = put_span(w, e.tails, e.tails_off, o.outcome)  # enforced, message, cache_ttl_seconds
        memcpy(w, e.versions, e.versions_len)
        w += e.versions_len
        ident = e.first_id + <uint64_t>i
        digits = hex_digits(ident)
        if digits < 10:
            digits = 10
        w[0] = 0x5A  # decision_id
        w = put_varint(w + 1, <uint64_t>(e.prefix_len + digits))
        memcpy(w, e.prefix, e.prefix_len)
        w += e.prefix_len + digits
        for col in range(digits):
            (w - 1 - col)[0] = hexdigits[ident & 15]
            ident >>= 4
    return w


@cython.final
cdef class Blobs:
    """A list of byte strings as one buffer and offsets, readable without the GIL."""

    cdef bytes data
    cdef const uint8_t* base
    cdef uint32_t* offsets
    cdef Py_ssize_t count

    def __cinit__(self, list items):
        cdef Py_ssize_t i, total = 0
        self.data = b"".join(items)
        self.base = <const uint8_t*>PyBytes_AS_STRING(self.data)
        self.count = len(items)
        self.offsets = <uint32_t*>PyMem_Malloc(sizeof(uint32_t) * (self.count + 1))
        if self.offsets == NULL:
            raise MemoryError()
        for i in range(self.count):
            self.offsets[i] = <uint32_t>total
            total += len(<bytes?>items[i])
        self.offsets[self.count] = <uint32_t>total

    def __dealloc__(self):
        PyMem_Free(self.offsets)

    def __len__(self):
        return self.count



@cython.final
cdef class Table:
    """The policy's outcome for every (region id, market id) cell, with the pre-encoded response parts.

    cells: native uint16 outcome indexes, nregions rows (row 0: in no known network) of nmarkets + 1 columns
    (the last: not in the allowlist). heads[o]: fields 2-4 of outcome o, tails[o]: fields 7-9; regions[r]:
    the Region fields 1-2 of region id r; markets[m]: field 6 of market id m.
    """

    cdef bytes cells_data
    cdef const uint16_t* cells
    cdef Py_ssize_t nregions
    cdef Py_ssize_t ncols
    cdef Blobs heads
    cdef Blobs tails
    cdef Blobs regions
    cdef Blobs markets

    def __init__(self, bytes cells, Py_ssize_t nregions, Py_ssize_t nmarkets, list heads, list tails, list regions,
                 list markets):
        cdef Py_ssize_t i
        if nregions < 1 or nmarkets < 0 or len(cells) != 2 * nregions * (nmarkets + 1):
            raise ValueError("cells: expected nregions x (nmarkets + 1) uint16 outcome indexes")
        if len(heads) != len(tails) or len(regions) != nregions or len(markets) != nmarkets:
            raise ValueError("heads, tails, regions and markets don't match the table's shape")
        self.cells_data = cells
        self.cells = <const uint16_t*>PyBytes_AS_STRING(cells)
        self.nregions = nregions
        self.ncols = nmarkets + 1
        for i in range(nregions * self.ncols):
            if self.cells[i] >= len(heads):
                raise ValueError(f"cells[{i}]: outcome {self.cells[i]} out of range")
        self.heads = Blobs(heads)
        self.tails = Blobs(tails)
        self.regions = Blobs(regions)
        self.markets = Blobs(markets)

    @property
    def outcomes(self):
        return self.heads.count


@cython.final
cdef class Batch:
    """A CheckDevicesRequest read from its wire format; then looked up, then encoded as a CheckDevicesResponse.

    Items that the table can't decide are "slow": invalid ones, explain, a live override, a damaged allowlist
    bucket. The caller decides those in Python and passes their encoded CheckDeviceResult to encode().
    """

    cdef bytes data
    cdef Item* items
    cdef Py_ssize_t n
    cdef Py_ssize_t capacity
    cdef GeoHit* hits
    cdef Rec* recs
    cdef int64_t* markets
    cdef uint8_t* slow
    cdef Out* out
    cdef bint looked_up
    cdef Py_ssize_t* counts
    cdef Py_ssize_t ncounts
    cdef Py_ssize_t max_items

    def __cinit__(self, bytes data not None, Py_ssize_t max_items=PY_SSIZE_T_MAX):
        cdef const uint8_t* p = <const uint8_t*>PyBytes_AS_STRING(data)
        cdef const uint8_t* end = p + PyBytes_GET_SIZE(data)
        cdef int status
        self.data = data
        self.max_items = max_items
        self.capacity = 64
        self.items = <Item*>malloc(sizeof(Item) * self.capacity)
        if self.items == NULL:
            raise MemoryError()
        if PyBytes_GET_SIZE(data) >= RELEASE_GIL_MIN_BYTES:
            with nogil:
                status = self._parse(p, end)
        else:
            status = self._parse(p, end)
        if status == -3:
            raise MemoryError()
        if status == -4:
            raise TooManyItems(f"more than {max_items} items")
        if status == -2:
            raise ValueError(f"a string of checks[{self.n}] is not valid UTF-8")
        if status < 0:
            raise ValueError(f"the wire format is corrupt (checks[{self.n}])")

    cdef int _parse(self, const uint8_t* p, const uint8_t* end) noexcept nogil:
        """Read the items; 0, or -1 corrupt, -2 not UTF-8, -3 out of memory, -4 more than max_items (self.n: the
        item at fault). The count is checked before an item is stored, so that a request of millions of tiny
        items costs no more memory than max_items of them, and the rest is never read."""
        cdef uint32_t field, wire_type
        cdef Py_ssize_t size
        cdef int status = 0
        while p < end:
            p = read_tag(p, end, &field, &wire_type)
            if p == NULL or field == 0:
                return -1
            if field == 1 and wire_type == 2:
                p = read_size(p, end, &size)
                if p == NULL:
                    return -1
                if self.n == self.max_items:
                    return -4
                if self.n == self.capacity and self._grow() < 0:
                    return -3
                status = parse_item(p, p + size, &self.items[self.n], C_MAX_DEPTH - 1)
                if status < 0:
                    return status
                self.n += 1
                p += size
            else:
                p = skip_field(p, end, field, wire_type, C_MAX_DEPTH)
                if p == NULL:
                    return -1
        return 0

    cdef int _grow(self) noexcept nogil:
        cdef Item* bigger = <Item*>realloc(self.items, sizeof(Item) * self.capacity * 2)
        if bigger == NULL:
            return -1
        self.items = bigger
        self.capacity *= 2
        return 0

    def __dealloc__(self):
        free(self.items)
        PyMem_Free(self.hits)
        PyMem_Free(self.recs)
        PyMem_Free(self.markets)
        PyMem_Free(self.slow)
        PyMem_Free(self.out)
        PyMem_Free(self.counts)

    def __len__(self):
        return self.n

    def item(self, Py_ssize_t i):
        """(serial, ip, request_id, explain) of item i, as the protobuf runtime would read them."""
        if not 0 <= i < self.n:
            raise IndexError("batch item out of range")
        cdef Item* it = &self.items[i]
        return (
            PyUnicode_DecodeUTF8(<const char*>it.serial, it.serial_len, NULL) if it.serial_len else "",
            PyUnicode_DecodeUTF8(<const char*>it.ip, it.ip_len, NULL) if it.ip_len else "",
            PyUnicode_DecodeUTF8(<const char*>it.request_id, it.request_id_len, NULL) if it.request_id_len else "",
            bool(it.explain),
        )

    def look_up(self, geo, allowlist):
        """Normalize the serials and parse the addresses, then look them all up (without the GIL, large batches)."""
        cdef Py_ssize_t i, n = self.n, m = max(n, 1)
        cdef const char** texts = <const char**>PyMem_Malloc(sizeof(char*) * m)
        cdef Py_ssize_t* lengths = <Py_ssize_t*>PyMem_Malloc(sizeof(Py_ssize_t) * m)
        if self.hits != NULL:
            PyMem_Free(texts)
            PyMem_Free(lengths)
            raise RuntimeError("look_up() twice")
        self.hits = <GeoHit*>PyMem_Malloc(sizeof(GeoHit) * m)
        self.recs = <Rec*>PyMem_Malloc(sizeof(Rec) * m)
        self.markets = <int64_t*>PyMem_Malloc(sizeof(int64_t) * m)
        self.slow = <uint8_t*>PyMem_Malloc(m)
        try:
            if not (texts and lengths and self.hits and self.recs and self.markets and self.slow):
                raise MemoryError()
            if n >= RELEASE_GIL_MIN_ITEMS:
                with nogil:
                    self._pack_serials(texts, lengths)
            else:
                self._pack_serials(texts, lengths)
            lookup_texts(geo, texts, lengths, self.hits, n)
            find_many(allowlist, self.recs, self.markets, n)
            for i in range(n):
                # an invalid address, or a damaged allowlist bucket: decide() says what
                if self.hits[i].prefix < 0 or self.markets[i] < -1:
                    self.slow[i] = 1
            self.looked_up = True
        finally:
            PyMem_Free(texts)
            PyMem_Free(lengths)

    cdef void _pack_serials(self, const char** texts, Py_ssize_t* lengths) noexcept nogil:
        """Pack every serial for the allowlist; texts[i]: the address to look up, NULL for a slow item."""
        cdef Py_ssize_t i
        cdef Item* it
        for i in range(self.n):
            it = &self.items[i]
            self.slow[i] = it.explain or pack_serial(it.serial, it.serial_len, &self.recs[i]) != 0
            if self.slow[i]:
                texts[i] = NULL
                lengths[i] = 0
                pack_serial(<const uint8_t*>b"0", 1, &self.recs[i])  # a harmless lookup
            else:
                texts[i] = <const char*>it.ip
                lengths[i] = it.ip_len

    def apply_overrides(self, dict overrides not None, now):
        """Mark the items whose normalized serial has a live override in `overrides` (a dict: serial -> Override;
        a dict lookup each, with the GIL)."""
        cdef Py_ssize_t i
        if not self.looked_up:
            raise RuntimeError("look_up() first")
        for i in range(self.n):
            if not self.slow[i]:
                override = overrides.get(serial_text(&self.recs[i]))
                if override is not None and override.is_live(now):
                    self.slow[i] = 1

    def slow_items(self):
        """Indexes of the items to decide in Python, in order."""
        if not self.looked_up:
            raise RuntimeError("look_up() first")
        return [i for i in range(self.n) if self.slow[i]]

    def encode(self, Table table not None, bytes versions not None, bytes id_prefix not None, uint64_t first_id,
               list slow_results not None):
        """The CheckDevicesResponse: fast items from the table, slow_results (encoded CheckDeviceResult, in
        slow_items() order) for the others. Item i gets decision id id_prefix + hex(first_id + i)."""
        cdef Py_ssize_t i, k, n = self.n, total, nslow = len(slow_results)
        cdef Py_ssize_t prefix_len = PyBytes_GET_SIZE(id_prefix)
        cdef const uint8_t** slow_data = NULL
        cdef Py_ssize_t* slow_len = NULL
        cdef uint8_t* w
        cdef uint8_t* start
        cdef bytes result
        cdef Encoding e
        if not self.looked_up:
            raise RuntimeError("look_up() first")
        if self.out != NULL:
            raise RuntimeError("encode() twice")
        if prefix_len > 64:
            raise ValueError("id_prefix: at most 64 bytes")
        self.out = <Out*>PyMem_Malloc(sizeof(Out) * max(n, 1))
        self.ncounts = table.heads.count
        self.counts = <Py_ssize_t*>PyMem_Malloc(sizeof(Py_ssize_t) * max(self.ncounts, 1))
        slow_data = <const uint8_t**>PyMem_Malloc(sizeof(uint8_t*) * max(nslow, 1))
        slow_len = <Py_ssize_t*>PyMem_Malloc(sizeof(Py_ssize_t) * max(nslow, 1))
        try:
            if not (self.out and self.counts and slow_data and slow_len):
                raise MemoryError()
            memset(self.counts, 0, sizeof(Py_ssize_t) * max(self.ncounts, 1))
            for k in range(nslow):
                item = <bytes?>slow_results[k]
                slow_data[k] = <const uint8_t*>PyBytes_AS_STRING(item)
                slow_len[k] = PyBytes_GET_SIZE(item)
            k = 0
            for i in range(n):
                # a cell outside the table (data and table out of step) is decided in Python: never here
                if not self.slow[i] and (self.hits[i].region >= table.nregions or self.markets[i] >= table.ncols - 1):
                    raise ValueError("the table does not match the data (region or market id out of range)")
                if self.slow[i]:
                    k += 1
            if k != nslow:
                raise ValueError(f"slow_results: expected {k} encoded results, got {nslow}")
            e.cells, e.ncols, e.outs, e.items, e.hits = table.cells, table.ncols, self.out, self.items, self.hits
            e.slow, e.markets, e.counts, e.n = self.slow, self.markets, self.counts, n
            e.heads, e.heads_off = table.heads.base, table.heads.offsets
            e.tails, e.tails_off = table.tails.base, table.tails.offsets
            e.regions, e.regions_off = table.regions.base, table.regions.offsets
            e.sold, e.sold_off = table.markets.base, table.markets.offsets
            e.versions, e.versions_len = <const uint8_t*>PyBytes_AS_STRING(versions), PyBytes_GET_SIZE(versions)
            e.prefix, e.prefix_len, e.first_id = PyBytes_AS_STRING(id_prefix), prefix_len, first_id
            e.slow_data, e.slow_len = slow_data, slow_len
            if n >= RELEASE_GIL_MIN_ITEMS:
                with nogil:
                    total = measure(e)
            else:
                total = measure(e)
            result = PyBytes_FromStringAndSize(NULL, total)
            start = <uint8_t*>PyBytes_AS_STRING(result)
            if n >= RELEASE_GIL_MIN_ITEMS:
                with nogil:
                    w = write(e, start)
            else:
                w = write(e, start)
            if w - start != total:
                raise AssertionError(f"encoded {w - start} bytes, expected {total}")
            return result
        finally:
            PyMem_Free(slow_data)
            PyMem_Free(slow_len)

    def outcome_counts(self):
        """How many fast items each outcome of the table decided (after encode())."""
        if self.counts == NULL:
            raise RuntimeError("encode() first")
        return [self.counts[i] for i in range(self.ncounts)]


def check_one(bytes request not None, geo, allowlist, Table table not None, bytes versions not None,
              bytes id_prefix not None, uint64_t decision_id, dict overrides, now):
    """CheckDevice in one call: a CheckDeviceRequest's wire bytes in, (CheckDeviceResponse's wire bytes, outcome
    index) out, or None if Python must decide the item (invalid, explain, a live override in `overrides`, a
    damaged allowlist bucket). The decision id is id_prefix + hex(decision_id). ValueError if malformed."""
    cdef Batch batch = Batch.__new__(Batch, b"")
    cdef int status
    cdef bytes encoded
    cdef Py_ssize_t size
    batch.data = request  # the item points into it
    status = parse_item(<const uint8_t*>PyBytes_AS_STRING(request),
                        <const uint8_t*>PyBytes_AS_STRING(request) + PyBytes_GET_SIZE(request),
                        &batch.items[0], C_MAX_DEPTH - 1)  # the depth a CheckDevices item has
    if status == -2:
        raise ValueError("a string is not valid UTF-8")
    if status < 0:
        raise ValueError("the wire format is corrupt")
    batch.n = 1
    batch.look_up(geo, allowlist)
    if overrides:
        batch.apply_overrides(overrides, now)
    if batch.slow[0]:
        return None
    # the CheckDeviceResponse is the tail of the one CheckDeviceResult (its request_id, if any, comes first)
    encoded = batch.encode(table, versions, id_prefix, decision_id, [])
    size = PyBytes_GET_SIZE(encoded)
    return encoded[size - batch.out[0].body_len:], batch.out[0].outcome
