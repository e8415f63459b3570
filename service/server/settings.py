"""Frozen settings from flags, environment and a TOML config file: the only reader of os.environ."""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENV_PREFIX = "REGIONLOCK_"
_ADDRESS = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]+|\*):(\d{1,5})$")
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
CPU_AFFINITY = ("auto", "none")  # auto: each worker on a CPU of its own when there are enough (see workers.py)


class SettingsError(ValueError):
    """A setting is invalid; the message is one line naming the setting."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the server reads at start, resolved once: flag over environment over file over default."""

    data_dir: Path = Path("var")
    geo: Path | None = None
    allowlist: Path | None = None
    policy: Path | None = None
    store: str | None = None
    tokens: Path | None = None
    check_addr: str = "[::]:50051"
    admin_addr: str = "127.0.0.1:50052"
    metrics_addr: str = "127.0.0.1:9464"
    workers: int = 0
    cpu_affinity: str = "auto"
    log_level: str = "INFO"
    max_batch: int = 10_000
    max_streams: int = 64
    max_pending_calls: int = 10_000
    max_message_bytes: int = 64 << 20
    grace_seconds: float = 10.0
    override_poll_seconds: float = 0.2
    demo_serials: int = 1_000_000
    # older region data than this is reported (log, GetStatus): addresses move between regions; 0 never warns
    geo_max_age_days: int = 35
    admin_tls_cert: Path | None = None
    admin_tls_key: Path | None = None
    admin_tls_client_ca: Path | None = None

    # Paths resolved against the data directory: these are what the server actually opens.
    @property
    def geo_path(self) -> Path:
        return self.geo or self.data_dir / "geo.rlgeo"

    @property
    def allowlist_path(self) -> Path:
        return self.allowlist or self.data_dir / "allowlist.rlallow"

    @property
    def policy_path(self) -> Path:
        return self.policy or self.data_dir / "policy.toml"

    @property
    def tokens_path(self) -> Path:
        return self.tokens or self.data_dir / "tokens.json"

    @property
    def store_url(self) -> str:
        return self.store or f"sqlite:///{(self.data_dir / 'overrides.sqlite3').resolve()}"

    @property
    def uses_embedded_data(self) -> bool:
        """True when no data path was given: the server may build the demo data in the data directory."""
        return self.geo is None and self.allowlist is None and self.policy is None

    @property
    def worker_count(self) -> int:
        return self.workers or os.cpu_count() or 1


FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


def _convert(name: str, value: Any) -> Any:
    """Turn a raw value from a flag, the environment or the file into the field's type, or raise."""
    default = FIELDS[name].default
    kind: type[Any] = Path if default is None or isinstance(default, Path) else type(default)
    if name == "store":
        kind = str
    try:
        if kind is bool:
            raise TypeError
        if kind is int:
            if isinstance(value, bool):
                raise ValueError(value)
            return int(value)
        if kind is float:
            return float(value)
        if kind is Path:
            return Path(os.path.expanduser(str(value)))
        if not isinstance(value, str):
            raise ValueError(value)
        return value
    except (TypeError, ValueError):
        raise SettingsError(f"{name}: expected {kind.__name__}, got {value!r}") from None


def _validate(settings: Settings) -> None:
    for name in ("check_addr", "admin_addr"):
        if not _ADDRESS.match(getattr(settings, name)):
            raise SettingsError(f"{name}: expected HOST:PORT, got {getattr(settings, name)!r}")
    if settings.metrics_addr and not _ADDRESS.match(settings.metrics_addr):
        raise SettingsError(f"metrics_addr: expected HOST:PORT or empty, got {settings.metrics_addr!r}")
    for name in ("check_addr", "admin_addr", "metrics_addr"):
        match = _ADDRESS.match(getattr(settings, name))
        if match and int(match.group(2)) > 65535:
            raise SettingsError(f"{name}: port {match.group(2)} is out of range")
    if settings.workers < 0 or settings.workers > 256:
        raise SettingsError(f"workers: expected 0 (one per core) to 256, got {settings.workers}")
    if settings.cpu_affinity not in CPU_AFFINITY:
        raise SettingsError(f"cpu_affinity: expected one of {', '.join(CPU_AFFINITY)}, got {settings.cpu_affinity!r}")
    if not 1 <= settings.max_batch <= 1_000_000:
        raise SettingsError(f"max_batch: expected 1 to 1000000, got {settings.max_batch}")
    if not 1 <= settings.max_streams <= 10_000:
        raise SettingsError(f"max_streams: expected 1 to 10000, got {settings.max_streams}")
    if not 100 <= settings.max_pending_calls <= 1_000_000:
        raise SettingsError(f"max_pending_calls: expected 100 to 1000000, got {settings.max_pending_calls}")
    if settings.max_message_bytes < 1024:
        raise SettingsError(f"max_message_bytes: expected at least 1024, got {settings.max_message_bytes}")
    if settings.grace_seconds < 0:
        raise SettingsError(f"grace_seconds: expected a non-negative number, got {settings.grace_seconds}")
    if not 0.01 <= settings.override_poll_seconds <= 60:
        raise SettingsError(f"override_poll_seconds: expected 0.01 to 60, got {settings.override_poll_seconds}")
    if not 0 <= settings.geo_max_age_days <= 3650:
        raise SettingsError(f"geo_max_age_days: expected 0 (never warn) to 3650, got {settings.geo_max_age_days}")
    if settings.demo_serials < 1:
        raise SettingsError(f"demo_serials: expected a positive number, got {settings.demo_serials}")
    if settings.log_level.upper() not in _LOG_LEVELS:
        raise SettingsError(f"log_level: expected one of {', '.join(_LOG_LEVELS)}, got {settings.log_level!r}")
    if (settings.admin_tls_cert is None) != (settings.admin_tls_key is None):
        raise SettingsError("admin_tls_cert: admin_tls_cert and admin_tls_key must be given together")
    if settings.admin_tls_client_ca is not None and settings.admin_tls_cert is None:
        raise SettingsError("admin_tls_client_ca: mutual TLS needs admin_tls_cert and admin_tls_key too")
    for name in ("admin_tls_cert", "admin_tls_key", "admin_tls_client_ca"):
        path = getattr(settings, name)
        if path is not None and not path.is_file():
            raise SettingsError(f"{name}: no such file: {path}")


def _read_config_file(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except OSError as exc:
        raise SettingsError(f"config: can't read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"config: {path} is not valid TOML: {exc}") from None
    unknown = sorted(set(raw) - set(FIELDS))
    if unknown:
        raise SettingsError(f"config: unknown setting {unknown[0]!r} in {path}")
    return raw


def load_settings(
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: str | os.PathLike[str] | None = None,
) -> Settings:
    """Resolve settings: flags (None = not given) over REGIONLOCK_* environment over the config file over defaults."""
    environ = os.environ if environ is None else environ
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    config_path = flags.pop("config", None) or config_file or environ.get(ENV_PREFIX + "CONFIG")
    unknown = sorted(set(flags) - set(FIELDS))
    if unknown:
        raise SettingsError(f"{unknown[0]}: not a setting")
    values: dict[str, Any] = {}
    if config_path:
        values.update(_read_config_file(Path(config_path)))
    for name in FIELDS:
        env_value = environ.get(ENV_PREFIX + name.upper())
        if env_value is not None:
            values[name] = env_value
    values.update(flags)
    settings = Settings(**{name: _convert(name, value) for name, value in values.items()})
    _validate(settings)
    return settings
