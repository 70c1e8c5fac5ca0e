"""The view contract: a read model a follower keeps from the event log, in SQL tables.

A view's rows and its position are written in one transaction per batch of events
(``projections.sinks.ViewSink``), so a crash neither skips nor repeats one.
"""

from __future__ import annotations

import functools
import json
import secrets
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from projections.sql import Dialect, Tx, ViewDB

REBUILD_SUFFIX = "__rebuild"


class View(ABC):
    """A read model maintained from the event log.

    ``tables`` are the view's tables by their live names; during a rebuild the follower
    asks for them with ``REBUILD_SUFFIX`` appended (``self.t(name)`` does it), builds them
    from position 0, then swaps them in with the tracking row in one transaction.
    Index and constraint names go through ``self.i(name)``, which appends a token fresh
    for each build, because renaming a table does not rename its indexes.
    """

    name: ClassVar[str]
    tables: ClassVar[tuple[str, ...]]

    def __init__(self) -> None:
        self.suffix = ""
        self.token = secrets.token_hex(4)

    def t(self, table: str) -> str:
        return table + self.suffix

    def i(self, index: str) -> str:
        return f"{index}_{self.token}"

    @abstractmethod
    def ddl(self, dialect: Dialect) -> list[str]:
        """CREATE TABLE / CREATE INDEX statements naming tables with ``self.t(...)`` and
        indexes and constraints with ``self.i(...)``."""

    @abstractmethod
    def apply_batch(self, tx: Tx, events: Sequence[tuple[int, Any]]) -> None:
        """Apply (position, domain event) pairs, in log order, inside ``tx``.

        Raise ``ProjectionFailedError`` naming the position and type of an event that
        cannot be applied; the whole batch is then rolled back.
        """

    def after_build(self, tx: Tx) -> None:  # noqa: B027 - optional hook, no-op by default
        """Called once a rebuild's shadow tables hold the whole log, just before the swap
        (e.g. to create indexes that were cheaper to build once than row by row)."""

    def build_started(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """A rebuild has just created its (empty) shadow tables: ``apply_batch`` will now
        see the whole log in order, so a view may keep what it writes in memory."""

    def build_ended(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """The rebuild finished, failed or stopped: drop whatever it kept in memory."""

    def rolled_back(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """A transaction that applied a batch rolled back: forget any in-memory state the
        batch changed (the tables no longer hold it)."""

    def caught_up(self, db: ViewDB) -> None:  # noqa: B027 - optional hook, no-op by default
        """A catch-up that applied events has reached its target (usually the head), in
        its own transactions after the last batch: e.g. to create indexes that were
        cheaper to build once the table is full. Check before taking any lock: this runs
        after every catch-up that applied something."""


def _not_serialisable(o: Any) -> Any:
    raise TypeError(f"Object of type {o.__class__.__name__} is not JSON serializable")


def compact_json(
    *,
    ensure_ascii: bool = True,
    sort_keys: bool = False,
    default: Callable[[Any], Any] | None = None,
) -> Callable[[Any], str]:
    """``json.dumps(obj, separators=(",", ":"), ...)``, same text, without building an
    encoder on every call (~1 us of a ~3 us call). No check for circular structures:
    for the views' own rows, which are trees."""
    c_make_encoder: Any = getattr(json.encoder, "c_make_encoder", None)
    if c_make_encoder is None:  # pragma: no cover - CPython always has the C encoder
        return functools.partial(
            json.dumps,
            ensure_ascii=ensure_ascii,
            sort_keys=sort_keys,
            default=default,
            separators=(",", ":"),
        )
    encode = c_make_encoder(
        None,  # markers: no circular check
        default or _not_serialisable,
        json.encoder.encode_basestring_ascii if ensure_ascii else json.encoder.encode_basestring,
        None,  # indent
        ":",
        ",",
        sort_keys,
        False,  # skipkeys
        True,  # allow_nan
    )

    def dumps(obj: Any) -> str:
        return "".join(encode(obj, 0))

    return dumps
