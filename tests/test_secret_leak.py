"""No secret in clear anywhere in the store, on SQLite and on PostgreSQL.

The scenario touches every kind of secret, then dumps everything the store holds
(raw database files incl. WAL/SHM and an SQL dump; or pg_dump of the schema) and
searches it for each secret in every encoding it could plausibly be stored in.
Sanity checks prove the search can see what is stored (public values are found).
"""

from __future__ import annotations

import base64
import re
import secrets
import sqlite3
import subprocess
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import psycopg
from cryptography.hazmat.primitives import serialization

from domain import commands as c
from domain.context import RequestContext, SteppedClock
from domain.ledger import Ledger
from domain.secrets import TOTP_PERIOD, totp_code_at_step, totp_step
from secstate.settings import Settings


@dataclass
class Scenario:
    """Every secret the scenario handled (label -> bytes) and public values it made."""

    secrets: dict[str, bytes] = field(default_factory=dict)
    public: dict[str, bytes] = field(default_factory=dict)

    def secret(self, label: str, value: str | bytes) -> None:
        self.secrets[label] = value.encode() if isinstance(value, str) else value

    def binary_secret(self, label: str, raw: bytes) -> None:
        """Raw bytes in every text form a careless serialiser might use."""
        self.secret(f"{label} (hex)", raw.hex())
        self.secret(f"{label} (HEX)", raw.hex().upper())
        self.secret(f"{label} (base64)", base64.b64encode(raw).rstrip(b"="))
        self.secret(f"{label} (base64url)", base64.urlsafe_b64encode(raw).rstrip(b"="))


def run_scenario(ledger: Ledger, ctx: RequestContext, clock: SteppedClock) -> Scenario:
    found = Scenario()
    first = f"Leak-{secrets.token_hex(6)}-pw1"
    second = f"Leak-{secrets.token_hex(6)}-pw2"
    found.secret("first password", first)
    found.secret("second password", second)

    ledger.open_account(c.parse_command(c.OpenAccount, name="acme"), ctx)
    ledger.register_user(
        c.parse_command(
            c.RegisterUser, account="acme", username="alice", email="a@mail.example", password=first
        ),
        ctx,
    )
    ledger.set_password(c.parse_command(c.SetPassword, username="alice", password=second), ctx)
    ledger.login(c.parse_command(c.Login, username="alice", password=second), ctx)

    # API key: the token and its secret part
    issued = ledger.create_api_key(
        c.parse_command(c.CreateApiKey, account="acme", name="ci", scopes=["send"]), ctx
    )
    presented = ledger.api_key_codec.parse(issued.token)
    found.secret("API token", issued.token)
    found.secret("API secret", presented.secret)
    found.public["API key id"] = issued.key_id.encode()
    ledger.authenticate_api_key(c.parse_command(c.AuthenticateApiKey, token=issued.token), ctx)

    # TOTP: start + confirm, then a login with a code
    enrolment = ledger.start_totp_enrolment(
        c.parse_command(c.StartTotpEnrolment, username="alice"), ctx
    )
    found.secret("TOTP seed (base32)", enrolment.seed)
    found.secret("TOTP provisioning URI", enrolment.uri)
    found.binary_secret("TOTP seed raw", base64.b32decode(enrolment.seed))
    step = totp_step(clock.now())
    ledger.confirm_totp_enrolment(
        c.parse_command(
            c.ConfirmTotpEnrolment,
            username="alice",
            factor_id=enrolment.factor_id,
            code=totp_code_at_step(enrolment.seed, step),
        ),
        ctx,
    )
    found.public["factor id"] = enrolment.factor_id.encode()
    clock.set(clock.now() + timedelta(seconds=TOTP_PERIOD))
    ledger.login(
        c.parse_command(
            c.Login,
            username="alice",
            password=second,
            totp_code=totp_code_at_step(enrolment.seed, step + 1),
        ),
        ctx,
    )

    # recovery codes, one of them used
    codes = ledger.generate_recovery_codes(
        c.parse_command(c.GenerateRecoveryCodes, username="alice"), ctx
    )
    for i, code in enumerate(codes):
        found.secret(f"recovery code {i}", code)
        found.secret(f"recovery code {i} (no dashes)", code.replace("-", ""))
    ledger.login(
        c.parse_command(c.Login, username="alice", password=second, recovery_code=codes[0]), ctx
    )

    # DKIM keys of both algorithms
    for selector, algorithm in (("s1", "rsa-sha256"), ("s2", "ed25519-sha256")):
        key = ledger.generate_dkim_key(
            c.parse_command(
                c.GenerateDkimKey,
                account="acme",
                domain="mail.acme.example",
                selector=selector,
                algorithm=algorithm,
            ),
            ctx,
        )
        found.public[f"DKIM public key {selector}"] = key.public_key.encode()
        pem = ledger.get_account("acme").open_dkim_private_key(
            "mail.acme.example", selector, ledger.keyring
        )
        add_private_key(found, f"DKIM {selector}", pem)
    found.public["argon2 PHC prefix"] = b"$argon2id$"
    found.public["sealed value prefix"] = f"v1.{ledger.keyring.active_key_id}.".encode()
    return found


def add_private_key(found: Scenario, label: str, pem: bytes) -> None:
    found.secret(f"{label} PEM", pem)
    found.secret(f"{label} PEM (JSON-escaped)", pem.decode().replace("\n", "\\n"))
    body_lines = [line for line in pem.splitlines() if not line.startswith(b"-----")]
    for i, line in enumerate(body_lines):
        if len(line) >= 16:  # a short tail line could match by chance
            found.secret(f"{label} PEM body line {i}", line)
    private = serialization.load_pem_private_key(pem, password=None)
    der = private.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    found.binary_secret(f"{label} DER", der)
    assert b"".join(body_lines) == base64.b64encode(der)  # the lines cover all of it


# --- dumping everything stored --------------------------------------------------------------

_SQLITE_BLOB = re.compile(rb"X'([0-9A-Fa-f]+)'")
_PG_BYTEA = re.compile(rb"\\\\?x([0-9a-f]+)")


def decode_hex_runs(text: bytes, pattern: re.Pattern[bytes]) -> list[bytes]:
    return [bytes.fromhex(m.group(1).decode()) for m in pattern.finditer(text)]


def dump_sqlite(settings: Settings) -> list[bytes]:
    files = [p for p in settings.home.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert "ledger.sqlite3" in names
    assert "ledger.sqlite3-wal" in names  # WAL mode: recent pages live here
    dumps = [p.read_bytes() for p in files]
    for path in files:
        if path.suffix == ".sqlite3":
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
                text = "\n".join(conn.iterdump()).encode()
            conn.close()
            dumps.append(text)
            dumps.extend(decode_hex_runs(text, _SQLITE_BLOB))
    return dumps


def dump_postgres(settings: Settings) -> list[bytes]:
    params = settings.postgres_params()
    schema = params["POSTGRES_SCHEMA"]
    dump = subprocess.run(
        [
            "pg_dump",
            "--host",
            params["POSTGRES_HOST"],
            "--port",
            params["POSTGRES_PORT"],
            "--username",
            params["POSTGRES_USER"],
            "--no-password",
            f"--schema={schema}",
            params["POSTGRES_DBNAME"],
        ],
        check=True,
        capture_output=True,
        timeout=60,
    ).stdout
    assert b"COPY " in dump
    dumps = [dump, *decode_hex_runs(dump, _PG_BYTEA)]
    # And every row of every table, as PostgreSQL renders it as text.
    with psycopg.connect(
        dbname=params["POSTGRES_DBNAME"],
        host=params["POSTGRES_HOST"],
        port=int(params["POSTGRES_PORT"]),
        user=params["POSTGRES_USER"],
    ) as conn:
        tables = [
            row[0]
            for row in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
                (schema,),
            )
        ]
        assert tables
        for table in tables:
            query = f'SELECT t::text FROM "{schema}"."{table}" t'  # noqa: S608 - names from the catalogue
            rows = "\n".join(r[0] for r in conn.execute(query)).encode()
            dumps.append(rows)
            dumps.extend(decode_hex_runs(rows, _PG_BYTEA))
    return dumps


def leaks(found: Scenario, dumps: list[bytes]) -> list[str]:
    return [label for label, value in found.secrets.items() if any(value in d for d in dumps)]


def missing_public(found: Scenario, dumps: list[bytes]) -> list[str]:
    return [label for label, value in found.public.items() if not any(value in d for d in dumps)]


# --- the test ---------------------------------------------------------------------------------


def test_no_secret_is_stored_in_clear(
    ledger: Ledger, ctx: RequestContext, clock: SteppedClock, settings: Settings, backend: str
) -> None:
    # given a scenario that handled every kind of secret
    found = run_scenario(ledger, ctx, clock)
    assert len(found.secrets) > 40
    # when everything stored is dumped
    dumps = dump_postgres(settings) if backend == "postgres" else dump_sqlite(settings)
    # then the dump does show what is stored (the search can see it) ...
    assert missing_public(found, dumps) == []
    # ... and no secret in any form
    assert leaks(found, dumps) == []


def test_the_leak_search_finds_a_planted_secret(
    ledger: Ledger, ctx: RequestContext, settings: Settings, backend: str
) -> None:
    # given a secret written into an event field on purpose (a label is stored as is)
    planted = f"planted-{secrets.token_hex(8)}"
    ledger.open_account(c.parse_command(c.OpenAccount, name="acme", display_name=planted), ctx)
    found = Scenario()
    found.secret("planted", planted)
    # when / then the same dump-and-search reports it
    dumps = dump_postgres(settings) if backend == "postgres" else dump_sqlite(settings)
    assert leaks(found, dumps) == ["planted"]


def test_binary_secret_is_searched_in_its_text_forms() -> None:
    raw = b"\x00\x01binary\xff" * 4
    found = Scenario()
    found.binary_secret("x", raw)
    assert leaks(found, [b"..." + raw.hex().encode() + b"..."]) == ["x (hex)"]
    assert leaks(found, [b'"' + base64.urlsafe_b64encode(raw) + b'"']) == ["x (base64url)"]
    assert leaks(found, [b'"' + base64.b64encode(raw) + b'"']) == ["x (base64)"]


def test_sqlite_dump_reads_files_on_disk(tmp_path: Path) -> None:
    # A planted blob in a stand-alone database is found through the hex of iterdump.
    path = tmp_path / "x.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (b BLOB)")
        conn.execute("INSERT INTO t VALUES (?)", (b"hidden-bytes",))
    conn.close()
    text = "\n".join(sqlite3.connect(path).iterdump()).encode()
    assert b"hidden-bytes" in b"".join(decode_hex_runs(text, _SQLITE_BLOB))
