"""The Kafka relay: a follower's acknowledged sink that publishes each event of the log.

A batch of events is numbered (``producers.sequencing``), built into CloudEvents
(``producers.messages``), handed to the publisher, and only once the broker acknowledged
every message of it is the relay's position saved — together with the sequence numbers
and user-to-account facts the batch added, in one transaction of the relay's database.
A crash between the acknowledgement and that transaction re-publishes the batch with the
same ids and numbers: at least once, and consumers drop the duplicates by ``ce_id``.

The relay reads decoded events, never keys: it runs from a ``LedgerReader``, and what it
publishes is the public form of each event.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from domain.catalogue import event_type_name
from producers.messages import MessageBuilder, OutgoingMessage
from producers.publisher import Publisher, PublishError
from producers.sequencing import SequenceBook, UnplaceableEventError
from projections.errors import ProjectionFailedError
from projections.sinks import Items, TrackedSink, Wants, create_tracking_tables
from projections.sql import Tx, ViewDB

_CHUNK = 500  # ids per IN (...) query


def relay_tables(name: str) -> tuple[str, str]:
    """The relay's own tables: last sequence per partition key, account of each user."""
    return f"{name}_sequences", f"{name}_users"


class RelaySink(TrackedSink):
    """Publishes batches of events; saves position and numbering after acknowledgement."""

    wants: Wants = "events"

    def __init__(
        self,
        name: str,
        db: ViewDB,
        builder: MessageBuilder,
        connect: Callable[[], Publisher],
    ) -> None:
        super().__init__(name, db)
        self.sequences_table, self.users_table = relay_tables(name)
        if self.db.existing_tables((self.sequences_table, self.users_table)) != {
            self.sequences_table,
            self.users_table,
        }:
            with self.db.setup_transaction() as tx:
                self._create_tables(tx)
        self.builder = builder
        self.connect = connect
        self.book = SequenceBook(self)
        self._publisher: Publisher | None = None
        self.published = 0

    def _create_tables(self, tx: Tx) -> None:
        present = create_tracking_tables(tx, (self.sequences_table, self.users_table))
        if self.sequences_table not in present:
            tx.execute(
                f"CREATE TABLE {self.sequences_table} "
                "(partition_key TEXT PRIMARY KEY, sequence BIGINT NOT NULL)"
            )
        if self.users_table not in present:
            tx.execute(
                f"CREATE TABLE {self.users_table} "
                "(user_id TEXT PRIMARY KEY, account_id TEXT NOT NULL)"
            )

    # --- the numbering the relay saved (SavedSequences) ----------------------------------

    def _lookup(self, table: str, key: str, value: str, ids: Iterable[str]) -> dict[str, Any]:
        wanted = sorted(ids)
        found: dict[str, Any] = {}
        with self.db.reading() as tx:
            for start in range(0, len(wanted), _CHUNK):
                chunk = wanted[start : start + _CHUNK]
                marks = ",".join("?" * len(chunk))
                rows = tx.query_all(
                    f"SELECT {key}, {value} FROM {table} WHERE {key} IN ({marks})",  # noqa: S608 - the relay's own constant table and column names; values are bound
                    chunk,
                )
                found.update({str(k): v for k, v in rows})
        return found

    def sequences(self, keys: Iterable[str]) -> Mapping[str, int]:
        return {
            k: int(v)
            for k, v in self._lookup(
                self.sequences_table, "partition_key", "sequence", keys
            ).items()
        }

    def accounts_of_users(self, user_ids: Iterable[str]) -> Mapping[str, str]:
        return {
            k: str(v)
            for k, v in self._lookup(self.users_table, "user_id", "account_id", user_ids).items()
        }

    # --- delivering ------------------------------------------------------------------------

    def messages(self, items: Items) -> list[OutgoingMessage]:
        """The batch as messages; the first event that cannot be published stops it."""
        self.book.discard()  # whatever an unacknowledged earlier attempt numbered
        events = [event for _, event in items]
        try:
            placements = self.book.place_all(events)
        except UnplaceableEventError as e:
            self.book.discard()
            position, event = items[e.index]
            raise ProjectionFailedError(self.name, position, event_type_name(event), e) from e
        out: list[OutgoingMessage] = []
        for (position, event), placement in zip(items, placements, strict=True):
            try:
                out.append(self.builder.build(position, event, placement))
            except (LookupError, TypeError, ValueError) as e:
                self.book.discard()
                raise ProjectionFailedError(self.name, position, event_type_name(event), e) from e
        return out

    def deliver(self, items: Items) -> None:
        messages = self.messages(items)
        try:
            publisher = self._publisher or self.connect()
            self._publisher = publisher
            publisher.publish(messages)
        except PublishError:
            self.book.discard()
            self.close_publisher()
            raise
        self.published += len(messages)

    def save_position(self, position: int) -> None:
        new_sequences = sorted(self.book.new_sequences.items())
        new_users = sorted(self.book.new_users.items())
        with self.db.transaction() as tx:
            if new_sequences:
                tx.executemany(
                    f"INSERT INTO {self.sequences_table} (partition_key, sequence) VALUES (?, ?) "  # noqa: S608 - the relay's own constant table names
                    "ON CONFLICT (partition_key) DO UPDATE SET sequence = excluded.sequence",
                    new_sequences,
                )
            if new_users:
                tx.executemany(
                    f"INSERT INTO {self.users_table} (user_id, account_id) VALUES (?, ?) "  # noqa: S608 - the relay's own constant table names
                    "ON CONFLICT (user_id) DO NOTHING",
                    new_users,
                )
            self.save_position_in(tx, position)
        self.book.committed()

    def close_publisher(self) -> None:
        publisher, self._publisher = self._publisher, None
        if publisher is not None:
            publisher.close()

    def close(self) -> None:
        self.close_publisher()
