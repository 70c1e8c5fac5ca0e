"""One-line, human-readable summaries of ledger events, by event class (the catalogue's).

A summary names who did what to whom, from where. It is built only from public facts:
secret-bearing fields (hashes, sealed material) are never read here.

Each summariser gets the event and a ``Names`` holding what the event itself may not
say (the account's name for a User event, an API key's name for a revocation).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from domain.account import Account, ApiKeyIndex
from domain.attempts import CredentialAttempt
from domain.user import User


class Names(NamedTuple):
    """Names the timeline resolved for one event (None when unknown)."""

    account: str | None
    username: str | None
    key_name: str | None = None


Summariser = Callable[[Any, Names], str]


def _q(value: object) -> str:
    return f"'{value}'" if value is not None else "'?'"


def by_from(event: Any) -> str:
    """`` by staff:e-042 from 203.0.113.7``: the actor and, if known, the source IP."""
    ip = event.source_ip
    if ip:
        return f" by {event.actor_kind}:{event.actor_id} from {ip}"
    return f" by {event.actor_kind}:{event.actor_id}"


# --- Account ---------------------------------------------------------------------------


def _opened(e: Any, n: Names) -> str:
    return f"{e.kind} account {_q(e.name)} opened{by_from(e)}"


def _two_factor_policy(e: Any, n: Names) -> str:
    state = "required" if e.required else "optional"
    return f"2FA made {state} for account {_q(n.account)}{by_from(e)}"


def _member_added(e: Any, n: Names) -> str:
    return f"user {_q(e.username)} added to {_q(n.account)} as {e.role}{by_from(e)}"


def _allowlist_added(e: Any, n: Names) -> str:
    return f"allowlist entry {e.cidr} ({_q(e.label)}) added to {_q(n.account)}{by_from(e)}"


def _allowlist_removed(e: Any, n: Names) -> str:
    forced = " (forced despite self-lockout)" if e.forced else ""
    return f"allowlist entry {e.cidr} removed from {_q(n.account)}{forced}{by_from(e)}"


def _cp_allowed(e: Any, n: Names) -> str:
    why = f"entry {e.entry_id}" if e.entry_id else "allowlist empty"
    return f"control panel of {_q(n.account)} opened to {e.ip} ({why}){by_from(e)}"


def _cp_denied(e: Any, n: Names) -> str:
    return f"control panel of {_q(n.account)} refused to {e.ip} (not allowlisted){by_from(e)}"


def _api_key_created(e: Any, n: Names) -> str:
    scopes = ", ".join(e.scopes)
    return f"API key {_q(e.name)} ({scopes}) created{by_from(e)}"


def _api_key_revoked(e: Any, n: Names) -> str:
    name = _q(n.key_name) if n.key_name else e.key_id
    return f"API key {name} ({e.key_id}) revoked{by_from(e)}: {e.reason}"


def _dkim_name(e: Any) -> str:
    return f"{e.selector}._domainkey.{e.domain}"


def _dkim_generated(e: Any, n: Names) -> str:
    campaign = f" [campaign {e.campaign_id}]" if e.campaign_id else ""
    return f"DKIM key {_dkim_name(e)} ({e.algorithm}) generated{by_from(e)}{campaign}"


def _dkim_published(e: Any, n: Names) -> str:
    return f"DKIM key {_dkim_name(e)} published{by_from(e)}"


def _dkim_activated(e: Any, n: Names) -> str:
    return f"DKIM key {_dkim_name(e)} activated{by_from(e)}"


def _dkim_retired(e: Any, n: Names) -> str:
    return f"DKIM key {_dkim_name(e)} retired{by_from(e)}: {e.reason}"


def _api_key_indexed(e: Any, n: Names) -> str:
    return f"API key id {e.key_id} indexed for account {_q(n.account)}"


def _key_name(e: Any, n: Names) -> str:
    return f"{_q(n.key_name)} ({e.key_id})" if n.key_name else e.key_id


def _api_key_used(e: Any, n: Names) -> str:
    return f"API key {_key_name(e, n)} of {_q(n.account)} used{by_from(e)}"


def _api_key_use_refused(e: Any, n: Names) -> str:
    return f"API key {_key_name(e, n)} of {_q(n.account)} refused: {e.reason}{by_from(e)}"


# --- CredentialAttempt --------------------------------------------------------------------


def _unknown_user(e: Any, n: Names) -> str:
    check = str(e.check).replace("_", " ")
    return f"{check} for unknown user {_q(e.username)} refused{by_from(e)}"


def _unknown_api_key(e: Any, n: Names) -> str:
    what = "malformed API key" if e.key_id is None else f"API key id {e.key_id}"
    return f"{what} refused ({e.reason}){by_from(e)}"


# --- User --------------------------------------------------------------------------------


def _registered(e: Any, n: Names) -> str:
    return f"user {_q(e.username)} registered in {_q(n.account)} as {e.role}{by_from(e)}"


def _password_set(e: Any, n: Names) -> str:
    return f"password of {_q(n.username)} set{by_from(e)}"


def _password_changed(e: Any, n: Names) -> str:
    return f"password of {_q(n.username)} changed{by_from(e)}"


def _password_rehashed(e: Any, n: Names) -> str:
    return f"password hash of {_q(n.username)} upgraded to current parameters at login"


def _reset_required(e: Any, n: Names) -> str:
    campaign = f" [campaign {e.campaign_id}]" if e.campaign_id else ""
    return f"password reset required for {_q(n.username)}{by_from(e)}: {e.reason}{campaign}"


def _reset_completed(e: Any, n: Names) -> str:
    return f"password reset completed for {_q(n.username)}{by_from(e)}"


def _login_succeeded(e: Any, n: Names) -> str:
    return f"login of {_q(n.username)} succeeded ({e.method}){by_from(e)}"


def _login_failed(e: Any, n: Names) -> str:
    return f"login of {_q(n.username)} failed: {e.reason}{by_from(e)}"


def _password_change_failed(e: Any, n: Names) -> str:
    return f"password change of {_q(n.username)} refused: {e.reason}{by_from(e)}"


def _totp_confirmation_failed(e: Any, n: Names) -> str:
    return (
        f"TOTP confirmation of {e.factor_id} for {_q(n.username)} refused: {e.reason}{by_from(e)}"
    )


def _locked(e: Any, n: Names) -> str:
    return f"user {_q(n.username)} locked after {e.failed_logins} failed logins"


def _unlocked(e: Any, n: Names) -> str:
    return f"user {_q(n.username)} unlocked{by_from(e)}"


def _disabled(e: Any, n: Names) -> str:
    return f"user {_q(n.username)} disabled{by_from(e)}: {e.reason}"


def _enabled(e: Any, n: Names) -> str:
    return f"user {_q(n.username)} enabled{by_from(e)}"


def _totp_started(e: Any, n: Names) -> str:
    return f"TOTP enrolment {_q(e.label)} ({e.factor_id}) started for {_q(n.username)}{by_from(e)}"


def _totp_confirmed(e: Any, n: Names) -> str:
    return f"TOTP factor {e.factor_id} of {_q(n.username)} confirmed{by_from(e)}"


def _factor_removed(e: Any, n: Names) -> str:
    return f"{e.kind} factor {e.factor_id} of {_q(n.username)} removed{by_from(e)}: {e.reason}"


def _recovery_generated(e: Any, n: Names) -> str:
    return f"{len(e.code_hashes)} recovery codes generated for {_q(n.username)}{by_from(e)}"


def _recovery_used(e: Any, n: Names) -> str:
    return f"recovery code #{e.index + 1} of {_q(n.username)} used{by_from(e)}"


def _internal_access(e: Any, n: Names) -> str:
    accounts = ", ".join(e.customer_accounts) if e.customer_accounts else "none"
    return (
        f"staff {_q(n.username)} {e.action} {e.system}/{e.resource} "
        f"({e.records} records; customer accounts: {accounts}){by_from(e)}"
    )


SUMMARISERS: dict[type, Summariser] = {
    Account.Opened: _opened,
    Account.TwoFactorPolicyChanged: _two_factor_policy,
    Account.MemberAdded: _member_added,
    Account.AllowlistEntryAdded: _allowlist_added,
    Account.AllowlistEntryRemoved: _allowlist_removed,
    Account.ControlPanelAccessAllowed: _cp_allowed,
    Account.ControlPanelAccessDenied: _cp_denied,
    Account.ApiKeyCreated: _api_key_created,
    Account.ApiKeyRevoked: _api_key_revoked,
    Account.DkimKeyGenerated: _dkim_generated,
    Account.DkimKeyPublished: _dkim_published,
    Account.DkimKeyActivated: _dkim_activated,
    Account.DkimKeyRetired: _dkim_retired,
    ApiKeyIndex.Indexed: _api_key_indexed,
    ApiKeyIndex.Used: _api_key_used,
    ApiKeyIndex.UseRefused: _api_key_use_refused,
    CredentialAttempt.UnknownUserRefused: _unknown_user,
    CredentialAttempt.UnknownApiKeyRefused: _unknown_api_key,
    User.PasswordChangeFailed: _password_change_failed,
    User.TotpConfirmationFailed: _totp_confirmation_failed,
    User.Registered: _registered,
    User.PasswordSet: _password_set,
    User.PasswordChanged: _password_changed,
    User.PasswordRehashed: _password_rehashed,
    User.PasswordResetRequired: _reset_required,
    User.PasswordResetCompleted: _reset_completed,
    User.LoginSucceeded: _login_succeeded,
    User.LoginFailed: _login_failed,
    User.UserLocked: _locked,
    User.UserUnlocked: _unlocked,
    User.UserDisabled: _disabled,
    User.UserEnabled: _enabled,
    User.TotpEnrolmentStarted: _totp_started,
    User.TotpEnrolmentConfirmed: _totp_confirmed,
    User.SecondFactorRemoved: _factor_removed,
    User.RecoveryCodesGenerated: _recovery_generated,
    User.RecoveryCodeUsed: _recovery_used,
    User.InternalSystemAccessed: _internal_access,
}


def generic_summary(type_name: str) -> Summariser:
    """For an event type without its own summariser: the type, the subject, the actor."""

    def summarise(e: Any, n: Names) -> str:
        subject = n.username or n.account
        about = f" for {_q(subject)}" if subject else ""
        return f"{type_name}{about}{by_from(e)}"

    return summarise


__all__ = ["SUMMARISERS", "Names", "Summariser", "by_from", "generic_summary"]
