"""Commands → the store → the relay → Kafka → both consumers, on SQLite and PostgreSQL:
the ``state-replica`` consumer, built from the topic alone, holds exactly the records of
secstate's own state view, and ``reactions`` queued each action once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from consumer_support import store_location
from kafka_broker import FAST_FETCH, FAST_GROUP_JOIN, KafkaBroker
from test_relay_kafka import relay_once, with_kafka
from util import wait_for

from consumers import ConsumerApp, RunOptions
from consumers import reactions as r
from consumers import state_replica as replica
from consumers.runner import run_in_thread
from domain.context import RequestContext
from domain.ledger import Ledger
from domain.reader import LedgerReader
from projections.state.storage import ACCOUNTS_TABLE, USERS_TABLE
from secstate.bootstrap import build_reader, open_view_db
from secstate.consuming import open_consumer
from secstate.demo import DemoOptions, run_demo
from secstate.runner import Runner
from secstate.settings import Settings

SECSTATE = str(Path(sys.executable).with_name("secstate"))
OPTIONS = RunOptions(
    consumer_config={**FAST_GROUP_JOIN, **FAST_FETCH}, backoff_s=0.05, max_backoff_s=0.2
)


def core_records(settings: Settings, reader: LedgerReader) -> dict[str, dict[str, Any]]:
    """The state view's records, after it caught up: what the replica must equal."""
    with Runner(settings, reader, ["state"]) as runner:
        runner.run(once=True)
    db = open_view_db(settings, "state")
    try:
        with db.reading() as tx:
            accounts = tx.query_all(f"SELECT account_id, record FROM {ACCOUNTS_TABLE}")  # noqa: S608 - constant table name
            users = tx.query_all(f"SELECT user_id, record FROM {USERS_TABLE}")  # noqa: S608 - constant table name
    finally:
        db.close()
    return {
        "accounts": {str(k): json.loads(v) for k, v in accounts},
        "users": {str(k): json.loads(v) for k, v in users},
    }


def consume(app: ConsumerApp, broker: KafkaBroker, topic: str, ids: set[str]) -> None:
    """Run ``app`` in a group of its own until it handled every one of ``ids``."""
    thread, stop, out = run_in_thread(
        app, broker.bootstrap, topic, f"{app.name}-{uuid.uuid4().hex[:6]}", options=OPTIONS
    )
    try:
        assert wait_for(lambda: ids <= app.handled_ids(), timeout=90), (
            f"{app.name} handled {len(app.handled_ids() & ids)} of {len(ids)}"
        )
    finally:
        stop.set()
        thread.join(60)
    assert "error" not in out, out.get("error")


def test_the_replica_built_from_kafka_equals_the_state_view_and_reactions_are_queued_once(
    settings: Settings,
    kafka_broker: KafkaBroker,
    backend: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    # given the demo's story in the store: passwords, TOTP, recovery codes, API keys,
    # allowlists, DKIM rotation, staff access, the breach and the forced reset
    run_demo(settings, DemoOptions(accounts=6, weeks=3, employees=5))
    reader = build_reader(settings)
    store = with_kafka(settings, kafka_broker.bootstrap, kafka_broker.create_topic(3))
    all_ids = {
        f"{uuid.UUID(str(row.originator_id))}:{row.originator_version}"
        for rows in reader.log_store.scan()
        for row in rows
    }
    # when the relay publishes the log and both consumers read the topic
    relay_once(store, reader)
    state_app = replica.open_app(store_location(backend, tmp_path, request))
    reactions_app = r.open_app(str(tmp_path / "reactions.db"))
    try:
        consume(state_app, kafka_broker, store.events_topic, all_ids)
        consume(reactions_app, kafka_broker, store.events_topic, all_ids)
        # then the replica holds exactly the state view's records
        replicated = replica.all_records(state_app.store)
        core = core_records(settings, reader)
        assert replicated["accounts"]
        assert replicated["users"]
        assert replicated == core
        # and an account's state reads back by name
        name = next(iter(core["accounts"].values()))["name"]
        assert replica.replica_account(state_app.store, name).account["name"] == name
        # and reactions queued the forced reset's revocations and notifications, once each
        actions = r.list_actions(reactions_app.store)
        kinds = {(a.kind, a.event_type) for a in actions}
        assert (r.REVOKE_USER_SESSIONS, "User.PasswordResetRequired") in kinds
        assert (r.NOTIFY_CUSTOMER, "User.PasswordResetRequired") in kinds
        assert len({(a.ce_id, a.kind) for a in actions}) == len(actions)
    finally:
        state_app.store.close()
        reactions_app.store.close()


HOSTILE = '\x1b]0;owned\x07\x1b[2J=HYPERLINK("http://evil.example")\u202e'


def test_attacker_text_that_went_through_kafka_is_inert_in_every_consumer_output(
    ledger: Ledger, settings: Settings, kafka_broker: KafkaBroker
) -> None:
    from consumer_support import publish

    from consumers.testing import message
    from contracts.payloads import AllowlistEntryAdded, ApiKeyCreated
    from domain import commands as c

    # given events recorded from a hostile user agent (kept as sent, bounded) ...
    hostile_ctx = RequestContext(source_ip="198.51.100.66", user_agent=HOSTILE)
    ledger.open_account(c.parse_command(c.OpenAccount, name="acme"), hostile_ctx)
    ledger.add_allowlist_entry(
        c.parse_command(c.AddAllowlistEntry, account="acme", cidr="203.0.113.0/24", label="=1+1"),
        hostile_ctx,
    )
    store = with_kafka(settings, kafka_broker.bootstrap, kafka_broker.create_topic(1))
    relay_once(store, ledger)
    ids = {
        f"{uuid.UUID(str(row.originator_id))}:{row.originator_version}"
        for rows in ledger.log_store.scan()
        for row in rows
    }
    # ... and messages forged on the topic by whoever can write to it, carrying escapes
    acme = uuid.UUID(str(next(iter(ledger.log_store.scan()))[0].originator_id))
    forged = [
        message(
            AllowlistEntryAdded(entry_id="e-forged", cidr="198.51.100.0/24", label=HOSTILE),
            aggregate_id=acme,
            account_id=acme,
            version=90,
            sequence=90,
            user_agent=HOSTILE,
        ),
        message(
            ApiKeyCreated(key_id="k-forged", name=HOSTILE, scopes=[HOSTILE], display=HOSTILE),
            aggregate_id=acme,
            account_id=acme,
            version=91,
            sequence=91,
        ),
    ]
    publish(kafka_broker.bootstrap, store.events_topic, forged)
    ids |= {m.ce_id for m in forged}
    # when both consumers take it in, on the databases `secstate consume` uses
    for name in ("reactions", "state-replica"):
        app = open_consumer(store, name)
        try:
            consume(app, kafka_broker, store.events_topic, ids)
        finally:
            app.store.close()
    # then every way of showing what they hold prints it inert
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECSTATE_")}
    env.update(SECSTATE_HOME=str(settings.home), COLUMNS="300", SECSTATE_KEYS="")
    if settings.database_url is not None:
        env["SECSTATE_DATABASE_URL"] = settings.database_url.get_secret_value()
    for args in (
        ("consume", "reactions", "--show"),
        ("consume", "reactions", "--show", "--json"),
        ("consume", "state-replica", "--show"),
        ("consume", "state-replica", "--show", "--account", "acme", "--json"),
        ("consume", "reactions", "--status"),
    ):
        shown = subprocess.run(
            [SECSTATE, *args], env=env, capture_output=True, text=True, timeout=60
        )
        assert shown.returncode == 0, shown.stderr
        for stream in (shown.stdout, shown.stderr):
            assert "\x1b" not in stream
            assert "\x07" not in stream
            assert "\u202e" not in stream
    # and the JSON still carries the text itself, escaped, not lost
    shown = subprocess.run(
        [SECSTATE, "consume", "reactions", "--show", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    names = [a["detail"].get("label") or a["detail"].get("name") for a in json.loads(shown.stdout)]
    assert HOSTILE in names
