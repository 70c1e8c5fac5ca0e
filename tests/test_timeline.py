"""The forensic timeline view and its queries, on SQLite and PostgreSQL.

A small history (two customer accounts, the staff organisation, users acting from IPv4
and IPv6 addresses over three days) is recorded through the Ledger, then followed into
the timeline view and queried.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from domain import commands as c
from domain.catalogue import CATALOGUE, secret_fields
from domain.context import Actor, ActorKind, RequestContext, SteppedClock
from domain.errors import InvalidCommandError, LoginRefusedError
from domain.ledger import Ledger
from domain.secrets import totp_code_at_step, totp_step
from domain.values import AccountKind
from projections.follower import Follower, view_follower
from projections.rebuild import rebuild
from projections.sinks import ViewSink
from projections.timeline import (
    IDS,
    TIMELINE,
    TIMELINE_INDEXES,
    TOUCH,
    TimelineView,
    ip_to_bytes,
)
from projections.timeline_query import (
    TimelineEntry,
    TimelineQuery,
    fetch_page,
    known_event_types,
    parse_filter,
)
from secstate.bootstrap import open_view_db
from secstate.settings import Settings
from store.viewdb import ViewDB

DAY1 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
DAY2 = DAY1 + timedelta(days=1)
DAY3 = DAY1 + timedelta(days=2)

PASSWORDS = {
    "e-042": "Staff-pass-4-emp!",
    "alice": "Wonderland-passphrase-1",
    "bob": "Builder-passphrase-22",
}
NEW_BOB_PASSWORD = "Changed-passphrase-33"

STAFF_IP = "203.0.113.7"
ALICE_IP = "2001:db8::5"
ATTACKER_IP = "2001:db8:1::9"
BOB_IP = "198.51.100.20"
DENIED_IP = "192.0.2.1"


@dataclass
class History:
    """What the scenario did, and every secret it handled (to grep outputs for)."""

    secrets: set[str] = field(default_factory=set)
    key_id: str = ""


def staff_ctx() -> RequestContext:
    return RequestContext(
        actor=Actor(ActorKind.STAFF, "e-042"), source_ip=STAFF_IP, user_agent="curl/8"
    )


def user_ctx(username: str, ip: str) -> RequestContext:
    return RequestContext(
        actor=Actor(ActorKind.USER, username), source_ip=ip, user_agent="Mozilla/5.0"
    )


def build_history(ledger: Ledger, clock: SteppedClock, ctx: RequestContext) -> History:
    """Three days: accounts and users; logins, keys, 2FA; a staff read and a clean-up."""
    history = History(secrets=set(PASSWORDS.values()) | {NEW_BOB_PASSWORD})
    staff = staff_ctx()

    # Day 1: the system opens the staff organisation; staff set up two customers.
    clock.set(DAY1)
    ledger.open_account(c.OpenAccount(name="staff", kind=AccountKind.STAFF), ctx)
    ledger.register_user(
        c.parse_command(
            c.RegisterUser,
            account="staff",
            username="e-042",
            email="e042@staff.example",
            password=PASSWORDS["e-042"],
            role="employee",
        ),
        ctx,
    )
    clock.set(DAY1 + timedelta(hours=1))
    for name in ("acme", "globex"):
        ledger.open_account(c.OpenAccount(name=name), staff)
    ledger.register_user(
        c.parse_command(
            c.RegisterUser,
            account="acme",
            username="Alice",
            email="alice@acme.example",
            password=PASSWORDS["alice"],
        ),
        staff,
    )
    ledger.register_user(
        c.parse_command(
            c.RegisterUser,
            account="globex",
            username="bob",
            email="bob@globex.example",
            password=PASSWORDS["bob"],
        ),
        staff,
    )

    # Day 2: an attacker guesses Alice's password over IPv6; Alice logs in, sets up 2FA.
    clock.set(DAY2)
    for _ in range(2):
        with pytest.raises(LoginRefusedError):
            ledger.login(
                c.parse_command(c.Login, username="alice", password="wrong-guess-123456"),
                user_ctx("alice", ATTACKER_IP),
            )
    clock.set(DAY2 + timedelta(minutes=5))
    alice = user_ctx("alice", ALICE_IP)
    ledger.login(c.parse_command(c.Login, username="alice", password=PASSWORDS["alice"]), alice)
    enrolment = ledger.start_totp_enrolment(
        c.parse_command(c.StartTotpEnrolment, username="alice", label="phone"), alice
    )
    history.secrets.add(enrolment.seed)
    code = totp_code_at_step(enrolment.seed, totp_step(clock.now()))
    ledger.confirm_totp_enrolment(
        c.parse_command(
            c.ConfirmTotpEnrolment, username="alice", factor_id=enrolment.factor_id, code=code
        ),
        alice,
    )
    history.secrets.update(
        ledger.generate_recovery_codes(
            c.parse_command(c.GenerateRecoveryCodes, username="alice"), alice
        )
    )
    clock.set(DAY2 + timedelta(hours=2))
    issued = ledger.create_api_key(
        c.parse_command(c.CreateApiKey, account="acme", name="ci-deploy", scopes=["mail.send"]),
        staff,
    )
    history.key_id = issued.key_id
    history.secrets.add(issued.token)
    history.secrets.add(issued.token.rsplit("_", 1)[1])  # the secret part alone
    ledger.generate_dkim_key(
        c.parse_command(
            c.GenerateDkimKey,
            account="acme",
            domain="mail.acme.example",
            selector="s2026",
            algorithm="ed25519-sha256",
        ),
        staff,
    )

    # Day 3: staff read customer data; allowlist; a refused panel access; clean-up.
    clock.set(DAY3)
    ledger.record_staff_access(
        c.parse_command(
            c.RecordStaffAccess,
            username="e-042",
            system="billing-db",
            resource="customers",
            records=1200,
            customer_accounts=["acme", "globex"],
        ),
        staff,
    )
    ledger.add_allowlist_entry(
        c.parse_command(c.AddAllowlistEntry, account="acme", cidr="203.0.113.0/24", label="office"),
        staff,
    )
    ledger.check_control_panel_access(
        c.parse_command(c.CheckControlPanelAccess, account="acme", ip=DENIED_IP),
        RequestContext(source_ip=DENIED_IP, user_agent="Mozilla/5.0"),
    )
    clock.set(DAY3 + timedelta(hours=3))
    ledger.revoke_api_key(
        c.parse_command(
            c.RevokeApiKey, account="acme", key_id=issued.key_id, reason="leaked in CI log"
        ),
        staff,
    )
    ledger.change_password(
        c.parse_command(
            c.ChangePassword,
            username="bob",
            current_password=PASSWORDS["bob"],
            new_password=NEW_BOB_PASSWORD,
        ),
        user_ctx("bob", BOB_IP),
    )
    history.secrets.update(stored_secrets(ledger))
    return history


def stored_secrets(ledger: Ledger) -> set[str]:
    """Every secret-bearing field value in the event store (hashes, sealed blobs)."""
    found: set[str] = set()
    for n in ledger.recorder.select_notifications(start=1, limit=100_000):
        event = ledger.mapper.to_domain_event(n)
        for name in secret_fields():
            value = getattr(event, name, None)
            if isinstance(value, str):
                found.add(value)
            elif isinstance(value, list):
                found.update(v for v in value if isinstance(v, str))
    return found


@pytest.fixture
def history(ledger: Ledger, clock: SteppedClock, ctx: RequestContext) -> History:
    return build_history(ledger, clock, ctx)


@pytest.fixture
def view_db(settings: Settings) -> Iterator[ViewDB]:
    db = open_view_db(settings, "timeline")
    yield db
    db.close()


@pytest.fixture
def followed(ledger: Ledger, history: History, view_db: ViewDB) -> Follower:
    follower = view_follower(ledger, TimelineView(), view_db)
    follower.catch_up()
    return follower


def query(db: ViewDB, **filters: Any) -> list[TimelineEntry]:
    return fetch_page(db, parse_filter(limit=0, **filters)).entries


def types_of(entries: list[TimelineEntry]) -> list[str]:
    return [e.event_type for e in entries]


def all_rows(db: ViewDB) -> list[tuple[Any, ...]]:
    with db.reading() as tx:
        return [
            tuple(row)
            for table in (TIMELINE, TOUCH, IDS)
            for row in tx.query_all(f"SELECT * FROM {table}")  # noqa: S608 - constant names
        ]


# --- the view ------------------------------------------------------------------------------


def test_every_event_gets_one_row_in_log_order(
    ledger: Ledger, followed: Follower, view_db: ViewDB
) -> None:
    # when
    entries = query(view_db)
    # then
    logged = [n.id for n in ledger.recorder.select_notifications(start=1, limit=10_000)]
    assert [e.position for e in entries] == logged
    assert {e.event_type for e in entries} <= set(known_event_types())


def test_api_key_creation_reads_as_one_line_naming_key_scopes_actor_and_ip(
    followed: Follower, view_db: ViewDB, history: History
) -> None:
    # when
    (created,) = query(view_db, types=["Account.ApiKeyCreated"])
    # then
    assert (
        created.summary == "API key 'ci-deploy' (mail.send) created by staff:e-042 from 203.0.113.7"
    )
    assert created.account == "acme"
    assert created.actor == "staff:e-042"
    assert created.source_ip == STAFF_IP
    assert created.user_agent == "curl/8"
    assert created.occurred_at == DAY2 + timedelta(hours=2)
    assert created.details["key_id"] == history.key_id
    assert created.details["scopes"] == ["mail.send"]
    assert "secret_hash" not in created.details


def test_user_events_carry_their_account_and_username(followed: Follower, view_db: ViewDB) -> None:
    # when
    failed = query(view_db, types=["User.LoginFailed"])
    # then
    assert len(failed) == 2
    for entry in failed:
        assert (entry.account, entry.username) == ("acme", "Alice")
        assert entry.summary == (
            f"login of 'Alice' failed: bad_password by user:alice from {ATTACKER_IP}"
        )
        assert entry.details == {"counts_toward_lockout": True, "reason": "bad_password"}


def test_summaries_are_readable_for_each_kind_of_event(followed: Follower, view_db: ViewDB) -> None:
    # when
    summaries = {e.event_type: e.summary for e in query(view_db)}
    # then
    assert summaries["Account.ApiKeyRevoked"].startswith("API key 'ci-deploy' (")
    assert summaries["Account.ApiKeyRevoked"].endswith(
        "revoked by staff:e-042 from 203.0.113.7: leaked in CI log"
    )
    assert summaries["User.InternalSystemAccessed"] == (
        "staff 'e-042' read billing-db/customers (1200 records; customer accounts: acme, "
        "globex) by staff:e-042 from 203.0.113.7"
    )
    assert summaries["User.RecoveryCodesGenerated"] == (
        f"10 recovery codes generated for 'Alice' by user:alice from {ALICE_IP}"
    )
    assert summaries["Account.ControlPanelAccessDenied"] == (
        f"control panel of 'acme' refused to {DENIED_IP} (not allowlisted) by system:secstate "
        f"from {DENIED_IP}"
    )
    assert summaries["Account.DkimKeyGenerated"] == (
        "DKIM key s2026._domainkey.mail.acme.example (ed25519-sha256) generated by "
        "staff:e-042 from 203.0.113.7"
    )
    assert (
        summaries["User.PasswordChanged"] == f"password of 'bob' changed by user:bob from {BOB_IP}"
    )
    for event_type, summary in summaries.items():
        assert "\n" not in summary, event_type


def test_no_secret_reaches_any_row_of_the_view(
    followed: Follower, view_db: ViewDB, history: History
) -> None:
    # given: the passwords, token, TOTP seed, recovery codes and every stored hash/blob
    assert len(history.secrets) > 10
    # when
    text = "\n".join(repr(row) for row in all_rows(view_db))
    # then
    for secret in history.secrets:
        assert secret not in text
    for name in secret_fields():
        assert name not in text


def test_the_catalogues_secret_fields_are_the_hashed_and_sealed_ones_and_none_is_kept() -> None:
    # given: the catalogue's secret fields, each the hashed or sealed field of an event
    secret = secret_fields()
    # when
    kept = {name for entry in CATALOGUE.values() for name in entry.public}
    # then: what the timeline keeps of an event is its public fields, never a secret one
    assert secret == {
        "password_hash",
        "secret_hash",
        "sealed_seed",
        "sealed_private_key",
        "code_hashes",
    }
    assert not kept & secret
    assert {"public_key", "scopes"} <= kept


def test_catching_up_again_appends_only_the_new_events(
    ledger: Ledger, followed: Follower, view_db: ViewDB, clock: SteppedClock
) -> None:
    # given
    before = len(query(view_db))
    clock.set(DAY3 + timedelta(hours=5))
    ledger.disable_user(c.parse_command(c.DisableUser, username="bob", reason="left"), staff_ctx())
    # when
    applied = followed.catch_up()
    # then
    entries = query(view_db)
    assert applied == 1
    assert len(entries) == before + 1
    assert entries[-1].summary == "user 'bob' disabled by staff:e-042 from 203.0.113.7: left"


def test_rebuild_gives_the_same_rows_and_indexes_them_before_the_swap(
    followed: Follower, view_db: ViewDB
) -> None:
    # given: a rebuild never catches up, so only its own hook can index the new tables
    before = [e.to_dict() for e in query(view_db)]
    # when
    rebuild(followed)
    # then
    assert [e.to_dict() for e in query(view_db)] == before
    assert isinstance(followed.sink, ViewSink)
    assert isinstance(followed.sink.view, TimelineView)
    with view_db.reading() as tx:
        assert followed.sink.view.missing_indexes(tx) == []


def test_indexes_are_created_once_the_follower_reaches_the_head(
    ledger: Ledger, history: History, view_db: ViewDB
) -> None:
    # given: batches of 1000+ events build the bare table; shorter ones mean "at the head"
    view = TimelineView()
    follower = view_follower(ledger, view, view_db)
    with view_db.reading() as tx:
        assert len(view.missing_indexes(tx)) == 6
    # when
    follower.catch_up()
    # then
    with view_db.reading() as tx:
        assert view.missing_indexes(tx) == []
    assert view.ensure_indexes(view_db) == []


def test_a_view_indexed_by_an_earlier_version_gets_todays_indexes_and_loses_the_old_ones(
    followed: Follower, view_db: ViewDB
) -> None:
    # given a timeline indexed as an earlier version did: (event_type, occurred_us) and
    # (occurred_us), without the position
    assert isinstance(followed.sink, ViewSink)
    view = followed.sink.view
    assert isinstance(view, TimelineView)
    with view_db.transaction() as tx:
        for name, full in view._indexes(tx).items():
            if name in ("tl_type_time", "tl_time"):
                tx.execute(f"DROP INDEX {full}")
        tx.execute("CREATE INDEX tl_type_0badc0de ON timeline (event_type, occurred_us)")
        tx.execute("CREATE INDEX tl_occurred_0badc0de ON timeline (occurred_us)")
    before = [e.to_dict() for e in query(view_db, types=["User.*"], since="2026-01-01")]
    # when the CLI makes sure of the indexes before a query
    created = view.ensure_indexes(view_db)
    # then today's are there, the old ones gone, and queries answer as before
    assert sorted(created) == ["tl_time", "tl_type_time"]
    with view_db.reading() as tx:
        assert view.missing_indexes(tx) == []
        assert view.obsolete_indexes(tx) == []
        assert set(view._indexes(tx)) - {"tl_pk"} == set(TIMELINE_INDEXES)  # pk: PostgreSQL
    after = [e.to_dict() for e in query(view_db, types=["User.*"], since="2026-01-01")]
    assert after == before


# --- filters -------------------------------------------------------------------------------


def test_account_filter_finds_its_events_and_staff_reads_of_its_data(
    followed: Follower, view_db: ViewDB
) -> None:
    # when
    globex = query(view_db, account="globex")
    # then
    assert types_of(globex) == [
        "Account.Opened",
        "User.Registered",
        "User.PasswordSet",
        "Account.MemberAdded",
        "User.InternalSystemAccessed",
        "User.PasswordChanged",
    ]
    staff_read = globex[4]
    assert staff_read.account == "staff"  # the row is the employee's; it touched globex
    assert staff_read.details["customer_accounts"] == ["acme", "globex"]


def test_account_filter_is_case_insensitive_and_staff_account_is_its_own(
    followed: Follower, view_db: ViewDB
) -> None:
    staff = query(view_db, account="STAFF")
    assert {e.account for e in staff} == {"staff"}
    assert "User.InternalSystemAccessed" in types_of(staff)


def test_user_filter_ignores_case_and_covers_membership(
    followed: Follower, view_db: ViewDB
) -> None:
    # when
    alice = query(view_db, user="ALICE")
    # then
    assert {e.username for e in alice} == {"Alice"}
    assert types_of(alice)[:3] == ["User.Registered", "User.PasswordSet", "Account.MemberAdded"]
    assert "User.TotpEnrolmentConfirmed" in types_of(alice)


def test_actor_filter_by_kind_and_id_or_by_id_alone(followed: Follower, view_db: ViewDB) -> None:
    by_staff = query(view_db, actor="staff:e-042")
    assert by_staff
    assert {e.actor for e in by_staff} == {"staff:e-042"}
    assert query(view_db, actor="e-042") == by_staff
    assert query(view_db, actor="user:e-042") == []
    system = query(view_db, actor="system:secstate")
    assert types_of(system)[0] == "Account.Opened"


def test_ip_filter_takes_addresses_and_networks_of_both_families(
    followed: Follower, view_db: ViewDB
) -> None:
    # when / then
    attacker = query(view_db, ip=ATTACKER_IP)
    assert types_of(attacker) == ["User.LoginFailed", "User.LoginFailed"]
    docs_v6 = query(view_db, ip="2001:db8::/32")
    assert {e.source_ip for e in docs_v6} == {ATTACKER_IP, ALICE_IP}
    assert {e.source_ip for e in query(view_db, ip="2001:db8::/48")} == {ALICE_IP}
    assert {e.source_ip for e in query(view_db, ip="203.0.113.0/24")} == {STAFF_IP}
    assert {e.source_ip for e in query(view_db, ip="0.0.0.0/0")} == {
        STAFF_IP,
        BOB_IP,
        DENIED_IP,
        "198.51.100.10",
    }
    # every IPv6 address, and IPv6 only: IPv4 is stored IPv4-mapped but not matched here
    assert {e.source_ip for e in query(view_db, ip="::/0")} == {ATTACKER_IP, ALICE_IP}
    assert query(view_db, ip="10.0.0.0/8") == []


def test_ipv4_is_stored_as_ipv4_mapped_ipv6_so_ranges_sort_together() -> None:
    assert ip_to_bytes("203.0.113.7") == bytes(10) + b"\xff\xff" + bytes([203, 0, 113, 7])
    assert ip_to_bytes("::ffff:203.0.113.7") == ip_to_bytes("203.0.113.7")
    assert ip_to_bytes("2001:db8::1") < ip_to_bytes("2001:db8::2")
    assert ip_to_bytes("10.0.0.255") < ip_to_bytes("10.0.1.0")


def test_type_filter_takes_globs_and_repeats(followed: Follower, view_db: ViewDB) -> None:
    assert set(types_of(query(view_db, types=["User.Login*"]))) == {
        "User.LoginFailed",
        "User.LoginSucceeded",
    }
    assert set(types_of(query(view_db, types=["*apikey*"]))) == {
        "Account.ApiKeyCreated",
        "Account.ApiKeyRevoked",
        "ApiKeyIndex.Indexed",
    }
    both = query(view_db, types=["User.LoginSucceeded", "Account.DkimKey*"])
    assert set(types_of(both)) == {"User.LoginSucceeded", "Account.DkimKeyGenerated"}


def test_time_range_is_inclusive_and_naive_times_are_utc(
    followed: Follower, view_db: ViewDB
) -> None:
    # when
    day2 = query(view_db, since="2026-03-02", until="2026-03-02T23:59:59")
    # then
    assert day2
    assert all(e.occurred_at.date() == DAY2.date() for e in day2)
    at_once = query(view_db, since="2026-03-02T11:00:00Z", until="2026-03-02T11:00:00+00:00")
    assert set(types_of(at_once)) == {
        "Account.ApiKeyCreated",
        "ApiKeyIndex.Indexed",
        "Account.DkimKeyGenerated",
    }
    # 12:00 in UTC+01:00 is 11:00 UTC
    assert query(view_db, since="2026-03-02T12:00:00+01:00", until="2026-03-02T11:00") == at_once
    assert query(view_db, since="2026-03-04") == []


def test_filters_combine(followed: Follower, view_db: ViewDB) -> None:
    # when
    entries = query(
        view_db,
        account="acme",
        actor="staff:e-042",
        ip="203.0.113.0/24",
        types=["*ApiKey*", "User.Internal*"],
        since="2026-03-02",
    )
    # then
    assert types_of(entries) == [
        "Account.ApiKeyCreated",
        "ApiKeyIndex.Indexed",
        "User.InternalSystemAccessed",
        "Account.ApiKeyRevoked",
    ]
    assert query(view_db, user="bob", ip=ALICE_IP) == []


PAGED_FILTERS: list[dict[str, Any]] = [
    {},
    {"account": "acme"},
    {"user": "alice"},
    {"types": ["User.*"]},
    {"ip": "::/0"},
    {"since": "2026-03-02"},
    {"types": ["User.*", "Account.*"], "since": "2026-03-01T09:00:05Z"},
    {"account": "acme", "types": ["User.*", "Account.*"], "until": "2027-01-01"},
]


def pages(
    db: ViewDB, filters: dict[str, Any], order: str, probe_window: int
) -> tuple[list[int], int]:
    """Positions read in pages of 3 (fetched 2 at a time), following the cursors."""
    seen: list[int] = []
    after = None
    for count in range(1, 100):
        page = TimelineQuery(
            db,
            parse_filter(limit=3, after=after, order=order, **filters),
            page_size=2,
            probe_window=probe_window,
        )
        seen.extend(e.position for e in page)
        after = page.next_after
        if after is None:
            return seen, count
    raise AssertionError("pagination did not end")


def test_pages_cover_every_match_exactly_once_in_both_orders(
    followed: Follower, view_db: ViewDB
) -> None:
    for filters in PAGED_FILTERS:
        expected = [e.position for e in query(view_db, **filters)]
        assert len(expected) > 3, filters
        # probe_window 3: a walk of 3 positions, then the filters' indexes (PostgreSQL:
        # positions from the index, sorted, then the rows)
        for order in ("asc", "desc"):
            for probe_window in (0, 3):
                # when
                seen, count = pages(view_db, filters, order, probe_window)
                # then
                wanted = expected if order == "asc" else expected[::-1]
                assert seen == wanted, (filters, order, probe_window)
                assert count == -(-len(expected) // 3)


def test_cursor_is_none_exactly_when_nothing_is_left(followed: Follower, view_db: ViewDB) -> None:
    total = len(query(view_db, user="bob"))
    full = fetch_page(view_db, parse_filter(user="bob", limit=total))
    assert len(full.entries) == total
    assert full.next_after is None
    short = fetch_page(view_db, parse_filter(user="bob", limit=total - 1))
    assert short.next_after == short.entries[-1].position


# --- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filters", "needle"),
    [
        ({"ip": "203.0.113.0/33"}, "--ip"),
        ({"ip": "203.0.113.5/24"}, "did you mean 203.0.113.0/24"),
        ({"ip": "not-an-ip"}, "--ip"),
        ({"since": "2026-03-02", "until": "2026-03-01"}, "is after --until"),
        ({"since": "yesterday"}, "--since: 'yesterday' is not an ISO 8601 time"),
        ({"actor": "boss:e-042"}, "actor kind 'boss'"),
        ({"actor": "staff:"}, "--actor"),
        ({"types": ["Nothing*"]}, "'Nothing*' matches no event type"),
        ({"account": "Not A Name"}, "--account"),
        ({"order": "sideways"}, "--order"),
        ({"limit": -1}, "--limit"),
    ],
)
def test_bad_filters_are_refused_naming_the_problem(filters: dict[str, Any], needle: str) -> None:
    with pytest.raises(InvalidCommandError) as caught:
        parse_filter(**filters)
    assert needle in str(caught.value)
    assert "\n" not in str(caught.value)


def test_every_problem_is_named_at_once() -> None:
    with pytest.raises(InvalidCommandError) as caught:
        parse_filter(ip="x", since="y", order="z")
    assert len(caught.value.problems) == 3
