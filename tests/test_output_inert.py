"""Attacker-controlled text is inert in every output of the CLI, on SQLite and PostgreSQL.

Labels, names, reasons, resources, user agents and request ids come from whoever made a
request. Whatever they hold, a terminal shows them without acting on them (no escape
sequence, bell, hyperlink, bidi reordering or new line reaches it), Rich markup and emoji
codes in them print literally, JSON Lines split into exactly one record per event even
by ``str.splitlines()``, and a CSV export holds one record per event with every
formula-looking cell guarded.

The hostile text gets in two ways that do not depend on what the CLI accepts as input
today: as ``--user-agent`` (free text by design: it is the attacker's evidence), and as
stored history: ``tests/fixtures/history-v1`` (written by the old code), with its
hostile strings swapped for nastier ones in every free-text field, request ids included.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import POSTGRES_URL, make_settings, postgres_problem
from fixture_store import Row, load_postgres, load_sqlite, read_rows
from hypothesis import given
from hypothesis import strategies as st
from test_followers import PositionsView

from projections.registry import VIEWS
from projections.sql import Tx
from secstate.bootstrap import build_ledger
from secstate.cli import run
from secstate.cli.common import STATE
from secstate.cli.render import guard_formula, inert

FIXTURE = "history-v1"
# The hostile string the fixture writer put in every free-text field (and a cut of it).
OLD_HOSTILE = "\x1b[31mred\x1b[0m [link=https://evil.example]x[/link] \u202egnp.exe \u2028=1+1"

OSC8_LINK = "\x1b]8;;https://evil.example\x07x\x1b]8;;\x07"
LINK_MARKUP = "[link=https://evil.example]x[/link]"
BOLD_MARKUP = "[bold red]loud[/bold red]"
EMOJI_CODE = ":warning:"
PAYLOAD = (
    f"\x1b[31mred\x1b[0m\x1b[2J {OSC8_LINK} \x07 {LINK_MARKUP} {BOLD_MARKUP} {EMOJI_CODE}"
    " \u202egnp.exe\u202c \u2066iso\u2069 z\u200bw\u200dj\ufeff"
    " \u2028\u2029\u0085 \x9b31m \x01\x7f\t \r=1+1 \n@SUM(A1)"
)  # no NUL: the PostgreSQL timeline view cannot store one (argv cannot carry one either)
# What a free-text value may start with to be run by a spreadsheet.
FORMULAS = ("=1+1", "\r=1+1", "\n@SUM(A1)", "+1", "-1", "@SUM(A1)", "\t=1", " =1+1", "\u200b=1")

CHEAP_ENV = {
    "SECSTATE_ARGON2_TIME_COST": "1",
    "SECSTATE_ARGON2_MEMORY_KIB": "1024",
    "SECSTATE_ARGON2_PARALLELISM": "1",
    "SECSTATE_DKIM_RSA_BITS": "1024",
}
PASSWORD = "Quartz-Lantern-" + secrets.token_hex(4)
SECSTATE_BIN = Path(sys.executable).with_name("secstate")


def hostile(n: int) -> str:
    """The n-th hostile value: a formula-looking start, then everything else."""
    return f"{FORMULAS[n % len(FORMULAS)]} {n} {PAYLOAD}"


def assert_inert(text: str) -> None:
    """Nothing in ``text`` but printable characters and our own line breaks."""
    raw = sorted({f"U+{ord(c):04X}" for c in text if c != "\n" and not c.isprintable()})
    assert raw == [], f"raw characters reached the output: {raw}"
    assert "\u26a0" not in text, "an emoji code was interpreted"


def strings(value: Any) -> Iterator[str]:
    """Every string in a parsed JSON document, keys aside."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)


# --- the hostile stored history ---------------------------------------------------------------


def _rewrite(value: Any, key: str | None, counter: list[int]) -> Any:
    if isinstance(value, dict):
        return {k: _rewrite(v, k, counter) for k, v in value.items()}
    if isinstance(value, list):
        return [_rewrite(v, key, counter) for v in value]
    if isinstance(value, str) and (OLD_HOSTILE in value or OLD_HOSTILE[:60] in value):
        counter[0] += 1
        return hostile(counter[0])
    return value


def hostile_rows() -> list[Row]:
    """The fixture's rows, every hostile string swapped for a nastier one, and the request
    id of every event with a hostile user agent made hostile too."""
    rows = []
    counter = [0]
    for row in read_rows(FIXTURE):
        state = json.loads(row.state)
        rewritten = _rewrite(state, None, counter)
        if rewritten.get("user_agent") != state.get("user_agent"):
            counter[0] += 1
            rewritten["request_id"] = hostile(counter[0])
        encoded = json.dumps(rewritten, ensure_ascii=False, separators=(",", ":"))
        rows.append(dataclasses.replace(row, state=encoded.encode("utf-8")))
    assert counter[0] > 60  # every free-text field of the fixture was reached
    return rows


EVENTS = sum(1 for r in read_rows(FIXTURE) if r.table == "events")


@pytest.fixture(scope="module")
def stores() -> Iterator[dict[str, dict[str, str]]]:
    """Environments of stores made once per module and backend; schemas dropped after."""
    made: dict[str, dict[str, str]] = {}
    yield made
    for env in made.values():
        url = env.get("SECSTATE_DATABASE_URL")
        if url:
            schema = url.rsplit("schema=", 1)[1]
            with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _new_store(backend: str, home: Path) -> tuple[dict[str, str], str | None]:
    env = {"SECSTATE_HOME": str(home), **CHEAP_ENV}
    if backend != "postgres":
        return env, None
    problem = postgres_problem()
    if problem:
        pytest.skip(problem)
    schema = "t_inert_" + secrets.token_hex(5)
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    env["SECSTATE_DATABASE_URL"] = f"{POSTGRES_URL}?schema={schema}"
    build_ledger(make_settings(backend, home, schema)).close()  # creates the tables
    return env, schema


@pytest.fixture
def history_env(
    backend: str, stores: dict[str, dict[str, str]], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """A store holding the hostile history (read only by the tests)."""
    key = f"history-{backend}"
    if key not in stores:
        home = tmp_path_factory.mktemp(key) / "home"
        env, schema = _new_store(backend, home)
        if schema is None:
            load_sqlite(FIXTURE, home / "ledger.sqlite3", hostile_rows())
        else:
            load_postgres(FIXTURE, POSTGRES_URL, schema, hostile_rows())
        stores[key] = env
    return stores[key]


# --- running the CLI ----------------------------------------------------------------------------


@dataclasses.dataclass
class Result:
    code: int
    out: str
    err: str

    def one_error_line(self) -> str:
        lines = self.err.strip().splitlines()
        assert len(lines) == 1, self.err
        assert lines[0].startswith("error: "), lines[0]
        return lines[0]


class Cli:
    def __init__(
        self, env: dict[str, str], capsys: pytest.CaptureFixture[str], mp: pytest.MonkeyPatch
    ) -> None:
        self.capsys = capsys
        self.mp = mp
        for name in list(os.environ):
            if name.startswith("SECSTATE_"):
                mp.delenv(name)
        for name, value in env.items():
            mp.setenv(name, value)
        mp.setenv("COLUMNS", "1000")  # wide: values are not folded across lines

    def __call__(self, *args: str, stdin: str = "") -> Result:
        self.capsys.readouterr()
        self.mp.setattr(sys, "stdin", io.StringIO(stdin))
        code = run(list(args))
        captured = self.capsys.readouterr()
        assert STATE._ledger is None
        return Result(code, captured.out, captured.err)

    def ok(self, *args: str, stdin: str = "") -> Result:
        result = self(*args, stdin=stdin)
        assert result.code == 0, (args, result.err)
        return result


@pytest.fixture
def cli(
    history_env: dict[str, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Cli:
    return Cli(history_env, capsys, monkeypatch)


# --- the rendering function itself ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("char", "shown"),
    [
        ("\x00", "\\x00"),
        ("\x07", "\\x07"),
        ("\t", "\\x09"),
        ("\n", "\\x0a"),
        ("\r", "\\x0d"),
        ("\x1b", "\\x1b"),
        ("\x7f", "\\x7f"),
        ("\x85", "\\x85"),
        ("\x9b", "\\x9b"),
        ("\xa0", "\\xa0"),
        ("\xad", "\\xad"),
        ("\u061c", "\\u061c"),
        ("\u200b", "\\u200b"),
        ("\u200d", "\\u200d"),
        ("\u202a", "\\u202a"),
        ("\u202e", "\\u202e"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
        ("\u2066", "\\u2066"),
        ("\u2069", "\\u2069"),
        ("\u3164", "\\u3164"),
        ("\ufeff", "\\ufeff"),
        ("\udcff", "\\udcff"),
        ("\ue000", "\\ue000"),
        ("\U000e0041", "\\U000e0041"),
    ],
)
def test_a_character_a_terminal_or_reader_acts_on_is_shown_as_a_visible_escape(
    char: str, shown: str
) -> None:
    # when
    text = inert(f"a{char}b")
    # then
    assert text == f"a{shown}b"


def test_printable_text_in_any_script_is_shown_as_it_is() -> None:
    # given
    text = "Müller & Söhne – 日本語 ✓ ❤️ [x] :warning: C:\\path 'quoted'"  # noqa: RUF001 - on purpose
    # when / then
    assert inert(text) == text


@given(st.text())
def test_inert_text_is_printable_and_stays_as_it_is(text: str) -> None:
    # when
    shown = inert(text)
    # then
    assert shown.isprintable()
    assert inert(shown) == shown


@pytest.mark.parametrize(
    "value", [*FORMULAS, "  @x", "\u3000=1", "\ufeff+1", "\x85-1", "\u2028=cmd"]
)
def test_a_cell_a_spreadsheet_would_run_gets_a_quote_in_front(value: str) -> None:
    assert guard_formula(value) == "'" + value


@pytest.mark.parametrize("value", ["plain", "1-2", "a=b", "'=1", "2015-01-05", "[x]", ""])
def test_a_cell_no_spreadsheet_would_run_is_left_alone(value: str) -> None:
    assert guard_formula(value) == value


# --- every read command over the hostile history ----------------------------------------------

READ_COMMANDS: dict[str, list[str]] = {
    "account-show": ["account", "show", "fx-acme"],
    "account-members": ["account", "members", "fx-acme"],
    "user-show": ["user", "show", "fx-alice"],
    "user-show-bob": ["user", "show", "fx-bob"],
    "allowlist-list": ["allowlist", "list", "fx-acme"],
    "apikey-list": ["apikey", "list", "fx-acme"],
    "dkim-list": ["dkim", "list", "fx-acme"],
    "state": ["state", "fx-acme"],
    "state-at": ["state", "fx-acme", "--at", "2015-01-05T11:19:00Z"],  # the TOTP factor
    "history-account": ["history", "fx-acme", "--account"],
    "history-alice": ["history", "fx-alice", "--user"],
    "history-bob": ["history", "fx-bob", "--user"],
    "history-employee": ["history", "fx-e-001", "--user"],
    "timeline": ["timeline", "--limit", "0"],
    "project-status": ["project", "status"],
}
# Commands whose output shows the hostile fields (the others must be inert all the same).
SHOWS_HOSTILE = {
    "account-show",
    "allowlist-list",
    "apikey-list",
    "state",
    "state-at",
    "history-account",
    "history-alice",
    "history-bob",
    "history-employee",
    "timeline",
}


@pytest.mark.parametrize("name", sorted(READ_COMMANDS))
def test_a_read_command_prints_hostile_history_inert_with_markup_literal(
    cli: Cli, name: str
) -> None:
    # when
    result = cli.ok(*READ_COMMANDS[name])
    # then
    assert_inert(result.out)
    assert_inert(result.err)
    if name in SHOWS_HOSTILE:
        assert "\\x1b[31mred\\x1b[0m" in result.out  # shown, as an escape
        assert "\\x1b]8;;https://evil.example\\x07x" in result.out
        assert "\\u202egnp.exe" in result.out
        assert BOLD_MARKUP in result.out  # printed, not interpreted
        assert EMOJI_CODE in result.out
        if name != "timeline":  # the timeline table is 200 columns wide: it may fold
            assert LINK_MARKUP in result.out


@pytest.mark.parametrize("name", sorted(READ_COMMANDS))
def test_a_read_commands_json_is_ascii_and_keeps_hostile_values_exact(cli: Cli, name: str) -> None:
    # when
    result = cli.ok(*READ_COMMANDS[name], "--json")
    # then
    assert result.out.isascii()
    assert_inert(result.out + result.err)
    document = json.loads(result.out)
    if name in SHOWS_HOSTILE:
        assert any(PAYLOAD in text for text in strings(document))


def test_timeline_json_document_has_one_event_per_line(cli: Cli) -> None:
    # when
    result = cli.ok("timeline", "--limit", "0", "--json")
    # then: the opening line, one line per event, the closing line
    lines = result.out.splitlines()
    assert len(lines) == EVENTS + 2
    assert len(json.loads(result.out)["events"]) == EVENTS
    assert all(json.loads(line.rstrip(",")) for line in lines[1:-1])


@pytest.mark.parametrize("fmt", ["jsonl", "timesketch-jsonl"])
def test_jsonl_splits_into_exactly_one_record_per_event_even_by_splitlines(
    cli: Cli, fmt: str
) -> None:
    # when
    result = cli.ok("timeline", "--limit", "0", "--format", fmt)
    # then
    lines = result.out.splitlines()
    assert len(lines) == EVENTS
    records = [json.loads(line) for line in lines]
    assert result.out.isascii()
    agents = {r["user_agent"] for r in records}
    assert any(a and PAYLOAD in a for a in agents)  # the exact value, after parsing


def _formula_like(cell: str) -> bool:
    """Independent of the code under test: what a spreadsheet may run as a formula."""
    if cell.startswith(("\t", "\r")):
        return True
    rest = cell.lstrip("".join(c for c in map(chr, range(0x3100)) if c.isspace()) + "\u200b\ufeff")
    return rest.startswith(("=", "+", "-", "@"))


def _records(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text, newline="")))


@pytest.mark.parametrize("fmt", ["csv", "timesketch-csv"])
def test_csv_has_one_record_per_event_every_formula_cell_guarded_and_cats_inert(
    cli: Cli, fmt: str
) -> None:
    # given: the raw values, from the JSON Lines export
    jsonl = cli.ok("timeline", "--limit", "0", "--format", "jsonl").out.splitlines()
    raw_agents = [json.loads(line)["user_agent"] or "" for line in jsonl]
    # when
    result = cli.ok("timeline", "--limit", "0", "--format", fmt)
    # then: one record per event, and one line per record (nothing in a cell breaks one)
    records = _records(result.out)
    assert len(records) == EVENTS + 1
    assert result.out.endswith("\r\n")
    assert len(result.out.split("\r\n")) == EVENTS + 2
    assert_inert(result.out.replace("\r\n", "\n"))
    # and every cell that could run is guarded, the user agents among them
    cells = [c for record in records for c in record]
    assert not [c for c in cells if _formula_like(c)]
    column = records[0].index("user_agent")
    agents = [record[column] for record in records[1:]]
    guarded = [a for a, r in zip(agents, raw_agents, strict=True) if _formula_like(r)]
    assert len(guarded) > 20
    assert all(a.startswith("'") for a in guarded)


@pytest.mark.parametrize("fmt", ["csv", "timesketch-csv"])
def test_raw_csv_keeps_every_cell_verbatim_and_still_one_record_per_event(
    cli: Cli, fmt: str
) -> None:
    # given
    jsonl = cli.ok("timeline", "--limit", "0", "--format", "jsonl").out.splitlines()
    expected = [json.loads(line) for line in jsonl]
    # when
    records = _records(cli.ok("timeline", "--limit", "0", "--format", fmt, "--raw-csv").out)
    # then
    header, rows = records[0], records[1:]
    assert len(rows) == EVENTS
    for row, event in zip(rows, expected, strict=True):
        cells = dict(zip(header, row, strict=True))
        for field in ("user_agent", "request_id", "summary"):
            assert cells[field] == (event[field] or "")
        assert json.loads(cells["details"]) == event["details"]


# --- hostile text arriving through the CLI ------------------------------------------------------

AGENT = "=1+1 " + PAYLOAD


@pytest.fixture
def fresh_cli(
    backend: str,
    stores: dict[str, dict[str, str]],
    tmp_path_factory: pytest.TempPathFactory,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> Cli:
    """A CLI on a store of this module's own, with a staff and a customer account."""
    key = f"fresh-{backend}"
    first = key not in stores
    if first:
        home = tmp_path_factory.mktemp(key) / "home"
        stores[key], _ = _new_store(backend, home)
    made = Cli(stores[key], capsys, monkeypatch)
    if first:
        made.ok("account", "open", "hq", "--kind", "staff")
        made.ok("account", "open", "acme")
        for account, username, role in (("hq", "emp", "employee"), ("acme", "alice", "owner")):
            made.ok(
                *("user", "register", account, username, "--email", f"{username}@example.com"),
                *("--role", role, "--password-stdin"),
                stdin=PASSWORD + "\n",
            )
    return made


def test_a_hostile_user_agent_is_inert_in_every_output(fresh_cli: Cli) -> None:
    # given: commands stamped with a hostile user agent, one of them refused
    cli = fresh_cli
    stamp = ("--user-agent", AGENT, "--source-ip", "203.0.113.9")
    writes = [
        cli(*stamp, "allowlist", "add", "acme", "198.51.100.0/24", "--label", "office"),
        cli(*stamp, "access", "check", "acme", "203.0.113.9"),
        cli(*stamp, "apikey", "create", "acme", "--name", "ci", "--scope", "send"),
        cli(*stamp, "totp", "enrol", "alice", "--label", "phone"),
        cli(
            *stamp,
            *("staff", "access", "emp", "--system", "crm", "--resource", "users"),
            *("--records", "2", "--customer", "acme"),
        ),
        cli(*stamp, "user", "login", "alice", "--password-stdin", stdin="Wrong-Password-123\n"),
    ]
    # when: everything is read back
    reads = [cli.ok("timeline", "--limit", "0", "--format", f) for f in ("table", "jsonl")]
    reads += [cli.ok("timeline", "--limit", "0", "--json"), cli.ok("history", "alice")]
    reads += [cli.ok("state", "acme"), cli.ok("allowlist", "list", "acme")]
    exports = {f: cli.ok("timeline", "--limit", "0", "--format", f).out for f in ("csv",)}
    # then
    for result in writes + reads:
        assert_inert(result.out + result.err)
    assert [w.code for w in writes] == [0, 1, 0, 0, 0, 1]
    agents = [json.loads(line)["user_agent"] for line in reads[1].out.splitlines()]
    assert agents.count(AGENT) >= 6
    records = _records(exports["csv"])
    column = records[0].index("user_agent")
    assert "'" + inert(AGENT) in [r[column] for r in records]


FREE_TEXT = {
    "display-name": ["account", "open", "acme-2", "--display-name", "{}"],
    "allowlist-label": ["allowlist", "add", "acme", "192.0.2.0/24", "--label", "{}"],
    "apikey-name": ["apikey", "create", "acme", "--name", "{}", "--scope", "send"],
    "totp-label": ["totp", "enrol", "alice", "--label", "{}"],
    "staff-system": [
        *("staff", "access", "emp", "--system", "{}", "--resource", "x", "--records", "1"),
    ],
    "staff-resource": [
        *("staff", "access", "emp", "--system", "crm", "--resource", "{}", "--records", "1"),
    ],
    "disable-reason": ["user", "disable", "alice", "--reason", "{}"],
    "reset-reason": ["password", "require-reset", "alice", "--reason", "{}"],
    "request-id": ["--request-id", "{}", "account", "policy", "acme", "--require-2fa"],
}


@pytest.mark.parametrize("field", sorted(FREE_TEXT))
@pytest.mark.parametrize("form", ["table", "json"])
def test_hostile_free_text_on_the_command_line_is_refused_or_echoed_inert(
    fresh_cli: Cli, field: str, form: str
) -> None:
    # given: input validation may refuse it; whichever it does, the output is inert
    value = hostile(len(field))
    args = [value if a == "{}" else a for a in FREE_TEXT[field]]
    # when
    result = fresh_cli(*args, *(["--json"] if form == "json" else []))
    # then
    assert result.code in (0, 1), result.err
    assert_inert(result.out + result.err)
    if result.code == 1:
        result.one_error_line()
        assert result.out == ""
    elif form == "json":
        assert result.out.isascii()
        json.loads(result.out)
    if field == "disable-reason" and result.code == 0:
        fresh_cli.ok("user", "enable", "alice")  # for the cases after this one


# --- errors echo what they were given -------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["nosuch" + PAYLOAD], 2),
        (["account", "open", "acme-3", "extra" + PAYLOAD], 2),
        (["account", "show", PAYLOAD], 1),
        (["account", "show", "\udcff\udcfe"], 1),  # undecodable argv bytes
        (["--source-ip", PAYLOAD, "account", "show", "acme"], 1),
        (["--actor", "staff:" + PAYLOAD + ":", "account", "policy", "nope", "--require-2fa"], 1),
        (["--actor", PAYLOAD, "account", "show", "acme"], 1),
        (["timeline", "--format", PAYLOAD], 1),
        (["timeline", "--since", PAYLOAD], 1),
        (["timeline", "--type", PAYLOAD], 1),
        (["timeline", "--actor", PAYLOAD], 1),
        (["history", "nobody", "--since", PAYLOAD], 1),
        (["state", "acme", "--at", PAYLOAD], 1),
        (["project", "status", PAYLOAD], 1),
    ],
)
def test_an_error_echoing_hostile_input_is_one_inert_line(
    fresh_cli: Cli, args: list[str], code: int
) -> None:
    # when
    result = fresh_cli(*args)
    # then
    assert result.code == code, result.err
    assert result.out == ""
    assert_inert(result.err)
    assert "Traceback" not in result.err
    if code == 1:
        result.one_error_line()
    else:
        assert result.err.strip().splitlines()[-1].startswith("Error: ")


def _script(*argv: bytes) -> tuple[int, str]:
    proc = subprocess.run(
        [os.fsencode(SECSTATE_BIN), *argv],
        capture_output=True,
        env=dict(os.environ),  # the fixture put the store's SECSTATE_* variables here
        timeout=120,
        check=False,
    )
    return proc.returncode, proc.stderr.decode("utf-8")


def test_undecodable_argv_bytes_are_refused_with_an_inert_line(fresh_cli: Cli) -> None:
    # given: arguments of bytes that are not UTF-8, as a shell passes them
    # when
    refused = _script(b"account", b"show", b"bad\xff\x1b[2J")
    unknown = _script(b"no-such\xff\x1b[2J")
    # then
    assert refused[0] == 1, refused[1]
    assert len(refused[1].strip().splitlines()) == 1
    assert unknown[0] == 2, unknown[1]
    assert "no-such\\udcff\\x1b[2J" in unknown[1]  # echoed, as escapes
    for _, err in (refused, unknown):
        assert_inert(err)
        assert "Traceback" not in err


# --- a view's stored error ------------------------------------------------------------------------


class HostileView(PositionsView):
    """Fails on the first event whose user agent is hostile, quoting it in its error."""

    name = "hostile"
    tables = ("hostile_seen",)

    def apply_batch(self, tx: Tx, events: Sequence[tuple[int, Any]]) -> None:
        for _position, event in events:
            agent = getattr(event, "user_agent", None) or ""
            if PAYLOAD in agent:
                raise ValueError(f"cannot apply an event from {agent}")
        super().apply_batch(tx, events)


def test_a_stored_view_error_quoting_hostile_text_is_shown_inert(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given: a view that failed on the hostile history, its error stored
    monkeypatch.setitem(VIEWS, "hostile", HostileView)
    failed = cli("project", "run", "hostile", "--once")
    # when
    table = cli.ok("project", "status", "hostile")
    document = cli.ok("project", "status", "hostile", "--json")
    # then
    assert failed.code == 1
    for result in (failed, table, document):
        assert_inert(result.out + result.err)
    assert "\\x1b[31mred" in failed.err
    assert "cannot apply an event from" in table.out
    assert "\\x1b[31mred" in table.out
    assert document.out.isascii()
    (view,) = json.loads(document.out)["views"]
    assert PAYLOAD in view["last_error"]["message"]
