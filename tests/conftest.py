"""Shared pytest fixtures live in the `support` package beside this file; its fixture modules are plugins.

Tests under e2e/ run what a user runs from a shell (`regionlock serve` processes, workers, replicas, the wheel in
a clean venv) and are marked `e2e`: `make check` leaves them out (with the `slow` ones), `make test` runs everything.
"""

from pathlib import Path

import pytest

# in dependency order: a plugin must be registered before another one imports it
pytest_plugins = ["support.geo", "support.allowlist", "support.service"]

E2E = Path(__file__).parent / "e2e"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(E2E):
            item.add_marker(pytest.mark.e2e)
