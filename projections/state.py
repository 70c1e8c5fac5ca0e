"""The current security state of each account, and the one document shape it is shown in.

Two paths produce the same document:

- ``state_from_aggregates(account, users, as_of)`` from replayed domain aggregates (the
  point-in-time path and the reference the view is tested against);
- ``StateView``, maintained incrementally from events by a ``Follower``.

Both go through *records*: small JSON-able dicts per aggregate holding only what the
document shows (never a hash, seed, sealed key or code digest). ``render_document``
turns records into the document, so the two paths can only differ in how they build
records, which the tests compare.

Password age depends on the moment of reading, so it is computed at render time from
``as_of`` and never stored.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar

from domain.account import Account, ApiKeyIndex, dkim_ref
from domain.errors import DamagedHistoryError, UnknownAccountError, UnknownUserError
from domain.user import User
from domain.values import UserStatus
from projections.base import (
    REBUILD_SUFFIX,
    Dialect,
    ProjectionFailedError,
    Tx,
    View,
    ViewDB,
    compact_json,
    event_type_name,
)

Record = dict[str, Any]
Document = dict[str, Any]

ACCOUNTS_TABLE = "state_accounts"
USERS_TABLE = "state_users"
ACCOUNT_TOPIC_PREFIX = "secstate.Account."
USER_TOPIC_PREFIX = "secstate.User."
_IN_CHUNK = 500  # bound on parameters per IN (...) list
# A rebuild keeps the records it wrote in memory up to this many (then reads them back).
_MAX_BUILT_RECORDS = 500_000
_dumps = compact_json()  # json.dumps(record, separators=(",", ":")), cheaper


# --- small conversions -------------------------------------------------------------------


def iso(moment: datetime | None) -> str | None:
    """ISO 8601 in UTC, the one time format of the document."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment!r} in the event store; expected UTC")
    if moment.utcoffset():
        moment = moment.astimezone(UTC)
    return moment.isoformat()


def actor_of(event: Any) -> str:
    return f"{event.actor_kind}:{event.actor_id}"


def public_key_fingerprint(public_key_b64: str) -> str:
    """SHA-256 (hex) of the DKIM public key bytes: short, public, comparable with DNS."""
    try:
        raw = base64.b64decode(public_key_b64, validate=True)
    except (binascii.Error, ValueError):
        raw = public_key_b64.encode()
    return hashlib.sha256(raw).hexdigest()


def user_status(record: Record) -> str:
    # Same precedence as User.status.
    if record["disabled"]:
        return UserStatus.DISABLED.value
    if record["locked"]:
        return UserStatus.LOCKED.value
    if record["reset_required"]:
        return UserStatus.RESET_REQUIRED.value
    return UserStatus.ACTIVE.value


def password_age_days(changed_at: str | None, as_of: datetime) -> int | None:
    if changed_at is None:
        return None
    delta = as_of - datetime.fromisoformat(changed_at)
    return int(delta.total_seconds() // 86400)


# --- records from aggregates ---------------------------------------------------------------


def account_record(account: Account, key_indexes: Iterable[ApiKeyIndex] = ()) -> Record:
    """``key_indexes``: the ApiKeyIndex aggregates of the account's keys, for their last use."""
    used = {
        index.key_id: (iso(index.last_used_at), index.last_used_ip)
        for index in key_indexes
        if getattr(index, "last_used_at", None) is not None
    }
    return {
        "id": str(account.id),
        "version": account.version,
        "name": account.name,
        "kind": account.kind,
        "display_name": account.display_name,
        "opened_at": iso(account.opened_at),
        "two_factor_required": account.two_factor_required,
        "members": {m.user_id: m.username for m in account.members.values()},
        "allowlist": {
            e.entry_id: {
                "entry_id": e.entry_id,
                "cidr": e.cidr,
                "label": e.label,
                "added_by": e.added_by,
                "added_at": iso(e.added_at),
            }
            for e in account.allowlist.values()
        },
        "api_keys": {
            k.key_id: {
                "key_id": k.key_id,
                "name": k.name,
                "scopes": list(k.scopes),
                "display": k.display,
                "created_by": k.created_by,
                "created_at": iso(k.created_at),
                "revoked_at": iso(k.revoked_at),
                "revoked_by": k.revoked_by,
                "revoke_reason": k.revoke_reason,
                "last_used_at": used.get(k.key_id, (None, None))[0],
                "last_used_ip": used.get(k.key_id, (None, None))[1],
            }
            for k in account.api_keys.values()
        },
        "dkim_keys": {
            dkim_ref(k.domain, k.selector): {
                "domain": k.domain,
                "selector": k.selector,
                "algorithm": k.algorithm,
                "public_key_sha256": public_key_fingerprint(k.public_key),
                "state": k.state,
                "campaign_id": k.campaign_id,
                "generated_at": iso(k.generated_at),
                "published_at": iso(k.published_at),
                "activated_at": iso(k.activated_at),
                "retired_at": iso(k.retired_at),
                "retire_reason": k.retire_reason,
            }
            for k in account.dkim_keys.values()
        },
    }


def user_record(user: User) -> Record:
    codes = user.recovery_codes
    return {
        "id": str(user.id),
        "version": user.version,
        "account_id": str(user.account_id),
        "username": user.username,
        "email": user.email,
        "role": user.role,
        "registered_at": iso(user.registered_at),
        "password_changed_at": iso(user.password_changed_at),
        "reset_required": user.reset_required,
        "reset_reason": user.reset_reason,
        "reset_campaign_id": user.reset_campaign_id,
        "locked": user.locked,
        "disabled": user.disabled,
        "failed_logins": user.failed_logins,
        "last_login_at": iso(user.last_login_at),
        "last_login_ip": user.last_login_ip,
        "factors": {
            f.factor_id: {
                "factor_id": f.factor_id,
                "kind": f.kind,
                "label": f.label,
                "started_at": iso(f.started_at),
                "confirmed_at": iso(f.confirmed_at),
            }
            for f in user.factors.values()
        },
        "recovery_codes": None
        if codes is None
        else {
            "generated_at": iso(codes.generated_at),
            "total": len(codes.hashes),
            "used": [i for i, h in enumerate(codes.hashes) if h is None],
        },
    }


# --- rendering: records -> the document -------------------------------------------------------


def _time_key(value: str | None) -> datetime:
    return datetime.fromisoformat(value) if value else datetime.min.replace(tzinfo=UTC)


def render_user(record: Record, as_of: datetime | None) -> Document:
    """One user's entry; ``as_of`` None leaves password age out (used when diffing)."""
    factors = sorted(
        record["factors"].values(), key=lambda f: (_time_key(f["started_at"]), f["factor_id"])
    )
    codes = record["recovery_codes"]
    doc: Document = {
        "username": record["username"],
        "role": record["role"],
        "email": record["email"],
        "status": user_status(record),
        "registered_at": record["registered_at"],
        "password_changed_at": record["password_changed_at"],
    }
    if as_of is not None:
        doc["password_age_days"] = password_age_days(record["password_changed_at"], as_of)
    doc.update(
        {
            "second_factors": [
                {
                    "factor_id": f["factor_id"],
                    "kind": f["kind"],
                    "label": f["label"],
                    "enrolled_at": f["started_at"],
                    "confirmed_at": f["confirmed_at"],
                }
                for f in factors
                if f["confirmed_at"] is not None
            ],
            "pending_enrolments": [
                {
                    "factor_id": f["factor_id"],
                    "kind": f["kind"],
                    "label": f["label"],
                    "started_at": f["started_at"],
                }
                for f in factors
                if f["confirmed_at"] is None
            ],
            "recovery_codes_left": 0 if codes is None else codes["total"] - len(set(codes["used"])),
            "recovery_codes_generated_at": None if codes is None else codes["generated_at"],
            "failed_logins": record["failed_logins"],
            "last_login_at": record["last_login_at"],
            "last_login_ip": record["last_login_ip"],
            "reset_required": record["reset_required"],
            "reset_reason": record["reset_reason"],
            "reset_campaign_id": record["reset_campaign_id"],
        }
    )
    return doc


def render_account(record: Record) -> Document:
    """The account-wide parts of the document (everything but users and ``as_of``)."""
    keys = sorted(
        record["api_keys"].values(), key=lambda k: (_time_key(k["created_at"]), k["key_id"])
    )
    entries = sorted(
        record["allowlist"].values(), key=lambda e: (_time_key(e["added_at"]), e["entry_id"])
    )
    dkim = sorted(
        record["dkim_keys"].values(),
        key=lambda k: (k["domain"], _time_key(k["generated_at"]), k["selector"]),
    )
    return {
        "account": {
            "name": record["name"],
            "kind": record["kind"],
            "display_name": record["display_name"],
            "opened_at": record["opened_at"],
            "two_factor_required": record["two_factor_required"],
        },
        "api_keys": [
            {
                "key_id": k["key_id"],
                "name": k["name"],
                "scopes": list(k["scopes"]),
                "display": k["display"],
                "created_by": k["created_by"],
                "created_at": k["created_at"],
                "last_used_at": k.get("last_used_at"),
                "last_used_ip": k.get("last_used_ip"),
            }
            for k in keys
            if k["revoked_at"] is None
        ],
        "revoked_api_keys": [
            {
                "key_id": k["key_id"],
                "name": k["name"],
                "scopes": list(k["scopes"]),
                "display": k["display"],
                "created_by": k["created_by"],
                "created_at": k["created_at"],
                "revoked_at": k["revoked_at"],
                "revoked_by": k["revoked_by"],
                "revoke_reason": k["revoke_reason"],
                "last_used_at": k.get("last_used_at"),
                "last_used_ip": k.get("last_used_ip"),
            }
            for k in keys
            if k["revoked_at"] is not None
        ],
        "allowlist": [
            {
                "entry_id": e["entry_id"],
                "cidr": e["cidr"],
                "label": e["label"],
                "added_by": e["added_by"],
                "added_at": e["added_at"],
            }
            for e in entries
        ],
        "dkim_keys": [dict(k) for k in dkim],
    }


def render_document(account: Record, users: Iterable[Record], as_of: datetime) -> Document:
    """The security state document. Key order is fixed; users sorted by username."""
    if as_of.tzinfo is None:
        raise ValueError("as_of must be timezone-aware")
    parts = render_account(account)
    members = account["members"]
    rendered = sorted(
        (render_user(u, as_of) for u in users if u["id"] in members),
        key=lambda u: u["username"],
    )
    return {
        "as_of": iso(as_of),
        "account": parts["account"],
        "users": rendered,
        "api_keys": parts["api_keys"],
        "revoked_api_keys": parts["revoked_api_keys"],
        "allowlist": parts["allowlist"],
        "dkim_keys": parts["dkim_keys"],
    }


def state_from_aggregates(
    account: Account,
    users: Iterable[User],
    as_of: datetime,
    key_indexes: Iterable[ApiKeyIndex] = (),
) -> Document:
    """The security state document of ``account``, its member ``users`` and the
    ApiKeyIndex aggregates of its keys (their last use), at ``as_of``.

    ``as_of`` only sets the password age; the aggregates decide everything else.
    """
    return render_document(
        account_record(account, key_indexes), [user_record(u) for u in users], as_of
    )


# --- records from events (the view's incremental path) ------------------------------


def _account_opened(_: Record | None, e: Any) -> Record:
    return {
        "id": str(e.originator_id),
        "version": e.originator_version,
        "name": e.name,
        "kind": e.kind,
        "display_name": e.display_name,
        "opened_at": iso(e.occurred_at),
        "two_factor_required": False,
        "members": {},
        "allowlist": {},
        "api_keys": {},
        "dkim_keys": {},
    }


def _two_factor_policy(r: Record, e: Any) -> Record:
    r["two_factor_required"] = bool(e.required)
    return r


def _member_added(r: Record, e: Any) -> Record:
    r["members"][e.user_id] = e.username
    return r


def _allowlist_added(r: Record, e: Any) -> Record:
    r["allowlist"][e.entry_id] = {
        "entry_id": e.entry_id,
        "cidr": e.cidr,
        "label": e.label,
        "added_by": actor_of(e),
        "added_at": iso(e.occurred_at),
    }
    return r


def _allowlist_removed(r: Record, e: Any) -> Record:
    del r["allowlist"][e.entry_id]
    return r


def _api_key_created(r: Record, e: Any) -> Record:
    r["api_keys"][e.key_id] = {
        "key_id": e.key_id,
        "name": e.name,
        "scopes": list(e.scopes),
        "display": e.display,
        "created_by": actor_of(e),
        "created_at": iso(e.occurred_at),
        "revoked_at": None,
        "revoked_by": None,
        "revoke_reason": None,
        "last_used_at": None,
        "last_used_ip": None,
    }
    return r


def _api_key_used(r: Record, e: Any) -> Record:
    key = r["api_keys"][e.key_id]
    key["last_used_at"] = iso(e.occurred_at)
    key["last_used_ip"] = e.source_ip
    return r


def _api_key_revoked(r: Record, e: Any) -> Record:
    key = r["api_keys"][e.key_id]
    key["revoked_at"] = iso(e.occurred_at)
    key["revoked_by"] = actor_of(e)
    key["revoke_reason"] = e.reason
    return r


def _dkim_generated(r: Record, e: Any) -> Record:
    r["dkim_keys"][dkim_ref(e.domain, e.selector)] = {
        "domain": e.domain,
        "selector": e.selector,
        "algorithm": e.algorithm,
        "public_key_sha256": public_key_fingerprint(e.public_key),
        "state": "generated",
        "campaign_id": e.campaign_id,
        "generated_at": iso(e.occurred_at),
        "published_at": None,
        "activated_at": None,
        "retired_at": None,
        "retire_reason": None,
    }
    return r


def _dkim_transition(state: str, stamp_field: str) -> Callable[[Record, Any], Record]:
    def handle(r: Record, e: Any) -> Record:
        key = r["dkim_keys"][dkim_ref(e.domain, e.selector)]
        key["state"] = state
        key[stamp_field] = iso(e.occurred_at)
        if state == "retired":
            key["retire_reason"] = e.reason
        return r

    return handle


def _user_registered(_: Record | None, e: Any) -> Record:
    return {
        "id": str(e.originator_id),
        "version": e.originator_version,
        "account_id": str(e.account_id),
        "username": e.username,
        "email": e.email,
        "role": e.role,
        "registered_at": iso(e.occurred_at),
        "password_changed_at": None,
        "reset_required": False,
        "reset_reason": None,
        "reset_campaign_id": None,
        "locked": False,
        "disabled": False,
        "failed_logins": 0,
        "last_login_at": None,
        "last_login_ip": None,
        "factors": {},
        "recovery_codes": None,
    }


def _password_changed(r: Record, e: Any) -> Record:
    r["password_changed_at"] = iso(e.occurred_at)
    return r


def _reset_required(r: Record, e: Any) -> Record:
    r["reset_required"] = True
    r["reset_reason"] = e.reason
    r["reset_campaign_id"] = e.campaign_id
    return r


def _reset_completed(r: Record, e: Any) -> Record:
    r["password_changed_at"] = iso(e.occurred_at)
    r["reset_required"] = False
    r["reset_reason"] = None
    r["reset_campaign_id"] = None
    return r


def _login_succeeded(r: Record, e: Any) -> Record:
    r["failed_logins"] = 0
    r["last_login_at"] = iso(e.occurred_at)
    r["last_login_ip"] = e.source_ip
    return r


def _login_failed(r: Record, e: Any) -> Record:
    if e.counts_toward_lockout:
        r["failed_logins"] += 1
    return r


def _flag(name: str, value: bool) -> Callable[[Record, Any], Record]:
    def handle(r: Record, _: Any) -> Record:
        r[name] = value
        if name == "locked" and not value:
            r["failed_logins"] = 0  # unlocking resets the counter, as User.UserUnlocked does
        return r

    return handle


def _totp_started(r: Record, e: Any) -> Record:
    r["factors"][e.factor_id] = {
        "factor_id": e.factor_id,
        "kind": "totp",
        "label": e.label,
        "started_at": iso(e.occurred_at),
        "confirmed_at": None,
    }
    return r


def _totp_confirmed(r: Record, e: Any) -> Record:
    r["factors"][e.factor_id]["confirmed_at"] = iso(e.occurred_at)
    return r


def _factor_removed(r: Record, e: Any) -> Record:
    del r["factors"][e.factor_id]
    return r


def _codes_generated(r: Record, e: Any) -> Record:
    r["recovery_codes"] = {
        "generated_at": iso(e.occurred_at),
        "total": len(e.code_hashes),
        "used": [],
    }
    return r


def _code_used(r: Record, e: Any) -> Record:
    codes = r["recovery_codes"]
    if codes is None:
        raise ValueError("recovery code used but none were generated")
    if e.index not in codes["used"]:
        codes["used"].append(e.index)
    return r


def _no_change(r: Record, _: Any) -> Record:
    return r


Handler = Callable[[Any, Any], Record]

# (kind, handler, creates) per topic. Events absent from the document are listed as
# no-ops so a new, unhandled event type stops the view instead of silently diverging.
# Kind "key": an ApiKeyIndex event, folded into its account's record.
_A, _U, _K = "account", "user", "key"
HANDLERS: dict[str, tuple[str, Handler, bool]] = {
    "secstate.ApiKeyIndex.Used": (_K, _api_key_used, False),
    "secstate.User.PasswordChangeFailed": (_U, _login_failed, False),
    "secstate.User.TotpConfirmationFailed": (_U, _login_failed, False),
    "secstate.Account.Opened": (_A, _account_opened, True),
    "secstate.Account.TwoFactorPolicyChanged": (_A, _two_factor_policy, False),
    "secstate.Account.MemberAdded": (_A, _member_added, False),
    "secstate.Account.AllowlistEntryAdded": (_A, _allowlist_added, False),
    "secstate.Account.AllowlistEntryRemoved": (_A, _allowlist_removed, False),
    "secstate.Account.ApiKeyCreated": (_A, _api_key_created, False),
    "secstate.Account.ApiKeyRevoked": (_A, _api_key_revoked, False),
    "secstate.Account.DkimKeyGenerated": (_A, _dkim_generated, False),
    "secstate.Account.DkimKeyPublished": (_A, _dkim_transition("published", "published_at"), False),
    "secstate.Account.DkimKeyActivated": (_A, _dkim_transition("active", "activated_at"), False),
    "secstate.Account.DkimKeyRetired": (_A, _dkim_transition("retired", "retired_at"), False),
    "secstate.User.Registered": (_U, _user_registered, True),
    "secstate.User.PasswordSet": (_U, _password_changed, False),
    "secstate.User.PasswordChanged": (_U, _password_changed, False),
    "secstate.User.PasswordResetRequired": (_U, _reset_required, False),
    "secstate.User.PasswordResetCompleted": (_U, _reset_completed, False),
    "secstate.User.LoginSucceeded": (_U, _login_succeeded, False),
    "secstate.User.LoginFailed": (_U, _login_failed, False),
    "secstate.User.UserLocked": (_U, _flag("locked", True), False),
    "secstate.User.UserUnlocked": (_U, _flag("locked", False), False),
    "secstate.User.UserDisabled": (_U, _flag("disabled", True), False),
    "secstate.User.UserEnabled": (_U, _flag("disabled", False), False),
    "secstate.User.TotpEnrolmentStarted": (_U, _totp_started, False),
    "secstate.User.TotpEnrolmentConfirmed": (_U, _totp_confirmed, False),
    "secstate.User.SecondFactorRemoved": (_U, _factor_removed, False),
    "secstate.User.RecoveryCodesGenerated": (_U, _codes_generated, False),
    "secstate.User.RecoveryCodeUsed": (_U, _code_used, False),
    # Nothing shown changes, but the record's version moves on: a gap in an aggregate's
    # versions means rows are missing from the log, and the view says so.
    "secstate.Account.ControlPanelAccessAllowed": (_A, _no_change, False),
    "secstate.Account.ControlPanelAccessDenied": (_A, _no_change, False),
    "secstate.User.PasswordRehashed": (_U, _no_change, False),  # same password, new hash
    "secstate.User.InternalSystemAccessed": (_U, _no_change, False),
}
NO_OP_TOPICS = frozenset(
    {
        "secstate.ApiKeyIndex.Indexed",
        "secstate.ApiKeyIndex.UseRefused",
        "secstate.CredentialAttempt.UnknownUserRefused",  # no account or user to show it on
        "secstate.CredentialAttempt.UnknownApiKeyRefused",
    }
)


def apply_event(record: Record | None, event: Any) -> Record | None:
    """Fold one event into a record (None before the aggregate exists); for tests and tools."""
    topic = getattr(type(event), "TOPIC", "")
    entry = HANDLERS.get(topic)
    if entry is None:
        return record
    _, handler, _ = entry
    return handler(record, event)


def _check_version(record: Record, event: Any) -> None:
    """Refuse an event that does not follow the record's last version of its aggregate:
    a row deleted from the middle of the log, or versions out of order."""
    last = record.get("version")  # records written before versions were kept lack it
    if last is not None and event.originator_version != last + 1:
        raise DamagedHistoryError(
            f"version {event.originator_version} follows version {last} in the state view: "
            + (
                "the versions between are missing from the log"
                if event.originator_version > last + 1
                else "out of order"
            ),
            originator_id=event.originator_id,
            originator_version=event.originator_version,
            topic=getattr(type(event), "TOPIC", None),
        )


# --- the view ---------------------------------------------------------------------------


class StateView(View):
    """Current security state per account and per user, as JSON records plus query columns.

    Per batch, each touched record is loaded once, changed in memory by every event of
    the batch, and written once at the end (``executemany`` upserts).
    """

    name: ClassVar[str] = "state"
    tables: ClassVar[tuple[str, ...]] = (ACCOUNTS_TABLE, USERS_TABLE)

    def __init__(self, db: ViewDB | None = None) -> None:
        super().__init__()
        self.db = db
        # During a rebuild: the records as committed so far, by table (None otherwise).
        # Every batch of a rebuild would otherwise read back and parse the records it
        # touches; a rolled-back batch empties them (see rolled_back).
        self._built: dict[str, dict[str, Record]] | None = None
        # Aggregate id (as int) -> its text, the records' key (str(UUID) costs ~1 us).
        self._keys: dict[int, str] = {}

    def ddl(self, dialect: Dialect) -> list[str]:
        accounts, users = self.t(ACCOUNTS_TABLE), self.t(USERS_TABLE)
        statements = [
            f"CREATE TABLE {accounts} ("
            "account_id TEXT PRIMARY KEY, name TEXT NOT NULL, kind TEXT NOT NULL, "
            "record TEXT NOT NULL)",
            f"CREATE UNIQUE INDEX {self.i('state_accounts_name')} ON {accounts} (name)",
            f"CREATE TABLE {users} ("
            "user_id TEXT PRIMARY KEY, account_id TEXT NOT NULL, username TEXT NOT NULL, "
            "email TEXT NOT NULL, role TEXT NOT NULL, status TEXT NOT NULL, "
            "reset_required INTEGER NOT NULL, reset_campaign_id TEXT, "
            "password_changed_at TEXT, failed_logins INTEGER NOT NULL, last_login_at TEXT, "
            "confirmed_factors INTEGER NOT NULL, record TEXT NOT NULL)",
        ]
        # A rebuild's shadow gets its query indexes once it is full (after_build): cheaper
        # than keeping four indexes up to date on every upsert.
        if self.suffix != REBUILD_SUFFIX:
            statements.extend(self._user_indexes())
        return statements

    def _user_indexes(self) -> list[str]:
        users = self.t(USERS_TABLE)
        return [
            f"CREATE INDEX {self.i('state_users_account')} ON {users} (account_id)",
            f"CREATE INDEX {self.i('state_users_username')} ON {users} (username)",
            f"CREATE INDEX {self.i('state_users_status')} ON {users} (status)",
            f"CREATE INDEX {self.i('state_users_reset')} ON {users} "
            "(reset_required, reset_campaign_id)",
        ]

    def after_build(self, tx: Tx) -> None:
        for statement in self._user_indexes():
            tx.execute(statement)

    def build_started(self) -> None:
        self._built = {ACCOUNTS_TABLE: {}, USERS_TABLE: {}}

    def build_ended(self) -> None:
        self._built = None

    def rolled_back(self) -> None:
        if self._built is not None:
            self._built = {ACCOUNTS_TABLE: {}, USERS_TABLE: {}}

    # --- applying events -----------------------------------------------------------------

    def apply_batch(self, tx: Tx, events: Sequence[tuple[int, Any]]) -> None:
        # Every record in these two dicts is touched by the batch, so all are written back.
        accounts: dict[str, Record] = {}
        users: dict[str, Record] = {}
        plan: list[tuple[int, Any, str, dict[str, Record], Handler, bool]] = []
        wanted_accounts: set[str] = set()
        wanted_users: set[str] = set()
        keys = self._keys
        for position, event in events:
            topic: str = getattr(type(event), "TOPIC", "")
            entry = HANDLERS.get(topic)
            if entry is None:
                if topic in NO_OP_TOPICS:
                    continue
                raise ProjectionFailedError(
                    self.name,
                    position,
                    event_type_name(event),
                    LookupError(f"the state view has no handler for {topic}"),
                )
            kind, handler, creates = entry
            subject = event.account_id if kind == _K else event.originator_id
            originator = subject.int
            key = keys.get(originator)
            if key is None:
                if len(keys) >= _MAX_BUILT_RECORDS:
                    keys.clear()
                key = keys[originator] = str(subject)
            if kind != _U:
                plan.append((position, event, key, accounts, handler, creates))
                if not creates:
                    wanted_accounts.add(key)
            else:
                plan.append((position, event, key, users, handler, creates))
                if not creates:
                    wanted_users.add(key)

        accounts.update(self._records(tx, ACCOUNTS_TABLE, "account_id", wanted_accounts))
        users.update(self._records(tx, USERS_TABLE, "user_id", wanted_users))
        for position, event, key, records, handler, creates in plan:
            record = records.get(key)
            try:
                if record is None and not creates:
                    raise LookupError(f"no record {key} in the state view")
                # An ApiKeyIndex event changes its account's record, not its own.
                own = not isinstance(event, ApiKeyIndex.Event)
                if own and record is not None:
                    _check_version(record, event)
                records[key] = handler(record, event)
                if own:
                    records[key]["version"] = event.originator_version
            except Exception as e:
                raise ProjectionFailedError(self.name, position, event_type_name(event), e) from e

        self._write_accounts(tx, accounts.values())
        self._write_users(tx, users.values())
        if self._built is not None:
            # Kept as they will be once this transaction commits (rolled_back undoes it).
            for table, records in ((ACCOUNTS_TABLE, accounts), (USERS_TABLE, users)):
                built = self._built[table]
                if len(built) + len(records) > _MAX_BUILT_RECORDS:
                    built.clear()
                built.update(records)

    def _records(self, tx: Tx, table: str, key_column: str, keys: set[str]) -> dict[str, Record]:
        """The stored records of ``keys`` (those that exist), to be changed in place."""
        if self._built is None:
            return self._load(tx, self.t(table), key_column, keys)
        built = self._built[table]
        found = {key: built[key] for key in keys if key in built}
        if len(found) < len(keys):
            found.update(self._load(tx, self.t(table), key_column, keys - found.keys()))
        return found

    @staticmethod
    def _load(tx: Tx, table: str, key_column: str, keys: set[str]) -> dict[str, Record]:
        found: dict[str, Record] = {}
        ordered = sorted(keys)
        for start in range(0, len(ordered), _IN_CHUNK):
            chunk = ordered[start : start + _IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            for key, text in tx.query_all(
                f"SELECT {key_column}, record FROM {table} WHERE {key_column} IN ({marks})",
                chunk,
            ):
                found[key] = json.loads(text)
        return found

    def _write_accounts(self, tx: Tx, records: Iterable[Record]) -> None:
        rows = [(r["id"], r["name"], r["kind"], _dumps(r)) for r in records]
        tx.executemany(
            f"INSERT INTO {self.t(ACCOUNTS_TABLE)} (account_id, name, kind, record) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (account_id) DO UPDATE SET "
            "name = excluded.name, kind = excluded.kind, record = excluded.record",
            rows,
        )

    def _write_users(self, tx: Tx, records: Iterable[Record]) -> None:
        rows = [
            (
                r["id"],
                r["account_id"],
                r["username"],
                r["email"],
                r["role"],
                user_status(r),
                1 if r["reset_required"] else 0,
                r["reset_campaign_id"],
                r["password_changed_at"],
                r["failed_logins"],
                r["last_login_at"],
                sum(1 for f in r["factors"].values() if f["confirmed_at"] is not None),
                _dumps(r),
            )
            for r in records
        ]
        tx.executemany(
            f"INSERT INTO {self.t(USERS_TABLE)} (user_id, account_id, username, email, role, "
            "status, reset_required, reset_campaign_id, password_changed_at, failed_logins, "
            "last_login_at, confirmed_factors, record) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (user_id) DO UPDATE SET "
            "account_id = excluded.account_id, username = excluded.username, "
            "email = excluded.email, role = excluded.role, status = excluded.status, "
            "reset_required = excluded.reset_required, "
            "reset_campaign_id = excluded.reset_campaign_id, "
            "password_changed_at = excluded.password_changed_at, "
            "failed_logins = excluded.failed_logins, last_login_at = excluded.last_login_at, "
            "confirmed_factors = excluded.confirmed_factors, record = excluded.record",
            rows,
        )

    # --- queries (always the live tables, even while a rebuild runs) ----------------------------

    def _db(self) -> ViewDB:
        if self.db is None:
            raise RuntimeError("StateView needs a ViewDB for queries: StateView(db)")
        return self.db

    def account_record(self, name: str) -> Record:
        account_id = str(Account.create_id(name))
        with self._db().reading() as tx:
            row = tx.query_one(
                f"SELECT record FROM {ACCOUNTS_TABLE} WHERE account_id = ?", (account_id,)
            )
        if row is None:
            raise UnknownAccountError(f"no account named {name!r} in the state view")
        record: Record = json.loads(row[0])
        return record

    def get_account_state(self, name: str, as_of: datetime | None = None) -> Document:
        """The account's security state document; password ages relative to ``as_of`` (now)."""
        account_id = str(Account.create_id(name))
        with self._db().reading() as tx:
            row = tx.query_one(
                f"SELECT record FROM {ACCOUNTS_TABLE} WHERE account_id = ?", (account_id,)
            )
            if row is None:
                raise UnknownAccountError(f"no account named {name!r} in the state view")
            user_rows = tx.query_all(
                f"SELECT record FROM {USERS_TABLE} WHERE account_id = ?", (account_id,)
            )
        return render_document(
            json.loads(row[0]),
            [json.loads(r[0]) for r in user_rows],
            as_of or datetime.now(UTC),
        )

    def get_user_state(self, username: str, as_of: datetime | None = None) -> Document:
        user_id = str(User.create_id(username))
        with self._db().reading() as tx:
            row = tx.query_one(f"SELECT record FROM {USERS_TABLE} WHERE user_id = ?", (user_id,))
        if row is None:
            raise UnknownUserError(f"no user named {username!r} in the state view")
        return render_user(json.loads(row[0]), as_of or datetime.now(UTC))

    def users(
        self,
        *,
        account: str | None = None,
        status: str | None = None,
        reset_required: bool | None = None,
        campaign_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """Rows of the users table, filtered; e.g. who still needs a reset for a campaign."""
        clauses: list[str] = []
        params: list[Any] = []
        if account is not None:
            clauses.append("u.account_id = ?")
            params.append(str(Account.create_id(account)))
        if status is not None:
            clauses.append("u.status = ?")
            params.append(status)
        if reset_required is not None:
            clauses.append("u.reset_required = ?")
            params.append(1 if reset_required else 0)
        if campaign_id is not None:
            clauses.append("u.reset_campaign_id = ?")
            params.append(campaign_id)
        where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
        with self._db().reading() as tx:
            rows = tx.query_all(
                "SELECT u.username, a.name, u.email, u.role, u.status, u.reset_campaign_id, "
                "u.password_changed_at, u.failed_logins, u.last_login_at, u.confirmed_factors "
                f"FROM {USERS_TABLE} u LEFT JOIN {ACCOUNTS_TABLE} a "
                f"ON a.account_id = u.account_id{where} ORDER BY u.username",
                params,
            )
        columns = (
            "username",
            "account",
            "email",
            "role",
            "status",
            "reset_campaign_id",
            "password_changed_at",
            "failed_logins",
            "last_login_at",
            "confirmed_factors",
        )
        return [dict(zip(columns, row, strict=True)) for row in rows]

    def users_needing_reset(
        self, campaign_id: str | None = None, account: str | None = None
    ) -> list[dict[str, Any]]:
        return self.users(account=account, reset_required=True, campaign_id=campaign_id)
