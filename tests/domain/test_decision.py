"""decide(): every reason and every step's precedence, in enforce and monitor modes, on a tiny world."""

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from regionlock.service.decision import Reason, Verdict, decide
from regionlock.service.errors import InvalidArgument
from regionlock.service.overrides.index import OverrideIndex
from regionlock.service.overrides.model import Override, OverrideAction
from regionlock.service.policy import parse_policy
from regionlock.service.snapshot import Snapshot, load_data

from support.service import (
    IP_BEIJING,
    IP_BERLIN,
    IP_CRIMEA,
    IP_HAVANA,
    IP_KYIV,
    IP_UNKNOWN,
    write_world,
)

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
ALLOW, BLOCK = Verdict.ALLOW, Verdict.BLOCK


def _override(serial: str, action: OverrideAction, expire: datetime | None = None) -> Override:
    return Override(serial, action, "support case", "SUP-1", "alice", NOW - timedelta(days=1), expire, 7)


OVERRIDES = OverrideIndex(
    {
        "EEA-0001": _override("EEA-0001", OverrideAction.LOCK),
        "CN-0001": _override("CN-0001", OverrideAction.UNLOCK),
        "US-0001": _override("US-0001", OverrideAction.LOCK, expire=NOW - timedelta(seconds=1)),
        "ANON-LOCKED": _override("ANON-LOCKED", OverrideAction.LOCK),
    },
    revision=7,
)


def _snapshot(tmp_path, overrides=OVERRIDES, **policy) -> Snapshot:
    settings = write_world(tmp_path / "world", **policy)
    geo, allowlist, policy_obj = load_data(settings)
    return Snapshot(geo, allowlist, policy_obj, overrides, 0.0)


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    base = tmp_path_factory.mktemp("decision")
    return {
        "enforce": _snapshot(base / "enforce"),
        "monitor": _snapshot(base / "monitor", mode="monitor"),
        "lenient": _snapshot(base / "lenient", OverrideIndex.empty(), gray="allow", serial="allow", region="allow"),
        "no-overrides": _snapshot(base / "plain", overrides=OverrideIndex.empty()),
    }


# (world, serial, ip, verdict, reason, enforced, rule_id)
CASES = [
    # step 2: a live override decides over everything else, in both modes
    ("enforce", "EEA-0001", IP_BERLIN, BLOCK, Reason.OVERRIDE_LOCK, True, "override:EEA-0001@7"),
    ("monitor", "EEA-0001", IP_BERLIN, BLOCK, Reason.OVERRIDE_LOCK, True, "override:EEA-0001@7"),
    ("enforce", "CN-0001", IP_CRIMEA, ALLOW, Reason.OVERRIDE_UNLOCK, True, "override:CN-0001@7"),
    ("enforce", "ANON-LOCKED", IP_UNKNOWN, BLOCK, Reason.OVERRIDE_LOCK, True, "override:ANON-LOCKED@7"),
    # an expired override is ignored: US-0001 falls through to the gray-import step
    ("enforce", "US-0001", IP_BERLIN, BLOCK, Reason.GRAY_IMPORT, True, "markets.US"),
    # step 3: restricted regions, down to subdivisions; Kyiv is not restricted
    ("no-overrides", "EEA-0001", IP_CRIMEA, BLOCK, Reason.REGION_RESTRICTED, True, "restricted:sanctions"),
    ("no-overrides", "EEA-0001", "5.5.0.1", BLOCK, Reason.REGION_RESTRICTED, True, "restricted:sanctions"),
    ("no-overrides", "GLOBAL-0001", IP_HAVANA, BLOCK, Reason.REGION_RESTRICTED, True, "restricted:sanctions"),
    ("no-overrides", "GLOBAL-0001", IP_KYIV, ALLOW, Reason.AUTHORIZED, True, "markets.GLOBAL"),
    ("monitor", "GLOBAL-0001", IP_HAVANA, ALLOW, Reason.REGION_RESTRICTED, False, "restricted:sanctions"),
    # restricted beats unknown serial
    ("enforce", "NOBODY-1", IP_CRIMEA, BLOCK, Reason.REGION_RESTRICTED, True, "restricted:sanctions"),
    # step 4: unknown region beats unknown serial
    ("enforce", "NOBODY-1", IP_UNKNOWN, BLOCK, Reason.UNKNOWN_REGION, True, "actions.unknown_region"),
    ("enforce", "NOBODY-1", "10.0.0.1", BLOCK, Reason.UNKNOWN_REGION, True, "actions.unknown_region"),
    ("lenient", "GLOBAL-0001", IP_UNKNOWN, ALLOW, Reason.UNKNOWN_REGION, True, "actions.unknown_region"),
    ("monitor", "GLOBAL-0001", IP_UNKNOWN, ALLOW, Reason.UNKNOWN_REGION, False, "actions.unknown_region"),
    # step 5: unknown serial
    ("enforce", "NOBODY-1", IP_BERLIN, BLOCK, Reason.UNKNOWN_SERIAL, True, "actions.unknown_serial"),
    ("lenient", "NOBODY-1", IP_BERLIN, ALLOW, Reason.UNKNOWN_SERIAL, True, "actions.unknown_serial"),
    ("monitor", "NOBODY-1", IP_BERLIN, ALLOW, Reason.UNKNOWN_SERIAL, False, "actions.unknown_serial"),
    # step 6: gray import: outside the market, or a market the policy does not define
    ("no-overrides", "CN-0001", IP_BERLIN, BLOCK, Reason.GRAY_IMPORT, True, "markets.CN"),
    ("no-overrides", "US-0001", IP_BEIJING, BLOCK, Reason.GRAY_IMPORT, True, "markets.US"),
    ("lenient", "CN-0001", IP_BERLIN, ALLOW, Reason.GRAY_IMPORT, True, "markets.CN"),
    ("monitor", "US-0001", IP_BERLIN, ALLOW, Reason.GRAY_IMPORT, False, "markets.US"),
    # step 7: authorized, with case and white space normalized, IPv6 and IPv4-mapped IPv6
    ("no-overrides", "EEA-0001", IP_BERLIN, ALLOW, Reason.AUTHORIZED, True, "markets.EEA"),
    ("no-overrides", "  eea-0001 ", "2001:db8:1::5", ALLOW, Reason.AUTHORIZED, True, "markets.EEA"),
    ("no-overrides", "EEA-0001", "::ffff:5.0.1.1", ALLOW, Reason.AUTHORIZED, True, "markets.EEA"),
    ("no-overrides", "CN-0001", IP_BEIJING, ALLOW, Reason.AUTHORIZED, True, "markets.CN"),
]


@pytest.mark.parametrize(("world", "serial", "ip", "verdict", "reason", "enforced", "rule_id"), CASES)
def test_decision_table(worlds, world, serial, ip, verdict, reason, enforced, rule_id):
    decision = decide(worlds[world], serial, ip, NOW)
    assert (decision.verdict, decision.reason, decision.enforced, decision.rule_id) == (
        verdict,
        reason,
        enforced,
        rule_id,
    )
    assert decision.cache_ttl_seconds == 600
    assert decision.trace is None
    # text for the user of a blocked device only: an allowed one, also in monitor mode, is shown none
    assert bool(decision.message) == (verdict is BLOCK)


def test_response_details(worlds):
    decision = decide(worlds["no-overrides"], "CN-0001", IP_BERLIN, NOW)
    assert decision.sold_market == "CN"
    assert (decision.region.country, decision.region.subdivision, decision.region.network) == (
        "DE",
        "DE-BE",
        "5.0.0.0/16",
    )
    assert decision.message == "This device isn't authorized for use in this region."
    restricted = decide(worlds["no-overrides"], "EEA-0001", IP_CRIMEA, NOW)
    assert restricted.message == "Not here."
    unknown = decide(worlds["no-overrides"], "EEA-0001", IP_UNKNOWN, NOW)
    assert unknown.region is None
    assert unknown.sold_market == "EEA"


def test_explain_traces_every_step(worlds):
    decision = decide(worlds["monitor"], "US-0001", IP_BERLIN, NOW, explain=True)
    trace = "\n".join(decision.trace)
    assert "5.0.0.0/16" in trace
    assert "DE-BE" in trace
    assert "market US" in trace
    assert "expired" in trace
    assert "monitor" in trace
    locked = decide(worlds["enforce"], "EEA-0001", IP_BERLIN, NOW, explain=True)
    assert "override: LOCK at revision 7 decides; overrides are always applied" in locked.trace


@pytest.mark.parametrize(("serial", "ip"), [("EEA-0001", IP_BERLIN), ("CN-0001", IP_CRIMEA), ("US-0001", IP_BERLIN)])
def test_explain_keeps_the_admin_notes_to_the_admin_api(worlds, serial, ip):
    """The check port is unauthenticated: the trace names an override's action and revision, not who set it,
    why, or its ticket."""
    trace = "\n".join(decide(worlds["enforce"], serial, ip, NOW, explain=True).trace)
    assert "revision 7" in trace
    for note in ("alice", "support case", "SUP-1"):
        assert note not in trace


def _step(snapshot: Snapshot, serial: str, ip: str) -> str:
    """The trace line of the step that decided."""
    return decide(snapshot, serial, ip, NOW, explain=True).trace[-2]


def test_explain_names_what_matched(worlds):
    world = worlds["no-overrides"]
    assert _step(world, "EEA-0001", IP_BERLIN) == "authorized: market EEA covers DE (DE-BE)"
    assert _step(world, "GLOBAL-0001", IP_KYIV) == "authorized: market GLOBAL covers * (UA-30)"
    assert _step(world, "CN-0001", IP_BEIJING) == "authorized: market CN covers CN"
    assert _step(world, "EEA-0001", IP_CRIMEA) == "rule restricted:sanctions restricts UA-43"
    assert _step(world, "EEA-0001", IP_HAVANA) == "rule restricted:sanctions restricts CU"
    assert (
        _step(world, "CN-0001", IP_BERLIN) == "gray import: market CN does not cover DE-BE; actions.gray_import = block"
    )
    assert (
        _step(world, "US-0001", IP_BERLIN) == "gray import: market US does not cover DE-BE; actions.gray_import = block"
    )
    # a server refuses a policy that leaves an allowlist market undefined; decide() still words it right
    no_us = replace(world, policy=parse_policy('[markets]\nEEA = ["DE"]\n[actions]\ngray_import = "block"'))
    assert _step(no_us, "US-0001", IP_BERLIN) == (
        "gray import: market US is not defined in the policy and covers nothing; actions.gray_import = block"
    )
    germany = replace(world, policy=parse_policy('[[restricted]]\nid = "de"\nregions = ["DE"]'))
    assert _step(germany, "EEA-0001", IP_BERLIN) == "rule restricted:de restricts DE (DE-BE)"


def test_override_expiry_is_judged_against_the_given_clock(worlds):
    expiring = OverrideIndex({"GLOBAL-0001": _override("GLOBAL-0001", OverrideAction.LOCK, NOW)}, revision=1)
    snapshot = Snapshot(worlds["enforce"].geo, worlds["enforce"].allowlist, worlds["enforce"].policy, expiring, 0.0)
    before = decide(snapshot, "GLOBAL-0001", IP_BERLIN, NOW - timedelta(microseconds=1))
    at = decide(snapshot, "GLOBAL-0001", IP_BERLIN, NOW)
    assert before.reason is Reason.OVERRIDE_LOCK
    assert at.reason is Reason.AUTHORIZED


@pytest.mark.parametrize(
    ("serial", "ip", "field"),
    [
        ("", IP_BERLIN, "serial"),
        ("x" * 33, IP_BERLIN, "serial"),
        ("bad serial", IP_BERLIN, "serial"),
        ("EEA-0001", "", "ip"),
        ("EEA-0001", "5.0.1", "ip"),
        ("EEA-0001", "5.0.1.256", "ip"),
        ("EEA-0001", "2001:db8::1::2", "ip"),
        ("EEA-0001", "berlin", "ip"),
    ],
)
def test_invalid_input_names_the_field(worlds, serial, ip, field):
    with pytest.raises(InvalidArgument) as info:
        decide(worlds["enforce"], serial, ip, NOW)
    assert info.value.field == field
    assert info.value.message.startswith(f"{field}: ")


@pytest.mark.parametrize(
    ("serial", "ip", "field"), [("x" * (4 << 20), IP_BERLIN, "serial"), ("A-1", "1" * (4 << 20), "ip")]
)
def test_a_huge_invalid_value_is_echoed_shortened(worlds, serial, ip, field):
    with pytest.raises(InvalidArgument) as info:
        decide(worlds["enforce"], serial, ip, NOW)
    assert info.value.message.startswith(f"{field}: ")
    assert "1111..." in info.value.message or "xxxx..." in info.value.message
    assert len(info.value.message) < 200
