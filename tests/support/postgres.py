"""Helpers for tests against the machine's PostgreSQL: a private schema per test, a TCP proxy to cut it off.

The server at REGIONLOCK_TEST_POSTGRES (default postgresql://postgres@127.0.0.1:5432/test; `.ci/run` starts it)
is shared: tests never stop or reconfigure it. Each test works in its own schema, dropped afterwards, and
simulates an outage by cutting a TcpProxy that sits between the store and the server; wait_until polls for
what follows (a reconnection, a change propagated).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import psycopg
import pytest
from psycopg import sql

POSTGRES_URL = os.environ.get("REGIONLOCK_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def postgres_address() -> tuple[str, int]:
    parts = urlsplit(POSTGRES_URL)
    return parts.hostname or "127.0.0.1", parts.port or 5432


def store_url(schema: str, port: int | None = None, **params: object) -> str:
    """The store URL of `schema` on the test server (through 127.0.0.1:`port` if given, e.g. a proxy)."""
    parts = urlsplit(POSTGRES_URL)
    if port is not None:
        user = f"{parts.username}@" if parts.username else ""
        parts = parts._replace(netloc=f"{user}127.0.0.1:{port}")
    query = "&".join(f"{k}={v}" for k, v in {"schema": schema, **params}.items())
    return parts._replace(query=query).geturl()


def drop_schema(schema: str) -> None:
    with psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@contextlib.contextmanager
def private_schema() -> Iterator[str]:
    """A fresh schema name (the store creates it), dropped with everything in it afterwards."""
    schema = "t_" + secrets.token_hex(6)
    try:
        yield schema
    finally:
        drop_schema(schema)


def require_postgres() -> None:
    """Fail (not skip) with a clear message when the test server is not there: these tests must run."""
    try:
        psycopg.connect(POSTGRES_URL, connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL at {POSTGRES_URL} is not reachable (run .ci/run, which starts it): {exc}")


def wait_until(condition: Callable[[], object], timeout: float, step: float = 0.01) -> bool:
    """Poll `condition()` every `step` seconds until it is true (True) or `timeout` seconds have passed (False)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
    return True


class TcpProxy:
    """Forwards 127.0.0.1:`port` to `target`; cut() drops every connection and refuses new ones until restore();
    black_hole() stops forwarding without closing anything (a partition that drops packets) until restore()."""

    def __init__(self, target: tuple[str, int] | None = None) -> None:
        self.target = target or postgres_address()
        self.port = 0
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self.accepted = 0
        self.black_holed = False
        self.restore()

    @property
    def is_cut(self) -> bool:
        return self._listener is None

    def black_hole(self) -> None:
        """From now on, bytes either way are read and dropped, and new connections are accepted but never
        connected through: nothing is closed, nothing arrives."""
        self.black_holed = True

    def restore(self) -> None:
        """Listen again on the same port (connecting there is refused while cut); forward again after a
        black hole (connections that lost bytes in it stay broken: their peers see a damaged stream)."""
        self.black_holed = False
        with self._lock:
            if self._listener is not None:
                return
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", self.port))
            listener.listen(128)
            self.port = listener.getsockname()[1]
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), name="tcp-proxy-accept", daemon=True).start()

    def cut(self) -> None:
        """Stop listening and drop every open connection, as if the database host went away."""
        with self._lock:
            listener, self._listener = self._listener, None
            open_sockets, self._sockets = self._sockets, set()
        if listener is not None:
            _shut(listener)
        for sock in open_sockets:
            _shut(sock)

    close = cut

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            if self.black_holed:
                with self._lock:
                    self._sockets.add(client)  # held open, never answered; closed by cut()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                _shut(client)
                continue
            with self._lock:
                if self._listener is not listener:  # cut while we were connecting
                    _shut(client)
                    _shut(upstream)
                    return
                self._sockets |= {client, upstream}
                self.accepted += 1
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), name="tcp-proxy-pump", daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                if not self.black_holed:
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._sockets -= {src, dst}
            _shut(src)
            _shut(dst)


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in accept() or recv() on it
    except OSError:
        pass
    sock.close()
