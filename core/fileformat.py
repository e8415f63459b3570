"""The header shared by every regionlock data file, checksums, and the atomic file writer.

Layout of a data file (all integers little-endian):

    offset  size  field
    0       8     magic: names the kind of file (b"RLGEO\\0\\0\\0", b"RLALLOW\\0", ...)
    8       4     format version of that kind
    12      4     CRC-32 of bytes 16..72 and of the metadata JSON
    16      4     length of the metadata JSON in bytes
    20      4     reserved, zero
    24      8     payload offset (a multiple of 4096, after the metadata)
    32      8     payload length; the file ends exactly at offset + length
    40      32    SHA-256 of the payload
    72      ...   metadata: UTF-8 JSON object (build time, sources, counts, tables)
    ...           zero padding up to the payload offset
    offset  len   payload: the lookup structure itself, used as it lies in memory

A reader never serves the file's own pages: load_data_file reads the file once into memory of its own and
validates (and verifies) that copy, so that a file truncated or overwritten in place under a running server
can neither crash it (SIGBUS on a shared file mapping) nor change what was verified. Processes that share
their loads (share_loaded_files) keep one copy of each content among them, in a sealed memfd.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import mmap
import os
import re
import struct
import sys
import tempfile
import time
import weakref
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from regionlock.core.errors import CorruptFileError, FormatVersionError

PREAMBLE = struct.Struct("<8sIIIIQQ32s")
# The header CRC covers the preamble after magic (8 bytes), version (4) and the CRC itself (4), then the metadata
CRC_COVERS_FROM = 16
PAYLOAD_ALIGN = 4096
MAX_METADATA_BYTES = 64 << 20
MAX_METADATA_DEPTH = 32  # our headers nest 4 deep; json.loads would recurse as deep as any file says
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_HASH_CHUNK = 8 << 20
_READ_CHUNK = 64 << 20  # per read(): few system calls, and Linux reads at most 2 GiB at once
# a shared copy can't be written, shrunk or grown by anyone, nor its seals changed
_SEALS = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
_share_dir: str | None = None


@dataclass(frozen=True, slots=True)
class FileHeader:
    """The parsed, validated header of a data file."""

    magic: bytes
    version: int
    metadata: dict[str, Any]
    payload_offset: int
    payload_length: int
    payload_sha256: bytes

    @property
    def build_id(self) -> str:
        """A short identifier of this build: the first 16 hex digits of the payload's SHA-256."""
        return self.payload_sha256.hex()[:16]


def source_info(paths: Iterable[str | os.PathLike[str]]) -> list[dict[str, Any]]:
    """Name and SHA-256 of each source file, for a header's `sources` list."""
    sources = []
    for path in paths:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(_HASH_CHUNK):
                digest.update(chunk)
        sources.append({"name": os.path.basename(os.fspath(path)), "sha256": digest.hexdigest()})
    return sources


def build_time(epoch: float | None = None) -> str:
    """A UTC time (by default now) as an RFC 3339 string, for a header's `build_time`."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _json_depth(text: bytes) -> int:
    """How deep the arrays and objects of a JSON text nest, counted without parsing it (strings skipped)."""
    depth = deepest = 0
    for bracket in _JSON_STRING.sub(b"", text).translate(None, _NOT_BRACKETS):
        depth += 1 if bracket in b"[{" else -1
        deepest = max(deepest, depth)
    return deepest


def _payload_offset(metadata_json: bytes) -> int:
    end = PREAMBLE.size + len(metadata_json)
    return (end + PAYLOAD_ALIGN - 1) // PAYLOAD_ALIGN * PAYLOAD_ALIGN


def _header_crc(fields_after_crc: bytes, metadata_json: bytes) -> int:
    return zlib.crc32(metadata_json, zlib.crc32(fields_after_crc))


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Write to a temporary file beside `path`; on success fsync and rename it into place.

    On any exception the temporary file is removed and `path` is left as it was, so a
    reader never sees a half-written file.
    """
    target = os.path.abspath(os.fspath(path))
    directory = os.path.dirname(target)
    fd, tmp_path = tempfile.mkstemp(prefix="." + os.path.basename(target) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w+b") as f:
            # mkstemp creates the file 0600: give the data file the permissions open() would
            # (0666 & ~umask), so that service workers running as another user can read it
            umask = os.umask(0o022)
            os.umask(umask)
            os.fchmod(f.fileno(), 0o666 & ~umask)
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_path)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_data_file(
    path: str | os.PathLike[str],
    magic: bytes,
    version: int,
    metadata: dict[str, Any],
    payload_chunks: Iterable[bytes | bytearray | memoryview],
) -> FileHeader:
    """Write a complete data file atomically: header, metadata, then the payload chunks streamed."""
    if len(magic) != 8:
        raise ValueError("magic must be 8 bytes")
    metadata_json = json.dumps(metadata, sort_keys=True, separators=(",", ":")).encode()
    offset = _payload_offset(metadata_json)
    digest = hashlib.sha256()
    length = 0
    with atomic_output(path) as f:
        f.write(b"\0" * offset)
        for chunk in payload_chunks:
            digest.update(chunk)
            f.write(chunk)
            length += len(chunk)
        sha = digest.digest()
        after_crc = PREAMBLE.pack(magic, version, 0, len(metadata_json), 0, offset, length, sha)[CRC_COVERS_FROM:]
        crc = _header_crc(after_crc, metadata_json)
        f.seek(0)
        f.write(PREAMBLE.pack(magic, version, crc, len(metadata_json), 0, offset, length, sha))
        f.write(metadata_json)
    return FileHeader(magic, version, metadata, offset, length, sha)


def parse_header(buf: Any, magic: bytes, version: int, name: str, size: int | None = None) -> FileHeader:
    """Validate the header of a mapped file (magic, version, CRC, bounds); raise a clear error if bad.

    Checks the file length against the payload bounds, so a truncated or extended file is refused. `size`: the
    file's length when `buf` holds only its header (read_header), else `buf` is the whole file.
    """
    size = len(buf) if size is None else size
    if size < PREAMBLE.size:
        raise CorruptFileError(f"{name}: truncated: {size} bytes is shorter than the header")
    file_magic, file_version, crc, meta_len, reserved, offset, length, sha = PREAMBLE.unpack_from(buf, 0)
    if file_magic != magic:
        raise CorruptFileError(f"{name}: not a {magic.rstrip(bytes(1)).decode()} file (magic {file_magic!r})")
    if file_version != version:
        raise FormatVersionError(f"{name}: format version {file_version}, this build reads version {version}")
    if meta_len > MAX_METADATA_BYTES or PREAMBLE.size + meta_len > size:
        raise CorruptFileError(f"{name}: truncated or corrupt: metadata length {meta_len} exceeds the file")
    metadata_json = bytes(buf[PREAMBLE.size : PREAMBLE.size + meta_len])
    if _header_crc(bytes(buf[CRC_COVERS_FROM : PREAMBLE.size]), metadata_json) != crc:
        raise CorruptFileError(f"{name}: corrupt: header checksum mismatch")
    if reserved != 0 or offset != _payload_offset(metadata_json):
        raise CorruptFileError(f"{name}: corrupt: bad payload offset {offset}")
    if offset + length != size:
        raise CorruptFileError(f"{name}: truncated or corrupt: expected {offset + length} bytes, the file has {size}")
    if _json_depth(metadata_json) > MAX_METADATA_DEPTH:
        raise CorruptFileError(f"{name}: corrupt: metadata nested deeper than {MAX_METADATA_DEPTH}")
    try:
        metadata = json.loads(metadata_json)
    except (UnicodeDecodeError, ValueError) as exc:
        raise CorruptFileError(f"{name}: corrupt: metadata is not JSON ({exc})") from None
    if not isinstance(metadata, dict):
        raise CorruptFileError(f"{name}: corrupt: metadata is not a JSON object")
    return FileHeader(file_magic, file_version, metadata, offset, length, sha)


def verify_payload(buf: Any, header: FileHeader, name: str) -> None:
    """Check the payload's SHA-256 (reads the payload once); raise CorruptFileError on mismatch."""
    view = memoryview(buf)
    try:
        digest = hashlib.sha256()
        end = header.payload_offset + header.payload_length
        for start in range(header.payload_offset, end, _HASH_CHUNK):
            digest.update(view[start : min(start + _HASH_CHUNK, end)])
    finally:
        view.release()
    if digest.digest() != header.payload_sha256:
        raise CorruptFileError(f"{name}: corrupt: payload checksum mismatch")


def share_loaded_files(directory: str | os.PathLike[str] | None) -> None:
    """Let the processes that load data files from now on (this one and those it forks) share one copy of each
    content: the first to load it reads it into a sealed memfd and names it in `directory`; the others map
    that memfd, checked as they would check a copy of their own. None: each process loads a private copy.

    For the workers of one server: N workers would otherwise hold N copies of the same files.
    """
    global _share_dir
    _share_dir = None if directory is None or not hasattr(os, "memfd_create") else os.fspath(directory)


def check_little_endian_host(kind: str) -> None:
    """Refuse a big-endian host: the payloads of both formats are little-endian tables read in place, so such a
    host would read every one wrong; OSError naming `kind` ("geo databases", "allowlists")."""
    if sys.byteorder != "little":
        raise OSError(f"regionlock {kind} are little-endian; this host is not")


def read_header(f: BinaryIO, size: int, magic: bytes, version: int, name: str) -> FileHeader:
    """The header of an open data file of `size` bytes, read and checked without reading the payload: a file
    that is truncated, extended or damaged in its header is refused before it is copied. The copy's own header
    is checked again, since the file may change in between."""
    head = os.pread(f.fileno(), PREAMBLE.size, 0)
    if len(head) == PREAMBLE.size:
        meta_len = PREAMBLE.unpack_from(head, 0)[3]
        if meta_len <= MAX_METADATA_BYTES:
            head += os.pread(f.fileno(), meta_len, PREAMBLE.size)
    return parse_header(head, magic, version, name, size=size)


def load_data_file(
    path: str | os.PathLike[str], magic: bytes, version: int, verify: bool
) -> tuple[mmap.mmap, FileHeader]:
    """Read a data file once into memory of its own and validate the copy's header (and, with `verify`, its
    payload); the caller serves exactly that copy, never the file's pages.

    The copy is a MAP_PRIVATE anonymous mapping (page-aligned like a file mapping: the payload's tables keep
    their alignment; its pages never written after the load, so processes forked after it share them), or,
    after share_loaded_files, a read-only mapping of a sealed memfd.
    """
    name = os.fspath(path)
    with open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise CorruptFileError(f"{name}: truncated: the file is empty")
        read_header(f, size, magic, version, name)
        if _share_dir is not None:
            return _load_shared(f, size, magic, version, verify, name, _share_dir)
        copy = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        try:
            _read_exactly(f, copy, name)
            header = parse_header(copy, magic, version, name)
            if verify:
                verify_payload(copy, header, name)
        except BaseException:
            copy.close()
            raise
    return copy, header


def _read_exactly(f: io.FileIO, copy: mmap.mmap, name: str) -> None:
    """Fill `copy` from `f` (see _copy_exactly)."""
    view = memoryview(copy)
    try:
        _copy_exactly(f, len(copy), name, lambda pos, n: f.readinto(view[pos : pos + n]) or 0)
    finally:
        view.release()


def _copy_exactly(f: BinaryIO, size: int, name: str, copy_at: Callable[[int, int], int]) -> None:
    """Copy the file's `size` bytes in chunks, copy_at(position, length) -> bytes copied (0 at the end). The file
    must end exactly there: one that shrinks or grows while it is read (rewritten in place) is refused rather
    than copied half old and half new."""
    pos = 0
    while pos < size:
        n = copy_at(pos, min(size - pos, _READ_CHUNK))
        if not n:
            raise CorruptFileError(f"{name}: truncated while being read ({pos} of {size} bytes)")
        pos += n
    if os.pread(f.fileno(), 1, size):
        raise CorruptFileError(f"{name}: the file grew while being read; replace data files by rename")


def _load_shared(
    f: BinaryIO, size: int, magic: bytes, version: int, verify: bool, name: str, directory: str
) -> tuple[mmap.mmap, FileHeader]:
    """load_data_file through `directory`: map the sealed copy another process made of the same header and
    size, or make it. A lock per content lets one process read it while the others wait to map it."""
    head = os.pread(f.fileno(), min(size, PAYLOAD_ALIGN), 0)  # names the content; the copy itself is checked
    key = os.path.join(directory, hashlib.sha256(head).hexdigest()[:32] + f"-{size}")
    lock = os.open(key + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        copy = _map_shared(key, size)
        if copy is not None:
            try:
                if copy[: len(head)] != head:
                    raise CorruptFileError(f"{name}: the shared copy has another header")
                header = parse_header(copy, magic, version, name)
                if verify:
                    verify_payload(copy, header, name)
                return copy, header
            except CorruptFileError:
                copy.close()  # a stale or foreign copy: make a new one from the file
        return _make_shared(f, size, magic, version, verify, name, key)
    finally:
        os.close(lock)


def _map_shared(key: str, size: int) -> mmap.mmap | None:
    """The sealed memfd named in `key` ("pid fd" of a process holding it), mapped read-only; None if gone."""
    try:
        with open(key) as entry:
            pid, fd = (int(word) for word in entry.read().split())
        shared = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    except (OSError, ValueError):
        return None
    try:
        # F_GET_SEALS fails on anything but a memfd: a reused pid's file is never taken for a copy
        if fcntl.fcntl(shared, fcntl.F_GET_SEALS) & _SEALS != _SEALS or os.fstat(shared).st_size != size:
            return None
        return mmap.mmap(shared, size, access=mmap.ACCESS_READ)
    except OSError:
        return None
    finally:
        os.close(shared)


def _make_shared(
    f: BinaryIO, size: int, magic: bytes, version: int, verify: bool, name: str, key: str
) -> tuple[mmap.mmap, FileHeader]:
    """Copy the file into a new memfd, seal it, check it, and name it in `key` for the other processes."""
    fd = os.memfd_create("regionlock:" + os.path.basename(name), os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    copy = None
    try:
        os.ftruncate(fd, size)
        _copy_exactly(f, size, name, lambda pos, n: os.sendfile(fd, f.fileno(), pos, n))
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
        copy = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
        header = parse_header(copy, magic, version, name)
        if verify:
            verify_payload(copy, header, name)
        entry = f"{key}.{os.getpid()}.tmp"
        with open(entry, "w") as out:
            out.write(f"{os.getpid()} {fd}")
        os.replace(entry, key)
    except BaseException:
        if copy is not None:
            copy.close()
        os.close(fd)
        raise
    # the descriptor lets the others find the copy for as long as this process serves it
    weakref.finalize(copy, os.close, fd)
    return copy, header
