"""What became of a message, and what a consumer reports: outcomes, gaps, dead letters,
status."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Outcome(StrEnum):
    """What became of one delivered message."""

    HANDLED = "handled"  # its handlers ran (and committed)
    NO_HANDLER = "no_handler"  # no handler for its type: recorded, sequence-tracked
    DUPLICATE = "duplicate"  # its ce_id was handled before: nothing done
    STALE = "stale"  # older than the account's last sequence number: nothing done
    DEAD_LETTERED = "dead_lettered"  # sent to the dead-letter topic


@dataclass(frozen=True)
class Gap:
    """Sequence numbers of an account that never arrived before ``got``."""

    partition_key: str
    expected: int
    got: int
    ce_id: str
    topic: str
    partition: int
    offset: int
    detected_at: str

    @property
    def missing(self) -> int:
        return self.got - self.expected

    def describe(self, consumer: str) -> str:
        return (
            f"{consumer}: gap in the sequence of {self.partition_key}: expected "
            f"{self.expected}, got {self.got} ({self.missing} missing; ce_id {self.ce_id}, "
            f"{self.topic}[{self.partition}]@{self.offset})"
        )


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    gap: Gap | None = None
    late: bool = False  # it fills a gap recorded earlier


@dataclass(frozen=True)
class DeadLetter:
    topic: str
    partition: int
    offset: int
    ce_id: str | None
    reason: str
    detail: str
    dead_letter_topic: str
    dead_lettered_at: str


@dataclass(frozen=True)
class ConsumerStatus:
    """What a consumer has done, from its store."""

    consumer: str
    store: str
    counters: dict[str, int]
    gaps: list[Gap] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)

    def count(self, name: str) -> int:
        return self.counters.get(name, 0)

    def as_dict(self) -> dict[str, Any]:
        return {
            "consumer": self.consumer,
            "store": self.store,
            "counters": dict(sorted(self.counters.items())),
            "gaps": [vars(g) | {"missing": g.missing} for g in self.gaps],
            "dead_letters": [vars(d) for d in self.dead_letters],
        }


__all__ = ["ConsumerStatus", "DeadLetter", "Gap", "Outcome", "Result"]
