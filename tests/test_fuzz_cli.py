"""Fuzzing every CLI command with hostile input keeps the hardening in place (issue 6).

Hypothesis builds command lines for every command the CLI registers (found by walking
the command tree, so a new command is fuzzed without a change here), filling each
argument and option with a mix of valid names from a small world and hostile text:
control and format characters, unpaired surrogates (undecodable argv bytes), huge
strings, odd Unicode, SQL metacharacters, malformed addresses, times and numbers. The
root options (actor, source IP, user agent, request id) are fuzzed the same way, and so
is stdin (passwords, codes, tokens).

Whatever the input, every run must hold to:
- never exit 3 and never show a traceback (a crash or an untranslated error);
- nothing half-written: a refused command writes no event, except the refusals the
  ledger records by design (a refused check of a secret, a denied access);
- no raw control, format or separator character in any output, table or JSON;
- and at the end the views, caught up, equal views rebuilt from the log.
"""

from __future__ import annotations

import io
import json
import os
import sys
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import POSTGRES_URL, make_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domain import commands as c
from domain.context import RequestContext
from domain.values import AccountKind
from secstate.bootstrap import build_ledger
from secstate.cli import _command, run

PASSWORD = "Fuzzing-Lantern-2026"

# Refusals the ledger records on purpose: the one write a refused command may make.
RECORDED_REFUSALS = frozenset(
    {
        "secstate.User.LoginFailed",
        "secstate.User.UserLocked",
        "secstate.User.PasswordChangeFailed",
        "secstate.User.TotpConfirmationFailed",
        "secstate.ApiKeyIndex.UseRefused",
        "secstate.CredentialAttempt.UnknownUserRefused",
        "secstate.CredentialAttempt.UnknownApiKeyRefused",
        "secstate.Account.ControlPanelAccessDenied",
    }
)
# Long-running or unbounded commands get the options that bound them.
BOUNDED = {("project", "run"): ["--once"]}
# Nothing of these may reach a reader raw: categories Cc, Cf, Zl, Zp, Cs (newline aside).
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


def unsafe_characters(text: str) -> set[str]:
    return {ch for ch in text if ch != "\n" and unicodedata.category(ch) in _UNSAFE_CATEGORIES}


# --- the world the fuzzer aims at -----------------------------------------------------------


@dataclass
class World:
    account: str = "fz-acme"
    staff: str = "fz-staff"
    owner: str = "fz-alice"
    employee: str = "fz-e-001"
    domain: str = "mail.fuzz.example"
    selector: str = "s1"
    key_id: str = ""
    token: str = ""
    factor_id: str = ""
    entry_id: str = ""


def make_world(ledger: Any) -> World:
    world = World()
    ctx = RequestContext(source_ip="198.51.100.7", user_agent="fuzz-setup")
    ledger.open_account(c.OpenAccount(name=world.account), ctx)
    ledger.open_account(c.OpenAccount(name=world.staff, kind=AccountKind.STAFF), ctx)
    for username, account, role in (
        (world.owner, world.account, "owner"),
        ("fz-bob", world.account, "teammate"),
        (world.employee, world.staff, "employee"),
    ):
        ledger.register_user(
            c.parse_command(
                c.RegisterUser,
                account=account,
                username=username,
                email=f"{username}@fuzz.example",
                password=PASSWORD,
                role=role,
            ),
            ctx,
        )
    issued = ledger.create_api_key(
        c.CreateApiKey(account=world.account, name="ci", scopes=["send"]), ctx
    )
    world.key_id, world.token = issued.key_id, issued.token
    world.factor_id = ledger.start_totp_enrolment(
        c.StartTotpEnrolment(username=world.owner), ctx
    ).factor_id
    world.entry_id = ledger.add_allowlist_entry(
        c.AddAllowlistEntry(account=world.account, cidr="0.0.0.0/0", label="everywhere"), ctx
    )
    ledger.generate_dkim_key(
        c.GenerateDkimKey(
            account=world.account,
            domain=world.domain,
            selector=world.selector,
            algorithm="ed25519-sha256",
        ),
        ctx,
    )
    return world


@dataclass
class Store:
    backend: str
    env: dict[str, str]
    ledger: Any
    world: World

    def topics_after(self, position: int) -> list[str]:
        found = self.ledger.recorder.select_notifications(start=position + 1, limit=1000)
        return [n.topic for n in found]

    def head(self) -> int:
        return int(self.ledger.recorder.max_notification_id() or 0)


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Store]]:
    opened: dict[str, Store] = {}
    yield opened
    for store in opened.values():
        store.ledger.close()
        if store.backend == "postgres":
            import psycopg

            schema = store.env["SECSTATE_DATABASE_URL"].rsplit("=", 1)[1]
            with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def store(
    backend: str, stores: dict[str, Store], tmp_path_factory: pytest.TempPathFactory
) -> Store:
    if backend not in stores:
        home = tmp_path_factory.mktemp(f"fuzz-{backend}")
        schema = None
        env = {
            "SECSTATE_HOME": str(home),
            "SECSTATE_ARGON2_TIME_COST": "1",
            "SECSTATE_ARGON2_MEMORY_KIB": "8",
            "SECSTATE_ARGON2_PARALLELISM": "1",
            "SECSTATE_DKIM_RSA_BITS": "1024",
        }
        if backend == "postgres":
            import secrets

            import psycopg
            from conftest import postgres_problem

            if postgres_problem():
                pytest.skip(str(postgres_problem()))
            schema = "t_fuzz_" + secrets.token_hex(5)
            with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
                conn.execute(f'CREATE SCHEMA "{schema}"')
            env["SECSTATE_DATABASE_URL"] = f"{POSTGRES_URL}?schema={schema}"
        settings_ = make_settings(backend, home, schema, argon2_memory_kib=8)
        ledger = build_ledger(settings_)
        stores[backend] = Store(backend, env, ledger, make_world(ledger))
    return stores[backend]


# --- hostile values -------------------------------------------------------------------------

_nasty_chars = st.characters(
    categories=("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn", "Mn", "So", "Lo", "Nd", "Po", "Sm")
)
hostile_text = st.one_of(
    st.text(_nasty_chars, max_size=40),
    st.text(max_size=200),
    st.sampled_from(
        [
            "",
            " ",
            "\x1b[2J\x1b[31mred",
            "\x1b]8;;https://evil.example\x07link\x1b]8;;\x07",
            "[link=https://evil.example]x[/link]",
            "[bold red]x",
            ":warning:",
            "\u202egnp.exe",
            "a\u2028b\u2029c\u0085d",
            "\u009b31m",
            "=1+1",
            "\r=1+1",
            "\n@SUM(A1)",
            "'; DROP TABLE stored_events; --",
            '" OR "1"="1',
            "\udcff\udcfe",
            "\x00nul",
            "x" * 5000,
            "é" * 300,
            "😀" * 100,
        ]
    ),
    st.just("y" * 100_000),
)
numbers = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.sampled_from(["0", "-1", "1e9", "NaN", "0x10", "٣", "1_000", "9" * 40]),
)
addresses = st.sampled_from(
    [
        "198.51.100.7",
        "::ffff:198.51.100.7",
        "2001:db8::1",
        "fe80::1%eth0",
        "256.1.1.1",
        "10.0.0.0/8",
        "::ffff:198.51.100.0/120",
        "0.0.0.0/0",
        "2001:db8::/200",
        "1.2.3",
        "",
    ]
)
times = st.sampled_from(
    [
        "2015-02-10",
        "2015-02-10T03:00:00Z",
        "0001-01-01T00:00:00+01:00",
        "9999-12-31T23:59:59-01:00",
        "2015-13-45",
        "yesterday",
        "2015-02-10T03:00:00+25:00",
    ]
)


def valid_for(name: str, world: World) -> list[str]:
    """Plausible values of a parameter in this world (the fuzzer mixes hostile ones in)."""
    return {
        "account": [world.account, world.staff],
        "name": [world.account, "fz-new-" + "x"],
        "accounts": [world.account],
        "customers": [world.account, world.staff],
        "username": [world.owner, world.employee, "fz-bob", "fz-nobody"],
        "users": [world.owner],
        "ref": [world.account, world.owner],
        "domain": [world.domain],
        "selector": [world.selector, "s2"],
        "key_id": [world.key_id, "AAAAAAAAAAAA"],
        "factor_id": [world.factor_id, "tf_000000000000"],
        "entry": [world.entry_id, "0.0.0.0/0"],
        "cidr": ["203.0.113.0/24", "2001:db8::/48"],
        "ip": ["198.51.100.7", "203.0.113.9"],
        "scopes": ["send", "read"],
        "types": ["User.Login*", "*"],
        "names": ["state", "timeline"],
        "fmt": ["table", "jsonl", "csv", "timesketch-csv", "timesketch-jsonl"],
        "order": ["asc", "desc"],
        "kind": ["customer", "staff"],
        "role": ["owner", "teammate", "employee"],
        "action": ["read", "export"],
        "algorithm": ["rsa-sha256", "ed25519-sha256"],
        "dkim_algorithm": ["ed25519-sha256"],
        "campaign": ["fz-campaign"],
        "code": ["123456"],
        "label": ["office"],
        "reason": ["fuzzing"],
        "email": ["fz@fuzz.example"],
        "system": ["crm"],
        "resource": ["accounts"],
    }.get(name, [])


NUMERIC = {"limit", "after", "records", "count", "batch_size", "jobs", "accounts", "seed"}
NUMERIC_NAMES = {"weeks", "employees", "batch_events", "poll_interval"} | NUMERIC
TIMES = {"at", "since", "until"}
ADDRESSES = {"ip", "cidr", "entry"}


def value_strategy(name: str, world: World) -> st.SearchStrategy[str]:
    options: list[st.SearchStrategy[str]] = [hostile_text]
    valid = valid_for(name, world)
    if valid:
        options += [st.sampled_from(valid)] * 3
    if name in NUMERIC_NAMES:
        options += [numbers, st.integers(0, 5).map(str)]
    if name in TIMES:
        options += [times] * 2
    if name in ADDRESSES:
        options += [addresses] * 2
    return st.one_of(options)


def commands() -> list[tuple[tuple[str, ...], Any]]:
    """Every leaf command of the CLI, with its path."""
    found = []

    def walk(command: Any, path: tuple[str, ...]) -> None:
        if hasattr(command, "commands"):
            for name, sub in command.commands.items():
                walk(sub, (*path, name))
        else:
            found.append((path, command))

    walk(_command(), ())
    return found


COMMANDS = commands()


@st.composite
def command_lines(draw: st.DrawFn, world: World) -> tuple[list[str], str, tuple[str, ...]]:
    """A command line: mostly valid with one hostile value and a hostile user agent (so
    commands run through and print what they stored), or anything at all."""
    path, command = draw(st.sampled_from(COMMANDS))
    anything = draw(st.integers(0, 9)) < 3
    params = [p for p in command.params if not getattr(p, "is_flag", False)]
    hostile_one = draw(st.sampled_from(params)).name if params and draw(st.booleans()) else None

    def value(name: str) -> str:
        valid = valid_for(name, world)
        if anything or name == hostile_one or not valid:
            return draw(value_strategy(name, world))
        return draw(st.sampled_from(valid))

    argv: list[str] = []
    if anything:
        for option, strategy in (
            ("--actor", st.one_of(st.just("user:fz-alice"), hostile_text)),
            ("--source-ip", addresses),
            ("--request-id", st.one_of(st.just("fz-1"), hostile_text)),
        ):
            if draw(st.booleans()):
                argv += [option, draw(strategy)]
    else:
        argv += ["--actor", draw(st.sampled_from(["user:fz-alice", "staff:fz-e-001", "system:fz"]))]
        argv += ["--source-ip", draw(st.sampled_from(["198.51.100.7", "2001:db8::7"]))]
    argv += ["--user-agent", draw(hostile_text)]
    argv += list(path)
    for param in command.params:
        opts = getattr(param, "opts", [])
        is_option = type(param).__name__.endswith("Option")
        if is_option and getattr(param, "is_flag", False):
            if draw(st.booleans()):
                argv.append(opts[0])
            continue
        if is_option:
            most = 2 if getattr(param, "multiple", False) else 1
            for _ in range(draw(st.integers(0 if anything else 1, most))):
                argv += [opts[0], value(param.name)]
            continue
        if anything and draw(st.integers(0, 9)) == 0:
            continue  # a missing argument now and then
        argv.append(value(param.name))
    argv += BOUNDED.get(path, [])
    if "--output" in argv:  # files go to the scratch folder the runs work in, never elsewhere
        where = argv.index("--output") + 1
        if argv[where].startswith(("/", "~")) or ".." in argv[where]:
            argv[where] = "./" + argv[where].replace("..", "_").lstrip("/~")
    first = st.sampled_from([PASSWORD, world.token]) if not anything else hostile_text
    stdin = "\n".join(
        [
            draw(first),
            *draw(
                st.lists(
                    st.one_of(st.just(PASSWORD), st.just(world.token), hostile_text), max_size=2
                )
            ),
        ]
    )
    return argv, stdin, path


def run_cli(store: Store, argv: list[str], stdin: str) -> tuple[int, str, str]:
    saved = {k: v for k, v in os.environ.items() if k.startswith("SECSTATE_")}
    for key in saved:
        del os.environ[key]
    os.environ.update(store.env)
    os.environ["COLUMNS"] = "120"
    out, err = io.StringIO(), io.StringIO()
    real = sys.stdin, sys.stdout, sys.stderr
    cwd = os.getcwd()
    scratch = Path(store.env["SECSTATE_HOME"]).parent / "scratch"
    scratch.mkdir(exist_ok=True)
    os.chdir(scratch)
    sys.stdin, sys.stdout, sys.stderr = io.StringIO(stdin), out, err
    try:
        code = run(argv)
    finally:
        sys.stdin, sys.stdout, sys.stderr = real
        os.chdir(cwd)
        for key in store.env:
            os.environ.pop(key, None)
        os.environ.update(saved)
    return code, out.getvalue(), err.getvalue()


def check_run(store: Store, argv: list[str], stdin: str, path: tuple[str, ...]) -> None:
    before = store.head()
    code, out, err = run_cli(store, argv, stdin)
    shown = f"{argv!r} -> {code}\n{err[-2000:]}"
    assert code in (0, 1, 2), shown
    assert "Traceback" not in out + err, shown
    unsafe = unsafe_characters(out + err)
    assert not unsafe, f"{sorted(map(hex, map(ord, unsafe)))} in the output of {shown}"
    if code != 0:
        written = set(store.topics_after(before))
        assert written <= RECORDED_REFUSALS, f"{sorted(written)} written by refused {shown}"


FUZZ_SETTINGS = settings(
    max_examples=int(os.environ.get("SECSTATE_FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
    # CI runs the same examples every time (a failure there reproduces); locally, new ones.
    derandomize=os.environ.get("CI", "").lower() in ("1", "true", "yes"),
    database=None,
)


def answers(store: Store) -> dict[str, Any]:
    """What the views answer: an account's state and the whole timeline."""
    found: dict[str, Any] = {}
    for name, args in (
        ("state", ["state", store.world.account, "--json"]),
        ("timeline", ["timeline", "--limit", "0", "--json"]),
    ):
        code, out, err = run_cli(store, args, "")
        assert code == 0, err
        doc = json.loads(out)
        doc.pop("as_of", None)
        doc.pop("source", None)
        for user in doc.get("users", []):
            user.pop("password_age_days", None)
        found[name] = doc
    return found


@pytest.mark.slow
def test_no_hostile_command_line_crashes_leaks_or_half_writes(store: Store) -> None:
    # given command lines of hostile input for every command
    @FUZZ_SETTINGS
    @given(data=st.data())
    def one_command(data: st.DataObject) -> None:
        argv, stdin, path = data.draw(command_lines(store.world), label="command line")
        # when it runs, then it holds to every rule above
        check_run(store, argv, stdin, path)

    one_command()
    # and whatever they left, the views caught up equal the views rebuilt from the log
    caught_up = answers(store)
    code, _, err = run_cli(store, ["project", "rebuild", "state", "timeline"], "")
    assert code == 0, err
    assert answers(store) == caught_up


def test_every_command_of_the_cli_is_fuzzed() -> None:
    # then: the fuzzer walks the command tree itself, so no command escapes it
    paths = {" ".join(path) for path, _ in COMMANDS}
    assert {"user login", "timeline", "state", "apikey verify", "keys status"} <= paths
    assert len(paths) >= 40
