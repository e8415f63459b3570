"""Policy: the TOML file read into a validated, immutable Policy, and region matching."""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

from regionlock.core.serials import normalize_market

_COUNTRY = re.compile(r"^[A-Z]{2}$")
_SUBDIVISION = re.compile(r"^[A-Z]{2}-[A-Z0-9]{1,3}$")
_RULE_ID = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
MODES = ("enforce", "monitor")
ACTIONS = ("gray_import", "unknown_serial", "unknown_region")
MESSAGES = (
    "authorized",
    "gray_import",
    "unknown_serial",
    "unknown_region",
    "override_unlock",
    "override_lock",
)
DEFAULT_MESSAGES = {
    "authorized": "",
    "gray_import": "This device isn't authorized for use in this region.",
    "unknown_serial": "This device couldn't be verified.",
    "unknown_region": "This device's location couldn't be determined.",
    "override_unlock": "",
    "override_lock": "This device has been locked. Please contact support.",
}
_TOP_LEVEL_KEYS = ("mode", "cache_ttl_seconds", "restricted", "markets", "actions", "messages")


class PolicyError(ValueError):
    """The policy is invalid; the message names the key."""


@dataclass(frozen=True, slots=True)
class RestrictedRule:
    """A set of regions where no device may be used."""

    id: str
    regions: frozenset[str]
    message: str

    @property
    def rule_id(self) -> str:
        return f"restricted:{self.id}"


def region_matches(entries: frozenset[str], country: str, subdivision: str | None) -> bool:
    """The one region-matching rule: "*" matches all, a country all its subdivisions, a subdivision itself."""
    return "*" in entries or country in entries or (subdivision is not None and subdivision in entries)


@dataclass(frozen=True)
class Policy:
    """A validated policy; `version` identifies its content."""

    mode: str = "enforce"
    cache_ttl_seconds: int = 3600
    restricted: tuple[RestrictedRule, ...] = ()
    markets: Mapping[str, frozenset[str]] = field(default_factory=lambda: MappingProxyType({}))
    block_gray_import: bool = False
    block_unknown_serial: bool = False
    block_unknown_region: bool = False
    messages: Mapping[str, str] = field(default_factory=lambda: MappingProxyType(dict(DEFAULT_MESSAGES)))
    version: str = ""
    # Memo of per-region answers: regions are few, and the check path asks the same ones again and again.
    _restricted_memo: dict = field(default_factory=dict, repr=False, compare=False)
    _market_memo: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def monitor(self) -> bool:
        return self.mode == "monitor"

    def restricted_rule(self, country: str, subdivision: str | None) -> RestrictedRule | None:
        """The first restricted rule matching the region, or None."""
        key = (country, subdivision)
        try:
            return self._restricted_memo[key]
        except KeyError:
            pass
        rule = next((r for r in self.restricted if region_matches(r.regions, country, subdivision)), None)
        self._restricted_memo[key] = rule
        return rule

    def market_covers(self, market: str, country: str, subdivision: str | None) -> bool:
        """Whether the market is defined and covers the region (an undefined market covers nothing)."""
        key = (market, country, subdivision)
        try:
            return self._market_memo[key]
        except KeyError:
            pass
        entries = self.markets.get(market)
        covered = entries is not None and region_matches(entries, country, subdivision)
        self._market_memo[key] = covered
        return covered


def _region_list(value: Any, key: str, allow_star: bool) -> frozenset[str]:
    if not isinstance(value, list):
        raise PolicyError(f"{key}: expected a list of region codes")
    regions = set()
    for i, entry in enumerate(value):
        if not isinstance(entry, str) or not (
            _COUNTRY.match(entry) or _SUBDIVISION.match(entry) or (allow_star and entry == "*")
        ):
            what = "an ISO 3166-1 country, an ISO 3166-2 subdivision" + (' or "*"' if allow_star else "")
            raise PolicyError(f"{key}[{i}]: expected {what}, got {entry!r}")
        regions.add(entry)
    return frozenset(regions)


def _table(raw: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise PolicyError(f"{key}: expected a table")
    return value


def _parse_restricted(raw: Any) -> tuple[RestrictedRule, ...]:
    if not isinstance(raw, list):
        raise PolicyError("restricted: expected an array of tables ([[restricted]])")
    rules, seen = [], set()
    for i, rule in enumerate(raw):
        key = f"restricted[{i}]"
        if not isinstance(rule, dict):
            raise PolicyError(f"{key}: expected a table")
        for name in sorted(set(rule) - {"id", "regions", "message"}):
            raise PolicyError(f"{key}.{name}: unknown key")
        rule_id = rule.get("id")
        if not isinstance(rule_id, str) or not _RULE_ID.match(rule_id):
            raise PolicyError(f"{key}.id: expected 1 to 64 characters from A-Z a-z 0-9 _ . -, got {rule_id!r}")
        if rule_id in seen:
            raise PolicyError(f"{key}.id: duplicate rule id {rule_id!r}")
        seen.add(rule_id)
        message = rule.get("message", "This device can't be used in this region.")
        if not isinstance(message, str):
            raise PolicyError(f"{key}.message: expected a string")
        if "regions" not in rule:
            raise PolicyError(f"{key}.regions: missing")
        rules.append(RestrictedRule(rule_id, _region_list(rule["regions"], f"{key}.regions", False), message))
    return tuple(rules)


def parse_policy(text: str, source: str = "policy") -> Policy:
    """Parse and validate policy TOML; raise PolicyError naming the key (and the source) on any problem."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{source}: not valid TOML: {exc}") from None
    try:
        return _build(raw, hashlib.sha256(text.encode()).hexdigest()[:16])
    except PolicyError as exc:
        raise PolicyError(f"{source}: {exc}") from None


def _build(raw: dict[str, Any], version: str) -> Policy:
    for key in sorted(set(raw) - set(_TOP_LEVEL_KEYS)):
        raise PolicyError(f"{key}: unknown key")
    mode = raw.get("mode", "enforce")
    if mode not in MODES:
        raise PolicyError(f'mode: expected "enforce" or "monitor", got {mode!r}')
    ttl = raw.get("cache_ttl_seconds", 3600)
    if not isinstance(ttl, int) or isinstance(ttl, bool) or not 0 <= ttl <= 30 * 86400:
        raise PolicyError(f"cache_ttl_seconds: expected a whole number from 0 to 2592000, got {ttl!r}")
    markets = {}
    for name, regions in _table(raw, "markets").items():
        try:
            normalized = normalize_market(name)
        except ValueError as exc:
            raise PolicyError(f"markets.{name}: {exc}") from None
        if normalized != name:
            raise PolicyError(f"markets.{name}: market names are upper case ({normalized!r})")
        markets[name] = _region_list(regions, f"markets.{name}", True)
    actions = _table(raw, "actions")
    for key in sorted(set(actions) - set(ACTIONS)):
        raise PolicyError(f"actions.{key}: unknown action")
    blocks = {}
    for key in ACTIONS:
        value = actions.get(key, "allow")
        if value not in ("allow", "block"):
            raise PolicyError(f'actions.{key}: expected "allow" or "block", got {value!r}')
        blocks[key] = value == "block"
    messages = dict(DEFAULT_MESSAGES)
    for key, value in _table(raw, "messages").items():
        if key not in MESSAGES:
            raise PolicyError(f"messages.{key}: unknown message")
        if not isinstance(value, str):
            raise PolicyError(f"messages.{key}: expected a string")
        if value and key in ("authorized", "override_unlock"):
            # the text would never be shown: silently dropping it would mislead whoever wrote it
            raise PolicyError(f"messages.{key}: an allowed device is shown no message; leave it empty")
        messages[key] = value
    return Policy(
        mode=mode,
        cache_ttl_seconds=ttl,
        restricted=_parse_restricted(raw.get("restricted", [])),
        markets=MappingProxyType(markets),
        block_gray_import=blocks["gray_import"],
        block_unknown_serial=blocks["unknown_serial"],
        block_unknown_region=blocks["unknown_region"],
        messages=MappingProxyType(messages),
        version=version,
    )


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"{path}: can't read the policy: {exc}") from None
    return parse_policy(text, str(path))


def default_policy_text() -> str:
    """The commented default policy shipped with the package."""
    return resources.files("regionlock.service").joinpath("default_policy.toml").read_text(encoding="utf-8")
