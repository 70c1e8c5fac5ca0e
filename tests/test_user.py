"""User aggregate rules, given/when/then, without a store.

Every refused command must raise its named error and record nothing; refused checks of
a secret (logins, password changes, TOTP confirmations) are the exception by design:
they record the refusal with its reason, and a wrong guess counts toward the lockout.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from domain.context import Actor, ActorKind, RequestContext, Stamp
from domain.errors import (
    NotStaffError,
    PasswordResetNotRequiredError,
    PasswordResetRequiredError,
    PasswordReuseError,
    SecStateError,
    UnknownFactorError,
    UserDisabledError,
    UserLockedError,
    UserNotDisabledError,
    UserNotLockedError,
    WeakPasswordError,
)
from domain.secrets import (
    TOTP_PERIOD,
    Argon2Parameters,
    KeyRing,
    PasswordHasher,
    totp_code_at_step,
    totp_step,
)
from domain.user import LoginFailure, LoginOutcome, User
from domain.values import Role, UserStatus, natural_id

T0 = datetime(2026, 3, 1, 9, 0, 0, tzinfo=UTC)
CHEAP = Argon2Parameters(time_cost=1, memory_cost_kib=1024, parallelism=1)
HASHER = PasswordHasher(CHEAP)
KEYRING = KeyRing({"k1": KeyRing.generate_key()}, "k1")
ACCOUNT_ID = natural_id("account", "acme")
CTX = RequestContext(
    Actor(ActorKind.USER, "alice"), source_ip="198.51.100.7", user_agent="pytest/1"
)
PASSWORD = "Tr0ub4dor&3-horse"
NEW_PASSWORD = "c0rrect-b4ttery-st4ple"


def at(seconds: float = 0) -> Stamp:
    return Stamp(CTX, T0 + timedelta(seconds=seconds))


def registered(
    username: str = "alice",
    email: str = "alice@example.com",
    role: Role = Role.OWNER,
    password: str | None = PASSWORD,
) -> User:
    """A user with its setup events already collected (as if saved)."""
    user = User.register(ACCOUNT_ID, username, email, role, at())
    if password is not None:
        user.set_password(password, HASHER, at())
    user.collect_events()
    return user


def names(user: User) -> list[str]:
    """Types of the events recorded since the last call (collecting them)."""
    return [type(e).__name__ for e in user.collect_events()]


def refused(user: User, error: type[SecStateError], action: Callable[[], object]) -> str:
    """Run ``action``, expect ``error``, and check it recorded and changed nothing."""
    before = copy.deepcopy(user)
    with pytest.raises(error) as info:
        action()
    assert user.pending_events == []
    assert user == before
    return str(info.value)


def login(
    user: User,
    password: str = PASSWORD,
    *,
    seconds: float = 0,
    totp: str | None = None,
    recovery: str | None = None,
    required: bool = False,
    threshold: int = 5,
    hasher: PasswordHasher = HASHER,
) -> LoginOutcome:
    return user.login(
        password,
        totp_code=totp,
        recovery_code=recovery,
        two_factor_required=required,
        lockout_threshold=threshold,
        hasher=hasher,
        keyring=KEYRING,
        stamp=at(seconds),
    )


def enrolled(user: User, seconds: float = 0) -> tuple[str, str]:
    """Start and confirm a TOTP factor at ``seconds``; returns (factor id, seed)."""
    factor_id, seed = user.start_totp_enrolment("phone", KEYRING, at(seconds))
    code = code_at(seed, seconds)
    assert user.confirm_totp_enrolment(factor_id, code, KEYRING, 5, at(seconds)).allowed
    user.collect_events()
    return factor_id, seed


def change(user: User, current: str, new: str, seconds: float = 0, threshold: int = 5) -> Any:
    return user.change_password(current, new, HASHER, threshold, at(seconds))


def confirm(user: User, factor_id: str, code: str, seconds: float = 0) -> Any:
    return user.confirm_totp_enrolment(factor_id, code, KEYRING, 5, at(seconds))


def recorded_refusal(user: User, outcome: Any, event: str, reason: str) -> Any:
    """The outcome refused ``reason``, recorded as one ``event`` (returned)."""
    assert (outcome.allowed, outcome.reason) == (False, reason)
    [recorded] = user.collect_events()
    assert type(recorded).__name__ == event
    assert recorded.reason == reason
    return recorded


def code_at(seed: str, seconds: float, steps_ahead: int = 0) -> str:
    return totp_code_at_step(seed, totp_step(T0 + timedelta(seconds=seconds)) + steps_ahead)


def wrong_code(seed: str, seconds: float) -> str:
    """A six-digit code that matches no step of the drift window at ``seconds``."""
    window = {code_at(seed, seconds, d) for d in (-1, 0, 1)}
    return next(c for c in ("000000", "111111", "222222", "333333") if c not in window)


# --- registration and event context -------------------------------------------------------


def test_registered_user_is_active_and_every_event_carries_the_request_context() -> None:
    # given / when
    user = User.register(ACCOUNT_ID, "alice", "alice@example.com", Role.OWNER, at())
    user.set_password(PASSWORD, HASHER, at(5))
    # then
    events = user.collect_events()
    assert [type(e).__name__ for e in events] == ["Registered", "PasswordSet"]
    for event in events:
        assert event.actor_kind == "user"  # type: ignore[attr-defined]
        assert event.actor_id == "alice"  # type: ignore[attr-defined]
        assert event.source_ip == "198.51.100.7"  # type: ignore[attr-defined]
        assert event.user_agent == "pytest/1"  # type: ignore[attr-defined]
        assert event.request_id == CTX.request_id  # type: ignore[attr-defined]
    assert events[1].occurred_at == T0 + timedelta(seconds=5)  # type: ignore[attr-defined]
    assert user.id == User.create_id("ALICE")
    assert user.status is UserStatus.ACTIVE
    assert user.password_changed_at == T0 + timedelta(seconds=5)
    assert PASSWORD not in str(events[1].__dict__)


# --- password policy ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("password", "problem"),
    [
        ("Sh0rt-pass", "too short: 10 characters"),
        ("x" * 1025, "longer than 1024"),
        ("my-name-is-ALICE-ok", "must not contain the username"),
        ("x-alice@example.com-9", "must not contain the username"),
        ("xx-alison.w@example.org-9", "must not contain the email"),
        ("its-alison.w-forever", "must not contain the email name"),
        ("qwerty123456", "commonly used"),
        ("QWERTY123456", "commonly used"),
        ("abababababab", "fewer than 4 distinct"),
        ("aaaaaaaaaaaaaaaaaa1!", "fewer than 4 distinct"),
    ],
)
def test_weak_password_is_refused_with_the_reason(password: str, problem: str) -> None:
    # given a user whose email local part differs from the username
    email = "alison.w@example.org" if "alison" in password else "alice@example.com"
    user = registered(email=email, password=None)
    # when / then
    message = refused(user, WeakPasswordError, lambda: user.set_password(password, HASHER, at()))
    assert problem in message
    assert password not in message


def test_short_username_may_appear_inside_a_password() -> None:
    # Identifiers shorter than 3 characters are too common to forbid.
    user = registered(username="al", email="al@example.com", password=None)
    user.set_password("albatross-gl1de", HASHER, at())
    assert names(user) == ["PasswordSet"]


def test_setting_the_current_password_again_is_refused() -> None:
    user = registered()
    refused(user, PasswordReuseError, lambda: user.set_password(PASSWORD, HASHER, at()))


def test_set_password_replaces_the_hash() -> None:
    user = registered()
    user.set_password(NEW_PASSWORD, HASHER, at(60))
    assert names(user) == ["PasswordSet"]
    assert user.password_hash is not None
    assert HASHER.verify(user.password_hash, NEW_PASSWORD)
    assert user.password_changed_at == T0 + timedelta(seconds=60)


def test_change_password_with_the_right_current_password() -> None:
    # given
    user = registered()
    # when
    assert change(user, PASSWORD, NEW_PASSWORD, 60).allowed
    # then
    assert names(user) == ["PasswordChanged"]
    assert login(user, NEW_PASSWORD).allowed
    assert login(user, PASSWORD).reason == LoginFailure.BAD_PASSWORD


def test_a_wrong_current_password_is_recorded_and_counts_as_a_guess() -> None:
    # given
    user = registered()
    # when
    outcome = change(user, "not-the-password", NEW_PASSWORD)
    # then
    event = recorded_refusal(user, outcome, "PasswordChangeFailed", LoginFailure.BAD_PASSWORD)
    assert event.counts_toward_lockout is True
    assert user.failed_logins == 1
    assert HASHER.verify(user.password_hash or "", PASSWORD)


def test_password_change_guesses_lock_the_user_like_failed_logins() -> None:
    # given a threshold of 3, one failed login and one wrong current password
    user = registered()
    assert login(user, "wrong-1", threshold=3).reason == LoginFailure.BAD_PASSWORD
    change(user, "wrong-2", NEW_PASSWORD, threshold=3)
    user.collect_events()
    # when the third guess is a password change
    outcome = change(user, "wrong-3", NEW_PASSWORD, threshold=3)
    # then it locks the user
    assert outcome.locked_now
    assert names(user) == ["PasswordChangeFailed", "UserLocked"]
    assert user.status is UserStatus.LOCKED


@pytest.mark.parametrize(
    ("prepare", "reason"),
    [
        pytest.param(lambda u: u.disable("gone", at()), LoginFailure.USER_DISABLED, id="disabled"),
        pytest.param(
            lambda u: [login(u, f"wrong-{i}") for i in range(5)],
            LoginFailure.USER_LOCKED,
            id="locked",
        ),
        pytest.param(
            lambda u: u.require_password_reset("breach", None, at()),
            LoginFailure.RESET_REQUIRED,
            id="reset-required",
        ),
    ],
)
def test_password_change_is_refused_as_a_login_would_be_without_checking_the_password(
    prepare: Callable[[User], object], reason: str
) -> None:
    # given a disabled, locked or reset-required user
    user = registered()
    prepare(user)
    user.collect_events()
    failed = user.failed_logins
    # when the right current password is given
    outcome = change(user, PASSWORD, NEW_PASSWORD)
    # then it is refused and recorded, and the password is not even looked at
    event = recorded_refusal(user, outcome, "PasswordChangeFailed", reason)
    assert event.counts_toward_lockout is False
    assert user.failed_logins == failed
    assert HASHER.verify(user.password_hash or "", PASSWORD)


def test_change_to_the_same_password_is_refused() -> None:
    user = registered()
    refused(user, PasswordReuseError, lambda: change(user, PASSWORD, PASSWORD))


def test_change_to_a_weak_password_is_refused_before_any_guess_is_counted() -> None:
    user = registered()
    refused(user, WeakPasswordError, lambda: change(user, "not-the-password", "qwerty123456"))


def test_change_password_without_any_password_set_is_refused_and_recorded() -> None:
    user = registered(password=None)
    outcome = change(user, "", NEW_PASSWORD)
    recorded_refusal(user, outcome, "PasswordChangeFailed", LoginFailure.NO_PASSWORD)


# --- required resets ----------------------------------------------------------------------


def test_reset_required_user_cannot_log_in_until_the_reset_is_completed() -> None:
    # given a user marked by a breach campaign
    user = registered()
    assert user.require_password_reset("breach", "camp-1", at())
    assert names(user) == ["PasswordResetRequired"]
    assert user.status.value == "reset_required"
    # when logging in with the (known to the attacker) password
    outcome = login(user)
    # then it is refused and recorded, without counting as a guess
    assert (outcome.allowed, outcome.reason) == (False, LoginFailure.RESET_REQUIRED)
    assert names(user) == ["LoginFailed"]
    assert user.failed_logins == 0
    # when the reset is completed
    user.complete_password_reset(NEW_PASSWORD, HASHER, at(60))
    [event] = user.collect_events()
    assert type(event).__name__ == "PasswordResetCompleted"
    assert event.campaign_id == "camp-1"  # type: ignore[attr-defined]
    # then the new password logs in and the old one does not
    assert user.status is UserStatus.ACTIVE
    assert login(user, NEW_PASSWORD, seconds=61).allowed
    assert login(user, PASSWORD, seconds=62).reason == LoginFailure.BAD_PASSWORD


def test_reset_required_user_with_a_wrong_password_gets_bad_password() -> None:
    # The reset state is not revealed to someone who does not know the password.
    user = registered()
    user.require_password_reset("breach", None, at())
    user.collect_events()
    assert login(user, "wrong-password-1").reason == LoginFailure.BAD_PASSWORD


def test_same_campaign_marks_a_user_only_once() -> None:
    user = registered()
    assert user.require_password_reset("breach", "camp-1", at())
    user.collect_events()
    before = copy.deepcopy(user)
    assert not user.require_password_reset("breach again", "camp-1", at(1))
    assert user.pending_events == []
    assert user == before
    # another campaign marks again
    assert user.require_password_reset("second breach", "camp-2", at(2))
    assert names(user) == ["PasswordResetRequired"]
    assert user.reset_campaign_id == "camp-2"


def test_rerun_of_a_campaign_does_not_mark_again_a_user_who_completed_its_reset() -> None:
    # given a user who completed the reset the campaign asked for
    user = registered()
    user.require_password_reset("breach", "camp-1", at())
    user.complete_password_reset(NEW_PASSWORD, HASHER, at(60))
    user.collect_events()
    # when the same campaign runs again (e.g. after an interrupted run)
    before = copy.deepcopy(user)
    marked = user.require_password_reset("breach", "camp-1", at(120))
    # then the user is left alone
    assert not marked
    assert user.pending_events == []
    assert user == before
    assert login(user, NEW_PASSWORD, seconds=121).allowed


def test_completing_a_reset_nobody_required_is_refused() -> None:
    user = registered()
    refused(
        user,
        PasswordResetNotRequiredError,
        lambda: user.complete_password_reset(NEW_PASSWORD, HASHER, at()),
    )


@pytest.mark.parametrize(
    ("new", "error"),
    [(PASSWORD, PasswordReuseError), ("qwerty123456", WeakPasswordError)],
)
def test_completing_a_reset_needs_a_new_strong_password(
    new: str, error: type[SecStateError]
) -> None:
    user = registered()
    user.require_password_reset("breach", None, at())
    user.collect_events()
    refused(user, error, lambda: user.complete_password_reset(new, HASHER, at()))


# --- login and lockout --------------------------------------------------------------------


def test_successful_login_records_who_from_where() -> None:
    user = registered()
    outcome = login(user, seconds=30)
    assert outcome == LoginOutcome(True, method="password")
    [event] = user.collect_events()
    assert type(event).__name__ == "LoginSucceeded"
    assert event.method == "password"  # type: ignore[attr-defined]
    assert user.last_login_at == T0 + timedelta(seconds=30)
    assert user.last_login_ip == "198.51.100.7"


def test_bad_password_is_recorded_and_counted() -> None:
    user = registered()
    outcome = login(user, "wrong-password-1")
    assert outcome == LoginOutcome(False, LoginFailure.BAD_PASSWORD)
    [event] = user.collect_events()
    assert event.reason == "bad_password"  # type: ignore[attr-defined]
    assert event.counts_toward_lockout is True  # type: ignore[attr-defined]
    assert user.failed_logins == 1


def test_login_without_a_password_set_is_refused_without_counting() -> None:
    user = registered(password=None)
    assert login(user).reason == LoginFailure.NO_PASSWORD
    assert user.failed_logins == 0


def test_user_is_locked_after_threshold_failures_and_unlocked_by_an_admin() -> None:
    # given a threshold of 3
    user = registered()
    # when guessing wrong twice, nothing locks yet
    for i in range(2):
        assert not login(user, f"guess-number-{i}", threshold=3).locked_now
    assert names(user) == ["LoginFailed", "LoginFailed"]
    # when the third guess fails
    outcome = login(user, "guess-number-3", threshold=3)
    # then the user is locked, in the same command
    assert outcome.locked_now
    assert names(user) == ["LoginFailed", "UserLocked"]
    assert user.status is UserStatus.LOCKED
    # and even the right password is refused, without counting further
    assert login(user, threshold=3).reason == LoginFailure.USER_LOCKED
    assert names(user) == ["LoginFailed"]
    assert user.failed_logins == 3
    # when unlocked
    user.unlock(at(60))
    assert names(user) == ["UserUnlocked"]
    # then the counter is reset and the right password works
    assert user.failed_logins == 0
    assert login(user, threshold=3).allowed


def test_a_successful_login_resets_the_failure_count() -> None:
    user = registered()
    for i in range(2):
        login(user, f"guess-number-{i}", threshold=3)
    assert login(user, threshold=3).allowed
    assert user.failed_logins == 0
    for i in range(2):
        assert not login(user, f"guess-number-{i}", threshold=3).locked_now
    assert not user.locked


def test_unlocking_a_user_that_is_not_locked_is_refused() -> None:
    user = registered()
    refused(user, UserNotLockedError, lambda: user.unlock(at()))


# --- disabled users -----------------------------------------------------------------------


def test_disabled_user_cannot_log_in() -> None:
    user = registered()
    user.disable("left the company", at())
    assert names(user) == ["UserDisabled"]
    assert user.status is UserStatus.DISABLED
    outcome = login(user)
    assert outcome.reason == LoginFailure.USER_DISABLED
    assert user.failed_logins == 0


@pytest.mark.parametrize(
    "action",
    [
        pytest.param(lambda u: u.complete_password_reset(NEW_PASSWORD, HASHER, at()), id="reset"),
        pytest.param(lambda u: u.start_totp_enrolment("phone", KEYRING, at()), id="totp-start"),
        pytest.param(lambda u: u.remove_second_factor("tf_0", "x", at()), id="remove-factor"),
        pytest.param(lambda u: u.generate_recovery_codes(10, at()), id="recovery-codes"),
        pytest.param(lambda u: u.disable("again", at()), id="disable-again"),
        pytest.param(
            lambda u: u.record_internal_access("crm", "r", "read", 1, [], at()), id="staff-access"
        ),
    ],
)
def test_disabled_user_may_not_act(action: Callable[[User], object]) -> None:
    # given a disabled user with a pending reset (so only "disabled" can refuse the reset)
    user = registered(role=Role.EMPLOYEE)
    user.require_password_reset("breach", None, at())
    user.disable("left the company", at())
    user.collect_events()
    # when / then
    refused(user, UserDisabledError, lambda: action(user))


def test_enabling_restores_login() -> None:
    user = registered()
    user.disable("suspicious", at())
    user.enable(at(60))
    assert names(user) == ["UserDisabled", "UserEnabled"]
    assert login(user, seconds=61).allowed


def test_enabling_a_user_that_is_not_disabled_is_refused() -> None:
    user = registered()
    refused(user, UserNotDisabledError, lambda: user.enable(at()))


@pytest.mark.parametrize(
    ("prepare", "error"),
    [
        pytest.param(
            lambda u: [login(u, f"wrong-{i}") for i in range(5)], UserLockedError, id="locked"
        ),
        pytest.param(
            lambda u: u.require_password_reset("breach", None, at()),
            PasswordResetRequiredError,
            id="reset-required",
        ),
    ],
)
@pytest.mark.parametrize(
    "action",
    [
        pytest.param(lambda u: u.start_totp_enrolment("phone", KEYRING, at()), id="totp-start"),
        pytest.param(lambda u: u.generate_recovery_codes(10, at()), id="recovery-codes"),
    ],
)
def test_second_factors_of_a_locked_or_reset_required_user_cannot_be_added(
    prepare: Callable[[User], object],
    error: type[SecStateError],
    action: Callable[[User], object],
) -> None:
    # given: after a breach the attacker knows the password; new factors must wait
    user = registered()
    prepare(user)
    user.collect_events()
    # when / then
    refused(user, error, lambda: action(user))


# --- TOTP ---------------------------------------------------------------------------------


def test_totp_enrolment_seals_the_seed_and_only_confirmation_activates_it() -> None:
    # given
    user = registered()
    # when
    factor_id, seed = user.start_totp_enrolment("phone", KEYRING, at())
    # then the seed is sealed, bound to this user and factor
    [event] = user.collect_events()
    assert type(event).__name__ == "TotpEnrolmentStarted"
    assert seed not in str(event.__dict__)
    assert factor_id.startswith("tf_")
    assert user.factors[factor_id].sealed_secret == event.sealed_seed  # type: ignore[attr-defined]
    assert user.confirmed_factors == []
    # and an unconfirmed factor does not demand a code at login
    assert login(user).allowed
    user.collect_events()
    # when confirmed
    assert confirm(user, factor_id, code_at(seed, 0)).allowed
    # then
    assert names(user) == ["TotpEnrolmentConfirmed"]
    assert [f.factor_id for f in user.confirmed_factors] == [factor_id]


def test_confirming_with_a_wrong_code_is_recorded_and_counts_as_a_guess() -> None:
    user = registered()
    factor_id, seed = user.start_totp_enrolment("phone", KEYRING, at())
    user.collect_events()
    outcome = confirm(user, factor_id, wrong_code(seed, 0))
    event = recorded_refusal(
        user, outcome, "TotpConfirmationFailed", LoginFailure.BAD_SECOND_FACTOR
    )
    assert event.factor_id == factor_id
    assert event.counts_toward_lockout is True
    assert user.failed_logins == 1
    assert user.confirmed_factors == []


def test_confirming_an_enrolment_that_was_not_started_is_recorded_not_counted() -> None:
    user = registered()
    outcome = confirm(user, "tf_000000000000", "123456")
    event = recorded_refusal(
        user, outcome, "TotpConfirmationFailed", LoginFailure.NO_PENDING_ENROLMENT
    )
    assert event.counts_toward_lockout is False


def test_confirming_an_already_confirmed_enrolment_is_refused() -> None:
    user = registered()
    factor_id, seed = enrolled(user)
    outcome = confirm(user, factor_id, code_at(seed, 90), 90)
    recorded_refusal(user, outcome, "TotpConfirmationFailed", LoginFailure.NO_PENDING_ENROLMENT)


def test_a_locked_user_cannot_confirm_even_with_the_right_code() -> None:
    # given a started enrolment, then five wrong logins
    user = registered()
    factor_id, seed = user.start_totp_enrolment("phone", KEYRING, at())
    for i in range(5):
        login(user, f"wrong-{i}")
    user.collect_events()
    # when
    outcome = confirm(user, factor_id, code_at(seed, 0))
    # then the code is not even checked
    recorded_refusal(user, outcome, "TotpConfirmationFailed", LoginFailure.USER_LOCKED)
    assert user.confirmed_factors == []


def test_login_with_a_confirmed_factor_needs_the_code() -> None:
    user = registered()
    enrolled(user)
    outcome = login(user, seconds=60)
    assert outcome.reason == LoginFailure.SECOND_FACTOR_MISSING
    assert user.failed_logins == 0


def test_login_with_a_fresh_totp_code_succeeds() -> None:
    # given enrolled at t=0
    user = registered()
    factor_id, seed = enrolled(user)
    # when logging in a step later with that step's code
    outcome = login(user, seconds=TOTP_PERIOD, totp=code_at(seed, TOTP_PERIOD))
    # then
    assert outcome == LoginOutcome(True, method="password+totp")
    [event] = user.collect_events()
    assert event.factor_id == factor_id  # type: ignore[attr-defined]
    assert user.factors[factor_id].last_used_step == totp_step(T0) + 1


def test_totp_code_reused_in_the_same_step_is_refused_as_a_replay() -> None:
    # given a login that used this step's code
    user = registered()
    _, seed = enrolled(user)
    code = code_at(seed, TOTP_PERIOD)
    assert login(user, seconds=TOTP_PERIOD, totp=code).allowed
    user.collect_events()
    # when the same code is presented again in the same step
    outcome = login(user, seconds=TOTP_PERIOD + 5, totp=code)
    # then it is refused as a replay and counts as a guess
    assert (outcome.allowed, outcome.reason) == (False, LoginFailure.TOTP_REPLAYED)
    [event] = user.collect_events()
    assert event.reason == "totp_code_replayed"  # type: ignore[attr-defined]
    assert user.failed_logins == 1


def test_the_code_that_confirmed_the_enrolment_cannot_log_in() -> None:
    # given a factor confirmed with this step's code
    user = registered()
    _, seed = enrolled(user, seconds=0)
    # when the same code is used to log in within the same step
    outcome = login(user, seconds=10, totp=code_at(seed, 0))
    # then the confirmation consumed it
    assert outcome.reason == LoginFailure.TOTP_REPLAYED


def test_an_older_code_than_the_last_used_one_is_a_replay() -> None:
    # given a login with the next step's code (allowed by drift)
    user = registered()
    _, seed = enrolled(user, seconds=TOTP_PERIOD * 10)
    t = TOTP_PERIOD * 11
    assert login(user, seconds=t, totp=code_at(seed, t, steps_ahead=1)).allowed
    # when the current step's code comes after it
    outcome = login(user, seconds=t, totp=code_at(seed, t))
    # then it is refused: time steps only move forward
    assert outcome.reason == LoginFailure.TOTP_REPLAYED


def test_wrong_totp_code_is_a_bad_second_factor() -> None:
    user = registered()
    _, seed = enrolled(user)
    wrong = wrong_code(seed, TOTP_PERIOD)
    outcome = login(user, seconds=TOTP_PERIOD, totp=wrong)
    assert outcome.reason == LoginFailure.BAD_SECOND_FACTOR
    assert user.failed_logins == 1


def test_repeated_totp_guesses_lock_the_user() -> None:
    user = registered()
    _, seed = enrolled(user)
    wrong = wrong_code(seed, 60)
    outcomes = [login(user, seconds=60, totp=wrong, threshold=3) for _ in range(3)]
    assert outcomes[-1].locked_now
    assert user.locked


def test_account_policy_without_an_enrolled_factor_refuses_login() -> None:
    user = registered()
    outcome = login(user, required=True)
    assert outcome.reason == LoginFailure.SECOND_FACTOR_NOT_ENROLLED
    assert names(user) == ["LoginFailed"]


def test_account_policy_is_met_by_an_enrolled_factor() -> None:
    user = registered()
    _, seed = enrolled(user)
    assert login(user, seconds=60, totp=code_at(seed, 60), required=True).allowed


def test_removed_factor_no_longer_demands_a_code() -> None:
    user = registered()
    factor_id, _ = enrolled(user)
    user.remove_second_factor(factor_id, "lost phone", at(60))
    [event] = user.collect_events()
    assert type(event).__name__ == "SecondFactorRemoved"
    assert event.kind == "totp"  # type: ignore[attr-defined]
    assert login(user, seconds=61).allowed


def test_removing_an_unknown_factor_is_refused() -> None:
    user = registered()
    refused(
        user, UnknownFactorError, lambda: user.remove_second_factor("tf_000000000000", "x", at())
    )


# --- recovery codes -----------------------------------------------------------------------


def test_recovery_codes_are_stored_only_as_digests() -> None:
    user = registered()
    codes = user.generate_recovery_codes(10, at())
    [event] = user.collect_events()
    assert len(codes) == len(set(codes)) == 10
    stored = str(event.__dict__)
    for code in codes:
        assert code not in stored
        assert code.replace("-", "") not in stored
    assert user.recovery_codes is not None
    assert user.recovery_codes.remaining == 10


def test_recovery_code_logs_in_once_only() -> None:
    # given a user with a factor and recovery codes
    user = registered()
    enrolled(user)
    codes = user.generate_recovery_codes(10, at())
    user.collect_events()
    # when a code is used, typed without dashes and in capitals
    outcome = login(user, seconds=60, recovery=codes[3].replace("-", "").upper())
    # then
    assert outcome == LoginOutcome(True, method="password+recovery_code")
    assert names(user) == ["RecoveryCodeUsed", "LoginSucceeded"]
    assert user.recovery_codes is not None
    assert user.recovery_codes.remaining == 9
    # when the same code is used again
    again = login(user, seconds=120, recovery=codes[3])
    # then
    assert again.reason == LoginFailure.BAD_SECOND_FACTOR
    assert names(user) == ["LoginFailed"]
    # and another code still works
    assert login(user, seconds=180, recovery=codes[4]).allowed


def test_new_recovery_codes_replace_the_old_ones() -> None:
    user = registered()
    enrolled(user)
    old = user.generate_recovery_codes(5, at())
    new = user.generate_recovery_codes(5, at(1))
    user.collect_events()
    assert login(user, seconds=60, recovery=old[0]).reason == LoginFailure.BAD_SECOND_FACTOR
    assert login(user, seconds=60, recovery=new[0]).allowed


def test_recovery_code_without_any_generated_is_a_bad_second_factor() -> None:
    user = registered()
    enrolled(user)
    assert login(user, seconds=60, recovery="abcd-efgh-jkmn-pqrs").reason == (
        LoginFailure.BAD_SECOND_FACTOR
    )


# --- rehash on login ----------------------------------------------------------------------


def test_login_rehashes_a_password_hashed_with_old_argon2_parameters() -> None:
    # given a password hashed with the old (cheaper) parameters
    user = registered()
    old_hash = user.password_hash
    stronger = PasswordHasher(Argon2Parameters(time_cost=2, memory_cost_kib=2048, parallelism=1))
    # when logging in under the new parameters
    outcome = login(user, hasher=stronger)
    # then the hash is replaced, same password
    assert outcome.rehashed
    assert names(user) == ["LoginSucceeded", "PasswordRehashed"]
    assert user.password_hash != old_hash
    assert user.password_hash is not None
    assert not stronger.needs_rehash(user.password_hash)
    assert stronger.verify(user.password_hash, PASSWORD)
    # the password did not change, so its change time did not either
    assert user.password_changed_at == T0
    # and a second login does not rehash again
    assert not login(user, hasher=stronger).rehashed
    assert names(user) == ["LoginSucceeded"]


def test_failed_login_never_rehashes() -> None:
    user = registered()
    stronger = PasswordHasher(Argon2Parameters(time_cost=2, memory_cost_kib=2048, parallelism=1))
    outcome = login(user, "wrong-password-1", hasher=stronger)
    assert not outcome.rehashed
    assert names(user) == ["LoginFailed"]


# --- staff access -------------------------------------------------------------------------


def test_employee_access_to_an_internal_system_is_recorded() -> None:
    user = registered(username="e-042", email="e-042@staff.example", role=Role.EMPLOYEE)
    user.record_internal_access("crm", "customers", "export", 120, ["zeta", "acme", "zeta"], at())
    [event] = user.collect_events()
    assert type(event).__name__ == "InternalSystemAccessed"
    assert event.customer_accounts == ["acme", "zeta"]  # type: ignore[attr-defined]
    assert event.records == 120  # type: ignore[attr-defined]


@pytest.mark.parametrize("role", [Role.OWNER, Role.TEAMMATE])
def test_only_employees_access_internal_systems(role: Role) -> None:
    user = registered(role=role)
    refused(
        user,
        NotStaffError,
        lambda: user.record_internal_access("crm", "customers", "read", 1, [], at()),
    )


def test_user_ids_are_natural_and_case_insensitive() -> None:
    assert User.create_id(" Alice ") == User.create_id("alice") == natural_id("user", "alice")
    assert User.create_id("alice") != User.create_id("alice2")
    assert isinstance(User.create_id("alice"), uuid.UUID)
