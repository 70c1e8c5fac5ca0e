"""The state view's fold: each event changes the record of its account or user.

Every event type of the catalogue is either handled or listed as a no-op, so a new,
unhandled type stops the view instead of letting it silently diverge.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from domain.account import Account, ApiKeyIndex, dkim_ref
from domain.attempts import CredentialAttempt
from domain.errors import DamagedHistoryError
from domain.user import User
from projections.state.document import Record, actor_of, iso, public_key_fingerprint

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

# (kind, handler, creates) per event class. Events absent from the document are listed as
# no-ops so a new, unhandled event type stops the view instead of silently diverging.
# Kind "key": an ApiKeyIndex event, folded into its account's record.
_A, _U, _K = "account", "user", "key"
HANDLERS: dict[type, tuple[str, Handler, bool]] = {
    ApiKeyIndex.Used: (_K, _api_key_used, False),
    User.PasswordChangeFailed: (_U, _login_failed, False),
    User.TotpConfirmationFailed: (_U, _login_failed, False),
    Account.Opened: (_A, _account_opened, True),
    Account.TwoFactorPolicyChanged: (_A, _two_factor_policy, False),
    Account.MemberAdded: (_A, _member_added, False),
    Account.AllowlistEntryAdded: (_A, _allowlist_added, False),
    Account.AllowlistEntryRemoved: (_A, _allowlist_removed, False),
    Account.ApiKeyCreated: (_A, _api_key_created, False),
    Account.ApiKeyRevoked: (_A, _api_key_revoked, False),
    Account.DkimKeyGenerated: (_A, _dkim_generated, False),
    Account.DkimKeyPublished: (_A, _dkim_transition("published", "published_at"), False),
    Account.DkimKeyActivated: (_A, _dkim_transition("active", "activated_at"), False),
    Account.DkimKeyRetired: (_A, _dkim_transition("retired", "retired_at"), False),
    User.Registered: (_U, _user_registered, True),
    User.PasswordSet: (_U, _password_changed, False),
    User.PasswordChanged: (_U, _password_changed, False),
    User.PasswordResetRequired: (_U, _reset_required, False),
    User.PasswordResetCompleted: (_U, _reset_completed, False),
    User.LoginSucceeded: (_U, _login_succeeded, False),
    User.LoginFailed: (_U, _login_failed, False),
    User.UserLocked: (_U, _flag("locked", True), False),
    User.UserUnlocked: (_U, _flag("locked", False), False),
    User.UserDisabled: (_U, _flag("disabled", True), False),
    User.UserEnabled: (_U, _flag("disabled", False), False),
    User.TotpEnrolmentStarted: (_U, _totp_started, False),
    User.TotpEnrolmentConfirmed: (_U, _totp_confirmed, False),
    User.SecondFactorRemoved: (_U, _factor_removed, False),
    User.RecoveryCodesGenerated: (_U, _codes_generated, False),
    User.RecoveryCodeUsed: (_U, _code_used, False),
    # Nothing shown changes, but the record's version moves on: a gap in an aggregate's
    # versions means rows are missing from the log, and the view says so.
    Account.ControlPanelAccessAllowed: (_A, _no_change, False),
    Account.ControlPanelAccessDenied: (_A, _no_change, False),
    User.PasswordRehashed: (_U, _no_change, False),  # same password, new hash
    User.InternalSystemAccessed: (_U, _no_change, False),
}
NO_OP_CLASSES: frozenset[type] = frozenset(
    {
        ApiKeyIndex.Indexed,
        ApiKeyIndex.UseRefused,
        CredentialAttempt.UnknownUserRefused,  # no account or user to show it on
        CredentialAttempt.UnknownApiKeyRefused,
    }
)


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
