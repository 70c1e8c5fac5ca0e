"""``secstate timeline``: the forensic timeline, filtered, paged and exported.

Before answering, the timeline view is caught up with the ledger, so the answer covers
every event recorded so far. Output goes to stdout (or ``--output FILE``, written whole
or not at all); progress and the next-page cursor go to stderr.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Protocol, TextIO

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from domain.errors import InvalidCommandError
from projections.base import Follower, ViewDB
from projections.timeline import TimelineView
from projections.timeline_query import (
    FLAT_FIELDS,
    TIMESKETCH_FIELDS,
    TimelineEntry,
    TimelineFilter,
    TimelineQuery,
    flat_row,
    parse_filter,
)
from secstate.bootstrap import open_view_db
from secstate.cli.common import STATE, JsonOption, catch_up_view, err_console

FORMATS = ("table", "jsonl", "csv", "timesketch-jsonl", "timesketch-csv")

# Control characters (ANSI escapes in a hostile user agent, say) shown as \xNN in tables.
_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}


def _printable(value: object) -> str:
    return "" if value is None else str(value).translate(_CONTROL)


def catch_up_timeline(follower: Follower) -> int:
    applied = catch_up_view(follower, "indexing events")
    follower.view.suffix = ""
    if isinstance(follower.view, TimelineView):
        follower.view.ensure_indexes(follower.db)
    return applied


# --- writers ------------------------------------------------------------------------------

Writer = Callable[[Iterable[TimelineEntry], TextIO], None]


def write_jsonl(entries: Iterable[TimelineEntry], out: TextIO) -> None:
    for entry in entries:
        out.write(json.dumps(entry.to_dict(), ensure_ascii=False) + "\n")


def write_timesketch_jsonl(entries: Iterable[TimelineEntry], out: TextIO) -> None:
    for entry in entries:
        out.write(json.dumps(entry.to_timesketch(), ensure_ascii=False) + "\n")


# A spreadsheet evaluates a cell starting with one of these as a formula. User agents,
# labels and names are attacker-controlled, and investigators open exports in spreadsheets.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def guard_cell(value: object) -> object:
    """A text cell a spreadsheet would evaluate, prefixed with ``'`` (OWASP's advice)."""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


class CsvWriter(Protocol):
    def __call__(
        self, entries: Iterable[TimelineEntry], out: TextIO, *, raw: bool = False
    ) -> None: ...


def _csv_writer(
    fields: tuple[str, ...], row_of: Callable[[TimelineEntry], dict[str, Any]]
) -> CsvWriter:
    def write(entries: Iterable[TimelineEntry], out: TextIO, *, raw: bool = False) -> None:
        writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        for entry in entries:
            row = row_of(entry)
            writer.writerow(row if raw else {k: guard_cell(v) for k, v in row.items()})

    return write


write_csv = _csv_writer(FLAT_FIELDS, flat_row)
write_timesketch_csv = _csv_writer(TIMESKETCH_FIELDS, TimelineEntry.to_timesketch)


def _subject(entry: TimelineEntry) -> str:
    if entry.username and entry.account:
        return f"{entry.account}/{entry.username}"
    return entry.account or entry.username or ""


def write_table(entries: Iterable[TimelineEntry], out: TextIO) -> None:
    table = Table(title="timeline", show_lines=False)
    for column in ("position", "occurred_at", "actor", "ip", "type", "account/user", "summary"):
        table.add_column(column, overflow="fold")
    for entry in entries:
        # Text, not markup: user-controlled strings (labels, reasons) are shown as they are.
        table.add_row(
            *(
                Text(_printable(value))
                for value in (
                    entry.position,
                    entry.occurred_at.isoformat(timespec="seconds"),
                    entry.actor,
                    entry.source_ip,
                    entry.event_type,
                    _subject(entry),
                    entry.summary,
                )
            )
        )
    Console(file=out, highlight=False, width=None if out.isatty() else 200).print(table)


WRITERS: dict[str, Writer] = {
    "table": write_table,
    "jsonl": write_jsonl,
    "timesketch-jsonl": write_timesketch_jsonl,
}
CSV_WRITERS: dict[str, CsvWriter] = {"csv": write_csv, "timesketch-csv": write_timesketch_csv}


def write_json_document(query: TimelineQuery, out: TextIO) -> None:
    """``{"events": [...], "next_after": N|null}``, streamed one event per line."""
    out.write('{"events": [')
    for n, entry in enumerate(query):
        out.write(",\n  " if n else "\n  ")
        out.write(json.dumps(entry.to_dict(), ensure_ascii=False))
    out.write("\n]," if query.count else "],")
    out.write(f' "next_after": {json.dumps(query.next_after)}}}\n')


@contextmanager
def _destination(output: Path | None) -> Iterator[TextIO]:
    """stdout, or a file that appears whole on success and not at all on failure."""
    if output is None:
        yield sys.stdout
        return
    target = output.expanduser()
    directory = target.parent if str(target.parent) else Path(".")
    if not directory.is_dir():
        raise InvalidCommandError(
            "timeline query", [f"--output: directory {directory} does not exist"]
        )
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            yield f
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- the command --------------------------------------------------------------------------


def _check_subjects(flt: TimelineFilter) -> None:
    """An unknown account or user is a mistake to report, not an empty timeline."""
    if flt.account is not None:
        STATE.ledger.get_account(flt.account)
    if flt.user is not None:
        STATE.ledger.get_user(flt.user)


def build_filter(fmt: str, json_out: bool, **inputs: Any) -> TimelineFilter:
    problems = []
    if fmt not in FORMATS:
        problems.append(f"--format: must be one of {', '.join(FORMATS)}, got {fmt!r}")
    elif json_out and fmt != "table":
        problems.append(f"--json and --format {fmt} exclude each other; pick one")
    try:
        flt = parse_filter(**inputs)
    except InvalidCommandError as e:
        raise InvalidCommandError("timeline query", [*e.problems, *problems]) from None
    if problems:
        raise InvalidCommandError("timeline query", problems)
    return flt


def timeline(
    account: Annotated[
        str | None,
        typer.Option(
            "--account", help="Events of this account, and staff access that touched its data."
        ),
    ] = None,
    user: Annotated[str | None, typer.Option("--user", help="Events of this user.")] = None,
    actor: Annotated[
        str | None,
        typer.Option("--actor", help="Who acted: KIND:ID (e.g. staff:e-042) or just ID."),
    ] = None,
    ip: Annotated[
        str | None,
        typer.Option("--ip", help="Source IP address or CIDR network, IPv4 or IPv6."),
    ] = None,
    types: Annotated[
        list[str] | None,
        typer.Option(
            "--type",
            help="Event type, glob allowed (User.Login*, *ApiKey*); repeat for several.",
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option("--since", help="From this time on (ISO 8601; no offset = UTC)."),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option("--until", help="Up to and including this time (ISO 8601; no offset = UTC)."),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", help="At most this many events; 0 = all.")] = 50,
    after: Annotated[
        int | None,
        typer.Option("--after", help="Continue after this position (the printed cursor)."),
    ] = None,
    order: Annotated[
        str, typer.Option("--order", help="asc (oldest first) or desc (newest first).")
    ] = "asc",
    fmt: Annotated[
        str,
        typer.Option("--format", help=f"Output format: {', '.join(FORMATS)}."),
    ] = "table",
    json_out: JsonOption = False,
    output: Annotated[
        Path | None, typer.Option("--output", help="Write to this file instead of stdout.")
    ] = None,
    raw_csv: Annotated[
        bool,
        typer.Option(
            "--raw-csv",
            help="CSV cells verbatim: no ' before cells a spreadsheet would run as formulas "
            "(=, +, -, @). For tools that ingest rather than evaluate.",
        ),
    ] = False,
) -> None:
    """Who did what, from where, when: the ledger's events as a forensic timeline."""
    flt = build_filter(
        fmt.strip().lower(),
        json_out,
        account=account,
        user=user,
        actor=actor,
        ip=ip,
        types=types or (),
        since=since,
        until=until,
        limit=limit,
        after=after,
        order=order.strip().lower(),
    )
    fmt = fmt.strip().lower()
    _check_subjects(flt)
    db: ViewDB = open_view_db(STATE.settings, "timeline")
    try:
        catch_up_timeline(Follower(STATE.ledger, TimelineView(), db))
        query = TimelineQuery(db, flt)
        with _destination(output) as out:
            if json_out:
                write_json_document(query, out)
            elif fmt in ("csv", "timesketch-csv"):
                CSV_WRITERS[fmt](query, out, raw=raw_csv)
            else:
                WRITERS[fmt](query, out)
        if output is not None:
            err_console.print(
                f"wrote {query.count} events to {output}", markup=False, highlight=False
            )
        elif query.count == 0 and fmt == "table" and not json_out:
            err_console.print("no events match", markup=False, highlight=False)
        if query.next_after is not None and not json_out:
            err_console.print(
                f"more events match: --after {query.next_after} to continue",
                markup=False,
                highlight=False,
            )
    finally:
        db.close()


def register(app: typer.Typer) -> None:
    app.command("timeline")(timeline)


__all__ = ["FORMATS", "catch_up_timeline", "register", "timeline", "write_table"]
