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
from collections import Counter
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
        return self.handle_batch([delivered])[0]

    def handle_batch(self, batch: Sequence[Delivered[Any]]) -> list[Result]:
        """Several messages, in order, in ONE transaction: all their effects and
        bookkeeping commit together (one commit, and a few statements of bookkeeping for
        the whole batch), or, if a handler raises, none does and the exception
        propagates."""
        self.setup()
        results: list[Result] = []
        with self.store.transaction() as tx:
            books = _Books(self, tx, batch)
            for delivered in batch:
                results.append(self._handle_in(tx, books, delivered))
            books.write()
        for delivered, result in zip(batch, results, strict=True):
            if result.gap is not None:
                log.warning("%s", result.gap.describe(self.name))
            if result.late:
                log.warning(
                    "%s: %s (sequence %d of %s) arrived after a later event; handled",
                    self.name,
                    delivered.ce_id,
                    delivered.sequence,
                    delivered.partition_key,
                )
        return results

    def _handle_in(self, tx: Tx, books: _Books, delivered: Delivered[Any]) -> Result:
        if delivered.ce_id in books.handled:
            books.counts[Outcome.DUPLICATE] += 1
            return Result(Outcome.DUPLICATE)
        key = delivered.partition_key
        late = False
        if delivered.sequence <= books.last.get(key, 0):
            late = self._fills_gap(tx, key, delivered.sequence)
            if not late:
                books.counts[Outcome.STALE] += 1
                return Result(Outcome.STALE)
            books.counts["late_arrivals"] += 1
        gap = books.track(delivered)
        handlers = self._handlers.get(type(delivered.data), ())
        for handler in handlers:
            handler(delivered, tx)
        outcome = Outcome.HANDLED if handlers else Outcome.NO_HANDLER
        books.record(delivered, outcome)
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
            books = _Books(self, tx, [delivered] if delivered is not None else [])
            if delivered is not None and delivered.ce_id not in books.handled:
                gap = books.track(delivered)
                books.record(delivered, Outcome.DEAD_LETTERED, count=False)
            books.counts[Outcome.DEAD_LETTERED] += 1
            books.counts[f"dead_lettered.{reason}"] += 1
            books.write()
        if gap is not None:
            log.warning("%s", gap.describe(self.name))
        return gap

    def was_dead_lettered(self, topic: str, partition: int, offset: int) -> bool:
        """Whether the message at ``topic[partition]@offset`` was sent to the dead-letter
        topic already (a redelivery after a crash is not sent twice)."""
        self.setup()
        with self.store.reading() as tx:
            return (
                tx.query_one(
                    "SELECT 1 FROM consumer_dead_letters WHERE consumer = ? AND topic = ? "
                    "AND kafka_partition = ? AND kafka_offset = ?",
                    (self.name, topic, partition, offset),
                )
                is not None
            )

    # --- bookkeeping --------------------------------------------------------------------

    def _fills_gap(self, tx: Tx, key: str, sequence: int) -> bool:
        return (
            tx.query_one(
                "SELECT 1 FROM consumer_gaps WHERE consumer = ? AND partition_key = ? "
                "AND expected <= ? AND got > ?",
                (self.name, key, sequence, sequence),
            )
            is not None
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


class _Books:
    """The bookkeeping of one transaction: read once for the whole batch (which ce_ids
    are handled, where each account's sequence stands), kept in memory while the handlers
    run, written at the end (handled ids, sequences, counters) in a few statements."""

    def __init__(self, app: ConsumerApp, tx: Tx, batch: Sequence[Delivered[Any]]) -> None:
        self.name = app.name
        self.tx = tx
        self.counts: Counter[str] = Counter()
        self.rows: list[tuple[Any, ...]] = []
        self.moved: dict[str, tuple[int, str]] = {}
        keys = sorted({d.partition_key for d in batch})
        ids = sorted({d.ce_id for d in batch})
        if not keys:
            self.handled: set[str] = set()
            self.last: dict[str, int] = {}
            return
        if tx.dialect == "postgres":
            # Two members of a group may hold one partition for a moment during a
            # rebalance: on PostgreSQL an account's messages are handled by one
            # transaction at a time (locks taken in key order, so never a deadlock;
            # SQLite's write transaction holds the whole file already).
            tx.execute(
                "SELECT count(pg_advisory_xact_lock(hashtextextended(k, 0))) "
                "FROM unnest(?::text[]) AS t(k)",
                ([f"secstate-consumer:{self.name}:{key}" for key in keys],),
            )
        marks = ", ".join("?" * len(ids))
        self.handled = {
            str(row[0])
            for row in tx.query_all(
                f"SELECT ce_id FROM consumer_handled WHERE consumer = ? AND ce_id IN ({marks})",  # noqa: S608 - placeholders only
                (self.name, *ids),
            )
        }
        marks = ", ".join("?" * len(keys))
        self.last = {
            str(row[0]): int(row[1])
            for row in tx.query_all(
                "SELECT partition_key, last_sequence FROM consumer_sequences "  # noqa: S608 - placeholders only
                f"WHERE consumer = ? AND partition_key IN ({marks})",
                (self.name, *keys),
            )
        }

    def track(self, delivered: Delivered[Any]) -> Gap | None:
        """Move the account's sequence on to this event's (if later); a gap (recorded at
        once, so a late event of it is recognised in this transaction) if it skipped."""
        key = delivered.partition_key
        last = self.last.get(key, 0)
        if delivered.sequence <= last:
            return None
        gap = None
        if delivered.sequence > last + 1:
            gap = Gap(
                partition_key=key,
                expected=last + 1,
                got=delivered.sequence,
                ce_id=delivered.ce_id,
                topic=delivered.topic or "",
                partition=delivered.partition if delivered.partition is not None else -1,
                offset=delivered.offset if delivered.offset is not None else -1,
                detected_at=_now(),
            )
            self.tx.execute(
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
            self.counts["gaps"] += 1
            self.counts["missing"] += gap.missing
        self.last[key] = delivered.sequence
        self.moved[key] = (delivered.sequence, delivered.ce_id)
        return gap

    def record(self, delivered: Delivered[Any], outcome: Outcome, *, count: bool = True) -> None:
        self.handled.add(delivered.ce_id)
        if count:
            self.counts[outcome] += 1
        self.rows.append(
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
            )
        )

    def write(self) -> None:
        tx = self.tx
        tx.executemany(
            "INSERT INTO consumer_handled (consumer, ce_id, ce_type, partition_key, sequence, "
            "outcome, topic, kafka_partition, kafka_offset, handled_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            self.rows,
        )
        tx.executemany(
            "INSERT INTO consumer_sequences (consumer, partition_key, last_sequence, last_ce_id) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (consumer, partition_key) DO UPDATE SET "
            "last_sequence = excluded.last_sequence, last_ce_id = excluded.last_ce_id",
            [(self.name, key, seq, ce_id) for key, (seq, ce_id) in sorted(self.moved.items())],
        )
        tx.executemany(
            "INSERT INTO consumer_counters (consumer, name, value) VALUES (?, ?, ?) "
            "ON CONFLICT (consumer, name) DO UPDATE SET "
            "value = consumer_counters.value + excluded.value",
            [(self.name, str(name), by) for name, by in sorted(self.counts.items()) if by],
        )


__all__ = ["ConsumerApp", "ConsumerStatus", "DeadLetter", "Gap", "Handler", "Outcome", "Result"]
