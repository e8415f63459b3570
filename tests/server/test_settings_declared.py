"""Each setting declared once: the serve flags, --help, the validation and the README table derive from it."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from regionlock.service.cli.main import build_parser
from regionlock.service.server.settings import DECLARED, Settings, SettingsError, load_settings, readme_table

README = Path(__file__).resolve().parents[2] / "README.md"

# today's names: gateways' deployments use them, so a change here is a breaking change, not a refactoring
NAMES = [
    "data_dir", "geo", "allowlist", "policy", "store", "tokens", "check_addr", "admin_addr", "metrics_addr",
    "workers", "cpu_affinity", "log_level", "max_batch", "max_streams", "max_pending_calls", "max_message_bytes",
    "grace_seconds", "override_poll_seconds", "demo_serials", "geo_max_age_days", "admin_tls_cert",
    "admin_tls_key", "admin_tls_client_ca", "admin_plaintext",
]  # fmt: skip


def _serve_help() -> str:
    parser = build_parser()
    [subparsers] = [a for a in parser._actions if a.dest == "command"]
    return subparsers.choices["serve"].format_help()


def test_every_field_is_declared_with_help_and_the_names_are_todays():
    assert [d.name for d in DECLARED] == [f.name for f in dataclasses.fields(Settings)] == NAMES
    for d in DECLARED:
        assert d.env == "REGIONLOCK_" + d.name.upper()
        assert d.flag == "--" + d.name.replace("_", "-")
        assert d.spec.help and d.shown


def test_the_readme_table_is_the_declaration():
    text = README.read_text(encoding="utf-8")
    table = readme_table()
    assert table in text, "README's settings table differs from the declaration: paste readme_table()'s output"
    rows = table.splitlines()[2:]
    assert len(rows) == len(DECLARED)
    assert any("`demo_serials`" in row for row in rows)


def test_serve_help_lists_every_setting_with_its_default_and_environment():
    text = " ".join(_serve_help().split())  # argparse wraps lines
    for d in DECLARED:
        assert f"{d.flag} {d.name.upper()}" in text
        assert d.env in text
    assert "--max-batch MAX_BATCH items per CheckDevices call [default: 10000; allowed: 1 to 1000000;" in text
    assert "--grace-seconds" in text and "--admin-tls-client-ca" in text and "--demo-serials" in text


def test_serve_flags_map_to_the_settings():
    args = build_parser().parse_args(["serve", "--max-message-bytes", "2048", "--demo-serials", "5"])
    flags = {d.name: getattr(args, d.name) for d in DECLARED}
    settings = load_settings(flags, environ={"REGIONLOCK_MAX_MESSAGE_BYTES": "4096", "REGIONLOCK_GRACE_SECONDS": "3"})
    assert settings.max_message_bytes == 2048  # flag over environment
    assert settings.demo_serials == 5
    assert settings.grace_seconds == 3.0  # environment over default
    assert settings.max_batch == 10_000  # default


@pytest.mark.parametrize("declared", [d for d in DECLARED if d.spec.low is not None], ids=lambda d: d.name)
def test_numeric_bounds_are_enforced_as_declared(declared):
    low, high = declared.spec.low, declared.spec.high
    assert load_settings({declared.name: str(low)}, environ={})  # the bounds are inclusive
    if high is not None:
        assert load_settings({declared.name: str(high)}, environ={})
    below = low - (0.001 if declared.kind is float else 1)
    with pytest.raises(SettingsError, match=rf"^{declared.name}: expected {re.escape(declared.allowed)}, got"):
        load_settings({}, environ={declared.env: str(below)})
    if high is not None:
        with pytest.raises(SettingsError, match=rf"^{declared.name}: "):
            load_settings({declared.name: str(high + 1)}, environ={})


def test_choices_are_enforced_as_declared():
    assert load_settings({"log_level": "debug"}, environ={}).log_level == "debug"  # log levels in any case
    with pytest.raises(SettingsError, match=r"^cpu_affinity: expected one of auto, none, got 'AUTO'"):
        load_settings({"cpu_affinity": "AUTO"}, environ={})


def test_a_boolean_in_the_config_file_is_no_number(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text("grace_seconds = true\n")
    with pytest.raises(SettingsError, match=r"^grace_seconds: expected float"):
        load_settings({"config": str(config)}, environ={})
