"""Build the ledger (and the environments of its followers) from Settings."""

from __future__ import annotations

import base64
import json
import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from domain.context import Clock
from domain.errors import SecretKeyError
from domain.ledger import Ledger
from domain.secrets import ApiKeyCodec, Argon2Parameters, KeyRing, PasswordHasher
from projections.base import ViewDB
from secstate.settings import Settings

if TYPE_CHECKING:
    import psycopg

KEYRING_FILE = "keyring.json"


def ensure_home(settings: Settings) -> Path:
    settings.home.mkdir(parents=True, exist_ok=True, mode=0o700)
    return settings.home


def ensure_postgres_schema(settings: Settings) -> None:
    """eventsourcing creates tables but not the schema they live in."""
    params = settings.postgres_params()
    schema = params.get("POSTGRES_SCHEMA")
    if not schema:
        return
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", schema):
        raise ValueError(f"PostgreSQL schema name {schema!r} must match [a-z_][a-z0-9_]*")
    with postgres_connection(settings) as conn:
        conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')


def postgres_connection(settings: Settings) -> psycopg.Connection[Any]:
    """An autocommit connection to the settings' database (not the pool's)."""
    import psycopg

    params = settings.postgres_params()
    return psycopg.connect(
        dbname=params["POSTGRES_DBNAME"],
        host=params["POSTGRES_HOST"],
        port=int(params["POSTGRES_PORT"]),
        user=params["POSTGRES_USER"],
        password=params["POSTGRES_PASSWORD"] or None,
        autocommit=True,
    )


def store_env(settings: Settings, sqlite_file: str) -> dict[str, str]:
    """Persistence settings for one application or follower (its own SQLite file)."""
    if settings.uses_postgres:
        env = settings.postgres_params()
        env["PERSISTENCE_MODULE"] = "eventsourcing.postgres"
        env["POSTGRES_ENABLE_DB_FUNCTIONS"] = "no"  # on, it drops tracking records (9.5.6)
        return env
    home = ensure_home(settings)
    return {
        "PERSISTENCE_MODULE": "eventsourcing.sqlite",
        "SQLITE_DBNAME": str(home / sqlite_file),
        "SQLITE_LOCK_TIMEOUT": str(settings.sqlite_lock_timeout),
    }


def ledger_env(settings: Settings) -> dict[str, str]:
    return store_env(settings, "ledger.sqlite3")


def load_keyring(settings: Settings) -> KeyRing:
    """From SECSTATE_KEYS, else from the key ring file in home (created 0600 on first use)."""
    if settings.keys is not None:
        keys = parse_keys(settings.keys.get_secret_value())
        active = settings.active_key_id or sorted(keys)[-1]
        return KeyRing(keys, active)
    path = ensure_home(settings) / KEYRING_FILE
    if not path.exists():
        key_id = "k" + datetime.now(UTC).strftime("%Y%m%d")
        data = {
            "active": key_id,
            "keys": {key_id: base64.b64encode(KeyRing.generate_key()).decode()},
        }
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
    try:
        data = json.loads(path.read_text())
        keys = {k: base64.b64decode(v) for k, v in data["keys"].items()}
        return KeyRing(keys, settings.active_key_id or data["active"])
    except (ValueError, KeyError, TypeError) as e:
        raise SecretKeyError(f"key ring file {path} is unreadable: {e}") from None


def parse_keys(text: str) -> dict[str, bytes]:
    keys = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key_id, sep, b64 = part.partition(":")
        if not sep:
            raise SecretKeyError("SECSTATE_KEYS entries must look like KEY_ID:BASE64")
        try:
            keys[key_id] = base64.b64decode(b64, validate=True)
        except ValueError:
            raise SecretKeyError(f"key {key_id!r} in SECSTATE_KEYS is not valid base64") from None
    if not keys:
        raise SecretKeyError("SECSTATE_KEYS holds no keys")
    return keys


def build_hasher(settings: Settings) -> PasswordHasher:
    return PasswordHasher(
        Argon2Parameters(
            time_cost=settings.argon2_time_cost,
            memory_cost_kib=settings.argon2_memory_kib,
            parallelism=settings.argon2_parallelism,
        )
    )


def build_ledger(settings: Settings, clock: Clock | None = None) -> Ledger:
    if settings.uses_postgres:
        ensure_postgres_schema(settings)
    return Ledger(
        ledger_env(settings),
        keyring=load_keyring(settings),
        hasher=build_hasher(settings),
        clock=clock,
        api_key_codec=ApiKeyCodec(settings.api_key_prefix),
        lockout_threshold=settings.lockout_threshold,
        max_retries=settings.max_retries,
        bulk_batch_size=settings.bulk_batch_size,
        dkim_rsa_bits=settings.dkim_rsa_bits,
        totp_issuer=settings.totp_issuer,
        api_key_use_interval=timedelta(seconds=settings.api_key_use_interval),
    )


def open_view_db(settings: Settings, view_name: str) -> ViewDB:
    """Where a view lives: its own SQLite file, or the ledger's PostgreSQL schema."""
    if settings.uses_postgres:
        ensure_postgres_schema(settings)
        return ViewDB("postgres", postgres=settings.postgres_params())
    return ViewDB("sqlite", sqlite_path=ensure_home(settings) / "views" / f"{view_name}.sqlite3")
