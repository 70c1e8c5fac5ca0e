"""The Ledger's fast paths give what the plain paths give, on SQLite and on PostgreSQL.

- The acting-user check remembers (version, disabled) per process and reads only newer
  events: a user disabled or enabled through another Ledger (another process, as far as
  the store can tell) is seen by the very next check.
- A load skips the snapshot lookup for an aggregate last seen too short to have one:
  still right after another process grew it past a snapshot.
- Bulk campaigns read versions and reset events with their own queries, encode one
  state per batch and insert with one executemany: the stored rows are those the
  aggregate's own method would have produced, and the statuses those of a full scan.
- On the library path (RecorderLog, which supports neither the combined read nor the
  reset scan) the Ledger falls back to reads of its own, with the same outcome.

What the storage port itself returns (rows, batches, the combined read, the reset scan,
the insert), on every implementation, is stated in test_log_store_contract.py; this
file tests what the Ledger and its campaigns make of it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from eventsourcing.cryptography import AESCipher

from domain import commands as c
from domain.campaigns import ResetCampaign
from domain.context import Actor, ActorKind, RequestContext, Stamp, SteppedClock
from domain.errors import UserDisabledError
from domain.ledger import Ledger
from domain.ports import RecorderLog
from domain.user import DISABLED_AFTER, User
from secstate.bootstrap import build_hasher, build_ledger, ledger_env, load_keyring
from secstate.settings import Settings
from store.log import log_store

PASSWORD = "Tr0ub4dor&3-horse"
NEW_PASSWORD = "c0rrect-b4ttery-st4ple"


@pytest.fixture
def other(settings: Settings, clock: SteppedClock) -> Iterator[Ledger]:
    """A second Ledger on the same store: another process, as far as the store can tell."""
    app = build_ledger(settings, clock=clock)
    yield app
    app.close()


def as_user(username: str) -> RequestContext:
    return RequestContext(Actor(ActorKind.USER, username), source_ip="198.51.100.10")


def open_account(ledger: Ledger, ctx: RequestContext, name: str) -> None:
    ledger.open_account(c.parse_command(c.OpenAccount, name=name), ctx)


def register(ledger: Ledger, ctx: RequestContext, username: str, account: str) -> None:
    ledger.register_user(
        c.parse_command(
            c.RegisterUser,
            account=account,
            username=username,
            email=f"{username}@mail.example",
            password=PASSWORD,
            role="owner",
        ),
        ctx,
    )


def add_entry(ledger: Ledger, ctx: RequestContext, account: str, n: int) -> None:
    ledger.add_allowlist_entry(
        c.parse_command(
            c.AddAllowlistEntry, account=account, cidr=f"10.0.{n // 256}.{n % 256}/32", label="x"
        ),
        ctx,
    )


def replayed(ledger: Ledger, aggregate_id: uuid.UUID) -> Any:
    """The aggregate rebuilt from all of its stored events, ignoring snapshots."""
    aggregate = None
    for event in ledger.events.get(aggregate_id):
        aggregate = event.mutate(aggregate)  # type: ignore[attr-defined]
    return aggregate


def log_size(ledger: Ledger) -> int:
    return ledger.recorder.max_notification_id() or 0


# --- the acting-user check ---------------------------------------------------------------------


def test_actor_disabled_through_another_ledger_is_refused_at_once(
    ledger: Ledger, other: Ledger, ctx: RequestContext
) -> None:
    # given alice, who has acted through this ledger (so it remembers her as enabled)
    open_account(ledger, ctx, "acme")
    register(ledger, ctx, "alice", "acme")
    add_entry(ledger, as_user("alice"), "acme", 1)
    # when another process disables her
    other.disable_user(c.parse_command(c.DisableUser, username="alice", reason="breach"), ctx)
    # then her next action here is refused, and nothing is saved
    before = log_size(ledger)
    with pytest.raises(UserDisabledError):
        add_entry(ledger, as_user("alice"), "acme", 2)
    assert log_size(ledger) == before
    # and once the other process enables her again, she may act here
    other.enable_user(c.parse_command(c.EnableUser, username="alice"), ctx)
    add_entry(ledger, as_user("alice"), "acme", 3)
    assert len(ledger.get_account("acme").allowlist) == 2


def test_outside_actor_who_is_registered_and_disabled_later_is_refused(
    ledger: Ledger, other: Ledger, ctx: RequestContext
) -> None:
    # given "bob" acting here before the ledger knows him (an SSO identity, say)
    open_account(ledger, ctx, "acme")
    add_entry(ledger, as_user("bob"), "acme", 1)
    # when another process registers him and disables him
    register(other, ctx, "bob", "acme")
    other.disable_user(c.parse_command(c.DisableUser, username="bob", reason="left"), ctx)
    # then his next action here is refused
    with pytest.raises(UserDisabledError):
        add_entry(ledger, as_user("bob"), "acme", 2)


def test_employee_disabled_through_another_ledger_may_not_act_on_users(
    ledger: Ledger, other: Ledger, ctx: RequestContext
) -> None:
    # given an employee who has acted on a user through this ledger
    open_account(ledger, ctx, "acme")
    register(ledger, ctx, "alice", "acme")
    open_account(ledger, ctx, "staff")
    register(ledger, ctx, "e1", "staff")
    staff = RequestContext(Actor(ActorKind.STAFF, "e1"), source_ip="198.51.100.20")
    require_reset = c.parse_command(
        c.RequirePasswordReset, username="alice", reason="support", campaign_id="t1"
    )
    assert ledger.require_password_reset(require_reset, staff)
    # when another process disables the employee
    other.disable_user(c.parse_command(c.DisableUser, username="e1", reason="left"), ctx)
    # then the employee's next action on a user is refused, and nothing is saved
    before = log_size(ledger)
    with pytest.raises(UserDisabledError):
        ledger.require_password_reset(require_reset.model_copy(update={"campaign_id": "t2"}), staff)
    assert log_size(ledger) == before


def test_user_acting_on_herself_builds_on_her_latest_version(
    ledger: Ledger, other: Ledger, ctx: RequestContext
) -> None:
    # given alice acting on herself here, one attempt per command (a stale load would
    # conflict and fail), while another process changes her between her commands
    ledger.max_retries = 1
    open_account(ledger, ctx, "acme")
    register(ledger, ctx, "alice", "acme")
    for n in range(3):
        ledger.require_password_reset(
            c.parse_command(
                c.RequirePasswordReset, username="alice", reason="self", campaign_id=f"c{n}"
            ),
            as_user("alice"),
        )
        other.require_password_reset(
            c.parse_command(
                c.RequirePasswordReset, username="alice", reason="other", campaign_id=f"o{n}"
            ),
            ctx,
        )
    # then every command landed, and this ledger reads what a full replay reads
    loaded = ledger.get_user("alice")
    assert loaded.reset_campaigns == ["c0", "o0", "c1", "o1", "c2", "o2"]
    assert loaded == replayed(ledger, loaded.id) == other.get_user("alice")


def test_only_the_remembered_events_change_whether_a_user_is_disabled(tmp_path: Path) -> None:
    # given the fixture store that holds every event class of every version
    from conftest import make_settings
    from fixture_store import load_sqlite

    home = tmp_path / "home"
    load_sqlite("history-v2", home / "ledger.sqlite3")
    ledger = build_ledger(make_settings("sqlite", home, None))
    try:
        user_topics = {
            v.TOPIC
            for v in vars(User).values()
            if isinstance(v, type) and issubclass(v, User.Event)
        }
        users = {
            row.originator_id for rows in ledger.log_store.scan(topics=user_topics) for row in rows
        }
        # when each user's events are applied one by one
        changed: dict[str, set[bool]] = {}
        seen: set[str] = set()
        for user_id in users:
            user: Any = None
            for event in ledger.events.get(uuid.UUID(str(user_id))):
                before = getattr(user, "disabled", None)
                user = event.mutate(user)
                seen.add(type(event).TOPIC)
                if before is not None and (
                    user.disabled != before or type(event).TOPIC in DISABLED_AFTER
                ):
                    changed.setdefault(type(event).TOPIC, set()).add(user.disabled)
    finally:
        ledger.close()
    # then only the remembered topics set `disabled`, to the value remembered for each
    assert set(DISABLED_AFTER) <= seen
    assert {topic: {value} for topic, value in DISABLED_AFTER.items()} == changed


# --- loads without the snapshot lookup ---------------------------------------------------------


def test_load_after_another_ledger_grew_the_aggregate_past_a_snapshot(
    ledger: Ledger, other: Ledger, ctx: RequestContext
) -> None:
    # given an account this ledger has loaded while it was short
    open_account(ledger, ctx, "acme")
    short = ledger.get_account("acme")
    assert short.version < Ledger.snapshotting_intervals[type(short)]
    # when another process adds enough entries for a snapshot to be taken
    for n in range(105):
        add_entry(other, ctx, "acme", n)
    account_id = short.id
    assert other.snapshots is not None
    assert [s.originator_version for s in other.snapshots.get(account_id)] == [100]
    # then each load here equals a full replay: the first reads every event, the
    # next starts from the snapshot
    for _ in range(2):
        loaded = ledger.get_account("acme")
        assert loaded == replayed(ledger, account_id) == other.get_account("acme")
        assert loaded.version == 106
    # and a command here builds on the latest version
    add_entry(ledger, ctx, "acme", 999)
    assert ledger.get_account("acme").version == 107


# --- bulk campaigns ----------------------------------------------------------------------------


@pytest.fixture
def population(ledger: Ledger, ctx: RequestContext) -> Ledger:
    """Seven users in two accounts."""
    for account, users in (("acme", ["a1", "a2", "a3", "a4"]), ("zeta", ["z1", "z2", "z3"])):
        open_account(ledger, ctx, account)
        for username in users:
            register(ledger, ctx, username, account)
    return ledger


def campaign(ledger: Ledger, ctx: RequestContext, campaign_id: str, **target: Any) -> int:
    command = c.parse_command(
        c.RequirePasswordResets, reason="leak", campaign_id=campaign_id, **target
    )
    return ledger.require_password_resets(command, ctx).marked


def test_campaign_rows_are_those_of_the_aggregate_method(
    population: Ledger, ctx: RequestContext, clock: SteppedClock
) -> None:
    # given batches of three, each batch stored with one encoding of its state
    ledger = population
    ledger.bulk_batch_size = 3
    start = log_size(ledger)
    # when a campaign marks everyone
    assert campaign(ledger, ctx, "camp-1", everyone=True) == 7
    # then each stored row equals the row of the event User.require_password_reset
    # records on the user as it was, given the same timestamp
    rows = ledger.recorder.select_notifications(start=start + 1, limit=100)
    assert len(rows) == 7
    stamp = Stamp(ctx, clock.now())
    timestamps = set()
    for row in rows:
        stored: Any = ledger.mapper.to_domain_event(row)
        user: User = ledger.repository.get(stored.originator_id, version=row.originator_version - 1)
        assert user.require_password_reset("leak", "camp-1", stamp)
        (expected,) = user.collect_events()
        object.__setattr__(expected, "timestamp", stored.timestamp)
        assert stored == expected
        slow = ledger.mapper.to_stored_event(expected)
        assert (row.originator_id, row.originator_version, row.topic, row.state) == (
            slow.originator_id,
            slow.originator_version,
            slow.topic,
            slow.state,
        )
        timestamps.add(stored.timestamp)
    # and one timestamp per batch
    assert len(timestamps) == 3


def test_campaign_reads_the_statuses_a_scan_of_notifications_reads(
    population: Ledger, ctx: RequestContext, clock: SteppedClock
) -> None:
    # given users with varied reset histories: campaigns with and without ids, a
    # completed reset, a user marked by one campaign only
    ledger = population
    assert campaign(ledger, ctx, "camp-1", accounts=["acme"]) == 4
    clock.set(clock.now() + timedelta(hours=1))
    ledger.complete_password_reset(
        c.parse_command(c.CompletePasswordReset, username="a2", new_password=NEW_PASSWORD), ctx
    )
    for username in ("a3", "z1"):
        ledger.require_password_reset(
            c.parse_command(c.RequirePasswordReset, username=username, reason="support"), ctx
        )
    assert campaign(ledger, ctx, "camp-2", usernames=["z2"]) == 1
    ids = [User.create_id(u) for u in ("a1", "a2", "a3", "a4", "z1", "z2", "z3")]
    for only in (None, set(ids[1:5]), {ids[0], uuid.uuid4()}):
        # when the statuses are read with the campaign's own queries
        fast = ResetCampaign(ledger)._reset_statuses(only)
        # then they are those of the library's notification scan, in the same order
        slow = ResetCampaign(ledger)._reset_statuses_by_notifications(only)
        assert list(fast.items()) == list(slow.items())
    everyone = ResetCampaign(ledger)._reset_statuses(None)
    assert list(everyone) == ids
    assert everyone[ids[1]][1].campaigns == ("camp-1",)
    assert not everyone[ids[1]][1].required
    assert everyone[ids[2]][1].required
    assert everyone[ids[2]][1].campaign_id is None


@pytest.fixture
def ciphered(settings: Settings, clock: SteppedClock) -> Iterator[Ledger]:
    """A Ledger that encrypts stored state: no plain JSON to read, no shared states."""
    env = {
        **ledger_env(settings),
        "CIPHER_TOPIC": "eventsourcing.cryptography:AESCipher",
        "CIPHER_KEY": AESCipher.create_key(16),
    }
    app = Ledger(
        env,
        log=log_store,
        keyring=load_keyring(settings),
        hasher=build_hasher(settings),
        clock=clock,
    )
    assert type(app.log_store) is not RecorderLog  # the fast paths, under a cipher
    yield app
    app.close()


def test_campaign_on_an_encrypted_store_marks_once_and_reads_like_the_scan(
    ciphered: Ledger, ctx: RequestContext
) -> None:
    # given users in an encrypted store, one of them reset by hand
    ledger = ciphered
    ledger.bulk_batch_size = 2
    open_account(ledger, ctx, "acme")
    for username in ("a1", "a2", "a3"):
        register(ledger, ctx, username, "acme")
    ledger.require_password_reset(
        c.parse_command(c.RequirePasswordReset, username="a2", reason="x", campaign_id="hand"),
        ctx,
    )
    # when a campaign runs twice
    assert campaign(ledger, ctx, "camp-e", everyone=True) == 3
    assert campaign(ledger, ctx, "camp-e", everyone=True) == 0
    # then each row is encrypted on its own, and the statuses are the scan's
    rows = ledger.recorder.select_notifications(start=1, limit=100)
    states = [r.state for r in rows if r.topic == User.PasswordResetRequired.TOPIC]
    assert len(states) == len(set(states)) == 4
    fast = ResetCampaign(ledger)._reset_statuses(None)
    assert list(fast.items()) == list(
        ResetCampaign(ledger)._reset_statuses_by_notifications(None).items()
    )
    assert fast[User.create_id("a2")][1].campaigns == ("hand", "camp-e")


def test_recorded_events_read_back_equal_whether_or_not_they_share_state_objects(
    ledger: Ledger, ctx: RequestContext, clock: SteppedClock
) -> None:
    # given three staff-access events: two share the very same state objects (as a
    # campaign's batch does), the third has equal but distinct ones
    open_account(ledger, ctx, "staff")
    for name in ("e1", "e2", "e3"):
        register(ledger, ctx, name, "staff")
    fields = {
        "timestamp": User.InternalSystemAccessed.create_timestamp(),
        "system": "crm",
        "resource": "customers",
        "action": "export",
        "records": 2,
        "customer_accounts": ["acme"],
        **Stamp(ctx, clock.now()).fields(),
    }
    own = {**fields, "customer_accounts": ["acme"], "timestamp": fields["timestamp"].replace()}
    events = [
        User.InternalSystemAccessed(
            originator_id=User.create_id(name), originator_version=3, **state
        )
        for name, state in (("e1", fields), ("e2", fields), ("e3", own))
    ]
    # when they are recorded directly
    ResetCampaign(ledger)._record_events(events)
    # then each reads back equal to itself
    for event in events:
        assert list(ledger.events.get(event.originator_id, gt=2)) == [event]


# --- the library path: what the fallback store does not support, the Ledger reads otherwise ---


@pytest.fixture
def library(ledger: Ledger, settings: Settings, clock: SteppedClock) -> Iterator[Ledger]:
    """A Ledger on the same store through RecorderLog, which answers None to the actor
    check's combined read and to the reset scan (the port's contract suite asserts that):
    the Ledger must fall back to reads of its own."""
    app = Ledger(
        {**ledger_env(settings), "CREATE_TABLE": "no"},
        log=RecorderLog,
        keyring=load_keyring(settings),
        hasher=build_hasher(settings),
        clock=clock,
    )
    assert type(app.log_store) is RecorderLog
    yield app
    app.close()


def test_actor_disabled_elsewhere_is_refused_on_the_library_path(
    ledger: Ledger, library: Ledger, ctx: RequestContext
) -> None:
    # given alice acting through a ledger on the library path, twice (so it remembers
    # her and the account, and would read both at once where the store could)
    open_account(ledger, ctx, "acme")
    register(ledger, ctx, "alice", "acme")
    add_entry(library, as_user("alice"), "acme", 1)
    add_entry(library, as_user("alice"), "acme", 2)
    # when another process disables her
    ledger.disable_user(c.parse_command(c.DisableUser, username="alice", reason="breach"), ctx)
    # then her next action there is refused, and nothing is saved
    before = log_size(ledger)
    with pytest.raises(UserDisabledError):
        add_entry(library, as_user("alice"), "acme", 3)
    assert log_size(ledger) == before
    # and the account it loads is the fast ledger's
    assert library.get_account("acme") == ledger.get_account("acme")


def test_campaign_on_the_library_path_marks_and_reads_what_the_fast_path_does(
    population: Ledger, library: Ledger, ctx: RequestContext
) -> None:
    # given seven users, four of them marked by a campaign on the fast path
    ledger = population
    library.bulk_batch_size = 3
    assert campaign(ledger, ctx, "camp-1", accounts=["acme"]) == 4
    # when the same campaign, for everyone, runs on the library path
    marked = campaign(library, ctx, "camp-1", everyone=True)
    # then it marks only the three the fast path had not (reading statuses by the
    # notification scan), and the fast path finds every user marked once
    assert marked == 3
    assert campaign(ledger, ctx, "camp-1", everyone=True) == 0
    statuses = ResetCampaign(ledger)._reset_statuses(None)
    assert len(statuses) == 7
    assert all(status.campaigns == ("camp-1",) for _, status in statuses.values())
