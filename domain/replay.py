"""Replaying an aggregate from its stored events, refusing a history that does not fit.

Each aggregate's versions run 1, 2, 3, ... with no gap; the first is the event that
creates it (or a snapshot stands in for the versions up to it); every event belongs to
the aggregate's class; and applying it must succeed. A row deleted from the middle, a
version renumbered, an event of another aggregate copied in, or a state the apply method
cannot take is reported as ``DamagedHistoryError`` naming the aggregate, the version and
what is wrong, never a traceback or a silently different aggregate.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from eventsourcing.domain import CanInitAggregate

from domain.catalogue import SNAPSHOT_CLASS, owner_of
from domain.errors import DamagedHistoryError


def _damaged(event: Any, problem: str) -> DamagedHistoryError:
    return DamagedHistoryError(
        problem,
        originator_id=event.originator_id,
        originator_version=event.originator_version,
        topic=getattr(type(event), "TOPIC", None),
        snapshot=isinstance(event, SNAPSHOT_CLASS),
    )


def check_next(aggregate: Any, event: Any) -> None:
    """Refuse ``event`` if it cannot come next in the history of ``aggregate``."""
    version = event.originator_version
    creates = isinstance(event, CanInitAggregate)
    if aggregate is None:
        if isinstance(event, SNAPSHOT_CLASS):
            return
        if not creates:
            raise _damaged(
                event,
                f"the history starts at version {version} with an event that does not "
                "create the aggregate: the versions before it are missing",
            )
        if version != 1:
            raise _damaged(event, f"the creating event has version {version}, not 1")
        return
    expected = aggregate.version + 1
    if creates or isinstance(event, SNAPSHOT_CLASS):
        raise _damaged(event, f"a second creating event at version {version}")
    if version > expected:
        missing = (
            f"version {expected}"
            if version == expected + 1
            else (f"versions {expected} to {version - 1}")
        )
        raise _damaged(event, f"{missing} of this aggregate are missing")
    if version != expected:
        raise _damaged(event, f"version {version} comes after version {aggregate.version}")
    owner = owner_of(type(event))
    if owner is not None and not isinstance(aggregate, owner):
        raise _damaged(
            event, f"a {owner.__name__} event in the history of a {type(aggregate).__name__}"
        )


def apply(aggregate: Any, event: Any) -> Any:
    """The aggregate after ``event``, checked."""
    check_next(aggregate, event)
    try:
        return event.mutate(aggregate)
    except DamagedHistoryError:
        raise
    except Exception as e:
        raise _damaged(event, f"it cannot be applied ({type(e).__name__}: {e})") from None


def replay(aggregate: Any, events: Iterable[Any]) -> Any:
    """``aggregate`` (None: not yet created) after every one of ``events``, in order.

    Also the library's projector function (``repository.get(..., projector_func=replay)``).
    """
    for event in events:
        aggregate = apply(aggregate, event)
    return aggregate
