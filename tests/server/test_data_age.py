"""Data age is visible: the geo sources' build time in GetStatus, a metric per file, a warning past geo_max_age_days."""

import logging
import os
import time
import urllib.request

import maxminddb
import pytest

from regionlock.admin.v1 import admin_pb2 as apb
from regionlock.admin.v1 import admin_pb2_grpc as apb_grpc
from regionlock.core.geo import GeoDatabase
from regionlock.service.snapshot import GeoProvenance

from support.geo import stamp_source_build
from support.service import GEO_ROWS, write_world

DAY = 86400


@pytest.fixture
def world(tmp_path):
    """The small world built now (not copied from the session's build): its build time is the test's own."""
    return write_world(tmp_path / "world", fresh=True)


@pytest.fixture(scope="module")
def geolite2_build(geolite2_mmdb_path) -> tuple[int, str]:
    """The real GeoLite2-City file's build_epoch and database_type (2018)."""
    with maxminddb.open_database(str(geolite2_mmdb_path)) as reader:
        meta = reader.metadata()
    return meta.build_epoch, meta.database_type


def test_provenance_of_a_csv_build_is_its_compile_time(geo_builder):
    started = time.time()
    geo = GeoProvenance.of(GeoDatabase.open(geo_builder(GEO_ROWS)).info)
    assert not geo.from_sources
    assert started - 2 <= geo.built_at <= time.time()
    [source] = geo.sources
    assert (source.database_type, source.build_epoch) == ("", None)
    assert geo.age_warning(time.time(), 35) == ""


def test_provenance_reads_the_source_build_epoch_and_warns_past_the_limit(geo_builder, geolite2_build):
    epoch, database_type = geolite2_build
    geo = GeoProvenance.of(GeoDatabase.open(stamp_source_build(geo_builder(GEO_ROWS), epoch, database_type)).info)
    assert (geo.built_at, geo.from_sources) == (epoch, True)
    assert [(s.database_type, s.build_epoch) for s in geo.sources] == [(database_type, epoch)]
    assert geo.age_warning(epoch + 35 * DAY, 35) == ""
    warning = geo.age_warning(epoch + 36 * DAY, 35)
    assert "36 days old, more than geo_max_age_days = 35" in warning
    assert time.strftime("%Y-%m-%d", time.gmtime(epoch)) in warning
    assert geo.age_warning(epoch + 3650 * DAY, 0) == ""  # 0: never warn


def _status(running):
    stub = apb_grpc.AdminServiceStub(running.admin)
    return stub.GetStatus(apb.GetStatusRequest(), metadata=running.auth(), timeout=5)


def _build_gauges(running) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{running.service.metrics_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    gauges = {}
    for line in text.splitlines():
        if line.startswith("regionlock_data_build_timestamp_seconds{"):
            labels, value = line.rsplit(" ", 1)
            gauges[labels.split('file="')[1].split('"')[0]] = float(value)
    return gauges


def test_status_metrics_and_log_show_the_age_of_the_data(running, world, tmp_path, geolite2_build, caplog):
    fresh = _status(running)
    assert fresh.geo_age_warning == ""
    assert [(s.name, s.database_type, s.HasField("build_time")) for s in fresh.geo_sources] == [("geo.csv", "", False)]
    assert abs(fresh.geo_build_time.seconds - time.time()) < 120  # compiled just now from CSV
    assert abs(fresh.allowlist_build_time.seconds - time.time()) < 120
    assert set(_build_gauges(running)) == {"geo", "allowlist"}

    epoch, database_type = geolite2_build
    stamped = tmp_path / "stamped.rlgeo"
    stamped.write_bytes(world.geo_path.read_bytes())
    os.replace(stamp_source_build(stamped, epoch, database_type), world.geo_path)
    with caplog.at_level(logging.WARNING, logger="regionlock.service.snapshot"):
        apb_grpc.AdminServiceStub(running.admin).ReloadData(
            apb.ReloadDataRequest(), metadata=running.auth(), timeout=30
        )
    old = _status(running)
    assert old.geo_build_time.seconds == epoch
    assert [(s.database_type, s.build_time.seconds) for s in old.geo_sources] == [(database_type, epoch)]
    days = int((time.time() - epoch) // DAY)
    assert f"{days} days old, more than geo_max_age_days = 35" in old.geo_age_warning
    assert old.geo_age_warning in caplog.text
    assert _build_gauges(running)["geo"] == epoch
