"""The current security state of each account: the document, its fold, its storage and
its queries (one module each)."""

from projections.state.document import Document, Record, state_from_aggregates
from projections.state.queries import StateQueries
from projections.state.storage import StateView

__all__ = ["Document", "Record", "StateQueries", "StateView", "state_from_aggregates"]
