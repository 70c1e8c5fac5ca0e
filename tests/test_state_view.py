"""The current-security-state view, on SQLite and PostgreSQL.

The view is maintained from events; ``state_from_aggregates`` builds the same document
from replayed aggregates. After a scenario touching every kind of event they must agree,
hold no secret, and survive a rebuild. Other test modules reuse the scenario and the CLI
runner defined here.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from secrets import token_hex
from typing import Any

import psycopg
import pytest
from conftest import POSTGRES_URL, START, make_settings, postgres_problem
from pydantic import SecretStr

from domain import commands as c
from domain.catalogue import secret_fields
from domain.context import RequestContext, SteppedClock
from domain.errors import LoginRefusedError
from domain.ledger import Ledger
from domain.secrets import totp_code_at_step, totp_step
from domain.values import Role
from projections.errors import ProjectionFailedError
from projections.follower import view_follower
from projections.rebuild import rebuild
from projections.state import Document, StateQueries, StateView, state_from_aggregates
from secstate.bootstrap import build_ledger, open_view_db
from secstate.cli import run
from secstate.cli.common import STATE
from secstate.settings import Settings
from store.viewdb import ViewDB

PASSWORD = "Quartz-Lantern-Meadow-4"
NEW_PASSWORD = "Velvet-Harbour-Signal-8"
WRONG_PASSWORD = "Wrong-Guess-Entirely-1"
STEP = timedelta(minutes=7)  # > one TOTP step, so each login has a fresh code
OFFICE = RequestContext(source_ip="203.0.113.7", user_agent="pytest")

CHEAP_ENV = {
    "SECSTATE_ARGON2_TIME_COST": "1",
    "SECSTATE_ARGON2_MEMORY_KIB": "1024",
    "SECSTATE_ARGON2_PARALLELISM": "1",
    "SECSTATE_DKIM_RSA_BITS": "1024",
}


# --- the scenario ---------------------------------------------------------------------------


@dataclass
class Scenario:
    times: list[datetime] = field(default_factory=list)  # when each step happened
    labels: list[str] = field(default_factory=list)
    secrets: set[str] = field(default_factory=set)  # handed out once; must never be stored
    key_ids: dict[str, str] = field(default_factory=dict)
    factor_ids: dict[str, str] = field(default_factory=dict)

    def time_of(self, label: str) -> datetime:
        return self.times[self.labels.index(label)]


def refused_login(ledger: Ledger, ctx: RequestContext, **fields: Any) -> None:
    # The refusal is recorded; that is what the scenario wants.
    with contextlib.suppress(LoginRefusedError):
        ledger.login(c.Login(**fields), ctx)


def run_scenario(
    ledger: Ledger,
    clock: SteppedClock,
    ctx: RequestContext,
    after_step: Callable[[str, datetime], object] | None = None,
) -> Scenario:
    """Account ``acme`` (alice, bob) through every kind of security event, one step per
    clock tick; ``after_step(label, time)`` runs after each step, before the clock moves."""
    s = Scenario()
    seeds: dict[str, str] = {}

    def totp_now(factor: str) -> str:
        return totp_code_at_step(seeds[factor], totp_step(clock.now()))

    def create_key(name: str, scopes: list[str]) -> None:
        issued = ledger.create_api_key(
            c.CreateApiKey(account="acme", name=name, scopes=scopes), ctx
        )
        s.key_ids[name] = issued.key_id
        s.secrets.add(issued.token)

    def start_totp(factor: str) -> None:
        enrolment = ledger.start_totp_enrolment(
            c.StartTotpEnrolment(username="alice", label=factor), ctx
        )
        seeds[factor] = enrolment.seed
        s.factor_ids[factor] = enrolment.factor_id
        s.secrets.add(enrolment.seed)

    codes: list[str] = []

    def recovery_codes() -> None:
        codes.extend(ledger.generate_recovery_codes(c.GenerateRecoveryCodes(username="alice"), ctx))
        s.secrets.update(codes)

    def bob_guesses_wrong() -> None:
        refused_login(ledger, ctx, username="bob", password=SecretStr(WRONG_PASSWORD))

    dkim = {"account": "acme", "domain": "mail.acme.example"}
    steps: list[tuple[str, Callable[[], object]]] = [
        (
            "open",
            lambda: ledger.open_account(c.OpenAccount(name="acme", display_name="Acme Ltd"), ctx),
        ),
        (
            "register alice",
            lambda: ledger.register_user(
                c.RegisterUser(
                    account="acme",
                    username="alice",
                    email="alice@acme.example",
                    password=SecretStr(PASSWORD),
                ),
                ctx,
            ),
        ),
        (
            "register bob",
            lambda: ledger.register_user(
                c.RegisterUser(
                    account="acme",
                    username="bob",
                    email="bob@acme.example",
                    password=SecretStr(PASSWORD),
                    role=Role.TEAMMATE,
                ),
                ctx,
            ),
        ),
        ("key ci-deploy", lambda: create_key("ci-deploy", ["mail.send"])),
        ("key stats", lambda: create_key("stats", ["stats.read", "mail.send"])),
        (
            "allow office",
            lambda: ledger.add_allowlist_entry(
                c.AddAllowlistEntry(account="acme", cidr="203.0.113.0/24", label="office"), ctx
            ),
        ),
        (
            "allow vpn",
            lambda: ledger.add_allowlist_entry(
                c.AddAllowlistEntry(account="acme", cidr="198.51.100.0/24", label="vpn"), ctx
            ),
        ),
        (
            "panel access",
            lambda: ledger.check_control_panel_access(
                c.CheckControlPanelAccess(account="acme", ip="203.0.113.9"), ctx
            ),
        ),
        (
            "remove vpn",
            lambda: ledger.remove_allowlist_entry(
                c.RemoveAllowlistEntry(account="acme", entry="198.51.100.0/24"), OFFICE
            ),
        ),
        (
            "revoke stats",
            lambda: ledger.revoke_api_key(
                c.RevokeApiKey(
                    account="acme", key_id=s.key_ids["stats"], reason="leaked in CI log"
                ),
                ctx,
            ),
        ),
        (
            "dkim s1",
            lambda: ledger.generate_dkim_key(
                c.GenerateDkimKey(**dkim, selector="s1", algorithm="ed25519-sha256"), ctx
            ),
        ),
        (
            "publish s1",
            lambda: ledger.publish_dkim_key(c.PublishDkimKey(**dkim, selector="s1"), ctx),
        ),
        (
            "activate s1",
            lambda: ledger.activate_dkim_key(c.ActivateDkimKey(**dkim, selector="s1"), ctx),
        ),
        (
            "dkim s2",
            lambda: ledger.generate_dkim_key(
                c.GenerateDkimKey(**dkim, selector="s2", algorithm="ed25519-sha256"), ctx
            ),
        ),
        (
            "publish s2",
            lambda: ledger.publish_dkim_key(c.PublishDkimKey(**dkim, selector="s2"), ctx),
        ),
        (
            "activate s2",
            lambda: ledger.activate_dkim_key(c.ActivateDkimKey(**dkim, selector="s2"), ctx),
        ),
        ("totp phone", lambda: start_totp("phone")),
        (
            "confirm phone",
            lambda: ledger.confirm_totp_enrolment(
                c.ConfirmTotpEnrolment(
                    username="alice", factor_id=s.factor_ids["phone"], code=totp_now("phone")
                ),
                ctx,
            ),
        ),
        ("recovery codes", recovery_codes),
        (
            "require 2fa",
            lambda: ledger.set_two_factor_policy(
                c.SetTwoFactorPolicy(account="acme", required=True), ctx
            ),
        ),
        (
            "alice recovery login",
            lambda: ledger.login(
                c.Login(
                    username="alice",
                    password=SecretStr(PASSWORD),
                    recovery_code=SecretStr(codes[0]),
                ),
                OFFICE,
            ),
        ),
        (
            "alice totp login",
            lambda: ledger.login(
                c.Login(
                    username="alice", password=SecretStr(PASSWORD), totp_code=totp_now("phone")
                ),
                OFFICE,
            ),
        ),
        *[(f"bob guess {i}", bob_guesses_wrong) for i in range(1, 6)],
        ("unlock bob", lambda: ledger.unlock_user(c.UnlockUser(username="bob"), ctx)),
        ("bob guess 6", bob_guesses_wrong),
        (
            "reset campaign",
            lambda: ledger.require_password_resets(
                c.RequirePasswordResets(
                    reason="credential stuffing", campaign_id="breach-2026", accounts=["acme"]
                ),
                ctx,
            ),
        ),
        (
            "alice resets",
            lambda: ledger.complete_password_reset(
                c.CompletePasswordReset(username="alice", new_password=SecretStr(NEW_PASSWORD)), ctx
            ),
        ),
        (
            "remove phone",
            lambda: ledger.remove_second_factor(
                c.RemoveSecondFactor(
                    username="alice", factor_id=s.factor_ids["phone"], reason="phone lost"
                ),
                ctx,
            ),
        ),
        (
            "disable bob",
            lambda: ledger.disable_user(
                c.DisableUser(username="bob", reason="left the company"), ctx
            ),
        ),
        ("totp backup", lambda: start_totp("backup")),
        (
            "relax 2fa",
            lambda: ledger.set_two_factor_policy(
                c.SetTwoFactorPolicy(account="acme", required=False), ctx
            ),
        ),
    ]
    s.secrets.update({PASSWORD, NEW_PASSWORD, WRONG_PASSWORD})
    for label, step in steps:
        step()
        s.labels.append(label)
        s.times.append(clock.now())
        if after_step:
            after_step(label, clock.now())
        clock.set(clock.now() + STEP)
    return s


def aggregate_doc(ledger: Ledger, name: str, as_of: datetime) -> Document:
    return state_from_aggregates(ledger.get_account(name), ledger.account_users(name), as_of)


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


# --- the CLI, in process -----------------------------------------------------------------------


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


class Cli:
    """``secstate`` run in-process against the store of ``settings``."""

    def __init__(
        self, settings: Settings, capsys: pytest.CaptureFixture[str], mp: pytest.MonkeyPatch
    ) -> None:
        self.capsys = capsys
        self.mp = mp
        for name in list(os.environ):
            if name.startswith("SECSTATE_"):
                mp.delenv(name)
        mp.setenv("SECSTATE_HOME", str(settings.home))
        if settings.database_url is not None:
            mp.setenv("SECSTATE_DATABASE_URL", settings.database_url.get_secret_value())
        for name, value in CHEAP_ENV.items():
            mp.setenv(name, value)
        mp.setenv("COLUMNS", "220")

    def __call__(self, *args: str) -> Result:
        self.capsys.readouterr()
        self.mp.setattr(sys, "stdin", io.StringIO(""))
        code = run(list(args))
        captured = self.capsys.readouterr()
        assert STATE._ledger is None
        return Result(code, captured.out, captured.err)

    def ok(self, *args: str) -> Result:
        result = self(*args)
        assert result.code == 0, result.err
        return result

    def refused(self, *args: str, expect: list[str]) -> Result:
        result = self(*args)
        assert result.code == 1, (result.code, result.out, result.err)
        lines = result.err.strip().splitlines()
        assert len(lines) == 1, result.err
        assert lines[0].startswith("error: "), lines[0]
        for needle in expect:
            assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
        assert "Traceback" not in result.err + result.out
        return result


@pytest.fixture
def cli(
    settings: Settings, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Cli:
    return Cli(settings, capsys, monkeypatch)


# --- one scenario per backend, shared by the read-only tests of a module ---------------------


@dataclass
class World:
    """A store holding the scenario, with the document recorded right after each step."""

    settings: Settings
    ledger: Ledger
    clock: SteppedClock
    scenario: Scenario
    recorded: list[tuple[str, datetime, Document]]
    schema: str | None = None

    def view_db(self) -> ViewDB:
        return open_view_db(self.settings, StateView.name)


class Worlds:
    """Opens a World per backend on first use; closes them all at the end of the module."""

    def __init__(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        self.tmp_path_factory = tmp_path_factory
        self.opened: dict[str, World] = {}

    def get(self, backend: str) -> World:
        if backend not in self.opened:
            self.opened[backend] = self._open(backend)
        return self.opened[backend]

    def _open(self, backend: str) -> World:
        schema = None
        if backend == "postgres":
            problem = postgres_problem()
            if problem:
                pytest.skip(problem)
            schema = "t_state_" + token_hex(5)
            with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
                conn.execute(f'CREATE SCHEMA "{schema}"')
        settings = make_settings(backend, self.tmp_path_factory.mktemp(backend), schema)
        clock = SteppedClock(START)
        ledger = build_ledger(settings, clock=clock)
        recorded: list[tuple[str, datetime, Document]] = []
        scenario = run_scenario(
            ledger,
            clock,
            RequestContext(source_ip="198.51.100.10", user_agent="pytest"),
            after_step=lambda label, t: recorded.append(
                (label, t, aggregate_doc(ledger, "acme", t))
            ),
        )
        return World(settings, ledger, clock, scenario, recorded, schema)

    def close(self) -> None:
        for world in self.opened.values():
            world.ledger.close()
            if world.schema:
                with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
                    conn.execute(f'DROP SCHEMA IF EXISTS "{world.schema}" CASCADE')


@pytest.fixture(scope="module")
def worlds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worlds]:
    opened = Worlds(tmp_path_factory)
    yield opened
    opened.close()


@pytest.fixture
def world(backend: str, worlds: Worlds) -> World:
    return worlds.get(backend)


@pytest.fixture
def world_view(world: World) -> Iterator[StateQueries]:
    """The state view of the world's store, caught up."""
    db = world.view_db()
    view_follower(world.ledger, StateView(), db).catch_up()
    yield StateQueries(db)
    db.close()


@pytest.fixture
def view_db(settings: Settings) -> Iterator[ViewDB]:
    db = open_view_db(settings, StateView.name)
    yield db
    db.close()


# --- the view ---------------------------------------------------------------------------------


def test_view_equals_the_document_of_the_replayed_aggregates(
    world: World, world_view: StateQueries
) -> None:
    # given a scenario with every kind of security event, and the view caught up with it
    # when / then: it shows exactly what the aggregates say, password ages included
    as_of = world.clock.now() + timedelta(days=40)
    assert world_view.get_account_state("acme", as_of) == aggregate_doc(world.ledger, "acme", as_of)


def test_view_document_shows_the_security_state_the_scenario_left(
    world: World, world_view: StateQueries
) -> None:
    # given
    s = world.scenario
    # when
    doc = world_view.get_account_state(
        "acme", s.time_of("alice resets") + timedelta(days=3, hours=1)
    )
    # then
    assert list(doc) == [
        "as_of",
        "account",
        "users",
        "api_keys",
        "revoked_api_keys",
        "allowlist",
        "dkim_keys",
    ]
    assert doc["account"] == {
        "name": "acme",
        "kind": "customer",
        "display_name": "Acme Ltd",
        "opened_at": s.time_of("open").isoformat(),
        "two_factor_required": False,
    }
    alice, bob = doc["users"]
    assert (alice["username"], alice["status"], bob["username"], bob["status"]) == (
        "alice",
        "active",
        "bob",
        "disabled",
    )
    assert alice["password_changed_at"] == s.time_of("alice resets").isoformat()
    assert alice["password_age_days"] == 3
    assert alice["second_factors"] == []
    assert [p["label"] for p in alice["pending_enrolments"]] == ["backup"]
    assert alice["recovery_codes_left"] == 9
    assert alice["last_login_at"] == s.time_of("alice totp login").isoformat()
    assert alice["last_login_ip"] == "203.0.113.7"
    assert alice["reset_required"] is False
    assert bob["reset_reason"] == "credential stuffing"
    assert bob["reset_campaign_id"] == "breach-2026"
    assert bob["failed_logins"] == 1
    assert [k["name"] for k in doc["api_keys"]] == ["ci-deploy"]
    assert doc["api_keys"][0]["scopes"] == ["mail.send"]
    assert doc["api_keys"][0]["created_by"] == "system:secstate"
    (revoked,) = doc["revoked_api_keys"]
    assert (revoked["name"], revoked["revoke_reason"]) == ("stats", "leaked in CI log")
    assert [(e["cidr"], e["label"]) for e in doc["allowlist"]] == [("203.0.113.0/24", "office")]
    assert [(k["selector"], k["state"]) for k in doc["dkim_keys"]] == [
        ("s1", "retired"),
        ("s2", "active"),
    ]
    assert all(len(k["public_key_sha256"]) == 64 for k in doc["dkim_keys"])


def test_no_secret_enters_the_view(world: World, world_view: StateQueries) -> None:
    # given a view caught up with a scenario that handled many secrets
    secrets = world.scenario.secrets | stored_secrets(world.ledger)
    assert len(secrets) > 20
    # when
    assert world_view.db is not None
    with world_view.db.reading() as tx:
        rows = tx.query_all("SELECT * FROM state_accounts") + tx.query_all(
            "SELECT * FROM state_users"
        )
    # then no stored row contains a secret, a hash or a sealed value
    dump = json.dumps([[str(v) for v in row] for row in rows])
    assert "alice" in dump
    assert not [x for x in secrets if x in dump]
    assert "$argon2" not in dump
    assert "sha256:" not in dump


def test_view_maintained_in_small_batches_equals_a_rebuilt_one(
    ledger: Ledger, clock: SteppedClock, ctx: RequestContext, view_db: ViewDB
) -> None:
    # given a view caught up in batches of 3 after every step
    view = StateQueries(view_db)
    follower = view_follower(ledger, StateView(), view_db, batch_size=3)
    run_scenario(ledger, clock, ctx, after_step=lambda _label, _t: follower.catch_up())
    as_of = clock.now()
    incremental = view.get_account_state("acme", as_of)
    # when it is rebuilt from scratch
    rebuild(view_follower(ledger, StateView(), view_db))
    # then nothing differs, and both equal the aggregates' document
    assert view.get_account_state("acme", as_of) == incremental
    assert incremental == aggregate_doc(ledger, "acme", as_of)


def test_users_table_says_who_still_needs_a_reset(world_view: StateQueries) -> None:
    # given alice completed the campaign's reset and bob did not
    view = world_view
    # when / then
    assert [u["username"] for u in view.users_needing_reset("breach-2026")] == ["bob"]
    assert [u["username"] for u in view.users_needing_reset(account="acme")] == ["bob"]
    assert view.users_needing_reset("another-campaign") == []
    assert [u["username"] for u in view.users(status="disabled")] == ["bob"]
    assert view.users(account="acme")[0]["account"] == "acme"


def test_view_refuses_an_event_type_it_has_no_handler_for(
    ledger: Ledger, ctx: RequestContext, view_db: ViewDB
) -> None:
    # given an event of a User event type the view does not know
    ledger.open_account(c.OpenAccount(name="acme"), ctx)
    view_follower(ledger, StateView(), view_db).catch_up()

    class Unheard:
        TOPIC = "secstate.User.Unheard"
        originator_id = "x"

    # when / then: the batch fails naming the position and type, and nothing is written
    with (
        pytest.raises(ProjectionFailedError, match=r"position 99 \(User.Unheard\)"),
        view_db.transaction() as tx,
    ):
        StateView().apply_batch(tx, [(99, Unheard())])


# --- secstate state (the view) -----------------------------------------------------------------


def test_state_command_catches_the_view_up_and_prints_the_document(
    world: World, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # given
    ledger, cli = world.ledger, Cli(world.settings, capsys, monkeypatch)
    # when
    out = cli.ok("state", "acme", "--json").json()
    # then
    source = out.pop("source")
    assert source["kind"] == "view"
    assert source["position"] == source["head"] == ledger.recorder.max_notification_id()
    assert out == aggregate_doc(ledger, "acme", datetime.fromisoformat(out["as_of"]))


def test_state_command_without_catch_up_says_how_stale_the_view_is(
    ledger: Ledger, clock: SteppedClock, ctx: RequestContext, cli: Cli
) -> None:
    # given a view caught up, then one more change
    ledger.open_account(c.OpenAccount(name="acme"), ctx)
    cli.ok("state", "acme")
    ledger.set_two_factor_policy(c.SetTwoFactorPolicy(account="acme", required=True), ctx)
    # when
    stale = cli.ok("state", "acme", "--no-catch-up")
    fresh = cli.ok("state", "acme", "--no-catch-up", "--json").json()
    # then
    assert "1 event(s) behind" in stale.out
    assert fresh["account"]["two_factor_required"] is False
    assert fresh["source"]["head"] - fresh["source"]["position"] == 1
    # and an account the stale view has not seen yet is refused, saying why
    ledger.open_account(c.OpenAccount(name="newco"), ctx)
    cli.refused(
        "state",
        "newco",
        "--no-catch-up",
        expect=["no account named 'newco'", "2 event(s) behind the log"],
    )


def test_state_command_shows_account_users_keys_allowlist_and_dkim_tables(
    world: World, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # given
    s = world.scenario
    # when
    out = Cli(world.settings, capsys, monkeypatch).ok("state", "acme").out
    # then
    for needle in (
        "security state of acme",
        "Acme Ltd",
        "users (2)",
        "disabled",
        "credential stuffing (breach-2026)",
        "API keys (1 active, 1 revoked)",
        s.key_ids["ci-deploy"],
        "leaked in CI log",
        "allowlist (1)",
        "203.0.113.0/24",
        "DKIM keys (2)",
        "retired",
        "up to date",
    ):
        assert needle in out, needle
    assert not [x for x in s.secrets if x in out]


def test_state_command_refuses_an_unknown_account(cli: Cli) -> None:
    cli.refused("state", "nosuch", expect=["no account named 'nosuch'"])
