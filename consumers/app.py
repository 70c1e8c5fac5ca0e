"""A consumer: its name, its store and its handlers, one per payload model class.

Handlers are plain functions ``(delivery, tx) -> None``, registered with
``@app.handles(PasswordChanged)``. ``handle(delivery)`` is one message, in one transaction
of the consumer's store: it skips an event already handled (by ``ce_id``) or older than
the account's last sequence number, records a gap when numbers were skipped, runs the
handlers of the event's model, and records the ``ce_id`` and the account's new sequence
number with the handlers' effect, so a redelivered message changes nothing. The poll
loop that feeds it is ``consumers.runner`` (``app.run(...)``); tests call ``handle`` or
the handler functions themselves.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from consumers.delivery import Delivered, Rejected
from consumers.outcomes import ConsumerStatus, DeadLetter, Gap, Outcome, Result
from consumers.store import ConsumerStore, Tx
from contracts.payloads import MODELS, EventData

if TYPE_CHECKING:
    from consumers.kafka import ConnectionLike
    from consumers.runner import RunOptions, RunSummary

log = logging.getLogger("consumers")

Handler = Callable[[Delivered[Any], Tx], None]
HandlerT = TypeVar("HandlerT", bound=Callable[[Any, Tx], None])
_CONTRACT_MODELS = frozenset(MODELS)


def _now() -> str:
    return datetime.now(UTC).isoformat()


class ConsumerApp:
    """A named consumer over its own store; register handlers with ``handles``."""

    def __init__(self, name: str, *, store: ConsumerStore, tables: Sequence[str] = ()) -> None:
        if not name or not name.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"consumer name {name!r}: letters, digits, - and _ only")
        self.name = name
        self.store = store
        self._tables: list[str] = list(tables)
        self._handlers: dict[type[EventData], list[Handler]] = {}
        self._ready = False
        self._setup_lock = threading.Lock()

    # --- registration -------------------------------------------------------------------

    def handles(self, *models: type[EventData]) -> Callable[[HandlerT], HandlerT]:
        """Register the decorated function for each payload model class given."""
        if not models:
            raise TypeError("handles() needs at least one payload model class")
        for model in models:
            if model not in _CONTRACT_MODELS:
                raise TypeError(f"{model!r} is not a payload model of contracts.payloads")

        def register(handler: HandlerT) -> HandlerT:
            for model in models:
                self._handlers.setdefault(model, []).append(handler)
            return handler

        return register

    def add_handler(self, model: type[EventData], handler: Handler) -> None:
        self.handles(model)(handler)

    def handlers_for(self, model: type[EventData]) -> tuple[Handler, ...]:
        return tuple(self._handlers.get(model, ()))

    @property
    def handled_models(self) -> frozenset[type[EventData]]:
        return frozenset(self._handlers)

    def tables(self, *statements: str) -> None:
        """DDL of the handlers' own tables (``CREATE TABLE IF NOT EXISTS ...``)."""
        self._tables.extend(statements)
        self._ready = False

    def setup(self) -> None:
        """Make the runtime's and the handlers' tables (once; safe to call again)."""
        with self._setup_lock:
            if not self._ready:
                self.store.ensure_tables(self._tables)
                self._ready = True

    # --- one message --------------------------------------------------------------------

    def handle(self, delivered: Delivered[Any]) -> Result:
        """One message in one transaction (see the module's docstring). A handler's
        exception rolls everything back and propagates."""
        self.setup()
        with self.store.transaction() as tx:
            self._serialise(tx, delivered.partition_key)
            if self._was_handled(tx, delivered.ce_id):
                self._count(tx, Outcome.DUPLICATE)
                return Result(Outcome.DUPLICATE)
            last = self._last_sequence(tx, delivered.partition_key)
            late = False
            if delivered.sequence <= last:
                late = self._fills_gap(tx, delivered.partition_key, delivered.sequence)
                if not late:
                    self._count(tx, Outcome.STALE)
                    return Result(Outcome.STALE)
            gap = self._track(tx, delivered, last)
            handlers = self._handlers.get(type(delivered.data), ())
            for handler in handlers:
                handler(delivered, tx)
            outcome = Outcome.HANDLED if handlers else Outcome.NO_HANDLER
            self._record(tx, delivered, outcome)
            self._count(tx, outcome)
            if late:
                self._count(tx, "late_arrivals")
        if gap is not None:
            log.warning("%s", gap.describe(self.name))
        if late:
            log.warning(
                "%s: %s (sequence %d of %s) arrived after a later event; handled",
                self.name,
                delivered.ce_id,
                delivered.sequence,
                delivered.partition_key,
            )
        return Result(outcome, gap, late)

    def record_dead_letter(
        self,
        *,
        topic: str,
        partition: int,
        offset: int,
        reason: str,
        detail: str,
        dead_letter_topic: str,
        delivered: Delivered[Any] | None = None,
        rejected: Rejected | None = None,
    ) -> Gap | None:
        """After the dead-letter topic acknowledged a message: remember it, and when it
        was a valid event, mark its ``ce_id`` done and its sequence number seen (so a
        redelivery is skipped and the next event shows no false gap)."""
        self.setup()
        ce_id = delivered.ce_id if delivered else (rejected.ce_id if rejected else None)
        gap = None
        with self.store.transaction() as tx:
            tx.execute(
                "INSERT INTO consumer_dead_letters (consumer, topic, kafka_partition, "
                "kafka_offset, ce_id, reason, detail, dead_letter_topic, dead_lettered_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (consumer, topic, kafka_partition, kafka_offset) DO NOTHING",
                (
                    self.name,
                    topic,
                    partition,
                    offset,
                    ce_id,
                    reason,
                    detail[:2000],
                    dead_letter_topic,
                    _now(),
                ),
            )
            if delivered is not None:
                self._serialise(tx, delivered.partition_key)
                if not self._was_handled(tx, delivered.ce_id):
                    last = self._last_sequence(tx, delivered.partition_key)
                    if delivered.sequence > last:
                        gap = self._track(tx, delivered, last)
                    self._record(tx, delivered, Outcome.DEAD_LETTERED)
            self._count(tx, Outcome.DEAD_LETTERED)
            self._count(tx, f"dead_lettered.{reason}")
        if gap is not None:
            log.warning("%s", gap.describe(self.name))
        return gap

    # --- bookkeeping --------------------------------------------------------------------

    def _serialise(self, tx: Tx, key: str) -> None:
        # Two members of a group may hold one partition for a moment during a rebalance:
        # on PostgreSQL one account's messages are handled one at a time (SQLite's write
        # transaction holds the whole file already).
        if tx.dialect == "postgres":
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended(?, 0))",
                (f"secstate-consumer:{self.name}:{key}",),
            )

    def _was_handled(self, tx: Tx, ce_id: str) -> bool:
        return (
            tx.query_one(
                "SELECT 1 FROM consumer_handled WHERE consumer = ? AND ce_id = ?",
                (self.name, ce_id),
            )
            is not None
        )

    def _last_sequence(self, tx: Tx, key: str) -> int:
        row = tx.query_one(
            "SELECT last_sequence FROM consumer_sequences WHERE consumer = ? AND partition_key = ?",
            (self.name, key),
        )
        return int(row[0]) if row else 0

    def _fills_gap(self, tx: Tx, key: str, sequence: int) -> bool:
        return (
            tx.query_one(
                "SELECT 1 FROM consumer_gaps WHERE consumer = ? AND partition_key = ? "
                "AND expected <= ? AND got > ?",
                (self.name, key, sequence, sequence),
            )
            is not None
        )

    def _track(self, tx: Tx, delivered: Delivered[Any], last: int) -> Gap | None:
        """Move the key's sequence to this event's (if later); a gap if it skipped."""
        if delivered.sequence <= last:
            return None
        gap = None
        if delivered.sequence > last + 1:
            gap = Gap(
                partition_key=delivered.partition_key,
                expected=last + 1,
                got=delivered.sequence,
                ce_id=delivered.ce_id,
                topic=delivered.topic or "",
                partition=delivered.partition if delivered.partition is not None else -1,
                offset=delivered.offset if delivered.offset is not None else -1,
                detected_at=_now(),
            )
            tx.execute(
                "INSERT INTO consumer_gaps (consumer, partition_key, expected, got, ce_id, "
                "topic, kafka_partition, kafka_offset, detected_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (consumer, ce_id) DO NOTHING",
                (
                    self.name,
                    gap.partition_key,
                    gap.expected,
                    gap.got,
                    gap.ce_id,
                    gap.topic,
                    gap.partition,
                    gap.offset,
                    gap.detected_at,
                ),
            )
            self._count(tx, "gaps")
            self._count(tx, "missing", gap.missing)
        tx.execute(
            "INSERT INTO consumer_sequences (consumer, partition_key, last_sequence, last_ce_id) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (consumer, partition_key) DO UPDATE SET "
            "last_sequence = excluded.last_sequence, last_ce_id = excluded.last_ce_id",
            (self.name, delivered.partition_key, delivered.sequence, delivered.ce_id),
        )
        return gap

    def _record(self, tx: Tx, delivered: Delivered[Any], outcome: Outcome) -> None:
        tx.execute(
            "INSERT INTO consumer_handled (consumer, ce_id, ce_type, partition_key, sequence, "
            "outcome, topic, kafka_partition, kafka_offset, handled_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                self.name,
                delivered.ce_id,
                delivered.ce_type,
                delivered.partition_key,
                delivered.sequence,
                outcome.value,
                delivered.topic or "",
                delivered.partition if delivered.partition is not None else -1,
                delivered.offset if delivered.offset is not None else -1,
                _now(),
            ),
        )

    def _count(self, tx: Tx, name: str, by: int = 1) -> None:
        tx.execute(
            "INSERT INTO consumer_counters (consumer, name, value) VALUES (?, ?, ?) "
            "ON CONFLICT (consumer, name) DO UPDATE SET "
            "value = consumer_counters.value + excluded.value",
            (self.name, str(name), by),
        )

    # --- reading ------------------------------------------------------------------------

    def status(self, *, recent: int = 20) -> ConsumerStatus:
        """The counters, and the latest ``recent`` gaps and dead letters."""
        self.setup()
        with self.store.reading() as tx:
            counters = {
                str(name): int(value)
                for name, value in tx.query_all(
                    "SELECT name, value FROM consumer_counters WHERE consumer = ?", (self.name,)
                )
            }
            gaps = [
                Gap(
                    str(r[0]),
                    int(r[1]),
                    int(r[2]),
                    str(r[3]),
                    str(r[4]),
                    int(r[5]),
                    int(r[6]),
                    str(r[7]),
                )
                for r in tx.query_all(
                    "SELECT partition_key, expected, got, ce_id, topic, kafka_partition, "
                    "kafka_offset, detected_at FROM consumer_gaps WHERE consumer = ? "
                    "ORDER BY detected_at DESC, partition_key LIMIT ?",
                    (self.name, recent),
                )
            ]
            dead = [
                DeadLetter(
                    str(r[0]),
                    int(r[1]),
                    int(r[2]),
                    r[3],
                    str(r[4]),
                    str(r[5]),
                    str(r[6]),
                    str(r[7]),
                )
                for r in tx.query_all(
                    "SELECT topic, kafka_partition, kafka_offset, ce_id, reason, detail, "
                    "dead_letter_topic, dead_lettered_at FROM consumer_dead_letters "
                    "WHERE consumer = ? ORDER BY dead_lettered_at DESC, kafka_offset DESC "
                    "LIMIT ?",
                    (self.name, recent),
                )
            ]
        return ConsumerStatus(self.name, self.store.where, counters, gaps, dead)

    def handled_ids(self) -> set[str]:
        """Every ``ce_id`` this consumer has handled or dead-lettered."""
        self.setup()
        with self.store.reading() as tx:
            return {
                str(r[0])
                for r in tx.query_all(
                    "SELECT ce_id FROM consumer_handled WHERE consumer = ?", (self.name,)
                )
            }

    # --- the poll loop ------------------------------------------------------------------

    def run(
        self,
        connection: ConnectionLike,
        topic: str,
        group_id: str,
        *,
        stop: threading.Event | None = None,
        options: RunOptions | None = None,
    ) -> RunSummary:
        """Consume ``topic`` in ``group_id`` until ``stop`` is set (see consumers.runner)."""
        from consumers.runner import run

        return run(self, connection, topic, group_id, stop=stop, options=options)


__all__ = ["ConsumerApp", "ConsumerStatus", "DeadLetter", "Gap", "Handler", "Outcome", "Result"]
