"""Property: whatever valid commands run, the store gives back exactly the live aggregates.

Hypothesis draws sequences of commands over a few users and accounts and applies them
through the Ledger (commands a domain rule refuses are simply skipped). Afterwards
every aggregate the ledger saved, reloaded from the store, equals the object that was
saved, and equals a fresh replay of its stored events. Runs on SQLite and PostgreSQL,
each example on an emptied store.
"""

from __future__ import annotations

import copy
import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from conftest import POSTGRES_URL, START
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import Recording
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from domain import commands as c
from domain.campaigns import ResetCampaign
from domain.context import Actor, ActorKind, RequestContext, SteppedClock
from domain.errors import (
    ConcurrencyConflictError,
    InvalidCommandError,
    SecretKeyError,
    SecStateError,
)
from domain.ledger import Ledger
from domain.secrets import ApiKeyCodec, totp_code_at_step, totp_step
from secstate.bootstrap import build_hasher, ensure_postgres_schema, ledger_env, load_keyring
from secstate.settings import Settings


class RecordingLedger(Ledger):
    """A real Ledger that remembers the last saved state of every aggregate it saved."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.live: dict[uuid.UUID, Aggregate] = {}
        super().__init__(*args, **kwargs)

    def save(self, *objs: Any, **kwargs: Any) -> list[Recording[uuid.UUID]]:
        recordings = super().save(*objs, **kwargs)
        for obj in objs:
            if isinstance(obj, Aggregate):
                self.live[obj.id] = obj
        return recordings

    def require_password_resets(self, *args: Any, **kwargs: Any) -> Any:
        # Events stored without their aggregate (the bulk campaign): the live object is
        # what the full aggregate becomes with them.
        ledger = self

        class Recording(ResetCampaign):
            def _record_events(self, events: list[Any]) -> None:
                super()._record_events(events)
                for event in events:
                    ledger.live[event.originator_id] = event.mutate(
                        copy.deepcopy(ledger.live[event.originator_id])
                    )

        return Recording(self).require_password_resets(*args, **kwargs)


def wipe(store: Settings) -> None:
    """Empty every table of the store: a fresh store per example, without rebuilding one."""
    if store.uses_postgres:
        schema = store.postgres_params()["POSTGRES_SCHEMA"]
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            tables = [
                f'"{schema}"."{row[0]}"'
                for row in conn.execute(
                    "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
                    (schema,),
                )
            ]
            conn.execute(f"TRUNCATE {', '.join(tables)}")
        return
    with sqlite3.connect(store.home / "ledger.sqlite3") as db:
        tables = [
            row[0]
            for row in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        for table in tables:
            db.execute(f'DELETE FROM "{table}"')  # noqa: S608 - names from the catalogue
    db.close()


def build(settings_: Settings, clock: SteppedClock) -> RecordingLedger:
    return RecordingLedger(
        ledger_env(settings_),
        keyring=load_keyring(settings_),
        hasher=build_hasher(settings_),
        clock=clock,
        api_key_codec=ApiKeyCodec(settings_.api_key_prefix),
        lockout_threshold=3,
        max_retries=1,  # single writer: any conflict would be a bug, so do not hide it
        bulk_batch_size=2,
        dkim_rsa_bits=1024,
    )


# --- the command language ---------------------------------------------------------------------

# u0/u1 belong to acme, u2 to zeta, e0 to the staff organisation.
USERS = ["u0", "u1", "u2", "e0"]
HOME = {"u0": ("acme", "owner"), "u1": ("acme", "teammate"), "u2": ("zeta", "owner")}
HOME["e0"] = ("staff", "employee")
ACCOUNTS = ["acme", "zeta", "staff"]
PASSWORDS = ["Tr0ub4dor&3-horse", "c0rrect-b4ttery-st4ple", "Sp4rkly-Unic0rn-99", "wrong-pass-123"]
CIDRS = [
    "198.51.100.0/24",  # holds the caller's IP
    "198.51.0.0/16",
    "10.0.0.0/8",
    "10.1.0.0/16",
    "2001:db8::/32",
    "2001:db8:1::/48",
    "::/0",
    "203.0.113.0/24",
]
IPS = ["198.51.100.10", "10.1.2.3", "2001:db8::1", "203.0.113.9", "192.0.2.1"]
OPS = [
    "register",
    "set_password",
    "change_password",
    "login_ok",
    "login_bad",
    "require_reset",
    "complete_reset",
    "bulk_reset",
    "unlock",
    "disable",
    "enable",
    "add_allowlist",
    "remove_allowlist",
    "check_access",
    "create_key",
    "revoke_key",
    "totp_start",
    "totp_confirm",
    "remove_factor",
    "recovery_codes",
    "two_factor_policy",
    "dkim_generate",
    "dkim_publish",
    "dkim_activate",
    "dkim_retire",
    "staff_access",
    "tick",
]
Step = tuple[str, int, int]
steps_strategy = st.lists(
    st.tuples(st.sampled_from(OPS), st.integers(0, 3), st.integers(0, 7)), min_size=1, max_size=30
)


@dataclass
class Model:
    """What the test knows that the store deliberately does not: secrets handed out once."""

    passwords: dict[str, str] = field(default_factory=dict)
    # user -> factor id -> (seed, confirmed)
    factors: dict[str, dict[str, tuple[str, bool]]] = field(default_factory=dict)
    codes: dict[str, list[str]] = field(default_factory=dict)
    keys: dict[str, list[str]] = field(default_factory=dict)


class Runner:
    def __init__(self, ledger: RecordingLedger, clock: SteppedClock) -> None:
        self.ledger = ledger
        self.clock = clock
        self.model = Model()
        self.ctx = RequestContext(Actor(ActorKind.STAFF, "admin"), source_ip="198.51.100.10")
        self.applied = 0

    def run(self, steps: list[Step]) -> None:
        for name in ACCOUNTS:
            kind = "staff" if name == "staff" else "customer"
            self.ledger.open_account(c.parse_command(c.OpenAccount, name=name, kind=kind), self.ctx)
        # Most users exist from the start so that most sequences do something; u1
        # appears only if the sequence registers it.
        self.register("u0", "acme", 0)
        self.register("u2", "zeta", 0)
        self.register("e0", "staff", 0)
        for op, i, j in steps:
            try:
                getattr(self, op)(USERS[i], ACCOUNTS[i % 3], j)
                self.applied += 1
            except (InvalidCommandError, ConcurrencyConflictError, SecretKeyError):
                raise  # the test built a bad command, or the store misbehaved
            except SecStateError:
                pass  # a domain rule refused: fine, nothing else to check here

    def do(self, method: str, command_class: type[c.Command], **data: Any) -> Any:
        command = c.parse_command(command_class, **data)
        return getattr(self.ledger, method)(command, self.ctx)

    # users and passwords

    def register(self, user: str, _account: str, _j: int) -> None:
        account, role = HOME[user]
        self.do(
            "register_user",
            c.RegisterUser,
            account=account,
            username=user,
            email=f"{user}@mail.example",
            password=PASSWORDS[0],
            role=role,
        )
        self.model.passwords[user] = PASSWORDS[0]

    def set_password(self, user: str, _account: str, j: int) -> None:
        self.do("set_password", c.SetPassword, username=user, password=PASSWORDS[j % 3])
        self.model.passwords[user] = PASSWORDS[j % 3]

    def change_password(self, user: str, _account: str, j: int) -> None:
        current = PASSWORDS[3] if j == 7 else self.model.passwords.get(user, PASSWORDS[0])
        new = PASSWORDS[j % 3]
        self.do(
            "change_password",
            c.ChangePassword,
            username=user,
            current_password=current,
            new_password=new,
        )
        self.model.passwords[user] = new

    def require_reset(self, user: str, _account: str, j: int) -> None:
        self.do(
            "require_password_reset",
            c.RequirePasswordReset,
            username=user,
            reason="breach",
            campaign_id=f"camp-{j % 2}",
        )

    def complete_reset(self, user: str, _account: str, j: int) -> None:
        new = PASSWORDS[j % 3]
        self.do("complete_password_reset", c.CompletePasswordReset, username=user, new_password=new)
        self.model.passwords[user] = new

    def bulk_reset(self, _user: str, account: str, j: int) -> None:
        targets: dict[str, Any] = {"everyone": True} if j % 2 else {"accounts": [account]}
        command = c.parse_command(
            c.RequirePasswordResets, reason="bulk", campaign_id=f"camp-{j % 3}", **targets
        )
        self.ledger.require_password_resets(command, self.ctx)

    def unlock(self, user: str, _account: str, _j: int) -> None:
        self.do("unlock_user", c.UnlockUser, username=user)

    def disable(self, user: str, _account: str, _j: int) -> None:
        self.do("disable_user", c.DisableUser, username=user, reason="suspicious")

    def enable(self, user: str, _account: str, _j: int) -> None:
        self.do("enable_user", c.EnableUser, username=user)

    # logins

    def login_ok(self, user: str, _account: str, j: int) -> None:
        data: dict[str, Any] = {
            "username": user,
            "password": self.model.passwords.get(user, PASSWORDS[0]),
        }
        factors = self.model.factors.get(user, {})
        seeds = [seed for seed, confirmed in factors.values() if confirmed]
        codes = self.model.codes.get(user, [])
        if codes and (j % 2 or not seeds):
            data["recovery_code"] = codes[j % len(codes)]
        elif seeds:
            data["totp_code"] = totp_code_at_step(
                seeds[j % len(seeds)], totp_step(self.clock.now())
            )
        self.do("login", c.Login, **data)

    def login_bad(self, user: str, _account: str, _j: int) -> None:
        self.do("login", c.Login, username=user, password=PASSWORDS[3])

    # second factors

    def totp_start(self, user: str, _account: str, _j: int) -> None:
        enrolment = self.do("start_totp_enrolment", c.StartTotpEnrolment, username=user)
        self.model.factors.setdefault(user, {})[enrolment.factor_id] = (enrolment.seed, False)

    def totp_confirm(self, user: str, _account: str, j: int) -> None:
        factors = self.model.factors.setdefault(user, {})
        pending = [(f, seed) for f, (seed, confirmed) in factors.items() if not confirmed]
        factor_id, seed = pending[-1] if pending else ("tf_000000000000", "A" * 32)
        code = "000000" if j == 7 else totp_code_at_step(seed, totp_step(self.clock.now()))
        self.do(
            "confirm_totp_enrolment",
            c.ConfirmTotpEnrolment,
            username=user,
            factor_id=factor_id,
            code=code,
        )
        factors[factor_id] = (seed, True)

    def remove_factor(self, user: str, _account: str, j: int) -> None:
        factors = self.model.factors.setdefault(user, {})
        ids = sorted(factors) or ["tf_000000000000"]
        factor_id = ids[j % len(ids)]
        self.do("remove_second_factor", c.RemoveSecondFactor, username=user, factor_id=factor_id)
        del factors[factor_id]

    def recovery_codes(self, user: str, _account: str, _j: int) -> None:
        codes = self.do("generate_recovery_codes", c.GenerateRecoveryCodes, username=user, count=5)
        self.model.codes[user] = codes

    # accounts

    def two_factor_policy(self, _user: str, account: str, j: int) -> None:
        self.do("set_two_factor_policy", c.SetTwoFactorPolicy, account=account, required=j < 2)

    def add_allowlist(self, _user: str, account: str, j: int) -> None:
        self.do(
            "add_allowlist_entry", c.AddAllowlistEntry, account=account, cidr=CIDRS[j], label="x"
        )

    def remove_allowlist(self, _user: str, account: str, j: int) -> None:
        self.do(
            "remove_allowlist_entry",
            c.RemoveAllowlistEntry,
            account=account,
            entry=CIDRS[j],
            force=j % 3 == 0,
        )

    def check_access(self, _user: str, account: str, j: int) -> None:
        ip = IPS[j % len(IPS)]
        self.do("check_control_panel_access", c.CheckControlPanelAccess, account=account, ip=ip)

    def create_key(self, _user: str, account: str, j: int) -> None:
        scopes = ["send", "read", "admin"][: 1 + j % 3]
        issued = self.do("create_api_key", c.CreateApiKey, account=account, name="k", scopes=scopes)
        self.model.keys.setdefault(account, []).append(issued.key_id)

    def revoke_key(self, _user: str, account: str, j: int) -> None:
        keys = self.model.keys.get(account) or ["A" * 12]
        self.do(
            "revoke_api_key",
            c.RevokeApiKey,
            account=account,
            key_id=keys[j % len(keys)],
            reason="rotated",
        )

    def _dkim(self, method: str, command_class: type[c.Command], account: str, j: int) -> Any:
        return self.do(
            method, command_class, account=account, domain="mail.example.com", selector=f"s{j % 3}"
        )

    def dkim_generate(self, _user: str, account: str, j: int) -> None:
        algorithm = "rsa-sha256" if j == 0 else "ed25519-sha256"
        self.do(
            "generate_dkim_key",
            c.GenerateDkimKey,
            account=account,
            domain="mail.example.com",
            selector=f"s{j % 3}",
            algorithm=algorithm,
        )

    def dkim_publish(self, _user: str, account: str, j: int) -> None:
        self._dkim("publish_dkim_key", c.PublishDkimKey, account, j)

    def dkim_activate(self, _user: str, account: str, j: int) -> None:
        self._dkim("activate_dkim_key", c.ActivateDkimKey, account, j)

    def dkim_retire(self, _user: str, account: str, j: int) -> None:
        self._dkim("retire_dkim_key", c.RetireDkimKey, account, j)

    def staff_access(self, user: str, _account: str, j: int) -> None:
        self.do(
            "record_staff_access",
            c.RecordStaffAccess,
            username=user,
            system="crm",
            resource="customers",
            records=j,
            customer_accounts=["acme", "zeta", "staff"][: j % 4],
        )

    def tick(self, _user: str, _account: str, j: int) -> None:
        self.clock.set(self.clock.now() + timedelta(seconds=15 * (j + 1)))


def replay(ledger: Ledger, aggregate_id: uuid.UUID) -> Any:
    aggregate = None
    for event in ledger.events.get(aggregate_id):
        aggregate = event.mutate(aggregate)  # type: ignore[attr-defined]
    return aggregate


@pytest.fixture
def recording_ledger(settings: Settings, clock: SteppedClock) -> Iterator[RecordingLedger]:
    """One store per backend for the whole property test; wiped before each example."""
    if settings.uses_postgres:
        ensure_postgres_schema(settings)
    app = build(settings, clock)
    yield app
    app.close()


@hypothesis_settings(
    max_examples=25,
    deadline=None,
    # The store fixture is reused on purpose: each example wipes it first.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=steps_strategy)
def test_store_gives_back_exactly_the_live_aggregates(
    recording_ledger: RecordingLedger, settings: Settings, clock: SteppedClock, steps: list[Step]
) -> None:
    # given an empty store and the clock at its start
    ledger = recording_ledger
    wipe(settings)
    ledger.live.clear()
    clock.set(START)
    # when any sequence of commands runs, refused ones skipped
    Runner(ledger, clock).run(steps)
    # then every saved aggregate reloads equal to the saved object and to its replay
    for aggregate_id, live in ledger.live.items():
        assert ledger.repository.get(aggregate_id) == live
        assert ledger.load(type(live), aggregate_id) == live  # the ledger's own load path
        assert replay(ledger, aggregate_id) == live
    # and nothing in the log escaped the comparison
    notifications = ledger.recorder.select_notifications(start=1, limit=1_000_000)
    assert {n.originator_id for n in notifications} == set(ledger.live)
