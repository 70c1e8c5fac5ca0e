"""Load a checked-in fixture store (``tests/fixtures/<name>/rows.jsonl``) into a fresh
SQLite file or PostgreSQL schema, row for row: the same positions, originator ids,
versions, topics and state bytes the code of its time wrote.

The rows go in with plain SQL, not through the ledger, so nothing of today's code
touches them on the way in: reading them back is the test.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).with_name("fixtures")


@dataclass(frozen=True)
class Row:
    table: str  # "events" or "snapshots"
    position: int | None
    originator_id: uuid.UUID
    originator_version: int
    topic: str
    state: bytes


def read_rows(name: str) -> list[Row]:
    rows = []
    for line in (FIXTURES / name / "rows.jsonl").read_text(encoding="utf-8").splitlines():
        data: dict[str, Any] = json.loads(line)
        state = (
            data["state"].encode("utf-8")
            if "state" in data
            else base64.b64decode(data["state_b64"])
        )
        rows.append(
            Row(
                data["table"],
                data["position"],
                uuid.UUID(data["originator_id"]),
                data["originator_version"],
                data["topic"],
                state,
            )
        )
    return rows


def golden(name: str) -> dict[str, Any]:
    """Golden output name -> parsed JSON."""
    return {
        path.stem: json.loads(path.read_text(encoding="utf-8"))
        for path in sorted((FIXTURES / name / "golden").glob("*.json"))
    }


def create_ledger_tables_sqlite(db: Path) -> None:
    """The ledger's tables exactly as eventsourcing 9.5's SQLite recorder makes them."""
    db.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(db)
    try:
        conn.executescript(
            "CREATE TABLE IF NOT EXISTS stored_events (originator_id TEXT, "
            "originator_version INTEGER, topic TEXT, state BLOB, "
            "PRIMARY KEY (originator_id, originator_version));"
            "CREATE TABLE IF NOT EXISTS stored_snapshots (originator_id TEXT, "
            "originator_version INTEGER, topic TEXT, state BLOB, "
            "PRIMARY KEY (originator_id, originator_version)) WITHOUT ROWID;"
        )
    finally:
        conn.close()


def load_sqlite(name: str, db: Path, rows: list[Row] | None = None) -> int:
    """Into the ledger file ``db`` (tables created if missing); the number of events.
    ``rows``: these instead of the fixture's own (a variant of its history)."""
    create_ledger_tables_sqlite(db)
    rows = read_rows(name) if rows is None else rows
    conn = sqlite3.connect(db)
    try:
        with conn:
            conn.executemany(
                "INSERT INTO stored_events (rowid, originator_id, originator_version, topic, "
                "state) VALUES (?, ?, ?, ?, ?)",
                [
                    (r.position, r.originator_id.hex, r.originator_version, r.topic, r.state)
                    for r in rows
                    if r.table == "events"
                ],
            )
            conn.executemany(
                "INSERT INTO stored_snapshots (originator_id, originator_version, topic, state) "
                "VALUES (?, ?, ?, ?)",
                [
                    (r.originator_id.hex, r.originator_version, r.topic, r.state)
                    for r in rows
                    if r.table == "snapshots"
                ],
            )
    finally:
        conn.close()
    return sum(1 for r in rows if r.table == "events")


def load_postgres(name: str, url: str, schema: str, rows: list[Row] | None = None) -> int:
    """Into ``schema`` (the ledger's tables created by the ledger first); the events.
    ``rows``: these instead of the fixture's own (a variant of its history)."""
    import psycopg
    from psycopg import sql

    rows = read_rows(name) if rows is None else rows
    events = sql.Identifier(schema, "secstate_events")
    snapshots = sql.Identifier(schema, "secstate_snapshots")
    with psycopg.connect(url, autocommit=False) as conn:
        with conn.cursor() as cur:
            cur.executemany(
                sql.SQL(
                    "INSERT INTO {} (notification_id, originator_id, originator_version, "
                    "topic, state) VALUES (%s, %s, %s, %s, %s)"
                ).format(events),
                [
                    (r.position, r.originator_id, r.originator_version, r.topic, r.state)
                    for r in rows
                    if r.table == "events"
                ],
            )
            cur.executemany(
                sql.SQL(
                    "INSERT INTO {} (originator_id, originator_version, topic, state) "
                    "VALUES (%s, %s, %s, %s)"
                ).format(snapshots),
                [
                    (r.originator_id, r.originator_version, r.topic, r.state)
                    for r in rows
                    if r.table == "snapshots"
                ],
            )
            cur.execute(
                sql.SQL(
                    "SELECT setval(pg_get_serial_sequence({}, 'notification_id'), "
                    "(SELECT max(notification_id) FROM {}))"
                ).format(sql.Literal(f'"{schema}".secstate_events'), events)
            )
        conn.commit()
    return sum(1 for r in rows if r.table == "events")
