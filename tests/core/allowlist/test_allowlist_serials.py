"""Serial and market normalization, and the C codec against the pure-Python reference."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from regionlock.core import _allowlist_reference as ref
from regionlock.core.allowlist import _check_codec
from regionlock.core.serials import SERIAL_MAX_LENGTH, normalize_market, normalize_serial

SERIAL_CHARS = st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_/.")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("r58m123abcd", "R58M123ABCD"),
        ("  SN-2024/01_a.b \t\n", "SN-2024/01_A.B"),
        ("\u00a0x\u3000", "X"),
        ("A" * 32, "A" * 32),
        ("7", "7"),
    ],
)
def test_normalize_serial_accepts(text: str, expected: str) -> None:
    assert normalize_serial(text) == expected


@pytest.mark.parametrize("text", ["", "   ", "x y", "A" * 33, "ABC#", "é123", "AB\u0130", "a,b", None, b"AB", 12])
def test_normalize_serial_rejects(text: object) -> None:
    with pytest.raises(ValueError, match="serial must be"):
        normalize_serial(text)  # type: ignore[arg-type]


def test_normalize_serial_message_names_rule_and_value() -> None:
    with pytest.raises(ValueError) as info:
        normalize_serial("x y")
    assert str(info.value) == "serial must be 1 to 32 characters from A-Z a-z 0-9 - _ / . (got 'x y')"


@pytest.mark.parametrize(("text", "expected"), [("CN", "CN"), (" eea ", "EEA"), ("GLOBAL_2", "GLOBAL_2")])
def test_normalize_market_accepts(text: str, expected: str) -> None:
    assert normalize_market(text) == expected


@pytest.mark.parametrize("text", ["", "C-N", "X" * 17, "\u0131", "C N", None])
def test_normalize_market_rejects(text: object) -> None:
    with pytest.raises(ValueError, match="market must be"):
        normalize_market(text)  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.text(SERIAL_CHARS, min_size=1, max_size=SERIAL_MAX_LENGTH))
def test_codec_matches_reference(serial: str) -> None:
    normalized = normalize_serial(serial)
    packed, digest = _check_codec(serial)
    assert packed == ref.pack_serial(normalized)
    assert digest == ref.serial_hash(normalized)
    assert ref.unpack_serial(packed, len(normalized)) == normalized


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=0, max_size=40))
def test_c_fast_path_agrees_with_normalize_serial(text: str) -> None:
    try:
        normalized = normalize_serial(text)
    except ValueError as exc:
        with pytest.raises(ValueError) as info:
            _check_codec(text)
        assert str(info.value) == str(exc)
    else:
        assert _check_codec(text) == _check_codec(normalized)


@pytest.mark.parametrize("code", range(256))
def test_every_latin1_character_trims_like_str_strip(code: int) -> None:
    text = chr(code) + "AB" + chr(code)
    try:
        expected = _check_codec(normalize_serial(text))
    except ValueError:
        with pytest.raises(ValueError):
            _check_codec(text)
    else:
        assert _check_codec(text) == expected
