"""Keys are never silently replaced: the key ring's creation rule, key ids, missing keys,
rotation and the ``secstate keys`` commands, on SQLite and PostgreSQL.

A "host" is a SECSTATE_HOME (where keyring.json lives) plus the store it points at; two
hosts on one PostgreSQL schema are two homes with the same SECSTATE_DATABASE_URL. The
CLI runs in-process (``secstate.cli.run``), and once as the installed console script.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import POSTGRES_URL, make_settings
from fixture_store import load_postgres, load_sqlite

from domain import account as account_module
from domain import user as user_module
from domain.context import SystemClock
from domain.errors import DuplicateKeyIdError, SecretKeyError
from domain.secrets import KeyRing, key_fingerprint, totp_code_at_step, totp_step
from secstate.bootstrap import build_ledger
from secstate.cli import run
from secstate.keyring import SEALED_FIELDS, parse_keys, read_ring_file, write_ring_file
from secstate.settings import Settings

PASSWORD = "Quartz-Lantern-4821"
CHEAP_ENV = {
    "SECSTATE_ARGON2_TIME_COST": "1",
    "SECSTATE_ARGON2_MEMORY_KIB": "1024",
    "SECSTATE_ARGON2_PARALLELISM": "1",
    "SECSTATE_DKIM_RSA_BITS": "1024",
}
SECSTATE_BIN = Path(sys.executable).with_name("secstate")
if not SECSTATE_BIN.exists():
    SECSTATE_BIN = Path(shutil.which("secstate") or SECSTATE_BIN)


def b64key() -> str:
    return base64.b64encode(KeyRing.generate_key()).decode()


# --- hosts and the CLI -------------------------------------------------------------------------


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@dataclass
class Host:
    """One SECSTATE_HOME on one store, with its own environment."""

    backend: str
    home: Path
    schema: str | None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        env = {"SECSTATE_HOME": str(self.home), **CHEAP_ENV, **self.extra}
        if self.schema is not None:
            env["SECSTATE_DATABASE_URL"] = f"{POSTGRES_URL}?schema={self.schema}"
        return env

    @property
    def ring_file(self) -> Path:
        return self.home / "keyring.json"

    def settings(self) -> Settings:
        return make_settings(self.backend, self.home, self.schema, keyring=False)

    def events(self) -> int:
        """Position of the last stored event: unchanged means nothing was written."""
        ledger = build_ledger(self.settings())
        try:
            return ledger.recorder.max_notification_id() or 0
        finally:
            ledger.close()


class Cli:
    def __init__(self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
        self.capsys = capsys
        self.monkeypatch = monkeypatch

    def __call__(self, host: Host, *args: str, stdin: str = "") -> Result:
        for name in list(os.environ):
            if name.startswith("SECSTATE_"):
                self.monkeypatch.delenv(name)
        for name, value in host.env.items():
            self.monkeypatch.setenv(name, value)
        self.monkeypatch.setenv("COLUMNS", "200")
        self.monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        self.capsys.readouterr()
        code = run(list(args))
        captured = self.capsys.readouterr()
        return Result(code, captured.out, captured.err)

    def ok(self, host: Host, *args: str, stdin: str = "") -> Result:
        result = self(host, *args, stdin=stdin)
        assert result.code == 0, (args, result.err)
        return result


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    return Cli(capsys, monkeypatch)


@pytest.fixture
def new_host(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Callable[[str], Host]:
    """Homes on one store of the test's backend (one PostgreSQL schema for all of them)."""
    schema = request.getfixturevalue("pg_schema") if backend == "postgres" else None

    def make(name: str) -> Host:
        return Host(backend, tmp_path / name, schema)

    return make


def assert_refused(result: Result, *needles: str) -> None:
    """Exit 1, one line on stderr naming the problem, no traceback."""
    assert result.code == 1, (result.code, result.out, result.err)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    assert "Traceback" not in result.err + result.out


def code_now(seed: str, offset: int = 0) -> str:
    return totp_code_at_step(seed, totp_step(SystemClock().now()) + offset)


def first_ring(cli: Cli, host: Host) -> None:
    """Give a host's store its first key ring as its operator would: on PostgreSQL
    explicitly (`keys init`); an SQLite store makes one when it first seals."""
    if host.backend == "postgres":
        cli.ok(host, "keys", "init")


@dataclass
class Enrolled:
    username: str
    factor_id: str
    seed: str


def enrol_user(cli: Cli, host: Host, account: str, username: str) -> Enrolled:
    """A user with a TOTP factor started (sealed), not yet confirmed."""
    if cli(host, "account", "show", account).code != 0:
        cli.ok(host, "account", "open", account)
    cli.ok(
        host,
        *["user", "register", account, username, "--email", f"{username}@example.com"],
        "--password-stdin",
        stdin=PASSWORD + "\n",
    )
    enrolment = cli.ok(host, "totp", "enrol", username, "--json").json()
    return Enrolled(username, enrolment["factor_id"], enrolment["seed"])


def login_with_totp(cli: Cli, host: Host, who: Enrolled, offset: int = 1) -> Result:
    return cli(
        host,
        *["user", "login", who.username, "--password-stdin", "--totp", code_now(who.seed, offset)],
        stdin=PASSWORD + "\n",
    )


def key_ids_in_use(cli: Cli, host: Host) -> dict[str, int]:
    status = cli(host, "keys", "status", "--json").json()
    return {k["key_id"]: k["sealed_values"] for k in status["keys"] if k["sealed_values"]}


# --- the creation rule -------------------------------------------------------------------------


def test_deleted_keyring_file_is_never_replaced_and_old_secrets_open_once_restored(
    cli: Cli, new_host: Callable[[str], Host]
) -> None:
    # given a store holding a sealed TOTP seed, and the ring file that sealed it deleted
    host = new_host("a")
    first_ring(cli, host)
    alice = enrol_user(cli, host, "acme", "alice")
    backup = host.ring_file.read_bytes()
    host.ring_file.unlink()
    before = host.events()
    # when commands that need a key run
    confirm = cli(host, "totp", "confirm", "alice", alice.factor_id, code_now(alice.seed))
    enrol = cli(host, "totp", "enrol", "alice")
    dkim = cli(host, "dkim", "generate", "acme", "acme.example", "s1")
    # then each is refused with the remedy, no key is minted and nothing is written
    for result in (confirm, enrol, dkim):
        assert_refused(
            result, "no key ring on this host", "holds values sealed under", "restore keyring.json"
        )
        assert "failed authentication" not in result.err
    assert not host.ring_file.exists()
    assert host.events() == before
    # when the file is restored, the old sealed seed opens again
    host.ring_file.write_bytes(backup)
    cli.ok(host, "totp", "confirm", "alice", alice.factor_id, code_now(alice.seed))
    assert login_with_totp(cli, host, alice).code == 0


def test_fresh_sqlite_store_makes_its_first_ring_on_first_seal_with_a_unique_id(
    cli: Cli, tmp_path: Path
) -> None:
    # given a brand-new embedded store (the quickstart)
    host = Host("sqlite", tmp_path / "a", None)
    cli.ok(host, "account", "open", "acme")
    assert not host.ring_file.exists()  # writing events needs no key
    # when the first secret is sealed
    enrol_user(cli, host, "acme", "alice")
    # then a ring of one key was made, 0600, with a date-and-random id and its fingerprint
    ring = read_ring_file(host.ring_file)
    (key_id,) = ring.keys
    assert ring.active == key_id
    assert re.fullmatch(rf"k{datetime.now(UTC):%Y%m%d}-[0-9a-f]{{8}}", key_id), key_id
    assert stat.S_IMODE(host.ring_file.stat().st_mode) == 0o600
    data = json.loads(host.ring_file.read_text())
    assert data["fingerprints"] == {key_id: key_fingerprint(ring.keys[key_id])}
    assert key_ids_in_use(cli, host) == {key_id: 1}


@pytest.mark.postgres
def test_postgres_store_never_makes_a_ring_by_itself_and_keys_init_makes_one(
    cli: Cli, tmp_path: Path, pg_schema: str
) -> None:
    # given a new PostgreSQL store and a host with no key ring
    host = Host("postgres", tmp_path / "a", pg_schema)
    cli.ok(host, "account", "open", "acme")
    cli.ok(host, "user", "register", "acme", "alice", "--email", "a@example.com",
           "--password-stdin", stdin=PASSWORD + "\n")  # fmt: skip
    before = host.events()
    # when a secret must be sealed
    refused = cli(host, "totp", "enrol", "alice")
    # then it is refused, naming what to do, and nothing is minted or written
    assert_refused(refused, "PostgreSQL store is shared by hosts", "secstate keys init")
    assert not host.ring_file.exists()
    assert host.events() == before
    # when the operator makes the ring on purpose
    made = cli.ok(host, "keys", "init")
    # then it exists, and sealing works
    assert "created key ring" in made.out
    assert stat.S_IMODE(host.ring_file.stat().st_mode) == 0o600
    cli.ok(host, "totp", "enrol", "alice")
    assert_refused(cli(host, "keys", "init"), "exists already")


def test_keys_init_is_refused_on_a_store_holding_sealed_values_unless_accepted(
    cli: Cli, new_host: Callable[[str], Host]
) -> None:
    # given a store with a sealed seed whose ring is lost
    host = new_host("a")
    first_ring(cli, host)
    alice = enrol_user(cli, host, "acme", "alice")
    (lost,) = read_ring_file(host.ring_file).keys
    host.ring_file.unlink()
    # when keys init runs, then it is refused
    refused = cli(host, "keys", "init")
    assert_refused(refused, f"sealed under {lost} (1 value)", "--accept-unreadable")
    assert not host.ring_file.exists()
    # when the operator accepts the loss, a new ring is made with a new id
    cli.ok(host, "keys", "init", "--accept-unreadable")
    (new,) = read_ring_file(host.ring_file).keys
    assert new != lost
    # then new secrets seal under it and the old one names its missing key
    cli.ok(host, "totp", "enrol", "alice")
    confirm = cli(host, "totp", "confirm", "alice", alice.factor_id, code_now(alice.seed))
    assert_refused(confirm, f"key {lost} is missing from the key ring")


# --- a second host on one PostgreSQL store ---------------------------------------------------


@pytest.mark.postgres
def test_second_host_without_keys_refuses_to_mint_reads_and_fails_totp_with_one_line(
    cli: Cli, tmp_path: Path, pg_schema: str
) -> None:
    # given host A with a ring, a confirmed TOTP user and a DKIM key on the shared store
    a = Host("postgres", tmp_path / "a", pg_schema)
    first_ring(cli, a)
    alice = enrol_user(cli, a, "acme", "alice")
    cli.ok(a, "totp", "confirm", "alice", alice.factor_id, code_now(alice.seed))
    cli.ok(a, "dkim", "generate", "acme", "acme.example", "s1")
    # and host B on the same schema, with neither SECSTATE_KEYS nor keyring.json
    b = Host("postgres", tmp_path / "b", pg_schema)
    before = b.events()
    # when B reads, then everything works without a key
    for args in (
        ("state", "acme", "--json"),
        ("state", "acme", "--at", "2100-01-01T00:00:00Z", "--json"),
        ("history", "alice", "--json"),
        ("timeline", "--account", "acme", "--json"),
        ("project", "status", "--json"),
        ("project", "run", "--once"),
        ("account", "show", "acme", "--json"),
        ("user", "show", "alice", "--json"),
        ("dkim", "list", "acme", "--json"),
    ):
        cli.ok(b, *args)
    # when B must open or seal a secret, then it refuses in one line and mints nothing
    login = login_with_totp(cli, b, alice)
    shown = cli.ok(b, "user", "show", "alice", "--json").json()
    enrol = cli(b, "totp", "enrol", "alice")
    dkim = cli(b, "dkim", "generate", "acme", "acme.example", "s2")
    for result in (login, enrol, dkim):
        assert_refused(
            result, "no key ring on this host", "SECSTATE_KEYS to the ring the other hosts use"
        )
    assert_refused(cli(b, "keys", "init"), "which a new key would not open")
    status = cli(b, "keys", "status", "--json")
    assert status.code == 1
    assert status.json()["source"] == "none"
    assert status.json()["missing_key_ids"] == sorted(read_ring_file(a.ring_file).keys)
    assert not b.ring_file.exists()
    assert b.events() == before
    assert shown["user"]["failed_logins"] == 0  # the refused login recorded nothing
    # when B is given A's ring (exported there), then it opens A's secrets
    exported = cli.ok(a, "keys", "export").out.splitlines()
    b.extra = dict(line.split("=", 1) for line in exported)
    assert login_with_totp(cli, b, alice).code == 0
    assert not b.ring_file.exists()


@pytest.mark.postgres
def test_console_script_on_a_keyless_second_host_fails_a_totp_login_with_one_line(
    cli: Cli, tmp_path: Path, pg_schema: str
) -> None:
    # given a confirmed TOTP user made by host A, and host B without keys
    a = Host("postgres", tmp_path / "a", pg_schema)
    first_ring(cli, a)
    alice = enrol_user(cli, a, "acme", "alice")
    cli.ok(a, "totp", "confirm", "alice", alice.factor_id, code_now(alice.seed))
    b = Host("postgres", tmp_path / "b", pg_schema)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECSTATE_")}
    env.update(b.env)
    # when the installed script logs in with a TOTP code on B
    args = ["user", "login", "alice", "--password-stdin", "--totp", code_now(alice.seed, 1)]
    proc = subprocess.run(
        [str(SECSTATE_BIN), *args],
        input=PASSWORD + "\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    shown = subprocess.run(
        [str(SECSTATE_BIN), "user", "show", "alice", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    # then: exit 1, one line naming the missing ring, no traceback; reading still works
    assert_refused(Result(proc.returncode, proc.stdout, proc.stderr), "no key ring on this host")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["user"]["username"] == "alice"
    assert not b.ring_file.exists()


def test_readers_need_no_key_ring_and_create_none(
    cli: Cli, new_host: Callable[[str], Host]
) -> None:
    # given a store with sealed values, read from a home that has no key ring at all
    a = new_host("a")
    first_ring(cli, a)
    enrol_user(cli, a, "acme", "alice")
    cli.ok(a, "dkim", "generate", "acme", "acme.example", "s1")
    reader = a if a.backend == "sqlite" else new_host("reader")
    if reader is a:
        a.ring_file.unlink()
    # when it reads, then every read works and no ring appears
    for args in (
        ("state", "acme"),
        ("history", "acme"),
        ("timeline",),
        ("project", "status"),
        ("account", "show", "acme"),
        ("user", "show", "alice"),
    ):
        cli.ok(reader, *args)
    assert not reader.ring_file.exists()


def test_the_read_side_never_asks_for_the_key_ring(
    cli: Cli, new_host: Callable[[str], Host], monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a store with sealed values (a TOTP seed, a DKIM private key)
    a = new_host("a")
    first_ring(cli, a)
    alice = enrol_user(cli, a, "acme", "alice")
    cli.ok(a, "dkim", "generate", "acme", "acme.example", "s1")
    # and a process in which loading a key ring, by any path, fails the test
    from secstate import bootstrap
    from secstate import keyring as keyring_module

    def no_ring(*args: object, **kwargs: object) -> Any:
        raise AssertionError("a reader asked for the key ring")

    monkeypatch.setattr(bootstrap, "load_keyring", no_ring)
    monkeypatch.setattr(keyring_module, "load_keyring", no_ring)
    # when every read of the ledger and every follower command runs
    for args in (
        ("state", "acme", "--json"),
        ("state", "acme", "--at", "2100-01-01T00:00:00Z", "--json"),
        ("history", "alice", "--json"),
        ("timeline", "--account", "acme", "--json"),
        ("project", "run", "--once"),
        ("project", "status", "--json"),
        ("project", "rebuild", "state", "timeline", "--jobs", "1"),
        ("account", "show", "acme", "--json"),
        ("user", "show", "alice", "--json"),
        ("dkim", "list", "acme", "--json"),
    ):
        # then each works without it
        cli.ok(a, *args)
    # and the followers the runner supervises are built from a reader that has no ring
    from domain.ledger import Ledger
    from secstate.bootstrap import build_reader
    from secstate.runner import Runner

    settings = a.settings()
    reader = build_reader(settings)
    try:
        assert not isinstance(reader, Ledger)
        assert not hasattr(reader, "keyring")
        with Runner(settings, reader) as runner:
            assert runner.run(once=True).failed == []
    finally:
        reader.close()
    # when a command must open the sealed seed, then it asks for the ring, and only then
    confirm = cli(a, "totp", "confirm", "alice", alice.factor_id, code_now(alice.seed))
    assert confirm.code != 0
    assert "a reader asked for the key ring" in confirm.err


def test_demo_without_a_usable_ring_writes_nothing(
    cli: Cli, new_host: Callable[[str], Host]
) -> None:
    # given an empty store and a host that may not make a ring: on PostgreSQL any host
    # without one; on SQLite one whose SECSTATE_ACTIVE_KEY_ID names a key it lacks
    host = new_host("a")
    expected = "PostgreSQL store is shared by hosts"
    if host.backend == "sqlite":
        host.extra = {"SECSTATE_ACTIVE_KEY_ID": "k-gone"}
        expected = "SECSTATE_ACTIVE_KEY_ID names 'k-gone'"
    # when the demo runs, then it is refused before writing anything
    assert_refused(cli(host, "demo", "--accounts", "2"), expected)
    assert host.events() == 0
    assert not host.ring_file.exists()


# --- duplicate ids, missing keys, wrong keys ------------------------------------------------


def test_duplicate_key_id_in_secstate_keys_is_refused(
    cli: Cli, new_host: Callable[[str], Host]
) -> None:
    # given SECSTATE_KEYS naming k1 twice, with different keys
    host = new_host("a")
    host.extra = {"SECSTATE_KEYS": f"k1:{b64key()},k2:{b64key()}, k1:{b64key()}"}
    cli.ok(host, "account", "open", "acme")
    cli.ok(host, "user", "register", "acme", "alice", "--email", "a@example.com",
           "--password-stdin", stdin=PASSWORD + "\n")  # fmt: skip
    before = host.events()
    # when a secret is sealed, or the ring inspected
    enrol = cli(host, "totp", "enrol", "alice")
    status = cli(host, "keys", "status")
    # then both are refused, naming the id
    assert_refused(enrol, "key id k1 appears twice in SECSTATE_KEYS")
    assert_refused(status, "key id k1 appears twice in SECSTATE_KEYS")
    assert host.events() == before


def test_duplicate_key_id_in_keyring_json_is_refused(tmp_path: Path) -> None:
    # given a hand-edited file naming one key id twice (json.loads would keep the last)
    path = tmp_path / "keyring.json"
    path.write_text(f'{{"active": "k1", "keys": {{"k1": "{b64key()}", "k1": "{b64key()}"}}}}')
    # when / then
    with pytest.raises(DuplicateKeyIdError, match="names 'k1' twice"):
        read_ring_file(path)


def test_secstate_keys_parses_entries_and_refuses_bad_ones() -> None:
    key = KeyRing.generate_key()
    assert parse_keys(f" k1:{base64.b64encode(key).decode()} ,") == {"k1": key}
    for text, problem in (
        ("k1", "KEY_ID:BASE64"),
        ("k1:not base64!", "not valid base64"),
        (",", "holds no keys"),
        (f"bad id:{b64key()}", "must be 1-64"),
    ):
        with pytest.raises(SecretKeyError, match=problem):
            parse_keys(text)


def test_key_changed_under_an_existing_id_in_keyring_json_is_refused(tmp_path: Path) -> None:
    # given a ring file whose key k1 was replaced by hand, its fingerprint left as it was
    path = tmp_path / "keyring.json"
    write_ring_file(path, {"k1": KeyRing.generate_key()}, "k1", replace=False)
    data = json.loads(path.read_text())
    data["keys"]["k1"] = b64key()
    path.write_text(json.dumps(data))
    # when / then
    with pytest.raises(SecretKeyError, match="does not match its recorded fingerprint"):
        read_ring_file(path)


def test_ring_file_of_date_only_ids_without_fingerprints_keeps_working(
    cli: Cli, tmp_path: Path
) -> None:
    # given a keyring.json as older versions wrote it
    host = Host("sqlite", tmp_path / "a", None)
    host.home.mkdir(mode=0o700)
    key = KeyRing.generate_key()
    old = {"active": "k20261203", "keys": {"k20261203": base64.b64encode(key).decode()}}
    fd = os.open(host.ring_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(old, f)
    # when secrets are sealed and opened with it
    alice = enrol_user(cli, host, "acme", "alice")
    cli.ok(host, "totp", "confirm", "alice", alice.factor_id, code_now(alice.seed))
    # then they use its key, which status shows with its fingerprint
    status = cli.ok(host, "keys", "status", "--json").json()
    assert status["active_key_id"] == "k20261203"
    assert status["keys"][0]["fingerprint"] == key_fingerprint(key)
    assert key_ids_in_use(cli, host) == {"k20261203": 1}


def test_key_missing_from_secstate_keys_is_named_not_called_tampering(
    cli: Cli, new_host: Callable[[str], Host]
) -> None:
    # given a seed sealed under k1, and a ring that no longer has k1
    host = new_host("a")
    host.extra = {"SECSTATE_KEYS": f"k1:{b64key()}"}
    alice = enrol_user(cli, host, "acme", "alice")
    host.extra = {"SECSTATE_KEYS": f"k2:{b64key()}"}
    # when it is needed
    confirm = cli(host, "totp", "confirm", "alice", alice.factor_id, code_now(alice.seed))
    # then the message names the key, where the ring comes from, and the remedy
    assert_refused(
        confirm,
        "key k1 is missing from the key ring (SECSTATE_KEYS)",
        "restore it from the backup of SECSTATE_KEYS or keyring.json",
    )
    assert "authentication" not in confirm.err


def test_wrong_key_under_the_right_id_is_told_apart_from_tampering_by_status_verify(
    cli: Cli, new_host: Callable[[str], Host]
) -> None:
    # given seeds sealed under k1, and a host whose k1 is another key
    host = new_host("a")
    right = f"k1:{b64key()}"
    host.extra = {"SECSTATE_KEYS": right}
    alice = enrol_user(cli, host, "acme", "alice")
    enrol_user(cli, host, "acme", "bob")
    wrong = KeyRing.generate_key()
    host.extra = {"SECSTATE_KEYS": f"k1:{base64.b64encode(wrong).decode()}"}
    # when the seed is opened, and the ring verified
    confirm = cli(host, "totp", "confirm", "alice", alice.factor_id, code_now(alice.seed))
    verify = cli(host, "keys", "status", "--verify", "--json")
    # then opening is a failed authentication naming the fingerprint to compare,
    assert_refused(confirm, "under key k1 failed authentication", key_fingerprint(wrong))
    # and status says the key is the wrong one, not that values were tampered with
    assert verify.code == 1
    report = verify.json()
    assert report["keys"] == [
        {
            "key_id": "k1",
            "fingerprint": key_fingerprint(wrong),
            "in_ring": True,
            "active": True,
            "sealed_values": 2,
            "opened": 0,
            "failed": 2,
        }
    ]
    assert "is not the key that sealed them" in report["problems"][0]
    # when the right key is back, status --verify opens them all
    host.extra = {"SECSTATE_KEYS": right}
    assert cli.ok(host, "keys", "status", "--verify", "--json").json()["keys"][0]["opened"] == 2


# --- rotation ----------------------------------------------------------------------------------


def test_rotation_seals_new_secrets_under_the_new_key_and_old_ones_need_the_old_key(
    cli: Cli, new_host: Callable[[str], Host]
) -> None:
    # given a TOTP seed sealed under k1
    host = new_host("a")
    k1, k2 = f"k1:{b64key()}", f"k2:{b64key()}"
    host.extra = {"SECSTATE_KEYS": k1}
    alice = enrol_user(cli, host, "acme", "alice")
    # when k2 joins the ring and becomes active
    host.extra = {"SECSTATE_KEYS": f"{k1},{k2}", "SECSTATE_ACTIVE_KEY_ID": "k2"}
    bob = enrol_user(cli, host, "acme", "bob")
    # then new secrets seal under k2 and old ones still open under k1
    assert key_ids_in_use(cli, host) == {"k1": 1, "k2": 1}
    cli.ok(host, "totp", "confirm", "alice", alice.factor_id, code_now(alice.seed))
    cli.ok(host, "totp", "confirm", "bob", bob.factor_id, code_now(bob.seed))
    # when k1 is dropped
    host.extra = {"SECSTATE_KEYS": k2}
    # then bob still logs in, alice's login names the missing key, and status flags it
    assert login_with_totp(cli, host, bob).code == 0
    assert_refused(login_with_totp(cli, host, alice), "key k1 is missing from the key ring")
    status = cli(host, "keys", "status", "--json")
    assert status.code == 1
    assert status.json()["missing_key_ids"] == ["k1"]
    assert "key k1 is missing from the key ring: 1 sealed value(s)" in status.err
    table = cli(host, "keys", "status")
    assert "MISSING" in table.out
    assert "problem: key k1 is missing" in table.out


def test_rotation_in_keyring_json_with_generate_activate_and_remove(
    cli: Cli, new_host: Callable[[str], Host]
) -> None:
    # given a file ring that sealed a seed under its first key
    host = new_host("a")
    first_ring(cli, host)
    alice = enrol_user(cli, host, "acme", "alice")
    (old,) = read_ring_file(host.ring_file).keys
    # when a new key is added and activated
    added = cli.ok(host, "keys", "generate", "--add", "--activate")
    ring = read_ring_file(host.ring_file)
    (new,) = set(ring.keys) - {old}
    # then no key material was printed, the file stays 0600, and new secrets use the new key
    for b64 in (base64.b64encode(k).decode() for k in ring.keys.values()):
        assert b64 not in added.out + added.err
    assert f"added key {new} (fingerprint {key_fingerprint(ring.keys[new])})" in added.out
    assert ring.active == new
    assert stat.S_IMODE(host.ring_file.stat().st_mode) == 0o600
    bob = enrol_user(cli, host, "acme", "bob")
    assert key_ids_in_use(cli, host) == {old: 1, new: 1}
    cli.ok(host, "totp", "confirm", "alice", alice.factor_id, code_now(alice.seed))
    # when the old key is removed: refused while the store needs it, unless forced
    assert_refused(cli(host, "keys", "remove", new), "is the active key")
    assert_refused(cli(host, "keys", "remove", old), "holds 1 value(s) sealed under key")
    cli.ok(host, "keys", "remove", old, "--force")
    # then the old seed names its missing key, and the new one still works
    assert_refused(login_with_totp(cli, host, alice), f"key {old} is missing from the key ring")
    cli.ok(host, "totp", "confirm", "bob", bob.factor_id, code_now(bob.seed))
    # and activating a key the file lacks is refused, the active one kept
    assert_refused(cli(host, "keys", "activate", old), f"key {old} is not in")
    assert read_ring_file(host.ring_file).active == new


def test_generated_entry_works_in_secstate_keys(cli: Cli, new_host: Callable[[str], Host]) -> None:
    # given a new key entry printed for SECSTATE_KEYS
    host = new_host("a")
    generated = cli.ok(host, "keys", "generate")
    entry = generated.out.strip()
    key_id = entry.split(":", 1)[0]
    # then it is the one line on stdout, and the guidance goes to stderr without the key
    assert len(generated.out.splitlines()) == 1
    assert entry.split(":", 1)[1] not in generated.err
    assert f"SECSTATE_ACTIVE_KEY_ID={key_id}" in generated.err
    # when it is used as the ring, then secrets seal under it
    host.extra = {"SECSTATE_KEYS": entry}
    enrol_user(cli, host, "acme", "alice")
    assert key_ids_in_use(cli, host) == {key_id: 1}
    assert not host.ring_file.exists()
    # and --activate without --add, or --add with SECSTATE_KEYS, are refused
    assert_refused(cli(host, "keys", "generate", "--activate"), "--activate needs --add")
    assert_refused(cli(host, "keys", "generate", "--add"), "comes from SECSTATE_KEYS")


def test_keys_status_on_the_old_fixture_store_flags_its_date_only_key_as_missing(
    cli: Cli, backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    # given the store written before the hardening (its key, k20261203, not kept)
    home = tmp_path / "home"
    schema = None
    if backend == "postgres":
        schema = request.getfixturevalue("pg_schema")
        build_ledger(make_settings(backend, home, schema, keyring=False)).close()
        load_postgres("history-v1", POSTGRES_URL, schema)
    else:
        load_sqlite("history-v1", home / "ledger.sqlite3")
    host = Host(backend, home, schema)
    # when its status is asked for on a host with a new ring of its own
    host.extra = {"SECSTATE_KEYS": f"k2:{b64key()}"}
    status = cli(host, "keys", "status", "--json")
    # then the old key id is flagged as missing
    assert status.code == 1
    report = status.json()
    assert report["missing_key_ids"] == ["k20261203"]
    assert report["sealed_values"] == 3
    assert not host.ring_file.exists()


def test_every_sealed_event_field_is_known_to_the_store_scan() -> None:
    # given every event class of the domain
    fields: set[tuple[str, str]] = set()
    for module in (user_module, account_module):
        for aggregate in vars(module).values():
            for event in vars(aggregate).values() if isinstance(aggregate, type) else ():
                topic = getattr(event, "TOPIC", None)
                if isinstance(event, type) and isinstance(topic, str):
                    annotations: dict[str, Any] = getattr(event, "__annotations__", {})
                    fields |= {(topic, name) for name in annotations if "sealed" in name}
    # then the scan that decides whether a ring may be made knows each sealed field
    assert fields == {(f.topic, f.field) for f in SEALED_FIELDS}
    # and so does the event catalogue, which keeps them out of every public payload
    from domain.catalogue import catalogue_entry, event_class

    catalogued = set()
    for topic, _ in fields:
        cls = event_class(topic)
        assert cls is not None
        catalogued |= {(topic, name) for name in catalogue_entry(cls).sealed}
    assert catalogued == fields


def test_two_first_rings_at_once_leave_exactly_one(tmp_path: Path) -> None:
    # given a first ring written
    path = tmp_path / "keyring.json"
    write_ring_file(path, {"k1": KeyRing.generate_key()}, "k1", replace=False)
    first = path.read_bytes()
    # when another process writes its own first ring, then it is refused and the file kept
    with pytest.raises(FileExistsError):
        write_ring_file(path, {"k2": KeyRing.generate_key()}, "k2", replace=False)
    assert path.read_bytes() == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keyring.json"]


def test_keys_commands_refuse_what_they_cannot_do_in_one_line_and_change_nothing(
    cli: Cli, new_host: Callable[[str], Host]
) -> None:
    # given a host with no ring, and one whose ring comes from SECSTATE_KEYS
    bare = new_host("bare")
    env = new_host("env")
    env.extra = {"SECSTATE_KEYS": f"k1:{b64key()}"}
    # when / then
    assert_refused(cli(bare, "keys", "export"), "no key ring on this host", "nothing to export")
    assert_refused(cli(bare, "keys", "activate", "k1"), "run `secstate keys init` first")
    assert_refused(cli(bare, "keys", "remove", "k1"), "run `secstate keys init` first")
    assert_refused(cli(bare, "keys", "generate", "--add"), "run `secstate keys init` first")
    assert_refused(cli(env, "keys", "init"), "the key ring comes from SECSTATE_KEYS")
    assert_refused(cli(env, "keys", "activate", "k1"), "set SECSTATE_ACTIVE_KEY_ID=k1")
    assert_refused(cli(env, "keys", "remove", "k1"), "drop k1 from SECSTATE_KEYS")
    assert not bare.ring_file.exists()
    assert not env.ring_file.exists()
    # and a file ring refuses to drop its only, active key, or an id it does not hold
    cli.ok(bare, "keys", "init")
    ring = read_ring_file(bare.ring_file)
    before = bare.ring_file.read_bytes()
    assert_refused(cli(bare, "keys", "remove", ring.active), "is the active key")
    assert_refused(cli(bare, "keys", "remove", "k-none"), "key k-none is not in")
    assert bare.ring_file.read_bytes() == before
