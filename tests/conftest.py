"""Shared fixtures: every store-backed test runs on SQLite and on PostgreSQL.

PostgreSQL tests isolate themselves in a fresh schema dropped afterwards. Under CI
(``CI=true``) a skipped PostgreSQL test fails the run: a green CI must mean both
backends were really exercised.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from domain.context import RequestContext, SteppedClock
from domain.ledger import Ledger
from secstate.bootstrap import build_ledger
from secstate.keyring import create_ring_file
from secstate.settings import Settings

POSTGRES_URL = os.environ.get(
    "SECSTATE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
START = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)

# Cheap argon2 and small RSA keys keep the suite fast; production defaults are tested
# separately where it matters (the benchmark records their cost).
FAST = {
    "argon2_time_cost": 1,
    "argon2_memory_kib": 1024,
    "argon2_parallelism": 1,
    "dkim_rsa_bits": 1024,
}


def _postgres_available() -> str | None:
    """None if reachable, else the reason."""
    try:
        import psycopg

        with psycopg.connect(POSTGRES_URL, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as e:
        return f"PostgreSQL at {POSTGRES_URL} is not reachable: {e}"
    return None


_PG_PROBLEM: str | bool | None = False  # False: not probed yet


def postgres_problem() -> str | None:
    global _PG_PROBLEM
    if _PG_PROBLEM is False:
        _PG_PROBLEM = _postgres_available()
    return _PG_PROBLEM if isinstance(_PG_PROBLEM, str) else None


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A fresh PostgreSQL schema, dropped after the test."""
    problem = postgres_problem()
    if problem:
        pytest.skip(problem)
    import psycopg

    schema = "t_" + secrets.token_hex(6)
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    yield schema
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def make_settings(
    backend: str,
    home: Path,
    schema: str | None = None,
    *,
    keyring: bool = True,
    **overrides: object,
) -> Settings:
    """Settings of a test store. A PostgreSQL store gets no key ring by itself, so its home
    is given one as an operator would (``secstate keys init``), unless ``keyring=False``."""
    values: dict[str, object] = {"home": home, **FAST, **overrides}
    if backend == "postgres":
        assert schema is not None
        values["database_url"] = f"{POSTGRES_URL}?schema={schema}"
    settings = Settings(**values)  # type: ignore[arg-type]
    if keyring and backend == "postgres" and settings.keys is None:
        with contextlib.suppress(FileExistsError):
            create_ring_file(settings)
    return settings


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def settings(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    schema = request.getfixturevalue("pg_schema") if backend == "postgres" else None
    return make_settings(backend, tmp_path / "home", schema)


@pytest.fixture
def clock() -> SteppedClock:
    return SteppedClock(START)


@pytest.fixture
def ledger(settings: Settings, clock: SteppedClock) -> Iterator[Ledger]:
    app = build_ledger(settings, clock=clock)
    yield app
    app.close()


@pytest.fixture
def ctx() -> RequestContext:
    return RequestContext(source_ip="198.51.100.10", user_agent="pytest")


# --- CI guard: PostgreSQL tests must not be skipped in CI --------------------------------

_skipped_postgres: list[str] = []
_ran_postgres: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "postgres" not in report.keywords:
        return
    if report.skipped:
        _skipped_postgres.append(report.nodeid)
    elif report.when == "call":
        _ran_postgres.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("CI", "").lower() not in ("1", "true", "yes"):
        return
    collected_postgres = _skipped_postgres or _ran_postgres
    if _skipped_postgres:
        print(
            f"\nCI FAILURE: {len(_skipped_postgres)} PostgreSQL test(s) were skipped in CI, "
            f"e.g. {_skipped_postgres[0]}. PostgreSQL must be running for CI."
        )
        session.exitstatus = 1
    elif collected_postgres and not _ran_postgres:
        session.exitstatus = 1
