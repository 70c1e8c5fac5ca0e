"""Who did it, from where, when: the context every event carries."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

from domain.rules import normalise_ip
from domain.text import bound_user_agent, check_actor_id, check_request_id


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

    def __post_init__(self) -> None:
        check_actor_id(self.id)

    @classmethod
    def parse(cls, text: str) -> Actor:
        """Parse ``kind:id`` (e.g. ``staff:e-042``)."""
        kind, sep, ident = text.partition(":")
        if not sep or not ident:
            raise ValueError(f"actor must look like KIND:ID, got {text[:80]!r}")
        try:
            actor_kind = ActorKind(kind)
        except ValueError:
            kinds = ", ".join(k.value for k in ActorKind)
            raise ValueError(f"actor kind {kind[:40]!r} is not one of {kinds}") from None
        return cls(actor_kind, ident)


SYSTEM_ACTOR = Actor(ActorKind.SYSTEM, "secstate")


@dataclass(frozen=True)
class RequestContext:
    """The request a command arrives in; stamped on every event it causes."""

    actor: Actor = SYSTEM_ACTOR
    source_ip: str | None = None
    user_agent: str | None = None
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def __post_init__(self) -> None:
        """Normalise and check the context; ValueError naming the field if it is bad."""
        if self.source_ip is not None:
            # One form everywhere, so filters and allowlists compare like with like.
            try:
                object.__setattr__(self, "source_ip", normalise_ip(self.source_ip))
            except ValueError as e:
                raise ValueError(f"source IP: {e}") from None
        # Never refused: a user agent is the remote party's to choose (see domain.text).
        object.__setattr__(self, "user_agent", bound_user_agent(self.user_agent))
        try:
            check_request_id(self.request_id)
        except ValueError as e:
            raise ValueError(f"{e}, got {self.request_id[:80]!r}") from None

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
