"""The poll loop: a kafka-python consumer in a group, feeding ``ConsumerApp.handle``.

* Offsets are committed by hand (``enable_auto_commit=False``), after the messages are
  handled: after each polled batch, before partitions are revoked in a rebalance, and at
  shutdown. A crash between a handler's transaction and the commit redelivers messages
  that the store then skips by ``ce_id``.
* A message that cannot be read (no value, not JSON, a CloudEvents header missing or
  invalid, an unknown type or version, a schema violation, headers that disagree with the
  value) goes to the dead-letter topic at once; a handler that raises is retried
  ``max_attempts`` times with a doubling backoff, then its message goes there too. The
  dead-letter message keeps the key, value and headers and adds the reason, the original
  topic, partition and offset and the consumer's name (``dlq_*`` headers). The loop goes
  on. A store that is briefly unavailable (locked, connection lost) is retried until it
  answers or the consumer is stopped, never dead-lettered.
* ``stop`` (a ``threading.Event``): the message in hand is finished, offsets committed,
  the consumer closed (it leaves the group, so its partitions move on at once).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from consumers.delivery import HANDLER_FAILED, Delivered, Rejected, decode
from consumers.kafka import (
    ConnectionLike,
    DeadLetterError,
    DeadLetterPublisher,
    as_connection,
    ensure_topic,
    quiet_kafka_import,
)
from consumers.outcomes import Gap, Outcome, Result
from consumers.store import ConsumerStore

if TYPE_CHECKING:
    from kafka.consumer.fetcher import ConsumerRecord

log = logging.getLogger("consumers")
T = TypeVar("T")
Headers = list[tuple[str, bytes]]

# Headers added to a dead-lettered message.
DLQ_REASON = "dlq_reason"
DLQ_DETAIL = "dlq_detail"
DLQ_TOPIC = "dlq_topic"
DLQ_PARTITION = "dlq_partition"
DLQ_OFFSET = "dlq_offset"
DLQ_CONSUMER = "dlq_consumer"
DLQ_ATTEMPTS = "dlq_attempts"
DLQ_TIME = "dlq_time"
DLQ_HEADERS = (
    DLQ_REASON,
    DLQ_DETAIL,
    DLQ_TOPIC,
    DLQ_PARTITION,
    DLQ_OFFSET,
    DLQ_CONSUMER,
    DLQ_ATTEMPTS,
    DLQ_TIME,
)
DETAIL_LIMIT = 1000  # characters of the reason's detail in the header


@dataclass(frozen=True)
class RunOptions:
    """How the loop runs. ``consumer_config`` is passed to ``KafkaConsumer`` (timeouts,
    fetch sizes); group id, offsets and commits are the runner's own."""

    dead_letter_topic: str | None = None  # default: "<topic>.dlq"
    create_dead_letter_topic: bool = True  # made with the admin client if missing
    dead_letter_partitions: int = 1
    dead_letter_replication_factor: int = 1
    max_attempts: int = 3  # a handler's attempts before its message is dead-lettered
    backoff_s: float = 0.2  # before the 2nd attempt; doubled each time
    max_backoff_s: float = 5.0
    poll_timeout_ms: int = 200
    max_poll_records: int = 500
    transaction_size: int = 200  # messages handled in one store transaction, at most
    auto_offset_reset: str = "earliest"  # where a new group starts
    consumer_config: Mapping[str, Any] = field(default_factory=dict)
    # called after each message's transaction committed, before its offset is (tests)
    after_transaction: Callable[[Delivered[Any], Result], None] | None = None

    def dead_letters_of(self, topic: str) -> str:
        return self.dead_letter_topic or f"{topic}.dlq"


@dataclass
class RunSummary:
    """What one ``run`` did (the store's status has the totals)."""

    messages: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    gaps: int = 0
    dead_lettered: int = 0
    commits: int = 0
    rebalances: int = 0  # times partitions were taken from this member
    abandoned: int = 0  # left uncommitted at a stop, to be redelivered


class App(Protocol):
    """What the loop needs of a consumer (``consumers.app.ConsumerApp``)."""

    name: str
    store: ConsumerStore

    def setup(self) -> None: ...

    def handle(self, delivered: Delivered[Any]) -> Result: ...

    def handle_batch(self, batch: Sequence[Delivered[Any]]) -> list[Result]: ...

    def was_dead_lettered(self, topic: str, partition: int, offset: int) -> bool: ...

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
    ) -> Gap | None: ...


class _Stopped(Exception):
    """The consumer was stopped while a message was still being retried."""


def _text(value: object) -> bytes:
    return str(value).encode("utf-8", errors="replace")


class _Loop:
    def __init__(
        self,
        app: App,
        connection: ConnectionLike,
        topic: str,
        group_id: str,
        stop: threading.Event,
        options: RunOptions,
    ) -> None:
        self.app = app
        self.connection = as_connection(connection)
        self.topic = topic
        self.group_id = group_id
        self.stop = stop
        self.options = options
        self.dead_letter_topic = options.dead_letters_of(topic)
        self.summary = RunSummary()
        self.pending: dict[Any, int] = {}  # TopicPartition -> next offset to commit
        self.committed: dict[Any, int] = {}
        self.consumer: Any = None
        self.dead_letters: DeadLetterPublisher | None = None

    # --- the loop -----------------------------------------------------------------------

    def run(self) -> RunSummary:
        self.app.setup()
        if self.options.create_dead_letter_topic and ensure_topic(
            self.connection,
            self.dead_letter_topic,
            partitions=self.options.dead_letter_partitions,
            replication_factor=self.options.dead_letter_replication_factor,
        ):
            log.info("%s: created the dead-letter topic %s", self.app.name, self.dead_letter_topic)
        with quiet_kafka_import():
            from kafka import KafkaConsumer
        self.dead_letters = DeadLetterPublisher(self.connection, self.dead_letter_topic)
        config = {
            **self.connection.client_options(),
            "auto_offset_reset": self.options.auto_offset_reset,
            "max_poll_records": self.options.max_poll_records,
            **self.options.consumer_config,
            "group_id": self.group_id,
            "enable_auto_commit": False,
        }
        try:
            self.consumer = KafkaConsumer(**config)
            self.consumer.subscribe([self.topic], listener=_listener(self))
            log.info(
                "%s: consuming %s in group %s (dead letters to %s)",
                self.app.name,
                self.topic,
                self.group_id,
                self.dead_letter_topic,
            )
            while not self.stop.is_set():
                batch = self.consumer.poll(timeout_ms=self.options.poll_timeout_ms)
                polled = [(tp, record) for tp, records in batch.items() for record in records]
                size = max(1, self.options.transaction_size)
                try:
                    for start in range(0, len(polled), size):
                        if self.stop.is_set():
                            raise _Stopped
                        chunk = polled[start : start + size]
                        self._process(chunk)
                        for tp, record in chunk:
                            self.pending[tp] = record.offset + 1
                except _Stopped:
                    self.summary.abandoned += 1
                    break
                finally:
                    self._commit()
        finally:
            self._close()
        return self.summary

    def _close(self) -> None:
        if self.consumer is not None:
            try:
                self._commit()
            finally:
                try:
                    self.consumer.close(autocommit=False)
                except Exception as e:  # closing must not hide why the loop ended
                    log.warning("%s: closing the consumer: %s", self.app.name, e)
        if self.dead_letters is not None:
            self.dead_letters.close()
        log.info("%s: stopped", self.app.name)

    # --- commits ------------------------------------------------------------------------

    def _commit(self, partitions: set[Any] | None = None) -> None:
        with quiet_kafka_import():
            from kafka.errors import KafkaError
            from kafka.structs import OffsetAndMetadata
        due = {
            tp: OffsetAndMetadata(offset, "", -1)
            for tp, offset in self.pending.items()
            if (partitions is None or tp in partitions) and self.committed.get(tp) != offset
        }
        if not due or self.consumer is None:
            return
        try:
            self.consumer.commit(due)
        except KafkaError as e:
            # They are redelivered (to this member or the next owner) and skipped by ce_id.
            log.warning("%s: committing offsets failed: %s", self.app.name, e)
            return
        self.summary.commits += 1
        for tp, meta in due.items():
            self.committed[tp] = meta.offset

    def revoked(self, partitions: set[Any]) -> None:
        if not partitions:  # before the first join
            return
        self.summary.rebalances += 1
        self._commit(partitions)
        for tp in partitions:
            self.pending.pop(tp, None)
            self.committed.pop(tp, None)
        log.info(
            "%s: partitions revoked: %s",
            self.app.name,
            ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(partitions)),
        )

    def assigned(self, partitions: set[Any]) -> None:
        log.info(
            "%s: partitions assigned: %s",
            self.app.name,
            ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(partitions)) or "none",
        )

    # --- one record ---------------------------------------------------------------------

    def _process(self, chunk: list[tuple[Any, ConsumerRecord]]) -> None:
        """Records in one transaction; those that cannot be read are dead-lettered. If a
        handler fails the transaction, the records are handled again one at a time, so
        only the failing one is retried and dead-lettered."""
        read: list[tuple[ConsumerRecord, Headers, Delivered[Any]]] = []
        for _, record in chunk:
            self.summary.messages += 1
            headers = [
                (str(k), bytes(v) if v is not None else b"") for k, v in record.headers or []
            ]
            decoded = decode(
                headers,
                record.value,
                record.key,
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
            )
            if isinstance(decoded, Rejected):
                self._dead_letter(
                    record, headers, decoded.reason, decoded.detail, 0, rejected=decoded
                )
            else:
                read.append((record, headers, decoded))
        if not read:
            return
        if len(read) > 1:
            try:
                results = self._with_store(lambda: self.app.handle_batch([d for _, _, d in read]))
            except _Stopped:
                raise
            except Exception as e:
                log.warning(
                    "%s: a batch of %d failed (%s: %s); handling them one at a time",
                    self.app.name,
                    len(read),
                    type(e).__name__,
                    e,
                )
            else:
                for (_, _, delivered), result in zip(read, results, strict=True):
                    self._done(delivered, result)
                return
        for record, headers, delivered in read:
            self._handle_one(record, headers, delivered)

    def _with_store(self, call: Callable[[], T]) -> T:
        """``call()``, again and again while the store is briefly unavailable."""
        logged = False
        while True:
            try:
                result = call()
            except Exception as e:
                if not self.app.store.is_transient(e):
                    raise
                if not logged:
                    log.warning("%s: the store is unavailable, retrying: %s", self.app.name, e)
                    logged = True
                self._pause(self.options.max_backoff_s)
                try:
                    self.app.store.recover()
                except Exception as again:
                    if not self.app.store.is_transient(again):
                        raise
            else:
                if logged:
                    log.info("%s: the store answers again", self.app.name)
                return result

    def _done(self, delivered: Delivered[Any], result: Result) -> None:
        self.summary.outcomes[result.outcome.value] += 1
        if result.gap is not None:
            self.summary.gaps += 1
        if self.options.after_transaction is not None:
            self.options.after_transaction(delivered, result)

    def _handle_one(
        self, record: ConsumerRecord, headers: Headers, delivered: Delivered[Any]
    ) -> None:
        attempts = 0
        while True:
            try:
                result = self._with_store(lambda: self.app.handle(delivered))
            except _Stopped:
                raise
            except Exception as e:
                attempts += 1
                log.warning(
                    "%s: handling %s failed (attempt %d of %d): %s: %s",
                    self.app.name,
                    delivered.ce_id,
                    attempts,
                    self.options.max_attempts,
                    type(e).__name__,
                    e,
                )
                if attempts >= self.options.max_attempts:
                    self._dead_letter(
                        record,
                        headers,
                        HANDLER_FAILED,
                        f"{type(e).__name__}: {e}",
                        attempts,
                        delivered=delivered,
                    )
                    return
                delay = self.options.backoff_s * 2 ** (attempts - 1)
                self._pause(min(delay, self.options.max_backoff_s))
                continue
            self._done(delivered, result)
            return

    def _pause(self, seconds: float) -> None:
        """Wait before a retry; a stop abandons the message (it is redelivered)."""
        if self.stop.wait(seconds):
            raise _Stopped

    def _dead_letter(
        self,
        record: ConsumerRecord,
        headers: list[tuple[str, bytes]],
        reason: str,
        detail: str,
        attempts: int,
        *,
        delivered: Delivered[Any] | None = None,
        rejected: Rejected | None = None,
    ) -> None:
        if self.dead_letters is None:  # made before the loop starts
            raise RuntimeError("the dead-letter publisher is not started")
        added = {
            DLQ_REASON: reason,
            DLQ_DETAIL: detail[:DETAIL_LIMIT],
            DLQ_TOPIC: record.topic,
            DLQ_PARTITION: record.partition,
            DLQ_OFFSET: record.offset,
            DLQ_CONSUMER: self.app.name,
            DLQ_ATTEMPTS: attempts,
            DLQ_TIME: datetime.now(UTC).isoformat(),
        }
        if self._with_store(
            lambda: self.app.was_dead_lettered(record.topic, record.partition, record.offset)
        ):
            # sent before a crash or stop that came before its offset was committed
            log.info(
                "%s: %s[%d]@%d was dead-lettered before; skipped",
                self.app.name,
                record.topic,
                record.partition,
                record.offset,
            )
            return
        out = [(k, v) for k, v in headers if k not in added]
        out.extend((k, _text(v)) for k, v in added.items())
        while True:
            try:
                self.dead_letters.publish(record.key, record.value, out)
                break
            except DeadLetterError as e:
                log.warning("%s: %s; retrying", self.app.name, e)
                self._pause(self.options.max_backoff_s)
        self._with_store(
            lambda: self.app.record_dead_letter(
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                reason=reason,
                detail=detail,
                dead_letter_topic=self.dead_letter_topic,
                delivered=delivered,
                rejected=rejected,
            )
        )
        self.summary.dead_lettered += 1
        self.summary.outcomes[Outcome.DEAD_LETTERED.value] += 1
        log.warning(
            "%s: %s[%d]@%d dead-lettered to %s: %s: %s",
            self.app.name,
            record.topic,
            record.partition,
            record.offset,
            self.dead_letter_topic,
            reason,
            detail[:300],
        )


def _listener(loop: _Loop) -> Any:
    with quiet_kafka_import():
        from kafka import ConsumerRebalanceListener

    class CommitBeforeRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
        """Commits what is done on a partition before another member takes it over."""

        def on_partitions_revoked(self, revoked: Any) -> None:
            loop.revoked(set(revoked))

        def on_partitions_assigned(self, assigned: Any) -> None:
            loop.assigned(set(assigned))

    return CommitBeforeRevoke()


def run(
    app: App,
    connection: ConnectionLike,
    topic: str,
    group_id: str,
    *,
    stop: threading.Event | None = None,
    options: RunOptions | None = None,
) -> RunSummary:
    """Consume ``topic`` as a member of ``group_id`` until ``stop`` is set."""
    return _Loop(
        app, connection, topic, group_id, stop or threading.Event(), options or RunOptions()
    ).run()


def run_in_thread(
    app: App,
    connection: ConnectionLike,
    topic: str,
    group_id: str,
    *,
    options: RunOptions | None = None,
) -> tuple[threading.Thread, threading.Event, dict[str, Any]]:
    """Start ``run`` in a thread: the thread, its stop event, and a dict that gets the
    ``summary`` (or the ``error``) when it ends."""
    stop = threading.Event()
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["summary"] = run(app, connection, topic, group_id, stop=stop, options=options)
        except BaseException as e:
            out["error"] = e
            log.exception("%s: the consumer failed", app.name)

    thread = threading.Thread(target=target, name=f"consumer-{app.name}", daemon=True)
    thread.start()
    return thread, stop, out


__all__ = [
    "DLQ_HEADERS",
    "RunOptions",
    "RunSummary",
    "run",
    "run_in_thread",
]
