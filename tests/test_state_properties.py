"""Property: for any valid sequence of security commands, the three ways of knowing an
account's state agree.

- the view maintained incrementally (caught up every few commands, in small batches),
- the view rebuilt from scratch,
- ``state_from_aggregates`` of the aggregates replayed by the ledger;

and ``state_at(t_i)`` equals the document recorded right after command ``i``.

Each example gets a store of its own (fixtures are per test, not per example), so a
failing example shrinks without replaying the events of all the earlier ones.
"""

from __future__ import annotations

import contextlib
import itertools
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import POSTGRES_URL, START, make_settings, postgres_problem
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from domain import commands as c
from domain.context import RequestContext, SteppedClock
from domain.errors import SecStateError
from domain.ledger import Ledger
from domain.secrets import totp_code_at_step, totp_step
from domain.values import Role
from projections.follower import view_follower
from projections.pointintime import state_at
from projections.rebuild import rebuild
from projections.state import Document, StateQueries, StateView, state_from_aggregates
from secstate.bootstrap import build_ledger, open_view_db
from secstate.settings import Settings
from store.viewdb import ViewDB

PASSWORDS = ("Quartz-Lantern-Meadow-4", "Velvet-Harbour-Signal-8")
CIDRS = ("203.0.113.0/24", "198.51.100.0/26", "192.0.2.128/25", "2001:db8::/48")
DOMAIN = "mail.example.com"
USERS = 3
SELECTORS = 3

user_ix = st.integers(0, USERS - 1)
selector_ix = st.integers(0, SELECTORS - 1)
SINGLE = st.one_of(
    st.tuples(st.just("create_key"), st.sampled_from(("ci", "stats", "billing"))),
    st.tuples(st.just("revoke_key"), st.integers(0, 4)),
    st.tuples(st.just("allow"), st.sampled_from(CIDRS)),
    st.tuples(st.just("disallow"), st.sampled_from(CIDRS)),
    st.tuples(st.just("policy"), st.booleans()),
    st.tuples(st.just("require_reset"), user_ix, st.sampled_from(("c1", "c2", None))),
    st.tuples(st.just("complete_reset"), user_ix),
    st.tuples(st.just("login"), user_ix, st.booleans()),
    st.tuples(st.just("unlock"), user_ix),
    st.tuples(st.just("disable"), user_ix),
    st.tuples(st.just("enable"), user_ix),
    st.tuples(st.just("totp_start"), user_ix),
    st.tuples(st.just("totp_confirm"), user_ix),
    st.tuples(st.just("factor_remove"), user_ix),
    st.tuples(st.just("recovery_codes"), user_ix),
    st.tuples(st.just("recovery_login"), user_ix),
    st.tuples(st.just("dkim_generate"), selector_ix),
    st.tuples(st.just("dkim_publish"), selector_ix),
    st.tuples(st.just("dkim_activate"), selector_ix),
    st.tuples(st.just("dkim_retire"), selector_ix),
)


def macro(name: str, ix: int) -> list[tuple[Any, ...]]:
    """Short command sequences that single random commands rarely line up by chance."""
    user = ix % USERS
    if name == "lockout":
        return [*[("login", user, False)] * 5, ("unlock", user), ("login", user, False)]
    if name == "totp":
        return [("totp_start", user), ("totp_confirm", user)]
    if name == "totp_removed":
        return [("totp_start", user), ("totp_confirm", user), ("factor_remove", user)]
    if name == "recovery":
        return [
            ("totp_start", user),
            ("totp_confirm", user),
            ("recovery_codes", user),
            ("recovery_login", user),
        ]
    if name == "reset":
        return [("require_reset", user, "c1"), ("login", user, True), ("complete_reset", user)]
    if name == "policy":
        return [("policy", True), ("login", user, True), ("policy", False)]
    if name == "allowlist":
        return [("allow", CIDRS[ix]), ("disallow", CIDRS[ix])]
    if name == "keys":
        return [("create_key", "ci"), ("create_key", "stats"), ("revoke_key", ix)]
    return [("dkim_generate", ix), ("dkim_publish", ix), ("dkim_activate", ix)]


MACROS = ("lockout", "totp", "totp_removed", "recovery", "reset", "policy", "allowlist", "keys")
PAUSE = st.integers(1, 3 * 86400)  # seconds before a command


@st.composite
def command_plans(draw: st.DrawFn) -> list[tuple[list[tuple[Any, ...]], int]]:
    """Random single commands with every macro (and a DKIM rotation) inserted at random
    places, in random order: each example then touches every kind of event."""
    plan = draw(st.lists(st.tuples(SINGLE.map(lambda a: [a]), PAUSE), min_size=2, max_size=12))
    for name in (*draw(st.permutations(MACROS)), "dkim"):
        commands = macro(name, draw(selector_ix))
        plan.insert(draw(st.integers(0, len(plan))), (commands, draw(PAUSE)))
    return plan


@dataclass
class Driver:
    """Turns generated actions into ledger commands for one account; refusals are fine."""

    ledger: Ledger
    clock: SteppedClock
    ctx: RequestContext
    account: str
    passwords: dict[str, str] = field(default_factory=dict)
    key_ids: list[str] = field(default_factory=list)
    seeds: dict[str, dict[str, str]] = field(default_factory=dict)  # user -> factor -> seed
    confirmed: dict[str, dict[str, str]] = field(default_factory=dict)
    codes: dict[str, list[str]] = field(default_factory=dict)

    def user(self, i: int) -> str:
        return f"{self.account}-u{i}"

    def totp(self, seed: str) -> str:
        return totp_code_at_step(seed, totp_step(self.clock.now()))

    def run(self, action: tuple[Any, ...]) -> None:
        with contextlib.suppress(SecStateError):
            self._run(action)

    def _run(self, action: tuple[Any, ...]) -> None:
        kind, *args = action
        ledger, ctx, account = self.ledger, self.ctx, self.account
        dkim = {"account": account, "domain": DOMAIN}
        if kind == "register":
            name = self.user(args[0])
            ledger.register_user(
                c.RegisterUser(
                    account=account,
                    username=name,
                    email=f"{name}@example.com",
                    password=SecretStr(PASSWORDS[0]),
                    role=Role.OWNER if args[0] == 0 else Role.TEAMMATE,
                ),
                ctx,
            )
            self.passwords[name] = PASSWORDS[0]
        elif kind == "create_key":
            issued = ledger.create_api_key(
                c.CreateApiKey(account=account, name=args[0], scopes=["mail.send"]), ctx
            )
            self.key_ids.append(issued.key_id)
        elif kind == "revoke_key" and self.key_ids:
            key_id = self.key_ids[args[0] % len(self.key_ids)]
            ledger.revoke_api_key(c.RevokeApiKey(account=account, key_id=key_id, reason="r"), ctx)
        elif kind == "allow":
            ledger.add_allowlist_entry(
                c.AddAllowlistEntry(account=account, cidr=args[0], label="net"), ctx
            )
        elif kind == "disallow":
            ledger.remove_allowlist_entry(
                c.RemoveAllowlistEntry(account=account, entry=args[0], force=True), ctx
            )
        elif kind == "policy":
            ledger.set_two_factor_policy(
                c.SetTwoFactorPolicy(account=account, required=args[0]), ctx
            )
        elif kind == "require_reset":
            ledger.require_password_reset(
                c.RequirePasswordReset(
                    username=self.user(args[0]), reason="suspected leak", campaign_id=args[1]
                ),
                ctx,
            )
        elif kind == "complete_reset":
            name = self.user(args[0])
            new = PASSWORDS[1] if self.passwords.get(name) == PASSWORDS[0] else PASSWORDS[0]
            ledger.complete_password_reset(
                c.CompletePasswordReset(username=name, new_password=SecretStr(new)), ctx
            )
            self.passwords[name] = new
        elif kind == "login":
            name = self.user(args[0])
            password = self.passwords.get(name, PASSWORDS[0]) if args[1] else "Wrong-Guess-99x"
            factors = self.confirmed.get(name, {})
            code = self.totp(next(iter(factors.values()))) if factors else None
            ledger.login(c.Login(username=name, password=SecretStr(password), totp_code=code), ctx)
        elif kind == "recovery_login":
            name = self.user(args[0])
            codes = self.codes.get(name) or ["aaaa-bbbb-cccc-dddd"]
            ledger.login(
                c.Login(
                    username=name,
                    password=SecretStr(self.passwords.get(name, PASSWORDS[0])),
                    recovery_code=SecretStr(codes.pop(0)),
                ),
                ctx,
            )
        elif kind == "unlock":
            ledger.unlock_user(c.UnlockUser(username=self.user(args[0])), ctx)
        elif kind == "disable":
            ledger.disable_user(c.DisableUser(username=self.user(args[0]), reason="gone"), ctx)
        elif kind == "enable":
            ledger.enable_user(c.EnableUser(username=self.user(args[0])), ctx)
        elif kind == "totp_start":
            name = self.user(args[0])
            enrolment = ledger.start_totp_enrolment(c.StartTotpEnrolment(username=name), ctx)
            self.seeds.setdefault(name, {})[enrolment.factor_id] = enrolment.seed
        elif kind == "totp_confirm":
            name = self.user(args[0])
            pending = {
                f: s
                for f, s in self.seeds.get(name, {}).items()
                if f not in self.confirmed.get(name, {})
            }
            if pending:
                factor_id, seed = next(iter(pending.items()))
                ledger.confirm_totp_enrolment(
                    c.ConfirmTotpEnrolment(
                        username=name, factor_id=factor_id, code=self.totp(seed)
                    ),
                    ctx,
                )
                self.confirmed.setdefault(name, {})[factor_id] = seed
        elif kind == "factor_remove":
            name = self.user(args[0])
            known = self.seeds.get(name, {})
            if known:
                factor_id = next(iter(known))
                ledger.remove_second_factor(
                    c.RemoveSecondFactor(username=name, factor_id=factor_id), ctx
                )
                del known[factor_id]
                self.confirmed.get(name, {}).pop(factor_id, None)
        elif kind == "recovery_codes":
            name = self.user(args[0])
            self.codes[name] = ledger.generate_recovery_codes(
                c.GenerateRecoveryCodes(username=name, count=5), ctx
            )
        elif kind == "dkim_generate":
            ledger.generate_dkim_key(
                c.GenerateDkimKey(**dkim, selector=f"s{args[0]}", algorithm="ed25519-sha256"), ctx
            )
        elif kind == "dkim_publish":
            ledger.publish_dkim_key(c.PublishDkimKey(**dkim, selector=f"s{args[0]}"), ctx)
        elif kind == "dkim_activate":
            ledger.activate_dkim_key(c.ActivateDkimKey(**dkim, selector=f"s{args[0]}"), ctx)
        elif kind == "dkim_retire":
            ledger.retire_dkim_key(c.RetireDkimKey(**dkim, selector=f"s{args[0]}"), ctx)


@contextlib.contextmanager
def fresh_store(backend: str, home: Path) -> Iterator[Settings]:
    """A store of its own for one example (a new SQLite home, or a new PostgreSQL schema)."""
    if backend == "sqlite":
        yield make_settings(backend, home)
        return
    schema = "t_prop_" + secrets.token_hex(5)
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield make_settings(backend, home, schema)
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def store_backend(backend: str) -> str:
    if backend == "postgres" and (problem := postgres_problem()):
        pytest.skip(problem)
    return backend


def aggregates_doc(ledger: Ledger, account: str, as_of: datetime) -> Document:
    return state_from_aggregates(ledger.get_account(account), ledger.account_users(account), as_of)


# Examples are cheap on SQLite and dearer on PostgreSQL (a schema each, network round trips).
EXAMPLES = {"sqlite": 10, "postgres": 5}


def test_incremental_view_rebuilt_view_aggregates_and_replay_at_each_time_agree(
    store_backend: str, tmp_path: Path
) -> None:
    @settings(
        max_examples=EXAMPLES[store_backend],
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(steps=command_plans(), catch_up_every=st.integers(1, 5), batch_size=st.integers(1, 12))
    def agree(
        steps: list[tuple[list[tuple[Any, ...]], int]], catch_up_every: int, batch_size: int
    ) -> None:
        home = tmp_path / secrets.token_hex(4)
        with fresh_store(store_backend, home) as store, contextlib.ExitStack() as stack:
            clock = SteppedClock(START)
            ledger = build_ledger(store, clock=clock)
            stack.callback(ledger.close)
            view_db = open_view_db(store, StateView.name)
            stack.callback(view_db.close)
            check_agreement(ledger, clock, view_db, steps, catch_up_every, batch_size)

    agree()


def check_agreement(
    ledger: Ledger,
    clock: SteppedClock,
    view_db: ViewDB,
    steps: list[tuple[list[tuple[Any, ...]], int]],
    catch_up_every: int,
    batch_size: int,
) -> None:
    # given an account with members, driven by the generated commands
    ctx = RequestContext(source_ip="198.51.100.10", user_agent="hypothesis")
    account = "acme"
    ledger.open_account(c.OpenAccount(name=account), ctx)
    driver = Driver(ledger, clock, ctx, account)
    for i in range(USERS):  # members first, so most generated commands have someone to act on
        clock.set(clock.now() + timedelta(seconds=1))
        driver.run(("register", i))
    view = StateQueries(view_db)
    follower = view_follower(ledger, StateView(), view_db, batch_size=batch_size)
    recorded = [(clock.now(), aggregates_doc(ledger, account, clock.now()))]
    commands = itertools.count(1)
    for actions, pause in steps:
        for j, action in enumerate(actions):
            clock.set(clock.now() + timedelta(seconds=pause if j == 0 else 1))
            driver.run(action)
            recorded.append((clock.now(), aggregates_doc(ledger, account, clock.now())))
            if next(commands) % catch_up_every == 0:
                follower.catch_up()
                # then the incrementally maintained view agrees with the aggregates
                assert view.get_account_state(account, clock.now()) == recorded[-1][1]
    follower.catch_up()
    now = clock.now()
    incremental = view.get_account_state(account, now)
    # when the view is rebuilt from scratch
    rebuild(view_follower(ledger, StateView(), view_db))
    rebuilt = view.get_account_state(account, now)
    # then incremental == rebuilt == aggregates, and the past replays as it was recorded
    assert incremental == rebuilt == aggregates_doc(ledger, account, now)
    for t, doc in recorded:
        assert state_at(ledger, account, t) == doc, t
