"""Where each follower stands: its position, the log's head, and why it last stopped,
as stored beside its effects."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from projections.sql import ViewDB

# Beside the views: one position per follower, and its last error.
TRACKING_TABLE = "view_tracking"
ERRORS_TABLE = "view_errors"


@dataclass(frozen=True)
class ViewError:
    """Why a follower last stopped, as stored beside it (cleared once it moves on)."""

    view: str
    position: int
    event_type: str | None
    message: str
    failed_at: datetime


@dataclass(frozen=True)
class FollowerStatus:
    view: str
    position: int
    head: int
    last_error: ViewError | None = None

    @property
    def lag(self) -> int:
        return max(0, self.head - self.position)


def read_last_error(db: ViewDB, name: str) -> ViewError | None:
    """The stored error of a follower, if any (None too if the table is not there yet)."""
    if not db.table_exists(ERRORS_TABLE):
        return None
    with db.reading() as tx:
        row = tx.query_one(
            f"SELECT position, event_type, message, failed_at FROM {ERRORS_TABLE} "  # noqa: S608 - constant table names
            "WHERE view_name=?",
            (name,),
        )
    if row is None:
        return None
    return ViewError(name, int(row[0]), row[1], str(row[2]), datetime.fromisoformat(str(row[3])))


def read_position(db: ViewDB, name: str) -> int | None:
    """A follower's stored position without creating anything; None if it never ran."""
    if not db.table_exists(TRACKING_TABLE):
        return None
    with db.reading() as tx:
        row = tx.query_one(f"SELECT position FROM {TRACKING_TABLE} WHERE view_name=?", (name,))  # noqa: S608 - constant table names
    return int(row[0]) if row else None
