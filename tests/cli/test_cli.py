"""The `regionlock` command: help everywhere, bad usage as one line on stderr with exit code 2."""

import json
import subprocess

import pytest

from regionlock.service.cli.main import main

from support.service import regionlock_command


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*regionlock_command(), *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    "args",
    [(), ("serve",), ("check",), ("policy",), ("policy", "check"), ("geo",), ("allowlist",), ("token",)],
)
def test_help_everywhere(args):
    result = run(*args, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout


@pytest.mark.parametrize(
    "args",
    [
        ("no-such-command",),
        ("serve", "--no-such-flag"),
        ("serve", "--workers", "lots"),
        ("serve", "--check-addr", "nowhere"),
        ("check", "SERIAL"),
        ("policy", "check", "/nonexistent/policy.toml"),
    ],
)
def test_bad_usage_is_one_line_and_exit_code_2(args):
    result = run(*args)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stdout == ""


def test_policy_check_and_default(tmp_path, capsys):
    assert main(["policy", "default"]) == 0
    default = capsys.readouterr().out
    path = tmp_path / "p.toml"
    path.write_text(default)
    assert main(["policy", "check", str(path)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["mode"] == "enforce"
    assert summary["restricted"][0]["id"] == "sanctions"
    path.write_text('mode = "loud"\n')
    assert main(["policy", "check", str(path)]) == 2
    assert "mode" in capsys.readouterr().err


def test_policy_check_refuses_codes_that_match_nothing(tmp_path):
    # the example: this passed with exit 0, silently disabling the rule
    path = tmp_path / "p.toml"
    path.write_text('[[restricted]]\nid = "sanctions"\nregions = ["UK", "UA-99", "ZZ-ABC"]\n')
    result = run("policy", "check", str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"regionlock: error: {path}: restricted[0].regions[0]: UK is not an ISO 3166 code: did you mean GB? "
        "(and no region database was given)"
    ]


def test_policy_check_against_a_region_database_and_an_allowlist(tmp_path, capsys, geo_builder, allowlist_builder):
    from regionlock.service.policy import default_policy_text

    # a country-level source: Crimea and Sevastopol come as UA, without a subdivision
    geo = geo_builder([("5.2.0.0/16", "UA", None), ("5.4.0.0/16", "CU", None), ("5.6.0.0/16", "XK", None)])
    policy = tmp_path / "p.toml"
    policy.write_text('[[restricted]]\nid = "s"\nregions = ["CU", "UA-43", "UA-40"]\n[markets]\nBALKANS = ["XK"]\n')
    assert main(["policy", "check", str(policy), "--geo", str(geo)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert f"restricted[0].regions: UA-40, UA-43 never occur in {geo}" in err
    policy.write_text(policy.read_text().replace('id = "s"', 'id = "s"\nallow_absent_regions = true'))
    assert main(["policy", "check", str(policy), "--geo", str(geo)]) == 0
    assert json.loads(capsys.readouterr().out)["absent_regions"] == {"s": ["UA-40", "UA-43"]}
    assert main(["policy", "check", str(policy)]) == 2  # XK: no region database to say it is carried
    assert "XK is not a current ISO 3166-1 country code" in capsys.readouterr().err
    allowlist = allowlist_builder([("A-1", "BALKANS"), ("B-1", "US")])
    assert main(["policy", "check", str(policy), "--geo", str(geo), "--allowlist", str(allowlist)]) == 2
    assert "markets: US (of the allowlist" in capsys.readouterr().err
    policy.write_text(default_policy_text())
    assert main(["policy", "check", str(policy), "--allowlist", str(allowlist)]) == 2
    assert "markets: BALKANS (of the allowlist" in capsys.readouterr().err
