# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""MaxMind DB reading loops for the geo build: the search tree walk and the data section's region fields."""

from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.mem cimport PyMem_Free
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memcmp, memcpy, memset

from regionlock.core.growbuf cimport rl_buf, rl_buf_push

from array import array

from regionlock.core.errors import BuildError

cdef size_t NOT_FOUND = <size_t>-1


cdef object buf_array(rl_buf* b, str typecode):
    result = array(typecode)
    result.frombytes(PyBytes_FromStringAndSize(b.data, b.length))
    return result


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
    cdef rl_buf v4s, v4p, v4o, v6h, v6l, v6p, v6o
    memset(&v4s, 0, sizeof(rl_buf)); memset(&v4p, 0, sizeof(rl_buf)); memset(&v4o, 0, sizeof(rl_buf))
    memset(&v6h, 0, sizeof(rl_buf)); memset(&v6l, 0, sizeof(rl_buf)); memset(&v6p, 0, sizeof(rl_buf))
    memset(&v6o, 0, sizeof(rl_buf))
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
                        rl_buf_push(&v4s, &start4, 4); rl_buf_push(&v4p, &plen, 1); rl_buf_push(&v4o, &off32, 4)
                    else:
                        plen = <uint8_t>cd
                        rl_buf_push(&v6h, &chi, 8); rl_buf_push(&v6l, &clo, 8); rl_buf_push(&v6p, &plen, 1)
                        rl_buf_push(&v6o, &off32, 4)
                        if chi == 0 and clo == 0 and cd <= 96:  # the network holds all of ::/96, the IPv4 space
                            start4 = 0
                            plen = 0
                            rl_buf_push(&v4s, &start4, 4); rl_buf_push(&v4p, &plen, 1); rl_buf_push(&v4o, &off32, 4)
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
