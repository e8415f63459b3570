"""Fixtures of the override-store suite: one `store` fixture parametrized over every implementation."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from regionlock.service.overrides.store import OverrideStore, open_store

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


def _sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'overrides.sqlite3'}"


# Each implementation: a function giving a fresh, empty store URL for one test. Issue 8 adds "postgresql"
# here (a per-test database or schema); every test taking `store` or `store_url` then runs against both.
STORE_URLS: dict[str, Callable[[Path], str]] = {
    "sqlite": _sqlite_url,
}


@pytest.fixture(params=sorted(STORE_URLS))
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a fresh, empty store of each implementation."""
    return STORE_URLS[request.param](tmp_path)


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
