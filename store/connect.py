"""The one way this project connects to PostgreSQL, from the ``POSTGRES_*`` parameters
the settings split a database URL into (the library's own names)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg


def postgres_connect(
    params: Mapping[str, str], *, autocommit: bool = True, connect_timeout: float | None = None
) -> psycopg.Connection[Any]:
    """A connection of its own (not the library's pool) to the parameters' database."""
    import psycopg

    options: dict[str, Any] = {}
    if connect_timeout is not None:
        options["connect_timeout"] = max(1, int(connect_timeout))
    return psycopg.connect(
        dbname=params["POSTGRES_DBNAME"],
        host=params["POSTGRES_HOST"],
        port=int(params["POSTGRES_PORT"]),
        user=params["POSTGRES_USER"],
        password=params.get("POSTGRES_PASSWORD") or None,
        autocommit=autocommit,
        **options,
    )


def schema_of(params: Mapping[str, str]) -> str:
    return params.get("POSTGRES_SCHEMA") or "public"
