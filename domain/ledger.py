"""The command side: one eventsourcing Application exposing every ledger command.

Each method validates nothing itself (commands arrive validated), then loads, calls a
domain method, and saves. Library errors are translated into named domain errors.
"""

from __future__ import annotations

import contextlib
import functools
import json
import uuid
from collections.abc import (
    Callable,
    Collection,
    Container,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, fields
from datetime import timedelta
from typing import Any, ClassVar, LiteralString, TypeVar

from eventsourcing.application import AggregateNotFoundError, Application, ProcessingEvent
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import (
    IntegrityError,
    JSONTranscoder,
    Mapper,
    Recording,
    StoredEvent,
    Transcoding,
)
from eventsourcing.sqlite import SQLiteAggregateRecorder, SQLiteApplicationRecorder

from domain import commands as cmd
from domain.account import Account, ApiKeyIndex
from domain.attempts import CredentialAttempt
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
    UnknownAccountError,
    UnknownApiKeyError,
    UnknownUserError,
    UserDisabledError,
)
from domain.mapper import TrustedMapper
from domain.replay import replay
from domain.rules import MAX_PASSWORD_LENGTH
from domain.secrets import (
    ApiKeyCodec,
    KeyRing,
    PasswordHasher,
    api_secret_matches,
    provisioning_uri,
)
from domain.user import DISABLED_AFTER, CheckOutcome, LoginFailure, LoginOutcome, ResetStatus, User
from domain.values import VALUE_TYPES, AccountKind, DkimKey, Role

T = TypeVar("T")
K = TypeVar("K")
V = TypeVar("V")
A = TypeVar("A", bound=Aggregate)

USER_TOPIC_PREFIX = "secstate.User."
ACCOUNT_TOPIC_PREFIX = "secstate.Account."


def _dataclass_transcoding(cls: type) -> Transcoding:
    names = [f.name for f in fields(cls)]

    class _Transcoding(Transcoding):
        type = cls
        name = f"secstate.{cls.__name__}"

        def encode(self, obj: Any) -> dict[str, Any]:
            return {n: getattr(obj, n) for n in names}

        def decode(self, data: dict[str, Any]) -> Any:
            return cls(**data)

    return _Transcoding()


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


@dataclass(frozen=True)
class BulkResult:
    targeted: int
    marked: int
    already_marked: int
    batches: int


ProgressCallback = Callable[[int, int], None]

# Bulk commands rebuild their targets from one read of the log rather than a get each
# once there is a target per this many events in the log. Measured with 20,000 targets
# in a log of 1.06M events: a get each costs ~160 us a target on SQLite, ~400 us on
# PostgreSQL (with the save); the read ~0.55 us an event of the log on either, and
# storing the marks directly ~30 us a target. Break-even: ~250 (SQLite) to ~600
# (PostgreSQL) events per target; see docs/benchmarks.md.
_EVENTS_PER_GET = 200
_NO_RESET = ResetStatus()
_COLUMNS = ("originator_id", "originator_version")  # of an event, stored outside its state
_NO_ID = uuid.UUID(int=0)  # for decoding a state shared by many users' events
# Aggregates whose class and version (or, for acting users, version and disabled) this
# process remembers; beyond this many, the oldest entry goes: forgetting costs one more
# query on the next load, nothing more.
_REMEMBERED_MAX = 10_000
# Distinct reset-event states (and steps of the reset status) a campaign's read of the
# log remembers: a campaign's batch stores one state.
_DECODED_STATES_MAX = 4096


# The library's project_aggregate asserts a runtime protocol on every event (~40 us per
# replayed event on Python 3.11, more than decoding it); ``replay`` checks instead that
# each event fits the history (versions, class), which costs ~1 us.
_project = replay


class Ledger(Application[uuid.UUID]):
    """secstate's event-sourced command side."""

    name = "secstate"
    snapshotting_intervals: ClassVar[dict[Any, int]] = {User: 100, Account: 100, ApiKeyIndex: 100}
    snapshotting_projectors: ClassVar[dict[Any, Any]] = {
        User: _project,
        Account: _project,
        ApiKeyIndex: _project,
    }

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
        self._loaded: dict[uuid.UUID, tuple[type, int]] = {}
        super().__init__(env)

    def construct_mapper(self) -> Mapper[uuid.UUID]:
        """The trusted mapper: stored topics resolve only to the catalogue's classes."""
        return self.factory.mapper(
            transcoder=self.construct_transcoder(), mapper_class=TrustedMapper
        )

    def register_transcodings(self, transcoder: JSONTranscoder) -> None:
        super().register_transcodings(transcoder)
        for value_type in VALUE_TYPES:
            transcoder.register(_dataclass_transcoding(value_type))

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

    def load(self, cls: type[A], aggregate_id: uuid.UUID) -> A:
        """Get an aggregate of a known class; AggregateNotFoundError if absent.

        The library's get asks for a snapshot first, a query of its own. Where this
        process last saw the aggregate too short to have one (below its class's
        snapshotting interval, or of a class never snapshotted), its events alone are
        read. That is correct whatever happened since, as a snapshot only shortens the
        replay: an aggregate grown past the interval meanwhile is replayed in full
        once, and the next load uses its snapshot.
        """
        aggregate: Any
        known = self._loaded.get(aggregate_id)
        try:
            if known is not None and not self._snapshot_may_exist(*known):
                aggregate = _project(None, self.events.get(aggregate_id))
                if aggregate is None:
                    raise AggregateNotFoundError(aggregate_id)
            else:
                aggregate = self.repository.get(aggregate_id, projector_func=_project)
        except DamagedHistoryError as e:
            raise self.locate(e) from None
        if not isinstance(aggregate, cls):
            raise self.locate(
                DamagedHistoryError(
                    f"the aggregate is a {type(aggregate).__name__}, where a {cls.__name__} "
                    "was expected",
                    originator_id=aggregate_id,
                    originator_version=1,
                    topic=None,
                )
            )
        if known is None:
            _remember(self._loaded, aggregate_id, (type(aggregate), aggregate.version))
        elif known[1] != aggregate.version:
            self._loaded[aggregate_id] = (type(aggregate), aggregate.version)
        return aggregate

    def locate(self, error: DamagedHistoryError) -> DamagedHistoryError:
        """``error`` naming the log position of the row it is about, where one exists."""
        if error.position is not None or error.snapshot or error.originator_version is None:
            return error
        try:
            originator = (
                error.originator_id
                if isinstance(error.originator_id, uuid.UUID)
                else uuid.UUID(str(error.originator_id))
            )
            return error.at_position(self._position_of(originator, error.originator_version))
        except Exception:  # the store is damaged already: say what we know
            return error

    def _position_of(self, originator_id: uuid.UUID, version: int) -> int | None:
        """The notification id of an aggregate's version (None: no such row)."""
        recorder: Any = self.recorder
        if isinstance(recorder, SQLiteApplicationRecorder):
            with recorder.datastore.transaction(commit=False) as cursor:
                cursor.execute(
                    f"SELECT rowid FROM {recorder.events_table_name} "  # noqa: S608 - the recorder's table
                    "WHERE originator_id = ? AND originator_version = ?",
                    [originator_id.hex, version],
                )
                row = cursor.fetchone()
            return int(row[0]) if row else None
        postgres = _postgres_recorder_class()
        if postgres is not None and isinstance(recorder, postgres):
            rows = _postgres_rows(
                recorder,
                "SELECT notification_id FROM {events} "
                "WHERE originator_id = %s AND originator_version = %s",
                [originator_id, version],
            )
            return int(rows[0][0]) if rows else None
        return None

    def _snapshot_may_exist(self, cls: type, version: int) -> bool:
        interval = self.snapshotting_intervals.get(cls)
        return interval is not None and version >= interval

    def get_account(self, name: str) -> Account:
        try:
            return self.load(Account, Account.create_id(name))
        except AggregateNotFoundError:
            raise UnknownAccountError(f"no account named {name!r}") from None

    def get_user(self, username: str) -> User:
        try:
            return self.load(User, User.create_id(username))
        except AggregateNotFoundError:
            raise UnknownUserError(f"no user named {username!r}") from None

    def account_key_indexes(self, account: Account) -> list[ApiKeyIndex]:
        """The ApiKeyIndex aggregate of each of the account's API keys (their last use)."""
        found = []
        for key_id in account.api_keys:
            try:
                found.append(self.load(ApiKeyIndex, ApiKeyIndex.create_id(key_id)))
            except AggregateNotFoundError:
                continue  # keys created before the index existed have none
        return found

    def account_users(self, name: str) -> list[User]:
        account = self.get_account(name)
        return [self.get_user(m.username) for m in account.members.values()]

    def account_exists(self, name: str) -> bool:
        try:
            self.get_account(name)
        except UnknownAccountError:
            return False
        return True

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
            read = self._read_actor_and_aggregate(user_id, known_actor[0], aggregate_id)
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

    def _read_actor_and_aggregate(
        self, user_id: uuid.UUID, after: int, aggregate_id: uuid.UUID
    ) -> tuple[list[tuple[int, str]], list[tuple[int, str, bytes]]] | None:
        """In one statement: the acting user's (version, topic) after ``after``, and
        every (version, topic, state) of the aggregate (which may be the same user).
        None where the recorder is neither SQLite nor PostgreSQL."""
        recorder: Any = self.recorder
        rows: Sequence[Any]
        if isinstance(recorder, SQLiteApplicationRecorder):
            table = recorder.events_table_name
            statement = (
                "SELECT 0, originator_version, topic, NULL FROM "  # noqa: S608 - the recorder's table
                f"{table} WHERE originator_id = ? AND originator_version > ? UNION ALL "
                f"SELECT 1, originator_version, topic, state FROM {table} "
                "WHERE originator_id = ? ORDER BY 1, 2"
            )
            with recorder.datastore.transaction(commit=False) as cursor:
                cursor.execute(statement, [user_id.hex, after, aggregate_id.hex])
                rows = cursor.fetchall()
        else:
            postgres = _postgres_recorder_class()
            if postgres is None or not isinstance(self.recorder, postgres):
                return None
            rows = _postgres_rows(
                recorder,
                "SELECT 0, originator_version, topic, NULL::bytea FROM {events} "
                "WHERE originator_id = %s AND originator_version > %s UNION ALL "
                "SELECT 1, originator_version, topic, state FROM {events} "
                "WHERE originator_id = %s ORDER BY 1, 2",
                [user_id, after, aggregate_id],
            )
        newer = [(version, topic) for part, version, topic, _ in rows if part == 0]
        events = [(version, topic, bytes(state)) for part, version, topic, state in rows if part]
        return newer, events

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
        """Mark many users reset-required; many events per save, in batches.

        Idempotent per campaign: users the campaign already marked are skipped, so an
        interrupted run can simply be run again.
        """
        self._check_actor(ctx)
        targets: list[uuid.UUID] | None = None
        if not c.everyone:
            ids: dict[uuid.UUID, None] = {}
            for name in c.accounts:
                for member in self.get_account(name).members.values():
                    ids[uuid.UUID(member.user_id)] = None
            for username in c.usernames:
                ids[self.get_user(username).id] = None
            targets = list(ids)
        stamp = self.stamp(ctx)
        # A get costs two queries and a replay; the scan reads every event of the log but
        # decodes only reset events. With a target per _EVENTS_PER_GET events or more, the
        # scan is the cheaper.
        few = targets is not None and (
            len(targets) * _EVENTS_PER_GET < (self.recorder.max_notification_id() or 0)
        )
        statuses = (
            {} if few else self._reset_statuses(only=None if targets is None else set(targets))
        )
        order = targets if targets is not None else list(statuses)
        marked = batches = 0
        total = len(order)
        for start in range(0, total, self.bulk_batch_size):
            batch = order[start : start + self.bulk_batch_size]
            if few:
                marked += self._retrying(functools.partial(self._mark_loaded, batch, c, stamp))
            else:
                marked += self._mark_folded(batch, statuses, c, stamp)
            batches += 1
            if progress:
                progress(min(start + len(batch), total), total)
        return BulkResult(
            targeted=total, marked=marked, already_marked=total - marked, batches=batches
        )

    def _reset_statuses(
        self, only: Collection[uuid.UUID] | None
    ) -> dict[uuid.UUID, tuple[int, ResetStatus]]:
        """Each user's (version, ResetStatus) from one read of the log, in registration
        order, decoding only reset events: what a campaign needs, without loading users."""
        rows = self._user_rows()
        if rows is None:
            return self._reset_statuses_by_notifications(only)
        wanted: dict[Any, uuid.UUID] | None = None
        if only is not None:
            # Ids as the rows hold them (SQLite: hex; PostgreSQL: text), so that only
            # the targets' ids are parsed, and only once.
            sqlite = isinstance(self.recorder, SQLiteApplicationRecorder)
            wanted = {(u.hex if sqlite else str(u)): u for u in only}
        reset_of = self._reset_reader()
        versions: dict[str, int] = {}
        statuses: dict[str, ResetStatus] = {}
        # Users with the same reset history share one status object, so a step from a
        # status by a reset is worked out once: keyed by the status's id (the entry
        # holds the status, so the id is not reused while it is there).
        steps: dict[tuple[int, bool, str | None], tuple[ResetStatus, ResetStatus]] = {}
        for row_id, version, topic, state in rows:
            if wanted is not None and row_id not in wanted:
                continue
            versions[row_id] = version
            if state is not None:
                required, campaign_id = reset_of(topic, bytes(state))
                status = statuses.get(row_id, _NO_RESET)
                key = (id(status), required, campaign_id)
                step = steps.get(key)
                if step is None:
                    if len(steps) >= _DECODED_STATES_MAX:
                        steps.clear()
                    step = steps[key] = (status, status.after_reset(required, campaign_id))
                statuses[row_id] = step[1]
        return {
            (uuid.UUID(row_id) if wanted is None else wanted[row_id]): (
                version,
                statuses.get(row_id, _NO_RESET),
            )
            for row_id, version in versions.items()
        }

    def _user_rows(self) -> Sequence[Any] | None:
        """Every User event's (originator id as text, version, topic, state), in log
        order, from one statement (so one consistent read), with the state of reset
        events only (None for the others): what a campaign needs, without the library's
        select_notifications, which reads every column and makes a UUID and a
        Notification of each row. None where the recorder is neither SQLite nor
        PostgreSQL.
        """
        topics = _user_topics()
        resets = [User.PasswordResetRequired.TOPIC, User.PasswordResetCompleted.TOPIC]
        recorder: Any = self.recorder
        if isinstance(recorder, SQLiteApplicationRecorder):
            statement = (
                "SELECT originator_id, originator_version, topic, "  # noqa: S608 - the recorder's table
                f"CASE WHEN topic IN (?, ?) THEN state END FROM {recorder.events_table_name} "
                f"WHERE topic IN ({','.join('?' * len(topics))}) ORDER BY rowid"
            )
            with recorder.datastore.transaction(commit=False) as cursor:
                cursor.execute(statement, [*resets, *topics])
                rows: Sequence[Any] = cursor.fetchall()  # they unpack like tuples
                return rows
        postgres = _postgres_recorder_class()
        if postgres is not None and isinstance(self.recorder, postgres):
            return _postgres_rows(
                recorder,
                "SELECT originator_id::text, originator_version, topic, "
                "CASE WHEN topic = ANY(%s) THEN state END FROM {events} "
                "WHERE topic = ANY(%s) ORDER BY notification_id",
                [resets, topics],
            )
        return None

    def _reset_reader(self) -> Callable[[str, bytes], tuple[bool, str | None]]:
        """(required, campaign id) of a stored reset event: what ResetStatus needs.

        Worked out once per distinct (topic, state), as a campaign's batch stores one
        state. Other reset events (saved one by one, each with its own timestamp) have
        states of their own: where the state is plain JSON (no cipher, no compression,
        no upcasting), only the campaign id is read from it, ~5x cheaper than decoding
        the whole event; otherwise the event is decoded.
        """
        required_topic = User.PasswordResetRequired.TOPIC
        mapper = self.mapper
        plain = (
            mapper.cipher is None
            and mapper.compressor is None
            and type(mapper.transcoder) is JSONTranscoder
            and getattr(User.PasswordResetRequired, "class_version", 1) == 1
        )
        read: dict[tuple[str, bytes], tuple[bool, str | None]] = {}

        def reset_of(topic: str, state: bytes) -> tuple[bool, str | None]:
            key = (topic, state)
            found = read.get(key)
            if found is None:
                if len(read) >= _DECODED_STATES_MAX:
                    read.clear()
                if topic != required_topic:
                    found = (False, None)
                elif plain:
                    found = (True, json.loads(state)["campaign_id"])
                else:
                    stored = StoredEvent(
                        originator_id=_NO_ID, originator_version=0, topic=topic, state=state
                    )
                    found = (True, mapper.to_domain_event(stored).campaign_id)  # type: ignore[attr-defined]
                read[key] = found
            return found

        return reset_of

    def _reset_statuses_by_notifications(
        self, only: Container[uuid.UUID] | None
    ) -> dict[uuid.UUID, tuple[int, ResetStatus]]:
        """_reset_statuses through the library's notification log (other recorders)."""
        decode = {User.PasswordResetRequired.TOPIC, User.PasswordResetCompleted.TOPIC}
        found: dict[Any, tuple[int, ResetStatus]] = {}
        start = 1
        while True:
            notifications = self.recorder.select_notifications(
                start=start, limit=5000, topics=_user_topics()
            )
            if not notifications:
                return found
            for n in notifications:
                user_id = n.originator_id
                if only is not None and user_id not in only:
                    continue
                _, status = found.get(user_id, (0, _NO_RESET))
                if n.topic in decode:
                    status = status.after(self.mapper.to_domain_event(n))
                found[user_id] = (n.originator_version, status)
            start = notifications[-1].id + 1

    def _mark_folded(
        self,
        batch: list[uuid.UUID],
        statuses: dict[uuid.UUID, tuple[int, ResetStatus]],
        c: cmd.RequirePasswordResets,
        stamp: Stamp,
    ) -> int:
        events = User.reset_required_events(
            ((user_id, *statuses[user_id]) for user_id in batch), c.reason, c.campaign_id, stamp
        )
        try:
            self._record_events(events)
        except IntegrityError:
            # Someone changed one of these users since the scan: redo the batch on loaded users.
            return self._retrying(lambda: self._mark_loaded(batch, c, stamp))
        return len(events)

    def _mark_loaded(
        self, batch: list[uuid.UUID], c: cmd.RequirePasswordResets, stamp: Stamp
    ) -> int:
        users = [self._get_user_by_id(i) for i in batch]
        changed = [u for u in users if u.require_password_reset(c.reason, c.campaign_id, stamp)]
        if changed:
            self.save(*changed)
        return len(changed)

    def _record_events(self, events: list[Any]) -> None:
        """Store events built without their aggregates in one transaction.

        Not through save(), which re-checks each event against the library's runtime
        protocol (~25 us an event), nor the event store's put(), which encodes each:
        events whose state (all but originator id and version) is equal share one
        encoding, e.g. a campaign batch's. Nothing is notified: the Ledger has no
        _notify of its own, and snapshots are left to the next save of each user.
        """
        if not events:
            return
        to_stored = self.mapper.to_stored_event
        if self.mapper.cipher is not None:  # each encryption has its own nonce
            self._insert([to_stored(e) for e in events])
            return
        # Events whose state holds the very same objects (not merely equal ones: 1 and
        # True are equal, and so are one moment in two time zones) encode the same.
        encoded: dict[tuple[Any, ...], StoredEvent] = {}
        stored_events = []
        for event in events:
            state = vars(event)
            key = (type(event), *(id(v) for k, v in state.items() if k not in _COLUMNS))
            first = encoded.get(key)
            if first is None:
                first = encoded[key] = to_stored(event)
                stored_events.append(first)
            else:
                stored_events.append(
                    StoredEvent(
                        originator_id=state["originator_id"],
                        originator_version=state["originator_version"],
                        topic=first.topic,
                        state=first.state,
                    )
                )
        self._insert(stored_events)

    def _insert(self, stored_events: list[StoredEvent]) -> None:
        recorder = self.recorder
        if isinstance(recorder, SQLiteApplicationRecorder):
            # The application recorder inserts row by row to collect notification ids,
            # which nothing here needs; its base class's one executemany is ~3x faster.
            with recorder.datastore.transaction(commit=True) as cursor:
                SQLiteAggregateRecorder._insert_events(recorder, cursor, stored_events)
        else:
            recorder.insert_events(stored_events)

    def _get_user_by_id(self, user_id: uuid.UUID) -> User:
        try:
            return self.load(User, user_id)
        except AggregateNotFoundError:
            raise UnknownUserError(f"no user with id {user_id}") from None

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

    def iter_user_events(
        self, batch: int = 5000, only: Container[uuid.UUID] | None = None
    ) -> Iterator[Any]:
        """Every stored User event (of the users in ``only``), in log order.

        One sequential scan, no per-user queries; events of other users are not decoded.
        """
        topics = _user_topics()
        start = 1
        while True:
            notifications = self.recorder.select_notifications(
                start=start, limit=batch, topics=topics
            )
            if not notifications:
                return
            for n in notifications:
                if only is None or n.originator_id in only:
                    yield self.mapper.to_domain_event(n)
            start = notifications[-1].id + 1

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


def _remember(memory: dict[K, V], key: K, value: V) -> None:
    """Add a new entry, forgetting the oldest beyond _REMEMBERED_MAX."""
    if len(memory) >= _REMEMBERED_MAX:
        memory.pop(next(iter(memory)), None)
    memory[key] = value


def _postgres_recorder_class() -> type | None:
    try:
        from eventsourcing.postgres import PostgresApplicationRecorder
    except ImportError:  # psycopg not installed: no PostgreSQL store either
        return None
    return PostgresApplicationRecorder


def _postgres_rows(
    recorder: Any, query: LiteralString, params: Sequence[Any]
) -> list[tuple[Any, ...]]:
    """``query`` on a PostgreSQL recorder's pool, ``{events}`` standing for its events
    table (schema-qualified); the rows as tuples."""
    from psycopg.rows import tuple_row
    from psycopg.sql import SQL, Identifier

    events = SQL("{}.{}").format(
        Identifier(recorder.datastore.schema), Identifier(recorder.events_table_name)
    )
    with (
        recorder.datastore.get_connection() as conn,
        conn.cursor(row_factory=tuple_row) as cursor,
    ):
        cursor.execute(SQL(query).format(events=events), params, prepare=True)
        rows: list[tuple[Any, ...]] = cursor.fetchall()
        return rows


def _user_topics() -> list[str]:
    return sorted(
        v.TOPIC
        for v in vars(User).values()
        if isinstance(v, type) and issubclass(v, User.Event) and v is not User.Event
    )


__all__ = ["ApiKeyPrincipal", "BulkResult", "IssuedKey", "Ledger", "Role", "TotpEnrolment"]
