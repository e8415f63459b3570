"""Embedded defaults: demo data built in the data directory on first start, and ready-to-paste examples."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from regionlock.service.server.settings import Settings

if TYPE_CHECKING:
    from regionlock.core.allowlist import Allowlist
    from regionlock.service.snapshot import Snapshot

log = logging.getLogger(__name__)

DEMO_SEED = 0
ADMIN_TOKEN_FILE = "admin.token"
# Addresses that GeoLite2-City (2018, package maxminddb-geolite2) places in these regions; each is checked
# against the built database before it is shown, so a different GeoLite2 file only loses the example.
EXAMPLE_ADDRESSES = {
    "crimea": ("5.101.208.1", "UA", "UA-43"),
    "sevastopol": ("5.149.208.1", "UA", "UA-40"),
    "kyiv": ("5.53.112.1", "UA", "UA-30"),
    "germany": ("2.16.6.1", "DE", None),
    "usa": ("12.0.0.1", "US", None),
    "china": ("1.0.8.1", "CN", None),
    "iran": ("2.144.0.1", "IR", None),
}


def geolite2_city_path() -> Path:
    """The GeoLite2-City file of the `maxminddb-geolite2` package (the `demo` extra)."""
    try:
        import geolite2
    except ImportError:
        raise FileNotFoundError(
            "the embedded defaults need GeoLite2 demo data: pip install 'regionlock[demo]'"
        ) from None
    return Path(geolite2.geolite2_database())


def _predates_ipv4_aliases(path: Path) -> bool:
    """Whether demo data was built before IPv4 aliases (a 6to4 spelling of a Crimean address found no region)."""
    from regionlock.core.errors import DataFileError
    from regionlock.core.geo import GeoDatabase
    from regionlock.core.geo_aliases import METADATA_KEY

    try:
        return METADATA_KEY not in GeoDatabase.open(path, verify=False).info
    except (DataFileError, OSError):
        return False  # not ours to replace: loading it reports what is wrong


def prepare_embedded_data(settings: Settings) -> None:
    """Build whatever of the demo data is missing in the data directory; a second start reuses it."""
    from regionlock.core.allowlist_demo import build_demo_allowlist
    from regionlock.core.geo_build import build_geo_database
    from regionlock.service.policy import default_policy_text
    from regionlock.service.server.auth import create_token

    if not settings.geo_path.exists() or _predates_ipv4_aliases(settings.geo_path):
        log.info("building the region database from GeoLite2-City into %s (once)", settings.geo_path)
        build_geo_database([geolite2_city_path()], settings.geo_path)
    if not settings.allowlist_path.exists():
        log.info(
            "generating a demo allowlist of %d serials into %s (once)",
            settings.demo_serials,
            settings.allowlist_path,
        )
        build_demo_allowlist(settings.demo_serials, settings.allowlist_path, seed=DEMO_SEED)
    if not settings.policy_path.exists():
        settings.policy_path.write_text(default_policy_text(), encoding="utf-8")
        log.info("installed the default policy at %s", settings.policy_path)
    if not settings.tokens_path.exists():
        secret = create_token(settings.tokens_path, "admin", "operator")
        token_path = settings.data_dir / ADMIN_TOKEN_FILE
        fd = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secret + "\n")
        log.info("created an operator token named 'admin'; its secret is in %s (mode 0600)", token_path)


def _sample_serials(allowlist: Allowlist, markets: set[str], limit: int = 100_000) -> dict[str, str]:
    found: dict[str, str] = {}
    for i in range(min(len(allowlist), limit)):
        serial, market = allowlist.entry(i)
        if market in markets and market not in found:
            found[market] = serial
            if len(found) == len(markets):
                break
    return found


def example_commands(settings: Settings, snapshot: Snapshot, check_port: int, admin_port: int) -> list[str]:
    """Ready-to-paste commands that show each reason on the demo data (checked against it)."""
    addresses: dict[str, str] = {}
    for name, (ip, country, subdivision) in EXAMPLE_ADDRESSES.items():
        region = snapshot.geo.lookup(ip)
        if region is not None and region.country == country and (subdivision in (None, region.subdivision)):
            addresses[name] = ip
    serials = _sample_serials(snapshot.allowlist, {"EEA", "CN", "GLOBAL", "US"})
    target = f"127.0.0.1:{check_port}"
    check = f"regionlock check --target {target}"
    lines: list[str] = []
    cases: list[tuple[str, str | None, str | None]] = [
        ("authorized", serials.get("EEA"), addresses.get("germany")),
        ("authorized (a US device in the US)", serials.get("US"), addresses.get("usa")),
        ("gray import (a CN device in Germany)", serials.get("CN"), addresses.get("germany")),
        ("region restricted (Crimea)", serials.get("GLOBAL"), addresses.get("crimea")),
        ("not restricted (Kyiv)", serials.get("GLOBAL"), addresses.get("kyiv")),
        ("unknown serial", "NOT-A-REAL-SERIAL", addresses.get("germany")),
        ("unknown region (private address)", serials.get("EEA"), "10.0.0.1"),
    ]
    for label, serial, address in cases:
        if serial and address:
            lines.append(f"# {label}\n{check} {serial} {address}")
    if serials.get("GLOBAL") and addresses.get("crimea"):
        body = f'{{"serial": "{serials["GLOBAL"]}", "ip": "{addresses["crimea"]}", "explain": true}}'
        lines.append(
            f"# the same with grpcurl, through reflection\ngrpcurl -plaintext -d '{body}' {target} "
            "regionlock.v1.DeviceCheckService/CheckDevice"
        )
    token_path = settings.data_dir / ADMIN_TOKEN_FILE
    if token_path.exists():
        lines.append(
            f'# Admin (token in {token_path})\ngrpcurl -plaintext -H "authorization: Bearer $(cat {token_path})" '
            f"127.0.0.1:{admin_port} regionlock.admin.v1.AdminService/GetStatus"
        )
    return lines


def print_examples(settings: Settings, snapshot: Snapshot | None, check_port: int, admin_port: int) -> None:
    """Show the examples on standard error, where the server's log goes too."""
    if snapshot is None:
        return
    lines = example_commands(settings, snapshot, check_port, admin_port)
    print(
        "\nregionlock is serving the embedded demo data. Try:\n\n" + "\n\n".join(lines) + "\n",
        file=sys.stderr,
    )
