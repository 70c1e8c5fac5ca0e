"""Build the ledger (and the environments of its followers) from Settings."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from domain.context import Clock
from domain.ledger import Ledger
from domain.reader import LedgerReader
from domain.secrets import ApiKeyCodec, Argon2Parameters, KeyRing, LazyKeyRing, PasswordHasher
from secstate import keyring
from secstate.keyring import sealed_key_ids
from secstate.settings import Settings

if TYPE_CHECKING:
    import psycopg
from store.files import private_dir, private_sqlite_file
from store.log import log_store
from store.setup import StoreConfig, ensure_ledger_tables
from store.setup import ensure_postgres_schema as _ensure_postgres_schema
from store.setup import postgres_connection as _postgres_connection
from store.setup import postgres_schema as _postgres_schema
from store.viewdb import SQLITE_VIEW_LOCK_TIMEOUT, ViewDB


def store_config(settings: Settings) -> StoreConfig:
    """Where the settings say the store is, as the ``store`` package takes it."""
    return StoreConfig(
        home=settings.home,
        postgres=settings.postgres_params() if settings.uses_postgres else None,
        sqlite_lock_timeout=settings.sqlite_lock_timeout,
    )


def ensure_home(settings: Settings) -> Path:
    """The data directory, created 0700 or checked and tightened (``store.files``)."""
    return private_dir(settings.home, "SECSTATE_HOME")


def postgres_schema(settings: Settings) -> str:
    """The configured schema, refused unless a plain lower-case name."""
    return _postgres_schema(store_config(settings))


def postgres_connection(settings: Settings) -> psycopg.Connection[Any]:
    """An autocommit connection of its own to the settings' database."""
    return _postgres_connection(store_config(settings))


def ensure_postgres_schema(settings: Settings) -> None:
    _ensure_postgres_schema(store_config(settings))


def store_env(settings: Settings, sqlite_file: str) -> dict[str, str]:
    """Persistence settings for one application or follower (its own SQLite file)."""
    if settings.uses_postgres:
        env = settings.postgres_params()
        env["PERSISTENCE_MODULE"] = "eventsourcing.postgres"
        env["POSTGRES_ENABLE_DB_FUNCTIONS"] = "no"  # on, it drops tracking records (9.5.6)
        return env
    path = private_sqlite_file(ensure_home(settings) / sqlite_file)
    return {
        "PERSISTENCE_MODULE": "eventsourcing.sqlite",
        "SQLITE_DBNAME": str(path),
        "SQLITE_LOCK_TIMEOUT": str(settings.sqlite_lock_timeout),
    }


def ledger_env(settings: Settings) -> dict[str, str]:
    return store_env(settings, "ledger.sqlite3")


def load_keyring(settings: Settings, ledger: Ledger | None = None) -> KeyRing:
    """This host's key ring, from SECSTATE_KEYS or keyring.json in home; a first one is
    created only where ``secstate.keyring``'s creation rule allows. ``ledger`` is the
    store to check for sealed values (a short-lived one is opened if it is not given)."""

    def usage() -> Counter[str]:
        if ledger is not None:
            return sealed_key_ids(ledger)
        store = build_ledger(settings)
        try:
            return sealed_key_ids(store)
        finally:
            store.close()

    return keyring.load_keyring(settings, usage)


def build_hasher(settings: Settings) -> PasswordHasher:
    return PasswordHasher(
        Argon2Parameters(
            time_cost=settings.argon2_time_cost,
            memory_cost_kib=settings.argon2_memory_kib,
            parallelism=settings.argon2_parallelism,
        )
    )


def build_ledger(settings: Settings, clock: Clock | None = None) -> Ledger:
    """The ledger on the configured store, its tables created if this is the store's
    first use (once, under the setup lock: ``store.setup.ensure_ledger_tables``)."""
    if settings.uses_postgres:
        postgres_schema(settings)  # refuse a bad name before it goes anywhere
    env = ledger_env(settings)
    env["CREATE_TABLE"] = "no"  # the library would run its DDL in every process
    # The ring is loaded when something first seals or opens a secret: readers need none.
    ledger = Ledger(
        env,
        log=log_store,
        keyring=LazyKeyRing(lambda: load_keyring(settings, ledger)),
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
    try:
        ensure_ledger_tables(store_config(settings), ledger)
    except BaseException:
        ledger.close()
        raise
    return ledger


def build_reader(settings: Settings) -> LedgerReader:
    """The ledger's log and aggregates for a reader (a follower, ``state --at``,
    ``history``): no key ring is ever loaded or needed, nothing can be sealed or opened."""
    if settings.uses_postgres:
        postgres_schema(settings)
    env = ledger_env(settings)
    env["CREATE_TABLE"] = "no"
    reader = LedgerReader(env, log=log_store)
    try:
        ensure_ledger_tables(store_config(settings), reader)
    except BaseException:
        reader.close()
        raise
    return reader


def open_view_db(settings: Settings, view_name: str) -> ViewDB:
    """Where a view lives: its own SQLite file, or the ledger's PostgreSQL schema. Its
    tables are made by its ``Follower`` (``setup``), only if missing."""
    if settings.uses_postgres:
        postgres_schema(settings)
        return ViewDB("postgres", postgres=settings.postgres_params())
    views = private_dir(ensure_home(settings) / "views", "the views directory")
    return ViewDB(
        "sqlite",
        sqlite_path=private_sqlite_file(views / f"{view_name}.sqlite3"),
        lock_timeout=max(float(settings.sqlite_lock_timeout), SQLITE_VIEW_LOCK_TIMEOUT),
    )
