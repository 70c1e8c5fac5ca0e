"""``secstate demo`` at small scale, on SQLite and PostgreSQL: the story lands in the store."""

from __future__ import annotations

import ipaddress
import json
import os
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import make_settings

from domain.commands import OpenAccount
from domain.context import RequestContext
from secstate.bootstrap import build_ledger
from secstate.cli import run
from secstate.cli.common import STATE
from secstate.demo import (
    ATTACKED_EMPLOYEE,
    ATTACKER_NET_V4,
    ATTACKER_NET_V6,
    DKIM_CAMPAIGN,
    PASSWORD_CAMPAIGN,
    DemoOptions,
    DemoRefusedError,
    run_demo,
)
from secstate.settings import Settings

SMALL = ["--accounts", "8", "--weeks", "4", "--employees", "6"]


def stored_events(settings: Settings) -> list[Any]:
    """Every event in the store, in log order."""
    ledger = build_ledger(settings)
    try:
        events, start = [], 1
        while batch := ledger.recorder.select_notifications(start=start, limit=5000):
            events += [ledger.mapper.to_domain_event(n) for n in batch]
            start = batch[-1].id + 1
        return events
    finally:
        ledger.close()


def type_name(event: Any) -> str:
    return str(type(event).TOPIC).removeprefix("secstate.")


def from_attacker_range(ip: str | None) -> bool:
    if ip is None:
        return False
    address = ipaddress.ip_address(ip)
    return address in (ATTACKER_NET_V4 if address.version == 4 else ATTACKER_NET_V6)


def run_cli(
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    *args: str,
) -> tuple[int, str, str]:
    """Run ``secstate`` in-process against the store ``settings`` names."""
    for name in list(os.environ):
        if name.startswith("SECSTATE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("SECSTATE_HOME", str(settings.home))
    monkeypatch.setenv("SECSTATE_DKIM_RSA_BITS", str(settings.dkim_rsa_bits))
    if settings.database_url is not None:
        monkeypatch.setenv("SECSTATE_DATABASE_URL", settings.database_url.get_secret_value())
    capsys.readouterr()
    code = run(list(args))
    out, err = capsys.readouterr()
    assert STATE._ledger is None
    return code, out, err


@pytest.fixture
def replayed(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[dict[str, Any], list[Any]]:
    code, out, err = run_cli(settings, monkeypatch, capsys, "demo", *SMALL, "--json")
    assert code == 0, err
    return json.loads(out), stored_events(settings)


def test_attacker_used_the_employee_from_the_foreign_ranges_on_three_days(
    replayed: tuple[dict[str, Any], list[Any]],
) -> None:
    # given the demo replayed into the store
    summary, events = replayed
    # when we look for the employee's events from the attacker's ranges
    foreign = [e for e in events if from_attacker_range(e.source_ip)]
    logins = [e for e in foreign if type_name(e) == "User.LoginSucceeded"]
    reads = [e for e in foreign if type_name(e) == "User.InternalSystemAccessed"]
    # then: three nights, each with a login and internal reads of customer records
    assert {e.actor_id for e in foreign} == {ATTACKED_EMPLOYEE}
    nights = {e.occurred_at.date() for e in logins}
    assert len(nights) == 3
    assert {e.occurred_at.date() for e in reads} == nights
    assert any(ipaddress.ip_address(e.source_ip).version == 6 for e in logins)
    assert any(ipaddress.ip_address(e.source_ip).version == 4 for e in logins)
    customers = {
        e.name for e in events if type_name(e) == "Account.Opened" and e.kind == "customer"
    }
    touched = {name for e in reads for name in e.customer_accounts}
    assert touched
    assert touched <= customers
    assert sum(e.records for e in reads) == sum(
        s["records_read"] for s in summary["attacker_sessions"]
    )
    assert len(touched) == summary["attacker_customer_accounts_touched"]
    # and after the disable, the stolen password no longer works
    disabled = next(e for e in events if type_name(e) == "User.UserDisabled")
    later = [e for e in foreign if e.occurred_at > disabled.occurred_at]
    assert [(type_name(e), e.reason) for e in later] == [("User.LoginFailed", "user_disabled")]


def test_every_user_is_reset_required_or_reset_completed(
    replayed: tuple[dict[str, Any], list[Any]],
) -> None:
    # given
    summary, events = replayed
    users = {e.originator_id for e in events if type_name(e) == "User.Registered"}
    required: dict[Any, int] = {}
    completed: set[Any] = set()
    # when we follow each user's reset events in log order
    for i, e in enumerate(events):
        if type_name(e) == "User.PasswordResetRequired":
            assert e.campaign_id == PASSWORD_CAMPAIGN
            required[e.originator_id] = i
        elif type_name(e) == "User.PasswordResetCompleted":
            assert e.campaign_id == PASSWORD_CAMPAIGN
            assert e.originator_id in required
            completed.add(e.originator_id)
    # then the campaign marked everyone, and some have completed their reset
    assert set(required) == users
    assert 0 < len(completed) < len(users)
    assert summary["users_still_needing_reset"] == len(users) - len(completed)
    assert summary["users_marked_for_reset"] == len(users)


def test_custom_dkim_keys_are_rotated_under_the_campaign(
    replayed: tuple[dict[str, Any], list[Any]],
) -> None:
    # given
    summary, events = replayed
    state: dict[tuple[Any, str], str] = {}
    rotated: dict[Any, str] = {}
    for e in events:
        name = type_name(e)
        if name == "Account.DkimKeyGenerated":
            state[(e.originator_id, e.selector)] = "generated"
            if e.campaign_id == DKIM_CAMPAIGN:
                rotated[e.originator_id] = e.selector
        elif name.startswith("Account.DkimKey"):
            state[(e.originator_id, e.selector)] = name.removeprefix("Account.DkimKey").lower()
    # then each custom-key account has its new key active and its old one retired
    custom = {account for account, _ in state}
    assert custom
    assert set(rotated) == custom
    for account in custom:
        keys = {sel: s for (acc, sel), s in state.items() if acc == account}
        assert keys.pop(rotated[account]) == "activated"
        assert set(keys.values()) == {"retired"}
    assert summary["dkim_keys_rotated"] == summary["dkim_keys_retired"] == len(custom)


def test_summary_counts_match_the_store_and_every_event_has_its_context(
    replayed: tuple[dict[str, Any], list[Any]],
) -> None:
    # given
    summary, events = replayed
    # then
    assert summary["events_by_type"] == dict(Counter(type_name(e) for e in events))
    assert summary["events_total"] == len(events)
    for e in events:
        assert e.actor_kind
        assert e.actor_id
        assert e.request_id
        assert e.user_agent
        assert datetime(2013, 1, 1, tzinfo=UTC) <= e.occurred_at < datetime(2016, 1, 1, tzinfo=UTC)
    # TOTP enrolments were confirmed with real codes, and used at logins
    counts = summary["events_by_type"]
    assert counts["User.TotpEnrolmentConfirmed"] == counts["User.TotpEnrolmentStarted"] > 0
    totp_logins = [e for e in events if type_name(e) == "User.LoginSucceeded" and e.totp_step]
    assert totp_logins
    # allowlists hold IPv4 and IPv6 networks
    cidrs = [e.cidr for e in events if type_name(e) == "Account.AllowlistEntryAdded"]
    assert {ipaddress.ip_network(c).version for c in cidrs} == {4, 6}
    # each aggregate's domain time only moves forward
    last: dict[Any, datetime] = defaultdict(lambda: datetime.min.replace(tzinfo=UTC))
    for e in events:
        assert e.occurred_at >= last[e.originator_id], type_name(e)
        last[e.originator_id] = e.occurred_at


def test_same_seed_gives_the_same_story(tmp_path: Path) -> None:
    # given two empty stores
    first = make_settings("sqlite", tmp_path / "one")
    second = make_settings("sqlite", tmp_path / "two")
    options = DemoOptions(accounts=5, weeks=3, employees=5, seed=7)
    # when the demo runs into each with the same seed
    a = run_demo(first, options)
    b = run_demo(second, options)
    # then the same events happen in the same order, though secrets differ
    assert a.events_by_type == b.events_by_type
    events_a, events_b = stored_events(first), stored_events(second)
    assert [type_name(e) for e in events_a] == [type_name(e) for e in events_b]
    assert [e.occurred_at for e in events_a] == [e.occurred_at for e in events_b]
    hashes_a = [e.password_hash for e in events_a if type_name(e) == "User.PasswordSet"]
    hashes_b = [e.password_hash for e in events_b if type_name(e) == "User.PasswordSet"]
    assert hashes_a != hashes_b  # fresh salts


def test_demo_refuses_a_store_that_is_not_empty(settings: Settings) -> None:
    # given a store holding someone's account
    ledger = build_ledger(settings)
    ledger.open_account(OpenAccount(name="acme"), RequestContext())
    ledger.close()
    # when / then
    with pytest.raises(DemoRefusedError, match="not empty"):
        run_demo(settings, DemoOptions(accounts=1, weeks=3, employees=5))
    assert len(stored_events(settings)) == 1


def test_demo_refuses_to_run_twice_into_the_same_store(tmp_path: Path) -> None:
    # given
    settings = make_settings("sqlite", tmp_path / "home")
    run_demo(settings, DemoOptions(accounts=1, weeks=3, employees=5))
    before = len(stored_events(settings))
    # when / then
    with pytest.raises(DemoRefusedError, match="already replayed"):
        run_demo(settings, DemoOptions(accounts=1, weeks=3, employees=5))
    assert len(stored_events(settings)) == before


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--accounts", "0"], "--accounts: Input should be greater than or equal to 1"),
        (["--weeks", "2"], "--weeks: Input should be greater than or equal to 3"),
        (["--dkim-algorithm", "dsa"], "--dkim-algorithm: Input should be 'auto'"),
        (["--accounts", "many"], "Invalid value for '--accounts'"),
    ],
)
def test_bad_demo_options_exit_non_zero_naming_the_option_and_write_nothing(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    expected: str,
) -> None:
    # given an unused home
    settings = make_settings("sqlite", tmp_path / "home")
    # when
    code, _out, err = run_cli(settings, monkeypatch, capsys, "demo", *args)
    # then
    assert code != 0
    assert expected in err
    assert "Traceback" not in err
    assert not settings.home.exists()
