"""The ledger's mapper: stored rows become domain events only if they are ours and fit.

The library's mapper imports whatever module a stored topic names before it decodes the
state. This one looks the topic up in the catalogue first (``domain.catalogue``), never
imports, and checks the decoded state against the class's fields before building the
event, so an edited row is refused with an error naming what is wrong.
"""

from __future__ import annotations

import uuid
from collections.abc import Hashable
from typing import Any, cast

from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import Mapper, StoredEvent, find_id_convertor

from domain.catalogue import SNAPSHOT_CLASS, event_class, state_problem
from domain.errors import DamagedHistoryError, UntrustedTopicError


def damaged(stored: StoredEvent, problem: str, *, snapshot: bool = False) -> DamagedHistoryError:
    """The error for one stored row (a Notification also knows its log position)."""
    return DamagedHistoryError(
        problem,
        originator_id=stored.originator_id,
        originator_version=stored.originator_version,
        topic=None if snapshot else stored.topic,
        position=getattr(stored, "id", None),
        snapshot=snapshot,
    )


def untrusted(stored: StoredEvent) -> UntrustedTopicError:
    return UntrustedTopicError(
        "the topic is not one of the ledger's event classes; refusing to import it",
        originator_id=stored.originator_id,
        originator_version=stored.originator_version,
        topic=stored.topic,
        position=getattr(stored, "id", None),
    )


def upcast(cls: type, state: dict[str, Any]) -> None:
    """Bring a decoded state from its stored class version to the class's, in place."""
    from_version = state.pop("class_version", 1)
    class_version = getattr(cls, "class_version", 1)
    if type(from_version) is not int or not 1 <= from_version <= class_version:
        raise ValueError(f"stored class version {from_version!r} is not one this code reads")
    while from_version < class_version:
        getattr(cls, f"upcast_v{from_version}_v{from_version + 1}")(state)
        from_version += 1


class TrustedMapper(Mapper[uuid.UUID]):
    """``Mapper.to_domain_event`` resolving topics only against the catalogue."""

    def to_domain_event(self, stored_event: StoredEvent) -> DomainEventProtocol[uuid.UUID]:
        cls = event_class(stored_event.topic)
        if cls is None:
            raise untrusted(stored_event)
        snapshot = cls is SNAPSHOT_CLASS
        try:
            state: Any = stored_event.state
            if self.cipher:
                state = self.cipher.decrypt(state)
            if self.compressor:
                state = self.compressor.decompress(state)
            event_state = self.transcoder.decode(state)
        except Exception as e:
            undecodable = f"its state cannot be decoded ({type(e).__name__})"
            raise damaged(stored_event, undecodable, snapshot=snapshot) from None
        if type(event_state) is not dict:
            raise damaged(stored_event, "its state is not a JSON object", snapshot=snapshot)
        try:
            upcast(cls, event_state)
        except Exception as e:
            raise damaged(stored_event, f"it cannot be upcast: {e}", snapshot=snapshot) from None
        problem = state_problem(cls, event_state)
        if problem is not None:
            raise damaged(stored_event, problem, snapshot=snapshot)
        id_type = cast(Hashable, type(stored_event.originator_id))
        id_convertor = find_id_convertor(cls, id_type)
        event_state["originator_id"] = id_convertor(stored_event.originator_id)
        event_state["originator_version"] = stored_event.originator_version
        domain_event: Any = object.__new__(cls)
        object.__setattr__(domain_event, "__dict__", event_state)
        return cast(DomainEventProtocol[uuid.UUID], domain_event)
