"""What every CLI command shares: settings, the ledger, the request context, output."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Iterable, Sequence
from datetime import date, datetime
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Any
from uuid import UUID

import typer

from secstate.cli import render
from secstate.cli.render import console, err_console, make_table

if TYPE_CHECKING:
    # Annotations only: the ledger, the settings and what they import (pydantic,
    # eventsourcing, cryptography, argon2) load when a command first asks for them.
    from domain.context import RequestContext
    from domain.errors import DamagedHistoryError
    from domain.ledger import Ledger
    from domain.reader import LedgerReader
    from projections.follower import Follower
    from secstate.settings import Settings


def refresh_console_width() -> None:
    """Rich reads COLUMNS once, at import; honour a COLUMNS set later (tests, in-process runs)."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        console.width = err_console.width = int(columns)


JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


class CliState:
    """Built once per invocation from the root options; the ledger is opened lazily."""

    def __init__(self) -> None:
        self.debug = False
        self.actor = "system:cli"
        self.source_ip: str | None = None
        self.user_agent: str | None = "secstate-cli"
        self.request_id: str | None = None
        self._settings: Settings | None = None
        self._ledger: Ledger | None = None
        self._reader: LedgerReader | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            from secstate.settings import Settings

            self._settings = Settings()
        return self._settings

    @property
    def ledger(self) -> Ledger:
        if self._ledger is None:
            from secstate.bootstrap import build_ledger

            self._ledger = build_ledger(self.settings)
        return self._ledger

    @property
    def reader(self) -> LedgerReader:
        """For commands that only read: the log and aggregates, and no key ring at all
        (the ledger itself, if this command opened it already)."""
        if self._ledger is not None:
            return self._ledger
        if self._reader is None:
            from secstate.bootstrap import build_reader

            self._reader = build_reader(self.settings)
        return self._reader

    def request_context(self) -> RequestContext:
        """The root options as the context every event of this command carries; each bad
        option is named (the user agent is kept as given, bounded: see domain.text)."""
        from domain.context import Actor, RequestContext
        from domain.errors import InvalidCommandError
        from domain.rules import normalise_ip
        from domain.text import check_request_id

        problems = []
        actor = RequestContext().actor
        try:
            actor = Actor.parse(self.actor)
        except ValueError as e:
            problems.append(f"--actor: {e}")
        source_ip = None
        if self.source_ip is not None:
            try:
                source_ip = normalise_ip(self.source_ip)
            except ValueError as e:
                problems.append(f"--source-ip: {e}")
        if self.request_id is not None:
            try:
                check_request_id(self.request_id)
            except ValueError as e:
                problems.append(f"--request-id: {e}")
        if problems:
            raise InvalidCommandError("request context", problems)
        return RequestContext(
            actor=actor,
            source_ip=source_ip,
            user_agent=self.user_agent,
            **({"request_id": self.request_id} if self.request_id else {}),
        )

    def locate(self, error: DamagedHistoryError) -> DamagedHistoryError:
        """``error`` naming the log position of its row, if the ledger was opened."""
        opened = self._ledger or self._reader
        return opened.locate(error) if opened is not None else error

    def close(self) -> None:
        if self._ledger is not None:
            self._ledger.close()
            self._ledger = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self._settings = None


STATE = CliState()


def root_callback(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    actor: Annotated[
        str,
        typer.Option(
            "--actor",
            envvar="SECSTATE_ACTOR",
            help="Who is acting, KIND:ID (user, staff, api_key, system).",
        ),
    ] = "system:cli",
    source_ip: Annotated[
        str | None, typer.Option("--source-ip", help="IP the request came from.")
    ] = None,
    user_agent: Annotated[
        str | None, typer.Option("--user-agent", help="User agent of the request.")
    ] = "secstate-cli",
    request_id: Annotated[
        str | None, typer.Option("--request-id", help="Correlation id (default: random).")
    ] = None,
) -> None:
    """Event-sourced account-security ledger: record, inspect and investigate."""
    STATE.debug = debug
    STATE.actor = actor
    STATE.source_ip = source_ip
    STATE.user_agent = user_agent
    STATE.request_id = request_id
    STATE.request_context()  # fail fast on a bad --actor or --source-ip


def to_jsonable(value: Any) -> Any:
    """Plain JSON types; datetimes as ISO 8601 with offset."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, (UUID, Enum)):
        return value.value if isinstance(value, Enum) else str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in value]
    return value


def print_json(data: Any) -> None:
    """ASCII-only JSON: every non-ASCII, control, DEL, C1, U+2028/U+2029 and U+0085 character
    and every lone surrogate is a ``\\uXXXX`` escape, so no reader splits a record and no
    terminal acts on one (json's ``ensure_ascii``, spelled out because it matters)."""
    sys.stdout.write(json.dumps(to_jsonable(data), indent=2, ensure_ascii=True) + "\n")


def print_table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    table = make_table(title, columns)
    for row in rows:
        table.add_row(*(render.cell(to_jsonable(v), empty="") for v in row))
    console.print(table)


def say(message: str) -> None:
    render.say(message)


def fmt_time(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value else "-"


# Below this many events behind, catching a view up is quick enough to need no progress bar.
PROGRESS_THRESHOLD = 5000


def catch_up_view(follower: Follower, doing: str) -> int:
    """Bring a view up to the ledger's head before answering; a progress bar on stderr
    if it is far behind (a first query after a large import, say)."""
    lag = follower.status().lag
    if lag < PROGRESS_THRESHOLD:
        return follower.catch_up()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress(
        render.text_column(),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    ) as bar:
        start = follower.position()
        task = bar.add_task(render.inert(f"{follower.name}: {doing}"), total=lag)
        return follower.catch_up(
            progress=lambda position, target: bar.update(
                task, completed=position - start, total=target - start
            )
        )
