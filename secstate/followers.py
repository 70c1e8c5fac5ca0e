"""Every follower of the log this installation runs, by name: how to open one on the
configured store, and where it stands without opening it.

The read views (``projections.registry``) are registered here as view followers; a
follower of another kind (the Kafka relay, the integrity log) registers a
``FollowerKind`` of its own with ``register``. The runner (``secstate.runner``) and
``secstate project`` know followers only through this module. Followers are opened
from a ``LedgerReader``: no follower holds the application keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol

from domain.reader import LedgerReader
from projections.follower import OpenedFollower, view_follower
from projections.registry import make_view, pick_names, view_names
from projections.status import FollowerStatus, ViewError, read_last_error, read_position
from secstate.bootstrap import open_view_db
from secstate.relaying import RelayFollowerKind
from secstate.settings import Settings


class FollowerKind(Protocol):
    """One registered follower: opened on demand, its standing read without opening it."""

    @property
    def name(self) -> str: ...

    def open(self, settings: Settings, reader: LedgerReader, batch_size: int) -> OpenedFollower:
        """The follower on the configured store (tables created if missing)."""
        ...

    def stored(self, settings: Settings) -> tuple[int | None, ViewError | None]:
        """Its saved position (None if it never ran) and last error, creating nothing."""
        ...


@dataclass(frozen=True)
class ViewFollowerKind:
    """A read view's follower: its rows and position in its own view database."""

    name: str

    def open(self, settings: Settings, reader: LedgerReader, batch_size: int) -> OpenedFollower:
        db = open_view_db(settings, self.name)
        try:
            follower = view_follower(reader, make_view(self.name), db, batch_size)
        except BaseException:
            db.close()
            raise
        return OpenedFollower(follower, db.close)

    def stored(self, settings: Settings) -> tuple[int | None, ViewError | None]:
        db = open_view_db(settings, self.name)
        try:
            return read_position(db, self.name), read_last_error(db, self.name)
        finally:
            db.close()


# Followers that are not views, by name; the Kafka relay runs only when asked for (it
# needs a broker, and runs as its own process: ``secstate relay run``).
_OTHERS: dict[str, FollowerKind] = {"relay": RelayFollowerKind()}
_NOT_BY_DEFAULT: set[str] = {"relay"}


def _followers() -> dict[str, FollowerKind]:
    """Every registered follower: each read view, and the others."""
    return {**{name: ViewFollowerKind(name) for name in view_names()}, **_OTHERS}


def register(kind: FollowerKind, *, by_default: bool = True) -> None:
    """Make ``kind`` known to the runner and to ``project status`` by its name; with
    ``by_default``, ``project run`` without names runs it too."""
    if kind.name in _followers():
        raise ValueError(f"a follower named {kind.name!r} is registered already")
    _OTHERS[kind.name] = kind
    if not by_default:
        _NOT_BY_DEFAULT.add(kind.name)


def follower_names() -> list[str]:
    """Every registered follower's name."""
    return sorted(_followers())


def default_follower_names() -> list[str]:
    """The followers ``project run`` runs when given no names."""
    return [name for name in follower_names() if name not in _NOT_BY_DEFAULT]


def check_follower_names(names: list[str]) -> list[str]:
    """The names asked for, in order without repeats (each must be registered); the
    default followers if none."""
    if not names:
        return default_follower_names()
    return pick_names(names, follower_names())


def open_follower(
    settings: Settings, reader: LedgerReader, name: str, batch_size: int = 2000
) -> OpenedFollower:
    check_follower_names([name])
    return _followers()[name].open(settings, reader, batch_size)


Standing = Literal["not started", "caught up", "behind", "failed"]


@dataclass(frozen=True)
class FollowerReport:
    """Where one follower stands against the log's head."""

    name: str
    position: int
    head: int
    lag: int
    state: Standing
    last_error: ViewError | None

    @property
    def failed_at(self) -> datetime | None:
        return self.last_error.failed_at if self.last_error else None


def follower_report(settings: Settings, reader: LedgerReader, name: str) -> FollowerReport:
    """Where a follower stands, read without creating its tables."""
    check_follower_names([name])
    head = reader.log_store.head()
    position, error = _followers()[name].stored(settings)
    status = FollowerStatus(name, position or 0, head, error)
    state: Standing
    if error is not None:
        state = "failed"
    elif position is None:
        state = "not started"
    else:
        state = "caught up" if status.lag == 0 else "behind"
    return FollowerReport(name, status.position, head, status.lag, state, error)


__all__ = [
    "FollowerKind",
    "FollowerReport",
    "OpenedFollower",
    "ViewFollowerKind",
    "check_follower_names",
    "default_follower_names",
    "follower_names",
    "follower_report",
    "open_follower",
    "register",
]
