"""Local fixtures of the geo tests: a small overlaid world of CSV sources and its reference twin."""

from __future__ import annotations

import pytest

from regionlock.core._geo_reference import ReferenceGeoDatabase
from regionlock.core.geo import GeoDatabase
from regionlock.core.geo_build import build_geo_database, write_geo_csv

BASE_ROWS = [
    ("0.0.0.0/0", "AQ", None),
    ("5.0.0.0/8", "DE", "DE-BE"),
    ("5.2.0.0/16", "UA", "UA-43"),
    ("5.2.3.0/24", "UA", "UA-40"),
    ("5.2.3.128/25", "UA", "UA-30"),
    ("5.2.3.200/32", "RU", None),
    ("2001:db8::/32", "DE", None),
    ("2001:db8:1::/48", "DE", "DE-HH"),
    ("2001:db8:1::1/128", "FR", None),
]
OVERLAY_ROWS = [
    ("5.2.0.0/15", "CN", None),  # shorter than the /16../32 below it, but later: it wins over all of 5.2/15
    ("2001:db8:1:2::/64", "US", "US-CA"),
]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[GeoDatabase, ReferenceGeoDatabase]:
    """A database built from two overlaid CSV sources, and the reference built from the same rows."""
    directory = tmp_path_factory.mktemp("geo_world")
    base, overlay = directory / "base.csv", directory / "overlay.csv"
    write_geo_csv(base, BASE_ROWS)
    write_geo_csv(overlay, OVERLAY_ROWS)
    build_geo_database([base, overlay], directory / "world.rlgeo")
    return GeoDatabase.open(directory / "world.rlgeo"), ReferenceGeoDatabase([BASE_ROWS, OVERLAY_ROWS])
