"""The current security state of each account: the document, its fold, its storage and
its queries (one module each)."""

from projections.state.document import (
    Document,
    Record,
    account_state,
    state_from_aggregates,
    user_state,
)
from projections.state.queries import StateQueries
from projections.state.storage import StateView

__all__ = [
    "Document",
    "Record",
    "StateQueries",
    "StateView",
    "account_state",
    "state_from_aggregates",
    "user_state",
]
