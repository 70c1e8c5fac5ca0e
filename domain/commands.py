"""Commands: pydantic models that validate input at the edge (CLI, future HTTP API).

``parse_command`` turns pydantic's ValidationError into an InvalidCommandError that
names every bad field. Secret fields are SecretStr so they never show in a repr.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    ValidationError,
    field_validator,
)

from domain.errors import InvalidCommandError
from domain.rules import normalise_ip, normalise_network
from domain.text import MAX_LABEL, MAX_REASON, MAX_SECRET, check_plain_text
from domain.values import AccountKind, Role

Strip = StringConstraints(strip_whitespace=True)


def _check_cidr(text: str) -> str:
    try:
        return str(normalise_network(text, strict=True))
    except ValueError as e:
        raise ValueError(f"not a valid CIDR network ({e})") from None


def _check_ip(text: str) -> str:
    return normalise_ip(text)


def _check_entry_ref(text: str) -> str:
    """An allowlist entry's id, or a CIDR naming it."""
    if re.fullmatch(r"ale_[0-9a-f]{12}", text):
        return text
    try:
        return str(normalise_network(text, strict=False))
    except ValueError:
        raise ValueError("must be an allowlist entry id (ale_...) or a CIDR network") from None


AccountName = Annotated[
    str,
    Strip,
    Field(
        pattern=r"^[a-z0-9][a-z0-9-]{1,62}$",
        description="lowercase slug: letters, digits and '-', 2-63 chars",
    ),
]
Username = Annotated[
    str,
    Strip,
    Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._@+-]{1,127}$", description="2-128 chars"),
]
Email = Annotated[
    str,
    Strip,
    Field(pattern=r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]{2,}$", max_length=254),
    AfterValidator(check_plain_text),
]
# Names, labels and reasons: plain printable text (see domain.text), bounded.
Label = Annotated[
    str, Strip, Field(min_length=1, max_length=MAX_LABEL), AfterValidator(check_plain_text)
]
Reason = Annotated[
    str, Strip, Field(min_length=1, max_length=MAX_REASON), AfterValidator(check_plain_text)
]
# A password, code or token as read at the edge: bounded before anything looks at it.
Secret = Annotated[SecretStr, Field(max_length=MAX_SECRET)]
Cidr = Annotated[str, Strip, AfterValidator(_check_cidr)]
IpAddress = Annotated[str, Strip, AfterValidator(_check_ip)]
Scope = Annotated[str, Strip, Field(pattern=r"^[a-z][a-z0-9_.:-]{0,63}$")]
Domain = Annotated[
    str,
    Strip,
    Field(
        pattern=r"^([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\.)+[a-zA-Z]{2,63}$",
        max_length=253,
    ),
]
Selector = Annotated[str, Strip, Field(pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]
CampaignId = Annotated[str, Strip, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$")]
TotpCode = Annotated[str, Strip, Field(pattern=r"^[0-9]{6}$")]  # \d would admit non-ASCII digits
KeyId = Annotated[str, Strip, Field(pattern=r"^[0-9A-Za-z]{12}$")]
MAX_RECORDS = 10**12  # records touched by one staff access: beyond any real export


class Command(BaseModel):
    # Text fields strip surrounding blanks (see Text); secrets are kept exactly as typed.
    # defer_build: a command model is built when first used, so a command line that
    # parses one command does not pay for building the other thirty at import.
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)


class OpenAccount(Command):
    name: AccountName
    kind: AccountKind = AccountKind.CUSTOMER
    display_name: Label | None = None


class SetTwoFactorPolicy(Command):
    account: AccountName
    required: bool


class RegisterUser(Command):
    account: AccountName
    username: Username
    email: Email
    password: Secret
    role: Role = Role.OWNER


class SetPassword(Command):
    username: Username
    password: Secret


class ChangePassword(Command):
    username: Username
    current_password: Secret
    new_password: Secret


class RequirePasswordReset(Command):
    username: Username
    reason: Reason
    campaign_id: CampaignId | None = None


class RequirePasswordResets(Command):
    """Bulk: mark every user of the named accounts, the named users, or everyone."""

    reason: Reason
    campaign_id: CampaignId
    usernames: list[Username] = Field(default_factory=list)
    accounts: list[AccountName] = Field(default_factory=list)
    # validate_default: without it pydantic skips the check below when everyone is omitted,
    # and a command with no target at all would pass.
    everyone: bool = Field(default=False, validate_default=True)

    @field_validator("everyone")
    @classmethod
    def _one_target(cls, everyone: bool, info: Any) -> bool:
        if "usernames" not in info.data or "accounts" not in info.data:
            return everyone  # a target field is already reported as invalid
        targeted = bool(info.data.get("usernames")) or bool(info.data.get("accounts"))
        if everyone and targeted:
            raise ValueError("'everyone' cannot be combined with usernames or accounts")
        if not everyone and not targeted:
            raise ValueError("name usernames or accounts, or set everyone")
        return everyone


class CompletePasswordReset(Command):
    username: Username
    new_password: Secret


class Login(Command):
    username: Username
    password: Secret
    totp_code: TotpCode | None = None
    recovery_code: Secret | None = None


class UnlockUser(Command):
    username: Username


class DisableUser(Command):
    username: Username
    reason: Reason


class EnableUser(Command):
    username: Username


class CreateApiKey(Command):
    account: AccountName
    name: Label
    scopes: list[Scope] = Field(min_length=1, max_length=50)


class RevokeApiKey(Command):
    account: AccountName
    key_id: KeyId
    reason: Reason


class AuthenticateApiKey(Command):
    token: Secret


class StartTotpEnrolment(Command):
    username: Username
    label: Label = "authenticator app"


class ConfirmTotpEnrolment(Command):
    username: Username
    factor_id: Annotated[str, Strip, Field(pattern=r"^tf_[0-9a-f]{12}$")]
    code: TotpCode


class RemoveSecondFactor(Command):
    username: Username
    factor_id: Annotated[str, Strip, Field(pattern=r"^tf_[0-9a-f]{12}$")]
    reason: Reason = "removed by request"


class GenerateRecoveryCodes(Command):
    username: Username
    count: Annotated[int, Field(ge=5, le=20)] = 10


class AddAllowlistEntry(Command):
    account: AccountName
    cidr: Cidr
    label: Label


class RemoveAllowlistEntry(Command):
    account: AccountName
    entry: Annotated[
        str,
        Strip,
        Field(min_length=1, max_length=64, description="entry id or CIDR"),
        AfterValidator(_check_entry_ref),
    ]
    force: bool = False


class CheckControlPanelAccess(Command):
    account: AccountName
    ip: IpAddress


class GenerateDkimKey(Command):
    account: AccountName
    domain: Domain
    selector: Selector
    algorithm: Literal["rsa-sha256", "ed25519-sha256"] = "rsa-sha256"
    campaign_id: CampaignId | None = None


class DkimKeyRef(Command):
    account: AccountName
    domain: Domain
    selector: Selector


class PublishDkimKey(DkimKeyRef):
    pass


class ActivateDkimKey(DkimKeyRef):
    pass


class RetireDkimKey(DkimKeyRef):
    reason: Reason = "retired"


class RecordStaffAccess(Command):
    username: Username
    system: Annotated[
        str, Strip, Field(min_length=1, max_length=100), AfterValidator(check_plain_text)
    ]
    resource: Annotated[
        str, Strip, Field(min_length=1, max_length=MAX_LABEL), AfterValidator(check_plain_text)
    ]
    action: Literal["read", "export", "write", "delete"] = "read"
    records: Annotated[int, Field(ge=0, le=MAX_RECORDS)]
    customer_accounts: list[AccountName] = Field(default_factory=list)


C = TypeVar("C", bound=Command)


def parse_command(command_class: type[C], **data: Any) -> C:
    """Validate raw input into a command, naming every bad field on failure."""
    try:
        return command_class.model_validate(data)
    except ValidationError as e:
        raise InvalidCommandError(command_class.__name__, describe_validation_error(e)) from None


def describe_validation_error(error: ValidationError) -> list[str]:
    problems = []
    for item in error.errors(include_input=False, include_url=False):
        where = ".".join(str(p) for p in item["loc"]) or "input"
        msg = item["msg"].removeprefix("Value error, ")
        if item["type"] == "string_pattern_mismatch":
            msg = f"has an invalid format (expected {item.get('ctx', {}).get('pattern')})"
        problems.append(f"{where}: {msg}")
    return problems
