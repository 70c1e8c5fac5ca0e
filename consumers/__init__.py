"""The consumer runtime and SDK: what a downstream service imports to act on secstate's
security events from Kafka.

    from contracts.payloads import PasswordChanged
    from consumers import ConsumerApp, ConsumerStore, Delivered, Tx

    app = ConsumerApp("sessions", store=ConsumerStore.open("sessions.db"))
    app.tables("CREATE TABLE IF NOT EXISTS revoked (user_id TEXT PRIMARY KEY, at TEXT)")

    @app.handles(PasswordChanged)
    def revoke_sessions(event: Delivered[PasswordChanged], tx: Tx) -> None:
        tx.execute(
            "INSERT INTO revoked VALUES (?, ?) ON CONFLICT DO NOTHING",
            (str(event.aggregate_id), event.event.occurred_at.isoformat()),
        )

    app.run("kafka:9092", "secstate.security-events", "sessions", stop=stop_event)

Handlers are plain functions of the typed delivery (``Delivered[Model]``: the CloudEvents
attributes and the ``SecurityEvent`` whose ``data`` is the model) and the store's
transaction; the runtime handles each message once (by ``ce_id``, in that transaction),
tracks each account's sequence numbers and records gaps, retries and dead-letters, and
commits offsets only after the effect is stored. ``consumers.testing`` builds deliveries
and messages for tests.
"""

from consumers.app import ConsumerApp
from consumers.delivery import Delivered, Rejected, decode
from consumers.kafka import Brokers
from consumers.outcomes import ConsumerStatus, DeadLetter, Gap, Outcome, Result
from consumers.runner import RunOptions, RunSummary
from consumers.store import ConsumerStore, Tx

__all__ = [
    "Brokers",
    "ConsumerApp",
    "ConsumerStatus",
    "ConsumerStore",
    "DeadLetter",
    "Delivered",
    "Gap",
    "Outcome",
    "Rejected",
    "Result",
    "RunOptions",
    "RunSummary",
    "Tx",
    "decode",
]
