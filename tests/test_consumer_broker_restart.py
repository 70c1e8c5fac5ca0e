"""The broker stopped (SIGKILL) under a running consumer and started again, on durable
storage: the consumer waits, reconnects, goes on from its committed offsets, and every
action is queued once; nothing published before or after the outage is lost."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from consumer_support import publish, store_location
from kafka_broker import DurableKafkaBroker
from test_consumer_kafka import OPTIONS, actions_of, committed, stop, story
from util import wait_for

from consumers import ConsumerApp, Delivered
from consumers import reactions as r
from consumers.runner import run_in_thread

pytestmark = pytest.mark.slow


@pytest.fixture
def app(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ConsumerApp]:
    consumer = r.open_app(store_location(backend, tmp_path, request))
    yield consumer
    consumer.store.close()


def test_a_consumer_rides_out_a_broker_restart_with_nothing_lost_or_doubled(
    durable_kafka_broker: DurableKafkaBroker, app: ConsumerApp
) -> None:
    broker = durable_kafka_broker
    # given a story half published, and a consumer working through it slowly
    topic = broker.create_topic(2)
    told = story(8)
    half = len(told.messages) // 2
    publish(broker.bootstrap, topic, told.messages[:half])

    def slowly(delivered: Delivered[Any], result: Any) -> None:
        time.sleep(0.02)

    options = replace(OPTIONS, transaction_size=5, max_poll_records=10, after_transaction=slowly)
    group = f"restart-{uuid.uuid4().hex[:6]}"
    running = run_in_thread(app, broker.bootstrap, topic, group, options=options)
    assert wait_for(lambda: len(app.handled_ids()) >= 10, timeout=60)
    # when the broker is killed mid-stream, stays down a while, and comes back
    broker.stop(kill=True)
    time.sleep(3)
    broker.start()
    # and the rest of the story is published after it is back
    publish(broker.bootstrap, topic, told.messages[half:])
    # then the consumer handles everything, and every action is there once
    ids = {m.ce_id for m in told.messages}
    assert wait_for(lambda: app.handled_ids() == ids, timeout=120), len(app.handled_ids())
    stop(running)
    assert sorted(actions_of(app.store)) == sorted(told.expected)
    status = app.status()
    assert status.count("handled") + status.count("no_handler") == len(told.messages)
    assert status.count("gaps") == 0
    # and its offsets are committed to the end
    assert committed(broker, group) == len(told.messages)
