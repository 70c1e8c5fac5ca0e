"""The Kafka message value: one security event, its context and its payload model.

``SecurityEvent[PasswordChanged]`` is the whole value of a message of type
``io.secstate.user.password_changed.v1``: the event's place in its aggregate's history,
who did it from where and when, and ``data``, the event type's own payload model. It is
``domain.public.public_payload(event)`` with the account the event belongs to added.
"""

from __future__ import annotations

from typing import Annotated, Any, Generic, Literal, Self, TypeVar
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, Strict, model_validator

from contracts.payloads import EventData

ActorKind = Literal["user", "staff", "api_key", "system"]

DataT = TypeVar("DataT", bound=EventData)


class SecurityEvent(BaseModel, Generic[DataT]):
    """One published security event (the message value, ``content-type: application/json``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str = Field(description="The ledger's type name, e.g. User.PasswordChanged")
    aggregate_id: UUID = Field(description="The aggregate (account, user, API key, attempt)")
    version: Annotated[int, Strict(), Field(ge=1)] = Field(
        description="The aggregate's version this event made: 1, 2, 3, ... per aggregate"
    )
    account_id: UUID | None = Field(
        description="The account the event belongs to; null for a credential attempt "
        "against an unknown principal"
    )
    occurred_at: AwareDatetime = Field(description="Domain time: when it happened (UTC)")
    recorded_at: AwareDatetime = Field(description="When the ledger recorded it (UTC)")
    actor_kind: ActorKind
    actor_id: str = Field(description="Username, employee id, API key id or system component")
    source_ip: str | None = Field(description="Normalised IPv4/IPv6 text of the request")
    user_agent: str | None = Field(description="The request's user agent, as sent (bounded)")
    request_id: str = Field(description="Correlation id: every event of one command shares it")
    data: DataT

    @model_validator(mode="after")
    def _type_is_the_payload_models(self) -> Self:
        expected = getattr(type(self.data), "EVENT_TYPE", None)
        if expected is not None and self.type != expected:
            raise ValueError(f"type is {self.type!r} but the payload is {expected!r}'s")
        return self


AnySecurityEvent = SecurityEvent[Any]

__all__ = ["ActorKind", "AnySecurityEvent", "DataT", "SecurityEvent"]
