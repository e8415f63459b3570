"""The C-level IP parser and network formatter against the ipaddress module."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from regionlock.core.geo import Region, parse_ip


def expected(text: str) -> tuple[int, int] | None:
    """What ipaddress makes of the text (zone ids refused), IPv4-mapped IPv6 as IPv4; None if invalid."""
    if "%" in text:
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:
        return 4, int(address.ipv4_mapped)
    return address.version, int(address)


def ours(text: str) -> tuple[int, int] | None:
    try:
        return parse_ip(text)
    except ValueError as exc:
        assert repr(text) in str(exc)
        return None


CASES = [
    "1.2.3.4",
    "0.0.0.0",
    "255.255.255.255",
    "1.2.3",
    "1.2.3.4.5",
    "01.2.3.4",
    "1.2.3.04",
    "1.2.3.00",
    "256.1.1.1",
    "1.2.3.4 ",
    " 1.2.3.4",
    "1..3.4",
    "1.2.3.",
    ".1.2.3",
    "1.2.3.-4",
    "1.2.3.+4",
    "0x1.2.3.4",
    "\uff11.2.3.4",
    "1.2.3.4\x00",
    "",
    ".",
    ":",
    "::",
    ":::",
    "::1",
    "1::",
    "1::2",
    "1:::2",
    "::1::2",
    "1:2:3:4:5:6:7:8",
    "1:2:3:4:5:6:7:8:9",
    "1:2:3:4:5:6:7::",
    "::2:3:4:5:6:7:8",
    "1:2:3:4:5:6:7",
    ":1:2:3:4:5:6:7",
    "1:2:3:4:5:6:7:",
    "12345::",
    "abcd:EF01::",
    "g::",
    "::ffff:1.2.3.4",
    "::FFFF:1.2.3.4",
    "::ffff:102:304",
    "::1.2.3.4",
    "1:2:3:4:5:6:1.2.3.4",
    "1:2:3:4:5:6:7:1.2.3.4",
    "::1.2.3",
    "::01.2.3.4",
    "1.2.3.4::",
    "1:2:3:4:5::1.2.3.4",
    "::ffff:1.2.3.4:5",
    "fe80::1%eth0",
    "fe80::1%",
    "2001:db8::/32",
    "[::1]",
    "::ffff:0.0.0.0",
    "::ffff:255.255.255.255",
    "0:0:0:0:0:ffff:1.2.3.4",
    "1:2:3:4:5:6:7:8:",
]


@pytest.mark.parametrize("text", CASES)
def test_parser_agrees_with_ipaddress_on_known_cases(text):
    assert ours(text) == expected(text)


@given(st.integers(0, 2**32 - 1))
def test_every_ipv4_address_parses(value):
    assert parse_ip(str(ipaddress.IPv4Address(value))) == (4, value)


@given(st.integers(0, 2**128 - 1), st.sampled_from(["compressed", "exploded", "upper", "v4tail"]))
@example(0, "compressed")
@example(2**128 - 1, "exploded")
@example(0xFFFF << 32 | 0x01020304, "v4tail")
def test_every_ipv6_text_form_parses(value, form):
    address = ipaddress.IPv6Address(value)
    if form == "compressed":
        text = address.compressed
    elif form == "exploded":
        text = address.exploded
    elif form == "upper":
        text = address.compressed.upper()
    else:
        text = address.exploded[:30] + str(ipaddress.IPv4Address(value & 0xFFFFFFFF))
    assert ours(text) == expected(text)
    assert ours(text) is not None


TOKENS = ["", "0", "1", "00", "01", "ff", "FFFF", "fffff", "abcd", "g", "1.2.3.4", "256.0.0.1", "01.2.3.4", "%1", " "]


@settings(max_examples=500)
@given(st.lists(st.sampled_from(TOKENS), min_size=1, max_size=11).map(":".join))
def test_parser_agrees_with_ipaddress_on_structured_garbage(text):
    assert ours(text) == expected(text)


@settings(max_examples=500)
@given(st.text(alphabet="0123456789abcdefABCDEF:.%x -", max_size=46))
def test_parser_agrees_with_ipaddress_on_random_text(text):
    assert ours(text) == expected(text)


@given(st.text(max_size=20))
def test_parser_agrees_with_ipaddress_on_any_unicode(text):
    assert ours(text) == expected(text)


def test_other_input_types():
    assert parse_ip(b"\x01\x02\x03\x04") == (4, 0x01020304)
    assert parse_ip(ipaddress.IPv6Address("::ffff:1.2.3.4").packed) == (4, 0x01020304)
    assert parse_ip(bytes(range(16))) == (6, int.from_bytes(bytes(range(16)), "big"))
    assert parse_ip(2**32 - 1) == (4, 2**32 - 1)  # ints below 2**32 are IPv4, as ipaddress.ip_address has it
    assert parse_ip(2**32) == (6, 2**32)
    assert parse_ip(ipaddress.ip_address("2001:db8::1")) == (6, int(ipaddress.ip_address("2001:db8::1")))
    for bad in (b"\x01\x02\x03", -1, 2**128):
        with pytest.raises(ValueError, match="invalid IP address"):
            parse_ip(bad)
    with pytest.raises(TypeError):
        parse_ip(1.5)


@given(st.integers(0, 2**32 - 1), st.integers(0, 32))
def test_ipv4_network_text_matches_ipaddress(value, prefix):
    network = ipaddress.IPv4Network((value, prefix), strict=False)
    assert Region("US", None, str(network)).network == str(network)


@given(
    st.lists(st.sampled_from([0, 1, 0xFFFF, 0xABC]), min_size=8, max_size=8),
    st.integers(0, 128),
)
def test_ipv6_network_text_matches_ipaddress(hextets, prefix):
    value = int.from_bytes(b"".join(h.to_bytes(2, "big") for h in hextets), "big")
    network = ipaddress.IPv6Network((value, prefix), strict=False)
    assert Region("US", None, str(network)).network == str(network)
