"""Point-in-time state, replayed from the event store, on SQLite and PostgreSQL.

``state_at(t)`` must equal the document recorded right after the command stamped ``t``:
through every kind of event, and across the snapshots the ledger takes every 100 events.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import SecretStr
from test_state_view import STEP, Cli, World, Worlds

from domain import commands as c
from domain.context import RequestContext, Stamp, SteppedClock
from domain.errors import UnknownAccountError
from domain.ledger import Ledger
from projections.pointintime import BeforeAccountExistedError, state_at
from projections.state import Document, state_from_aggregates
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


def without_clock(doc: Document) -> Document:
    """The document minus what depends on the moment of reading (as_of, password ages)."""
    stripped = {k: v for k, v in doc.items() if k != "as_of"}
    stripped["users"] = [
        {k: v for k, v in u.items() if k != "password_age_days"} for u in doc["users"]
    ]
    return stripped


def test_state_at_each_step_equals_the_state_recorded_right_after_it(world: World) -> None:
    # given the document recorded right after every step of the scenario
    ledger, recorded = world.ledger, world.recorded
    assert len({t for _, t, _ in recorded}) == len(recorded)
    for label, t, doc in recorded:
        # when / then: at the step's own time, and just before the next step
        assert state_at(ledger, "acme", t) == doc, label
        later = state_at(ledger, "acme", t + STEP - timedelta(microseconds=1))
        assert without_clock(later) == without_clock(doc), label


def test_state_at_only_lists_users_who_were_members_then(world: World) -> None:
    # given
    ledger, s = world.ledger, world.scenario
    # when
    before_bob = state_at(ledger, "acme", s.time_of("register bob") - timedelta(seconds=1))
    after_bob = state_at(ledger, "acme", s.time_of("register bob"))
    # then
    assert [u["username"] for u in before_bob["users"]] == ["alice"]
    assert [u["username"] for u in after_bob["users"]] == ["alice", "bob"]


def test_state_at_replays_correctly_across_snapshots(
    ledger: Ledger, clock: SteppedClock, ctx: RequestContext
) -> None:
    # given an account and a user with well over 100 events each (snapshots at 100, 200),
    # whose security state changes now and then; driven on the aggregates and saved in
    # batches, which records the same events as one command each, only faster
    ledger.open_account(c.OpenAccount(name="acme"), ctx)
    ledger.register_user(
        c.RegisterUser(
            account="acme",
            username="alice",
            email="a@acme.example",
            password=SecretStr("Quartz-Lantern-Meadow-4"),
        ),
        ctx,
    )
    account, user = ledger.get_account("acme"), ledger.get_user("alice")
    recorded: list[tuple[datetime, Document]] = []
    for i in range(230):
        clock.set(clock.now() + timedelta(seconds=30))
        stamp = Stamp(ctx, clock.now())
        if i == 60:
            account.add_allowlist_entry("203.0.113.0/24", "office", stamp)
        elif i == 150:
            account.add_allowlist_entry("198.51.100.0/24", "vpn", stamp)
        elif i == 205:
            account.remove_allowlist_entry("203.0.113.0/24", stamp, force=True)
        else:
            account.check_control_panel_access("203.0.113.9", stamp)
        if i == 120:
            user.unlock(stamp)
        else:
            # a wrong password counts until alice is locked, then is refused as locked
            user.login(
                "Not-Her-Pass-77",
                totp_code=None,
                recovery_code=None,
                two_factor_required=False,
                lockout_threshold=5,
                hasher=ledger.hasher,
                keyring=ledger.keyring,
                stamp=stamp,
            )
        if i % 9 == 0 or i in (59, 60, 61, 119, 120, 121, 149, 150, 204, 205, 229):
            recorded.append((clock.now(), state_from_aggregates(account, [user], clock.now())))
        if i % 25 == 24 or i == 229:
            ledger.save(account, user)
    assert ledger.get_account("acme").version > 200
    assert ledger.get_user("alice").version > 200
    # when / then
    for t, doc in recorded:
        assert state_at(ledger, "acme", t) == doc, t
    statuses = {state_at(ledger, "acme", t)["users"][0]["status"] for t, _ in recorded}
    assert statuses == {"active", "locked"}


def test_state_at_refuses_a_time_before_the_account_existed(
    ledger: Ledger, clock: SteppedClock, ctx: RequestContext
) -> None:
    # given
    ledger.open_account(c.OpenAccount(name="acme"), ctx)
    opened = clock.now()
    # when / then
    with pytest.raises(BeforeAccountExistedError, match=r"did not exist at .* opened at"):
        state_at(ledger, "acme", opened - timedelta(microseconds=1))
    assert state_at(ledger, "acme", opened)["account"]["opened_at"] == opened.isoformat()


def test_state_at_refuses_an_unknown_account(ledger: Ledger) -> None:
    with pytest.raises(UnknownAccountError, match="no account named 'nosuch'"):
        state_at(ledger, "nosuch", datetime.now(UTC))


def test_naive_time_is_taken_as_utc(world: World) -> None:
    # given
    ledger, t = world.ledger, world.scenario.time_of("revoke stats")
    # when / then
    assert state_at(ledger, "acme", t.replace(tzinfo=None)) == state_at(ledger, "acme", t)


# --- secstate state --at -------------------------------------------------------------------------


def test_state_command_at_a_past_time_replays_the_event_store(
    world: World, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # given
    ledger, t = world.ledger, world.scenario.time_of("revoke stats")
    cli = Cli(world.settings, capsys, monkeypatch)
    # when
    out = cli.ok("state", "acme", "--at", t.isoformat(), "--json").json()
    naive = cli.ok("state", "acme", "--at", t.strftime("%Y-%m-%dT%H:%M:%S"), "--json").json()
    human = cli.ok("state", "acme", "--at", t.isoformat()).out
    # then
    assert out.pop("source") == {"kind": "event_store", "at": t.isoformat()}
    assert out == state_at(ledger, "acme", t)
    assert [k["name"] for k in out["revoked_api_keys"]] == ["stats"]
    assert out["dkim_keys"] == []
    naive.pop("source")
    assert naive == out
    assert "replayed from the event store" in human
    assert "API keys (1 active, 1 revoked)" in human


def test_state_command_refuses_a_malformed_time(cli: Cli) -> None:
    cli.refused(
        "state", "acme", "--at", "yesterday-ish", expect=["--at", "'yesterday-ish'", "ISO 8601"]
    )


def test_state_command_refuses_a_time_before_the_account_existed(
    ledger: Ledger, ctx: RequestContext, cli: Cli
) -> None:
    ledger.open_account(c.OpenAccount(name="acme"), ctx)
    cli.refused(
        "state",
        "acme",
        "--at",
        "2020-01-01T00:00:00Z",
        expect=["account 'acme' did not exist at 2020-01-01T00:00:00+00:00", "opened at"],
    )


def test_state_command_at_refuses_an_unknown_account(cli: Cli) -> None:
    cli.refused("state", "nosuch", "--at", "2026-03-01T09:00:00Z", expect=["no account named"])
