"""The Kafka half as a new user runs it, as processes: ``secstate demo``, then
``secstate relay create-topic`` and ``relay run``, then ``secstate consume reactions`` and
``consume state-replica``; ``consume reactions --show`` lists the demo's forced-reset
revocations and notifications. On SQLite and PostgreSQL stores, no key ring for any of
the Kafka commands.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from kafka_broker import KafkaBroker
from util import wait_for

from secstate.demo import DemoOptions, run_demo
from secstate.settings import Settings

REPO = Path(__file__).resolve().parent.parent
SECSTATE = str(Path(sys.executable).with_name("secstate"))


def env_of(settings: Settings, broker: KafkaBroker, topic: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECSTATE_")}
    env.update(
        SECSTATE_HOME=str(settings.home),
        SECSTATE_KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap,
        SECSTATE_EVENTS_TOPIC=topic,
        SECSTATE_EVENTS_TOPIC_PARTITIONS="3",
        SECSTATE_CONSUMER_GROUP_PREFIX=f"t{uuid.uuid4().hex[:6]}",
        SECSTATE_CONSUMER_SESSION_TIMEOUT_MS="6000",
        SECSTATE_CONSUMER_HEARTBEAT_INTERVAL_MS="1000",
        SECSTATE_CONSUMER_FETCH_MAX_WAIT_MS="100",
        SECSTATE_KEYS="",  # none of these commands may need the key ring
        COLUMNS="200",
    )
    if settings.database_url is not None:
        url = settings.database_url.get_secret_value()
        env["SECSTATE_DATABASE_URL"] = url
        env["SECSTATE_CONSUMER_DATABASE_URL"] = url
    return env


def secstate(
    env: dict[str, str], *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SECSTATE, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def status_of(env: dict[str, str], name: str) -> dict[str, Any]:
    done = secstate(env, "consume", name, "--status", "--json")
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def test_demo_relay_and_both_consumers_from_the_command_line(
    settings: Settings, kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    # given the demo in the store, and a topic created deliberately by the relay's command
    run_demo(settings, DemoOptions(accounts=4, weeks=3, employees=5))
    topic = f"events-{uuid.uuid4().hex[:8]}"
    env = env_of(settings, kafka_broker, topic)
    created = secstate(env, "relay", "create-topic", "--json")
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout) == {
        "topic": topic,
        "created": True,
        "partitions": 3,
        "replication_factor": 1,
    }
    # when the relay publishes the log
    relayed = secstate(env, "relay", "run", "--once")
    assert relayed.returncode == 0, relayed.stderr
    status = json.loads(secstate(env, "relay", "status", "--json").stdout)
    assert status["state"] == "caught up"
    assert status["lag"] == 0
    assert status["topic"] == topic
    count = status["position"]  # positions have no gaps here: one per event
    # and both consumers run until they have handled every event
    logs = {name: (tmp_path / f"{name}.log").open("w") for name in ("reactions", "state-replica")}
    running = {
        name: subprocess.Popen(
            [SECSTATE, "consume", name], cwd=REPO, env=env, stdout=log, stderr=log
        )
        for name, log in logs.items()
    }
    try:
        for name in running:
            assert wait_for(
                lambda name=name: (
                    sum(
                        v
                        for k, v in status_of(env, name)["counters"].items()
                        if k in ("handled", "no_handler")
                    )
                    >= count
                ),
                timeout=120,
                interval=1.0,
            ), (tmp_path / f"{name}.log").read_text()
    finally:
        for process in running.values():
            process.send_signal(signal.SIGTERM)
        codes = {name: p.wait(60) for name, p in running.items()}
        for log in logs.values():
            log.close()
    # then both stopped cleanly
    assert codes == {"reactions": 0, "state-replica": 0}, [
        (tmp_path / f"{n}.log").read_text() for n in codes
    ]
    # and reactions lists the forced reset's session revocations and notifications
    shown = secstate(env, "consume", "reactions", "--show", "--json")
    assert shown.returncode == 0, shown.stderr
    actions = json.loads(shown.stdout)
    reset = [a for a in actions if a["event_type"] == "User.PasswordResetRequired"]
    assert {a["kind"] for a in reset} == {"revoke_user_sessions", "notify_customer"}
    table = secstate(env, "consume", "reactions", "--show", "--kind", "revoke_user_sessions")
    assert table.returncode == 0, table.stderr
    assert "revoke_user_sessions" in table.stdout
    # and the replica lists the demo's accounts, and each one's users
    accounts = json.loads(secstate(env, "consume", "state-replica", "--show", "--json").stdout)
    assert len(accounts) >= 4
    one = secstate(
        env, "consume", "state-replica", "--show", "--account", accounts[0]["name"], "--json"
    )
    assert one.returncode == 0, one.stderr
    assert json.loads(one.stdout)["account"]["name"] == accounts[0]["name"]


def test_consumer_commands_refuse_bad_names_and_missing_kafka_clearly(
    settings: Settings, kafka_broker: KafkaBroker
) -> None:
    env = env_of(settings, kafka_broker, "unused")
    # an unknown consumer is named, with the known ones
    unknown = secstate(env, "consume", "nope")
    assert unknown.returncode != 0
    assert "unknown consumer 'nope'" in unknown.stderr
    assert "reactions, state-replica" in unknown.stderr
    # without Kafka settings, running a consumer or the relay says what is missing
    del env["SECSTATE_KAFKA_BOOTSTRAP_SERVERS"]
    for args in (("consume", "reactions"), ("relay", "run", "--once")):
        missing = secstate(env, *args)
        assert missing.returncode != 0
        assert "SECSTATE_KAFKA_BOOTSTRAP_SERVERS" in missing.stderr
    # and a bad --kind is refused before anything runs
    bad = secstate(env, "consume", "reactions", "--show", "--kind", "\x1b[31mred")
    assert bad.returncode != 0
    assert "\x1b" not in bad.stderr
    assert "--kind" in bad.stderr
