"""The investigator's replay, on SQLite and PostgreSQL: every event of an account and its
users (or of one user), in order, with a readable diff of the security state."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta

import pytest
from pydantic import SecretStr
from test_state_view import Cli, Scenario, World, Worlds, stored_secrets

from domain import commands as c
from domain.context import RequestContext
from domain.errors import UnknownAccountError, UnknownUserError
from domain.ledger import Ledger
from projections.history import (
    HistoryEntry,
    UnknownSubjectError,
    account_history,
    history,
    user_history,
)
from secstate.settings import Settings


@pytest.fixture
def cli(
    settings: Settings, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Cli:
    return Cli(settings, capsys, monkeypatch)


@pytest.fixture(scope="module")
def worlds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worlds]:
    opened = Worlds(tmp_path_factory)
    yield opened
    opened.close()


@pytest.fixture
def world(backend: str, worlds: Worlds) -> World:
    return worlds.get(backend)


@pytest.fixture
def world_cli(
    world: World, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Cli:
    return Cli(world.settings, capsys, monkeypatch)


@pytest.fixture
def scenario(world: World) -> Scenario:
    return world.scenario


@pytest.fixture
def scenario_ledger(world: World) -> Ledger:
    return world.ledger


def changes_of(entries: list[HistoryEntry], subject: str, type_: str, nth: int = 0) -> list[str]:
    found = [e for e in entries if e.subject == subject and e.type == type_]
    return found[nth].changes


def test_account_history_says_what_each_event_changed(
    scenario_ledger: Ledger, scenario: Scenario
) -> None:
    # when
    entries = account_history(scenario_ledger, "acme")
    # then
    assert changes_of(entries, "acme", "Account.Opened") == ["+ account acme (customer, Acme Ltd)"]
    assert changes_of(entries, "alice", "User.Registered") == [
        "+ user alice (owner, alice@acme.example)"
    ]
    assert changes_of(entries, "acme", "Account.MemberAdded", 1) == ["+ member bob (teammate)"]
    assert changes_of(entries, "acme", "Account.ApiKeyCreated") == [
        "+ API key ci-deploy (mail.send)"
    ]
    assert changes_of(entries, "acme", "Account.ApiKeyRevoked") == [
        "- API key stats (mail.send, stats.read) revoked (leaked in CI log)"
    ]
    assert changes_of(entries, "acme", "Account.AllowlistEntryAdded") == [
        "+ allowlist 203.0.113.0/24 (office)"
    ]
    assert changes_of(entries, "acme", "Account.AllowlistEntryRemoved") == [
        "- allowlist 198.51.100.0/24 (vpn)"
    ]
    assert changes_of(entries, "acme", "Account.DkimKeyRetired") == [
        "~ DKIM key s1._domainkey.mail.acme.example (ed25519-sha256): state: active → retired, "
        "retire_reason: - → superseded by s2"
    ]
    assert changes_of(entries, "acme", "Account.TwoFactorPolicyChanged") == [
        "two_factor_required: false → true"
    ]
    assert changes_of(entries, "acme", "Account.TwoFactorPolicyChanged", 1) == [
        "two_factor_required: true → false"
    ]
    assert changes_of(entries, "alice", "User.TotpEnrolmentStarted") == [
        "+ pending enrolment totp (phone)"
    ]
    assert changes_of(entries, "alice", "User.TotpEnrolmentConfirmed") == [
        "+ factor totp (phone) confirmed"
    ]
    assert changes_of(entries, "alice", "User.RecoveryCodeUsed") == ["recovery_codes_left: 10 → 9"]
    assert changes_of(entries, "alice", "User.SecondFactorRemoved") == ["- factor totp (phone)"]
    assert changes_of(entries, "bob", "User.UserLocked") == ["status: active → locked"]
    assert changes_of(entries, "bob", "User.UserUnlocked") == [
        "status: locked → active",
        "failed_logins: 5 → 0",
    ]
    assert changes_of(entries, "alice", "User.PasswordResetRequired")[0] == (
        "status: active → reset_required"
    )
    assert "password changed" in changes_of(entries, "alice", "User.PasswordResetCompleted")
    assert changes_of(entries, "bob", "User.UserDisabled") == ["status: reset_required → disabled"]
    # an event that changes nothing in the state says so, and keeps its facts as details
    access = next(e for e in entries if e.type == "Account.ControlPanelAccessAllowed")
    assert access.changes == []
    assert access.details["ip"] == "203.0.113.9"


def test_account_history_is_in_time_order_with_each_aggregates_versions_in_sequence(
    scenario_ledger: Ledger, scenario: Scenario
) -> None:
    # when
    entries = account_history(scenario_ledger, "acme")
    # then
    assert [e.occurred_at for e in entries] == sorted(e.occurred_at for e in entries)
    for name, last_version in (
        ("acme", scenario_ledger.get_account("acme").version),
        ("alice", scenario_ledger.get_user("alice").version),
        ("bob", scenario_ledger.get_user("bob").version),
    ):
        versions = [e.version for e in entries if e.subject == name]
        assert versions == list(range(1, last_version + 1)), name
    logins = [e for e in entries if e.type == "User.LoginSucceeded"]
    assert {(e.actor, e.source_ip, e.user_agent) for e in logins} == {
        ("system:secstate", "203.0.113.7", "pytest")
    }


def test_user_history_holds_only_that_users_events(
    scenario_ledger: Ledger, scenario: Scenario
) -> None:
    # when
    entries = user_history(scenario_ledger, "bob")
    # then
    assert {e.subject for e in entries} == {"bob"}
    assert {e.subject_kind for e in entries} == {"user"}
    assert len(entries) == scenario_ledger.get_user("bob").version


def test_history_window_diffs_from_the_true_state_before_it(
    scenario_ledger: Ledger, scenario: Scenario
) -> None:
    # given a window opening after the key was generated and closing before it is active
    since = scenario.time_of("publish s1")
    until = scenario.time_of("publish s1") + timedelta(minutes=1)
    # when
    entries = account_history(scenario_ledger, "acme", since, until)
    # then the one event in it is diffed against the state its predecessors left
    assert [(e.type, e.changes) for e in entries] == [
        (
            "Account.DkimKeyPublished",
            [
                "~ DKIM key s1._domainkey.mail.acme.example (ed25519-sha256): state: generated → "
                "published"
            ],
        )
    ]


def test_history_shows_no_secret(scenario_ledger: Ledger, scenario: Scenario) -> None:
    # when
    dumped = json.dumps([e.to_json() for e in account_history(scenario_ledger, "acme")])
    # then
    secrets = scenario.secrets | stored_secrets(scenario_ledger)
    assert not [s for s in secrets if s in dumped]
    assert "$argon2" not in dumped
    assert "public_key_sha256" in dumped


def test_a_name_of_both_an_account_and_a_user_is_the_account_unless_forced(
    ledger: Ledger, ctx: RequestContext
) -> None:
    # given an account "dora" and, in another account, a user "dora"
    ledger.open_account(c.OpenAccount(name="dora"), ctx)
    ledger.open_account(c.OpenAccount(name="acme"), ctx)
    ledger.register_user(
        c.RegisterUser(
            account="acme",
            username="dora",
            email="dora@acme.example",
            password=SecretStr("Quartz-Lantern-Meadow-4"),
        ),
        ctx,
    )
    # when / then
    assert history(ledger, "dora")[0] == "account"
    kind, entries = history(ledger, "dora", force="user")
    assert kind == "user"
    assert [e.type for e in entries] == ["User.Registered", "User.PasswordSet"]
    with pytest.raises(UnknownUserError):
        history(ledger, "acme", force="user")
    with pytest.raises(UnknownAccountError):
        history(ledger, "nobody", force="account")
    with pytest.raises(UnknownSubjectError, match="no account or user named 'nobody'"):
        history(ledger, "nobody")


# --- secstate history ----------------------------------------------------------------------


def test_history_command_prints_the_replay_as_json_and_as_a_table(
    scenario_ledger: Ledger, scenario: Scenario, world_cli: Cli
) -> None:
    # when
    out = world_cli.ok("history", "acme", "--json").json()
    table = world_cli.ok("history", "acme").out
    # then
    assert out["subject_kind"] == "account"
    assert out["entries"] == [e.to_json() for e in account_history(scenario_ledger, "acme")]
    for needle in (
        "history of account acme",
        "+ API key ci-deploy (mail.send)",
        "status: active → reset_required",
        "- factor totp (phone)",
        "ip=203.0.113.9",
    ):
        assert needle in table, needle
    assert not [s for s in scenario.secrets if s in table]


def test_history_command_takes_a_user_and_a_window(
    scenario_ledger: Ledger, scenario: Scenario, world_cli: Cli
) -> None:
    # given
    since = scenario.time_of("bob guess 1").isoformat()
    until = scenario.time_of("unlock bob").strftime("%Y-%m-%dT%H:%M:%S")  # naive: UTC
    # when
    out = world_cli.ok("history", "bob", "--since", since, "--until", until, "--json").json()
    # then
    assert out["subject_kind"] == "user"
    assert [e["type"] for e in out["entries"]] == [
        *["User.LoginFailed"] * 5,
        "User.UserLocked",
        "User.UserUnlocked",
    ]


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["nobody"], ["no account or user named 'nobody'"]),
        (["acme", "--user"], ["no user named 'acme'"]),
        (["bob", "--account"], ["no account named 'bob'"]),
        (["acme", "--user", "--account"], ["--user and --account exclude each other"]),
        (["acme", "--since", "last tuesday"], ["--since", "'last tuesday'", "ISO 8601"]),
        (
            ["acme", "--since", "2026-03-02", "--until", "2026-03-01"],
            ["--since", "is after --until"],
        ),
    ],
)
def test_history_command_refuses_bad_input(
    ledger: Ledger, ctx: RequestContext, cli: Cli, args: list[str], expect: list[str]
) -> None:
    ledger.open_account(c.OpenAccount(name="acme"), ctx)
    ledger.register_user(
        c.RegisterUser(
            account="acme",
            username="bob",
            email="bob@acme.example",
            password=SecretStr("Quartz-Lantern-Meadow-4"),
        ),
        ctx,
    )
    cli.refused("history", *args, expect=expect)
