"""Serial and market normalization: the one definition used by the allowlist, the service and the stores."""

from __future__ import annotations

import re

SERIAL_MIN_LENGTH = 1
SERIAL_MAX_LENGTH = 32
SERIAL_CHARACTERS = "A-Z a-z 0-9 - _ / ."
MARKET_MIN_LENGTH = 1
MARKET_MAX_LENGTH = 16
MARKET_CHARACTERS = "A-Z 0-9 _"

_SERIAL_RE = re.compile(r"[A-Za-z0-9_/.\-]{1,32}")
_MARKET_RE = re.compile(r"[A-Z0-9_]{1,16}")


def normalize_serial(text: str) -> str:
    """Trim white space, check 1 to 32 characters of A-Z a-z 0-9 - _ / . and return it upper-cased.

    Raises ValueError (naming the rule and the rejected value) for anything else, including non-str input.
    """
    if not isinstance(text, str):
        raise ValueError(f"serial must be a string (got {type(text).__name__})")
    serial = text.strip()
    if _SERIAL_RE.fullmatch(serial) is None:
        raise ValueError(
            f"serial must be {SERIAL_MIN_LENGTH} to {SERIAL_MAX_LENGTH} characters from "
            f"{SERIAL_CHARACTERS} (got {shorten(text)!r})"
        )
    return serial.upper()


def normalize_market(text: str) -> str:
    """Trim white space, upper-case, and check 1 to 16 characters of A-Z 0-9 _; raise ValueError otherwise.

    Markets are compared case-insensitively like serials: `cn` is the market `CN`.
    """
    if not isinstance(text, str):
        raise ValueError(f"market must be a string (got {type(text).__name__})")
    market = text.strip().upper()
    # str.upper() maps a few non-ASCII letters to ASCII ones (e.g. dotless i, U+0131): check before upper-casing too
    if not text.strip().isascii() or _MARKET_RE.fullmatch(market) is None:
        raise ValueError(
            f"market must be {MARKET_MIN_LENGTH} to {MARKET_MAX_LENGTH} characters from "
            f"{MARKET_CHARACTERS} (got {shorten(text)!r})"
        )
    return market


def shorten(text: str, limit: int = 60) -> str:
    """A rejected value as an error message echoes it: at most `limit` characters and "..."."""
    return text if len(text) <= limit else text[:limit] + "..."
