"""The Ledger application end to end, on SQLite and on PostgreSQL.

Each command is checked through the store (reload, replay), refused commands must save
nothing, and library errors must come out as named domain errors.
"""

from __future__ import annotations

import binascii
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import pytest
from eventsourcing.domain import Aggregate

from domain import commands as c
from domain.account import Account, ApiKeyIndex
from domain.campaigns import ResetCampaign
from domain.context import Actor, ActorKind, RequestContext, SteppedClock
from domain.errors import (
    AccountKindError,
    ApiKeyAlreadyRevokedError,
    ApiKeyRejectedError,
    CheckRefusedError,
    ConcurrencyConflictError,
    DamagedHistoryError,
    DkimKeyStateError,
    DkimSelectorInUseError,
    DuplicateAccountError,
    DuplicateAllowlistEntryError,
    DuplicateUsernameError,
    LoginRefusedError,
    NotStaffError,
    PasswordReuseError,
    SecStateError,
    SelfLockoutError,
    UnknownAccountError,
    UnknownApiKeyError,
    UnknownUserError,
    UserDisabledError,
    WeakPasswordError,
)
from domain.ledger import BulkResult, Ledger
from domain.secrets import TOTP_PERIOD, totp_code_at_step, totp_step
from domain.user import User
from secstate.bootstrap import build_ledger
from secstate.settings import Settings

PASSWORD = "Tr0ub4dor&3-horse"
NEW_PASSWORD = "c0rrect-b4ttery-st4ple"


# --- helpers ----------------------------------------------------------------------------------


@contextmanager
def nothing_saved(ledger: Ledger) -> Iterator[None]:
    """The block must not add anything to the event log."""
    before = ledger.recorder.max_notification_id()
    yield
    assert ledger.recorder.max_notification_id() == before


def refused(ledger: Ledger, error: type[SecStateError], action: Callable[[], object]) -> str:
    with nothing_saved(ledger), pytest.raises(error) as info:
        action()
    return str(info.value)


def replayed(ledger: Ledger, aggregate_id: uuid.UUID) -> Any:
    """The aggregate rebuilt from all of its stored events, ignoring snapshots."""
    aggregate = None
    for event in ledger.events.get(aggregate_id):
        aggregate = event.mutate(aggregate)  # type: ignore[attr-defined]
    return aggregate


def assert_consistent(ledger: Ledger, aggregate: Aggregate) -> None:
    """What the store gives back equals a replay of the aggregate's own events."""
    assert ledger.repository.get(aggregate.id) == replayed(ledger, aggregate.id) == aggregate


def open_account(
    ledger: Ledger, ctx: RequestContext, name: str = "acme", kind: str = "customer"
) -> None:
    ledger.open_account(c.parse_command(c.OpenAccount, name=name, kind=kind), ctx)


def register(
    ledger: Ledger,
    ctx: RequestContext,
    username: str = "alice",
    account: str = "acme",
    role: str = "owner",
    password: str = PASSWORD,
) -> uuid.UUID:
    return ledger.register_user(
        c.parse_command(
            c.RegisterUser,
            account=account,
            username=username,
            email=f"{username}@mail.example",
            password=password,
            role=role,
        ),
        ctx,
    )


def login(ledger: Ledger, ctx: RequestContext, username: str = "alice", **kw: Any) -> Any:
    data = {"username": username, "password": PASSWORD, **kw}
    return ledger.login(c.parse_command(c.Login, **data), ctx)


def refusal_reason(ledger: Ledger, ctx: RequestContext, **kw: Any) -> str:
    with pytest.raises(LoginRefusedError) as info:
        login(ledger, ctx, **kw)
    return info.value.reason


def as_user(username: str) -> RequestContext:
    return RequestContext(Actor(ActorKind.USER, username), source_ip="198.51.100.10")


def event_names(ledger: Ledger, aggregate_id: uuid.UUID, after_version: int = 0) -> list[str]:
    return [type(e).__name__ for e in ledger.events.get(aggregate_id, gt=after_version)]


_B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def token_with_checksum(body: str) -> str:
    """A token in secstate's format with a valid CRC32 (an independent oracle of the format)."""
    number, digits = binascii.crc32(body.encode()), []
    for _ in range(6):
        number, rem = divmod(number, 62)
        digits.append(_B62[rem])
    return body + "".join(reversed(digits))


@pytest.fixture
def acme(ledger: Ledger, ctx: RequestContext) -> Ledger:
    """The ledger with account acme and its owner alice."""
    open_account(ledger, ctx)
    register(ledger, ctx)
    return ledger


# --- accounts -----------------------------------------------------------------------------------


def test_opened_account_is_read_back_from_the_store(ledger: Ledger, ctx: RequestContext) -> None:
    # given / when
    account_id = ledger.open_account(
        c.parse_command(c.OpenAccount, name="acme", display_name="Acme Inc."), ctx
    )
    # then
    account = ledger.get_account("acme")
    assert account.id == account_id
    assert (account.name, account.kind, account.display_name) == ("acme", "customer", "Acme Inc.")
    assert account.version == 1
    assert account.opened_at == ledger.clock.now()
    assert_consistent(ledger, account)


def test_opening_an_existing_account_is_refused(ledger: Ledger, ctx: RequestContext) -> None:
    open_account(ledger, ctx)
    message = refused(ledger, DuplicateAccountError, lambda: open_account(ledger, ctx))
    assert "'acme' already exists" in message


def test_unknown_account_is_a_named_error(ledger: Ledger, ctx: RequestContext) -> None:
    for action in (
        lambda: ledger.get_account("nope"),
        lambda: ledger.account_users("nope"),
        lambda: ledger.set_two_factor_policy(
            c.parse_command(c.SetTwoFactorPolicy, account="nope", required=True), ctx
        ),
        lambda: ledger.add_allowlist_entry(
            c.parse_command(c.AddAllowlistEntry, account="nope", cidr="10.0.0.0/8", label="x"),
            ctx,
        ),
        lambda: ledger.create_api_key(
            c.parse_command(c.CreateApiKey, account="nope", name="ci", scopes=["send"]), ctx
        ),
        lambda: register(ledger, ctx, account="nope"),
    ):
        message = refused(ledger, UnknownAccountError, action)
        assert "no account named 'nope'" in message
    assert not ledger.account_exists("nope")


def test_two_factor_policy_is_saved_once(acme: Ledger, ctx: RequestContext) -> None:
    set_required = c.parse_command(c.SetTwoFactorPolicy, account="acme", required=True)
    assert acme.set_two_factor_policy(set_required, ctx)
    with nothing_saved(acme):
        assert not acme.set_two_factor_policy(set_required, ctx)
    assert acme.get_account("acme").two_factor_required


# --- users ---------------------------------------------------------------------------------------


def test_registered_user_is_a_member_of_the_account(acme: Ledger, ctx: RequestContext) -> None:
    # given acme with alice; when bob joins as a teammate
    bob_id = register(acme, ctx, "bob", role="teammate")
    # then
    bob = acme.get_user("bob")
    assert bob.id == bob_id
    assert bob.account_id == Account.create_id("acme")
    assert bob.password_hash is not None
    assert acme.hasher.verify(bob.password_hash, PASSWORD)
    account = acme.get_account("acme")
    assert {m.username: m.role for m in account.members.values()} == {
        "alice": "owner",
        "bob": "teammate",
    }
    assert sorted(u.username for u in acme.account_users("acme")) == ["alice", "bob"]
    assert event_names(acme, bob_id) == ["Registered", "PasswordSet"]
    assert_consistent(acme, bob)
    assert_consistent(acme, account)


@pytest.mark.parametrize("username", ["alice", "ALICE", "Alice"])
def test_taken_username_is_refused_whatever_its_case(
    acme: Ledger, ctx: RequestContext, username: str
) -> None:
    open_account(acme, ctx, "zeta")
    message = refused(
        acme, DuplicateUsernameError, lambda: register(acme, ctx, username, account="zeta")
    )
    assert "already taken" in message


def test_weak_password_at_registration_saves_neither_user_nor_membership(
    acme: Ledger, ctx: RequestContext
) -> None:
    refused(acme, WeakPasswordError, lambda: register(acme, ctx, "bob", password="qwerty123456"))
    with pytest.raises(UnknownUserError):
        acme.get_user("bob")
    assert len(acme.get_account("acme").members) == 1


def test_employee_of_a_customer_account_is_refused(acme: Ledger, ctx: RequestContext) -> None:
    refused(acme, AccountKindError, lambda: register(acme, ctx, "eve", role="employee"))
    assert not acme._user_exists("eve")


def test_unknown_user_is_a_named_error(acme: Ledger, ctx: RequestContext) -> None:
    for action in (
        lambda: acme.get_user("nobody"),
        lambda: acme.set_password(
            c.parse_command(c.SetPassword, username="nobody", password=NEW_PASSWORD), ctx
        ),
        lambda: acme.disable_user(
            c.parse_command(c.DisableUser, username="nobody", reason="x"), ctx
        ),
        lambda: acme.start_totp_enrolment(
            c.parse_command(c.StartTotpEnrolment, username="nobody"), ctx
        ),
    ):
        message = refused(acme, UnknownUserError, action)
        assert "no user named 'nobody'" in message


def test_load_refuses_an_aggregate_of_another_class(acme: Ledger) -> None:
    with pytest.raises(DamagedHistoryError, match="is a User, where a Account was expected"):
        acme.load(Account, User.create_id("alice"))


def test_password_change_and_login_round_trip(acme: Ledger, ctx: RequestContext) -> None:
    # when
    acme.change_password(
        c.parse_command(
            c.ChangePassword,
            username="alice",
            current_password=PASSWORD,
            new_password=NEW_PASSWORD,
        ),
        ctx,
    )
    # then the new password logs in, from the context's IP
    outcome = login(acme, ctx, password=NEW_PASSWORD)
    assert outcome.allowed
    alice = acme.get_user("alice")
    assert alice.last_login_ip == "198.51.100.10"
    assert alice.last_login_at == acme.clock.now()
    assert event_names(acme, alice.id, after_version=2) == ["PasswordChanged", "LoginSucceeded"]
    assert_consistent(acme, alice)


def test_set_password_replaces_the_password_and_refuses_reuse(
    acme: Ledger, ctx: RequestContext
) -> None:
    set_new = c.parse_command(c.SetPassword, username="alice", password=NEW_PASSWORD)
    acme.set_password(set_new, ctx)
    assert login(acme, ctx, password=NEW_PASSWORD).allowed
    assert refusal_reason(acme, ctx) == "bad_password"
    refused(acme, PasswordReuseError, lambda: acme.set_password(set_new, ctx))
    weak = c.parse_command(c.SetPassword, username="alice", password="alice-is-my-name")
    refused(acme, WeakPasswordError, lambda: acme.set_password(weak, ctx))
    assert_consistent(acme, acme.get_user("alice"))


def test_refused_login_is_recorded_and_raised(acme: Ledger, ctx: RequestContext) -> None:
    # given
    before = acme.recorder.max_notification_id() or 0
    # when
    reason = refusal_reason(acme, ctx, password="wrong-password-1")
    # then the refusal is in the store even though the command raised
    assert reason == "bad_password"
    assert (acme.recorder.max_notification_id() or 0) > before
    alice = acme.get_user("alice")
    assert alice.failed_logins == 1
    assert event_names(acme, alice.id)[-1] == "LoginFailed"


def test_lockout_and_unlock_are_persisted(
    acme: Ledger, ctx: RequestContext, settings: Settings
) -> None:
    # given the configured threshold of failures
    for _ in range(settings.lockout_threshold):
        refusal_reason(acme, ctx, password="wrong-password-1")
    # then the user is locked in the store
    assert acme.get_user("alice").locked
    assert refusal_reason(acme, ctx) == "user_locked"
    # when unlocked
    acme.unlock_user(c.parse_command(c.UnlockUser, username="alice"), ctx)
    # then
    assert login(acme, ctx).allowed
    assert_consistent(acme, acme.get_user("alice"))


def test_required_reset_blocks_login_until_completed(acme: Ledger, ctx: RequestContext) -> None:
    acme.require_password_reset(
        c.parse_command(c.RequirePasswordReset, username="alice", reason="breach"), ctx
    )
    assert refusal_reason(acme, ctx) == "password_reset_required"
    acme.complete_password_reset(
        c.parse_command(c.CompletePasswordReset, username="alice", new_password=NEW_PASSWORD),
        ctx,
    )
    assert login(acme, ctx, password=NEW_PASSWORD).allowed
    assert_consistent(acme, acme.get_user("alice"))


def test_disabled_user_cannot_log_in_nor_act(acme: Ledger, ctx: RequestContext) -> None:
    # given alice disabled
    acme.disable_user(c.parse_command(c.DisableUser, username="alice", reason="left"), ctx)
    # then her login is refused, and she may not act on anything
    assert refusal_reason(acme, ctx) == "user_disabled"
    add_entry = c.parse_command(c.AddAllowlistEntry, account="acme", cidr="10.0.0.0/8", label="x")
    refused(acme, UserDisabledError, lambda: acme.add_allowlist_entry(add_entry, as_user("alice")))
    refused(acme, UserDisabledError, lambda: open_account(acme, as_user("alice"), "zeta"))
    # while other actors still may; and enabling restores her
    acme.add_allowlist_entry(add_entry, as_user("someone-from-sso"))
    acme.enable_user(c.parse_command(c.EnableUser, username="alice"), ctx)
    assert login(acme, ctx).allowed


# --- second factors ----------------------------------------------------------------------------


def test_totp_enrolment_login_and_replay(
    acme: Ledger, ctx: RequestContext, clock: SteppedClock
) -> None:
    # given a started enrolment
    enrolment = acme.start_totp_enrolment(
        c.parse_command(c.StartTotpEnrolment, username="alice"), ctx
    )
    assert enrolment.uri.startswith("otpauth://totp/")
    assert enrolment.seed not in repr(enrolment)
    step = totp_step(clock.now())
    # when a wrong code is given, the refusal is recorded and counts as a guess
    wrong = next(
        x
        for x in ("000000", "111111", "222222")
        if x not in {totp_code_at_step(enrolment.seed, step + d) for d in (-1, 0, 1)}
    )
    confirm = c.parse_command(
        c.ConfirmTotpEnrolment, username="alice", factor_id=enrolment.factor_id, code=wrong
    )
    with pytest.raises(CheckRefusedError, match="bad_second_factor"):
        acme.confirm_totp_enrolment(confirm, ctx)
    assert event_names(acme, User.create_id("alice"))[-1] == "TotpConfirmationFailed"
    assert acme.get_user("alice").failed_logins == 1
    # when confirmed with the current code
    code = totp_code_at_step(enrolment.seed, step)
    acme.confirm_totp_enrolment(confirm.model_copy(update={"code": code}), ctx)
    # then that code cannot log in, it was consumed
    assert refusal_reason(acme, ctx, totp_code=code) == "totp_code_replayed"
    # and a password alone is not enough
    assert refusal_reason(acme, ctx) == "second_factor_missing"
    # when the next step's code is used a step later
    clock.set(clock.now() + timedelta(seconds=TOTP_PERIOD))
    next_code = totp_code_at_step(enrolment.seed, step + 1)
    assert login(acme, ctx, totp_code=next_code).method == "password+totp"
    # then it cannot be replayed
    assert refusal_reason(acme, ctx, totp_code=next_code) == "totp_code_replayed"
    assert_consistent(acme, acme.get_user("alice"))


def test_recovery_codes_log_in_once(acme: Ledger, ctx: RequestContext, clock: SteppedClock) -> None:
    enrolment = acme.start_totp_enrolment(
        c.parse_command(c.StartTotpEnrolment, username="alice"), ctx
    )
    acme.confirm_totp_enrolment(
        c.parse_command(
            c.ConfirmTotpEnrolment,
            username="alice",
            factor_id=enrolment.factor_id,
            code=totp_code_at_step(enrolment.seed, totp_step(clock.now())),
        ),
        ctx,
    )
    codes = acme.generate_recovery_codes(
        c.parse_command(c.GenerateRecoveryCodes, username="alice", count=5), ctx
    )
    assert login(acme, ctx, recovery_code=codes[0]).method == "password+recovery_code"
    assert refusal_reason(acme, ctx, recovery_code=codes[0]) == "bad_second_factor"
    alice = acme.get_user("alice")
    assert alice.recovery_codes is not None
    assert alice.recovery_codes.remaining == 4
    # removing the factor drops the second-factor demand
    acme.remove_second_factor(
        c.parse_command(c.RemoveSecondFactor, username="alice", factor_id=enrolment.factor_id),
        ctx,
    )
    assert login(acme, ctx).method == "password"
    assert_consistent(acme, acme.get_user("alice"))


def test_required_second_factor_without_one_refuses_login(
    acme: Ledger, ctx: RequestContext
) -> None:
    acme.set_two_factor_policy(
        c.parse_command(c.SetTwoFactorPolicy, account="acme", required=True), ctx
    )
    assert refusal_reason(acme, ctx) == "second_factor_required_but_not_enrolled"


def test_login_rehashes_when_argon2_parameters_changed(
    acme: Ledger, ctx: RequestContext, settings: Settings, clock: SteppedClock
) -> None:
    # given alice's hash made with the fixture's parameters; when the cost goes up
    stronger = build_ledger(settings.model_copy(update={"argon2_time_cost": 2}), clock=clock)
    try:
        outcome = login(stronger, ctx)
    finally:
        stronger.close()
    # then
    assert outcome.rehashed
    alice = acme.get_user("alice")
    assert event_names(acme, alice.id)[-2:] == ["LoginSucceeded", "PasswordRehashed"]
    assert alice.password_hash is not None
    assert "t=2" in alice.password_hash
    assert login(acme, ctx).allowed  # same password, new hash


# --- allowlist ----------------------------------------------------------------------------------


def test_allowlist_round_trip_with_self_lockout_guard(acme: Ledger, ctx: RequestContext) -> None:
    def add(cidr: str) -> str:
        command = c.parse_command(c.AddAllowlistEntry, account="acme", cidr=cidr, label="office")
        return acme.add_allowlist_entry(command, ctx)

    def remove(entry: str, force: bool = False) -> str:
        command = c.parse_command(c.RemoveAllowlistEntry, account="acme", entry=entry, force=force)
        return acme.remove_allowlist_entry(command, ctx)

    def check(ip: str) -> bool:
        command = c.parse_command(c.CheckControlPanelAccess, account="acme", ip=ip)
        return acme.check_control_panel_access(command, ctx)

    # given the caller's network (ctx is 198.51.100.10) and an IPv6 office
    mine = add("198.51.100.0/24")
    add("2001:DB8::/32")
    refused(acme, DuplicateAllowlistEntryError, lambda: add("198.51.100.0/25"))
    refused(acme, DuplicateAllowlistEntryError, lambda: add("2001:db8:1::/48"))
    # then access is decided and recorded
    assert check("2001:db8::5")
    assert not check("203.0.113.1")
    # and the caller cannot cut itself off, unless forced
    refused(acme, SelfLockoutError, lambda: remove(mine))
    assert remove("198.51.100.0/24", force=True) == mine
    account = acme.get_account("acme")
    assert [e.cidr for e in account.allowlist.values()] == ["2001:db8::/32"]
    assert event_names(acme, account.id)[-4:] == [
        "AllowlistEntryAdded",
        "ControlPanelAccessAllowed",
        "ControlPanelAccessDenied",
        "AllowlistEntryRemoved",
    ]
    assert_consistent(acme, account)


# --- API keys -----------------------------------------------------------------------------------


def test_api_key_lifecycle_and_authentication(acme: Ledger, ctx: RequestContext) -> None:
    # given
    issued = acme.create_api_key(
        c.parse_command(c.CreateApiKey, account="acme", name="ci", scopes=["send", "read"]), ctx
    )
    assert issued.token not in repr(issued)

    def authenticate(token: str) -> Any:
        return acme.authenticate_api_key(c.parse_command(c.AuthenticateApiKey, token=token), ctx)

    # when / then a valid key authenticates; its first use is recorded on its index
    principal = authenticate(issued.token)
    index_id = ApiKeyIndex.create_id(issued.key_id)
    assert event_names(acme, index_id) == ["Indexed", "Used"]
    assert (principal.account, principal.key_id, principal.name, principal.scopes) == (
        "acme",
        issued.key_id,
        "ci",
        ["read", "send"],
    )
    # a right key id with a wrong secret (valid checksum) is rejected
    forged = token_with_checksum(f"sst_{issued.key_id}_{'x' * 22}")
    with pytest.raises(ApiKeyRejectedError, match="secret does not match"):
        authenticate(forged)
    # a well-formed key nobody issued is rejected
    stranger = token_with_checksum(f"sst_{'Z' * 12}_{'x' * 22}")
    with pytest.raises(ApiKeyRejectedError, match="not known"):
        authenticate(stranger)
    # malformed keys and look-alikes are rejected before any lookup
    for bad in ("sst_nope", issued.token[:-1] + ("A" if issued.token[-1] != "A" else "B")):
        with pytest.raises(ApiKeyRejectedError):
            authenticate(bad)
    # when revoked, the key stops working; revoking twice is refused
    revoke = c.parse_command(c.RevokeApiKey, account="acme", key_id=issued.key_id, reason="leaked")
    acme.revoke_api_key(revoke, ctx)
    with pytest.raises(ApiKeyRejectedError, match="was revoked"):
        authenticate(issued.token)
    refused(acme, ApiKeyAlreadyRevokedError, lambda: acme.revoke_api_key(revoke, ctx))
    unknown = revoke.model_copy(update={"key_id": "Z" * 12})
    refused(acme, UnknownApiKeyError, lambda: acme.revoke_api_key(unknown, ctx))
    # the index points at the account
    index = acme.load(ApiKeyIndex, ApiKeyIndex.create_id(issued.key_id))
    assert index.account_id == Account.create_id("acme")
    assert_consistent(acme, acme.get_account("acme"))


# --- DKIM ---------------------------------------------------------------------------------------


def test_dkim_rotation_round_trip(acme: Ledger, ctx: RequestContext) -> None:
    ref = {"account": "acme", "domain": "mail.acme.example"}

    def generate(selector: str) -> Any:
        command = c.parse_command(c.GenerateDkimKey, selector=selector, **ref)
        return acme.generate_dkim_key(command, ctx)

    # given an active key s1
    key = generate("s1")
    assert key.algorithm == "rsa-sha256"
    acme.publish_dkim_key(c.parse_command(c.PublishDkimKey, selector="s1", **ref), ctx)
    acme.activate_dkim_key(c.parse_command(c.ActivateDkimKey, selector="s1", **ref), ctx)
    # when s2 is generated, published and activated
    generate("s2")
    refused(acme, DkimSelectorInUseError, lambda: generate("s2"))
    activate_s2 = c.parse_command(c.ActivateDkimKey, selector="s2", **ref)
    refused(acme, DkimKeyStateError, lambda: acme.activate_dkim_key(activate_s2, ctx))
    acme.publish_dkim_key(c.parse_command(c.PublishDkimKey, selector="s2", **ref), ctx)
    assert acme.activate_dkim_key(activate_s2, ctx) == ["s1"]
    # then
    account = acme.get_account("acme")
    assert {k.selector: k.state for k in account.dkim_keys.values()} == {
        "s1": "retired",
        "s2": "active",
    }
    pem = account.open_dkim_private_key("mail.acme.example", "s2", acme.keyring)
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    acme.retire_dkim_key(c.parse_command(c.RetireDkimKey, selector="s2", **ref), ctx)
    assert_consistent(acme, acme.get_account("acme"))


# --- staff ---------------------------------------------------------------------------------------


def test_staff_access_is_recorded_only_for_employees(acme: Ledger, ctx: RequestContext) -> None:
    # given the staff organisation with one employee
    open_account(acme, ctx, "staff", kind="staff")
    register(acme, ctx, "e-042", account="staff", role="employee")
    refused(acme, AccountKindError, lambda: register(acme, ctx, "e-043", account="staff"))

    def access(username: str, accounts: list[str]) -> None:
        command = c.parse_command(
            c.RecordStaffAccess,
            username=username,
            system="crm",
            resource="customers",
            action="export",
            records=3,
            customer_accounts=accounts,
        )
        acme.record_staff_access(command, ctx)

    # when / then
    access("e-042", ["acme"])
    employee = acme.get_user("e-042")
    assert event_names(acme, employee.id)[-1] == "InternalSystemAccessed"
    refused(acme, NotStaffError, lambda: access("alice", ["acme"]))
    refused(acme, AccountKindError, lambda: access("e-042", ["staff"]))
    refused(acme, UnknownAccountError, lambda: access("e-042", ["nope"]))


# --- bulk resets ---------------------------------------------------------------------------------


@pytest.fixture
def population(ledger: Ledger, ctx: RequestContext) -> Ledger:
    """Seven users: four in acme, three in zeta."""
    for account, users in (("acme", ["a1", "a2", "a3", "a4"]), ("zeta", ["z1", "z2", "z3"])):
        open_account(ledger, ctx, account)
        for i, username in enumerate(users):
            register(ledger, ctx, username, account=account, role="owner" if i == 0 else "teammate")
    return ledger


def campaign_events(ledger: Ledger, campaign: str) -> list[str]:
    events = (
        ledger.mapper.to_domain_event(n)
        for n in ledger.recorder.select_notifications(start=1, limit=100_000)
    )
    return sorted(
        str(e.originator_id)
        for e in events
        if isinstance(e, User.PasswordResetRequired) and e.campaign_id == campaign
    )


def test_bulk_reset_marks_in_batches_with_progress_and_is_idempotent(
    population: Ledger, ctx: RequestContext
) -> None:
    # given small batches
    ledger = population
    ledger.bulk_batch_size = 3
    command = c.parse_command(
        c.RequirePasswordResets,
        reason="credential stuffing",
        campaign_id="camp-1",
        accounts=["acme", "zeta"],
    )
    calls: list[tuple[int, int]] = []
    # when
    result = ledger.require_password_resets(
        command, ctx, lambda done, total: calls.append((done, total))
    )
    # then
    assert result == BulkResult(targeted=7, marked=7, already_marked=0, batches=3)
    assert calls == [(3, 7), (6, 7), (7, 7)]
    users = ledger.account_users("acme") + ledger.account_users("zeta")
    assert all(u.reset_required and u.reset_campaign_id == "camp-1" for u in users)
    assert campaign_events(ledger, "camp-1") == sorted(str(u.id) for u in users)
    # when run again, nothing new is recorded
    with nothing_saved(ledger):
        again = ledger.require_password_resets(command, ctx)
    assert again == BulkResult(targeted=7, marked=0, already_marked=7, batches=3)
    for user in users:
        assert_consistent(ledger, user)


def test_bulk_reset_of_everyone_and_of_named_users(population: Ledger, ctx: RequestContext) -> None:
    ledger = population
    ledger.bulk_batch_size = 2
    # given a1 and z3 already marked by the campaign
    named = c.parse_command(
        c.RequirePasswordResets, reason="leak", campaign_id="camp-2", usernames=["a1", "Z3", "a1"]
    )
    assert ledger.require_password_resets(named, ctx) == BulkResult(2, 2, 0, 1)
    # when everyone is marked
    everyone = named.model_copy(update={"usernames": [], "everyone": True})
    calls: list[tuple[int, int]] = []
    result = ledger.require_password_resets(everyone, ctx, lambda d, t: calls.append((d, t)))
    # then only the five others are new
    assert result == BulkResult(targeted=7, marked=5, already_marked=2, batches=4)
    assert calls[-1] == (7, 7)
    assert len(campaign_events(ledger, "camp-2")) == 7
    # and a later campaign marks them again
    later = everyone.model_copy(update={"campaign_id": "camp-3"})
    assert ledger.require_password_resets(later, ctx).marked == 7


def test_bulk_reset_rerun_spares_users_who_already_completed_the_reset(
    population: Ledger, ctx: RequestContext
) -> None:
    # given a campaign run, and one user who reset the password since
    ledger = population
    command = c.parse_command(
        c.RequirePasswordResets, reason="leak", campaign_id="camp-4", accounts=["acme"]
    )
    assert ledger.require_password_resets(command, ctx).marked == 4
    ledger.complete_password_reset(
        c.parse_command(c.CompletePasswordReset, username="a2", new_password=NEW_PASSWORD), ctx
    )
    # when the campaign is run again
    with nothing_saved(ledger):
        again = ledger.require_password_resets(command, ctx)
    # then nobody is marked again, and a2 can log in
    assert (again.marked, again.already_marked) == (0, 4)
    assert login(ledger, ctx, "a2", password=NEW_PASSWORD).allowed


def test_bulk_reset_naming_an_unknown_user_saves_nothing(
    population: Ledger, ctx: RequestContext
) -> None:
    command = c.parse_command(
        c.RequirePasswordResets, reason="leak", campaign_id="c", usernames=["a1", "ghost"]
    )
    refused(population, UnknownUserError, lambda: population.require_password_resets(command, ctx))


@pytest.mark.parametrize("events_per_get", [0, 10**9], ids=["scan", "load-each"])
def test_bulk_reset_by_scan_and_by_loading_each_user_agree(
    population: Ledger, ctx: RequestContext, monkeypatch: pytest.MonkeyPatch, events_per_get: int
) -> None:
    # given the campaign forced down one path or the other
    monkeypatch.setattr("domain.campaigns._EVENTS_PER_GET", events_per_get)
    ledger = population
    ledger.bulk_batch_size = 3
    command = c.parse_command(
        c.RequirePasswordResets, reason="leak", campaign_id="camp-p", accounts=["zeta", "acme"]
    )
    # when it runs twice
    first = ledger.require_password_resets(command, ctx)
    with nothing_saved(ledger):
        second = ledger.require_password_resets(command, ctx)
    # then both paths mark everyone once, in the order asked
    assert first == BulkResult(targeted=7, marked=7, already_marked=0, batches=3)
    assert second == BulkResult(targeted=7, marked=0, already_marked=7, batches=3)
    for user in ledger.account_users("acme") + ledger.account_users("zeta"):
        assert user.reset_required
        assert user.reset_campaign_id == "camp-p"
        assert_consistent(ledger, user)


def test_bulk_reset_redoes_a_batch_whose_user_changed_after_the_scan(
    population: Ledger, ctx: RequestContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a user who logs in between the campaign's scan of the log and its write
    ledger = population
    scan = ResetCampaign._reset_statuses

    def scan_then_interfere(self: ResetCampaign, only: object) -> object:
        found = scan(self, only)  # type: ignore[arg-type]
        login(ledger, ctx, "a3")
        return found

    monkeypatch.setattr(ResetCampaign, "_reset_statuses", scan_then_interfere)
    command = c.parse_command(
        c.RequirePasswordResets, reason="leak", campaign_id="camp-r", everyone=True
    )
    # when the campaign runs
    result = ledger.require_password_resets(command, ctx)
    # then the conflicting batch is redone on loaded users: everyone marked exactly once
    assert result.marked == 7
    a3 = ledger.get_user("a3")
    assert a3.reset_required
    assert event_names(ledger, a3.id)[-2:] == ["LoginSucceeded", "PasswordResetRequired"]
    assert len(campaign_events(ledger, "camp-r")) == 7


# --- optimistic concurrency ---------------------------------------------------------------------


class InterferingClock(SteppedClock):
    """A clock that lets another writer change the store while a command is in flight.

    The ledger reads the clock after loading the aggregate and before saving it, so
    ``interfere`` runs exactly in the window where a concurrent writer would.
    """

    def __init__(self, start: datetime, interfere: Callable[[int], None], times: int) -> None:
        super().__init__(start)
        self.interfere = interfere
        self.times = times
        self.calls = 0

    def now(self) -> datetime:
        self.calls += 1
        if self.calls <= self.times:
            self.interfere(self.calls)
        return super().now()


@pytest.fixture
def other_ledger(settings: Settings, clock: SteppedClock) -> Iterator[Ledger]:
    """A second Ledger on the same store: another process, as far as the store can tell."""
    app = build_ledger(settings, clock=clock)
    yield app
    app.close()


def racing_ledger(
    settings: Settings,
    clock: SteppedClock,
    max_retries: int,
    times: int,
    rival: Callable[[int], None],
) -> Ledger:
    racing_clock = InterferingClock(clock.now(), rival, times)
    return build_ledger(
        settings.model_copy(update={"max_retries": max_retries}), clock=racing_clock
    )


def test_conflicting_write_is_retried_and_both_changes_survive(
    acme: Ledger, ctx: RequestContext, settings: Settings, clock: SteppedClock, other_ledger: Ledger
) -> None:
    # given a rival that adds an entry while our command is between load and save
    def rival(n: int) -> None:
        command = c.parse_command(
            c.AddAllowlistEntry, account="acme", cidr=f"10.{n}.0.0/16", label="rival"
        )
        other_ledger.add_allowlist_entry(command, ctx)

    ours = racing_ledger(settings, clock, max_retries=2, times=1, rival=rival)
    try:
        # when
        ours.add_allowlist_entry(
            c.parse_command(c.AddAllowlistEntry, account="acme", cidr="192.0.2.0/24", label="us"),
            ctx,
        )
    finally:
        ours.close()
    # then the first attempt conflicted, the retry won, and nothing was lost
    account = acme.get_account("acme")
    assert sorted(e.cidr for e in account.allowlist.values()) == ["10.1.0.0/16", "192.0.2.0/24"]
    assert_consistent(acme, account)


def test_conflicts_beyond_the_retry_limit_are_a_named_error(
    acme: Ledger, ctx: RequestContext, settings: Settings, clock: SteppedClock, other_ledger: Ledger
) -> None:
    # given a rival that wins every race
    def rival(n: int) -> None:
        command = c.parse_command(
            c.AddAllowlistEntry, account="acme", cidr=f"10.{n}.0.0/16", label="rival"
        )
        other_ledger.add_allowlist_entry(command, ctx)

    ours = racing_ledger(settings, clock, max_retries=2, times=99, rival=rival)
    try:
        # when / then
        with pytest.raises(ConcurrencyConflictError, match="gave up after 2 attempts"):
            ours.add_allowlist_entry(
                c.parse_command(
                    c.AddAllowlistEntry, account="acme", cidr="192.0.2.0/24", label="us"
                ),
                ctx,
            )
    finally:
        ours.close()
    # only the rival's changes were saved
    account = acme.get_account("acme")
    assert sorted(e.cidr for e in account.allowlist.values()) == ["10.1.0.0/16", "10.2.0.0/16"]


def test_single_attempt_ledger_gives_up_on_the_first_conflict(
    acme: Ledger, ctx: RequestContext, settings: Settings, clock: SteppedClock, other_ledger: Ledger
) -> None:
    def rival(n: int) -> None:
        other_ledger.disable_user(c.parse_command(c.DisableUser, username="alice", reason="r"), ctx)

    ours = racing_ledger(settings, clock, max_retries=1, times=1, rival=rival)
    try:
        with pytest.raises(ConcurrencyConflictError):
            ours.generate_recovery_codes(
                c.parse_command(c.GenerateRecoveryCodes, username="alice"), ctx
            )
    finally:
        ours.close()
    alice = acme.get_user("alice")
    assert alice.disabled
    assert alice.recovery_codes is None


def test_racing_registrations_of_one_username_give_a_duplicate_error(
    acme: Ledger, ctx: RequestContext, settings: Settings, clock: SteppedClock, other_ledger: Ledger
) -> None:
    # given a rival registering bob after our uniqueness check passed
    def rival(n: int) -> None:
        register(other_ledger, ctx, "bob", role="teammate")

    ours = racing_ledger(settings, clock, max_retries=3, times=1, rival=rival)
    try:
        # when / then
        with pytest.raises(DuplicateUsernameError):
            register(ours, ctx, "bob", role="teammate")
    finally:
        ours.close()
    assert [m.username for m in acme.get_account("acme").members.values()].count("bob") == 1


def test_racing_openings_of_one_account_give_a_duplicate_error(
    ledger: Ledger,
    ctx: RequestContext,
    settings: Settings,
    clock: SteppedClock,
    other_ledger: Ledger,
) -> None:
    def rival(n: int) -> None:
        open_account(other_ledger, ctx, "acme")

    ours = racing_ledger(settings, clock, max_retries=3, times=1, rival=rival)
    try:
        with pytest.raises(DuplicateAccountError):
            open_account(ours, ctx, "acme")
    finally:
        ours.close()
    assert ledger.get_account("acme").version == 1


# --- snapshots and replay -----------------------------------------------------------------------


def test_snapshotted_account_reloads_equal_to_a_full_replay(
    acme: Ledger, ctx: RequestContext
) -> None:
    # given an account with every kind of nested value ...
    acme.add_allowlist_entry(
        c.parse_command(c.AddAllowlistEntry, account="acme", cidr="2001:db8::/32", label="v6"), ctx
    )
    acme.create_api_key(
        c.parse_command(c.CreateApiKey, account="acme", name="ci", scopes=["send"]), ctx
    )
    acme.generate_dkim_key(
        c.parse_command(
            c.GenerateDkimKey,
            account="acme",
            domain="acme.example",
            selector="s1",
            algorithm="ed25519-sha256",
        ),
        ctx,
    )
    # ... and over 100 events (recorded in one save: many commands would only be slower)
    account = acme.get_account("acme")
    for _ in range(100):
        account.check_control_panel_access("2001:db8::1", acme.stamp(ctx))
    acme.save(account)
    # when
    reloaded = acme.get_account("acme")
    # then a snapshot was taken at version 100, and loading from it equals a full replay
    assert reloaded.version > 100
    [snapshot] = acme.snapshots.get(account.id, desc=True, limit=1)  # type: ignore[union-attr]
    assert snapshot.originator_version == 100
    assert reloaded == account == replayed(acme, account.id)
    assert acme.repository.get(account.id, version=100) == replayed_to(acme, account.id, 100)
    # and commands keep working on top of the snapshot
    acme.revoke_api_key(
        c.parse_command(
            c.RevokeApiKey,
            account="acme",
            key_id=next(iter(reloaded.api_keys)),
            reason="rotated",
        ),
        ctx,
    )
    assert_consistent(acme, acme.get_account("acme"))


def replayed_to(ledger: Ledger, aggregate_id: uuid.UUID, version: int) -> Any:
    aggregate = None
    for event in ledger.events.get(aggregate_id, lte=version):
        aggregate = event.mutate(aggregate)  # type: ignore[attr-defined]
    return aggregate


def test_snapshotted_user_reloads_equal_to_a_full_replay(
    acme: Ledger, ctx: RequestContext, clock: SteppedClock
) -> None:
    # given a user with a confirmed factor and recovery codes, one of them used
    enrolment = acme.start_totp_enrolment(
        c.parse_command(c.StartTotpEnrolment, username="alice"), ctx
    )
    acme.confirm_totp_enrolment(
        c.parse_command(
            c.ConfirmTotpEnrolment,
            username="alice",
            factor_id=enrolment.factor_id,
            code=totp_code_at_step(enrolment.seed, totp_step(clock.now())),
        ),
        ctx,
    )
    codes = acme.generate_recovery_codes(
        c.parse_command(c.GenerateRecoveryCodes, username="alice", count=5), ctx
    )
    login(acme, ctx, recovery_code=codes[2])
    # ... and 100 TOTP logins, a step apart (recorded in one save)
    alice = acme.get_user("alice")
    for _ in range(100):
        clock.set(clock.now() + timedelta(seconds=TOTP_PERIOD))
        outcome = alice.login(
            PASSWORD,
            totp_code=totp_code_at_step(enrolment.seed, totp_step(clock.now())),
            recovery_code=None,
            two_factor_required=False,
            lockout_threshold=acme.lockout_threshold,
            hasher=acme.hasher,
            keyring=acme.keyring,
            stamp=acme.stamp(ctx),
        )
        assert outcome.allowed
    acme.save(alice)
    # when
    reloaded = acme.get_user("alice")
    # then
    assert reloaded.version > 100
    assert list(acme.snapshots.get(alice.id))  # type: ignore[union-attr]
    assert reloaded == alice == replayed(acme, alice.id)
    assert reloaded.recovery_codes is not None
    assert reloaded.recovery_codes.remaining == 4
    assert reloaded.factors[enrolment.factor_id].last_used_step == totp_step(clock.now())
    # and the snapshot state still enforces replay protection
    code = totp_code_at_step(enrolment.seed, totp_step(clock.now()))
    assert refusal_reason(acme, ctx, totp_code=code) == "totp_code_replayed"


def test_every_event_carries_the_request_context(acme: Ledger, clock: SteppedClock) -> None:
    ctx = RequestContext(
        Actor(ActorKind.STAFF, "e-7"), source_ip="2001:DB8::7", user_agent="cli", request_id="r-1"
    )
    acme.disable_user(c.parse_command(c.DisableUser, username="alice", reason="audit"), ctx)
    [event] = acme.events.get(User.create_id("alice"), gt=2)
    fields = {k: getattr(event, k) for k in ("actor_kind", "actor_id", "source_ip", "user_agent")}
    assert fields == {
        "actor_kind": "staff",
        "actor_id": "e-7",
        "source_ip": "2001:db8::7",
        "user_agent": "cli",
    }
    assert event.request_id == "r-1"  # type: ignore[attr-defined]
    assert event.occurred_at == clock.now()  # type: ignore[attr-defined]
