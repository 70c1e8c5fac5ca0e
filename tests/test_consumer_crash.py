"""Consumer processes that die: run as ``python -m consumers reactions`` against the real
broker, killed with SIGKILL, on SQLite and PostgreSQL consumer stores.

* killed after a message's transaction but before its offset was committed: on restart
  the message is redelivered, recognised by its ce_id, and no action is queued twice;
* two processes of one group share the partitions; one is killed; the survivor takes its
  partitions over, and the combined output is complete, each action once.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from consumer_support import publish, store_location
from kafka_broker import KafkaBroker
from test_consumer_kafka import actions_of, committed, story
from util import wait_for

from consumers import ConsumerApp
from consumers import reactions as r
from consumers.__main__ import DELAY, KILL_AFTER

pytestmark = pytest.mark.slow


@pytest.fixture
def location(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    return store_location(backend, tmp_path, request)


@pytest.fixture
def app(location: str) -> Iterator[ConsumerApp]:
    consumer = r.open_app(location)
    consumer.setup()
    yield consumer
    consumer.store.close()


class Consumer:
    """One ``python -m consumers reactions`` process, its output in a log file."""

    def __init__(
        self,
        broker: KafkaBroker,
        topic: str,
        group: str,
        location: str,
        log: Path,
        *args: str,
        **env: str,
    ) -> None:
        self.log_path = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "consumers",
                    "reactions",
                    "--bootstrap",
                    broker.bootstrap,
                    "--topic",
                    topic,
                    "--group",
                    group,
                    "--store",
                    location,
                    "--session-timeout-ms",
                    "6000",
                    "--heartbeat-interval-ms",
                    "1000",
                    "--fetch-max-wait-ms",
                    "100",
                    *args,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **env},
            )

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def handled(self) -> list[str]:
        """The ce_ids the test hook saw this process handle."""
        return re.findall(r"test hook: handled (\S+)", self.log)

    def assignments(self) -> list[str]:
        return re.findall(r"partitions assigned: (.*)", self.log)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)


@pytest.fixture
def processes() -> Iterator[list[Consumer]]:
    started: list[Consumer] = []
    yield started
    for consumer in started:
        if consumer.proc.poll() is None:
            consumer.proc.kill()
            consumer.proc.wait(timeout=30)


def test_a_consumer_killed_after_its_effect_but_before_its_commit_does_nothing_twice(
    kafka_broker: KafkaBroker,
    app: ConsumerApp,
    location: str,
    tmp_path: Path,
    processes: list[Consumer],
) -> None:
    # given a story on a topic
    topic = kafka_broker.create_topic(1)
    told = story(2)
    publish(kafka_broker.bootstrap, topic, told.messages)
    group = f"crash-{uuid.uuid4().hex[:6]}"
    # when a consumer SIGKILLs itself right after its 5th message's transaction committed
    first = Consumer(
        kafka_broker, topic, group, location, tmp_path / "first.log", **{KILL_AFTER: "5"}
    )
    processes.append(first)
    assert first.wait(timeout=90) == -signal.SIGKILL, first.log
    # then the effects of its transaction (at least those five messages) are stored, and
    # no offset was committed
    stored = len(app.handled_ids())
    assert stored >= 5
    assert committed(kafka_broker, group) == 0
    kept = actions_of(app.store)
    assert kept
    # when it starts again
    second = Consumer(kafka_broker, topic, group, location, tmp_path / "second.log")
    processes.append(second)
    ids = {m.ce_id for m in told.messages}
    assert wait_for(
        lambda: app.handled_ids() == ids and app.status().count("duplicate") == stored,
        timeout=90,
    ), second.log
    assert second.stop() == 0, second.log
    # then those were redelivered and recognised, and every action is there once
    assert app.status().count("duplicate") == stored
    assert sorted(actions_of(app.store)) == sorted(told.expected)
    assert set(kept) <= set(actions_of(app.store))
    assert committed(kafka_broker, group) == len(told.messages)


def test_two_consumers_share_the_partitions_and_the_survivor_takes_over(
    kafka_broker: KafkaBroker,
    app: ConsumerApp,
    location: str,
    tmp_path: Path,
    processes: list[Consumer],
) -> None:
    # given a story of many accounts on four partitions
    topic = kafka_broker.create_topic(4)
    told = story(12)
    publish(kafka_broker.bootstrap, topic, told.messages)
    group = f"pair-{uuid.uuid4().hex[:6]}"
    # each handles ~10 messages a second, one a transaction: both have work to share
    slow = {DELAY: "0.1"}
    small = ("--transaction-size", "1", "--max-poll-records", "5")
    # when two consumers of one group start
    one = Consumer(kafka_broker, topic, group, location, tmp_path / "one.log", *small, **slow)
    two = Consumer(kafka_broker, topic, group, location, tmp_path / "two.log", *small, **slow)
    processes.extend([one, two])
    # then both get partitions and handle messages
    assert wait_for(lambda: len(one.handled()) >= 3 and len(two.handled()) >= 3, timeout=90), (
        one.log + two.log
    )
    # when one of them is killed
    two.kill()
    killed_at = time.monotonic()
    ids = {m.ce_id for m in told.messages}
    assert len(app.handled_ids()) < len(ids)  # work was left on its partitions
    # then the survivor takes its partitions over and everything is handled
    assert wait_for(lambda: app.handled_ids() == ids, timeout=120), one.log
    took_over_s = time.monotonic() - killed_at
    assert one.stop() == 0, one.log
    assert len(one.assignments()[-1].split(", ")) == 4, one.assignments()
    # and the combined output is complete, each action once
    assert set(one.handled()) | set(two.handled()) == ids
    assert sorted(actions_of(app.store)) == sorted(told.expected)
    status = app.status()
    assert status.count("handled") + status.count("no_handler") == len(told.messages)
    assert status.count("gaps") == 0
    print(f"survivor finished {took_over_s:.1f} s after the kill")
