"""LISTEN for the PostgreSQL store's change notifications on a dedicated connection, reconnecting by itself."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable

import psycopg
from psycopg import sql

from regionlock.service.errors import Unavailable

logger = logging.getLogger(__name__)

_BACKOFF_MIN, _BACKOFF_MAX = 0.1, 2.0  # with jitter, the listener is back within ~3 s of the server
_POLL_S = 0.5  # how often the listener looks up from waiting to see whether it should stop
_WARN_EVERY_S = 30.0


def unavailable(exc: BaseException) -> Unavailable:
    """The Unavailable error for a connection problem, with libpq's message on one line."""
    message = " ".join(str(exc).split()) or type(exc).__name__
    return Unavailable(f"the override store (PostgreSQL) is unavailable: {message}")


class ChangeListener:
    """A daemon thread holding one connection (outside the pool) that LISTENs on `channel`.

    Callbacks run on every notification and once after each (re)connection, so a watcher that catches up
    by revision misses nothing committed while the connection was down. Callbacks must be cheap (set an
    event); a burst of notifications may call them many times.
    """

    def __init__(self, conninfo: str, channel: str) -> None:
        self._conninfo = conninfo
        self.channel = channel
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._callbacks: list[Callable[[], None]] = []
        self._thread: threading.Thread | None = None
        self.listening = threading.Event()  # set while the LISTEN connection is up
        self.connections = 0  # how many times it has connected

    def add(self, callback: Callable[[], None]) -> None:
        """Call `callback()` from now on; the first one starts the thread."""
        with self._lock:
            self._callbacks.append(callback)
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._run, name="override-store-listener", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        """End the thread (within about half a second) and close its connection."""
        with self._lock:
            self._stop.set()
            thread = self._thread
        if thread is not None:
            thread.join(_POLL_S * 4)

    def _wake(self) -> None:
        with self._lock:
            callbacks = list(self._callbacks)
        for callback in callbacks:
            try:
                callback()
            except Exception:
                logger.exception("override store watcher failed")

    def _run(self) -> None:
        delay, failures, last_warning = _BACKOFF_MIN, 0, float("-inf")
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True) as conn:
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
                    self.connections += 1
                    self.listening.set()
                    if failures:
                        logger.info("override store (PostgreSQL) listener reconnected after %d failures", failures)
                    delay, failures = _BACKOFF_MIN, 0
                    self._wake()  # catch up with whatever committed while we were not listening
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=_POLL_S):
                            self._wake()
            except psycopg.Error as exc:
                self.listening.clear()
                failures += 1
                if failures == 1 or time.monotonic() - last_warning >= _WARN_EVERY_S:
                    last_warning = time.monotonic()
                    logger.warning("override store (PostgreSQL) listener lost, reconnecting: %s", unavailable(exc))
            self.listening.clear()
            self._stop.wait(delay * random.uniform(1.0, 1.5))
            delay = min(delay * 2, _BACKOFF_MAX)
