"""The User aggregate: one login identity (owner, teammate or staff employee)."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from eventsourcing.domain import Aggregate

from domain.context import Stamp
from domain.errors import (
    NotStaffError,
    PasswordResetNotRequiredError,
    PasswordResetRequiredError,
    UnknownFactorError,
    UserDisabledError,
    UserLockedError,
    UserNotDisabledError,
    UserNotLockedError,
)
from domain.rules import MAX_PASSWORD_LENGTH, check_not_current_password, check_password_strength
from domain.secrets import (
    KeyRing,
    PasswordHasher,
    hash_recovery_code,
    match_totp_step,
    new_recovery_code,
    new_totp_seed,
)
from domain.values import (
    ContextEvent,
    FactorKind,
    RecoveryCodes,
    Role,
    SecondFactor,
    UserStatus,
    natural_id,
)


class LoginFailure:
    """Reasons a check of a user's secret is refused (stored as text in the refusal)."""

    BAD_PASSWORD = "bad_password"  # noqa: S105 - a reason code, not a password
    USER_LOCKED = "user_locked"
    USER_DISABLED = "user_disabled"
    RESET_REQUIRED = "password_reset_required"
    SECOND_FACTOR_MISSING = "second_factor_missing"
    SECOND_FACTOR_NOT_ENROLLED = "second_factor_required_but_not_enrolled"
    BAD_SECOND_FACTOR = "bad_second_factor"
    TOTP_REPLAYED = "totp_code_replayed"
    NO_PASSWORD = "no_password_set"  # noqa: S105 - a reason code, not a password
    NO_PENDING_ENROLMENT = "no_pending_enrolment"
    UNKNOWN_USER = "unknown_user"


# Failures that count towards the lockout threshold: guesses at a secret.
_GUESSES = {LoginFailure.BAD_PASSWORD, LoginFailure.BAD_SECOND_FACTOR, LoginFailure.TOTP_REPLAYED}


@dataclass(frozen=True)
class CheckOutcome:
    """The decision of a check of a user's secret (a login, a password change, ...)."""

    allowed: bool
    reason: str | None = None
    method: str | None = None
    locked_now: bool = False
    rehashed: bool = False


LoginOutcome = CheckOutcome


@dataclass(frozen=True)
class ResetStatus:
    """What the reset-campaign rule reads of a user."""

    required: bool = False
    campaign_id: str | None = None
    campaigns: tuple[str, ...] = ()

    def campaign_should_mark(self, campaign_id: str | None) -> bool:
        if campaign_id is not None and campaign_id in self.campaigns:
            return False
        return not (self.required and self.campaign_id == campaign_id)

    def after(self, event: Any) -> ResetStatus:
        """The status once ``event`` (a reset required or completed) is applied."""
        if isinstance(event, User.PasswordResetRequired):
            return self.after_reset(True, event.campaign_id)
        if isinstance(event, User.PasswordResetCompleted):
            return self.after_reset(False, None)
        return self

    def after_reset(self, required: bool, campaign_id: str | None) -> ResetStatus:
        """The status once a reset is required (by ``campaign_id``) or completed."""
        if not required:
            return ResetStatus(False, None, self.campaigns)
        campaigns = self.campaigns
        if campaign_id is not None and campaign_id not in campaigns:
            campaigns = (*campaigns, campaign_id)
        return ResetStatus(True, campaign_id, campaigns)


def _may_be_password(text: str) -> bool:
    """Longer than any password the policy lets be set: a wrong guess without hashing it
    (still recorded and counted), so an oversized guess costs no argon2 time."""
    return len(text) <= MAX_PASSWORD_LENGTH


def totp_aad(user_id: uuid.UUID, factor_id: str) -> bytes:
    return f"totp:{user_id}:{factor_id}".encode()


class User(Aggregate):
    TOPIC = "secstate.User"

    class Event(ContextEvent):
        TOPIC = "secstate.User.Event"

    class Registered(Event, Aggregate.Created):
        TOPIC = "secstate.User.Registered"
        class_version = 1
        account_id: uuid.UUID
        username: str
        email: str
        role: str

        def apply(self, user: User) -> None:
            user.account_id = self.account_id
            user.username = self.username
            user.email = self.email
            user.role = self.role
            user.registered_at = self.occurred_at
            user.password_hash = None
            user.password_changed_at = None
            user.reset_required = False
            user.reset_reason = None
            user.reset_campaign_id = None
            user.reset_campaigns = []
            user.locked = False
            user.disabled = False
            user.failed_logins = 0
            user.factors = {}
            user.recovery_codes = None
            user.last_login_at = None
            user.last_login_ip = None

    class PasswordSet(Event):
        """An administrator or the registration flow set the password."""

        TOPIC = "secstate.User.PasswordSet"
        class_version = 1
        password_hash: str

        def apply(self, user: User) -> None:
            user.password_hash = self.password_hash
            user.password_changed_at = self.occurred_at

    class PasswordChanged(Event):
        """The user changed the password, proving the current one."""

        TOPIC = "secstate.User.PasswordChanged"
        class_version = 1
        password_hash: str

        def apply(self, user: User) -> None:
            user.password_hash = self.password_hash
            user.password_changed_at = self.occurred_at

    class PasswordRehashed(Event):
        """Same password, hashed again with the current argon2 parameters on login."""

        TOPIC = "secstate.User.PasswordRehashed"
        class_version = 1
        password_hash: str

        def apply(self, user: User) -> None:
            user.password_hash = self.password_hash

    class PasswordResetRequired(Event):
        TOPIC = "secstate.User.PasswordResetRequired"
        class_version = 1
        reason: str
        campaign_id: str | None

        def apply(self, user: User) -> None:
            user.reset_required = True
            user.reset_reason = self.reason
            user.reset_campaign_id = self.campaign_id
            if self.campaign_id is not None and self.campaign_id not in user.reset_campaigns:
                user.reset_campaigns.append(self.campaign_id)

    class PasswordResetCompleted(Event):
        TOPIC = "secstate.User.PasswordResetCompleted"
        class_version = 1
        password_hash: str
        campaign_id: str | None

        def apply(self, user: User) -> None:
            user.password_hash = self.password_hash
            user.password_changed_at = self.occurred_at
            user.reset_required = False
            user.reset_reason = None
            user.reset_campaign_id = None

    class LoginSucceeded(Event):
        TOPIC = "secstate.User.LoginSucceeded"
        class_version = 1
        method: str
        factor_id: str | None
        totp_step: int | None

        def apply(self, user: User) -> None:
            user.failed_logins = 0
            user.last_login_at = self.occurred_at
            user.last_login_ip = self.source_ip
            if self.factor_id is not None and self.totp_step is not None:
                user.factors[self.factor_id].last_used_step = self.totp_step

    class LoginFailed(Event):
        TOPIC = "secstate.User.LoginFailed"
        class_version = 1
        reason: str
        counts_toward_lockout: bool

        def apply(self, user: User) -> None:
            if self.counts_toward_lockout:
                user.failed_logins += 1

    class PasswordChangeFailed(Event):
        """A password change was refused; a wrong current password counts as a guess."""

        TOPIC = "secstate.User.PasswordChangeFailed"
        class_version = 1
        reason: str
        counts_toward_lockout: bool

        def apply(self, user: User) -> None:
            if self.counts_toward_lockout:
                user.failed_logins += 1

    class TotpConfirmationFailed(Event):
        """A TOTP enrolment was not confirmed; a wrong code counts as a guess."""

        TOPIC = "secstate.User.TotpConfirmationFailed"
        class_version = 1
        factor_id: str
        reason: str
        counts_toward_lockout: bool

        def apply(self, user: User) -> None:
            if self.counts_toward_lockout:
                user.failed_logins += 1

    class UserLocked(Event):
        TOPIC = "secstate.User.UserLocked"
        class_version = 1
        failed_logins: int

        def apply(self, user: User) -> None:
            user.locked = True

    class UserUnlocked(Event):
        TOPIC = "secstate.User.UserUnlocked"
        class_version = 1

        def apply(self, user: User) -> None:
            user.locked = False
            user.failed_logins = 0

    class UserDisabled(Event):
        TOPIC = "secstate.User.UserDisabled"
        class_version = 1
        reason: str

        def apply(self, user: User) -> None:
            user.disabled = True

    class UserEnabled(Event):
        TOPIC = "secstate.User.UserEnabled"
        class_version = 1

        def apply(self, user: User) -> None:
            user.disabled = False

    class TotpEnrolmentStarted(Event):
        TOPIC = "secstate.User.TotpEnrolmentStarted"
        class_version = 1
        factor_id: str
        label: str
        sealed_seed: str

        def apply(self, user: User) -> None:
            user.factors[self.factor_id] = SecondFactor(
                factor_id=self.factor_id,
                kind=FactorKind.TOTP.value,
                label=self.label,
                sealed_secret=self.sealed_seed,
                started_at=self.occurred_at,
            )

    class TotpEnrolmentConfirmed(Event):
        TOPIC = "secstate.User.TotpEnrolmentConfirmed"
        class_version = 1
        factor_id: str
        totp_step: int

        def apply(self, user: User) -> None:
            factor = user.factors[self.factor_id]
            factor.confirmed_at = self.occurred_at
            factor.last_used_step = self.totp_step

    class SecondFactorRemoved(Event):
        TOPIC = "secstate.User.SecondFactorRemoved"
        class_version = 1
        factor_id: str
        kind: str
        reason: str

        def apply(self, user: User) -> None:
            del user.factors[self.factor_id]

    class RecoveryCodesGenerated(Event):
        TOPIC = "secstate.User.RecoveryCodesGenerated"
        class_version = 1
        code_hashes: list[str]

        def apply(self, user: User) -> None:
            user.recovery_codes = RecoveryCodes(self.occurred_at, list(self.code_hashes))

    class RecoveryCodeUsed(Event):
        TOPIC = "secstate.User.RecoveryCodeUsed"
        class_version = 1
        index: int

        def apply(self, user: User) -> None:
            if user.recovery_codes is None:
                raise ValueError("a recovery code was used but none were generated")
            user.recovery_codes.hashes[self.index] = None

    class InternalSystemAccessed(Event):
        """A staff employee read or changed an internal system: the breach trail."""

        TOPIC = "secstate.User.InternalSystemAccessed"
        class_version = 1
        system: str
        resource: str
        action: str
        records: int
        customer_accounts: list[str]

        def apply(self, user: User) -> None:
            pass

    # Set by the events above; declared only for type checkers, since class-level
    # annotations would make the library build a dataclass __init__ from them.
    if TYPE_CHECKING:
        account_id: uuid.UUID
        username: str
        email: str
        role: str
        registered_at: datetime
        password_hash: str | None
        password_changed_at: datetime | None
        reset_required: bool
        reset_reason: str | None
        reset_campaign_id: str | None
        reset_campaigns: list[str]  # every campaign that ever marked the user
        locked: bool
        disabled: bool
        failed_logins: int
        factors: dict[str, SecondFactor]
        recovery_codes: RecoveryCodes | None
        last_login_at: datetime | None
        last_login_ip: str | None

    @staticmethod
    def create_id(username: str) -> uuid.UUID:
        return natural_id("user", username.strip().lower())

    @classmethod
    def register(
        cls, account_id: uuid.UUID, username: str, email: str, role: Role, stamp: Stamp
    ) -> User:
        return cls._create(
            cls.Registered,
            account_id=account_id,
            username=username,
            email=email,
            role=role.value,
            **stamp.fields(),
        )

    def _emit(self, event_class: type[User.Event], stamp: Stamp, **fields: Any) -> None:
        self.trigger_event(event_class, **stamp.fields(), **fields)

    @property
    def status(self) -> UserStatus:
        if self.disabled:
            return UserStatus.DISABLED
        if self.locked:
            return UserStatus.LOCKED
        if self.reset_required:
            return UserStatus.RESET_REQUIRED
        return UserStatus.ACTIVE

    @property
    def confirmed_factors(self) -> list[SecondFactor]:
        return [f for f in self.factors.values() if f.confirmed]

    def check_not_disabled(self) -> None:
        if self.disabled:
            raise UserDisabledError(f"user {self.username!r} is disabled")

    # --- passwords ------------------------------------------------------------------

    def set_password(self, password: str, hasher: PasswordHasher, stamp: Stamp) -> None:
        check_password_strength(password, self.username, self.email)
        if self.password_hash is not None:
            check_not_current_password(hasher.verify(self.password_hash, password))
        self._emit(self.PasswordSet, stamp, password_hash=hasher.hash(password))

    def check_in_good_standing(self) -> None:
        """Refuse changes to the second factors of a disabled, locked or reset-required user."""
        self.check_not_disabled()
        if self.locked:
            raise UserLockedError(f"user {self.username!r} is locked; unlock the user first")
        if self.reset_required:
            raise PasswordResetRequiredError(
                f"user {self.username!r} must complete the required password reset first"
            )

    def _refusal_before_checking(self) -> str | None:
        """Why any check of this user's secrets is refused before a secret is looked at.

        After a breach the current password is known to the attacker, so a user who
        must reset proves nothing with it.
        """
        if self.disabled:
            return LoginFailure.USER_DISABLED
        if self.locked:
            return LoginFailure.USER_LOCKED
        if self.reset_required:
            return LoginFailure.RESET_REQUIRED
        return None

    def change_password(
        self,
        current: str,
        new: str,
        hasher: PasswordHasher,
        lockout_threshold: int,
        stamp: Stamp,
    ) -> CheckOutcome:
        """Check the current password and change it; a refusal is recorded, not raised.

        The new password's strength is checked first: a weak choice costs no guess.
        """
        check_password_strength(new, self.username, self.email)
        stored = self.password_hash
        reason = self._refusal_before_checking()
        if reason is None and stored is None:
            reason = LoginFailure.NO_PASSWORD
        if (
            reason is None
            and stored is not None
            and not (_may_be_password(current) and hasher.verify(stored, current))
        ):
            reason = LoginFailure.BAD_PASSWORD
        if reason is not None or stored is None:
            return self._fail(
                reason or LoginFailure.NO_PASSWORD,
                lockout_threshold,
                stamp,
                self.PasswordChangeFailed,
            )
        check_not_current_password(current == new or hasher.verify(stored, new))
        self._emit(self.PasswordChanged, stamp, password_hash=hasher.hash(new))
        return CheckOutcome(True)

    def require_password_reset(self, reason: str, campaign_id: str | None, stamp: Stamp) -> bool:
        """False, recording nothing, if this campaign already marked the user.

        Also after the user completed that reset: rerunning an interrupted campaign
        must not force a second reset on users who already did it.
        """
        status = ResetStatus(
            self.reset_required, self.reset_campaign_id, tuple(self.reset_campaigns)
        )
        if not status.campaign_should_mark(campaign_id):
            return False
        self._emit(self.PasswordResetRequired, stamp, reason=reason, campaign_id=campaign_id)
        return True

    @classmethod
    def reset_required_events(
        cls,
        users: Iterable[tuple[uuid.UUID, int, ResetStatus]],
        reason: str,
        campaign_id: str | None,
        stamp: Stamp,
    ) -> list[User.PasswordResetRequired]:
        """The bulk campaign's form of require_password_reset, for users known only by
        (id, version, ResetStatus), folded from the log without loading them.

        The events share one timestamp as well as the stamp, so they differ only in
        originator id and version, which are columns, not stored state: the ledger
        encodes their state once. Each after the first is a copy of the first, as
        building a frozen dataclass through __init__ costs ~10 us an event.
        """
        events: list[User.PasswordResetRequired] = []
        first: dict[str, Any] | None = None
        new = object.__new__
        event_class = cls.PasswordResetRequired
        for user_id, version, status in users:
            if not status.campaign_should_mark(campaign_id):
                continue
            if first is None:
                event = event_class(  # type: ignore[call-arg]
                    originator_id=user_id,
                    originator_version=version + 1,
                    timestamp=event_class.create_timestamp(),
                    reason=reason,
                    campaign_id=campaign_id,
                    **stamp.fields(),
                )
                first = vars(event)
            else:
                event = new(event_class)
                state = vars(event)
                state.update(first)
                state["originator_id"] = user_id
                state["originator_version"] = version + 1
            events.append(event)
        return events

    def complete_password_reset(self, new: str, hasher: PasswordHasher, stamp: Stamp) -> None:
        self.check_not_disabled()
        if not self.reset_required:
            raise PasswordResetNotRequiredError(
                f"user {self.username!r} has no pending password reset"
            )
        check_password_strength(new, self.username, self.email)
        if self.password_hash is not None:
            check_not_current_password(hasher.verify(self.password_hash, new))
        self._emit(
            self.PasswordResetCompleted,
            stamp,
            password_hash=hasher.hash(new),
            campaign_id=self.reset_campaign_id,
        )

    # --- login ------------------------------------------------------------------------

    def login(
        self,
        password: str,
        *,
        totp_code: str | None,
        recovery_code: str | None,
        two_factor_required: bool,
        lockout_threshold: int,
        hasher: PasswordHasher,
        keyring: KeyRing,
        stamp: Stamp,
    ) -> LoginOutcome:
        """Decide a login and record the decision (success or the failure's reason)."""
        if self.disabled:
            return self._fail(LoginFailure.USER_DISABLED, lockout_threshold, stamp)
        if self.locked:
            return self._fail(LoginFailure.USER_LOCKED, lockout_threshold, stamp)
        if self.password_hash is None:
            return self._fail(LoginFailure.NO_PASSWORD, lockout_threshold, stamp)
        if not _may_be_password(password) or not hasher.verify(self.password_hash, password):
            return self._fail(LoginFailure.BAD_PASSWORD, lockout_threshold, stamp)
        if self.reset_required:
            return self._fail(LoginFailure.RESET_REQUIRED, lockout_threshold, stamp)

        method, factor_id, step = "password", None, None
        factors = self.confirmed_factors
        if factors or two_factor_required:
            if not factors:
                return self._fail(LoginFailure.SECOND_FACTOR_NOT_ENROLLED, lockout_threshold, stamp)
            if totp_code:
                matched = self._match_totp(totp_code, keyring, stamp.occurred_at)
                if matched is None:
                    return self._fail(LoginFailure.BAD_SECOND_FACTOR, lockout_threshold, stamp)
                factor, step = matched
                if factor.last_used_step is not None and step <= factor.last_used_step:
                    return self._fail(LoginFailure.TOTP_REPLAYED, lockout_threshold, stamp)
                method, factor_id = "password+totp", factor.factor_id
            elif recovery_code:
                index = self._match_recovery_code(recovery_code)
                if index is None:
                    return self._fail(LoginFailure.BAD_SECOND_FACTOR, lockout_threshold, stamp)
                self._emit(self.RecoveryCodeUsed, stamp, index=index)
                method = "password+recovery_code"
            else:
                return self._fail(LoginFailure.SECOND_FACTOR_MISSING, lockout_threshold, stamp)

        self._emit(self.LoginSucceeded, stamp, method=method, factor_id=factor_id, totp_step=step)
        rehashed = False
        if hasher.needs_rehash(self.password_hash):
            self._emit(self.PasswordRehashed, stamp, password_hash=hasher.hash(password))
            rehashed = True
        return LoginOutcome(True, method=method, rehashed=rehashed)

    def _fail(
        self,
        reason: str,
        lockout_threshold: int,
        stamp: Stamp,
        refusal: type[User.Event] | None = None,
        **fields: Any,
    ) -> CheckOutcome:
        """Record a refused check (a LoginFailed unless ``refusal`` says which event); a
        guess counts toward the lockout, and the one that reaches it locks the user."""
        counts = reason in _GUESSES
        self._emit(
            refusal or self.LoginFailed,
            stamp,
            reason=reason,
            counts_toward_lockout=counts,
            **fields,
        )
        if counts and not self.locked and self.failed_logins >= lockout_threshold:
            self._emit(self.UserLocked, stamp, failed_logins=self.failed_logins)
            return CheckOutcome(False, reason, locked_now=True)
        return CheckOutcome(False, reason)

    def _match_totp(
        self, code: str, keyring: KeyRing, moment: datetime
    ) -> tuple[SecondFactor, int] | None:
        for factor in self.confirmed_factors:
            if factor.kind != FactorKind.TOTP:
                continue
            seed = keyring.open(factor.sealed_secret, totp_aad(self.id, factor.factor_id))
            step = match_totp_step(seed.decode(), code, moment)
            if step is not None:
                return factor, step
        return None

    def _match_recovery_code(self, code: str) -> int | None:
        if self.recovery_codes is None:
            return None
        wanted = hash_recovery_code(code)
        found = None
        for i, stored in enumerate(self.recovery_codes.hashes):
            if stored is not None and secrets.compare_digest(stored, wanted):
                found = i
        return found

    def unlock(self, stamp: Stamp) -> None:
        if not self.locked:
            raise UserNotLockedError(f"user {self.username!r} is not locked")
        self._emit(self.UserUnlocked, stamp)

    def disable(self, reason: str, stamp: Stamp) -> None:
        self.check_not_disabled()
        self._emit(self.UserDisabled, stamp, reason=reason)

    def enable(self, stamp: Stamp) -> None:
        if not self.disabled:
            raise UserNotDisabledError(f"user {self.username!r} is not disabled")
        self._emit(self.UserEnabled, stamp)

    # --- second factors --------------------------------------------------------------

    def start_totp_enrolment(self, label: str, keyring: KeyRing, stamp: Stamp) -> tuple[str, str]:
        """Returns (factor id, seed). Show the seed once; only its sealed form is stored."""
        self.check_in_good_standing()
        factor_id = "tf_" + secrets.token_hex(6)
        seed = new_totp_seed()
        sealed = keyring.seal(seed.encode(), totp_aad(self.id, factor_id))
        self._emit(
            self.TotpEnrolmentStarted, stamp, factor_id=factor_id, label=label, sealed_seed=sealed
        )
        return factor_id, seed

    def confirm_totp_enrolment(
        self, factor_id: str, code: str, keyring: KeyRing, lockout_threshold: int, stamp: Stamp
    ) -> CheckOutcome:
        """Check a code from the new authenticator; a refusal is recorded, not raised."""
        reason = self._refusal_before_checking()
        factor = self.factors.get(factor_id)
        step = None
        if reason is None and (factor is None or factor.confirmed):
            reason = LoginFailure.NO_PENDING_ENROLMENT
        if reason is None and factor is not None:
            seed = keyring.open(factor.sealed_secret, totp_aad(self.id, factor_id))
            step = match_totp_step(seed.decode(), code, stamp.occurred_at)
            if step is None:
                reason = LoginFailure.BAD_SECOND_FACTOR
        if reason is not None or step is None:
            return self._fail(
                reason or LoginFailure.BAD_SECOND_FACTOR,
                lockout_threshold,
                stamp,
                self.TotpConfirmationFailed,
                factor_id=factor_id,
            )
        self._emit(self.TotpEnrolmentConfirmed, stamp, factor_id=factor_id, totp_step=step)
        return CheckOutcome(True, method="totp", rehashed=False)

    def remove_second_factor(self, factor_id: str, reason: str, stamp: Stamp) -> None:
        self.check_not_disabled()
        factor = self.factors.get(factor_id)
        if factor is None:
            raise UnknownFactorError(f"user {self.username!r} has no second factor {factor_id!r}")
        self._emit(
            self.SecondFactorRemoved, stamp, factor_id=factor_id, kind=factor.kind, reason=reason
        )

    def generate_recovery_codes(self, count: int, stamp: Stamp) -> list[str]:
        """Returns the codes once; only their digests are stored. Replaces older codes."""
        self.check_in_good_standing()
        codes = [new_recovery_code() for _ in range(count)]
        self._emit(
            self.RecoveryCodesGenerated, stamp, code_hashes=[hash_recovery_code(c) for c in codes]
        )
        return codes

    # --- staff ----------------------------------------------------------------------------

    def record_internal_access(
        self,
        system: str,
        resource: str,
        action: str,
        records: int,
        customer_accounts: list[str],
        stamp: Stamp,
    ) -> None:
        self.check_not_disabled()
        if self.role != Role.EMPLOYEE:
            raise NotStaffError(
                f"user {self.username!r} is not a staff employee; only employees access "
                "internal systems"
            )
        self._emit(
            self.InternalSystemAccessed,
            stamp,
            system=system,
            resource=resource,
            action=action,
            records=records,
            customer_accounts=sorted(set(customer_accounts)),
        )


# The only events after registration that change User.disabled, and what they set it to:
# enough to follow whether a user is disabled from event topics alone (the ledger's
# check of the acting user). A test keeps this in step with the events' apply methods.
DISABLED_AFTER: dict[str, bool] = {User.UserDisabled.TOPIC: True, User.UserEnabled.TOPIC: False}
