"""The public API of GeoDatabase and Region on a small overlaid world, and the `geo` CLI."""

from __future__ import annotations

import argparse
import ipaddress
import json
import pickle
from array import array

import pytest

from regionlock.core import GeoDatabase, Region
from regionlock.service.cli import geo as cli_geo


def test_overlay_semantics_agree_with_reference(world):
    db, reference = world
    for ip in [
        "5.1.1.1",
        "5.2.1.1",
        "5.2.3.1",
        "5.2.3.129",
        "5.2.3.200",
        "5.3.255.255",
        "5.4.0.0",
        "9.9.9.9",
        "2001:db8::1",
        "2001:db8:1::1",
        "2001:db8:1::2",
        "2001:db8:1:2::5",
        "2001:db9::1",
        "::1",
    ]:
        assert db.lookup(ip) == reference.lookup(ip), ip


def test_lookup_result(world):
    db, _ = world
    region = db.lookup("5.2.3.200")
    assert region == db.lookup("5.2.3.201")  # the later /15 overrides every longer prefix of the first source
    assert (region.country, region.subdivision, region.network) == ("CN", None, "5.2.0.0/15")
    assert db.lookup("5.0.0.1").network == "5.0.0.0/8"
    assert db.lookup("2001:db8:1:2::5").subdivision == "US-CA"
    assert db.lookup("2001:db8:1::1").network == "2001:db8:1::1/128"
    assert db.lookup("2001:db9::1") is None  # no IPv6 default route: the IPv4 0/0 covers only IPv4


def test_input_forms_are_equivalent(world):
    db, _ = world
    expected = db.lookup("5.0.0.1")
    forms = [
        "5.0.0.1",
        b"\x05\x00\x00\x01",
        0x05000001,
        ipaddress.ip_address("5.0.0.1"),
        "::ffff:5.0.0.1",
        ipaddress.ip_address("::ffff:5.0.0.1").packed,
        (0xFFFF << 32) | 0x05000001,
    ]
    for form in forms:
        assert db.lookup(form) == expected, form
    assert db.lookup(int(ipaddress.ip_address("2001:db8:1::1"))) == db.lookup("2001:db8:1::1")


@pytest.mark.parametrize("bad", ["1.2.3", "01.2.3.4", "", "2001:db8::1::1", "fe80::1%eth0", "5.0.0.1 ", b"\x01", -1])
def test_malformed_input_raises_value_error_naming_it(world, bad):
    db, _ = world
    for call in (db.lookup, db.region_id):
        with pytest.raises(ValueError, match="invalid IP address") as info:
            call(bad)
        assert repr(bad) in str(info.value)
    with pytest.raises(ValueError, match="invalid IP address") as info:
        db.lookup_many(["5.0.0.1", bad])
    assert repr(bad) in str(info.value)
    with pytest.raises(ValueError):
        db.region_ids([bad])


def test_wrong_type_raises_type_error(world):
    db, _ = world
    with pytest.raises(TypeError):
        db.lookup(1.5)
    with pytest.raises(TypeError):
        db.lookup(None)


def test_batches(world):
    db, reference = world
    ips = ["5.2.3.129", "2001:db8:1::1", "9.9.9.9", "::ffff:5.0.0.1", "2001:db8:1:2::5"] * 50
    assert db.lookup_many(ips) == [reference.lookup(ip) for ip in ips]
    assert db.lookup_many(iter(ips)) == db.lookup_many(tuple(ips))
    assert list(db.region_ids(ips)) == [db.region_id(ip) for ip in ips]
    assert db.lookup_many([]) == [] and len(db.region_ids([])) == 0
    v4 = array("I", [int(ipaddress.ip_address(ip)) for ip in ("5.2.3.129", "9.9.9.9", "0.0.0.0")])
    assert list(db.region_ids_v4(v4)) == [db.region_id(ip) for ip in ("5.2.3.129", "9.9.9.9", "0.0.0.0")]
    assert list(db.region_ids_v4(v4.tobytes())) == list(db.region_ids_v4(v4))
    v6 = [ipaddress.ip_address(ip) for ip in ("2001:db8:1::1", "::ffff:5.0.0.1", "::1")]
    assert list(db.region_ids_v6(b"".join(a.packed for a in v6))) == [db.region_id(a.packed) for a in v6]
    with pytest.raises(ValueError, match="multiple of 4"):
        db.region_ids_v4(b"\x00" * 5)
    with pytest.raises(ValueError, match="multiple of 16"):
        db.region_ids_v6(b"\x00" * 17)


def test_region_table_and_header(world):
    db, reference = world
    assert db.regions == reference.regions
    assert db.regions[0] == ("", None)
    assert db.region(0) is None
    rid = db.region_id("5.2.3.200")
    assert db.region(rid) == Region("CN", None) and db.region(rid).network is None
    with pytest.raises(IndexError):
        db.region(len(db.regions))
    info = db.info
    assert info["format_version"] == 1 and info["build_id"] == db.build_id and len(db.build_id) == 16
    assert [s["name"] for s in info["sources"]] == ["base.csv", "overlay.csv"]
    assert all(len(s["sha256"]) == 64 and s["kind"] == "csv" for s in info["sources"])
    assert db.network_count == 11 and info["networks"] == {"ipv4": 7, "ipv6": 4}
    json.dumps(info)


def test_region_value_semantics():
    a = Region("UA", "UA-43", "5.2.0.0/16")
    assert a == Region("UA", "UA-43", "5.2.0.0/16") and hash(a) == hash(Region("UA", "UA-43", "5.2.0.0/16"))
    assert a != Region("UA", "UA-43", "5.2.0.0/17") and a != Region("UA", "UA-43")
    assert a != ("UA", "UA-43")
    assert repr(a) == "Region(country='UA', subdivision='UA-43', network='5.2.0.0/16')"
    assert pickle.loads(pickle.dumps(a)) == a
    assert len({a, Region("UA", "UA-43", "5.2.0.0/16"), Region("UA", None)}) == 2
    with pytest.raises(AttributeError):
        a.country = "RU"
    with pytest.raises(TypeError):
        GeoDatabase()


def _cli(args: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="regionlock")
    cli_geo.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(args)


def _run(args: list[str]) -> int:
    namespace = _cli(args)
    return namespace.func(namespace)


def test_cli_build_lookup_info(tmp_path, capsys):
    from regionlock.core.geo_build import write_geo_csv

    source = tmp_path / "rows.csv"
    write_geo_csv(source, [("5.2.0.0/16", "UA", "UA-43"), ("2001:db8::/32", "DE", None)])
    assert _run(["geo", "build", str(source), "-o", str(tmp_path / "g.rlgeo")]) == 0
    assert "wrote" in capsys.readouterr().out
    assert _run(["geo", "lookup", str(tmp_path / "g.rlgeo"), "5.2.1.1", "2001:db8::1", "9.9.9.9"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines == [
        {"ip": "5.2.1.1", "country": "UA", "subdivision": "UA-43", "network": "5.2.0.0/16"},
        {"ip": "2001:db8::1", "country": "DE", "subdivision": None, "network": "2001:db8::/32"},
        {"ip": "9.9.9.9", "country": None, "subdivision": None, "network": None},
    ]
    assert _run(["geo", "info", str(tmp_path / "g.rlgeo")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["networks"] == {"ipv4": 1, "ipv6": 1} and info["format_version"] == 1


def test_cli_errors_are_one_line_and_exit_2(tmp_path, capsys):
    from regionlock.core.geo_build import write_geo_csv

    source = tmp_path / "rows.csv"
    write_geo_csv(source, [("5.2.0.0/16", "UA", "UA-43")])
    _run(["geo", "build", str(source), "-o", str(tmp_path / "g.rlgeo")])
    capsys.readouterr()
    (tmp_path / "bad.csv").write_text("network,country,subdivision\n5.2.0.1/16,UA,\n")
    (tmp_path / "junk.rlgeo").write_bytes(b"junk" * 100)
    for args in (
        ["geo", "lookup", str(tmp_path / "g.rlgeo"), "1.2.3"],
        ["geo", "lookup", str(tmp_path / "junk.rlgeo"), "1.2.3.4"],
        ["geo", "lookup", str(tmp_path / "missing.rlgeo"), "1.2.3.4"],
        ["geo", "info", str(tmp_path / "junk.rlgeo")],
        ["geo", "build", str(tmp_path / "bad.csv"), "-o", str(tmp_path / "out.rlgeo")],
        ["geo", "build", str(tmp_path / "missing.csv"), "-o", str(tmp_path / "out.rlgeo")],
    ):
        with pytest.raises(SystemExit) as exit_info:
            _run(args)
        assert exit_info.value.code == 2
        captured = capsys.readouterr()
        assert captured.out == "" and len(captured.err.strip().splitlines()) == 1, (args, captured.err)
    assert not (tmp_path / "out.rlgeo").exists()
