"""The security state document: records per aggregate, and the one document shape.

Two paths produce the same document:

- ``state_from_aggregates(account, users, as_of)`` from replayed domain aggregates (the
  point-in-time path and the reference the view is tested against), and its parts
  ``account_state`` and ``user_state`` (what ``account show`` and ``user show`` print);
- the state view, whose records are folded from events (``projections.state.fold``)
  and stored (``projections.state.storage``), read by ``projections.state.queries``.

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
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from domain.account import Account, ApiKeyIndex, dkim_ref
from domain.public import utc_iso
from domain.user import User
from domain.values import UserStatus

Record = dict[str, Any]
Document = dict[str, Any]


# --- small conversions -------------------------------------------------------------------


def iso(moment: datetime | None) -> str | None:
    """ISO 8601 in UTC, the one time format of the document (``domain.public.utc_iso``)."""
    return None if moment is None else utc_iso(moment)


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


def render_account_facts(record: Record) -> Document:
    """The document's ``account`` entry: the account's own facts."""
    return {
        "name": record["name"],
        "kind": record["kind"],
        "display_name": record["display_name"],
        "opened_at": record["opened_at"],
        "two_factor_required": record["two_factor_required"],
    }


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
        "account": render_account_facts(record),
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


def account_state(
    account: Account, as_of: datetime, key_indexes: Iterable[ApiKeyIndex] = ()
) -> Document:
    """The document of ``account`` without its users: ``as_of``, ``account``, ``api_keys``,
    ``revoked_api_keys``, ``allowlist`` and ``dkim_keys``, each as ``state`` has it."""
    doc = state_from_aggregates(account, (), as_of, key_indexes)
    del doc["users"]
    return doc


def user_state(user: User, account: Account, as_of: datetime) -> Document:
    """``user``'s part of its ``account``'s document: ``as_of``, the ``account`` entry, and
    the ``user`` entry as it is in the document's ``users``."""
    if as_of.tzinfo is None:
        raise ValueError("as_of must be timezone-aware")
    return {
        "as_of": iso(as_of),
        "account": render_account_facts(account_record(account)),
        "user": render_user(user_record(user), as_of),
    }
