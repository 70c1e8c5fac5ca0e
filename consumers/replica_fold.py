"""The ``state-replica`` consumer's fold: an account's security state from the published
events alone, the way a downstream service keeps its own copy.

It reads nothing but the contract (``contracts``: the message value and its typed
payload) and builds records of the same shape as secstate's own state view, so the two
can be compared record for record (the tests do). It is a second, independent
implementation on purpose: if the published events did not carry enough to rebuild the
state, this fold could not match, and the contract would be shown to be short.

Handlers are keyed by payload model class. Each returns the changed record.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from contracts import payloads as p
from contracts.envelope import SecurityEvent

Record = dict[str, Any]
Event = SecurityEvent[Any]
Fold = Callable[[Any, Event], Record]  # (the record, or None for a creating event)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


def _actor(e: Event) -> str:
    return f"{e.actor_kind}:{e.actor_id}"


def _fingerprint(public_key_b64: str) -> str:
    """SHA-256 (hex) of the DKIM public key's bytes."""
    try:
        raw = base64.b64decode(public_key_b64, validate=True)
    except (binascii.Error, ValueError):
        raw = public_key_b64.encode()
    return hashlib.sha256(raw).hexdigest()


def _dkim_ref(domain: str, selector: str) -> str:
    return f"{selector.lower()}._domainkey.{domain.lower()}"


# --- accounts ---------------------------------------------------------------------------


def _opened(_: Record | None, e: Event) -> Record:
    d = e.data
    return {
        "id": str(e.aggregate_id),
        "version": e.version,
        "name": d.name,
        "kind": d.kind,
        "display_name": d.display_name,
        "opened_at": _iso(e.occurred_at),
        "two_factor_required": False,
        "members": {},
        "allowlist": {},
        "api_keys": {},
        "dkim_keys": {},
    }


def _policy(r: Record, e: Event) -> Record:
    r["two_factor_required"] = e.data.required
    return r


def _member(r: Record, e: Event) -> Record:
    r["members"][str(e.data.user_id)] = e.data.username
    return r


def _entry_added(r: Record, e: Event) -> Record:
    d = e.data
    r["allowlist"][d.entry_id] = {
        "entry_id": d.entry_id,
        "cidr": d.cidr,
        "label": d.label,
        "added_by": _actor(e),
        "added_at": _iso(e.occurred_at),
    }
    return r


def _entry_removed(r: Record, e: Event) -> Record:
    r["allowlist"].pop(e.data.entry_id, None)
    return r


def _key_created(r: Record, e: Event) -> Record:
    d = e.data
    r["api_keys"][d.key_id] = {
        "key_id": d.key_id,
        "name": d.name,
        "scopes": list(d.scopes),
        "display": d.display,
        "created_by": _actor(e),
        "created_at": _iso(e.occurred_at),
        "revoked_at": None,
        "revoked_by": None,
        "revoke_reason": None,
        "last_used_at": None,
        "last_used_ip": None,
    }
    return r


def _key_revoked(r: Record, e: Event) -> Record:
    key = r["api_keys"][e.data.key_id]
    key["revoked_at"] = _iso(e.occurred_at)
    key["revoked_by"] = _actor(e)
    key["revoke_reason"] = e.data.reason
    return r


def _key_used(r: Record, e: Event) -> Record:
    key = r["api_keys"][e.data.key_id]
    key["last_used_at"] = _iso(e.occurred_at)
    key["last_used_ip"] = e.source_ip
    return r


def _dkim_generated(r: Record, e: Event) -> Record:
    d = e.data
    r["dkim_keys"][_dkim_ref(d.domain, d.selector)] = {
        "domain": d.domain,
        "selector": d.selector,
        "algorithm": d.algorithm,
        "public_key_sha256": _fingerprint(d.public_key),
        "state": "generated",
        "campaign_id": d.campaign_id,
        "generated_at": _iso(e.occurred_at),
        "published_at": None,
        "activated_at": None,
        "retired_at": None,
        "retire_reason": None,
    }
    return r


def _dkim(state: str, stamp: str) -> Fold:
    def fold(r: Record, e: Event) -> Record:
        key = r["dkim_keys"][_dkim_ref(e.data.domain, e.data.selector)]
        key["state"] = state
        key[stamp] = _iso(e.occurred_at)
        if state == "retired":
            key["retire_reason"] = e.data.reason
        return r

    return fold


# --- users ------------------------------------------------------------------------------


def _registered(_: Record | None, e: Event) -> Record:
    d = e.data
    return {
        "id": str(e.aggregate_id),
        "version": e.version,
        "account_id": str(d.account_id),
        "username": d.username,
        "email": d.email,
        "role": d.role,
        "registered_at": _iso(e.occurred_at),
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


def _password(r: Record, e: Event) -> Record:
    r["password_changed_at"] = _iso(e.occurred_at)
    return r


def _reset_required(r: Record, e: Event) -> Record:
    r["reset_required"] = True
    r["reset_reason"] = e.data.reason
    r["reset_campaign_id"] = e.data.campaign_id
    return r


def _reset_completed(r: Record, e: Event) -> Record:
    r.update(
        password_changed_at=_iso(e.occurred_at),
        reset_required=False,
        reset_reason=None,
        reset_campaign_id=None,
    )
    return r


def _logged_in(r: Record, e: Event) -> Record:
    r.update(failed_logins=0, last_login_at=_iso(e.occurred_at), last_login_ip=e.source_ip)
    return r


def _refused(r: Record, e: Event) -> Record:
    if e.data.counts_toward_lockout:
        r["failed_logins"] += 1
    return r


def _set(name: str, value: bool) -> Fold:
    def fold(r: Record, _: Event) -> Record:
        r[name] = value
        if name == "locked" and not value:
            r["failed_logins"] = 0
        return r

    return fold


def _totp_started(r: Record, e: Event) -> Record:
    d = e.data
    r["factors"][d.factor_id] = {
        "factor_id": d.factor_id,
        "kind": "totp",
        "label": d.label,
        "started_at": _iso(e.occurred_at),
        "confirmed_at": None,
    }
    return r


def _totp_confirmed(r: Record, e: Event) -> Record:
    r["factors"][e.data.factor_id]["confirmed_at"] = _iso(e.occurred_at)
    return r


def _factor_removed(r: Record, e: Event) -> Record:
    r["factors"].pop(e.data.factor_id, None)
    return r


def _codes(r: Record, e: Event) -> Record:
    r["recovery_codes"] = {
        "generated_at": _iso(e.occurred_at),
        "total": e.data.code_count,
        "used": [],
    }
    return r


def _code_used(r: Record, e: Event) -> Record:
    codes = r["recovery_codes"]
    if codes is not None and e.data.index not in codes["used"]:
        codes["used"].append(e.data.index)
    return r


def _same(r: Record, _: Event) -> Record:
    return r


ACCOUNT, USER, KEY = "account", "user", "key"

# (what the event changes, fold, whether it creates the record), per payload model.
FOLDS: dict[type[p.EventData], tuple[str, Fold, bool]] = {
    p.AccountOpened: (ACCOUNT, _opened, True),
    p.TwoFactorPolicyChanged: (ACCOUNT, _policy, False),
    p.MemberAdded: (ACCOUNT, _member, False),
    p.AllowlistEntryAdded: (ACCOUNT, _entry_added, False),
    p.AllowlistEntryRemoved: (ACCOUNT, _entry_removed, False),
    p.ControlPanelAccessAllowed: (ACCOUNT, _same, False),
    p.ControlPanelAccessDenied: (ACCOUNT, _same, False),
    p.ApiKeyCreated: (ACCOUNT, _key_created, False),
    p.ApiKeyRevoked: (ACCOUNT, _key_revoked, False),
    p.DkimKeyGenerated: (ACCOUNT, _dkim_generated, False),
    p.DkimKeyPublished: (ACCOUNT, _dkim("published", "published_at"), False),
    p.DkimKeyActivated: (ACCOUNT, _dkim("active", "activated_at"), False),
    p.DkimKeyRetired: (ACCOUNT, _dkim("retired", "retired_at"), False),
    p.ApiKeyUsed: (KEY, _key_used, False),
    p.UserRegistered: (USER, _registered, True),
    p.PasswordSet: (USER, _password, False),
    p.PasswordChanged: (USER, _password, False),
    p.PasswordRehashed: (USER, _same, False),
    p.PasswordResetRequired: (USER, _reset_required, False),
    p.PasswordResetCompleted: (USER, _reset_completed, False),
    p.LoginSucceeded: (USER, _logged_in, False),
    p.LoginFailed: (USER, _refused, False),
    p.PasswordChangeFailed: (USER, _refused, False),
    p.TotpConfirmationFailed: (USER, _refused, False),
    p.UserLocked: (USER, _set("locked", True), False),
    p.UserUnlocked: (USER, _set("locked", False), False),
    p.UserDisabled: (USER, _set("disabled", True), False),
    p.UserEnabled: (USER, _set("disabled", False), False),
    p.TotpEnrolmentStarted: (USER, _totp_started, False),
    p.TotpEnrolmentConfirmed: (USER, _totp_confirmed, False),
    p.SecondFactorRemoved: (USER, _factor_removed, False),
    p.RecoveryCodesGenerated: (USER, _codes, False),
    p.RecoveryCodeUsed: (USER, _code_used, False),
    p.InternalSystemAccessed: (USER, _same, False),
}
# Published, but nothing of an account's state: no record changes.
IGNORED: frozenset[type[p.EventData]] = frozenset(
    {p.ApiKeyIndexed, p.ApiKeyUseRefused, p.UnknownUserRefused, p.UnknownApiKeyRefused}
)


def record_of(event: Event) -> tuple[str, str] | None:
    """(table, record id) the event changes: an account (its own or, for an API key's
    use, its key's), or a user; None for events that change no record."""
    entry = FOLDS.get(type(event.data))
    if entry is None:
        return None
    kind = entry[0]
    if kind == USER:
        return USER, str(event.aggregate_id)
    if kind == KEY:
        return ACCOUNT, str(event.account_id)
    return ACCOUNT, str(event.aggregate_id)


def apply(record: Record | None, event: Event) -> Record:
    """``record`` (None before its aggregate's first event) changed by ``event``."""
    kind, fold, creates = FOLDS[type(event.data)]
    if record is None and not creates:
        raise LookupError(f"{event.type} for {event.aggregate_id}, which has no record")
    changed = fold(record, event)
    if kind != KEY:
        changed["version"] = event.version
    return changed
