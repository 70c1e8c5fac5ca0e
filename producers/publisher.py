"""The relay's one side effect behind a small interface: send messages, wait for the
broker to acknowledge them all.

``producers.kafka`` implements it with kafka-python; a test can put any other in its
place without a broker. A publisher that failed is not used again: the relay makes a new
one, so no half-broken client state (an idempotent producer's sequence numbers, a dead
connection) outlives the failure.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from domain.errors import SecStateError
from producers.messages import OutgoingMessage


class PublishError(SecStateError):
    """The broker did not acknowledge everything that was sent (it may have kept some)."""


class TopicMissingError(PublishError):
    """The topic to publish to does not exist: topics are created deliberately."""


class Publisher(Protocol):
    """Sends a batch of messages to one topic and returns once all are acknowledged."""

    topic: str

    def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        """Every message acknowledged by the broker (``acks=all``), or PublishError."""
        ...

    def close(self) -> None: ...
