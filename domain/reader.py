"""Reading the ledger without any key: aggregates replayed (checked), damaged rows
located, and the log through the storage port.

``LedgerReader`` is the eventsourcing application every reader is built from: the state
and timeline views' followers, ``state --at``, ``history``, ``project *``. It has the
ledger's name, tables, mapper and snapshots, and no key ring, no hasher and no
commands: those are the ``Ledger``'s (``domain.ledger``), which extends it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import Any, ClassVar, TypeVar

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import (
    ApplicationRecorder,
    JSONTranscoder,
    Mapper,
    Transcoding,
)

from domain.account import Account, ApiKeyIndex
from domain.errors import DamagedHistoryError, UnknownAccountError, UnknownUserError
from domain.mapper import TrustedMapper
from domain.ports import LogStore, RecorderLog
from domain.replay import replay
from domain.user import User
from domain.values import VALUE_TYPES

K = TypeVar("K")
V = TypeVar("V")
A = TypeVar("A", bound=Aggregate)

LogFactory = Callable[[ApplicationRecorder], LogStore]

# Aggregates whose class and version (or, for acting users, version and disabled) this
# process remembers; beyond this many, the oldest entry goes: forgetting costs one more
# query on the next load, nothing more.
_REMEMBERED_MAX = 10_000

# The library's project_aggregate asserts a runtime protocol on every event (~40 us per
# replayed event on Python 3.11, more than decoding it); ``replay`` checks instead that
# each event fits the history (versions, class), which costs ~1 us.
_project = replay


def _dataclass_transcoding(cls: type) -> Transcoding:
    names = [f.name for f in fields(cls)]

    class _Transcoding(Transcoding):
        type = cls
        name = f"secstate.{cls.__name__}"

        def encode(self, obj: Any) -> dict[str, Any]:
            return {n: getattr(obj, n) for n in names}

        def decode(self, data: dict[str, Any]) -> Any:
            return cls(**data)

    return _Transcoding()


class LedgerReader(Application[uuid.UUID]):
    """The ledger's log and aggregates, read only; holds no keys."""

    name = "secstate"
    snapshotting_intervals: ClassVar[dict[Any, int]] = {User: 100, Account: 100, ApiKeyIndex: 100}
    snapshotting_projectors: ClassVar[dict[Any, Any]] = {
        User: _project,
        Account: _project,
        ApiKeyIndex: _project,
    }

    def __init__(self, env: Mapping[str, str] | None = None, *, log: LogFactory | None = None):
        self._loaded: dict[uuid.UUID, tuple[type, int]] = {}
        super().__init__(env)
        self.log_store: LogStore = (log or RecorderLog)(self.recorder)

    def construct_mapper(self) -> Mapper[uuid.UUID]:
        """The trusted mapper: stored topics resolve only to the catalogue's classes."""
        return self.factory.mapper(
            transcoder=self.construct_transcoder(), mapper_class=TrustedMapper
        )

    def register_transcodings(self, transcoder: JSONTranscoder) -> None:
        super().register_transcodings(transcoder)
        for value_type in VALUE_TYPES:
            transcoder.register(_dataclass_transcoding(value_type))

    def load(self, cls: type[A], aggregate_id: uuid.UUID) -> A:
        """Get an aggregate of a known class; AggregateNotFoundError if absent.

        The library's get asks for a snapshot first, a query of its own. Where this
        process last saw the aggregate too short to have one (below its class's
        snapshotting interval, or of a class never snapshotted), its events alone are
        read. That is correct whatever happened since, as a snapshot only shortens the
        replay: an aggregate grown past the interval meanwhile is replayed in full
        once, and the next load uses its snapshot.
        """
        aggregate: Any
        known = self._loaded.get(aggregate_id)
        try:
            if known is not None and not self._snapshot_may_exist(*known):
                aggregate = _project(None, self.events.get(aggregate_id))
                if aggregate is None:
                    raise AggregateNotFoundError(aggregate_id)
            else:
                aggregate = self.repository.get(aggregate_id, projector_func=_project)
        except DamagedHistoryError as e:
            raise self.locate(e) from None
        if not isinstance(aggregate, cls):
            raise self.locate(
                DamagedHistoryError(
                    f"the aggregate is a {type(aggregate).__name__}, where a {cls.__name__} "
                    "was expected",
                    originator_id=aggregate_id,
                    originator_version=1,
                    topic=None,
                )
            )
        if known is None:
            _remember(self._loaded, aggregate_id, (type(aggregate), aggregate.version))
        elif known[1] != aggregate.version:
            self._loaded[aggregate_id] = (type(aggregate), aggregate.version)
        return aggregate

    def locate(self, error: DamagedHistoryError) -> DamagedHistoryError:
        """``error`` naming the log position of the row it is about, where one exists."""
        if error.position is not None or error.snapshot or error.originator_version is None:
            return error
        try:
            originator = (
                error.originator_id
                if isinstance(error.originator_id, uuid.UUID)
                else uuid.UUID(str(error.originator_id))
            )
            return error.at_position(
                self.log_store.position_of(originator, error.originator_version)
            )
        except Exception:  # the store is damaged already: say what we know
            return error

    def _snapshot_may_exist(self, cls: type, version: int) -> bool:
        interval = self.snapshotting_intervals.get(cls)
        return interval is not None and version >= interval

    def get_account(self, name: str) -> Account:
        try:
            return self.load(Account, Account.create_id(name))
        except AggregateNotFoundError:
            raise UnknownAccountError(f"no account named {name!r}") from None

    def get_user(self, username: str) -> User:
        try:
            return self.load(User, User.create_id(username))
        except AggregateNotFoundError:
            raise UnknownUserError(f"no user named {username!r}") from None

    def account_key_indexes(self, account: Account) -> list[ApiKeyIndex]:
        """The ApiKeyIndex aggregate of each of the account's API keys (their last use)."""
        found = []
        for key_id in account.api_keys:
            try:
                found.append(self.load(ApiKeyIndex, ApiKeyIndex.create_id(key_id)))
            except AggregateNotFoundError:
                continue  # keys created before the index existed have none
        return found

    def account_users(self, name: str) -> list[User]:
        account = self.get_account(name)
        return [self.get_user(m.username) for m in account.members.values()]

    def account_exists(self, name: str) -> bool:
        try:
            self.get_account(name)
        except UnknownAccountError:
            return False
        return True

    def _get_user_by_id(self, user_id: uuid.UUID) -> User:
        try:
            return self.load(User, user_id)
        except AggregateNotFoundError:
            raise UnknownUserError(f"no user with id {user_id}") from None


def _remember(memory: dict[K, V], key: K, value: V) -> None:
    """Add a new entry, forgetting the oldest beyond _REMEMBERED_MAX."""
    if len(memory) >= _REMEMBERED_MAX:
        memory.pop(next(iter(memory)), None)
    memory[key] = value
