"""Reading the state view: an account's document, users by status.

Queries always read the live tables, even while a rebuild fills its shadow copies.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from domain.account import Account
from domain.errors import UnknownAccountError
from projections.sql import ViewDB
from projections.state.document import Document, render_document
from projections.state.storage import ACCOUNTS_TABLE, USERS_TABLE


class StateQueries:
    """Questions answered from the state view's tables."""

    def __init__(self, db: ViewDB) -> None:
        self.db = db

    def get_account_state(self, name: str, as_of: datetime | None = None) -> Document:
        """The account's security state document; password ages relative to ``as_of`` (now)."""
        account_id = str(Account.create_id(name))
        with self.db.reading() as tx:
            row = tx.query_one(
                f"SELECT record FROM {ACCOUNTS_TABLE} WHERE account_id = ?",  # noqa: S608 - constant table names
                (account_id,),
            )
            if row is None:
                raise UnknownAccountError(f"no account named {name!r} in the state view")
            user_rows = tx.query_all(
                f"SELECT record FROM {USERS_TABLE} WHERE account_id = ?",  # noqa: S608 - constant table names
                (account_id,),
            )
        return render_document(
            json.loads(row[0]),
            [json.loads(r[0]) for r in user_rows],
            as_of or datetime.now(UTC),
        )

    def users(
        self,
        *,
        account: str | None = None,
        status: str | None = None,
        reset_required: bool | None = None,
        campaign_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """Rows of the users table, filtered; e.g. who still needs a reset for a campaign."""
        clauses: list[str] = []
        params: list[Any] = []
        if account is not None:
            clauses.append("u.account_id = ?")
            params.append(str(Account.create_id(account)))
        if status is not None:
            clauses.append("u.status = ?")
            params.append(status)
        if reset_required is not None:
            clauses.append("u.reset_required = ?")
            params.append(1 if reset_required else 0)
        if campaign_id is not None:
            clauses.append("u.reset_campaign_id = ?")
            params.append(campaign_id)
        where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
        with self.db.reading() as tx:
            rows = tx.query_all(
                "SELECT u.username, a.name, u.email, u.role, u.status, u.reset_campaign_id, "  # noqa: S608 - constant names; conditions are fixed fragments with ? values
                "u.password_changed_at, u.failed_logins, u.last_login_at, u.confirmed_factors "
                f"FROM {USERS_TABLE} u LEFT JOIN {ACCOUNTS_TABLE} a "
                f"ON a.account_id = u.account_id{where} ORDER BY u.username",
                params,
            )
        columns = (
            "username",
            "account",
            "email",
            "role",
            "status",
            "reset_campaign_id",
            "password_changed_at",
            "failed_logins",
            "last_login_at",
            "confirmed_factors",
        )
        return [dict(zip(columns, row, strict=True)) for row in rows]

    def users_needing_reset(
        self, campaign_id: str | None = None, account: str | None = None
    ) -> list[dict[str, Any]]:
        return self.users(account=account, reset_required=True, campaign_id=campaign_id)
