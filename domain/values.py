"""Value objects held inside aggregates, and the event base that carries request context."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from eventsourcing.domain import Aggregate

# Fixed namespace so natural keys (usernames, account names, key ids) map to stable ids.
SECSTATE_NAMESPACE = uuid.UUID("6f1f7d1e-5c5b-4b8e-9c7a-2d0b5e3c9a11")


def natural_id(kind: str, key: str) -> uuid.UUID:
    return uuid.uuid5(SECSTATE_NAMESPACE, f"{kind}:{key}")


class AccountKind(StrEnum):
    CUSTOMER = "customer"
    STAFF = "staff"


class Role(StrEnum):
    OWNER = "owner"
    TEAMMATE = "teammate"
    EMPLOYEE = "employee"


class UserStatus(StrEnum):
    ACTIVE = "active"
    RESET_REQUIRED = "reset_required"
    LOCKED = "locked"
    DISABLED = "disabled"


class FactorKind(StrEnum):
    TOTP = "totp"
    # The model admits more kinds (webauthn, sms): a factor is a kind plus sealed material.
    WEBAUTHN = "webauthn"
    SMS = "sms"


class DkimKeyState(StrEnum):
    GENERATED = "generated"
    PUBLISHED = "published"
    ACTIVE = "active"
    RETIRED = "retired"


# Fields every event carries: the library's bookkeeping and the request context.
ENVELOPE_FIELDS = frozenset(
    {
        "originator_id",
        "originator_version",
        "originator_topic",
        "timestamp",
        "actor_kind",
        "actor_id",
        "source_ip",
        "user_agent",
        "request_id",
        "occurred_at",
    }
)


class ContextEvent(Aggregate.Event):
    """Fields every secstate event carries, so investigators can filter on them."""

    actor_kind: str
    actor_id: str
    source_ip: str | None
    user_agent: str | None
    request_id: str
    occurred_at: datetime


@dataclass
class Member:
    user_id: str
    username: str
    role: str
    added_at: datetime


@dataclass
class AllowlistEntry:
    entry_id: str
    cidr: str
    label: str
    added_at: datetime
    added_by: str


@dataclass
class ApiKey:
    key_id: str
    name: str
    scopes: list[str]
    display: str
    secret_hash: str
    created_by: str
    created_at: datetime
    revoked_at: datetime | None = None
    revoked_by: str | None = None
    revoke_reason: str | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass
class DkimKey:
    domain: str
    selector: str
    algorithm: str
    public_key: str
    sealed_private_key: str
    state: str
    generated_at: datetime
    published_at: datetime | None = None
    activated_at: datetime | None = None
    retired_at: datetime | None = None
    retire_reason: str | None = None
    campaign_id: str | None = None


@dataclass
class SecondFactor:
    factor_id: str
    kind: str
    label: str
    sealed_secret: str
    started_at: datetime
    confirmed_at: datetime | None = None
    last_used_step: int | None = None

    @property
    def confirmed(self) -> bool:
        return self.confirmed_at is not None


@dataclass
class RecoveryCodes:
    generated_at: datetime
    hashes: list[str | None] = field(default_factory=list)  # None marks a used code

    @property
    def remaining(self) -> int:
        return sum(1 for h in self.hashes if h is not None)


VALUE_TYPES: tuple[type, ...] = (
    Member,
    AllowlistEntry,
    ApiKey,
    DkimKey,
    SecondFactor,
    RecoveryCodes,
)
