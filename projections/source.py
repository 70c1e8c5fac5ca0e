"""The one source every follower reads: the global log, through the storage port.

Rows come as they are stored (position, originator id, version, topic, state bytes), in
batches by position; gaps in positions (rolled-back writers) are simply absent, so a
follower always asks for positions after the last it saw. A follower that wants domain
events has them decoded with the catalogue's guard (``domain.decoder``): a topic that is
not one of ours is refused before anything is imported, and an ill-fitting state named.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from eventsourcing.persistence import Mapper

from domain.decoder import EventDecoder
from domain.ports import LogStore, RawRow


class LogSource:
    """Batches of the ledger's log, raw or decoded."""

    def __init__(self, log: LogStore, mapper: Mapper[uuid.UUID]) -> None:
        self.log = log
        self.decoder = EventDecoder(mapper)

    @classmethod
    def of(cls, reader: Any) -> LogSource:
        """The source of a ``LedgerReader`` (or ``Ledger``): its port and its mapper."""
        return cls(reader.log_store, reader.mapper)

    def head(self) -> int:
        return self.log.head()

    def rows(self, after: int, limit: int, stop: int | None = None) -> Sequence[RawRow]:
        """Up to ``limit`` stored rows after position ``after`` (up to ``stop``)."""
        return self.log.read(after + 1, limit, stop)

    def decode(self, row: RawRow) -> Any:
        """The domain event of a row; DamagedHistoryError (naming it) if it is not ours
        or does not fit its class."""
        return self.decoder.decode(row)
