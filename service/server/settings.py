"""Frozen settings from flags, environment and a TOML config file: the only reader of os.environ."""

# ruff: noqa: RUF009  (each field's default is `setting(...)`, a dataclasses.field carrying the declaration)
from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENV_PREFIX = "REGIONLOCK_"
_ADDRESS = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]+|\*):(\d{1,5})$")
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
CPU_AFFINITY = ("auto", "none")  # auto: each worker on a CPU of its own when there are enough (see workers.py)


class SettingsError(ValueError):
    """A setting is invalid; the message is one line naming the setting."""


def _address_problem(value: str, expected: str) -> str | None:
    match = _ADDRESS.match(value)
    if not match:
        return f"expected {expected}, got {value!r}"
    if int(match.group(2)) > 65535:
        return f"port {match.group(2)} is out of range"
    return None


def _host_port(value: str) -> str | None:
    return _address_problem(value, "HOST:PORT")


def _host_port_or_empty(value: str) -> str | None:
    return _address_problem(value, "HOST:PORT or empty") if value else None


def _existing_file(value: Path) -> str | None:
    return None if value.is_file() else f"no such file: {value}"


@dataclass(frozen=True, slots=True)
class Spec:
    """What a setting's field declares besides its name, type and default (see `setting`)."""

    help: str
    shown: str | None = None
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    ignore_case: bool = False
    allowed: str | None = None
    check: Callable[[Any], str | None] | None = None


def setting(
    default: Any,
    help: str,
    *,
    shown: str | None = None,
    low: float | None = None,
    high: float | None = None,
    choices: tuple[str, ...] = (),
    ignore_case: bool = False,
    allowed: str | None = None,
    check: Callable[[Any], str | None] | None = None,
) -> Any:
    """Declare a setting as a field of Settings: its default, help text (Markdown: `code` spans are kept in the
    README and dropped from --help), how the default reads when not as its value (`shown`), and its bounds:
    low/high for numbers, choices for text, `allowed` to word the bounds, `check` for anything else (a function
    returning the problem, or None)."""
    spec = Spec(help, shown, low, high, choices, ignore_case, allowed, check)
    return dataclasses.field(default=default, metadata={"setting": spec})


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the server reads at start, resolved once: flag over environment over file over default.

    Each field is the one declaration of a setting: name (the config key; the flag and the environment
    variable derive from it), type, default, bounds and help. The `serve` flags, their --help, the validation
    and the README's settings table (tests hold it to `readme_table()`) all come from here."""

    data_dir: Path = setting(Path("var"), "data directory", shown="`./var`")
    geo: Path | None = setting(None, "region database", shown="`DATA_DIR/geo.rlgeo`")
    allowlist: Path | None = setting(None, "serial allowlist", shown="`DATA_DIR/allowlist.rlallow`")
    policy: Path | None = setting(None, "policy TOML", shown="`DATA_DIR/policy.toml`")
    store: str | None = setting(
        None,
        "override store URL: `sqlite:///path` or `postgresql://...`",
        shown="`sqlite:///DATA_DIR/overrides.sqlite3`",
        allowed="URL",
    )
    tokens: Path | None = setting(None, "Admin token file", shown="`DATA_DIR/tokens.json`")
    check_addr: str = setting("[::]:50051", "DeviceCheck listener", allowed="HOST:PORT", check=_host_port)
    admin_addr: str = setting("127.0.0.1:50052", "Admin listener", allowed="HOST:PORT", check=_host_port)
    metrics_addr: str = setting(
        "127.0.0.1:9464",
        "Prometheus `/metrics` listener; empty disables it",
        allowed="HOST:PORT or empty",
        check=_host_port_or_empty,
    )
    workers: int = setting(
        0, "DeviceCheck worker processes", shown="one per core", low=0, high=256, allowed="0 (one per core) to 256"
    )
    cpu_affinity: str = setting(
        "auto",
        "worker placement: `auto`: with at least as many CPUs (of the process's allowed set) as workers, worker i "
        "runs on the i-th; `none` leaves placement to the kernel",
        choices=CPU_AFFINITY,
    )
    log_level: str = setting("INFO", "log level (any case)", choices=_LOG_LEVELS, ignore_case=True)
    max_batch: int = setting(10_000, "items per `CheckDevices` call", low=1, high=1_000_000)
    max_streams: int = setting(
        64,
        "open `StreamCheckDevices` streams per worker; more are refused with `RESOURCE_EXHAUSTED`",
        low=1,
        high=10_000,
    )
    max_pending_calls: int = setting(
        10_000,
        "calls per worker that grpc-core queues before the server takes them; beyond it grpc-core refuses some at "
        "random, beyond three times it all (`CANCELLED`)",
        low=100,
        high=1_000_000,
    )
    max_message_bytes: int = setting(
        64 << 20, "largest request or response message, in bytes", shown="`67108864` = 64 MiB", low=1024
    )
    grace_seconds: float = setting(10.0, "how long in-flight calls may finish after SIGTERM", shown="`10`", low=0)
    override_poll_seconds: float = setting(
        0.2,
        "how often each process polls the override store for changes (PostgreSQL's `NOTIFY` is faster)",
        low=0.01,
        high=60,
    )
    demo_serials: int = setting(
        1_000_000, "serials in the demo allowlist built on embedded defaults (first start only)", low=1
    )
    # older region data than this is reported (log, GetStatus): addresses move between regions; 0 never warns
    geo_max_age_days: int = setting(
        35,
        "region data older than this many days is reported (log, `GetStatus.geo_age_warning`); `0` never warns",
        low=0,
        high=3650,
        allowed="0 (never warn) to 3650",
    )
    admin_tls_cert: Path | None = setting(
        None,
        "Admin TLS certificate (PEM), given with `admin_tls_key`",
        shown="none: Admin without TLS",
        allowed="a file",
        check=_existing_file,
    )
    admin_tls_key: Path | None = setting(
        None,
        "Admin TLS private key (PEM), given with `admin_tls_cert`",
        shown="none",
        allowed="a file",
        check=_existing_file,
    )
    admin_tls_client_ca: Path | None = setting(
        None,
        "CA certificates (PEM) for client certificates: with it, Admin requires them (mutual TLS)",
        shown="none",
        allowed="a file",
        check=_existing_file,
    )

    admin_plaintext: bool = setting(
        False,
        "allow Admin without TLS on a non-loopback `admin_addr` (tokens cross the network in clear text); "
        "without it such a start is refused",
        shown="`false`",
        allowed="true or false",
    )

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


@dataclass(frozen=True, slots=True)
class Declared:
    """One setting as Settings declares it, with what derives from the declaration."""

    name: str
    kind: type
    default: Any
    spec: Spec

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def shown(self) -> str:
        """The default as the README and --help show it (Markdown)."""
        if self.spec.shown is not None:
            return self.spec.shown
        default = self.default
        if isinstance(default, float) and default.is_integer():
            default = int(default)
        return f"`{default}`"

    @property
    def allowed(self) -> str:
        """The bounds in words: "1 to 10000", "at least 1024", "one of auto, none"; "" when anything goes."""
        spec = self.spec
        if spec.allowed is not None:
            return spec.allowed
        if spec.choices:
            return "one of " + ", ".join(spec.choices)
        if spec.low is not None and spec.high is not None:
            return f"{_number(spec.low)} to {_number(spec.high)}"
        if spec.low is not None:
            return f"at least {_number(spec.low)}"
        if spec.high is not None:
            return f"at most {_number(spec.high)}"
        return "path" if self.kind is Path else ""

    def problem(self, value: Any) -> str | None:
        """What is wrong with a converted value of this setting, or None."""
        spec = self.spec
        if value is None:
            return None
        if spec.choices and (value.upper() if spec.ignore_case else value) not in spec.choices:
            return f"expected {self.allowed}, got {value!r}"
        if (spec.low is not None and value < spec.low) or (spec.high is not None and value > spec.high):
            return f"expected {self.allowed}, got {_number(value)}"
        return spec.check(value) if spec.check is not None else None


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _declare() -> tuple[Declared, ...]:
    hints = typing.get_type_hints(Settings)
    declared = []
    for f in dataclasses.fields(Settings):
        kinds = [k for k in typing.get_args(hints[f.name]) if k is not type(None)] or [hints[f.name]]
        declared.append(Declared(f.name, kinds[0], f.default, f.metadata["setting"]))
    return tuple(declared)


DECLARED: tuple[Declared, ...] = _declare()
SETTINGS: dict[str, Declared] = {d.name: d for d in DECLARED}
FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


def help_text(declared: Declared) -> str:
    """A setting's `serve --help` line: its help, default, bounds and environment variable (no Markdown)."""
    allowed = f"; allowed: {declared.allowed}" if declared.allowed else ""
    text = f"{declared.spec.help} [default: {declared.shown}{allowed}; env: {declared.env}]"
    return text.replace("`", "").replace("%", "%%")


def readme_table() -> str:
    """The README's settings table, row for row from the declarations (a test compares it with the README)."""
    lines = ["| setting | flag | environment | default | allowed | what |", "| --- | --- | --- | --- | --- | --- |"]
    for d in DECLARED:
        lines.append(f"| `{d.name}` | `{d.flag}` | `{d.env}` | {d.shown} | {d.allowed} | {d.spec.help} |")
    return "\n".join(lines) + "\n"


_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


def is_loopback_address(address: str) -> bool:
    """True when HOST:PORT names only this machine: 127.0.0.0/8, ::1 or localhost (not `*`, `[::]`, 0.0.0.0)."""
    host = address.rpartition(":")[0].strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # another host name: it may resolve to any interface


def _convert(name: str, value: Any) -> Any:
    """Turn a raw value from a flag, the environment or the file into the field's type, or raise."""
    kind = SETTINGS[name].kind
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in _TRUE or text in _FALSE:
                return text in _TRUE
            raise ValueError(value)
        if kind is int:
            if isinstance(value, bool):
                raise ValueError(value)
            return int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if kind is Path:
            return Path(os.path.expanduser(str(value)))
        if not isinstance(value, str):
            raise ValueError(value)
        return value
    except (TypeError, ValueError):
        raise SettingsError(f"{name}: expected {kind.__name__}, got {value!r}") from None


def _validate(settings: Settings) -> None:
    for declared in DECLARED:
        problem = declared.problem(getattr(settings, declared.name))
        if problem is not None:
            raise SettingsError(f"{declared.name}: {problem}")
    # relations between settings: no single declaration holds them
    if (settings.admin_tls_cert is None) != (settings.admin_tls_key is None):
        raise SettingsError("admin_tls_cert: admin_tls_cert and admin_tls_key must be given together")
    if settings.admin_tls_client_ca is not None and settings.admin_tls_cert is None:
        raise SettingsError("admin_tls_client_ca: mutual TLS needs admin_tls_cert and admin_tls_key too")
    plaintext = settings.admin_tls_cert is None and not settings.admin_plaintext
    if plaintext and not is_loopback_address(settings.admin_addr):
        raise SettingsError(
            f"admin_addr: {settings.admin_addr} is not loopback and Admin has no TLS: tokens would cross the network "
            "in clear text; give admin_tls_cert and admin_tls_key, or admin_plaintext = true if that is intended"
        )


def _read_config_file(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except OSError as exc:
        raise SettingsError(f"config: can't read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"config: {path} is not valid TOML: {exc}") from None
    unknown = sorted(set(raw) - set(SETTINGS))
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
    unknown = sorted(set(flags) - set(SETTINGS))
    if unknown:
        raise SettingsError(f"{unknown[0]}: not a setting")
    values: dict[str, Any] = {}
    if config_path:
        values.update(_read_config_file(Path(config_path)))
    for declared in DECLARED:
        env_value = environ.get(declared.env)
        if env_value is not None:
            values[declared.name] = env_value
    values.update(flags)
    settings = Settings(**{name: _convert(name, value) for name, value in values.items()})
    _validate(settings)
    return settings
