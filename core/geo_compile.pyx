# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Build-time loops of the geo database: MaxMind DB tree walk and record fields, IPv4 and IPv6 table painters."""

from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memcmp, memcpy, memset

from regionlock.core.trie cimport RL_MAX_OFFSET, RL_PTR, RL_STRIDE, RL_V6_DIRECT_BITS, rl_bits6, rl_node

from array import array

from regionlock.core.errors import BuildError

# The payload layout these painters produce is documented in geo.pyx (the reader); the node layout and walk
# constants both use are trie.h's.
cdef size_t NOT_FOUND = <size_t>-1


# --- growable buffers -----------------------------------------------------------------------------------------

cdef struct Buf:
    char* data
    size_t length
    size_t capacity


cdef int buf_reserve(Buf* b, size_t extra) except -1:
    cdef size_t cap = b.capacity if b.capacity else 4096
    cdef void* p
    while cap < b.length + extra:
        cap *= 2
    if cap != b.capacity:
        p = PyMem_Realloc(b.data, cap)
        if p == NULL:
            raise MemoryError()
        b.data = <char*>p
        b.capacity = cap
    return 0


cdef inline int buf_push(Buf* b, const void* item, size_t size) except -1:
    if b.length + size > b.capacity:
        buf_reserve(b, size)
    memcpy(b.data + b.length, item, size)
    b.length += size
    return 0


cdef object buf_array(Buf* b, str typecode):
    result = array(typecode)
    result.frombytes(PyBytes_FromStringAndSize(b.data, b.length))
    return result


cdef object buf_bytes(Buf* b):
    return PyBytes_FromStringAndSize(b.data, b.length)


# --- MaxMind DB: search tree ----------------------------------------------------------------------------------

cdef inline uint32_t read_record(const uint8_t* tree, size_t node, int side, int record_size) noexcept nogil:
    cdef const uint8_t* p
    if record_size == 24:
        p = tree + node * 6 + side * 3
        return (<uint32_t>p[0] << 16) | (<uint32_t>p[1] << 8) | p[2]
    if record_size == 28:
        p = tree + node * 7
        if side == 0:
            return ((<uint32_t>p[3] & 0xF0) << 20) | (<uint32_t>p[0] << 16) | (<uint32_t>p[1] << 8) | p[2]
        return ((<uint32_t>p[3] & 0x0F) << 24) | (<uint32_t>p[4] << 16) | (<uint32_t>p[5] << 8) | p[6]
    p = tree + node * 8 + side * 4
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef struct Frame:
    uint32_t node
    int depth
    uint64_t hi
    uint64_t lo


def walk_mmdb_tree(const uint8_t[::1] tree, uint32_t node_count, int record_size, int ip_version,
                   uint64_t data_size):
    """Walk a MaxMind DB search tree; return the IPv4 and IPv6 leaf networks with their data-section offsets.

    Returns (v4_starts 'I', v4_prefixes 'B', v4_offsets 'I', v6_high 'Q', v6_low 'Q', v6_prefixes 'B',
    v6_offsets 'I', aliases), in address order. IPv4 networks of an IPv6 tree are those under ::/96; the
    aliases of that subtree (records pointing at its start node, such as ::ffff:0:0/96, 2001::/32 and
    2002::/16) are not walked again, as maxminddb's own iterator skips them, but listed in `aliases` as
    (high, low, prefix length) with ::/96 itself first; an IPv4 tree (or one without an IPv4 subtree) has none.
    """
    if record_size not in (24, 28, 32):
        raise BuildError(f"unsupported record size {record_size}")
    if ip_version not in (4, 6):
        raise BuildError(f"unsupported ip_version {ip_version}")
    if node_count == 0 or <uint64_t>tree.shape[0] < <uint64_t>node_count * (record_size // 4):
        raise BuildError("search tree is truncated")
    cdef const uint8_t* t = &tree[0]
    cdef Buf v4s, v4p, v4o, v6h, v6l, v6p, v6o
    memset(&v4s, 0, sizeof(Buf)); memset(&v4p, 0, sizeof(Buf)); memset(&v4o, 0, sizeof(Buf))
    memset(&v6h, 0, sizeof(Buf)); memset(&v6l, 0, sizeof(Buf)); memset(&v6p, 0, sizeof(Buf))
    memset(&v6o, 0, sizeof(Buf))
    cdef Frame stack[300]
    cdef int sp = 0
    cdef int start_depth = 96 if ip_version == 4 else 0
    cdef uint32_t ipv4_start = node_count
    cdef uint32_t node, rec, off32
    cdef uint64_t visited = 0, chi, clo, off, hi, lo
    cdef int depth, cd, side, i
    cdef uint8_t plen
    cdef uint32_t start4
    aliases = []
    if ip_version == 6:
        ipv4_start = 0
        for i in range(96):
            if ipv4_start >= node_count:
                break
            ipv4_start = read_record(t, ipv4_start, 0, record_size)
        if ipv4_start < node_count:  # a node: maxminddb continues an IPv4 lookup there, after 96 zero bits
            aliases.append((0, 0, 96))
    try:
        stack[0].node = 0
        stack[0].depth = start_depth
        stack[0].hi = 0
        stack[0].lo = 0
        sp = 1
        while sp > 0:
            sp -= 1
            node = stack[sp].node
            depth = stack[sp].depth
            hi = stack[sp].hi
            lo = stack[sp].lo
            if ip_version == 6 and node == ipv4_start and not (depth == 96 and hi == 0 and lo == 0):
                if depth > 96:  # the reader would run out of address bits inside the IPv4 subtree
                    raise BuildError(f"corrupt search tree: an IPv4 alias at depth {depth}")
                aliases.append((hi, lo, depth))  # an alias of the IPv4 subtree
                continue
            visited += 1
            if visited > node_count:
                raise BuildError("corrupt search tree: a node is reached twice")
            for side in range(1, -1, -1):  # right pushed first so that the left subtree comes out first
                rec = read_record(t, node, side, record_size)
                chi = hi
                clo = lo
                if side:
                    if depth < 64:
                        chi |= (<uint64_t>1) << (63 - depth)
                    else:
                        clo |= (<uint64_t>1) << (127 - depth)
                cd = depth + 1
                if rec < node_count:
                    if cd >= 128:
                        raise BuildError("corrupt search tree: deeper than 128 bits")
                    stack[sp].node = rec
                    stack[sp].depth = cd
                    stack[sp].hi = chi
                    stack[sp].lo = clo
                    sp += 1
                elif rec > node_count:
                    off = <uint64_t>rec - node_count - 16
                    if rec - node_count < 16 or off >= data_size:
                        raise BuildError(f"corrupt search tree: data pointer {rec} outside the data section")
                    off32 = <uint32_t>off
                    if chi == 0 and (clo >> 32) == 0 and cd >= 96:
                        start4 = <uint32_t>clo
                        plen = <uint8_t>(cd - 96)
                        buf_push(&v4s, &start4, 4); buf_push(&v4p, &plen, 1); buf_push(&v4o, &off32, 4)
                    else:
                        plen = <uint8_t>cd
                        buf_push(&v6h, &chi, 8); buf_push(&v6l, &clo, 8); buf_push(&v6p, &plen, 1)
                        buf_push(&v6o, &off32, 4)
                        if chi == 0 and clo == 0 and cd <= 96:  # the network holds all of ::/96, the IPv4 space
                            start4 = 0
                            plen = 0
                            buf_push(&v4s, &start4, 4); buf_push(&v4p, &plen, 1); buf_push(&v4o, &off32, 4)
        return (buf_array(&v4s, "I"), buf_array(&v4p, "B"), buf_array(&v4o, "I"),
                buf_array(&v6h, "Q"), buf_array(&v6l, "Q"), buf_array(&v6p, "B"), buf_array(&v6o, "I"), aliases)
    finally:
        PyMem_Free(v4s.data); PyMem_Free(v4p.data); PyMem_Free(v4o.data)
        PyMem_Free(v6h.data); PyMem_Free(v6l.data); PyMem_Free(v6p.data); PyMem_Free(v6o.data)


# --- MaxMind DB: data section ---------------------------------------------------------------------------------

cdef class MMDBData:
    """The data section of a MaxMind DB file: reads only the fields a region needs, skipping the rest."""

    cdef const uint8_t[::1] view
    cdef const uint8_t* d
    cdef size_t n

    def __cinit__(self, const uint8_t[::1] data):
        self.view = data
        self.n = data.shape[0]
        self.d = &data[0] if self.n else NULL

    cdef size_t control(self, size_t pos, int* typ, size_t* size) except? 0:
        """Read a field's control bytes at pos; set type and size; return the position of its payload."""
        cdef uint32_t c, s
        if pos >= self.n:
            raise BuildError("corrupt data section: offset past the end")
        c = self.d[pos]
        pos += 1
        typ[0] = c >> 5
        if typ[0] == 1:  # pointer: the size bits are part of the pointer
            size[0] = c & 0x1F
            return pos
        if typ[0] == 0:
            if pos >= self.n:
                raise BuildError("corrupt data section: truncated extended type")
            typ[0] = 7 + self.d[pos]
            pos += 1
            if typ[0] < 8 or typ[0] > 15:
                raise BuildError(f"corrupt data section: unknown type {typ[0]}")
        s = c & 0x1F
        if s >= 29:
            if pos + (s - 28) > self.n:
                raise BuildError("corrupt data section: truncated size")
            if s == 29:
                s = 29 + self.d[pos]
            elif s == 30:
                s = 285 + ((<uint32_t>self.d[pos] << 8) | self.d[pos + 1])
            else:
                s = 65821 + ((<uint32_t>self.d[pos] << 16) | (<uint32_t>self.d[pos + 1] << 8) | self.d[pos + 2])
            pos += (c & 0x1F) - 28
        size[0] = s
        return pos

    cdef size_t pointer(self, size_t pos, size_t bits, size_t* after) except? 0:
        """Decode a pointer whose payload starts at pos; return its target and set `after`."""
        cdef size_t ss = (bits >> 3) & 3
        cdef size_t v = bits & 7
        cdef size_t i, target = 0
        if pos + ss + 1 > self.n:
            raise BuildError("corrupt data section: truncated pointer")
        if ss == 3:
            v = 0
        target = v
        for i in range(ss + 1):
            target = (target << 8) | self.d[pos + i]
        if ss == 1:
            target += 2048
        elif ss == 2:
            target += 526336
        after[0] = pos + ss + 1
        if target >= self.n:
            raise BuildError(f"corrupt data section: pointer {target} past the end")
        return target

    cdef size_t resolve(self, size_t pos, int* typ, size_t* size) except? 0:
        """Follow a pointer at pos if there is one; return the payload position of the value it names."""
        cdef size_t after
        cdef size_t p = self.control(pos, typ, size)
        if typ[0] == 1:
            p = self.control(self.pointer(p, size[0], &after), typ, size)
            if typ[0] == 1:
                raise BuildError("corrupt data section: pointer to a pointer")
        return p

    cdef size_t skip(self, size_t pos, int depth) except? 0:
        """Return the position just after the value at pos (a pointer counts as its own bytes)."""
        cdef int typ
        cdef size_t size, i, after
        if depth > 64:
            raise BuildError("corrupt data section: nesting deeper than 64")
        pos = self.control(pos, &typ, &size)
        if typ == 1:
            self.pointer(pos, size, &after)
            return after
        if typ == 7:
            for i in range(2 * size):
                pos = self.skip(pos, depth + 1)
            return pos
        if typ == 11:
            for i in range(size):
                pos = self.skip(pos, depth + 1)
            return pos
        if typ == 14:
            return pos
        if pos + size > self.n:
            raise BuildError("corrupt data section: value past the end")
        return pos + size

    cdef object string_at(self, size_t pos):
        """The UTF-8 string at pos (following a pointer), or None if the value is not a string."""
        cdef int typ
        cdef size_t size
        pos = self.resolve(pos, &typ, &size)
        if typ != 2:
            return None
        if pos + size > self.n:
            raise BuildError("corrupt data section: string past the end")
        return PyUnicode_DecodeUTF8(<const char*>self.d + pos, size, "strict")

    cdef bint key_is(self, size_t pos, const char* key, size_t key_len) except -1:
        cdef int typ
        cdef size_t size
        pos = self.resolve(pos, &typ, &size)
        if typ != 2:
            raise BuildError("corrupt data section: a map key is not a string")
        return size == key_len and pos + size <= self.n and memcmp(self.d + pos, key, key_len) == 0

    cdef size_t map_get(self, size_t pos, const char* key, size_t key_len) except? 0:
        """Position of the value under `key` in the map at pos (following a pointer), or NOT_FOUND."""
        cdef int typ
        cdef size_t size, i
        pos = self.resolve(pos, &typ, &size)
        if typ != 7:
            return NOT_FOUND
        for i in range(size):
            if self.key_is(pos, key, key_len):
                return self.skip(pos, 0)
            pos = self.skip(self.skip(pos, 0), 0)
        return NOT_FOUND

    def region_fields(self, size_t offset):
        """(country.iso_code, has country, registered_country.iso_code, subdivisions[0].iso_code) at offset."""
        cdef size_t country, registered, subdivisions, first
        cdef int typ
        cdef size_t size
        country = self.map_get(offset, b"country", 7)
        registered = self.map_get(offset, b"registered_country", 18)
        subdivisions = self.map_get(offset, b"subdivisions", 12)
        country_iso = registered_iso = subdivision_iso = None
        if country != NOT_FOUND:
            first = self.map_get(country, b"iso_code", 8)
            if first != NOT_FOUND:
                country_iso = self.string_at(first)
        if registered != NOT_FOUND:
            first = self.map_get(registered, b"iso_code", 8)
            if first != NOT_FOUND:
                registered_iso = self.string_at(first)
        if subdivisions != NOT_FOUND:
            first = self.resolve(subdivisions, &typ, &size)
            if typ == 11 and size > 0:
                first = self.map_get(first, b"iso_code", 8)
                if first != NOT_FOUND:
                    subdivision_iso = self.string_at(first)
        return country_iso, country != NOT_FOUND, registered_iso, subdivision_iso


    def path_string(self, size_t offset, tuple path):
        """The string at `path` (map keys as bytes, array indexes as ints) in the record at offset, or None."""
        cdef size_t pos = offset, i, size
        cdef int typ
        cdef bytes key
        for step in path:
            if isinstance(step, int):
                pos = self.resolve(pos, &typ, &size)
                if typ != 11 or step >= size:
                    return None
                for i in range(<size_t>step):
                    pos = self.skip(pos, 0)
            else:
                key = step
                pos = self.map_get(pos, key, len(key))
                if pos == NOT_FOUND:
                    return None
        return self.string_at(pos)

    def keys(self, size_t offset):
        """The keys of the map at offset (following a pointer); empty if the value is not a map."""
        cdef int typ
        cdef size_t size, i
        cdef size_t pos = self.resolve(offset, &typ, &size)
        found = []
        if typ != 7:
            return found
        for i in range(size):
            key = self.string_at(pos)
            if key is None:
                raise BuildError("corrupt data section: a map key is not a string")
            found.append(key)
            pos = self.skip(self.skip(pos, 0), 0)
        return found


def region_ids_for_offsets(const uint32_t[::1] offsets, resolve):
    """Map each data offset to a region id with `resolve(offset) -> int`, called once per distinct offset."""
    cdef Py_ssize_t i, n = offsets.shape[0]
    cdef dict cache = {}
    result = array("I", bytes(4 * n))
    cdef uint32_t[::1] out = result
    cdef uint32_t last_off = 0xFFFFFFFFUL, last_id = 0
    for i in range(n):
        if offsets[i] != last_off:
            last_off = offsets[i]
            rid = cache.get(last_off)
            if rid is None:
                rid = resolve(last_off)
                cache[last_off] = rid
            last_id = rid
        out[i] = last_id
    return result


# --- painters ---------------------------------------------------------------------------------------------------

cdef inline uint32_t leaf_value(uint32_t region_id, uint32_t prefix) noexcept nogil:
    return region_id | (prefix << 16)


cdef int check_prefixes(const uint8_t[::1] prefixes, uint8_t limit, Py_ssize_t n) except -1:
    cdef Py_ssize_t i
    if prefixes.shape[0] != n:
        raise ValueError("arrays of different lengths")
    for i in range(n):
        if prefixes[i] > limit:
            raise ValueError(f"prefix length {prefixes[i]} > {limit}")
    return 0


cdef class V4Painter:
    """DIR-24-8 being painted: later paints override earlier ones where they overlap."""

    cdef uint32_t* tbl24
    cdef Buf tbl8

    def __cinit__(self):
        self.tbl24 = <uint32_t*>PyMem_Malloc(4 << 24)
        if self.tbl24 == NULL:
            raise MemoryError()
        memset(self.tbl24, 0, 4 << 24)
        memset(&self.tbl8, 0, sizeof(Buf))

    def __dealloc__(self):
        PyMem_Free(self.tbl24)
        PyMem_Free(self.tbl8.data)

    cdef int paint_one(self, uint32_t start, uint8_t prefix, uint32_t value) except -1:
        cdef uint32_t first, count, i, j, e, group
        cdef uint32_t* g
        if prefix <= 24:
            first = start >> 8
            count = (<uint32_t>1) << (24 - prefix)
            for i in range(first, first + count):
                e = self.tbl24[i]
                if e & RL_PTR:
                    g = <uint32_t*>self.tbl8.data + (e & ~RL_PTR) * 256
                    for j in range(256):
                        g[j] = value
                else:
                    self.tbl24[i] = value
            return 0
        e = self.tbl24[start >> 8]
        if not e & RL_PTR:
            group = <uint32_t>(self.tbl8.length // 1024)
            buf_reserve(&self.tbl8, 1024)
            g = <uint32_t*>(self.tbl8.data + self.tbl8.length)
            for j in range(256):
                g[j] = e
            self.tbl8.length += 1024
            e = RL_PTR | group
            self.tbl24[start >> 8] = e
        g = <uint32_t*>self.tbl8.data + (e & ~RL_PTR) * 256
        first = start & 255
        count = (<uint32_t>1) << (32 - prefix)
        for j in range(first, first + count):
            g[j] = value
        return 0

    def paint(self, const uint32_t[::1] starts, const uint8_t[::1] prefixes, const uint32_t[::1] region_ids):
        """Paint one source's networks, shortest prefix first so that longer ones inside win."""
        cdef Py_ssize_t i, n = starts.shape[0]
        cdef int p
        check_prefixes(prefixes, 32, n)
        if region_ids.shape[0] != n:
            raise ValueError("arrays of different lengths")
        for p in range(33):
            for i in range(n):
                if prefixes[i] == p and region_ids[i]:
                    self.paint_one(starts[i] & ~((<uint64_t>0xFFFFFFFFUL) >> p), <uint8_t>p,
                                   leaf_value(region_ids[i], p))

    def finish(self):
        """Return (tbl24 bytes, tbl8 bytes): uniform groups folded into tbl24, identical groups stored once."""
        cdef uint32_t i, j, e, kept = 0
        cdef uint32_t* g
        cdef bint uniform
        cdef dict seen = {}
        cdef Buf out
        memset(&out, 0, sizeof(Buf))
        try:
            for i in range(1 << 24):
                e = self.tbl24[i]
                if not e & RL_PTR:
                    continue
                g = <uint32_t*>self.tbl8.data + (e & ~RL_PTR) * 256
                uniform = True
                for j in range(1, 256):
                    if g[j] != g[0]:
                        uniform = False
                        break
                if uniform:
                    self.tbl24[i] = g[0]
                    continue
                content = PyBytes_FromStringAndSize(<char*>g, 1024)
                index = seen.get(content)
                if index is None:
                    index = seen[content] = kept
                    buf_push(&out, g, 1024)
                    kept += 1
                self.tbl24[i] = RL_PTR | <uint32_t>index
            return PyBytes_FromStringAndSize(<char*>self.tbl24, 4 << 24), buf_bytes(&out)
        finally:
            PyMem_Free(out.data)


cdef class V6Painter:
    """A 16-bit direct table over 6-bit-stride nodes being painted; `finish` compresses it into a Poptrie."""

    cdef uint32_t direct[65536]
    cdef Buf nodes  # uint32_t[64] per node: a leaf value, or RL_PTR | node index

    def __cinit__(self):
        memset(self.direct, 0, sizeof(self.direct))
        memset(&self.nodes, 0, sizeof(Buf))

    def __dealloc__(self):
        PyMem_Free(self.nodes.data)

    cdef inline uint32_t* node(self, uint32_t index) noexcept:
        return <uint32_t*>self.nodes.data + <size_t>index * 64

    cdef uint32_t new_node(self, uint32_t fill) except? 0:
        cdef uint32_t index = <uint32_t>(self.nodes.length // 256), j
        if index >= RL_PTR - 1:
            raise BuildError("too many IPv6 trie nodes")
        buf_reserve(&self.nodes, 256)
        self.nodes.length += 256
        cdef uint32_t* n = self.node(index)
        for j in range(64):
            n[j] = fill
        return index

    cdef int fill(self, uint32_t* slot, uint32_t value) except -1:
        cdef uint32_t j, child
        if not slot[0] & RL_PTR:
            slot[0] = value
            return 0
        child = slot[0] & ~RL_PTR
        for j in range(64):
            self.fill(self.node(child) + j, value)  # node() is stable: no allocation happens in fill
        return 0

    cdef int paint_one(self, uint64_t hi, uint64_t lo, uint8_t prefix, uint32_t value) except -1:
        cdef uint32_t first, count, j, child
        cdef size_t slot_index
        cdef int offset
        if prefix <= 16:
            first = <uint32_t>(hi >> 48)
            count = (<uint32_t>1) << (16 - prefix)
            for j in range(first, first + count):
                self.fill(&self.direct[j], value)
            return 0
        if not self.direct[hi >> 48] & RL_PTR:
            child = self.new_node(self.direct[hi >> 48])
            self.direct[hi >> 48] = RL_PTR | child
        child = self.direct[hi >> 48] & ~RL_PTR
        offset = 16
        while prefix > offset + 6:
            slot_index = <size_t>child * 64 + rl_bits6(hi, lo, offset)
            if not (<uint32_t*>self.nodes.data)[slot_index] & RL_PTR:
                child = self.new_node((<uint32_t*>self.nodes.data)[slot_index])
                (<uint32_t*>self.nodes.data)[slot_index] = RL_PTR | child  # re-read: new_node may move data
            child = (<uint32_t*>self.nodes.data)[slot_index] & ~RL_PTR
            offset += 6
        first = rl_bits6(hi, lo, offset)
        count = (<uint32_t>1) << (offset + 6 - prefix)
        for j in range(first, first + count):
            self.fill(self.node(child) + j, value)
        return 0

    def paint(self, const uint64_t[::1] high, const uint64_t[::1] low, const uint8_t[::1] prefixes,
              const uint32_t[::1] region_ids):
        """Paint one source's networks, shortest prefix first so that longer ones inside win."""
        cdef Py_ssize_t i, n = high.shape[0]
        cdef int p
        cdef uint64_t mhi, mlo
        check_prefixes(prefixes, 128, n)
        if low.shape[0] != n or region_ids.shape[0] != n:
            raise ValueError("arrays of different lengths")
        for p in range(129):
            mhi = 0 if p == 0 else (~(<uint64_t>0)) << (64 - p) if p < 64 else ~(<uint64_t>0)
            mlo = 0 if p <= 64 else (~(<uint64_t>0)) << (128 - p) if p < 128 else ~(<uint64_t>0)
            for i in range(n):
                if prefixes[i] == p and region_ids[i]:
                    self.paint_one(high[i] & mhi, low[i] & mlo, <uint8_t>p, leaf_value(region_ids[i], p))

    def finish(self):
        """Compress into (direct bytes, nodes bytes, leaves bytes): children of a node are contiguous (BFS)."""
        direct_bytes = bytearray(4 * 65536)
        cdef uint32_t* direct = <uint32_t*><char*>direct_bytes
        cdef Buf queue, out_nodes, leaves
        memset(&queue, 0, sizeof(Buf)); memset(&out_nodes, 0, sizeof(Buf)); memset(&leaves, 0, sizeof(Buf))
        cdef uint32_t next_index = 0, j, e, old, last_leaf
        cdef size_t head = 0
        cdef uint32_t* n
        cdef rl_node pn
        cdef bint prev_leaf
        try:
            for j in range(65536):
                e = self.direct[j]
                if e & RL_PTR:
                    old = e & ~RL_PTR
                    buf_push(&queue, &old, 4)
                    direct[j] = RL_PTR | next_index
                    next_index += 1
                else:
                    direct[j] = e
            while head < queue.length // 4:
                old = (<uint32_t*>queue.data)[head]
                head += 1
                n = self.node(old)
                pn.vector = 0
                pn.leafvec = 0
                pn.base0 = <uint32_t>(leaves.length // 4)
                pn.base1 = next_index
                prev_leaf = False
                last_leaf = 0
                for j in range(64):
                    e = n[j]
                    if e & RL_PTR:
                        pn.vector |= (<uint64_t>1) << j
                        old = e & ~RL_PTR
                        buf_push(&queue, &old, 4)
                        next_index += 1
                        prev_leaf = False
                    else:
                        if not prev_leaf or e != last_leaf:
                            pn.leafvec |= (<uint64_t>1) << j
                            buf_push(&leaves, &e, 4)
                        prev_leaf = True
                        last_leaf = e
                buf_push(&out_nodes, &pn, sizeof(rl_node))
            return (bytes(direct_bytes), buf_bytes(&out_nodes),
                    buf_bytes(&leaves))
        finally:
            PyMem_Free(queue.data); PyMem_Free(out_nodes.data); PyMem_Free(leaves.data)
