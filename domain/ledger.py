"""The command side: the key-holding Ledger, with every ledger command.

Each method validates nothing itself (commands arrive validated), then loads, calls a
domain method, and saves. Library errors are translated into named domain errors. What
only reads (loading and replaying aggregates, locating damaged rows, the storage port)
is the ``LedgerReader``'s (``domain.reader``), which this extends; bulk reset campaigns
are ``domain.campaigns``'.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

from eventsourcing.application import AggregateNotFoundError, ProcessingEvent
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import IntegrityError, Recording, StoredEvent

from domain import commands as cmd
from domain.account import Account, ApiKeyIndex
from domain.attempts import CredentialAttempt
from domain.campaigns import BulkResult, ProgressCallback, ResetCampaign
from domain.context import ActorKind, Clock, RequestContext, Stamp, SystemClock
from domain.errors import (
    AccountKindError,
    ApiKeyRejectedError,
    CheckRefusedError,
    ConcurrencyConflictError,
    DamagedHistoryError,
    DuplicateAccountError,
    DuplicateUsernameError,
    LoginRefusedError,
    MalformedApiKeyError,
    UnknownApiKeyError,
    UnknownUserError,
    UserDisabledError,
)
from domain.reader import LedgerReader, LogFactory, _project, _remember
from domain.rules import MAX_PASSWORD_LENGTH
from domain.secrets import (
    ApiKeyCodec,
    KeyRing,
    PasswordHasher,
    api_secret_matches,
    provisioning_uri,
)
from domain.user import DISABLED_AFTER, CheckOutcome, LoginFailure, LoginOutcome, User
from domain.values import AccountKind, DkimKey, Role

T = TypeVar("T")
A = TypeVar("A", bound=Aggregate)


@dataclass(frozen=True)
class IssuedKey:
    """What the caller of create_api_key sees, once."""

    account: str
    key_id: str
    name: str
    scopes: list[str]
    token: str

    def __repr__(self) -> str:
        return f"IssuedKey(account={self.account!r}, key_id={self.key_id!r}, name={self.name!r})"


@dataclass(frozen=True)
class TotpEnrolment:
    username: str
    factor_id: str
    seed: str
    uri: str

    def __repr__(self) -> str:
        return f"TotpEnrolment(username={self.username!r}, factor_id={self.factor_id!r})"


@dataclass(frozen=True)
class ApiKeyPrincipal:
    account: str
    key_id: str
    name: str
    scopes: list[str]


class Ledger(LedgerReader):
    """secstate's event-sourced command side: the reader, plus keys and commands."""

    # The library names an application's tables and settings after its class unless the
    # class says otherwise: the same name as the reader's, so both read one store.
    name = LedgerReader.name

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        *,
        keyring: KeyRing,
        hasher: PasswordHasher | None = None,
        clock: Clock | None = None,
        api_key_codec: ApiKeyCodec | None = None,
        lockout_threshold: int = 5,
        max_retries: int = 5,
        bulk_batch_size: int = 5000,
        dkim_rsa_bits: int = 2048,
        totp_issuer: str = "secstate",
        api_key_use_interval: timedelta = timedelta(seconds=60),
        log: LogFactory | None = None,
    ) -> None:
        self.keyring = keyring
        self.api_key_use_interval = api_key_use_interval
        self.hasher = hasher or PasswordHasher()
        self.clock: Clock = clock or SystemClock()
        self.api_key_codec = api_key_codec or ApiKeyCodec()
        self.lockout_threshold = lockout_threshold
        self.max_retries = max_retries
        self.bulk_batch_size = bulk_batch_size
        self.dkim_rsa_bits = dkim_rsa_bits
        self.totp_issuer = totp_issuer
        self._actors: dict[uuid.UUID, tuple[int, bool]] = {}
        super().__init__(env, log=log)

    # --- plumbing -----------------------------------------------------------------

    def stamp(self, ctx: RequestContext) -> Stamp:
        return Stamp(ctx, self.clock.now())

    def _retrying(self, attempt: Callable[[], T]) -> T:
        """Rerun load-call-save on optimistic-concurrency conflicts, a bounded number of times."""
        for _ in range(self.max_retries):
            try:
                return attempt()
            except IntegrityError:
                continue
        raise ConcurrencyConflictError(
            f"gave up after {self.max_retries} attempts: other writers kept changing the "
            "same aggregate; try again"
        )

    def _check_actor(self, ctx: RequestContext) -> None:
        """Refuse any action by a disabled user or employee."""
        user_id = _acting_user_id(ctx)
        if user_id is not None and self._actor_disabled(user_id):
            raise UserDisabledError(f"actor {ctx.actor} is disabled and may not act")

    def _actor_disabled(self, user_id: uuid.UUID) -> bool:
        """Whether the user is disabled now, as the store says at this moment.

        The first time, a full load. After that, from the (version, disabled) this
        process remembers plus the user's events stored since that version, which are
        read (one query, usually returning nothing) but not decoded: their topics tell
        (DISABLED_AFTER). So a disable by another process is seen by the next check.
        """
        known = self._actors.get(user_id)
        if known is not None:
            newer = self.recorder.select_events(user_id, gt=known[0])
            return self._actor_after(
                user_id, known, [(e.originator_version, e.topic) for e in newer]
            )
        try:
            actor = self.load(User, user_id)
        except AggregateNotFoundError:
            return False  # an identity from outside the ledger (e.g. SSO); nothing to check
        _remember(self._actors, user_id, (actor.version, actor.disabled))
        return actor.disabled

    def _actor_after(
        self, user_id: uuid.UUID, known: tuple[int, bool], newer: Iterable[tuple[int, str]]
    ) -> bool:
        """Whether a remembered actor is disabled after its newer (version, topic)s."""
        version, disabled = known
        for version, topic in newer:  # noqa: B007 - the last version is the one kept
            disabled = DISABLED_AFTER.get(topic, disabled)
        if (version, disabled) != known:
            self._actors[user_id] = (version, disabled)
        return disabled

    def _checked_load(self, cls: type[A], aggregate_id: uuid.UUID, ctx: RequestContext) -> A | None:
        """_check_actor; and, where one statement can read both the actor's newer events
        and the aggregate's (both remembered, the aggregate too short for a snapshot),
        the aggregate too, sparing a round trip. None: load it the usual way."""
        user_id = _acting_user_id(ctx)
        known_actor = None if user_id is None else self._actors.get(user_id)
        known = self._loaded.get(aggregate_id)
        read = None
        if (
            user_id is not None
            and known_actor is not None
            and known is not None
            and not self._snapshot_may_exist(*known)
        ):
            read = self.log_store.actor_and_aggregate(user_id, known_actor[0], aggregate_id)
        if user_id is None or known_actor is None or read is None:
            self._check_actor(ctx)
            return None
        newer, rows = read
        if self._actor_after(user_id, known_actor, newer):
            raise UserDisabledError(f"actor {ctx.actor} is disabled and may not act")
        try:
            aggregate = _project(
                None,
                (
                    self.mapper.to_domain_event(
                        StoredEvent(
                            originator_id=aggregate_id,
                            originator_version=version,
                            topic=topic,
                            state=state,
                        )
                    )
                    for version, topic, state in rows
                ),
            )
        except DamagedHistoryError as e:
            raise self.locate(e) from None
        if not isinstance(aggregate, cls):
            return None  # absent or of another class: the usual load says which
        self._loaded[aggregate_id] = (type(aggregate), aggregate.version)
        return aggregate

    def _on_account(
        self, name: str, ctx: RequestContext, change: Callable[[Account, Stamp], T]
    ) -> T:
        loaded = self._checked_load(Account, Account.create_id(name), ctx)

        def attempt() -> T:
            nonlocal loaded
            account = loaded if loaded is not None else self.get_account(name)
            loaded = None  # a retry reloads
            result = change(account, self.stamp(ctx))
            self.save(account)
            return result

        return self._retrying(attempt)

    def _on_user(self, username: str, ctx: RequestContext, change: Callable[[User, Stamp], T]) -> T:
        loaded = self._checked_load(User, User.create_id(username), ctx)

        def attempt() -> T:
            nonlocal loaded
            user = loaded if loaded is not None else self.get_user(username)
            loaded = None  # a retry reloads
            result = change(user, self.stamp(ctx))
            self.save(user)
            return result

        return self._retrying(attempt)

    # --- accounts -----------------------------------------------------------------

    def open_account(self, c: cmd.OpenAccount, ctx: RequestContext) -> uuid.UUID:
        self._check_actor(ctx)
        if self.account_exists(c.name):
            raise DuplicateAccountError(f"an account named {c.name!r} already exists")
        account = Account.open(c.name, c.kind, c.display_name or c.name, self.stamp(ctx))
        try:
            self.save(account)
        except IntegrityError:
            raise DuplicateAccountError(f"an account named {c.name!r} already exists") from None
        return account.id

    def set_two_factor_policy(self, c: cmd.SetTwoFactorPolicy, ctx: RequestContext) -> bool:
        return self._on_account(c.account, ctx, lambda a, s: a.set_two_factor_policy(c.required, s))

    # --- users --------------------------------------------------------------------

    def register_user(self, c: cmd.RegisterUser, ctx: RequestContext) -> uuid.UUID:
        self._check_actor(ctx)
        try:
            self.get_user(c.username)
        except UnknownUserError:
            pass
        else:
            raise DuplicateUsernameError(f"username {c.username!r} is already taken")

        def attempt() -> uuid.UUID:
            account = self.get_account(c.account)
            stamp = self.stamp(ctx)
            user = User.register(account.id, c.username, c.email, c.role, stamp)
            user.set_password(c.password.get_secret_value(), self.hasher, stamp)
            account.add_member(user.id, c.username, c.role.value, stamp)
            try:
                self.save(user, account)
            except IntegrityError:
                if self._user_exists(c.username):
                    raise DuplicateUsernameError(
                        f"username {c.username!r} is already taken"
                    ) from None
                raise
            return user.id

        return self._retrying(attempt)

    def _user_exists(self, username: str) -> bool:
        try:
            self.get_user(username)
        except UnknownUserError:
            return False
        return True

    def set_password(self, c: cmd.SetPassword, ctx: RequestContext) -> None:
        self._on_user(
            c.username,
            ctx,
            lambda u, s: u.set_password(c.password.get_secret_value(), self.hasher, s),
        )

    def change_password(self, c: cmd.ChangePassword, ctx: RequestContext) -> None:
        """Change a password proving the current one; a refusal is recorded, then raised
        (CheckRefusedError), and a wrong current password counts toward the lockout."""
        self._check_secret(
            "password change",
            c.username,
            ctx,
            lambda u, s: u.change_password(
                c.current_password.get_secret_value(),
                c.new_password.get_secret_value(),
                self.hasher,
                self.lockout_threshold,
                s,
            ),
            unknown_costs=lambda: self._spend_a_check(c.current_password.get_secret_value()),
        )

    def _check_secret(
        self,
        check: str,
        username: str,
        ctx: RequestContext,
        decide: Callable[[User, Stamp], CheckOutcome],
        unknown_costs: Callable[[], object] | None = None,
    ) -> CheckOutcome:
        """Load, decide, save, whatever the decision; raise CheckRefusedError if refused.

        An unknown username is recorded as a CredentialAttempt (no user is created), after
        ``unknown_costs`` spends what checking a real user's secret would (so timing does
        not tell which usernames exist).
        """
        try:
            outcome = self._on_user(username, ctx, decide)
        except UnknownUserError:
            if unknown_costs is not None:
                unknown_costs()
            self._record_attempt(
                lambda s: CredentialAttempt.unknown_user(username, check.replace(" ", "_"), s),
                ctx,
            )
            raise CheckRefusedError(check, username, LoginFailure.UNKNOWN_USER) from None
        if not outcome.allowed:
            raise CheckRefusedError(check, username, outcome.reason or "refused")
        return outcome

    def _spend_a_check(self, password: str) -> None:
        """What checking a real user's password would cost, so timing does not tell which
        usernames exist (an oversized guess is refused unhashed for real users too)."""
        if len(password) <= MAX_PASSWORD_LENGTH:
            self.hasher.verify_nothing(password)

    def _record_attempt(
        self, make: Callable[[Stamp], CredentialAttempt], ctx: RequestContext
    ) -> None:
        """Save one refused attempt against an unknown principal (a new aggregate each)."""
        self.save(make(self.stamp(ctx)))

    def require_password_reset(self, c: cmd.RequirePasswordReset, ctx: RequestContext) -> bool:
        return self._on_user(
            c.username, ctx, lambda u, s: u.require_password_reset(c.reason, c.campaign_id, s)
        )

    def complete_password_reset(self, c: cmd.CompletePasswordReset, ctx: RequestContext) -> None:
        self._on_user(
            c.username,
            ctx,
            lambda u, s: u.complete_password_reset(
                c.new_password.get_secret_value(), self.hasher, s
            ),
        )

    def unlock_user(self, c: cmd.UnlockUser, ctx: RequestContext) -> None:
        self._on_user(c.username, ctx, lambda u, s: u.unlock(s))

    def disable_user(self, c: cmd.DisableUser, ctx: RequestContext) -> None:
        self._on_user(c.username, ctx, lambda u, s: u.disable(c.reason, s))

    def enable_user(self, c: cmd.EnableUser, ctx: RequestContext) -> None:
        self._on_user(c.username, ctx, lambda u, s: u.enable(s))

    def login(self, c: cmd.Login, ctx: RequestContext) -> LoginOutcome:
        """Decide and record a login; raises LoginRefusedError after recording a refusal."""

        def attempt() -> LoginOutcome:
            try:
                user = self.get_user(c.username)
            except UnknownUserError:
                self._spend_a_check(c.password.get_secret_value())
                self._record_attempt(
                    lambda s: CredentialAttempt.unknown_user(c.username, "login", s), ctx
                )
                return LoginOutcome(False, LoginFailure.UNKNOWN_USER)
            account = self.load(Account, user.account_id)
            outcome = user.login(
                c.password.get_secret_value(),
                totp_code=c.totp_code,
                recovery_code=c.recovery_code.get_secret_value() if c.recovery_code else None,
                two_factor_required=account.two_factor_required,
                lockout_threshold=self.lockout_threshold,
                hasher=self.hasher,
                keyring=self.keyring,
                stamp=self.stamp(ctx),
            )
            self.save(user)
            return outcome

        outcome = self._retrying(attempt)
        if not outcome.allowed:
            raise LoginRefusedError(c.username, outcome.reason or "refused")
        return outcome

    # --- bulk password resets -------------------------------------------------------

    def require_password_resets(
        self,
        c: cmd.RequirePasswordResets,
        ctx: RequestContext,
        progress: ProgressCallback | None = None,
    ) -> BulkResult:
        """Mark many users reset-required; many events per save, in batches
        (``domain.campaigns``). Idempotent per campaign."""
        return ResetCampaign(self).require_password_resets(c, ctx, progress)

    def save_chronologically(self, *aggregates: Aggregate) -> list[Recording[uuid.UUID]]:
        """``save()``, but the events of all the aggregates get log positions in the order
        they occurred, so a bulk import or replay reads chronologically in the timeline.

        Falls back to the plain order if sorting would put an aggregate's versions out of
        order (its occurred_at went backwards).
        """
        processing = ProcessingEvent[uuid.UUID]()
        processing.collect_events(*aggregates)
        by_time = sorted(processing.events, key=lambda e: e.occurred_at)  # type: ignore[attr-defined]
        last: dict[uuid.UUID, int] = {}
        for event in by_time:
            if last.get(event.originator_id, 0) > event.originator_version:
                break
            last[event.originator_id] = event.originator_version
        else:
            processing.events[:] = by_time
        recordings = self._record(processing)
        self._take_snapshots(processing)
        self._notify(recordings)
        return recordings

    # --- API keys -------------------------------------------------------------------

    def create_api_key(self, c: cmd.CreateApiKey, ctx: RequestContext) -> IssuedKey:
        self._check_actor(ctx)

        def attempt() -> IssuedKey:
            account = self.get_account(c.account)
            stamp = self.stamp(ctx)
            issued = account.create_api_key(c.name, list(c.scopes), self.api_key_codec, stamp)
            index = ApiKeyIndex.index(issued.key_id, account.id, stamp)
            self.save(account, index)
            return IssuedKey(c.account, issued.key_id, c.name, sorted(set(c.scopes)), issued.token)

        return self._retrying(attempt)

    def revoke_api_key(self, c: cmd.RevokeApiKey, ctx: RequestContext) -> None:
        self._on_account(c.account, ctx, lambda a, s: a.revoke_api_key(c.key_id, c.reason, s))

    def authenticate_api_key(
        self, c: cmd.AuthenticateApiKey, ctx: RequestContext
    ) -> ApiKeyPrincipal:
        """O(1) lookup by key id, then a constant-time comparison of the secret's hash.

        Every refusal is recorded: a malformed token or an unknown key id as a
        CredentialAttempt, a wrong secret or a revoked key on the key's ApiKeyIndex. A
        success is recorded as ApiKeyIndex.Used when it is news (first use, a new source
        IP or user agent, or ``api_key_use_interval`` after the last recorded use), so the
        key's last use is known without an event per request.
        """
        token = c.token.get_secret_value()
        try:
            presented = self.api_key_codec.parse(token)
        except MalformedApiKeyError as e:
            key_id = self.api_key_codec.key_id_of(token)
            self._record_attempt(
                lambda s: CredentialAttempt.unknown_api_key(key_id, "malformed", s), ctx
            )
            raise ApiKeyRejectedError(str(e)) from None
        index_id = ApiKeyIndex.create_id(presented.key_id)

        def attempt() -> tuple[ApiKeyPrincipal | None, str]:
            try:
                index = self.load(ApiKeyIndex, index_id)
                account = self.load(Account, index.account_id)
                key = account.get_api_key(presented.key_id)
            except (AggregateNotFoundError, UnknownApiKeyError):
                self._record_attempt(
                    lambda s: CredentialAttempt.unknown_api_key(
                        presented.key_id, "unknown_key_id", s
                    ),
                    ctx,
                )
                return None, "API key is not known"
            stamp = self.stamp(ctx)
            if not api_secret_matches(key.secret_hash, presented.key_id, presented.secret):
                index.refuse_use("bad_secret", stamp)
                self.save(index)
                return None, "API key secret does not match"
            if not key.active:
                index.refuse_use("revoked", stamp)
                self.save(index)
                return None, f"API key {key.key_id} was revoked"
            principal = ApiKeyPrincipal(account.name, key.key_id, key.name, list(key.scopes))
            if index.use_is_news(stamp, self.api_key_use_interval):
                index.record_use(stamp)
                # Another process may record a use of this key at this very moment: that
                # record stands for this use too; authentication does not wait on it.
                with contextlib.suppress(IntegrityError):
                    self.save(index)
            return principal, ""

        principal, refusal = self._retrying(attempt)
        if principal is None:
            raise ApiKeyRejectedError(refusal)
        return principal

    # --- second factors -------------------------------------------------------------

    def start_totp_enrolment(self, c: cmd.StartTotpEnrolment, ctx: RequestContext) -> TotpEnrolment:
        def change(u: User, s: Stamp) -> TotpEnrolment:
            factor_id, seed = u.start_totp_enrolment(c.label, self.keyring, s)
            return TotpEnrolment(
                u.username, factor_id, seed, provisioning_uri(seed, u.username, self.totp_issuer)
            )

        return self._on_user(c.username, ctx, change)

    def confirm_totp_enrolment(self, c: cmd.ConfirmTotpEnrolment, ctx: RequestContext) -> None:
        """A refused confirmation is recorded, then raised; a wrong code counts as a guess."""
        self._check_secret(
            "TOTP confirmation",
            c.username,
            ctx,
            lambda u, s: u.confirm_totp_enrolment(
                c.factor_id, c.code, self.keyring, self.lockout_threshold, s
            ),
        )

    def remove_second_factor(self, c: cmd.RemoveSecondFactor, ctx: RequestContext) -> None:
        self._on_user(
            c.username, ctx, lambda u, s: u.remove_second_factor(c.factor_id, c.reason, s)
        )

    def generate_recovery_codes(
        self, c: cmd.GenerateRecoveryCodes, ctx: RequestContext
    ) -> list[str]:
        return self._on_user(c.username, ctx, lambda u, s: u.generate_recovery_codes(c.count, s))

    # --- allowlist ------------------------------------------------------------------

    def add_allowlist_entry(self, c: cmd.AddAllowlistEntry, ctx: RequestContext) -> str:
        return self._on_account(
            c.account, ctx, lambda a, s: a.add_allowlist_entry(c.cidr, c.label, s)
        )

    def remove_allowlist_entry(self, c: cmd.RemoveAllowlistEntry, ctx: RequestContext) -> str:
        return self._on_account(
            c.account, ctx, lambda a, s: a.remove_allowlist_entry(c.entry, s, force=c.force)
        )

    def check_control_panel_access(
        self, c: cmd.CheckControlPanelAccess, ctx: RequestContext
    ) -> bool:
        return self._on_account(c.account, ctx, lambda a, s: a.check_control_panel_access(c.ip, s))

    # --- DKIM -----------------------------------------------------------------------

    def generate_dkim_key(self, c: cmd.GenerateDkimKey, ctx: RequestContext) -> DkimKey:
        return self._on_account(
            c.account,
            ctx,
            lambda a, s: a.generate_dkim_key(
                c.domain,
                c.selector,
                c.algorithm,
                self.keyring,
                s,
                campaign_id=c.campaign_id,
                rsa_bits=self.dkim_rsa_bits,
            ),
        )

    def publish_dkim_key(self, c: cmd.PublishDkimKey, ctx: RequestContext) -> None:
        self._on_account(c.account, ctx, lambda a, s: a.publish_dkim_key(c.domain, c.selector, s))

    def activate_dkim_key(self, c: cmd.ActivateDkimKey, ctx: RequestContext) -> list[str]:
        return self._on_account(
            c.account, ctx, lambda a, s: a.activate_dkim_key(c.domain, c.selector, s)
        )

    def retire_dkim_key(self, c: cmd.RetireDkimKey, ctx: RequestContext) -> None:
        self._on_account(
            c.account, ctx, lambda a, s: a.retire_dkim_key(c.domain, c.selector, c.reason, s)
        )

    # --- staff ----------------------------------------------------------------------

    def record_staff_access(self, c: cmd.RecordStaffAccess, ctx: RequestContext) -> None:
        for name in c.customer_accounts:
            account = self.get_account(name)
            if account.kind != AccountKind.CUSTOMER:
                raise AccountKindError(f"{name!r} is not a customer account")
        self._on_user(
            c.username,
            ctx,
            lambda u, s: u.record_internal_access(
                c.system, c.resource, c.action, c.records, list(c.customer_accounts), s
            ),
        )


def _acting_user_id(ctx: RequestContext) -> uuid.UUID | None:
    """The User id of an acting user or employee; None for other kinds of actor."""
    if ctx.actor.kind not in (ActorKind.USER, ActorKind.STAFF):
        return None
    return User.create_id(ctx.actor.id)


__all__ = ["ApiKeyPrincipal", "BulkResult", "IssuedKey", "Ledger", "Role", "TotpEnrolment"]
