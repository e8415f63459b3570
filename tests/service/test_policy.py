"""Policy: parsing, defaults, validation errors naming the key, region matching, the shipped default."""

import pytest

from regionlock.service.policy import Policy, PolicyError, default_policy_text, load_policy, parse_policy

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
