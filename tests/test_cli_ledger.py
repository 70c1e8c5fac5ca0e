"""The command-side CLI end to end, on SQLite and PostgreSQL.

Most tests call ``secstate.cli.run`` in-process (stdout/stderr captured, stdin replaced);
a few run the installed ``secstate`` console script, one of them under a pseudo-terminal
to prove the password prompt does not echo. Every refusal must exit non-zero with one
line on stderr naming the problem, no traceback, no secret, and no event written.

One store per backend is shared by the module (cheap argon2, RSA 1024); tests use
fresh random names so they do not see each other's accounts and users.
"""

from __future__ import annotations

import io
import json
import os
import pty
import secrets
import select
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import POSTGRES_URL, make_settings, postgres_problem

from domain import commands as c
from domain.account import Account
from domain.context import RequestContext, SystemClock
from domain.ledger import Ledger
from domain.secrets import ApiKeyCodec, totp_code_at_step, totp_step
from domain.user import totp_aad
from domain.values import AccountKind
from secstate.bootstrap import build_ledger
from secstate.cli import run
from secstate.cli.common import STATE

CHEAP_ENV = {
    "SECSTATE_ARGON2_TIME_COST": "1",
    "SECSTATE_ARGON2_MEMORY_KIB": "1024",
    "SECSTATE_ARGON2_PARALLELISM": "1",
    "SECSTATE_DKIM_RSA_BITS": "1024",
}
# The console script beside the interpreter running the tests (the project's venv).
SECSTATE_BIN = Path(sys.executable).with_name("secstate")
if not SECSTATE_BIN.exists():
    SECSTATE_BIN = Path(shutil.which("secstate") or SECSTATE_BIN)

PASSWORD = "Quartz-Lantern-" + secrets.token_hex(4)
NEW_PASSWORD = "Velvet-Harbour-" + secrets.token_hex(4)
WEAK_PASSWORD = "Zq9!x"  # too short
# Every secret the tests handle; none may show up in the output of a refused command.
SECRETS: set[str] = {PASSWORD, NEW_PASSWORD}


def fresh(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


# --- the store and the CLI runner ----------------------------------------------------------


@dataclass
class Store:
    backend: str
    env: dict[str, str]
    ledger: Ledger
    schema: str | None = None
    world: World | None = None

    def events(self) -> int:
        """Position of the last stored event: unchanged means nothing was written."""
        return self.ledger.recorder.max_notification_id() or 0


def open_store(backend: str, home: Path, schema: str | None) -> Store:
    env = {"SECSTATE_HOME": str(home), **CHEAP_ENV}
    if backend == "postgres":
        env["SECSTATE_DATABASE_URL"] = f"{POSTGRES_URL}?schema={schema}"
    ledger = build_ledger(make_settings(backend, home, schema))
    return Store(backend, env, ledger, schema)


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Store]]:
    """One store per backend for the whole module, opened on first use."""
    opened: dict[str, Store] = {}
    yield opened
    for store in opened.values():
        store.ledger.close()
        if store.schema:
            with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{store.schema}" CASCADE')


@pytest.fixture
def store(
    backend: str, stores: dict[str, Store], tmp_path_factory: pytest.TempPathFactory
) -> Store:
    if backend not in stores:
        schema = None
        if backend == "postgres":
            problem = postgres_problem()
            if problem:
                pytest.skip(problem)
            schema = "t_cli_" + secrets.token_hex(5)
            with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
                conn.execute(f'CREATE SCHEMA "{schema}"')
        stores[backend] = open_store(backend, tmp_path_factory.mktemp(backend), schema)
    return stores[backend]


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def clean_env(store_env: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECSTATE_")}
    env.update(store_env)
    env["COLUMNS"] = "200"
    return env


class Cli:
    """Runs ``secstate`` in-process against one store."""

    def __init__(
        self, store: Store, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        self.store = store
        self.capsys = capsys
        self.monkeypatch = monkeypatch
        for name in list(os.environ):
            if name.startswith("SECSTATE_"):
                monkeypatch.delenv(name)
        for name, value in store.env.items():
            monkeypatch.setenv(name, value)

    def __call__(self, *args: str, stdin: str = "") -> Result:
        self.capsys.readouterr()
        self.monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        code = run(list(args))
        captured = self.capsys.readouterr()
        # run() must leave no ledger behind for the next invocation in this process.
        assert STATE._ledger is None
        return Result(code, captured.out, captured.err)

    def ok(self, *args: str, stdin: str = "") -> Result:
        result = self(*args, stdin=stdin)
        assert result.code == 0, result.err
        return result

    def events(self) -> int:
        return self.store.events()

    def refused(self, *args: str, expect: list[str], stdin: str = "") -> Result:
        """Given a bad command: non-zero exit, one line naming it, nothing written."""
        before = self.events()
        result = self(*args, stdin=stdin)
        assert self.events() == before, f"{args} wrote events although it was refused"
        assert_refusal(result, expect)
        return result


def assert_refusal(result: Result, expect: list[str], code: int = 1) -> None:
    assert result.code == code, (result.code, result.out, result.err)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got: {result.err!r}"
    assert lines[0].startswith("error: "), lines[0]
    for needle in expect:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    assert "Traceback" not in result.err + result.out
    assert_no_secrets(result.out + result.err)


def assert_no_secrets(text: str) -> None:
    leaked = [s for s in SECRETS if s in text]
    assert not leaked, f"secret(s) in output: {len(leaked)}"


@pytest.fixture
def cli(store: Store, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    return Cli(store, capsys, monkeypatch)


@pytest.fixture
def fresh_cli(
    backend: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Cli]:
    """A CLI on an empty store of its own, for tests that act on 'everyone'."""
    schema = request.getfixturevalue("pg_schema") if backend == "postgres" else None
    store = open_store(backend, tmp_path / "home", schema)
    yield Cli(store, capsys, monkeypatch)
    store.ledger.close()


def open_account(cli: Cli, *extra: str) -> str:
    name = fresh("acct")
    cli.ok("account", "open", name, *extra)
    return name


def register(cli: Cli, account: str, role: str = "owner", password: str = PASSWORD) -> str:
    username = fresh("user")
    cli.ok(
        "user",
        "register",
        account,
        username,
        "--email",
        f"{username}@example.com",
        "--role",
        role,
        "--password-stdin",
        stdin=password + "\n",
    )
    return username


def current_totp(seed: str, offset: int = 0) -> str:
    return totp_code_at_step(seed, totp_step(SystemClock().now()) + offset)


# --- accounts --------------------------------------------------------------------------------


def test_account_open_show_policy_and_members_print_parseable_json(cli: Cli) -> None:
    # given
    name = fresh("acct")
    opened = cli.ok("account", "open", name, "--display-name", "Acme Ltd", "--json").json()
    register(cli, name)
    register(cli, name, role="teammate")
    # when
    policy = cli.ok("account", "policy", name, "--require-2fa", "--json").json()
    again = cli.ok("account", "policy", name, "--require-2fa", "--json").json()
    shown = cli.ok("account", "show", name, "--json").json()
    members = cli.ok("account", "members", name, "--json").json()
    # then
    assert opened["name"] == name
    assert opened["kind"] == "customer"
    assert policy == {"account": name, "two_factor_required": True, "changed": True}
    assert again["changed"] is False
    assert shown["account"]["two_factor_required"] is True
    assert shown["account"]["display_name"] == "Acme Ltd"
    assert shown["account"]["opened_at"].endswith("+00:00")
    assert sorted(m["role"] for m in members["members"]) == ["owner", "teammate"]
    assert all(m["status"] == "active" for m in members["members"])


def test_account_commands_print_tables_for_people(cli: Cli) -> None:
    # given
    name = open_account(cli)
    register(cli, name)
    # when
    shown = cli.ok("account", "show", name)
    members = cli.ok("account", "members", name)
    policy = cli.ok("account", "policy", name, "--no-require-2fa")
    # then
    assert name in shown.out
    assert "2FA required" in shown.out
    assert "allowlist (0): empty" in shown.out
    assert "owner" in members.out
    assert "already optional" in policy.out


def account_with_controls(cli: Cli) -> tuple[str, str]:
    """An account with an allowlist entry, a used and a revoked API key, a DKIM key and
    a user with a confirmed TOTP factor and a failed login: (account, username)."""
    account = open_account(cli)
    username = register(cli, account)
    cli.ok("allowlist", "add", account, "10.0.0.0/8", "--label", "office")
    used = cli.ok("apikey", "create", account, "--name", "ci", "--scope", "send", "--json").json()
    gone = cli.ok("apikey", "create", account, "--name", "old", "--scope", "read", "--json").json()
    SECRETS.update({used["token"], gone["token"]})
    cli.ok("--source-ip", "10.1.2.3", "apikey", "verify", stdin=used["token"] + "\n")
    cli.ok("apikey", "revoke", account, gone["key_id"], "--reason", "leak")
    cli.ok("dkim", "generate", account, "mail.example.com", "s1")
    enrolment = cli.ok("totp", "enrol", username, "--json").json()
    SECRETS.add(enrolment["seed"])
    cli.ok("totp", "confirm", username, enrolment["factor_id"], current_totp(enrolment["seed"]))
    cli.ok("totp", "enrol", username, "--label", "spare")
    assert cli("user", "login", username, "--password-stdin", stdin="Wrong-Guess-1\n").code == 1
    return account, username


def without(document: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in document.items() if k not in keys}


def test_account_show_json_is_the_state_document_without_its_users(cli: Cli) -> None:
    # given
    account, _ = account_with_controls(cli)
    # when
    shown = cli.ok("account", "show", account, "--json").json()
    state = cli.ok("state", account, "--json").json()
    # then: the same parts, fields, shapes and times (as_of is each command's own now)
    assert list(shown) == [k for k in state if k not in ("users", "source")]
    assert without(shown, "as_of") == without(state, "as_of", "users", "source")
    assert shown["api_keys"][0]["last_used_ip"] == "10.1.2.3"
    assert [k["revoke_reason"] for k in shown["revoked_api_keys"]] == ["leak"]
    assert [e["label"] for e in shown["allowlist"]] == ["office"]
    assert [k["selector"] for k in shown["dkim_keys"]] == ["s1"]
    assert_no_secrets(json.dumps(shown))


def test_user_show_json_is_the_users_entry_of_the_state_document(cli: Cli) -> None:
    # given
    account, username = account_with_controls(cli)
    # when
    shown = cli.ok("user", "show", username, "--json").json()
    state = cli.ok("state", account, "--json").json()
    # then
    [entry] = [u for u in state["users"] if u["username"] == username]
    assert list(shown) == ["as_of", "account", "user"]
    assert shown["account"] == state["account"]
    assert shown["user"] == entry
    assert [f["kind"] for f in shown["user"]["second_factors"]] == ["totp"]
    assert [f["label"] for f in shown["user"]["pending_enrolments"]] == ["spare"]
    assert shown["user"]["failed_logins"] == 1
    assert_no_secrets(json.dumps(shown))


def test_show_commands_print_the_documents_parts_for_people(cli: Cli) -> None:
    # given
    account, username = account_with_controls(cli)
    # when
    shown_account = cli.ok("account", "show", account)
    shown_user = cli.ok("user", "show", username)
    # then
    assert "API keys (1 active, 1 revoked)" in shown_account.out
    assert "allowlist (1)" in shown_account.out
    assert "DKIM keys (1)" in shown_account.out
    assert "10.0.0.0/8" in shown_account.out
    assert "second factors (1)" in shown_user.out
    assert "pending enrolments (1)" in shown_user.out
    assert "spare" in shown_user.out
    assert_no_secrets(shown_account.out + shown_user.out)


# --- users and logins -----------------------------------------------------------------------


def test_registered_user_logs_in_with_password_from_stdin(cli: Cli) -> None:
    # given
    account = open_account(cli)
    username = register(cli, account)
    # when
    login = cli.ok("user", "login", username, "--password-stdin", "--json", stdin=PASSWORD + "\n")
    shown = cli.ok("user", "show", username, "--json").json()
    # then
    assert login.json() == {
        "username": username,
        "allowed": True,
        "method": "password",
        "rehashed": False,
    }
    assert shown["account"]["name"] == account
    assert shown["user"]["status"] == "active"
    assert shown["user"]["password_changed_at"] is not None
    assert shown["user"]["last_login_at"] is not None
    assert "password_hash" not in json.dumps(shown)
    assert_no_secrets(login.out + login.err + json.dumps(shown))


def test_refused_login_exits_1_with_the_reason_and_is_recorded(cli: Cli) -> None:
    # given
    account = open_account(cli)
    username = register(cli, account)
    wrong = "Wrong-Guess-" + secrets.token_hex(4)
    SECRETS.add(wrong)
    before = cli.events()
    # when
    result = cli("user", "login", username, "--password-stdin", stdin=wrong + "\n")
    # then: the refusal is the one write a refused command makes, by design
    assert_refusal(result, [f"login refused for {username!r}: bad_password"])
    assert cli.events() == before + 1
    assert cli.ok("user", "show", username, "--json").json()["user"]["failed_logins"] == 1


def test_repeated_bad_logins_lock_the_user_until_unlocked(cli: Cli) -> None:
    # given: the default threshold of 5 failed guesses
    account = open_account(cli)
    username = register(cli, account)
    for _ in range(5):
        assert cli("user", "login", username, "--password-stdin", stdin="nope\n").code == 1
    locked = cli("user", "login", username, "--password-stdin", stdin=PASSWORD + "\n")
    assert_refusal(locked, ["user_locked"])
    # when
    unlocked = cli.ok("user", "unlock", username, "--json").json()
    # then
    assert unlocked == {"username": username, "status": "active"}
    cli.ok("user", "login", username, "--password-stdin", stdin=PASSWORD + "\n")


def test_disabled_user_cannot_log_in_until_enabled(cli: Cli) -> None:
    # given
    account = open_account(cli)
    username = register(cli, account)
    # when
    disabled = cli.ok("user", "disable", username, "--reason", "left the company", "--json")
    refused = cli("user", "login", username, "--password-stdin", stdin=PASSWORD + "\n")
    enabled = cli.ok("user", "enable", username, "--json")
    # then
    assert disabled.json()["status"] == "disabled"
    assert_refusal(refused, ["user_disabled"])
    assert enabled.json()["status"] == "active"
    cli.ok("user", "login", username, "--password-stdin", stdin=PASSWORD + "\n")


# --- passwords --------------------------------------------------------------------------------


def test_password_set_change_and_reset_cycle(cli: Cli) -> None:
    # given
    account = open_account(cli)
    username = register(cli, account)
    admin_set = "Admin-Chosen-" + secrets.token_hex(4)
    SECRETS.add(admin_set)
    # when / then: an administrator sets it
    cli.ok("password", "set", username, "--password-stdin", stdin=admin_set + "\n")
    cli.ok("user", "login", username, "--password-stdin", stdin=admin_set + "\n")
    # when / then: the user changes it, proving the current one (two lines on stdin)
    changed = cli.ok(
        "password",
        "change",
        username,
        "--password-stdin",
        "--json",
        stdin=f"{admin_set}\n{PASSWORD}\n",
    )
    assert changed.json()["status"] == "active"
    # when / then: a reset is required, login is refused, the reset completes
    required = cli.ok(
        "password", "require-reset", username, "--reason", "breach", "--campaign", "c-1", "--json"
    ).json()
    assert required == {"username": username, "campaign_id": "c-1", "marked": True}
    refused = cli("user", "login", username, "--password-stdin", stdin=PASSWORD + "\n")
    assert_refusal(refused, ["password_reset_required"])
    done = cli.ok(
        "password", "complete-reset", username, "--password-stdin", "--json", stdin=NEW_PASSWORD
    ).json()
    assert done["reset_required"] is False
    cli.ok("user", "login", username, "--password-stdin", stdin=NEW_PASSWORD + "\n")


def test_reset_campaign_marks_accounts_and_users_once(cli: Cli) -> None:
    # given
    first, second = open_account(cli), open_account(cli)
    in_first = [register(cli, first) for _ in range(3)]
    in_second = register(cli, second)
    campaign = fresh("breach")
    args = ["password", "reset-campaign", "--campaign", campaign, "--reason", "breach"]
    targets = ["--account", first, "--user", in_second]
    # when
    result = cli.ok(*args, *targets, "--json")
    rerun = cli.ok(*args, *targets, "--json")
    # then: a progress bar on stderr, the summary on stdout; the rerun marks nobody
    assert result.json() == {
        "campaign_id": campaign,
        "reason": "breach",
        "targeted": 4,
        "marked": 4,
        "already_marked": 0,
        "batches": 1,
    }
    assert "4/4" in result.err
    assert rerun.json()["marked"] == 0
    assert rerun.json()["already_marked"] == 4
    for username in [*in_first, in_second]:
        shown = cli.ok("user", "show", username, "--json").json()
        assert shown["user"]["reset_campaign_id"] == campaign


def test_reset_campaign_for_everyone_reaches_every_user(fresh_cli: Cli) -> None:
    # given
    cli = fresh_cli
    accounts = [open_account(cli) for _ in range(2)]
    users = [register(cli, a) for a in accounts for _ in range(2)]
    # when
    result = cli.ok(
        "password", "reset-campaign", "--campaign", "all-1", "--reason", "breach", "--everyone"
    )
    # then
    assert "4 user(s) marked" in result.out
    for username in users:
        assert cli.ok("user", "show", username, "--json").json()["user"]["reset_required"] is True


# --- API keys -----------------------------------------------------------------------------------


def test_api_key_is_shown_once_listed_without_secret_verified_and_revoked(cli: Cli) -> None:
    # given
    account = open_account(cli)
    # when
    created = cli.ok(
        "apikey", "create", account, "--name", "ci", "--scope", "send", "--scope", "read", "--json"
    )
    issued = created.json()
    token = issued["token"]
    SECRETS.add(token)
    listed = cli.ok("apikey", "list", account, "--json")
    table = cli.ok("apikey", "list", account)
    verified = cli.ok("apikey", "verify", "--json", stdin=token + "\n").json()
    revoked = cli.ok("apikey", "revoke", account, issued["key_id"], "--reason", "leak", "--json")
    after = cli("apikey", "verify", stdin=token + "\n")
    # then
    assert "shown only now" in created.err
    assert issued["scopes"] == ["read", "send"]
    keys = listed.json()["api_keys"]
    assert [k["key_id"] for k in keys] == [issued["key_id"]]
    assert set(keys[0]) == {
        "key_id",
        "name",
        "scopes",
        "display",
        "created_by",
        "created_at",
        "active",
        "revoked_at",
        "revoked_by",
        "revoke_reason",
    }
    assert token not in listed.out + table.out
    assert "sha256" not in listed.out + table.out
    assert verified == {
        "account": account,
        "key_id": issued["key_id"],
        "name": "ci",
        "scopes": ["read", "send"],
    }
    assert revoked.json()["active"] is False
    assert revoked.json()["revoke_reason"] == "leak"
    assert_refusal(after, ["was revoked"])


def test_api_key_token_is_printed_for_people_with_a_warning(cli: Cli) -> None:
    # given
    account = open_account(cli)
    # when
    created = cli.ok("apikey", "create", account, "--name", "deploy", "--scope", "send")
    # then
    token_line = next(line for line in created.out.splitlines() if line.startswith("token:"))
    token = token_line.split()[-1]
    SECRETS.add(token)
    assert ApiKeyCodec().looks_like_key(token)
    assert "shown only now and is not stored" in created.err


# --- second factors -----------------------------------------------------------------------------


def test_totp_enrol_confirm_login_and_reused_code_is_refused(cli: Cli) -> None:
    # given
    account = open_account(cli)
    username = register(cli, account)
    enrolment = cli.ok("totp", "enrol", username, "--label", "phone", "--json").json()
    seed = enrolment["seed"]
    SECRETS.add(seed)
    assert enrolment["uri"].startswith("otpauth://totp/")
    cli.ok("totp", "confirm", username, enrolment["factor_id"], current_totp(seed))
    # when: a code of the next step (the confirm used this one)
    code = current_totp(seed, +1)
    login = cli.ok(
        "user", "login", username, "--totp", code, "--password-stdin", stdin=PASSWORD + "\n"
    )
    before = cli.events()
    replay = cli(
        "user", "login", username, "--totp", code, "--password-stdin", stdin=PASSWORD + "\n"
    )
    # then
    assert "method: password+totp" in login.out
    assert_refusal(replay, ["totp_code_replayed"])
    assert cli.events() == before + 1  # the refusal is recorded
    shown = cli.ok("user", "show", username, "--json").json()
    assert shown["user"]["second_factors"][0]["confirmed_at"] is not None
    assert shown["user"]["pending_enrolments"] == []
    assert "sealed" not in json.dumps(shown)
    assert seed not in json.dumps(shown)


def test_totp_seed_and_uri_print_once_for_people_and_factor_can_be_removed(cli: Cli) -> None:
    # given
    account = open_account(cli)
    username = register(cli, account)
    # when
    enrolment = cli.ok("totp", "enrol", username)
    factor_id = enrolment.out.split()[3]
    seed = next(x.split()[1] for x in enrolment.out.splitlines() if x.startswith("seed:"))
    SECRETS.add(seed)
    removed = cli.ok("totp", "remove", username, factor_id, "--json").json()
    # then
    assert "shown only now" in enrolment.err
    assert "uri:  otpauth://totp/" in enrolment.out
    assert removed == {"username": username, "factor_id": factor_id, "removed": True}
    assert cli.ok("user", "show", username, "--json").json()["user"]["second_factors"] == []


def test_recovery_code_logs_in_once_when_two_factor_is_required(cli: Cli) -> None:
    # given
    account = open_account(cli)
    username = register(cli, account)
    enrolment = cli.ok("totp", "enrol", username, "--json").json()
    SECRETS.add(enrolment["seed"])
    cli.ok("totp", "confirm", username, enrolment["factor_id"], current_totp(enrolment["seed"]))
    cli.ok("account", "policy", account, "--require-2fa")
    generated = cli.ok("recovery-codes", "generate", username, "--count", "5", "--json")
    codes = generated.json()["codes"]
    SECRETS.update(codes)
    stdin = f"{PASSWORD}\n{codes[0]}\n"
    # when
    login = cli.ok(
        "user",
        "login",
        username,
        "--password-stdin",
        "--recovery-code-stdin",
        "--json",
        stdin=stdin,
    )
    reused = cli(
        "user", "login", username, "--password-stdin", "--recovery-code-stdin", stdin=stdin
    )
    missing = cli("user", "login", username, "--password-stdin", stdin=PASSWORD + "\n")
    # then
    assert "shown only now" in generated.err
    assert len(codes) == 5
    assert login.json()["method"] == "password+recovery_code"
    assert_refusal(reused, ["bad_second_factor"])
    assert_refusal(missing, ["second_factor_missing"])
    assert cli.ok("user", "show", username, "--json").json()["user"]["recovery_codes_left"] == 4


def test_recovery_codes_print_one_per_line_for_people(cli: Cli) -> None:
    # given
    username = register(cli, open_account(cli))
    # when
    result = cli.ok("recovery-codes", "generate", username)
    # then
    codes = result.out.split()
    SECRETS.update(codes)
    assert len(codes) == 10
    assert all(len(code) == 19 for code in codes)


# --- allowlist and access -----------------------------------------------------------------------


def test_allowlist_add_list_remove_and_access_decisions_are_recorded(cli: Cli) -> None:
    # given
    account = open_account(cli)
    empty = cli.ok("allowlist", "list", account)
    added = cli.ok("allowlist", "add", account, "10.0.0.0/8", "--label", "office", "--json").json()
    cli.ok("allowlist", "add", account, "2001:db8::/32", "--label", "vpn")
    # when
    before = cli.events()
    allowed = cli("access", "check", account, "10.1.2.3", "--json")
    denied = cli("access", "check", account, "192.0.2.1")
    listed = cli.ok("allowlist", "list", account, "--json").json()
    removed = cli.ok("allowlist", "remove", account, "10.0.0.0/8", "--json").json()
    # then
    assert "every IP" in empty.out
    assert added["cidr"] == "10.0.0.0/8"
    assert allowed.code == 0
    assert allowed.json() == {"account": account, "ip": "10.1.2.3", "allowed": True}
    assert denied.code == 1
    assert "denied: 192.0.2.1" in denied.out
    assert cli.events() == before + 3  # two decisions and one removal
    assert [e["cidr"] for e in listed["entries"]] == ["10.0.0.0/8", "2001:db8::/32"]
    assert all(e["added_at"].endswith("+00:00") for e in listed["entries"])
    assert removed == {"account": account, "entry_id": added["entry_id"], "forced": False}


def test_allowlist_removal_that_locks_the_caller_out_needs_force(cli: Cli) -> None:
    # given
    account = open_account(cli)
    cli.ok("allowlist", "add", account, "203.0.113.0/24", "--label", "office")
    cli.ok("allowlist", "add", account, "198.51.100.0/24", "--label", "home")
    remove = ["--source-ip", "203.0.113.9", "allowlist", "remove", account, "203.0.113.0/24"]
    # when
    refused = cli.refused(*remove, expect=["would lock your IP 203.0.113.9 out"])
    forced = cli.ok(*remove, "--force", "--json")
    # then
    assert refused.out == ""
    assert forced.json()["forced"] is True


# --- DKIM ---------------------------------------------------------------------------------------


def test_dkim_key_lifecycle_prints_the_dns_record_and_only_public_data(cli: Cli) -> None:
    # given
    account = open_account(cli)
    domain = "mail.example.com"
    # when
    first = cli.ok("dkim", "generate", account, domain, "s1")
    cli.ok("dkim", "publish", account, domain, "s1")
    cli.ok("dkim", "activate", account, domain, "s1")
    second = cli.ok(
        "dkim", "generate", account, domain, "s2", "--algorithm", "ed25519-sha256", "--json"
    ).json()
    cli.ok("dkim", "publish", account, domain, "s2")
    activated = cli.ok("dkim", "activate", account, domain, "s2", "--json").json()
    retired = cli.ok("dkim", "retire", account, domain, "s2", "--reason", "test", "--json").json()
    listed = cli.ok("dkim", "list", account, "--json")
    table = cli.ok("dkim", "list", account)
    # then
    assert "name:  s1._domainkey.mail.example.com" in first.out
    assert "value: v=DKIM1; k=rsa; p=" in first.out
    assert second["record_name"] == "s2._domainkey.mail.example.com"
    assert second["record_type"] == "TXT"
    assert second["record_value"].startswith("v=DKIM1; k=ed25519; p=")
    assert activated["state"] == "active"
    assert activated["retired_selectors"] == ["s1"]
    assert retired["state"] == "retired"
    keys = {k["selector"]: k for k in listed.json()["dkim_keys"]}
    assert keys["s1"]["state"] == "retired"
    assert keys["s1"]["retire_reason"] == "superseded by s2"
    assert "sealed" not in listed.out
    assert "PRIVATE" not in listed.out + first.out
    assert "s2._domaink" in table.out  # folded to fit the table


# --- staff --------------------------------------------------------------------------------------


def test_staff_access_is_recorded_for_an_employee(cli: Cli) -> None:
    # given
    staff = open_account(cli, "--kind", "staff")
    employee = register(cli, staff, role="employee")
    customer = open_account(cli)
    # when
    recorded = cli.ok(
        "--actor",
        f"staff:{employee}",
        "staff",
        "access",
        employee,
        "--system",
        "billing",
        "--resource",
        "invoices",
        "--action",
        "export",
        "--records",
        "120",
        "--customer",
        customer,
        "--json",
    ).json()
    # then
    assert recorded == {
        "username": employee,
        "system": "billing",
        "resource": "invoices",
        "action": "export",
        "records": 120,
        "customer_accounts": [customer],
    }


# --- the CLI's process-wide state --------------------------------------------------------------


def test_root_options_do_not_leak_into_the_next_invocation(cli: Cli) -> None:
    # given: one run as a named actor from a named IP
    first = fresh("acct")
    cli.ok("--actor", "staff:alice", "--source-ip", "192.0.2.7", "account", "open", first)
    # when: the next run gives neither
    second = open_account(cli)
    # then
    opened = {}
    for name in (first, second):
        event = next(iter(cli.store.ledger.events.get(Account.create_id(name))))
        assert isinstance(event, Account.Opened)
        opened[name] = (event.actor_kind, event.actor_id, event.source_ip)
    assert opened[first] == ("staff", "alice", "192.0.2.7")
    assert opened[second] == ("system", "cli", None)


# --- bad input for every command ------------------------------------------------------------------


@dataclass
class World:
    """Accounts, users, keys and entries in known states, made once per store."""

    account: str
    staff_account: str
    owner: str
    disabled: str
    employee: str
    revoked_key: str
    revoked_token: str
    pending_factor: str
    domain: str = "mail.example.com"


def make_world(ledger: Ledger) -> World:
    ctx = RequestContext()
    account, staff = fresh("world"), fresh("staff")
    owner, disabled, employee = fresh("owner"), fresh("gone"), fresh("emp")
    ledger.open_account(c.OpenAccount(name=account), ctx)
    ledger.open_account(c.OpenAccount(name=staff, kind=AccountKind.STAFF), ctx)
    for username, acct, role in (
        (owner, account, "owner"),
        (disabled, account, "teammate"),
        (employee, staff, "employee"),
    ):
        ledger.register_user(
            c.parse_command(
                c.RegisterUser,
                account=acct,
                username=username,
                email=f"{username}@example.com",
                password=PASSWORD,
                role=role,
            ),
            ctx,
        )
    ledger.disable_user(c.DisableUser(username=disabled, reason="left"), ctx)
    issued = ledger.create_api_key(c.CreateApiKey(account=account, name="old", scopes=["x"]), ctx)
    SECRETS.add(issued.token)
    ledger.revoke_api_key(c.RevokeApiKey(account=account, key_id=issued.key_id, reason="old"), ctx)
    enrolment = ledger.start_totp_enrolment(c.StartTotpEnrolment(username=owner), ctx)
    SECRETS.add(enrolment.seed)
    ledger.add_allowlist_entry(
        c.AddAllowlistEntry(account=account, cidr="10.0.0.0/8", label="office"), ctx
    )
    ledger.add_allowlist_entry(
        c.AddAllowlistEntry(account=account, cidr="192.0.2.0/24", label="vpn"), ctx
    )
    domain = "mail.example.com"
    for selector in ("s1", "s2", "s3"):
        ledger.generate_dkim_key(
            c.GenerateDkimKey(account=account, domain=domain, selector=selector), ctx
        )
    ledger.publish_dkim_key(c.PublishDkimKey(account=account, domain=domain, selector="s2"), ctx)
    ledger.retire_dkim_key(c.RetireDkimKey(account=account, domain=domain, selector="s3"), ctx)
    return World(
        account=account,
        staff_account=staff,
        owner=owner,
        disabled=disabled,
        employee=employee,
        revoked_key=issued.key_id,
        revoked_token=issued.token,
        pending_factor=enrolment.factor_id,
    )


@pytest.fixture
def world(store: Store) -> World:
    if store.world is None:
        store.world = make_world(store.ledger)
    return store.world


def wrong_totp_code(world: World, ledger: Ledger) -> str:
    """A well-formed code that matches none of the steps the ledger accepts now."""
    user = ledger.get_user(world.owner)
    factor = user.factors[world.pending_factor]
    seed = ledger.keyring.open(factor.sealed_secret, totp_aad(user.id, factor.factor_id)).decode()
    accepted = {current_totp(seed, offset) for offset in (-2, -1, 0, 1, 2)}
    return next(code for code in (f"{n:06d}" for n in range(1000)) if code not in accepted)


@dataclass(frozen=True)
class Case:
    args: Callable[[World], list[str]]
    expect: list[str]
    stdin: Callable[[World], str] = lambda w: ""


REGISTER = ["--email", "new@example.com", "--password-stdin"]
CAMPAIGN = ["password", "reset-campaign", "--campaign", "c-9", "--reason", "breach"]
STAFF = ["--system", "billing", "--resource", "invoices", "--records", "3"]


def PW(world: World) -> str:
    return PASSWORD + "\n"


CASES: dict[str, Case] = {
    # account
    "account-open-bad-name": Case(
        lambda w: ["account", "open", "Bad_Name"], ["name: has an invalid format"]
    ),
    "account-open-duplicate": Case(lambda w: ["account", "open", w.account], ["already exists"]),
    "account-open-bad-kind": Case(
        lambda w: ["account", "open", fresh("a"), "--kind", "partner"], ["kind: Input should be"]
    ),
    "account-show-bad-name": Case(
        lambda w: ["account", "show", "No Such"], ["account: has an invalid format"]
    ),
    "account-show-unknown": Case(
        lambda w: ["account", "show", "no-such-acct"], ["no account named 'no-such-acct'"]
    ),
    "account-policy-unknown": Case(
        lambda w: ["account", "policy", "no-such-acct", "--require-2fa"], ["no account named"]
    ),
    "account-policy-bad-name": Case(
        lambda w: ["account", "policy", "x", "--no-require-2fa"], ["account: has an invalid"]
    ),
    "account-members-unknown": Case(
        lambda w: ["account", "members", "no-such-acct"], ["no account named"]
    ),
    # user
    "user-register-duplicate-username": Case(
        lambda w: ["user", "register", w.account, w.owner, *REGISTER], ["is already taken"], PW
    ),
    "user-register-weak-password": Case(
        lambda w: ["user", "register", w.account, fresh("u"), *REGISTER],
        ["password is too short"],
        lambda w: WEAK_PASSWORD + "\n",
    ),
    "user-register-unknown-account": Case(
        lambda w: ["user", "register", "no-such-acct", fresh("u"), *REGISTER],
        ["no account named"],
        PW,
    ),
    "user-register-every-bad-field-listed": Case(
        lambda w: [
            *["user", "register", "Bad_Acct", "b!", "--email", "nope"],
            *["--role", "boss", "--password-stdin"],
        ],
        ["account: has an invalid", "username: has an invalid", "email: has an", "role: Input"],
        PW,
    ),
    "user-register-missing-email": Case(
        lambda w: ["user", "register", w.account, fresh("u"), "--password-stdin"],
        ["email: Field required"],
        PW,
    ),
    "user-register-employee-in-customer-account": Case(
        lambda w: ["user", "register", w.account, fresh("u"), *REGISTER, "--role", "employee"],
        ["only the staff organisation has employees"],
        PW,
    ),
    "user-register-piped-password-without-flag": Case(
        lambda w: ["user", "register", w.account, fresh("u"), "--email", "n@example.com"],
        ["password: stdin is not a terminal", "--password-stdin"],
        PW,
    ),
    "user-register-empty-stdin": Case(
        lambda w: ["user", "register", w.account, fresh("u"), *REGISTER],
        ["password: stdin ended"],
    ),
    "user-show-unknown": Case(lambda w: ["user", "show", "nobody-here"], ["no user named"]),
    "user-show-bad-username": Case(
        lambda w: ["user", "show", "b!"], ["username: has an invalid format"]
    ),
    "user-unlock-not-locked": Case(lambda w: ["user", "unlock", w.owner], ["is not locked"]),
    "user-unlock-unknown": Case(lambda w: ["user", "unlock", "nobody-here"], ["no user named"]),
    "user-disable-missing-reason": Case(
        lambda w: ["user", "disable", w.owner], ["reason: Field required"]
    ),
    "user-disable-already-disabled": Case(
        lambda w: ["user", "disable", w.disabled, "--reason", "again"], ["is disabled"]
    ),
    "user-enable-not-disabled": Case(lambda w: ["user", "enable", w.owner], ["is not disabled"]),
    "user-enable-unknown": Case(lambda w: ["user", "enable", "nobody-here"], ["no user named"]),
    "user-login-bad-totp-format": Case(
        lambda w: ["user", "login", w.owner, "--totp", "12ab", "--password-stdin"],
        ["totp_code: has an invalid format"],
        PW,
    ),
    "user-login-totp-and-recovery-code": Case(
        lambda w: [
            *["user", "login", w.owner, "--totp", "123456"],
            *["--recovery-code-stdin", "--password-stdin"],
        ],
        ["either --totp or --recovery-code-stdin"],
        PW,
    ),
    "user-login-piped-password-without-flag": Case(
        lambda w: ["user", "login", w.owner], ["password: stdin is not a terminal"], PW
    ),
    # password
    "password-set-weak": Case(
        lambda w: ["password", "set", w.owner, "--password-stdin"],
        ["password is too short"],
        lambda w: WEAK_PASSWORD + "\n",
    ),
    "password-set-contains-username": Case(
        lambda w: ["password", "set", w.owner, "--password-stdin"],
        ["must not contain the username"],
        lambda w: f"{w.owner}-Extra-9!\n",
    ),
    "password-set-same-as-current": Case(
        lambda w: ["password", "set", w.owner, "--password-stdin"], ["must differ"], PW
    ),
    "password-set-unknown-user": Case(
        lambda w: ["password", "set", "nobody-here", "--password-stdin"], ["no user named"], PW
    ),
    "password-change-weak-new": Case(
        lambda w: ["password", "change", w.owner, "--password-stdin"],
        ["password is too short"],
        lambda w: f"{PASSWORD}\n{WEAK_PASSWORD}\n",
    ),
    "password-change-second-line-missing": Case(
        lambda w: ["password", "change", w.owner, "--password-stdin"],
        ["new_password: stdin ended"],
        PW,
    ),
    "password-require-reset-missing-reason": Case(
        lambda w: ["password", "require-reset", w.owner], ["reason: Field required"]
    ),
    "password-require-reset-bad-campaign": Case(
        lambda w: ["password", "require-reset", w.owner, "--reason", "r", "--campaign", "a b"],
        ["campaign_id: has an invalid format"],
    ),
    "password-require-reset-unknown-user": Case(
        lambda w: ["password", "require-reset", "nobody-here", "--reason", "r"],
        ["no user named"],
    ),
    "password-complete-reset-not-required": Case(
        lambda w: ["password", "complete-reset", w.owner, "--password-stdin"],
        ["has no pending password reset"],
        lambda w: NEW_PASSWORD + "\n",
    ),
    "password-reset-campaign-no-target": Case(
        lambda w: CAMPAIGN, ["name usernames or accounts, or set everyone"]
    ),
    "password-reset-campaign-everyone-and-account": Case(
        lambda w: [*CAMPAIGN, "--everyone", "--account", w.account], ["cannot be combined"]
    ),
    "password-reset-campaign-unknown-account": Case(
        lambda w: [*CAMPAIGN, "--account", w.account, "--account", "no-such-acct"],
        ["no account named 'no-such-acct'"],
    ),
    "password-reset-campaign-unknown-user": Case(
        lambda w: [*CAMPAIGN, "--user", w.owner, "--user", "nobody-here"], ["no user named"]
    ),
    "password-reset-campaign-missing-campaign": Case(
        lambda w: ["password", "reset-campaign", "--reason", "r", "--everyone"],
        ["campaign_id: Field required"],
    ),
    # API keys
    "apikey-create-unknown-account": Case(
        lambda w: ["apikey", "create", "no-such-acct", "--name", "n", "--scope", "s"],
        ["no account named"],
    ),
    "apikey-create-no-scope": Case(
        lambda w: ["apikey", "create", w.account, "--name", "n"],
        ["scopes: List should have at least 1 item"],
    ),
    "apikey-create-bad-scope": Case(
        lambda w: ["apikey", "create", w.account, "--name", "n", "--scope", "Send Mail"],
        ["scopes.0: has an invalid format"],
    ),
    "apikey-create-missing-name": Case(
        lambda w: ["apikey", "create", w.account, "--scope", "s"], ["name: Field required"]
    ),
    "apikey-list-unknown-account": Case(
        lambda w: ["apikey", "list", "no-such-acct"], ["no account named"]
    ),
    "apikey-revoke-twice": Case(
        lambda w: ["apikey", "revoke", w.account, w.revoked_key, "--reason", "again"],
        ["was already revoked"],
    ),
    "apikey-revoke-unknown-key-id": Case(
        lambda w: ["apikey", "revoke", w.account, "AAAAAAAAAAAA", "--reason", "r"],
        ["has no API key with id 'AAAAAAAAAAAA'"],
    ),
    "apikey-revoke-bad-key-id": Case(
        lambda w: ["apikey", "revoke", w.account, "short", "--reason", "r"],
        ["key_id: has an invalid format"],
    ),
    "apikey-revoke-missing-reason": Case(
        lambda w: ["apikey", "revoke", w.account, w.revoked_key], ["reason: Field required"]
    ),
    "apikey-verify-empty-stdin": Case(lambda w: ["apikey", "verify"], ["token: stdin ended"]),
    # second factors
    "totp-enrol-unknown-user": Case(lambda w: ["totp", "enrol", "nobody-here"], ["no user named"]),
    "totp-enrol-disabled-user": Case(lambda w: ["totp", "enrol", w.disabled], ["is disabled"]),
    "totp-enrol-empty-label": Case(
        lambda w: ["totp", "enrol", w.owner, "--label", ""], ["label: String should have"]
    ),
    "totp-confirm-bad-code-format": Case(
        lambda w: ["totp", "confirm", w.owner, w.pending_factor, "12345"],
        ["code: has an invalid format"],
    ),
    "totp-confirm-bad-factor-id": Case(
        lambda w: ["totp", "confirm", w.owner, "phone", "123456"],
        ["factor_id: has an invalid format"],
    ),
    "totp-remove-unknown-factor": Case(
        lambda w: ["totp", "remove", w.owner, "tf_000000000000"], ["has no second factor"]
    ),
    "recovery-codes-generate-too-few": Case(
        lambda w: ["recovery-codes", "generate", w.owner, "--count", "3"],
        ["count: Input should be greater than or equal to 5"],
    ),
    "recovery-codes-generate-disabled-user": Case(
        lambda w: ["recovery-codes", "generate", w.disabled], ["is disabled"]
    ),
    "recovery-codes-generate-unknown-user": Case(
        lambda w: ["recovery-codes", "generate", "nobody-here"], ["no user named"]
    ),
    # allowlist and access
    "allowlist-add-invalid-cidr": Case(
        lambda w: ["allowlist", "add", w.account, "10.0.0/33", "--label", "x"],
        ["cidr: not a valid CIDR network"],
    ),
    "allowlist-add-host-bits-set": Case(
        lambda w: ["allowlist", "add", w.account, "172.16.0.1/12", "--label", "x"],
        ["has host bits set"],
    ),
    "allowlist-add-overlapping-cidr": Case(
        lambda w: ["allowlist", "add", w.account, "10.1.0.0/16", "--label", "x"],
        ["10.1.0.0/16 is already covered by allowlist entry"],
    ),
    "allowlist-add-missing-label": Case(
        lambda w: ["allowlist", "add", w.account, "172.16.0.0/12"], ["label: Field required"]
    ),
    "allowlist-add-unknown-account": Case(
        lambda w: ["allowlist", "add", "no-such-acct", "172.16.0.0/12", "--label", "x"],
        ["no account named"],
    ),
    "allowlist-remove-unknown-entry": Case(
        lambda w: ["allowlist", "remove", w.account, "ale_000000000000"],
        ["has no allowlist entry 'ale_000000000000'"],
    ),
    "allowlist-remove-self-lockout": Case(
        lambda w: ["--source-ip", "10.9.8.7", "allowlist", "remove", w.account, "10.0.0.0/8"],
        ["would lock your IP 10.9.8.7 out"],
    ),
    "allowlist-list-unknown-account": Case(
        lambda w: ["allowlist", "list", "no-such-acct"], ["no account named"]
    ),
    "access-check-bad-ip": Case(
        lambda w: ["access", "check", w.account, "10.0.0.300"],
        ["ip: '10.0.0.300' is not an IPv4 or IPv6 address"],
    ),
    "access-check-unknown-account": Case(
        lambda w: ["access", "check", "no-such-acct", "10.0.0.1"], ["no account named"]
    ),
    # DKIM
    "dkim-generate-selector-in-use": Case(
        lambda w: ["dkim", "generate", w.account, w.domain, "s1"], ["selector 's1' is already used"]
    ),
    "dkim-generate-bad-algorithm": Case(
        lambda w: ["dkim", "generate", w.account, w.domain, "s9", "--algorithm", "rsa-sha1"],
        ["algorithm: Input should be"],
    ),
    "dkim-generate-bad-domain-and-selector": Case(
        lambda w: ["dkim", "generate", w.account, "not a domain", "S_1"],
        ["domain: has an invalid format", "selector: has an invalid format"],
    ),
    "dkim-generate-unknown-account": Case(
        lambda w: ["dkim", "generate", "no-such-acct", w.domain, "s9"], ["no account named"]
    ),
    "dkim-publish-unknown-selector": Case(
        lambda w: ["dkim", "publish", w.account, w.domain, "nosuch"], ["has no DKIM key"]
    ),
    "dkim-publish-twice": Case(
        lambda w: ["dkim", "publish", w.account, w.domain, "s2"], ["cannot publish DKIM key"]
    ),
    "dkim-activate-unpublished": Case(
        lambda w: ["dkim", "activate", w.account, w.domain, "s1"], ["cannot activate DKIM key"]
    ),
    "dkim-retire-twice": Case(
        lambda w: ["dkim", "retire", w.account, w.domain, "s3"], ["is already retired"]
    ),
    "dkim-list-unknown-account": Case(
        lambda w: ["dkim", "list", "no-such-acct"], ["no account named"]
    ),
    # staff
    "staff-access-by-non-employee": Case(
        lambda w: ["staff", "access", w.owner, *STAFF], ["is not a staff employee"]
    ),
    "staff-access-unknown-customer": Case(
        lambda w: ["staff", "access", w.employee, *STAFF, "--customer", "no-such-acct"],
        ["no account named"],
    ),
    "staff-access-staff-org-as-customer": Case(
        lambda w: ["staff", "access", w.employee, *STAFF, "--customer", w.staff_account],
        ["is not a customer account"],
    ),
    "staff-access-negative-records-and-bad-action": Case(
        lambda w: [
            *["staff", "access", w.employee, "--system", "billing", "--resource", "r"],
            *["--records", "-1", "--action", "steal"],
        ],
        ["records: Input should be greater than or equal to 0", "action: Input should be"],
    ),
    "staff-access-missing-system": Case(
        lambda w: ["staff", "access", w.employee, "--resource", "r", "--records", "1"],
        ["system: Field required"],
    ),
    # the request context
    "bad-source-ip": Case(
        lambda w: ["--source-ip", "nope", "account", "policy", w.account, "--require-2fa"],
        ["--source-ip: 'nope' is not an IPv4 or IPv6 address"],
    ),
    "bad-actor": Case(
        lambda w: ["--actor", "nobody", "account", "open", fresh("a")],
        ["--actor: actor must look like KIND:ID"],
    ),
    "bad-actor-kind": Case(
        lambda w: ["--actor", "root:x", "account", "open", fresh("a")],
        ["actor kind 'root' is not one of"],
    ),
    "disabled-actor-changes-policy": Case(
        lambda w: [
            *["--actor", f"user:{w.disabled}", "account", "policy", w.account],
            "--require-2fa",
        ],
        ["actor user:", "is disabled and may not act"],
    ),
    "disabled-actor-creates-api-key": Case(
        lambda w: [
            *["--actor", f"staff:{w.disabled}", "apikey", "create", w.account],
            *["--name", "n", "--scope", "s"],
        ],
        ["is disabled and may not act"],
    ),
}


@pytest.mark.parametrize("case_id", list(CASES))
def test_bad_input_is_refused_with_one_line_and_nothing_written(
    cli: Cli, world: World, case_id: str
) -> None:
    # given
    case = CASES[case_id]
    # when / then
    cli.refused(*case.args(world), stdin=case.stdin(world), expect=case.expect)


def tampered_secret(token: str) -> str:
    """The same key id with another secret, and a checksum that holds for it."""
    codec = ApiKeyCodec()
    presented = codec.parse(token)
    secret = presented.secret[:-1] + ("A" if presented.secret[-1] != "A" else "B")
    body = f"{codec.prefix}{presented.key_id}_{secret}"
    from domain.secrets import _checksum

    return body + _checksum(body)


@dataclass(frozen=True)
class Refusal:
    """A check of a secret that is refused: the refusal is the one event it records."""

    args: Callable[[World, str], list[str]]
    expect: list[str]
    recorded: str  # the event type of the one event written
    stdin: Callable[[World], str] = PW


REFUSALS: dict[str, Refusal] = {
    "login-unknown-user": Refusal(
        lambda w, u: ["user", "login", fresh("nobody"), "--password-stdin"],
        ["login refused for", "unknown_user"],
        "CredentialAttempt.UnknownUserRefused",
    ),
    "password-change-wrong-current": Refusal(
        lambda w, u: ["password", "change", u, "--password-stdin"],
        ["password change refused for", "bad_password"],
        "User.PasswordChangeFailed",
        lambda w: f"{NEW_PASSWORD}x\n{NEW_PASSWORD}\n",
    ),
    "password-change-unknown-user": Refusal(
        lambda w, u: ["password", "change", fresh("nobody"), "--password-stdin"],
        ["password change refused for", "unknown_user"],
        "CredentialAttempt.UnknownUserRefused",
        lambda w: f"{PASSWORD}\n{NEW_PASSWORD}\n",
    ),
    "password-change-disabled-user": Refusal(
        lambda w, u: ["password", "change", w.disabled, "--password-stdin"],
        ["password change refused for", "user_disabled"],
        "User.PasswordChangeFailed",
        lambda w: f"{PASSWORD}\n{NEW_PASSWORD}\n",
    ),
    "apikey-verify-revoked-token": Refusal(
        lambda w, u: ["apikey", "verify"],
        ["was revoked"],
        "ApiKeyIndex.UseRefused",
        lambda w: w.revoked_token + "\n",
    ),
    "apikey-verify-wrong-secret": Refusal(
        lambda w, u: ["apikey", "verify"],
        ["API key secret does not match"],
        "ApiKeyIndex.UseRefused",
        lambda w: tampered_secret(w.revoked_token) + "\n",
    ),
    "apikey-verify-malformed-token": Refusal(
        lambda w, u: ["apikey", "verify"],
        ["API key is not of the form"],
        "CredentialAttempt.UnknownApiKeyRefused",
        lambda w: "sst_nope\n",
    ),
    "apikey-verify-unknown-token": Refusal(
        lambda w, u: ["apikey", "verify"],
        ["API key is not known"],
        "CredentialAttempt.UnknownApiKeyRefused",
        lambda w: ApiKeyCodec().issue().token + "\n",
    ),
    "totp-confirm-unknown-factor": Refusal(
        lambda w, u: ["totp", "confirm", u, "tf_000000000000", "123456"],
        ["TOTP confirmation refused for", "no_pending_enrolment"],
        "User.TotpConfirmationFailed",
    ),
    "totp-confirm-unknown-user": Refusal(
        lambda w, u: ["totp", "confirm", fresh("nobody"), "tf_000000000000", "123456"],
        ["TOTP confirmation refused for", "unknown_user"],
        "CredentialAttempt.UnknownUserRefused",
    ),
}


def new_events(cli: Cli, after: int) -> list[str]:
    """Display types of the events stored after position ``after``."""
    notifications = cli.store.ledger.recorder.select_notifications(start=after + 1, limit=100)
    return [n.topic.removeprefix("secstate.") for n in notifications]


@pytest.mark.parametrize("case_id", list(REFUSALS))
def test_a_refused_check_of_a_secret_exits_1_and_records_the_refusal(
    cli: Cli, world: World, case_id: str
) -> None:
    # given: a user of its own (the refusals count toward a lockout)
    case = REFUSALS[case_id]
    user = register(cli, world.account)
    before = cli.events()
    # when
    result = cli(*case.args(world, user), stdin=case.stdin(world))
    # then: one line naming the refusal, and exactly the refusal recorded
    assert_refusal(result, case.expect)
    assert new_events(cli, before) == [case.recorded]


def test_a_wrong_totp_code_at_confirmation_is_recorded_and_counts_toward_the_lockout(
    cli: Cli, world: World
) -> None:
    # given
    code = wrong_totp_code(world, cli.store.ledger)
    before = cli.events()
    failed = cli.ok("user", "show", world.owner, "--json").json()["user"]["failed_logins"]
    # when
    result = cli("totp", "confirm", world.owner, world.pending_factor, code)
    # then
    assert_refusal(result, ["TOTP confirmation refused for", "bad_second_factor"])
    assert new_events(cli, before) == ["User.TotpConfirmationFailed"]
    shown = cli.ok("user", "show", world.owner, "--json").json()
    assert shown["user"]["failed_logins"] == failed + 1
    cli.ok("user", "login", world.owner, "--password-stdin", stdin=PASSWORD + "\n")  # resets it


def test_every_ledger_command_has_a_bad_input_case() -> None:
    # given: the command groups and their commands as the CLI registers them
    from secstate.cli import (
        account_commands,
        allowlist_commands,
        apikey_commands,
        dkim_commands,
        factor_commands,
        staff_commands,
        user_commands,
    )

    groups = {
        "account": account_commands.account_app,
        "user": user_commands.user_app,
        "password": user_commands.password_app,
        "apikey": apikey_commands.apikey_app,
        "totp": factor_commands.totp_app,
        "recovery-codes": factor_commands.recovery_app,
        "allowlist": allowlist_commands.allowlist_app,
        "access": allowlist_commands.access_app,
        "dkim": dkim_commands.dkim_app,
        "staff": staff_commands.staff_app,
    }
    commands = {
        f"{group}-{info.name}"
        for group, typer_app in groups.items()
        for info in typer_app.registered_commands
    }
    # then: each has at least one refusal case (the wrong TOTP code has its own test)
    uncovered = {command for command in commands if not any(k.startswith(command) for k in CASES)}
    assert uncovered == set()


# --- the installed console script --------------------------------------------------------------


def run_script(store: Store, *args: str, stdin: str = "") -> Result:
    proc = subprocess.run(
        [str(SECSTATE_BIN), *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=clean_env(store.env),
        timeout=120,
        check=False,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def test_console_script_registers_and_logs_in_with_piped_passwords(cli: Cli) -> None:
    # given
    store = cli.store
    account, username = open_account(cli), fresh("proc")
    # when
    registered = run_script(
        store,
        *["user", "register", account, username, "--email", "p@example.com", "--password-stdin"],
        stdin=PASSWORD + "\n",
    )
    login = run_script(
        store, "user", "login", username, "--password-stdin", "--json", stdin=PASSWORD + "\n"
    )
    unpiped = run_script(store, "user", "login", username, stdin=PASSWORD + "\n")
    # then
    assert registered.code == 0, registered.err
    assert login.code == 0, login.err
    assert login.json()["method"] == "password"
    assert_refusal(unpiped, ["--password-stdin"])
    for result in (registered, login, unpiped):
        assert_no_secrets(result.out + result.err)


def test_console_script_refuses_bad_input_with_one_line_and_no_traceback(store: Store) -> None:
    # given
    before = store.events()
    # when
    bad_cidr = run_script(store, "allowlist", "add", "no-such-acct", "300.0.0.0/8", "--label", "x")
    bad_ip = run_script(store, "--source-ip", "999.1.1.1", "account", "open", fresh("a"))
    usage = run_script(store, "account", "open")
    # then
    assert_refusal(bad_cidr, ["cidr: not a valid CIDR network"])
    assert_refusal(bad_ip, ["--source-ip: '999.1.1.1'"])
    assert usage.code == 2
    assert "Missing argument" in usage.err
    assert "Traceback" not in usage.err
    assert store.events() == before


def test_console_script_pipes_a_new_api_key_into_verify(cli: Cli) -> None:
    # given
    store, account = cli.store, open_account(cli)
    created = run_script(store, "apikey", "create", account, "--name", "ci", "--scope", "send")
    assert created.code == 0, created.err
    token = created.out.split("token:")[1].split()[0]
    SECRETS.add(token)
    # when
    verified = run_script(store, "apikey", "verify", "--json", stdin=token + "\n")
    # Swap the last character for a different one: a fixed "x" is a no-op 1 time in 62.
    last = "y" if token.endswith("x") else "x"
    tampered = run_script(store, "apikey", "verify", stdin=token[:-1] + last + "\n")
    # then
    assert verified.code == 0, verified.err
    assert verified.json()["account"] == account
    assert_refusal(tampered, ["checksum does not match"])


def test_password_prompt_on_a_terminal_does_not_echo(cli: Cli) -> None:
    # given: the console script on a pseudo-terminal, as a person would run it
    store, account, username = cli.store, open_account(cli), fresh("tty")
    argv = [str(SECSTATE_BIN), "user", "register", account, username, "--email", "t@example.com"]
    pid, fd = pty.fork()
    if pid == 0:  # the child: exec at once, nothing else
        os.execve(argv[0], argv, clean_env(store.env))  # noqa: S606 - no shell wanted
    transcript = bytearray()

    def read_until(marker: bytes) -> None:
        while marker not in transcript:
            ready, _, _ = select.select([fd], [], [], 60)  # a guard against hanging only
            assert ready, f"no {marker!r} prompt; got {bytes(transcript)!r}"
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                chunk = b""
            assert chunk, f"terminal closed before {marker!r}; got {bytes(transcript)!r}"
            transcript.extend(chunk)

    # when: the password is typed twice
    try:
        read_until(b"Password: ")  # echo is off once the space is written
        os.write(fd, PASSWORD.encode() + b"\n")
        read_until(b"confirmation: ")
        os.write(fd, PASSWORD.encode() + b"\n")
        read_until(b"registered")
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        raise
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    # then: it was accepted and never shown
    assert os.waitstatus_to_exitcode(status) == 0, bytes(transcript)
    assert PASSWORD.encode() not in transcript
    cli.ok("user", "login", username, "--password-stdin", stdin=PASSWORD + "\n")


def test_help_lists_every_command_group_and_no_secret_option(cli: Cli) -> None:
    # when
    top = cli.ok("--help")
    helps = {group: cli.ok(group, "--help").out for group in ("user", "password", "apikey")}
    login = cli.ok("user", "login", "--help").out
    # then: passwords have no option of their own, only --password-stdin
    for group in ("account", "user", "password", "apikey", "totp", "recovery-codes"):
        assert group in top.out
    for group in ("allowlist", "access", "dkim", "staff"):
        assert group in top.out
    assert "register" in helps["user"]
    assert "reset-campaign" in helps["password"]
    assert "verify" in helps["apikey"]
    assert "--password-stdin" in login
    assert "--password " not in login
    assert "--recovery-code-stdin" in login
