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

from domain.errors import InvalidCommandError
from projections.follower import Follower, view_follower
from projections.sinks import ViewSink
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
from secstate.cli import failures
from secstate.cli.common import STATE, JsonOption, catch_up_view
from secstate.cli.render import cell, csv_cell, make_console, make_table, say
from store.viewdb import ViewDB

FORMATS = ("table", "jsonl", "csv", "timesketch-jsonl", "timesketch-csv")


def catch_up_timeline(follower: Follower) -> int:
    applied = catch_up_view(follower, "indexing events")
    sink = follower.sink
    if isinstance(sink, ViewSink) and isinstance(sink.view, TimelineView):
        sink.view.suffix = ""
        sink.view.ensure_indexes(sink.db)
    return applied


# --- writers ------------------------------------------------------------------------------

Writer = Callable[[Iterable[TimelineEntry], TextIO], None]


def json_line(record: dict[str, Any]) -> str:
    """One record as one line of ASCII: every non-ASCII, control, DEL, C1, U+0085, U+2028
    and U+2029 character is a ``\\uXXXX`` escape. Readers that split lines the way
    ``str.splitlines()`` does (Timesketch's importer) see exactly one record per line,
    and no terminal acts on a line; a lone surrogate cannot fail the write halfway."""
    return json.dumps(record, ensure_ascii=True)


def write_jsonl(entries: Iterable[TimelineEntry], out: TextIO) -> None:
    for entry in entries:
        out.write(json_line(entry.to_dict()) + "\n")


def write_timesketch_jsonl(entries: Iterable[TimelineEntry], out: TextIO) -> None:
    for entry in entries:
        out.write(json_line(entry.to_timesketch()) + "\n")


class CsvWriter(Protocol):
    def __call__(
        self, entries: Iterable[TimelineEntry], out: TextIO, *, raw: bool = False
    ) -> None: ...


def _csv_writer(
    fields: tuple[str, ...], row_of: Callable[[TimelineEntry], dict[str, Any]]
) -> CsvWriter:
    """RFC 4180 CSV: CRLF between records, so a CR or LF inside a cell is one of the line
    terminator's characters and the csv module always quotes its field (with "\\n" alone
    it leaves a bare CR unquoted, and a reader starts a new record there). By default
    every cell is formula-guarded and made inert (``render.csv_cell``); ``raw`` keeps
    cells verbatim, still quoted."""

    def write(entries: Iterable[TimelineEntry], out: TextIO, *, raw: bool = False) -> None:
        writer = csv.writer(out, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
        prepare: Callable[[object], object] = (lambda v: v) if raw else csv_cell
        writer.writerow([prepare(name) for name in fields])
        for entry in entries:
            row = row_of(entry)
            writer.writerow([prepare(row[name]) for name in fields])

    return write


write_csv = _csv_writer(FLAT_FIELDS, flat_row)
write_timesketch_csv = _csv_writer(TIMESKETCH_FIELDS, TimelineEntry.to_timesketch)


def _subject(entry: TimelineEntry) -> str:
    if entry.username and entry.account:
        return f"{entry.account}/{entry.username}"
    return entry.account or entry.username or ""


def write_table(entries: Iterable[TimelineEntry], out: TextIO) -> None:
    table = make_table(
        "timeline", ("position", "occurred_at", "actor", "ip", "type", "account/user", "summary")
    )
    for entry in entries:
        table.add_row(
            *(
                cell(value, empty="")
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
    make_console(file=out, width=None if out.isatty() else 200).print(table)


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
        out.write(json_line(entry.to_dict()))
    out.write("\n]," if query.count else "],")
    out.write(f' "next_after": {json.dumps(query.next_after)}}}\n')


def output_problems(output: Path | None) -> list[str]:
    """What is wrong with ``--output`` before any work is done (the OS may still refuse)."""
    if output is None:
        return []
    target = output.expanduser()
    directory = target.parent
    if target.is_dir():
        return [f"--output: {target} is a directory; name a file"]
    if not directory.exists():
        return [f"--output: directory {directory} does not exist"]
    if not directory.is_dir():
        return [f"--output: {directory} is not a directory"]
    return []


@contextmanager
def _destination(output: Path | None) -> Iterator[TextIO]:
    """stdout; or a regular file that appears whole on success and not at all on failure
    (written beside it, synced, then renamed over it); or, when ``--output`` names a
    device or a FIFO (``/dev/null``, a pipe), that stream, written in place: renaming
    over it would replace the device node."""
    if output is None:
        with _naming_write_errors("writing to stdout", None):
            yield sys.stdout
        return
    target = output.expanduser()
    if target.exists() and not target.is_file() and not target.is_dir():
        with failures.doing(f"opening --output {target}"):
            stream = open(target, "w", encoding="utf-8", newline="")  # noqa: SIM115 - closed below
        with stream, _naming_write_errors(f"writing --output {target}", target):
            yield stream
        return
    directory = target.parent
    with failures.doing(f"creating a temporary file in {directory} for --output"):
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=directory)
    try:
        with (
            _naming_write_errors(f"writing --output {target}", Path(tmp)),
            os.fdopen(fd, "w", encoding="utf-8", newline="") as f,
        ):
            yield f
            f.flush()
            os.fsync(f.fileno())
        with failures.doing(f"moving the finished --output file to {target}"):
            os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def _naming_write_errors(doing: str, path: Path | None) -> Iterator[None]:
    """A write error (a full disk, a file too large) does not name its file: name it, and
    what was being written. Errors of reading the view are not OSErrors, and pass."""
    try:
        yield
    except BrokenPipeError:
        raise
    except OSError as e:
        if e.filename is None and path is not None:
            e.filename = str(path)
        failures.note_doing(e, doing)
        raise


# --- the command --------------------------------------------------------------------------


def _check_subjects(flt: TimelineFilter) -> None:
    """An unknown account or user is a mistake to report, not an empty timeline."""
    if flt.account is not None:
        STATE.reader.get_account(flt.account)
    if flt.user is not None:
        STATE.reader.get_user(flt.user)


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
            help="CSV cells verbatim (still quoted): no ' before cells a spreadsheet would "
            "run as formulas (=, +, -, @, TAB, CR) and control characters left as they are. "
            "For tools that ingest rather than evaluate.",
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
    problems = output_problems(output)
    if problems:
        raise InvalidCommandError("timeline query", problems)
    _check_subjects(flt)
    db: ViewDB = open_view_db(STATE.settings, "timeline")
    try:
        catch_up_timeline(view_follower(STATE.reader, TimelineView(), db))
        query = TimelineQuery(db, flt)
        with _destination(output) as out:
            if json_out:
                write_json_document(query, out)
            elif fmt in ("csv", "timesketch-csv"):
                CSV_WRITERS[fmt](query, out, raw=raw_csv)
            else:
                WRITERS[fmt](query, out)
        if output is not None:
            say(f"wrote {query.count} events to {output}", err=True)
        elif query.count == 0 and fmt == "table" and not json_out:
            say("no events match", err=True)
        if query.next_after is not None and not json_out:
            say(f"more events match: --after {query.next_after} to continue", err=True)
    finally:
        db.close()


def register(app: typer.Typer) -> None:
    app.command("timeline")(timeline)


__all__ = ["FORMATS", "catch_up_timeline", "register", "timeline", "write_table"]
