"""Who did it, from where, when: the context every event carries."""

from __future__ import annotations

import ipaddress
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol


class ActorKind(StrEnum):
    USER = "user"
    STAFF = "staff"
    API_KEY = "api_key"
    SYSTEM = "system"


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    """Wall-clock time in UTC."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class SteppedClock:
    """A clock that starts at a given moment and only moves when told to (demo, tests)."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("SteppedClock needs a timezone-aware start")
        self._now = start.astimezone(UTC)

    def now(self) -> datetime:
        return self._now

    def set(self, moment: datetime) -> None:
        if moment.tzinfo is None:
            raise ValueError("SteppedClock needs timezone-aware times")
        self._now = moment.astimezone(UTC)


@dataclass(frozen=True)
class Actor:
    kind: ActorKind
    id: str

    def __str__(self) -> str:
        return f"{self.kind.value}:{self.id}"

    @classmethod
    def parse(cls, text: str) -> Actor:
        """Parse ``kind:id`` (e.g. ``staff:e-042``)."""
        kind, sep, ident = text.partition(":")
        if not sep or not ident:
            raise ValueError(f"actor must look like KIND:ID, got {text!r}")
        try:
            return cls(ActorKind(kind), ident)
        except ValueError:
            kinds = ", ".join(k.value for k in ActorKind)
            raise ValueError(f"actor kind {kind!r} is not one of {kinds}") from None


SYSTEM_ACTOR = Actor(ActorKind.SYSTEM, "secstate")


@dataclass(frozen=True)
class RequestContext:
    """The request a command arrives in; stamped on every event it causes."""

    actor: Actor = SYSTEM_ACTOR
    source_ip: str | None = None
    user_agent: str | None = None
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def __post_init__(self) -> None:
        if self.source_ip is not None:
            # Normalise so filters compare like with like; raises ValueError on junk.
            object.__setattr__(self, "source_ip", str(ipaddress.ip_address(self.source_ip)))

    def event_fields(self, occurred_at: datetime) -> dict[str, Any]:
        return {
            "actor_kind": self.actor.kind.value,
            "actor_id": self.actor.id,
            "source_ip": self.source_ip,
            "user_agent": self.user_agent,
            "request_id": self.request_id,
            "occurred_at": occurred_at,
        }


@dataclass(frozen=True)
class Stamp:
    """A request context fixed at one moment: what each event of a command carries."""

    ctx: RequestContext
    occurred_at: datetime

    def fields(self) -> dict[str, Any]:
        return self.ctx.event_fields(self.occurred_at)

    @property
    def actor(self) -> Actor:
        return self.ctx.actor
