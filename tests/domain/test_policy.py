"""Policy: parsing, defaults, validation errors naming the key, ISO 3166 codes, region matching, the shipped default."""

import pytest

from regionlock.core.geo import GeoDatabase
from regionlock.service.policy import (
    DataRegions,
    Policy,
    PolicyError,
    absent_regions,
    default_policy_text,
    load_policy,
    parse_policy,
    undefined_markets,
)

EU = {
    "AT",
    "BE",
    "BG",
    "HR",
    "CY",
    "CZ",
    "DK",
    "EE",
    "FI",
    "FR",
    "DE",
    "GR",
    "HU",
    "IE",
    "IT",
    "LV",
    "LT",
    "LU",
    "MT",
    "NL",
    "PL",
    "PT",
    "RO",
    "SK",
    "SI",
    "ES",
    "SE",
}


def test_omitted_keys_take_documented_defaults():
    policy = parse_policy("")
    assert policy.mode == "enforce"
    assert policy.cache_ttl_seconds == 3600
    assert policy.restricted == ()
    assert dict(policy.markets) == {}
    assert not (policy.block_gray_import or policy.block_unknown_serial or policy.block_unknown_region)


def test_default_policy_is_valid_and_complete():
    policy = parse_policy(default_policy_text())
    (rule,) = policy.restricted
    assert rule.rule_id == "restricted:sanctions"
    assert rule.regions == {"CU", "IR", "SY", "KP", "SD", "UA-43", "UA-40"}
    assert policy.markets["EEA"] == EU | {"IS", "LI", "NO"}
    assert {"CN", "IN", "RU", "GLOBAL"} <= set(policy.markets)
    assert policy.markets["GLOBAL"] == {"*"}


def test_country_entry_matches_every_subdivision_and_subdivision_only_itself():
    policy = parse_policy('[[restricted]]\nid = "a"\nregions = ["UA-43"]\n[[restricted]]\nid = "b"\nregions = ["SY"]\n')
    assert policy.restricted_rule("UA", "UA-43").id == "a"
    assert policy.restricted_rule("UA", "UA-30") is None
    assert policy.restricted_rule("UA", None) is None
    assert policy.restricted_rule("SY", "SY-DI").id == "b"
    assert policy.restricted_rule("SY", None).id == "b"
    country_wide = parse_policy('[[restricted]]\nid = "ua"\nregions = ["UA"]\n')
    assert country_wide.restricted_rule("UA", "UA-30").id == "ua"


def test_market_coverage():
    policy = parse_policy('[markets]\nEEA = ["DE", "FR"]\nGLOBAL = ["*"]\nCRIMEA = ["UA-43"]\n')
    assert policy.market_covers("EEA", "DE", "DE-BE")
    assert not policy.market_covers("EEA", "CN", None)
    assert policy.market_covers("GLOBAL", "CN", None)
    assert policy.market_covers("CRIMEA", "UA", "UA-43")
    assert not policy.market_covers("CRIMEA", "UA", "UA-30")
    assert not policy.market_covers("US", "US", None)  # undefined markets cover nothing


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('mode = "dry"', "mode"),
        ("cache_ttl_seconds = -1", "cache_ttl_seconds"),
        ('cache_ttl_seconds = "1h"', "cache_ttl_seconds"),
        ('[[restricted]]\nid = "x"\nregions = ["CU", "Cuba"]', "restricted[0].regions[1]"),
        ('[[restricted]]\nregions = ["CU"]', "restricted[0].id"),
        ('[[restricted]]\nid = "x"', "restricted[0].regions"),
        ('[[restricted]]\nid = "x"\nregions = ["CU"]\ncolour = 1', "restricted[0].colour"),
        (
            '[[restricted]]\nid = "x"\nregions = ["CU"]\n[[restricted]]\nid = "x"\nregions = ["IR"]',
            "restricted[1].id",
        ),
        ('[markets]\neea = ["DE"]', "markets.eea"),
        ('[markets]\nEEA = "DE"', "markets.EEA"),
        ('[markets]\nEEA = ["DE", 1]', "markets.EEA[1]"),
        ('[actions]\ngray_import = "deny"', "actions.gray_import"),
        ('[actions]\nstolen = "block"', "actions.stolen"),
        ("[messages]\ngray_import = 3", "messages.gray_import"),
        ('[messages]\nauthorized = "Welcome"', "messages.authorized"),
        ('[messages]\noverride_unlock = "Unlocked"', "messages.override_unlock"),
        ("colour = 1", "colour"),
    ],
)
def test_errors_name_the_key(text, key):
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "p.toml")
    assert str(info.value).startswith(f"p.toml: {key}:")


def test_not_toml():
    with pytest.raises(PolicyError, match="not valid TOML"):
        parse_policy("mode = ", "p.toml")
    with pytest.raises(PolicyError, match=r"p\.toml: not valid TOML: nested too deeply"):
        parse_policy("mode = " + "[" * 3000 + "]" * 3000, "p.toml")


def test_load_policy_from_file(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text('mode = "monitor"\n')
    policy = load_policy(path)
    assert isinstance(policy, Policy)
    assert policy.monitor
    assert policy.version == parse_policy('mode = "monitor"\n').version
    assert policy.version != parse_policy('mode = "enforce"\n').version
    with pytest.raises(PolicyError, match="can't read"):
        load_policy(tmp_path / "missing.toml")


def _data(path) -> DataRegions:
    return DataRegions.of(path.name, GeoDatabase.open(path).regions)


def _rule(*regions: str, extra: str = "") -> str:
    listed = ", ".join(f'"{r}"' for r in regions)
    return f'[[restricted]]\nid = "s"\nregions = [{listed}]\n{extra}'


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        (_rule("CU", "UK"), "restricted[0].regions[1]", "UK is not an ISO 3166 code: did you mean GB?"),
        (_rule("UA-99"), "restricted[0].regions[0]", "UA-99 is not an ISO 3166-2 subdivision of UA"),
        (_rule("ZZ"), "restricted[0].regions[0]", "ZZ is not a current ISO 3166-1 country code"),
        (_rule("ZZ-ABC"), "restricted[0].regions[0]", "ZZ-ABC is not an ISO 3166-2 code"),
        (_rule("AN"), "restricted[0].regions[0]", "withdrawn: Netherlands Antilles"),
        (_rule("CU", "IR", "CU"), "restricted[0].regions[2]", "duplicate region 'CU'"),
        ('[markets]\nUKM = ["UK-ENG"]', "markets.UKM[0]", "did you mean GB-ENG?"),
        ('[markets]\nEEA = ["DE", "FR", "DE"]', "markets.EEA[2]", "duplicate region 'DE'"),
        ('[markets]\nBALKANS = ["RS", "XK"]', "markets.BALKANS[1]", "XK is not a current ISO 3166-1 country code"),
    ],
)
def test_regions_must_be_iso_3166_codes(text, key, problem):
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "p.toml")
    message = str(info.value)
    assert message.startswith(f"p.toml: {key}: ")
    assert problem in message
    assert "\n" not in message


def test_the_issue_example_no_longer_passes():
    # today's silent failure: these three passed, and the rule matched nothing
    for region in ("UK", "UA-99", "ZZ-ABC"):
        with pytest.raises(PolicyError, match=rf"restricted\[0\]\.regions\[0\]: .*{region}"):
            parse_policy(_rule(region, "CU"))


def test_codes_the_region_database_carries_may_be_named(geo_builder):
    # Kosovo (XK) is not in ISO 3166-1, but sources tag addresses with it: naming it is meaningful there
    data = _data(geo_builder([("10.0.0.0/8", "XK", None), ("11.0.0.0/8", "RS", "RS-00"), ("12.0.0.0/8", "UA", None)]))
    policy = parse_policy('[markets]\nBALKANS = ["RS", "XK", "RS-00"]', "p.toml", data)
    assert policy.market_covers("BALKANS", "XK", None)
    with pytest.raises(PolicyError, match=r"ZZ is not a current ISO 3166-1 country code \(nor a region geo0\.rlgeo"):
        parse_policy('[markets]\nX = ["ZZ"]', "p.toml", data)


def test_a_restricted_region_absent_from_the_data_is_refused_unless_the_rule_opts_in(geo_builder):
    # a country-level source (DB-IP, IPinfo, RIR data, GeoLite2-Country) tags Crimea UA, without a subdivision
    data = _data(geo_builder([("5.2.0.0/16", "UA", None), ("5.4.0.0/16", "CU", None)]))
    text = _rule("CU", "UA-43", "UA-40")
    assert parse_policy(text).restricted[0].regions == {"CU", "UA-43", "UA-40"}  # without data: nothing to check
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "p.toml", data)
    message = str(info.value)
    assert message.startswith("p.toml: restricted[0].regions: UA-40, UA-43 never occur in geo0.rlgeo")
    assert "allow_absent_regions = true" in message
    opted_in = parse_policy(_rule("CU", "UA-43", "UA-40", extra="allow_absent_regions = true"), "p.toml", data)
    (rule,) = opted_in.restricted
    assert rule.allow_absent_regions
    assert absent_regions(rule.regions, data) == ["UA-40", "UA-43"]
    with pytest.raises(PolicyError, match=r"restricted\[0\]\.allow_absent_regions: expected true or false"):
        parse_policy(_rule("CU", extra='allow_absent_regions = "yes"'), "p.toml", data)


def test_the_default_policy_loads_on_the_bundled_data(geolite2_db):
    data = _data(geolite2_db)
    policy = parse_policy(default_policy_text(), "default", data)
    for rule in policy.restricted:
        assert not rule.allow_absent_regions
        assert absent_regions(rule.regions, data) == []
    assert data.carries("XK") and data.carries("UA-43") and not data.carries("UA-99")


def test_undefined_markets():
    policy = parse_policy('[markets]\nEEA = ["DE"]\nNOWHERE = []\n')
    assert undefined_markets(policy, ["EEA", "US", "NOWHERE", "CN"]) == ["CN", "US"]
