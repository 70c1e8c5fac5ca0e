"""Why a follower stops."""

from __future__ import annotations

from domain.errors import DamagedHistoryError
from domain.errors import UntrustedTopicError as UntrustedTopicError  # where callers look


class ProjectionError(Exception):
    """A follower could not take an event; it stops at the position before it."""


class ProjectionFailedError(ProjectionError):
    def __init__(self, view: str, position: int, event_type: str, cause: BaseException) -> None:
        self.view = view
        self.position = position
        self.event_type = event_type
        self.cause = cause
        # A damaged row says what is wrong itself; other causes are named by their type.
        why = (
            str(cause)
            if isinstance(cause, DamagedHistoryError)
            else f"{type(cause).__name__}: {cause}"
        )
        super().__init__(
            f"projection {view!r} stopped at position {position} ({event_type[:80]}): {why}"
        )


class PositionMovedError(Exception):
    """Another writer moved a follower's position (a rebuild swap, a second runner)."""
