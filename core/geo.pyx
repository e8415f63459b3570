# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The IP-to-region database: a DIR-24-8 (IPv4) and Poptrie (IPv6) served from a private in-memory copy of its file."""

# Payload layout (format version 1, little-endian), sizes given in the metadata's "layout":
#   tbl24   2**24 x u32      IPv4 by the top 24 bits: a leaf, or PTR | tbl8 group index
#   tbl8    groups x 256 u32 IPv4 by the last 8 bits: a leaf
#   direct  65536 x u32      IPv6 by the top 16 bits: a leaf, or PTR | node index
#   nodes   count x 24 bytes Poptrie nodes of stride 6: vector u64, leafvec u64, base0 u32, base1 u32
#   leaves  count x u32      the nodes' leaves, runs of equal leaves stored once
# A leaf is region id (bits 0-15, 0 = in no network) | prefix length of the matched network << 16.
# IPv6 aliases of the IPv4 space (metadata "ipv4_aliases", geo_aliases.py) are not in the IPv6 tables: an IPv6
# lookup first tests them and, inside one of length L, takes the IPv4 leaf of bits L..L+31 with L added to its
# prefix length, so the network is the IPv6 one MaxMind's reader reports (2002:565:d000::/37).
# A Poptrie node's child for 6-bit chunk v is node base1 + popcount(vector & mask(v)) - 1 if bit v of
# vector is set, else leaf base0 + popcount(leafvec & mask(v)) - 1, where mask(v) keeps bits 0..v.
# Every index read from the file is bounds-checked before use: a damaged file gives wrong answers, never a crash.

cimport cython
from cpython cimport array as carray
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset

from regionlock.core.geo_walk cimport (
    RL_MAX_ALIASES, rl_addr, rl_alias, rl_have_hw_popcount, rl_leaf4, rl_leaf6, rl_mask_network, rl_packed6_to_addr,
    rl_tables, rl_walk_fn, rl_walk_hw, rl_walk_sw,
)
from regionlock.core.ipaddr cimport format_network, format_network_text, parse_object, parse_text
from regionlock.core.release_gil cimport RELEASE_GIL_MIN_ITEMS
from regionlock.core.trie cimport RL_LEAF_REGION_MASK, rl_node

import array
import ipaddress
import sys

from regionlock.core.errors import CorruptFileError
from regionlock.core.fileformat import check_little_endian_host, load_data_file
from regionlock.core.geo_aliases import METADATA_KEY as ALIASES_KEY
from regionlock.core.geo_aliases import parse_aliases
from regionlock.core.ipaddr import parse_ip  # regionlock.core.geo.parse_ip, as before the split

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object, Py_ssize_t*) except NULL

ctypedef rl_addr Addr

# the batch walker: with the popcnt instruction where the CPU has it (chosen once, at import)
cdef rl_walk_fn walk_many = rl_walk_hw if rl_have_hw_popcount() else rl_walk_sw

MAGIC = b"RLGEO\0\0\0"
FORMAT_VERSION = 1
MAX_REGIONS = 65535
TBL24_ENTRIES = 1 << 24
DIRECT_ENTRIES = 1 << 16
NODE_SIZE = sizeof(rl_node)

cdef carray.array _U16 = array.array("H")


@cython.final
@cython.freelist(128)
@cython.no_gc
cdef class Region:
    """Where an address is: ISO country, full ISO 3166-2 subdivision or None, and the matched network."""

    cdef readonly str country
    cdef readonly object subdivision
    cdef object _network  # formatted lazily
    cdef uint64_t _hi
    cdef uint64_t _lo
    cdef int _prefix  # -1: no network
    cdef bint _v6

    def __init__(self, str country not None, subdivision=None, network=None):
        if subdivision is not None and not isinstance(subdivision, str):
            raise TypeError("subdivision must be a str or None")
        self.country = country
        self.subdivision = subdivision
        self._prefix = -1
        if network is not None:
            net = ipaddress.ip_network(network)
            self._v6 = net.version == 6
            self._hi = int(net.network_address) >> 64
            self._lo = int(net.network_address) & 0xFFFFFFFFFFFFFFFFULL
            self._prefix = net.prefixlen

    @property
    def network(self):
        """CIDR text of the source network that matched (the most specific after overlays), or None."""
        if self._prefix < 0:
            return None
        if self._network is None:
            self._network = format_network(self._v6, self._hi, self._lo, self._prefix)
        return self._network

    def __eq__(self, other):
        if not isinstance(other, Region):
            return NotImplemented
        cdef Region o = other
        return (self.country == o.country and self.subdivision == o.subdivision and self._prefix == o._prefix
                and (self._prefix < 0 or (self._v6 == o._v6 and self._hi == o._hi and self._lo == o._lo)))

    def __hash__(self):
        if self._prefix < 0:
            return hash((self.country, self.subdivision))
        return hash((self.country, self.subdivision, self._v6, self._hi, self._lo, self._prefix))

    def __repr__(self):
        return f"Region(country={self.country!r}, subdivision={self.subdivision!r}, network={self.network!r})"

    def __reduce__(self):
        return Region, (self.country, self.subdivision, self.network)


# --- the database ---------------------------------------------------------------------------------------------

cdef object _int_field(dict layout, str key, object name):
    value = layout.get(key)
    if type(value) is not int or value < 0 or value >= (1 << 31):
        raise CorruptFileError(f"{name}: corrupt: bad layout field {key!r}")
    return value


@cython.final
cdef class GeoDatabase:
    """An opened region database; thread-safe and shareable; lookups never touch the disk."""

    cdef object _mapping
    cdef const uint8_t[::1] _view  # keeps the mapping exported: it can't be closed under a lookup
    cdef object _header
    cdef rl_tables t  # pointers into the mapping, and to `aliases`
    cdef rl_alias aliases[16]  # RL_MAX_ALIASES, as geo_aliases.MAX_ALIASES
    cdef uint64_t alias_top[1024]
    cdef readonly tuple ipv4_aliases
    cdef uint32_t nregions  # including the placeholder 0
    cdef list _countries
    cdef list _subdivisions
    cdef list _regions
    cdef readonly list regions
    cdef readonly object path

    def __init__(self):
        raise TypeError("use GeoDatabase.open(path)")

    @classmethod
    def open(cls, path, bint verify=True):
        """Read a database file into private memory (load_data_file) and serve that copy; with verify, check the
        payload's SHA-256 first."""
        check_little_endian_host("geo databases")
        cdef GeoDatabase self = GeoDatabase.__new__(GeoDatabase)
        mapping, header = load_data_file(path, MAGIC, FORMAT_VERSION, verify)
        try:
            self._load(mapping, header, path)
        except BaseException:
            self._view = None
            mapping.close()
            raise
        return self

    cdef int _load(self, mapping, header, path) except -1:
        name = str(path)
        meta = header.metadata
        layout = meta.get("layout")
        if not isinstance(layout, dict):
            raise CorruptFileError(f"{name}: corrupt: no layout in the metadata")
        ngroups = _int_field(layout, "tbl8_groups", name)
        nnodes = _int_field(layout, "v6_nodes", name)
        nleaves = _int_field(layout, "v6_leaves", name)
        expected = 4 * TBL24_ENTRIES + 1024 * ngroups + 4 * DIRECT_ENTRIES + NODE_SIZE * nnodes + 4 * nleaves
        if expected != header.payload_length:
            raise CorruptFileError(f"{name}: corrupt: layout needs {expected} payload bytes, "
                                   f"the file has {header.payload_length}")
        table = meta.get("regions")
        if (not isinstance(table, list) or len(table) > MAX_REGIONS or not all(
                isinstance(r, list) and len(r) == 2 and isinstance(r[0], str) and isinstance(r[1], (str, type(None)))
                for r in table)):
            raise CorruptFileError(f"{name}: corrupt: bad region table")
        try:
            # a file built before aliases has none: it answers as it did when built (rebuild to resolve them)
            aliases = parse_aliases(meta.get(ALIASES_KEY, []))
        except ValueError as exc:
            raise CorruptFileError(f"{name}: corrupt: {exc}") from None
        self._set_aliases(aliases)
        self.path = path
        self._mapping = mapping
        self._header = header
        self._view = mapping
        cdef const uint8_t* p = &self._view[header.payload_offset]
        self.t.tbl24 = <const uint32_t*>p
        p += 4 * TBL24_ENTRIES
        self.t.tbl8 = <const uint32_t*>p
        self.t.ngroups = ngroups
        p += 1024 * ngroups
        self.t.direct = <const uint32_t*>p
        p += 4 * DIRECT_ENTRIES
        self.t.nodes = <const rl_node*>p
        self.t.nnodes = nnodes
        p += NODE_SIZE * nnodes
        self.t.leaves = <const uint32_t*>p
        self.t.nleaves = nleaves
        self.nregions = len(table) + 1
        self._countries = [None] + [sys.intern(r[0]) for r in table]
        self._subdivisions = [None] + [None if r[1] is None else sys.intern(r[1]) for r in table]
        self.regions = [("", None)] + [(r[0], r[1]) for r in table]
        self._regions = [None] + [self._make(i) for i in range(1, self.nregions)]
        return 0

    cdef int _set_aliases(self, tuple aliases) except -1:
        cdef uint32_t n = 0, top, v
        cdef int length
        memset(self.alias_top, 0, sizeof(self.alias_top))
        mapped = ipaddress.IPv6Network("::ffff:0:0/96")
        if len(aliases) > RL_MAX_ALIASES:  # parse_aliases bounds them already; this guards the C array
            raise CorruptFileError(f"more than {RL_MAX_ALIASES} IPv4 aliases")
        for alias in aliases:
            if alias.subnet_of(mapped):
                continue  # parsing already turns every IPv4-mapped address into IPv4: never tested, never paid for
            length = alias.prefixlen
            value = int(alias.network_address)
            mask = int(alias.netmask)
            self.aliases[n].hi = value >> 64
            self.aliases[n].lo = value & 0xFFFFFFFFFFFFFFFF
            self.aliases[n].mhi = mask >> 64
            self.aliases[n].mlo = mask & 0xFFFFFFFFFFFFFFFF
            self.aliases[n].len = length
            top = <uint32_t>(value >> 112)
            for v in range(top, top + (1 << max(16 - length, 0))):
                self.alias_top[v >> 6] |= (<uint64_t>1) << (v & 63)
            n += 1
        self.t.aliases = self.aliases
        self.t.alias_top = self.alias_top
        self.t.naliases = n
        self.ipv4_aliases = tuple(str(alias) for alias in aliases)
        return 0

    cdef Region _make(self, uint32_t rid):
        cdef Region r = Region.__new__(Region)
        r.country = self._countries[rid]
        r.subdivision = self._subdivisions[rid]
        r._prefix = -1
        return r

    # --- the walks: plain C, no Python objects, no GIL needed ---

    cdef inline uint32_t leaf4(self, uint32_t a) noexcept nogil:
        return rl_leaf4(&self.t, a)

    cdef inline void leaves_many(self, const Addr* a, uint32_t* out, Py_ssize_t n) noexcept nogil:
        walk_many(&self.t, a, out, n)

    cdef inline uint32_t leaf(self, Addr* a) noexcept nogil:
        if a.v6:
            return rl_leaf6(&self.t, a)
        return rl_leaf4(&self.t, <uint32_t>a.lo)

    cdef inline uint32_t region_of(self, uint32_t leaf) noexcept nogil:
        leaf &= RL_LEAF_REGION_MASK
        return leaf if leaf < self.nregions else 0

    cdef Region _region_at(self, Addr* a, uint32_t leaf):
        cdef uint32_t rid = self.region_of(leaf)
        if rid == 0:
            return None
        cdef Region r = Region.__new__(Region)
        r.country = self._countries[rid]
        r.subdivision = self._subdivisions[rid]
        r._v6 = a.v6
        r._prefix = rl_mask_network(a, leaf, &r._hi, &r._lo)
        return r

    # --- the Python API ---

    def lookup(self, ip):
        """The Region of an address (str, bytes of 4 or 16, int), or None if it is in no network."""
        cdef Addr a
        parse_object(ip, &a)
        return self._region_at(&a, self.leaf(&a))

    def region_id(self, ip):
        """The region id of an address (0: in no network): the fast path; see region() and regions."""
        cdef Addr a
        parse_object(ip, &a)
        return self.region_of(self.leaf(&a))

    def region(self, Py_ssize_t region_id):
        """The Region (network None) of a region id, None for 0; IndexError if out of range."""
        if region_id < 0 or region_id >= self.nregions:
            raise IndexError(f"region id {region_id} out of range 0..{self.nregions - 1}")
        return self._regions[region_id]

    cdef uint32_t* _walk_many(self, const Addr* addrs, Py_ssize_t n) except NULL:
        """The leaves of n parsed addresses, walked without the GIL, in a new array the caller PyMem_Frees."""
        cdef uint32_t* leaves = <uint32_t*>PyMem_Malloc(sizeof(uint32_t) * (n + 1))
        if leaves == NULL:
            raise MemoryError()
        with nogil:
            self.leaves_many(addrs, leaves, n)
        return leaves

    cdef Addr* _parse_many(self, list items) except NULL:
        """Parse every item (str without the GIL); raise ValueError naming the first bad one."""
        cdef Py_ssize_t i, n = len(items), bad = -1
        cdef Addr* addrs = <Addr*>PyMem_Malloc(sizeof(Addr) * (n + 1))
        cdef const char** texts = <const char**>PyMem_Malloc(sizeof(char*) * (n + 1))
        cdef Py_ssize_t* lengths = <Py_ssize_t*>PyMem_Malloc(sizeof(Py_ssize_t) * (n + 1))
        try:
            if addrs == NULL or texts == NULL or lengths == NULL:
                raise MemoryError()
            for i in range(n):
                item = items[i]
                if type(item) is str:
                    try:
                        texts[i] = PyUnicode_AsUTF8AndSize(item, &lengths[i])
                    except UnicodeError:
                        raise ValueError(f"invalid IP address: {item!r}") from None
                else:
                    texts[i] = NULL
                    parse_object(item, &addrs[i])
            with nogil:
                for i in range(n):
                    if texts[i] != NULL and not parse_text(texts[i], lengths[i], &addrs[i]):
                        bad = i
                        break
            if bad >= 0:
                raise ValueError(f"invalid IP address: {items[bad]!r}")
            return addrs
        except BaseException:
            PyMem_Free(addrs)
            raise
        finally:
            PyMem_Free(texts)
            PyMem_Free(lengths)

    def lookup_many(self, ips):
        """[lookup(ip) for ip in ips], parsing and walking without the GIL."""
        cdef list items = list(ips)
        cdef Py_ssize_t i, n = len(items)
        cdef Addr* addrs = self._parse_many(items)
        cdef uint32_t* leaves = NULL
        try:
            leaves = self._walk_many(addrs, n)
            return [self._region_at(&addrs[i], leaves[i]) for i in range(n)]
        finally:
            PyMem_Free(addrs)
            PyMem_Free(leaves)

    def region_ids(self, ips):
        """array('H') of the region ids of ips (any iterable of what lookup takes), walked without the GIL."""
        cdef list items = list(ips)
        cdef Py_ssize_t i, n = len(items)
        cdef Addr* addrs = self._parse_many(items)
        cdef carray.array result = carray.clone(_U16, n, False)
        cdef uint16_t* out = result.data.as_ushorts
        cdef uint32_t* leaves = NULL
        try:
            leaves = self._walk_many(addrs, n)
            with nogil:
                for i in range(n):
                    out[i] = <uint16_t>self.region_of(leaves[i])
            return result
        finally:
            PyMem_Free(addrs)
            PyMem_Free(leaves)

    def region_ids_v4(self, buffer):
        """array('H') of region ids for packed IPv4 addresses: a buffer of native-endian uint32 (array('I'))."""
        cdef const uint8_t[::1] raw = memoryview(buffer).cast("B")
        cdef Py_ssize_t i, n = raw.shape[0] // 4
        cdef uint32_t a
        if raw.shape[0] % 4:
            raise ValueError("packed IPv4 addresses: the buffer's length is not a multiple of 4")
        cdef carray.array result = carray.clone(_U16, n, False)
        cdef uint16_t* out = result.data.as_ushorts
        cdef const uint8_t* p = &raw[0] if n else NULL
        with nogil:
            for i in range(n):
                memcpy(&a, p + 4 * i, 4)
                out[i] = <uint16_t>self.region_of(self.leaf4(a))
        return result

    def region_ids_v6(self, buffer):
        """array('H') of region ids for packed IPv6 addresses: 16 bytes each, network order (ip.packed)."""
        cdef const uint8_t[::1] raw = memoryview(buffer).cast("B")
        cdef Py_ssize_t i, n = raw.shape[0] // 16
        if raw.shape[0] % 16:
            raise ValueError("packed IPv6 addresses: the buffer's length is not a multiple of 16")
        cdef carray.array result = carray.clone(_U16, n, False)
        cdef uint16_t* out = result.data.as_ushorts
        cdef const uint8_t* p = &raw[0] if n else NULL
        cdef Addr chunk[256]
        cdef uint32_t leaves[256]
        cdef Py_ssize_t j, m
        with nogil:
            for i in range(0, n, 256):
                m = min(256, n - i)
                for j in range(m):
                    rl_packed6_to_addr(p + 16 * (i + j), &chunk[j])
                self.leaves_many(chunk, leaves, m)
                for j in range(m):
                    out[i + j] = <uint16_t>self.region_of(leaves[j])
        return result

    def leaves_v4(self, buffer):
        """array('I') of raw leaves (region id | prefix length << 16) for packed IPv4, for tests and tools."""
        cdef const uint8_t[::1] raw = memoryview(buffer).cast("B")
        cdef Py_ssize_t i, n = raw.shape[0] // 4
        cdef uint32_t a, e
        result = array.array("I", bytes(4 * n))
        cdef uint32_t[::1] out = result
        with nogil:
            for i in range(n):
                memcpy(&a, &raw[4 * i], 4)
                e = self.leaf4(a)
                out[i] = e if self.region_of(e) else 0
        return result

    def leaves_v6(self, buffer):
        """array('I') of raw leaves (region id | prefix length << 16) for packed IPv6, for tests and tools."""
        cdef const uint8_t[::1] raw = memoryview(buffer).cast("B")
        cdef Py_ssize_t i, n = raw.shape[0] // 16
        cdef Addr a
        cdef uint32_t e
        result = array.array("I", bytes(4 * n))
        cdef uint32_t[::1] out = result
        with nogil:
            for i in range(n):
                rl_packed6_to_addr(&raw[16 * i], &a)
                e = self.leaf(&a)
                out[i] = e if self.region_of(e) else 0
        return result

    @property
    def info(self):
        """The header: metadata (without the region table), format version, build id, payload size and hash."""
        meta = {k: v for k, v in self._header.metadata.items() if k != "regions"}
        meta["format_version"] = self._header.version
        meta["build_id"] = self._header.build_id
        meta["payload_sha256"] = self._header.payload_sha256.hex()
        meta["payload_length"] = self._header.payload_length
        meta["region_count"] = self.nregions - 1
        return meta

    @property
    def build_id(self):
        """First 16 hex digits of the payload's SHA-256."""
        return self._header.build_id

    @property
    def network_count(self):
        """Number of source networks compiled in (records without a country are not counted)."""
        networks = self._header.metadata.get("networks", {})
        return int(networks.get("ipv4", 0)) + int(networks.get("ipv6", 0))

    def __repr__(self):
        return f"<GeoDatabase {str(self.path)!r} build {self.build_id}>"


# --- the C-level batch API, for modules that cimport this one (declared in geo.pxd) ---------------------------

cdef int lookup_texts(object db, const char* const* texts, const Py_ssize_t* lengths, GeoHit* out,
                      Py_ssize_t n) except -1:
    """Parse and look up n address texts (UTF-8, as lookup() reads a str), without the GIL for large n.

    out[i]: region id (0: in no network), the matched network (masked address and prefix length), or
    prefix -1 when texts[i] is NULL or not an IP address (lookup() would raise ValueError for it).
    """
    cdef GeoDatabase self = <GeoDatabase?>db
    cdef Addr* addrs = <Addr*>PyMem_Malloc(sizeof(Addr) * (n + 1))
    cdef uint32_t* leaves = <uint32_t*>PyMem_Malloc(sizeof(uint32_t) * (n + 1))
    try:
        if addrs == NULL or leaves == NULL:
            raise MemoryError()
        if n >= RELEASE_GIL_MIN_ITEMS:
            with nogil:
                _hits_of_texts(self, texts, lengths, out, addrs, leaves, n)
        else:
            _hits_of_texts(self, texts, lengths, out, addrs, leaves, n)
        return 0
    finally:
        PyMem_Free(addrs)
        PyMem_Free(leaves)


cdef void _hits_of_texts(GeoDatabase self, const char* const* texts, const Py_ssize_t* lengths, GeoHit* out,
                         Addr* addrs, uint32_t* leaves, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    cdef uint32_t leaf
    for i in range(n):
        if texts[i] != NULL and parse_text(texts[i], lengths[i], &addrs[i]):
            out[i].prefix = 0
        else:
            out[i].prefix = -1
            addrs[i].v6 = False
            addrs[i].hi = 0
            addrs[i].lo = 0
    self.leaves_many(addrs, leaves, n)
    for i in range(n):
        if out[i].prefix < 0:
            out[i].region = 0
            out[i].v6 = False
            out[i].hi = out[i].lo = 0
            continue
        leaf = leaves[i]
        out[i].region = self.region_of(leaf)
        out[i].v6 = addrs[i].v6
        out[i].prefix = rl_mask_network(&addrs[i], leaf, &out[i].hi, &out[i].lo)


cdef Py_ssize_t format_hit_network(const GeoHit* hit, char* buf) noexcept nogil:
    """The CIDR text of a hit's network into buf (at least 48 bytes); its length."""
    return format_network_text(buf, hit.v6, hit.hi, hit.lo, hit.prefix)
