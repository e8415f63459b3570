"""open_store(url): the backend a store URL names; the one module that knows every backend."""

from __future__ import annotations

from urllib.parse import urlsplit

from regionlock.service.errors import InvalidArgument
from regionlock.service.overrides.sqlite import SqliteOverrideStore
from regionlock.service.overrides.store import OverrideStore


def open_store(url: str) -> OverrideStore:
    """Open (creating and migrating as needed) the store a URL names: sqlite:///abs/path or postgresql://..."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        if parts.netloc or not parts.path.startswith("/") or parts.query or parts.fragment:
            raise InvalidArgument("store", f"expected sqlite:///absolute/path, got {url!r}")
        return SqliteOverrideStore(parts.path)
    if parts.scheme in ("postgresql", "postgres"):
        try:
            from regionlock.service.overrides.postgres import open_postgres_store
        except ImportError as exc:  # psycopg is the `postgres` extra
            raise InvalidArgument(
                "store", f"the PostgreSQL store needs psycopg: pip install 'regionlock[postgres]' ({exc})"
            ) from None
        return open_postgres_store(url)
    raise InvalidArgument("store", f"unknown store scheme {parts.scheme!r}; use sqlite:///path or postgresql://")
