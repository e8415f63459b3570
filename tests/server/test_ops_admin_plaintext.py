"""Admin on a non-loopback address without TLS is refused unless `admin_plaintext` says it is intended."""

from __future__ import annotations

import pytest

from regionlock.service.cli.main import main
from regionlock.service.server.settings import SettingsError, load_settings


@pytest.mark.parametrize("address", ["127.0.0.1:50052", "127.8.9.10:1", "[::1]:50052", "localhost:50052"])
def test_loopback_admin_without_tls_is_allowed(address):
    assert load_settings({"admin_addr": address}, environ={}).admin_addr == address


@pytest.mark.parametrize("address", ["0.0.0.0:50052", "[::]:50052", "*:50052", "10.1.2.3:50052", "admin.example:1"])
def test_non_loopback_admin_without_tls_is_refused_naming_address_and_setting(address):
    with pytest.raises(SettingsError) as caught:
        load_settings({"admin_addr": address}, environ={})
    message = str(caught.value)
    assert message.startswith("admin_addr: ") and address in message and "admin_plaintext" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("flags", "environ"),
    [
        ({"admin_plaintext": "true"}, {}),
        ({}, {"REGIONLOCK_ADMIN_PLAINTEXT": "yes"}),
        ({"admin_plaintext": True}, {}),  # a TOML boolean
    ],
)
def test_admin_plaintext_allows_it(flags, environ):
    settings = load_settings({"admin_addr": "0.0.0.0:50052", **flags}, environ=environ)
    assert settings.admin_plaintext is True


def test_admin_plaintext_from_the_config_file(tmp_path):
    config = tmp_path / "regionlock.toml"
    config.write_text('admin_addr = "[::]:50052"\nadmin_plaintext = true\n')
    assert load_settings({"config": str(config)}, environ={}).admin_plaintext is True
    config.write_text('admin_addr = "[::]:50052"\nadmin_plaintext = false\n')
    with pytest.raises(SettingsError, match=r"^admin_addr: "):
        load_settings({"config": str(config)}, environ={})


def test_admin_plaintext_must_be_a_boolean():
    with pytest.raises(SettingsError, match=r"^admin_plaintext: expected bool, got 'maybe'"):
        load_settings({"admin_plaintext": "maybe"}, environ={})


def test_serve_refuses_with_one_line_and_exit_2(tmp_path, capsys):
    status = main(["serve", "--data-dir", str(tmp_path), "--admin-addr", "0.0.0.0:0", "--metrics-addr", ""])
    assert status == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "0.0.0.0:0" in err and "admin_plaintext" in err
    assert not any(tmp_path.iterdir())  # refused before anything was built
