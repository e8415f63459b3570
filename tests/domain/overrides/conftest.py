"""Fixtures of the override-store suite: one `store` fixture parametrized over every implementation."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path

import pytest

from regionlock.service.overrides.factory import open_store
from regionlock.service.overrides.store import OverrideStore

from support.postgres import private_schema, require_postgres
from support.postgres import store_url as postgres_store_url

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


@contextlib.contextmanager
def _sqlite_url(tmp_path: Path) -> Iterator[str]:
    yield f"sqlite:///{tmp_path / 'overrides.sqlite3'}"


@contextlib.contextmanager
def _postgresql_url(tmp_path: Path) -> Iterator[str]:
    require_postgres()
    with private_schema() as schema:  # a schema of its own in the shared test database, dropped afterwards
        yield postgres_store_url(schema)


# Each implementation: a context giving a fresh, empty store URL for one test (and cleaning up after it);
# every test taking `store` or `store_url` runs against each.
STORE_URLS: dict[str, Callable[[Path], AbstractContextManager[str]]] = {
    "sqlite": _sqlite_url,
    "postgresql": _postgresql_url,
}


@pytest.fixture(params=sorted(STORE_URLS))
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of a fresh, empty store of each implementation."""
    with STORE_URLS[request.param](tmp_path) as url:
        yield url


@pytest.fixture
def store(store_url: str) -> Iterator[OverrideStore]:
    """An open store, closed after the test."""
    opened = open_store(store_url)
    yield opened
    opened.close()


@pytest.fixture
def other_store(store_url: str, store: OverrideStore) -> Iterator[OverrideStore]:
    """A second store object on the same storage as `store`: what another process or replica sees."""
    opened = open_store(store_url)
    yield opened
    opened.close()


@pytest.fixture
def now() -> datetime:
    """The injected clock of a test: a fixed instant."""
    return NOW


@pytest.fixture
def run_threads() -> Callable[..., list[Exception]]:
    """`run_threads(work, count, timeout=None)`: run work(0) .. work(count - 1) in threads at once, join each
    for up to `timeout` seconds, and return the exceptions they raised (so a test asserts there were none)."""

    def run(work: Callable[[int], object], count: int, timeout: float | None = None) -> list[Exception]:
        errors: list[Exception] = []

        def guarded(n: int) -> None:
            try:
                work(n)
            except Exception as exc:
                errors.append(exc)

        threads = [threading.Thread(target=guarded, args=(n,)) for n in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout)
        return errors

    return run
