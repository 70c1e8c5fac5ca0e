"""The public payload of every security event, one versioned model per event type.

Each model is the ``data`` of a published event: the event's own public fields, and the
public facts derived from a secret (``code_count``, never the codes), exactly as
``domain.public.public_payload`` gives them. Nothing secret is in any of them: no hash,
no sealed value, no ciphertext. The models refuse unknown fields, so a field that is
added to an event is a new version of its model, never a silent extra.

``EVENT_TYPE`` is the ledger's type name (``User.PasswordChanged``), ``VERSION`` the
payload's version, and ``CE_TYPE`` the CloudEvents type it is published under:
``io.secstate.<family>.<event>.v<VERSION>`` in snake case
(``io.secstate.user.password_changed.v1``).

This package imports nothing of secstate's: downstream teams import it on its own.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, Strict

CE_TYPE_PREFIX = "io.secstate."

# Integers and flags are exactly that on the wire: "5" is not 5, 1 is not true.
Count = Annotated[int, Strict(), Field(ge=0)]
Bool = Annotated[bool, Strict()]

AccountKind = Literal["customer", "staff"]
Role = Literal["owner", "teammate", "employee"]
DkimAlgorithm = Literal["rsa-sha256", "ed25519-sha256"]
LoginMethod = Literal["password", "password+totp", "password+recovery_code"]
# Why a check of a user's password (a login or a password change) was refused.
CheckRefusal = Literal[
    "bad_password",
    "user_locked",
    "user_disabled",
    "password_reset_required",
    "second_factor_missing",
    "second_factor_required_but_not_enrolled",
    "bad_second_factor",
    "totp_code_replayed",
    "no_password_set",
]
TotpConfirmationRefusal = Literal[
    "bad_second_factor",
    "no_pending_enrolment",
    "user_locked",
    "user_disabled",
    "password_reset_required",
]
FactorKind = Literal["totp", "webauthn", "sms"]
StaffAction = Literal["read", "export", "write", "delete"]
ApiKeyRefusal = Literal["bad_secret", "revoked"]
UnknownApiKeyReason = Literal["malformed", "unknown_key_id"]
CredentialCheck = Literal["login", "password_change", "totp_confirmation"]

_WORD_START = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def snake(name: str) -> str:
    """``ApiKeyIndex`` -> ``api_key_index``, ``PasswordChanged`` -> ``password_changed``."""
    return _WORD_START.sub("_", name).lower()


def family_of(event_type: str) -> str:
    """The aggregate family of a type name, in snake case: ``User.Registered`` -> ``user``."""
    return snake(event_type.partition(".")[0])


def ce_type_for(event_type: str, version: int) -> str:
    """``User.PasswordChanged``, 1 -> ``io.secstate.user.password_changed.v1``."""
    family, dot, event = event_type.partition(".")
    if not dot or not family or not event or "." in event:
        raise ValueError(f"event type {event_type!r} is not Family.Event")
    if version < 1:
        raise ValueError(f"payload version must be 1 or more, got {version}")
    return f"{CE_TYPE_PREFIX}{snake(family)}.{snake(event)}.v{version}"


class EventData(BaseModel):
    """The base of every payload model: frozen, no unknown fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    EVENT_TYPE: ClassVar[str]
    VERSION: ClassVar[int] = 1
    CE_TYPE: ClassVar[str]

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if "EVENT_TYPE" in vars(cls):
            cls.CE_TYPE = ce_type_for(cls.EVENT_TYPE, cls.VERSION)


# --- Account: a customer account or the staff organisation ------------------------------


class AccountOpened(EventData):
    """An account was opened (its id is derived from its name)."""

    EVENT_TYPE: ClassVar[str] = "Account.Opened"
    VERSION: ClassVar[int] = 1

    name: str
    kind: AccountKind
    display_name: str


class TwoFactorPolicyChanged(EventData):
    """The account began or stopped requiring a second factor at every login."""

    EVENT_TYPE: ClassVar[str] = "Account.TwoFactorPolicyChanged"
    VERSION: ClassVar[int] = 1

    required: Bool


class MemberAdded(EventData):
    """A user joined the account."""

    EVENT_TYPE: ClassVar[str] = "Account.MemberAdded"
    VERSION: ClassVar[int] = 1

    user_id: UUID
    username: str
    role: Role


class AllowlistEntryAdded(EventData):
    """A network may now reach the account's control panel."""

    EVENT_TYPE: ClassVar[str] = "Account.AllowlistEntryAdded"
    VERSION: ClassVar[int] = 1

    entry_id: str
    cidr: str
    label: str


class AllowlistEntryRemoved(EventData):
    """A network was removed from the control-panel allowlist (forced: despite the caller)."""

    EVENT_TYPE: ClassVar[str] = "Account.AllowlistEntryRemoved"
    VERSION: ClassVar[int] = 1

    entry_id: str
    cidr: str
    forced: Bool


class ControlPanelAccessAllowed(EventData):
    """An IP was let into the control panel (entry_id None: the allowlist is empty)."""

    EVENT_TYPE: ClassVar[str] = "Account.ControlPanelAccessAllowed"
    VERSION: ClassVar[int] = 1

    ip: str
    entry_id: str | None = Field(description="The entry that admitted it; null: no allowlist")


class ControlPanelAccessDenied(EventData):
    """An IP was refused entry to the control panel."""

    EVENT_TYPE: ClassVar[str] = "Account.ControlPanelAccessDenied"
    VERSION: ClassVar[int] = 1

    ip: str


class ApiKeyCreated(EventData):
    """An API key was issued (its secret is never published)."""

    EVENT_TYPE: ClassVar[str] = "Account.ApiKeyCreated"
    VERSION: ClassVar[int] = 1

    key_id: str = Field(description="The key's public id (the part after sst_)")
    name: str
    scopes: list[str]
    display: str = Field(description="The key's display form, sst_<key id>_...")


class ApiKeyRevoked(EventData):
    """An API key was revoked and no longer authenticates."""

    EVENT_TYPE: ClassVar[str] = "Account.ApiKeyRevoked"
    VERSION: ClassVar[int] = 1

    key_id: str
    reason: str


class DkimKeyGenerated(EventData):
    """A DKIM signing key was generated (only its public key is published)."""

    EVENT_TYPE: ClassVar[str] = "Account.DkimKeyGenerated"
    VERSION: ClassVar[int] = 1

    domain: str
    selector: str
    algorithm: DkimAlgorithm
    public_key: str = Field(description="The DNS p= value")
    campaign_id: str | None = Field(description="The rotation campaign that made it, if any")


class DkimKeyPublished(EventData):
    """A DKIM key's TXT record is in DNS."""

    EVENT_TYPE: ClassVar[str] = "Account.DkimKeyPublished"
    VERSION: ClassVar[int] = 1

    domain: str
    selector: str


class DkimKeyActivated(EventData):
    """Mail for the domain is now signed with this DKIM key."""

    EVENT_TYPE: ClassVar[str] = "Account.DkimKeyActivated"
    VERSION: ClassVar[int] = 1

    domain: str
    selector: str


class DkimKeyRetired(EventData):
    """A DKIM key is no longer used."""

    EVENT_TYPE: ClassVar[str] = "Account.DkimKeyRetired"
    VERSION: ClassVar[int] = 1

    domain: str
    selector: str
    reason: str


# --- User: one login identity -------------------------------------------------------------


class UserRegistered(EventData):
    """A user was registered in an account (its id is derived from the username)."""

    EVENT_TYPE: ClassVar[str] = "User.Registered"
    VERSION: ClassVar[int] = 1

    account_id: UUID
    username: str
    email: str
    role: Role


class PasswordSet(EventData):
    """The user's password was set, at registration or by an administrator."""

    EVENT_TYPE: ClassVar[str] = "User.PasswordSet"
    VERSION: ClassVar[int] = 1


class PasswordChanged(EventData):
    """The user changed the password, proving the current one."""

    EVENT_TYPE: ClassVar[str] = "User.PasswordChanged"
    VERSION: ClassVar[int] = 1


class PasswordRehashed(EventData):
    """The same password was hashed again with the current parameters at a login."""

    EVENT_TYPE: ClassVar[str] = "User.PasswordRehashed"
    VERSION: ClassVar[int] = 1


class PasswordResetRequired(EventData):
    """The user must reset the password before the next login."""

    EVENT_TYPE: ClassVar[str] = "User.PasswordResetRequired"
    VERSION: ClassVar[int] = 1

    reason: str
    campaign_id: str | None = Field(description="The reset campaign that required it, if any")


class PasswordResetCompleted(EventData):
    """The user completed a required password reset with a new password."""

    EVENT_TYPE: ClassVar[str] = "User.PasswordResetCompleted"
    VERSION: ClassVar[int] = 1

    campaign_id: str | None


class LoginSucceeded(EventData):
    """The user logged in."""

    EVENT_TYPE: ClassVar[str] = "User.LoginSucceeded"
    VERSION: ClassVar[int] = 1

    method: LoginMethod
    factor_id: str | None = Field(description="The TOTP factor used, if one was")
    totp_step: Count | None = Field(description="The TOTP time step of the code, if one was")


class LoginFailed(EventData):
    """A login was refused, with the reason."""

    EVENT_TYPE: ClassVar[str] = "User.LoginFailed"
    VERSION: ClassVar[int] = 1

    reason: CheckRefusal
    counts_toward_lockout: Bool = Field(description="A guess at a secret: counts toward lockout")


class PasswordChangeFailed(EventData):
    """A password change was refused, with the reason."""

    EVENT_TYPE: ClassVar[str] = "User.PasswordChangeFailed"
    VERSION: ClassVar[int] = 1

    reason: CheckRefusal
    counts_toward_lockout: Bool = Field(description="A guess at a secret: counts toward lockout")


class TotpConfirmationFailed(EventData):
    """A TOTP enrolment was not confirmed, with the reason."""

    EVENT_TYPE: ClassVar[str] = "User.TotpConfirmationFailed"
    VERSION: ClassVar[int] = 1

    factor_id: str
    reason: TotpConfirmationRefusal
    counts_toward_lockout: Bool = Field(description="A guess at a secret: counts toward lockout")


class UserLocked(EventData):
    """The user was locked after too many failed guesses."""

    EVENT_TYPE: ClassVar[str] = "User.UserLocked"
    VERSION: ClassVar[int] = 1

    failed_logins: Count = Field(description="Failed guesses that reached the threshold")


class UserUnlocked(EventData):
    """The user was unlocked."""

    EVENT_TYPE: ClassVar[str] = "User.UserUnlocked"
    VERSION: ClassVar[int] = 1


class UserDisabled(EventData):
    """The user was disabled: no logins, no actions as this actor."""

    EVENT_TYPE: ClassVar[str] = "User.UserDisabled"
    VERSION: ClassVar[int] = 1

    reason: str


class UserEnabled(EventData):
    """The user was enabled again."""

    EVENT_TYPE: ClassVar[str] = "User.UserEnabled"
    VERSION: ClassVar[int] = 1


class TotpEnrolmentStarted(EventData):
    """A TOTP factor was added, pending confirmation (its seed is never published)."""

    EVENT_TYPE: ClassVar[str] = "User.TotpEnrolmentStarted"
    VERSION: ClassVar[int] = 1

    factor_id: str
    label: str


class TotpEnrolmentConfirmed(EventData):
    """A TOTP factor was confirmed with a valid code."""

    EVENT_TYPE: ClassVar[str] = "User.TotpEnrolmentConfirmed"
    VERSION: ClassVar[int] = 1

    factor_id: str
    totp_step: Count = Field(description="The TOTP time step of the confirming code")


class SecondFactorRemoved(EventData):
    """A second factor was removed from the user."""

    EVENT_TYPE: ClassVar[str] = "User.SecondFactorRemoved"
    VERSION: ClassVar[int] = 1

    factor_id: str
    kind: FactorKind
    reason: str


class RecoveryCodesGenerated(EventData):
    """New recovery codes replaced the user's older ones (how many, never which)."""

    EVENT_TYPE: ClassVar[str] = "User.RecoveryCodesGenerated"
    VERSION: ClassVar[int] = 1

    code_count: Count = Field(description="How many codes were generated")


class RecoveryCodeUsed(EventData):
    """One recovery code was spent at a login."""

    EVENT_TYPE: ClassVar[str] = "User.RecoveryCodeUsed"
    VERSION: ClassVar[int] = 1

    index: Count = Field(description="Which code of the generated set, from 0")


class InternalSystemAccessed(EventData):
    """A staff employee read or changed an internal system."""

    EVENT_TYPE: ClassVar[str] = "User.InternalSystemAccessed"
    VERSION: ClassVar[int] = 1

    system: str
    resource: str
    action: StaffAction
    records: Count = Field(description="How many records it touched")
    customer_accounts: list[str] = Field(description="Names of the customer accounts touched")


# --- ApiKeyIndex: one API key's lookup entry and record of use ----------------------------


class ApiKeyIndexed(EventData):
    """An API key's id was mapped to its account."""

    EVENT_TYPE: ClassVar[str] = "ApiKeyIndex.Indexed"
    VERSION: ClassVar[int] = 1

    key_id: str
    account_id: UUID


class ApiKeyUsed(EventData):
    """An API key authenticated a request (recorded when it is news)."""

    EVENT_TYPE: ClassVar[str] = "ApiKeyIndex.Used"
    VERSION: ClassVar[int] = 1

    key_id: str
    account_id: UUID


class ApiKeyUseRefused(EventData):
    """An API key was presented with a wrong secret, or after it was revoked."""

    EVENT_TYPE: ClassVar[str] = "ApiKeyIndex.UseRefused"
    VERSION: ClassVar[int] = 1

    key_id: str
    account_id: UUID
    reason: ApiKeyRefusal


# --- CredentialAttempt: a refused check against an unknown principal ----------------------


class UnknownUserRefused(EventData):
    """A check named a username no user has."""

    EVENT_TYPE: ClassVar[str] = "CredentialAttempt.UnknownUserRefused"
    VERSION: ClassVar[int] = 1

    username: str
    check: CredentialCheck


class UnknownApiKeyRefused(EventData):
    """A malformed API key, or one whose key id no key has, was presented."""

    EVENT_TYPE: ClassVar[str] = "CredentialAttempt.UnknownApiKeyRefused"
    VERSION: ClassVar[int] = 1

    key_id: str | None = Field(description="The key id presented, when the key was well-formed")
    reason: UnknownApiKeyReason


MODELS: tuple[type[EventData], ...] = (
    AccountOpened,
    TwoFactorPolicyChanged,
    MemberAdded,
    AllowlistEntryAdded,
    AllowlistEntryRemoved,
    ControlPanelAccessAllowed,
    ControlPanelAccessDenied,
    ApiKeyCreated,
    ApiKeyRevoked,
    DkimKeyGenerated,
    DkimKeyPublished,
    DkimKeyActivated,
    DkimKeyRetired,
    UserRegistered,
    PasswordSet,
    PasswordChanged,
    PasswordRehashed,
    PasswordResetRequired,
    PasswordResetCompleted,
    LoginSucceeded,
    LoginFailed,
    PasswordChangeFailed,
    TotpConfirmationFailed,
    UserLocked,
    UserUnlocked,
    UserDisabled,
    UserEnabled,
    TotpEnrolmentStarted,
    TotpEnrolmentConfirmed,
    SecondFactorRemoved,
    RecoveryCodesGenerated,
    RecoveryCodeUsed,
    InternalSystemAccessed,
    ApiKeyIndexed,
    ApiKeyUsed,
    ApiKeyUseRefused,
    UnknownUserRefused,
    UnknownApiKeyRefused,
)
"""Every payload model, in the catalogue's order."""
