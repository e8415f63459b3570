"""Sources the builder must read, or refuse by name: metadata pointers, deep nesting, flat layouts, ranges, codes."""

from __future__ import annotations

import argparse
import ipaddress
import random

import maxminddb
import pytest
from maxminddb.decoder import Decoder

from regionlock.core._geo_reference import ReferenceGeoDatabase
from regionlock.core.errors import BuildError
from regionlock.core.geo import GeoDatabase
from regionlock.core.geo_build import MAX_INVALID_FRACTION, build_geo_database
from regionlock.core.geo_mmdb import RecordLayout, read_mmdb
from regionlock.service.cli import geo as cli_geo

from support.mmdb_writer import MARKER, encode, pointer, write_mmdb

US = {"country": {"iso_code": "US"}}
MAP_OF_ONE = b"\xe1"  # control byte of a map with one pair


def _cli(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="regionlock")
    cli_geo.register(parser.add_subparsers(dest="command", required=True))
    namespace = parser.parse_args(args)
    return namespace.func(namespace)


def _cli_fails(capsys, args: list[str]) -> str:
    """Run a CLI command that must fail: exit 2, nothing on stdout, one line on stderr (returned)."""
    with pytest.raises(SystemExit) as info:
        _cli(args)
    captured = capsys.readouterr()
    assert info.value.code == 2 and captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    return lines[0]


def _reader_metadata(path) -> dict:
    """The metadata map as maxminddb's pure-Python decoder reads it (pointers based at the metadata)."""
    data = path.read_bytes()
    start = data.rindex(MARKER) + len(MARKER)
    return Decoder(data, start).decode(start)[0]


# --- metadata: pointers and nesting ------------------------------------------------------------------------------

PAD = encode("p" * 3000)  # pushes what follows past the reach of 1-byte pointers
# offsets inside the metadata section: the map's control byte, then each extra key and its value
AFTER_PAD = 1 + len(encode("pad")) + len(PAD)


@pytest.mark.parametrize(
    "extra",
    [
        [],  # the writer's own: `languages` points into `description`, as MaxMind's writer does
        [("a", encode("one")), ("b", pointer(1 + len(encode("a"))))],
        [("a", encode("one")), ("b", pointer(1 + len(encode("a")), width=4))],
        [("pad", PAD), ("s", encode("far")), ("b", pointer(AFTER_PAD + len(encode("s"))))],  # 2-byte pointer
        # a pointer to a map, and an array (type 11: b"\x01\x04") holding a pointer to a key
        [("a", encode({"k": [1, 2]})), ("b", pointer(1 + len(encode("a")))), ("c", b"\x01\x04" + pointer(1))],
    ],
    ids=["writer", "1-byte", "4-byte", "2-byte", "to-a-map"],
)
def test_metadata_pointers_are_read_as_maxminddb_reads_them(tmp_path, extra):
    path = tmp_path / "p.mmdb"
    write_mmdb(path, [("1.0.0.0/8", US)], ip_version=4, record_size=24, extra_metadata=extra)
    expected = _reader_metadata(path)
    assert expected["languages"] == ["en"]
    assert read_mmdb(path, lambda country, subdivision: 1).metadata == expected
    if not extra:  # maxminddb's Reader refuses metadata keys it does not know; its decoder reads them above
        with maxminddb.open_database(str(path), maxminddb.MODE_FILE) as reader:
            assert reader.get("1.2.3.4") == US
    build_geo_database([path], tmp_path / "p.rlgeo")
    assert GeoDatabase.open(tmp_path / "p.rlgeo").lookup("1.2.3.4").country == "US"


FIRST_VALUE = 1 + len(encode("x"))  # where the value of the first extra key starts


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (pointer(FIRST_VALUE), "pointer to a pointer"),  # points at itself
        (MAP_OF_ONE + encode("a") + pointer(FIRST_VALUE), "nested deeper than 32"),  # a map that holds itself
        ((MAP_OF_ONE + encode("k")) * 3000 + encode("v"), "nested deeper than 32"),
        (b"\x01\x04" * 3000 + encode("v"), "nested deeper than 32"),  # arrays in arrays
        (pointer(10**6), "truncated"),
    ],
    ids=["self", "loop", "deep-map", "deep-array", "outside"],
)
def test_bad_metadata_is_refused_naming_the_problem(tmp_path, capsys, raw, message):
    path = tmp_path / "m.mmdb"
    write_mmdb(path, [("1.0.0.0/8", US)], ip_version=4, record_size=24, extra_metadata=[("x", raw)])
    with pytest.raises(BuildError, match=rf"m\.mmdb: bad MaxMind DB metadata \(.*{message}"):
        build_geo_database([path], tmp_path / "out.rlgeo")
    line = _cli_fails(capsys, ["geo", "build", str(path), "-o", str(tmp_path / "out.rlgeo")])
    assert "m.mmdb" in line and message in line
    assert not (tmp_path / "out.rlgeo").exists()


def test_deeply_nested_record_is_refused(tmp_path, capsys):
    deep: dict = {"v": 1}
    for _ in range(100):  # maxminddb decodes it; a region never needs more than 64 levels
        deep = {"k": deep}
    path = tmp_path / "d.mmdb"
    write_mmdb(path, [("1.0.0.0/8", {"extra": deep, **US})], ip_version=4, record_size=24)
    with maxminddb.open_database(str(path), maxminddb.MODE_FILE) as reader:
        assert reader.get("1.2.3.4")["country"] == US["country"]
    line = _cli_fails(capsys, ["geo", "build", str(path), "-o", str(tmp_path / "out.rlgeo")])
    assert "d.mmdb" in line and "nesting deeper than 64" in line


# --- record layouts ------------------------------------------------------------------------------------------------

IPINFO = [
    ("5.2.0.0/16", {"country": "UA", "country_name": "Ukraine", "continent": "EU", "continent_name": "Europe"}),
    ("8.8.8.0/24", {"country": "us", "country_name": "United States", "continent": "NA"}),
]
IP_LOCATION_DB = [
    ("5.2.0.0/16", {"country_code": "UA", "state1": "43", "city": "Simferopol"}),
    ("5.3.0.0/16", {"country_code": "UA", "state1": "UA-40", "city": "Sevastopol"}),
    ("8.8.8.0/24", {"country_code": " us ", "city": "Mountain View"}),
    ("2001:db8::/32", {"country_code": "DE", "state1": "be", "city": "Berlin"}),
]


@pytest.mark.parametrize(
    ("networks", "seen", "flags", "field", "subdivision_field"),
    [
        (IPINFO, "country, country_name, continent, continent_name", ["--country-field", "country"], "country", None),
        (
            IP_LOCATION_DB,
            "country_code, state1, city",
            ["--country-field", "country_code", "--subdivision-field", "state1"],
            "country_code",
            "state1",
        ),
    ],
    ids=["ipinfo", "ip-location-db"],
)
def test_flat_layouts_are_refused_by_default_and_read_by_naming_the_fields(
    tmp_path, capsys, request, networks, seen, flags, field, subdivision_field
):
    path = tmp_path / "flat.mmdb"
    write_mmdb(path, networks, ip_version=6)
    out = str(tmp_path / "flat.rlgeo")
    line = _cli_fails(capsys, ["geo", "build", str(path), "-o", out])
    assert "flat.mmdb: no country.iso_code or registered_country.iso_code in any record" in line
    assert f"fields seen: {seen} " in line
    assert _cli(["geo", "build", str(path), "-o", out, *flags]) == 0
    capsys.readouterr()
    db = GeoDatabase.open(out)
    reader = maxminddb.open_database(str(path), maxminddb.MODE_FILE)
    request.addfinalizer(reader.close)
    for network, _ in networks:
        address = ipaddress.ip_network(network).network_address
        record, prefix = reader.get_with_prefix_len(address)
        country = record[field].strip().upper()
        code = (record.get(subdivision_field) or "").upper() if subdivision_field else ""
        subdivision = None if not code else code if code.startswith(country + "-") else f"{country}-{code}"
        region = db.lookup(str(address))
        assert (region.country, region.subdivision) == (country, subdivision), address
        assert region.network == str(ipaddress.ip_network((int(address), prefix)))


def test_nested_named_fields_and_bad_field_names(tmp_path, capsys):
    path = tmp_path / "n.mmdb"
    write_mmdb(path, [("1.0.0.0/8", {"geo": {"cc": "UA", "subs": [{"code": "43"}, {"code": "40"}]}})], ip_version=4)
    layout = RecordLayout("geo.cc", "geo.subs.0.code")
    build_geo_database([path], tmp_path / "n.rlgeo", layout=layout)
    assert GeoDatabase.open(tmp_path / "n.rlgeo").lookup("1.1.1.1").subdivision == "UA-43"
    line = _cli_fails(capsys, ["geo", "build", str(path), "-o", str(tmp_path / "x"), "--country-field", "geo.nope"])
    assert "no geo.nope in any record; fields seen: geo " in line
    for flags in (["--subdivision-field", "x"], ["--country-field", "a..b"]):
        line = _cli_fails(capsys, ["geo", "build", str(path), "-o", str(tmp_path / "x"), *flags])
        assert "field" in line
    (tmp_path / "n.csv").write_text("network,country\n1.0.0.0/8,US\n")
    line = _cli_fails(
        capsys, ["geo", "build", str(tmp_path / "n.csv"), "-o", str(tmp_path / "x"), "--country-field", "cc"]
    )
    assert "record fields were named, but no source is a MaxMind DB" in line


# --- CSV ranges ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [4, 6])
def test_csv_ranges_compile_to_the_networks_that_cover_them(tmp_path, version):
    rng = random.Random(version)
    bits = 32 if version == 4 else 128
    kind = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
    cuts = sorted({rng.randrange(1, 2**bits - 1) for _ in range(120)})
    cuts = cuts[: len(cuts) // 2 * 2]
    codes = [("UA", "UA-43", "UA-43"), ("UA", "40", "UA-40"), ("DE", "", None), ("us", "ca", "US-CA")]
    raw, rows = ["start,end,country,subdivision"], []
    for first, last in zip(cuts[::2], cuts[1::2], strict=True):
        country, subdivision, full = rng.choice(codes)
        raw.append(f"{kind(first)},{kind(last)},{country},{subdivision}")
        rows.append((f"{kind(first)}-{kind(last)}", country.upper(), full))
    (tmp_path / "r.csv").write_text("\n".join(raw) + "\n")
    build_geo_database([tmp_path / "r.csv"], tmp_path / "r.rlgeo")
    db, reference = GeoDatabase.open(tmp_path / "r.rlgeo"), ReferenceGeoDatabase([rows])
    for first, last in zip(cuts[::2], cuts[1::2], strict=True):
        for value in {first, last, rng.randint(first, last), first - 1, last + 1}:
            assert db.lookup(str(kind(value))) == reference.lookup(str(kind(value))), kind(value)


def test_a_range_is_covered_by_its_largest_aligned_blocks(tmp_path):
    (tmp_path / "r.csv").write_text("start,end,country\n1.0.0.5,1.0.0.17,US\n")
    build_geo_database([tmp_path / "r.csv"], tmp_path / "r.rlgeo")
    db = GeoDatabase.open(tmp_path / "r.rlgeo")
    pieces = {db.lookup(f"1.0.0.{last}").network for last in range(5, 18)}
    assert pieces == {"1.0.0.5/32", "1.0.0.6/31", "1.0.0.8/29", "1.0.0.16/31"}  # 1 + 2 + 8 + 2 addresses
    assert db.lookup("1.0.0.4") is None and db.lookup("1.0.0.18") is None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("start,end,country\n1.0.0.9,1.0.0.1,US\n", ":2: range 1.0.0.9 to 1.0.0.1 ends before it starts"),
        ("start,end,country\n1.0.0.1,::2,US\n", ":2: range 1.0.0.1 to ::2 mixes IPv4 and IPv6"),
        ("start,end,country,subdivision\n1.0.0.1,1.0.0.2,US,CA,x\n", ":2: expected 4 columns"),
        ("start,end,country\n1.0.0.1/8,1.0.0.2,US\n", ":2: .*does not appear to be"),
        ("begin,end,country\n", ":1: expected the header network,country,subdivision or start,end,"),
    ],
)
def test_bad_range_rows_are_refused_naming_the_line(tmp_path, content, message):
    (tmp_path / "bad.csv").write_text(content)
    with pytest.raises(BuildError, match=rf"bad\.csv{message}"):
        build_geo_database([tmp_path / "bad.csv"], tmp_path / "out.rlgeo")


# --- region codes ---------------------------------------------------------------------------------------------------

BAD_CODES = [("USA", "", "country 'USA' is not two letters"), ("ZZ", "", "country 'ZZ' is not an ISO 3166-1")]
BAD_SUBDIVISIONS = [("UA", "U-A", "subdivision 'U-A' is not of country UA"), ("DE", "BERLIN", "not an ISO 3166-2")]


def _rows_csv(path, good: int, bad: list[tuple[str, str, str]]) -> None:
    """`good` rows of /24s with valid codes, then the bad rows, each on a /24 of its own in 9.0.0.0/8."""
    lines = ["network,country,subdivision"]
    lines += [f"{ipaddress.IPv4Address(0x05000000 + (i << 8))}/24, ua ,ua-43" for i in range(good)]
    lines += [f"9.0.{i}.0/24,{country},{subdivision}" for i, (country, subdivision, _) in enumerate(bad)]
    path.write_text("\n".join(lines) + "\n")


def test_bad_codes_under_the_threshold_are_counted_and_left_out(tmp_path):
    bad = BAD_CODES + BAD_SUBDIVISIONS
    good = round(len(bad) / MAX_INVALID_FRACTION) - len(bad)  # exactly at the threshold: still accepted
    _rows_csv(tmp_path / "s.csv", good, bad)
    build_geo_database([tmp_path / "s.csv"], tmp_path / "s.rlgeo")
    db = GeoDatabase.open(tmp_path / "s.rlgeo")
    source = db.info["sources"][0]
    assert source["invalid_region_codes"]["count"] == len(bad)
    examples = source["invalid_region_codes"]["examples"]
    for line, (_, _, message) in enumerate(bad, start=good + 2):
        assert any(f"s.csv:{line}: " in example and message in example for example in examples), (line, examples)
    assert (db.lookup("5.0.0.1").country, db.lookup("5.0.0.1").subdivision) == ("UA", "UA-43")  # normalized
    assert db.lookup("9.0.0.1") is None and db.lookup("9.0.1.1") is None  # a bad country: no region
    assert (db.lookup("9.0.2.1").country, db.lookup("9.0.2.1").subdivision) == ("UA", None)  # keeps its country
    assert (db.lookup("9.0.3.1").country, db.lookup("9.0.3.1").subdivision) == ("DE", None)


def test_bad_codes_over_the_threshold_fail_the_build(tmp_path, capsys):
    bad = BAD_CODES + BAD_SUBDIVISIONS
    good = round(len(bad) / MAX_INVALID_FRACTION) - len(bad) - 1  # one network short of the threshold
    _rows_csv(tmp_path / "s.csv", good, bad)
    line = _cli_fails(capsys, ["geo", "build", str(tmp_path / "s.csv"), "-o", str(tmp_path / "s.rlgeo")])
    assert f"{len(bad)} of {good + len(bad):,} rows" in line
    assert "more than the 0.1% allowed" in line and "country 'USA' is not two letters" in line
    assert not (tmp_path / "s.rlgeo").exists()


def test_bad_codes_in_maxmind_records_are_counted_per_network(tmp_path):
    bad_record = {"country": {"iso_code": "EU"}}  # a vendor's own code
    networks = [(f"{ipaddress.IPv4Address(i << 12)}/20", US) for i in range(1, 3000)]
    networks += [("200.0.0.0/24", bad_record), ("200.0.1.0/24", bad_record), ("200.0.2.0/24", bad_record)]
    path = tmp_path / "eu.mmdb"
    write_mmdb(path, networks, ip_version=4, record_size=24)
    with maxminddb.open_database(str(path), maxminddb.MODE_FILE) as reader:
        counted = sum(1 for _, record in reader if record == bad_record)
    build_geo_database([path], tmp_path / "eu.rlgeo")
    db = GeoDatabase.open(tmp_path / "eu.rlgeo")
    assert db.info["sources"][0]["invalid_region_codes"] == {
        "count": counted,
        "examples": ["country 'EU' is not an ISO 3166-1 country"],
    }
    assert db.lookup("200.0.1.1") is None and db.lookup("0.0.16.1").country == "US"
    write_mmdb(path, networks[:100] + networks[-3:], ip_version=4, record_size=24)
    with pytest.raises(BuildError, match=r"eu\.mmdb: 3 of \d+ networks .* country 'EU'"):
        build_geo_database([path], tmp_path / "eu.rlgeo")
    # a few bad codes among records with no country at all: under the threshold, yet the source holds nothing
    countryless = [(network, {"city": {"names": {"en": "x"}}}) for network, _ in networks]
    write_mmdb(path, countryless[:-3] + networks[-3:], ip_version=4, record_size=24)
    (tmp_path / "good.csv").write_text("network,country\n1.0.0.0/8,US\n")
    with pytest.raises(BuildError, match=r"eu\.mmdb: no record holds an ISO 3166 region code; e.g. country 'EU'"):
        build_geo_database([tmp_path / "good.csv", path], tmp_path / "eu.rlgeo")


def test_header_names_the_sources_build_dates_and_types(tmp_path, capsys):
    import json

    write_mmdb(tmp_path / "a.mmdb", [("1.0.0.0/8", US)], ip_version=4)
    (tmp_path / "fix.csv").write_text("network,country,subdivision\n1.2.0.0/16,XK,\n1.3.0.0/16,FR,COR\n")
    out = str(tmp_path / "h.rlgeo")
    assert _cli(["geo", "build", str(tmp_path / "a.mmdb"), str(tmp_path / "fix.csv"), "-o", out]) == 0
    capsys.readouterr()
    assert _cli(["geo", "info", out]) == 0
    info = json.loads(capsys.readouterr().out)
    mmdb, csv = info["sources"]
    epoch = _reader_metadata(tmp_path / "a.mmdb")["build_epoch"]
    assert (mmdb["name"], mmdb["kind"], mmdb["build_epoch"], mmdb["database_type"]) == (
        "a.mmdb",
        "mmdb",
        epoch,
        "Test-City",
    )
    assert mmdb["build_time"] == "2023-11-14T22:13:20Z" and epoch == 1_700_000_000
    assert (csv["name"], csv["kind"]) == ("fix.csv", "csv") and "build_epoch" not in csv
    assert info["source_build_epoch"] == epoch
    # XK (Kosovo, MaxMind's code) and FR-COR (withdrawn from ISO 3166-2 in 2016) are kept, and reported
    assert info["regions_not_current_iso"] == 2 and info["regions_not_current_iso_examples"] == ["FR-COR", "XK"]
    db = GeoDatabase.open(out)
    assert db.lookup("1.2.3.4").country == "XK" and db.lookup("1.3.3.4").subdivision == "FR-COR"
    (tmp_path / "only.csv").write_text("network,country\n1.0.0.0/8,US\n")
    build_geo_database([tmp_path / "only.csv"], tmp_path / "c.rlgeo")
    assert "source_build_epoch" not in GeoDatabase.open(tmp_path / "c.rlgeo").info
