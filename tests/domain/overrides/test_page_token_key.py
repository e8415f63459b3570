"""The page token key: made once per store on first open, kept in the store, shared by every opener."""

from __future__ import annotations

import pytest

from regionlock.service.errors import InvalidArgument
from regionlock.service.overrides.factory import open_store
from regionlock.service.overrides.model import OverrideChange

from support.postgres import private_schema
from support.postgres import store_url as postgres_store_url


def _fill(store, now):
    store.bulk_set([OverrideChange(f"S{i}", "unlock", "r") for i in range(5)], "u", now, False)


def test_the_key_is_random_per_store_and_kept_across_opens(store, other_store, store_url, now):
    assert len(store._page_key) == 32
    assert other_store._page_key == store._page_key  # another process or replica: the same key
    _fill(store, now)
    _, token = store.list(2, "", None, False, now)
    assert other_store.list(2, token, None, False, now)[0]  # a page started on one replica continues on another
    store.close()
    reopened = open_store(store_url)
    try:
        assert reopened._page_key == other_store._page_key
        assert reopened.list(2, token, None, False, now)[0]
    finally:
        reopened.close()


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_token_of_another_store_is_invalid(kind, store, now, tmp_path):
    _fill(store, now)
    _, token = store.list(2, "", None, False, now)
    _, audit_token = store.list_audit(2, "", "")
    with private_schema() as schema:
        url = f"sqlite:///{tmp_path / 'other.sqlite3'}" if kind == "sqlite" else postgres_store_url(schema)
        foreign = open_store(url)
        try:
            assert foreign._page_key != store._page_key
            _fill(foreign, now)
            with pytest.raises(InvalidArgument) as caught:
                foreign.list(2, token, None, False, now)
            assert caught.value.field == "page_token"
            with pytest.raises(InvalidArgument) as caught:
                foreign.list_audit(2, audit_token, "")
            assert caught.value.field == "page_token"
        finally:
            foreign.close()
