"""Admin token auth: the token file, fast secret verification, the role table and the gRPC interceptor.

A secret reads `rl_<token id>_<43 characters of base64url>`: the id (16 hex digits, not secret) picks the
file entry in O(1), and the file keeps only a salted SHA-256 of the 32 random bytes after it. Slow hashes
(scrypt, bcrypt) protect low-entropy passwords from guessing; 256 random bits can't be guessed, so one fast
hash per call is as safe and keeps auth off the latency budget.

The servicer learns who is calling from `current_principal()`: the interceptor wraps each AdminService
handler so that a context variable holds the caller's Principal while the handler runs.
"""

from __future__ import annotations

import base64
import contextlib
import contextvars
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import grpc

from regionlock.service.errors import PermissionDenied, Unauthenticated
from regionlock.service.server import edge

logger = logging.getLogger(__name__)

_Request = TypeVar("_Request")
_Response = TypeVar("_Response")
# a unary handler's behavior, (request, context) -> response, and a function that wraps one
Behavior = Callable[[Any, grpc.ServicerContext], Any]
Wrap = Callable[[Behavior], Behavior]

ROLES = {"viewer": 1, "operator": 2}  # each role may do what the roles ranked below it may
ADMIN_PREFIX = "/regionlock.admin.v1.AdminService/"
METHOD_ROLES = {
    ADMIN_PREFIX + "GetOverride": "viewer",
    ADMIN_PREFIX + "ListOverrides": "viewer",
    ADMIN_PREFIX + "ListAuditEvents": "viewer",
    ADMIN_PREFIX + "GetStatus": "viewer",
    ADMIN_PREFIX + "SetOverride": "operator",
    ADMIN_PREFIX + "DeleteOverride": "operator",
    ADMIN_PREFIX + "BulkSetOverrides": "operator",
    ADMIN_PREFIX + "ReloadData": "operator",
}
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_SECRET_RE = re.compile(r"rl_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")
_FORMAT = "regionlock-tokens"
_VERSION = 1


class TokenFileError(ValueError):
    """The token file can't be read or changed as asked; the message names the file and the cause."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the token's name (the audit trail's actor) and its role."""

    name: str
    role: str


@dataclass(frozen=True, slots=True)
class TokenEntry:
    """One token as the file holds it: never the secret, only its salted hash."""

    token_id: str
    name: str
    role: str
    salt: bytes
    digest: bytes
    create_time: str


def _digest(salt: bytes, secret: bytes) -> bytes:
    return hashlib.sha256(salt + secret).digest()


class TokenStore:
    """The tokens of one file, indexed by token id."""

    def __init__(self, entries: list[TokenEntry]) -> None:
        self.entries = list(entries)
        self._by_id = {entry.token_id: entry for entry in entries}

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> TokenStore:
        """Read and check a token file; TokenFileError when it is missing or malformed."""
        path = Path(path)
        try:
            text = path.read_text()
            mode = path.stat().st_mode
        except FileNotFoundError:
            raise TokenFileError(
                f"token file {path} does not exist; create it with "
                f"`regionlock token create NAME --role operator --tokens {path}`"
            ) from None
        except OSError as exc:
            raise TokenFileError(f"token file {path}: {exc.strerror}") from None
        if mode & 0o077:
            logger.warning("token file %s is accessible to other users (mode %o); use 0600", path, mode & 0o777)
        try:
            data = json.loads(text)
            if data.get("format") != _FORMAT or data.get("version") != _VERSION:
                raise ValueError(f"not a {_FORMAT} file of version {_VERSION}")
            entries = [_entry(item) for item in data["tokens"]]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise TokenFileError(f"token file {path}: {exc}") from None
        except RecursionError:  # json.loads recurses once per level of nesting
            raise TokenFileError(f"token file {path}: nested too deeply") from None
        names = [entry.name for entry in entries]
        if len(set(names)) != len(names) or len({e.token_id for e in entries}) != len(entries):
            raise TokenFileError(f"token file {path}: duplicate token names or ids")
        return cls(entries)

    def authenticate(self, metadata_value: str | None) -> Principal:
        """The principal of an `authorization` metadata value; Unauthenticated for anything else.

        Messages and logs never contain the presented secret.
        """
        if not metadata_value:
            raise Unauthenticated("missing `authorization: Bearer <token>` metadata")
        scheme, _, credential = metadata_value.strip().partition(" ")
        if scheme.lower() != "bearer" or not credential.strip():
            raise Unauthenticated("authorization metadata must be `Bearer <token>`")
        match = _SECRET_RE.fullmatch(credential.strip())
        entry = self._by_id.get(match.group(1)) if match else None
        if match is None or entry is None:
            raise Unauthenticated("unknown token")
        secret = base64.urlsafe_b64decode(match.group(2) + "=")
        # the last character carries 2 unused bits: accept only the one spelling create_token printed
        canonical = base64.urlsafe_b64encode(secret).rstrip(b"=").decode() == match.group(2)
        if not canonical or not hmac.compare_digest(_digest(entry.salt, secret), entry.digest):
            raise Unauthenticated("unknown token")
        return Principal(entry.name, entry.role)

    def check(self, metadata_value: str | None, method: str) -> Principal:
        """authenticate() and then authorize() for `method`."""
        principal = self.authenticate(metadata_value)
        authorize(principal, method)
        return principal


def authorize(principal: Principal, method: str) -> None:
    """PermissionDenied unless the principal's role may call `method` (unknown methods: nobody may)."""
    needed = METHOD_ROLES.get(method)
    if needed is None or ROLES.get(principal.role, 0) < ROLES[needed]:
        short = method.rsplit("/", 1)[-1]
        raise PermissionDenied(f"token {principal.name!r} (role {principal.role}) may not call {short}")


def _entry(item: dict[str, Any]) -> TokenEntry:
    if item["role"] not in ROLES or not NAME_RE.fullmatch(item["name"]):
        raise ValueError(f"bad token entry {item.get('name')!r}")
    if not re.fullmatch(r"[0-9a-f]{16}", item["id"]):
        raise ValueError(f"bad token id in entry {item['name']!r}")
    salt, digest = bytes.fromhex(item["salt"]), bytes.fromhex(item["sha256"])
    if len(digest) != 32:
        raise ValueError(f"bad hash in entry {item['name']!r}")
    return TokenEntry(item["id"], item["name"], item["role"], salt, digest, item.get("create_time", ""))


def create_token(path: str | os.PathLike[str], name: str, role: str) -> str:
    """Add a token to the file (created if missing, mode 0600) and return its secret, which is not stored."""
    path = Path(path)
    if not NAME_RE.fullmatch(name):
        raise TokenFileError(f"token name must be 1 to 64 characters of A-Z a-z 0-9 . _ @ - (got {name!r})")
    if role not in ROLES:
        raise TokenFileError(f"role must be one of {', '.join(ROLES)} (got {role!r})")
    if not path.parent.is_dir():
        raise TokenFileError(f"directory {path.parent} does not exist")
    with _locked(path):  # two `token create` at once must not lose one of the tokens
        entries = TokenStore.load(path).entries if path.exists() else []
        if any(entry.name == name for entry in entries):
            raise TokenFileError(f"token file {path} already has a token named {name!r}")
        token_id = secrets.token_hex(8)
        while any(entry.token_id == token_id for entry in entries):
            token_id = secrets.token_hex(8)
        raw, salt = secrets.token_bytes(32), secrets.token_bytes(16)
        created = datetime.now(UTC).isoformat(timespec="seconds")
        entries.append(TokenEntry(token_id, name, role, salt, _digest(salt, raw), created))
        _write_atomically(path, entries)
    logger.info("created %s token %r in %s", role, name, path)
    return f"rl_{token_id}_{base64.urlsafe_b64encode(raw).rstrip(b'=').decode()}"


def revoke_token(path: str | os.PathLike[str], name: str) -> TokenEntry:
    """Remove the token named `name` from the file; returns its entry; TokenFileError when there is none."""
    path = Path(path)
    with _locked(path):
        entries = TokenStore.load(path).entries
        revoked = next((entry for entry in entries if entry.name == name), None)
        if revoked is None:
            raise TokenFileError(f"token file {path} has no token named {name!r}")
        _write_atomically(path, [entry for entry in entries if entry is not revoked])
    logger.info("revoked %s token %r in %s", revoked.role, name, path)
    return revoked


# How often a serving process looks at the token file (one stat) for tokens created or revoked since
CHECK_INTERVAL_S = 0.5


class TokenFile:
    """The tokens of a token file, kept current: a created token works, a revoked one stops working, within
    CHECK_INTERVAL_S of the change, in every process that serves Admin, with no reload.

    The call path pays one clock read; at most every CHECK_INTERVAL_S one call also stats the file (the
    others go on with the tokens they have, never waiting for it), and only when the file's identity
    (inode, device, size, mtime, ctime) changed does that call re-read it. Writers replace the file
    atomically (create_token, revoke_token: rename), so a read never sees half a file. A file that fails to
    parse leaves the previous tokens in force (logged once per change); a file that is gone is no tokens,
    as at start. `on_change(before, after)` is told of each change, from the calling thread: it must not
    block (hand slow work to another thread).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        on_change: Callable[[TokenStore, TokenStore], None] | None = None,
        interval: float = CHECK_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path)
        self.on_change = on_change
        self.interval = interval
        self.clock = clock
        self._lock = threading.Lock()
        self._signature: tuple[int, ...] | None = None
        self._next_check = 0.0
        self.store = self._read(self._stat())  # TokenFileError at start: a malformed file stops the start

    def _stat(self) -> tuple[int, ...] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def _read(self, signature: tuple[int, ...] | None) -> TokenStore:
        self._signature = signature
        if signature is None:
            return TokenStore([])
        return TokenStore.load(self.path)

    def current(self) -> TokenStore:
        """The tokens in force now (see the class doc for what this costs)."""
        if self.clock() >= self._next_check and self._lock.acquire(blocking=False):
            try:
                self._next_check = self.clock() + self.interval
                self._refresh()
            finally:
                self._lock.release()
        return self.store

    def reload(self) -> None:
        """Re-read now if the file changed (what a SIGHUP or ReloadData does); TokenFileError if it is bad."""
        with self._lock:
            self._refresh(raise_errors=True)

    def _refresh(self, raise_errors: bool = False) -> None:
        signature = self._stat()
        if signature == self._signature:
            return
        before = self.store
        try:
            self.store = self._read(signature)
        except TokenFileError as exc:
            if raise_errors:
                raise
            logger.error("token file not re-read, the previous tokens stay in force: %s", exc)
            return
        if signature is None:
            logger.warning("token file %s is gone: every Admin call is refused until it is back", self.path)
        logger.info("token file %s changed: %d tokens", self.path, len(self.store.entries))
        if self.on_change is not None:
            try:
                self.on_change(before, self.store)
            except Exception:
                logger.exception("token file change callback failed")

    def check(self, metadata_value: str | None, method: str) -> Principal:
        """TokenStore.check with the tokens in force now."""
        return self.current().check(metadata_value, method)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write_atomically(path: Path, entries: list[TokenEntry]) -> None:
    items = [
        {
            "id": e.token_id,
            "name": e.name,
            "role": e.role,
            "salt": e.salt.hex(),
            "sha256": e.digest.hex(),
            "create_time": e.create_time,
        }
        for e in entries
    ]
    text = json.dumps({"format": _FORMAT, "version": _VERSION, "tokens": items}, indent=2) + "\n"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask: nobody else may read even the hashes
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a crash
    finally:
        os.close(dir_fd)


_PRINCIPAL: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("regionlock_principal", default=None)


def current_principal() -> Principal:
    """The caller of the AdminService handler running in this thread; Unauthenticated outside one."""
    principal = _PRINCIPAL.get()
    if principal is None:
        raise Unauthenticated("no authenticated caller")
    return principal


@contextlib.contextmanager
def acting_as(principal: Principal) -> Iterator[None]:
    """Run a block as `principal` (what the interceptor does around a handler; also handy in tests)."""
    token = _PRINCIPAL.set(principal)
    try:
        yield
    finally:
        _PRINCIPAL.reset(token)


class AuthInterceptor(grpc.ServerInterceptor):
    """Enforces METHOD_ROLES on AdminService calls; everything else (health, reflection) passes untouched.

    `tokens` is a TokenFile (kept current by itself) or a fixed TokenStore; `on_denied(code_name)` counts
    refusals.
    """

    def __init__(self, tokens: TokenFile | TokenStore, on_denied: Callable[[str], None] | None = None) -> None:
        self.tokens = tokens
        self.on_denied = on_denied

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[_Request, _Response] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[_Request, _Response] | None:
        method = handler_call_details.method
        handler = continuation(handler_call_details)
        if handler is None or not method.startswith(ADMIN_PREFIX):
            return handler
        metadata = handler_call_details.invocation_metadata or ()
        # values are bytes only for keys ending in -bin, so every authorization value is a str
        values = [v for k, v in metadata if k == "authorization" and isinstance(v, str)]
        try:
            if len(values) > 1:
                raise Unauthenticated("more than one authorization metadata entry")
            principal = self.tokens.check(values[0] if values else None, method)
        except (Unauthenticated, PermissionDenied) as exc:
            return _wrap(handler, self._denier(method, exc), decode=False)  # refused before reading the request
        return _wrap(handler, lambda behavior: _as(principal, behavior))

    def _denier(self, method: str, exc: Unauthenticated | PermissionDenied) -> Wrap:
        def wrap(_behavior: Behavior) -> Behavior:
            def deny(_request: object, context: grpc.ServicerContext) -> None:
                logger.warning("admin call %s from %s refused: %s %s", method, context.peer(), exc.code, exc)
                if self.on_denied is not None:
                    try:
                        self.on_denied(exc.code)
                    except Exception:
                        logger.exception("on_denied callback failed")
                edge.abort(context, exc)

            return deny

        return wrap


def _as(principal: Principal, behavior: Behavior) -> Behavior:
    def run(request: object, context: grpc.ServicerContext) -> Any:
        with acting_as(principal):
            return behavior(request, context)

    return run


def _wrap(
    handler: grpc.RpcMethodHandler[_Request, _Response], wrap: Wrap, decode: bool = True
) -> grpc.RpcMethodHandler[_Request, _Response]:
    """The same kind of handler with its behavior passed through `wrap` (AdminService is all unary)."""
    if handler.request_streaming or handler.response_streaming or handler.unary_unary is None:
        # not used by AdminService today; refuse rather than run a streaming handler without a principal
        def unsupported(_request: object, context: grpc.ServicerContext) -> None:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "streaming admin methods are not supported")

        return grpc.unary_unary_rpc_method_handler(unsupported)
    return grpc.unary_unary_rpc_method_handler(
        _decoding(wrap(handler.unary_unary), handler.request_deserializer if decode else None),
        None,
        handler.response_serializer,
    )


def _decoding(
    behavior: Callable[[Any, grpc.ServicerContext], Any], deserializer: Callable[[bytes], Any] | None
) -> Callable[[Any, grpc.ServicerContext], Any]:
    """Decode the request bytes here rather than in grpcio, whose failure would be INTERNAL: bytes that are
    not the method's request message are the client's mistake, INVALID_ARGUMENT."""
    if deserializer is None:
        return behavior

    def run(request: bytes, context: grpc.ServicerContext) -> Any:
        try:
            message = deserializer(request)
        except Exception:  # protobuf's DecodeError, or a RecursionError for nesting past its limit
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "request: not a valid message of this method")
        return behavior(message, context)

    return run
