"""Settings: precedence of flags, environment, config file and defaults, and one-line errors."""

from pathlib import Path

import pytest

from regionlock.service.server.settings import Settings, SettingsError, load_settings


def test_defaults_when_nothing_is_given():
    settings = load_settings({}, environ={})
    assert settings == Settings()
    assert settings.check_addr == "[::]:50051"
    assert settings.admin_addr == "127.0.0.1:50052"
    assert settings.geo_path == Path("var/geo.rlgeo")
    assert settings.store_url == f"sqlite:///{Path('var/overrides.sqlite3').resolve()}"
    assert settings.uses_embedded_data


def test_flag_over_environment_over_file_over_default(tmp_path):
    config = tmp_path / "regionlock.toml"
    config.write_text('check_addr = "127.0.0.1:1111"\nadmin_addr = "127.0.0.1:2222"\nworkers = 3\nmax_batch = 50\n')
    environ = {"REGIONLOCK_ADMIN_ADDR": "127.0.0.1:3333", "REGIONLOCK_WORKERS": "4"}
    settings = load_settings({"workers": "5", "config": str(config)}, environ=environ)
    assert settings.check_addr == "127.0.0.1:1111"  # file
    assert settings.admin_addr == "127.0.0.1:3333"  # environment over file
    assert settings.workers == 5  # flag over environment
    assert settings.max_batch == 50
    assert settings.metrics_addr == "127.0.0.1:9464"  # default


def test_geo_max_age_days_default_and_sources(tmp_path):
    assert Settings().geo_max_age_days == 35
    assert load_settings({}, environ={"REGIONLOCK_GEO_MAX_AGE_DAYS": "0"}).geo_max_age_days == 0
    assert load_settings({"geo_max_age_days": "90"}, environ={}).geo_max_age_days == 90


def test_config_file_from_environment(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('log_level = "DEBUG"\n')
    assert load_settings({}, environ={"REGIONLOCK_CONFIG": str(config)}).log_level == "DEBUG"


def test_settings_are_frozen():
    with pytest.raises(AttributeError):
        load_settings({}, environ={}).workers = 3


def test_explicit_data_path_disables_embedded_data():
    settings = load_settings({"geo": "/data/geo.rlgeo"}, environ={})
    assert not settings.uses_embedded_data
    assert settings.geo_path == Path("/data/geo.rlgeo")


@pytest.mark.parametrize(
    ("flags", "environ", "named"),
    [
        ({"check_addr": "nonsense"}, {}, "check_addr"),
        ({"admin_addr": "127.0.0.1:70000"}, {}, "admin_addr"),
        ({}, {"REGIONLOCK_WORKERS": "many"}, "workers"),
        ({"workers": "-1"}, {}, "workers"),
        ({"max_batch": "0"}, {}, "max_batch"),
        ({"log_level": "LOUD"}, {}, "log_level"),
        ({"cpu_affinity": "each"}, {}, "cpu_affinity"),
        ({}, {"REGIONLOCK_CPU_AFFINITY": "1"}, "cpu_affinity"),
        ({"max_streams": "0"}, {}, "max_streams"),
        ({}, {"REGIONLOCK_MAX_PENDING_CALLS": "10"}, "max_pending_calls"),
        ({"admin_tls_cert": "/nonexistent.pem"}, {}, "admin_tls_cert"),
        ({"geo_max_age_days": "-1"}, {}, "geo_max_age_days"),
        ({}, {"REGIONLOCK_GEO_MAX_AGE_DAYS": "monthly"}, "geo_max_age_days"),
        ({"no_such": "x"}, {}, "no_such"),
    ],
)
def test_invalid_settings_name_the_setting(flags, environ, named):
    with pytest.raises(SettingsError) as info:
        load_settings(flags, environ=environ)
    message = str(info.value)
    assert message.startswith(named)
    assert "\n" not in message


def test_bad_config_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("workers = [\n")
    with pytest.raises(SettingsError, match=r"^config: .*not valid TOML"):
        load_settings({"config": str(bad)}, environ={})
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("colour = 'blue'\n")
    with pytest.raises(SettingsError, match="unknown setting 'colour'"):
        load_settings({"config": str(unknown)}, environ={})
    with pytest.raises(SettingsError, match="can't read"):
        load_settings({"config": str(tmp_path / "missing.toml")}, environ={})


def test_paths_from_flags_and_environment_are_paths(tmp_path):
    settings = load_settings({"data_dir": str(tmp_path)}, environ={"REGIONLOCK_TOKENS": "~/tokens.json"})
    assert settings.data_dir == tmp_path
    assert isinstance(settings.data_dir, Path)
    assert settings.tokens_path == Path.home() / "tokens.json"
