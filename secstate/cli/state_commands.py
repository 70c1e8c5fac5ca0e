"""``secstate state`` and ``secstate history``: an account's security state, now or at a
past moment, and the investigator's replay of what changed it.

``state ACCOUNT`` reads the state view, caught up with the ledger first (or, with
``--no-catch-up``, as it stands, saying how far behind the log it is). ``state ACCOUNT
--at TIME`` and ``history`` replay the event store itself and need no view.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from pydantic import Field
from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from domain.commands import AccountName, Command, parse_command
from domain.errors import InvalidCommandError, UnknownAccountError
from projections.follower import Follower, view_follower
from projections.history import HistoryEntry, SubjectKind, history
from projections.pointintime import state_at
from projections.state import Document, StateQueries, StateView
from projections.status import FollowerStatus
from projections.timeline_query import parse_time as iso_time
from secstate.bootstrap import open_view_db
from secstate.cli.common import (
    STATE,
    JsonOption,
    catch_up_view,
    print_json,
)
from secstate.cli.render import cell, console, inert, lines_cell, make_table

TIME_EXAMPLE = "2026-03-01T09:00:00Z"


def parse_time(text: str, option: str, command: str) -> datetime:
    """ISO 8601; a time without offset is UTC. Bad text is refused naming the option."""
    try:
        return iso_time(text)
    except ValueError as e:
        raise InvalidCommandError(
            command,
            [f"{option}: {text[:80]!r} is not an ISO 8601 time ({e}; e.g. {TIME_EXAMPLE})"],
        ) from None


class _SubjectQuery(Command):
    """An account name or a username given to a read command, checked as either."""

    ref: Annotated[
        str, Field(min_length=2, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._@+-]+$")
    ]


def short_time(value: str | None) -> str | None:
    """``2026-03-01 09:00:00Z`` from the document's ISO times (UTC throughout)."""
    if value is None:
        return None
    return datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M:%SZ")


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> Table:
    table = make_table(title, columns, title_justify="left")
    for row in rows:
        table.add_row(*(cell(v) for v in row))
    return table


# --- state --------------------------------------------------------------------------------


class AccountQuery(Command):
    account: AccountName


def catch_up_state(follower: Follower) -> None:
    catch_up_view(follower, "applying events")


def read_view(account: str, catch_up: bool) -> tuple[Document, FollowerStatus]:
    db = open_view_db(STATE.settings, StateView.name)
    try:
        follower = view_follower(STATE.reader, StateView(), db)
        if catch_up:
            catch_up_state(follower)
        status = follower.status()
        try:
            return StateQueries(db).get_account_state(account, datetime.now(UTC)), status
        except UnknownAccountError as e:
            if status.lag == 0:
                raise
            raise UnknownAccountError(
                f"{e} ({status.lag} event(s) behind the log; run without --no-catch-up)"
            ) from None
    finally:
        db.close()


def source_line(source: dict[str, Any]) -> str:
    if source["kind"] == "event_store":
        return f"replayed from the event store as of {source['at']}"
    behind = source["head"] - source["position"]
    if behind <= 0:
        return f"state view at log position {source['position']} (up to date)"
    return (
        f"state view at log position {source['position']} of {source['head']}: "
        f"{behind} event(s) behind, not shown"
    )


def facts_panel(title: str, facts: list[tuple[str, Any]]) -> Panel:
    """A titled panel of labelled values, every value an inert cell."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for label, value in facts:
        grid.add_row(label, cell(value))
    return Panel(grid, title=Text(inert(title)))


def account_facts(doc: Document) -> list[tuple[str, Any]]:
    account = doc["account"]
    return [
        ("account", account["name"]),
        ("kind", account["kind"]),
        ("display name", account["display_name"]),
        ("opened at", short_time(account["opened_at"])),
        ("2FA required", account["two_factor_required"]),
        ("as of", short_time(doc["as_of"])),
    ]


def users_table(users: list[Document]) -> Table:
    rows = [
        [
            u["username"],
            u["role"],
            u["status"],
            u["email"],
            u["password_age_days"],
            [f"{f['kind']} ({f['label']})" for f in u["second_factors"]]
            + [f"{f['kind']} ({f['label']}, pending)" for f in u["pending_enrolments"]],
            u["recovery_codes_left"],
            u["failed_logins"],
            last_login(u),
            reset(u),
        ]
        for u in users
    ]
    return _table(
        f"users ({len(rows)})",
        [
            "user",
            "role",
            "status",
            "email",
            "pw age (d)",
            "2FA",
            "codes",
            "failed",
            "last login",
            "reset",
        ],
        rows,
    )


def last_login(user: Document) -> str | None:
    if not user["last_login_at"]:
        return None
    return f"{short_time(user['last_login_at'])} from {user['last_login_ip'] or '?'}"


def reset(user: Document) -> str | None:
    if not user["reset_required"]:
        return None
    return f"{user['reset_reason']} ({user['reset_campaign_id'] or 'no campaign'})"


def account_tables(doc: Document) -> list[Table]:
    """The account-wide tables of a document: API keys, allowlist, DKIM keys."""
    keys = [
        [
            k["key_id"],
            k["name"],
            k["scopes"],
            k["display"],
            k["created_by"],
            short_time(k["created_at"]),
            "active",
        ]
        for k in doc["api_keys"]
    ] + [
        [
            k["key_id"],
            k["name"],
            k["scopes"],
            k["display"],
            k["created_by"],
            short_time(k["created_at"]),
            f"revoked {short_time(k['revoked_at'])} by {k['revoked_by']}: {k['revoke_reason']}",
        ]
        for k in doc["revoked_api_keys"]
    ]
    allowlist = [
        [e["entry_id"], e["cidr"], e["label"], e["added_by"], short_time(e["added_at"])]
        for e in doc["allowlist"]
    ]
    dkim = [
        [
            k["domain"],
            k["selector"],
            k["algorithm"],
            k["state"],
            k["public_key_sha256"][:16] + "…",
            short_time(k["generated_at"]),
            short_time(k["activated_at"]),
            short_time(k["retired_at"]),
        ]
        for k in doc["dkim_keys"]
    ]
    return [
        _table(
            f"API keys ({len(doc['api_keys'])} active, {len(doc['revoked_api_keys'])} revoked)",
            ["key id", "name", "scopes", "display", "created by", "created", "status"],
            keys,
        ),
        _table(
            f"allowlist ({len(allowlist)})"
            + ("" if allowlist else ": empty, every IP may enter the control panel"),
            ["entry", "cidr", "label", "added by", "added"],
            allowlist,
        ),
        _table(
            f"DKIM keys ({len(dkim)})",
            [
                "domain",
                "selector",
                "algorithm",
                "state",
                "public key sha256",
                "generated",
                "activated",
                "retired",
            ],
            dkim,
        ),
    ]


def render_state(doc: Document, source: dict[str, Any]) -> None:
    """``state``: the whole document, and where it was read from."""
    title = f"security state of {doc['account']['name']}"
    console.print(facts_panel(title, [*account_facts(doc), ("source", source_line(source))]))
    console.print(Group(users_table(doc["users"]), *account_tables(doc)))


def render_account_state(doc: Document) -> None:
    """``account show``: the document without its users (``account_state``)."""
    console.print(facts_panel(f"account {doc['account']['name']}", account_facts(doc)))
    console.print(Group(*account_tables(doc)))


def render_user_state(doc: Document) -> None:
    """``user show``: one user's entry of its account's document (``user_state``)."""
    user, account = doc["user"], doc["account"]
    facts: list[tuple[str, Any]] = [
        ("user", user["username"]),
        ("account", account["name"]),
        ("role", user["role"]),
        ("status", user["status"]),
        ("email", user["email"]),
        ("registered at", short_time(user["registered_at"])),
        ("password changed at", short_time(user["password_changed_at"])),
        ("password age (days)", user["password_age_days"]),
        ("2FA required", account["two_factor_required"]),
        ("recovery codes left", user["recovery_codes_left"]),
        ("codes generated at", short_time(user["recovery_codes_generated_at"])),
        ("failed logins", user["failed_logins"]),
        ("last login", last_login(user)),
        ("reset required", reset(user) if user["reset_required"] else False),
        ("as of", short_time(doc["as_of"])),
    ]
    console.print(facts_panel(f"user {user['username']}", facts))
    factors = [
        [
            f["factor_id"],
            f["kind"],
            f["label"],
            short_time(f["enrolled_at"]),
            short_time(f["confirmed_at"]),
        ]
        for f in user["second_factors"]
    ]
    pending = [
        [f["factor_id"], f["kind"], f["label"], short_time(f["started_at"])]
        for f in user["pending_enrolments"]
    ]
    console.print(
        Group(
            _table(
                f"second factors ({len(factors)})",
                ["factor id", "kind", "label", "enrolled", "confirmed"],
                factors,
            ),
            _table(
                f"pending enrolments ({len(pending)})",
                ["factor id", "kind", "label", "started"],
                pending,
            ),
        )
    )


def state_command(
    account: Annotated[str, typer.Argument(help="Account name.")],
    at: Annotated[
        str | None,
        typer.Option(
            "--at",
            help=f"Show the state as it was at this ISO 8601 time (e.g. {TIME_EXAMPLE}; "
            "no offset means UTC), replayed from the event store.",
        ),
    ] = None,
    no_catch_up: Annotated[
        bool,
        typer.Option(
            "--no-catch-up",
            help="Read the view as it stands, without applying new events first; "
            "says how far behind the log it is.",
        ),
    ] = False,
    json_out: JsonOption = False,
) -> None:
    """Show an account's security state: users, 2FA, API keys, allowlist, DKIM keys."""
    account = parse_command(AccountQuery, account=account).account
    source: dict[str, Any]
    if at is not None:
        moment = parse_time(at, "--at", "state")
        doc = state_at(STATE.reader, account, moment)
        source = {"kind": "event_store", "at": moment.isoformat()}
    else:
        doc, status = read_view(account, catch_up=not no_catch_up)
        source = {"kind": "view", "position": status.position, "head": status.head}
    if json_out:
        print_json({**doc, "source": source})
        return
    render_state(doc, source)


# --- history -------------------------------------------------------------------------------


def render_history(kind: SubjectKind, name: str, entries: list[HistoryEntry]) -> None:
    table = make_table(
        f"history of {kind} {name} ({len(entries)} events)",
        ("occurred at (UTC)", "subject", "v", "event", "actor", "ip", "changes"),
        title_justify="left",
        show_lines=True,
    )
    for e in entries:
        changes = e.changes or ["(no change to the security state)"]
        if not e.changes and e.details:
            changes = [", ".join(f"{k}={v}" for k, v in e.details.items() if v is not None)]
        table.add_row(
            cell(e.occurred_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")),
            cell(e.subject),
            cell(e.version),
            cell(e.type),
            cell(e.actor),
            cell(e.source_ip),
            lines_cell(changes),
        )
    console.print(table)


def history_command(
    ref: Annotated[str, typer.Argument(metavar="ACCOUNT|USER", help="Account name or username.")],
    since: Annotated[
        str | None, typer.Option("--since", help="Only events at or after this ISO 8601 time.")
    ] = None,
    until: Annotated[
        str | None, typer.Option("--until", help="Only events at or before this ISO 8601 time.")
    ] = None,
    as_user: Annotated[
        bool, typer.Option("--user", help="Treat the argument as a username.")
    ] = False,
    as_account: Annotated[
        bool, typer.Option("--account", help="Treat the argument as an account name.")
    ] = False,
    json_out: JsonOption = False,
) -> None:
    """Replay every event of an account and its users (or of one user), with what it changed."""
    problems = []
    if as_user and as_account:
        problems.append("--user and --account exclude each other")
    start = end = None
    try:
        start = parse_time(since, "--since", "history") if since else None
    except InvalidCommandError as e:
        problems += e.problems
    try:
        end = parse_time(until, "--until", "history") if until else None
    except InvalidCommandError as e:
        problems += e.problems
    if start and end and start > end:
        problems.append(f"--since ({start.isoformat()}) is after --until ({end.isoformat()})")
    if problems:
        raise InvalidCommandError("history", problems)
    ref = parse_command(_SubjectQuery, ref=ref).ref
    force: SubjectKind | None = "user" if as_user else "account" if as_account else None
    kind, entries = history(STATE.reader, ref, start, end, force)
    if json_out:
        print_json(
            {
                "subject_kind": kind,
                "subject": ref,
                "since": start.isoformat() if start else None,
                "until": end.isoformat() if end else None,
                "entries": [e.to_json() for e in entries],
            }
        )
        return
    render_history(kind, ref, entries)


def register(app: typer.Typer) -> None:
    app.command("state")(state_command)
    app.command("history")(history_command)
