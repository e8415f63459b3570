# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Build-time painters of the geo database: the IPv4 DIR-24-8 tables and the IPv6 Poptrie, from sorted networks."""

from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memset

from regionlock.core.growbuf cimport rl_buf, rl_buf_push, rl_buf_reserve
from regionlock.core.trie cimport RL_LEAF_PREFIX_SHIFT, RL_PTR, RL_STRIDE, RL_V6_DIRECT_BITS, rl_bits6, rl_node


from regionlock.core.errors import BuildError

# The payload layout these painters produce is documented in geo.pyx (the reader); the node layout and walk
# constants both use are trie.h's.


cdef object buf_bytes(rl_buf* b):
    return PyBytes_FromStringAndSize(b.data, b.length)


# --- painters ---------------------------------------------------------------------------------------------------

cdef inline uint32_t leaf_value(uint32_t region_id, uint32_t prefix) noexcept nogil:
    return region_id | (prefix << RL_LEAF_PREFIX_SHIFT)


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
    cdef rl_buf tbl8

    def __cinit__(self):
        self.tbl24 = <uint32_t*>PyMem_Malloc(4 << 24)
        if self.tbl24 == NULL:
            raise MemoryError()
        memset(self.tbl24, 0, 4 << 24)
        memset(&self.tbl8, 0, sizeof(rl_buf))

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
            rl_buf_reserve(&self.tbl8, 1024)
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
        cdef rl_buf out
        memset(&out, 0, sizeof(rl_buf))
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
                    rl_buf_push(&out, g, 1024)
                    kept += 1
                self.tbl24[i] = RL_PTR | <uint32_t>index
            return PyBytes_FromStringAndSize(<char*>self.tbl24, 4 << 24), buf_bytes(&out)
        finally:
            PyMem_Free(out.data)


cdef class V6Painter:
    """A 16-bit direct table over 6-bit-stride nodes being painted; `finish` compresses it into a Poptrie."""

    cdef uint32_t direct[65536]
    cdef rl_buf nodes  # uint32_t[64] per node: a leaf value, or RL_PTR | node index

    def __cinit__(self):
        memset(self.direct, 0, sizeof(self.direct))
        memset(&self.nodes, 0, sizeof(rl_buf))

    def __dealloc__(self):
        PyMem_Free(self.nodes.data)

    cdef inline uint32_t* node(self, uint32_t index) noexcept:
        return <uint32_t*>self.nodes.data + <size_t>index * 64

    cdef uint32_t new_node(self, uint32_t fill) except? 0:
        cdef uint32_t index = <uint32_t>(self.nodes.length // 256), j
        if index >= RL_PTR - 1:
            raise BuildError("too many IPv6 trie nodes")
        rl_buf_reserve(&self.nodes, 256)
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
        if prefix <= RL_V6_DIRECT_BITS:
            first = <uint32_t>(hi >> (64 - RL_V6_DIRECT_BITS))
            count = (<uint32_t>1) << (RL_V6_DIRECT_BITS - prefix)
            for j in range(first, first + count):
                self.fill(&self.direct[j], value)
            return 0
        if not self.direct[hi >> (64 - RL_V6_DIRECT_BITS)] & RL_PTR:
            child = self.new_node(self.direct[hi >> (64 - RL_V6_DIRECT_BITS)])
            self.direct[hi >> (64 - RL_V6_DIRECT_BITS)] = RL_PTR | child
        child = self.direct[hi >> (64 - RL_V6_DIRECT_BITS)] & ~RL_PTR
        offset = RL_V6_DIRECT_BITS
        while prefix > offset + RL_STRIDE:
            slot_index = <size_t>child * 64 + rl_bits6(hi, lo, offset)
            if not (<uint32_t*>self.nodes.data)[slot_index] & RL_PTR:
                child = self.new_node((<uint32_t*>self.nodes.data)[slot_index])
                (<uint32_t*>self.nodes.data)[slot_index] = RL_PTR | child  # re-read: new_node may move data
            child = (<uint32_t*>self.nodes.data)[slot_index] & ~RL_PTR
            offset += RL_STRIDE
        first = rl_bits6(hi, lo, offset)
        count = (<uint32_t>1) << (offset + RL_STRIDE - prefix)
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
        cdef rl_buf queue, out_nodes, leaves
        memset(&queue, 0, sizeof(rl_buf)); memset(&out_nodes, 0, sizeof(rl_buf)); memset(&leaves, 0, sizeof(rl_buf))
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
                    rl_buf_push(&queue, &old, 4)
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
                        rl_buf_push(&queue, &old, 4)
                        next_index += 1
                        prev_leaf = False
                    else:
                        if not prev_leaf or e != last_leaf:
                            pn.leafvec |= (<uint64_t>1) << j
                            rl_buf_push(&leaves, &e, 4)
                        prev_leaf = True
                        last_leaf = e
                rl_buf_push(&out_nodes, &pn, sizeof(rl_node))
            return (bytes(direct_bytes), buf_bytes(&out_nodes),
                    buf_bytes(&leaves))
        finally:
            PyMem_Free(queue.data); PyMem_Free(out_nodes.data); PyMem_Free(leaves.data)
