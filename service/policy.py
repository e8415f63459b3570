"""Policy: the TOML file read into a validated, immutable Policy, and region matching."""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pycountry

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
_RULE_KEYS = ("id", "regions", "message", "allow_absent_regions")
# Codes in common use that ISO 3166 does not assign (the UK's domain, the EU's code for Greece): a rule naming
# them would match nothing, so they are refused with the code that was meant.
_LOOKALIKES = {"UK": "GB", "EL": "GR"}
# What tags Crimea or Sevastopol with the country alone, for the message refusing a rule its data can't match.
_NO_SUBDIVISIONS = "GeoLite2/GeoIP2 Country, DB-IP, IPinfo and RIR data carry no ISO 3166-2 subdivisions"


class PolicyError(ValueError):
    """The policy is invalid; the message names the key."""


@dataclass(frozen=True, slots=True)
class DataRegions:
    """The regions a region database carries: codes a policy may name beyond ISO 3166, and what can match at all."""

    name: str
    countries: frozenset[str]
    subdivisions: frozenset[str]

    @classmethod
    def of(cls, name: str, regions: Iterable[tuple[str, str | None]]) -> DataRegions:
        """From a GeoDatabase's `regions` table of (country, subdivision or None); `name` names it in errors."""
        regions = list(regions)
        return cls(
            name,
            frozenset(country for country, _ in regions if country),
            frozenset(subdivision for _, subdivision in regions if subdivision),
        )

    def carries(self, entry: str) -> bool:
        """Whether some address of the database is in this region (a country: in it or any of its subdivisions)."""
        return entry in self.subdivisions if "-" in entry else entry in self.countries


@dataclass(frozen=True, slots=True)
class RestrictedRule:
    """A set of regions where no device may be used."""

    id: str
    regions: frozenset[str]
    message: str
    # set by the rule's author: regions the region database never carries are accepted (and match nothing there)
    allow_absent_regions: bool = False

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
    _restricted_memo: dict[tuple[str, str | None], RestrictedRule | None] = field(
        default_factory=dict, repr=False, compare=False
    )
    _market_memo: dict[tuple[str, str, str | None], bool] = field(default_factory=dict, repr=False, compare=False)

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


def _iso_problem(entry: str, data: DataRegions | None) -> str | None:
    """Why a well-formed region code can't mean what it says (None if it is ISO 3166 or the data carries it)."""
    if data is not None and data.carries(entry):
        return None
    country, _, code = entry.partition("-")
    if code and pycountry.subdivisions.get(code=entry) is not None:
        return None
    if not code and pycountry.countries.get(alpha_2=entry) is not None:
        return None
    if country in _LOOKALIKES:
        meant = _LOOKALIKES[country] + (f"-{code}" if code else "")
        problem = f"{entry} is not an ISO 3166 code: did you mean {meant}?"
    elif pycountry.countries.get(alpha_2=country) is None:
        historic = pycountry.historic_countries.get(alpha_2=country)
        withdrawn = f" (withdrawn: {historic.name}, {historic.withdrawal_date})" if historic else ""
        problem = f"{country} is not a current ISO 3166-1 country code{withdrawn}"
        if code:
            problem = f"{entry} is not an ISO 3166-2 code: {problem}"
    else:
        problem = f"{entry} is not an ISO 3166-2 subdivision of {country}"
    where = f"nor a region {data.name} carries" if data is not None else "and no region database was given"
    return f"{problem} ({where})"


def _region_list(value: Any, key: str, allow_star: bool, data: DataRegions | None) -> frozenset[str]:
    if not isinstance(value, list):
        raise PolicyError(f"{key}: expected a list of region codes")
    regions: set[str] = set()
    for i, entry in enumerate(value):
        if not isinstance(entry, str) or not (
            _COUNTRY.match(entry) or _SUBDIVISION.match(entry) or (allow_star and entry == "*")
        ):
            what = "an ISO 3166-1 country, an ISO 3166-2 subdivision" + (' or "*"' if allow_star else "")
            raise PolicyError(f"{key}[{i}]: expected {what}, got {entry!r}")
        problem = None if entry == "*" else _iso_problem(entry, data)
        if problem is not None:
            raise PolicyError(f"{key}[{i}]: {problem}")
        if entry in regions:
            raise PolicyError(f"{key}[{i}]: duplicate region {entry!r}")
        regions.add(entry)
    return frozenset(regions)


def _table(raw: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise PolicyError(f"{key}: expected a table")
    return value


def _parse_restricted(raw: Any, data: DataRegions | None) -> tuple[RestrictedRule, ...]:
    if not isinstance(raw, list):
        raise PolicyError("restricted: expected an array of tables ([[restricted]])")
    rules, seen = [], set()
    for i, rule in enumerate(raw):
        key = f"restricted[{i}]"
        if not isinstance(rule, dict):
            raise PolicyError(f"{key}: expected a table")
        for name in sorted(set(rule) - set(_RULE_KEYS)):
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
        allow_absent = rule.get("allow_absent_regions", False)
        if not isinstance(allow_absent, bool):
            raise PolicyError(f"{key}.allow_absent_regions: expected true or false, got {allow_absent!r}")
        if "regions" not in rule:
            raise PolicyError(f"{key}.regions: missing")
        regions = _region_list(rule["regions"], f"{key}.regions", False, data)
        absent = absent_regions(regions, data)
        if absent and data is not None and not allow_absent:  # (absent is empty without data)
            raise PolicyError(_absent_message(f"{key}.regions", absent, data))
        rules.append(RestrictedRule(rule_id, regions, message, allow_absent))
    return tuple(rules)


def absent_regions(regions: Iterable[str], data: DataRegions | None) -> list[str]:
    """The regions no address of the database is in (none without a database)."""
    return [] if data is None else sorted(r for r in regions if r != "*" and not data.carries(r))


def _absent_message(key: str, absent: list[str], data: DataRegions) -> str:
    hint = (
        f" ({_NO_SUBDIVISIONS}: they tag such addresses with the country alone)"
        if any("-" in r for r in absent)
        else ""
    )
    return (
        f"{key}: {', '.join(absent)} never occur in {data.name}, so this rule can't match them there{hint}; "
        "serve a source that carries them, or set allow_absent_regions = true on the rule if that is meant"
    )


def undefined_markets(policy: Policy, markets: Iterable[str]) -> list[str]:
    """The markets (of an allowlist) the policy doesn't define: their devices would be gray imports everywhere."""
    return sorted(set(markets) - set(policy.markets))


def require_markets_defined(policy: Policy, markets: Iterable[str], policy_name: str, allowlist_name: str) -> None:
    """Refuse a policy that leaves a market of the allowlist undefined (PolicyError naming them).

    Refused, not warned about: such a market's devices would be gray imports in every region, their own included
    (a US phone in the US), and a policy can say that on purpose with `US = []`, so an undefined market is
    always an omission.
    """
    undefined = undefined_markets(policy, markets)
    if undefined:
        raise PolicyError(
            f"{policy_name}: markets: {', '.join(undefined)} (of the allowlist {allowlist_name}) not defined, so "
            "their devices would be gray imports everywhere; define each under [markets] (as an empty list, "
            "covering nowhere, if that is meant)"
        )


def parse_policy(text: str, source: str = "policy", data: DataRegions | None = None) -> Policy:
    """Parse and validate policy TOML; raise PolicyError naming the key (and the source) on any problem.

    With `data` (the regions of the region database it will serve with), regions that database carries may be
    named even if ISO 3166 doesn't list them (XK), and a restricted region it never carries is refused unless
    its rule sets allow_absent_regions.
    """
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{source}: not valid TOML: {exc}") from None
    except RecursionError:  # tomllib recurses once per level of nesting
        raise PolicyError(f"{source}: not valid TOML: nested too deeply") from None
    try:
        return _build(raw, hashlib.sha256(text.encode()).hexdigest()[:16], data)
    except PolicyError as exc:
        raise PolicyError(f"{source}: {exc}") from None


def _build(raw: dict[str, Any], version: str, data: DataRegions | None) -> Policy:
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
        markets[name] = _region_list(regions, f"markets.{name}", True, data)
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
        restricted=_parse_restricted(raw.get("restricted", []), data),
        markets=MappingProxyType(markets),
        block_gray_import=blocks["gray_import"],
        block_unknown_serial=blocks["unknown_serial"],
        block_unknown_region=blocks["unknown_region"],
        messages=MappingProxyType(messages),
        version=version,
    )


def load_policy(path: str | Path, data: DataRegions | None = None) -> Policy:
    """Read and validate a policy file (against a region database's regions, if given: see parse_policy)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"{path}: can't read the policy: {exc}") from None
    return parse_policy(text, str(path), data)


def default_policy_text() -> str:
    """The commented default policy shipped with the package."""
    return resources.files("regionlock.service").joinpath("default_policy.toml").read_text(encoding="utf-8")
