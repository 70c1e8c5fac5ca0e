"""``python -m consumers reactions --bootstrap HOST:PORT --store PATH_OR_URL``: run a
consumer of this package on its own, without secstate's settings (``secstate consume``
is the same with the settings), or ``--show [--json]`` its actions.

SIGTERM and SIGINT stop it gracefully: the message in hand is finished, offsets are
committed, the consumer leaves its group.

For the crash tests, ``SECSTATE_CONSUMER_TEST_KILL_AFTER=N`` makes the process SIGKILL
itself right after the N-th message's transaction committed (before its offset is), and
``SECSTATE_CONSUMER_TEST_DELAY_S`` sleeps that long after each message.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

from consumers import reactions
from consumers.delivery import Delivered
from consumers.outcomes import Result
from consumers.runner import RunOptions

CONSUMERS = {reactions.NAME: (reactions.open_app, reactions.DEFAULT_GROUP)}
DEFAULT_TOPIC = "secstate.security-events"
KILL_AFTER = "SECSTATE_CONSUMER_TEST_KILL_AFTER"
DELAY = "SECSTATE_CONSUMER_TEST_DELAY_S"


def inert(text: str) -> str:
    """Text from a request (a key id, a domain) as it can be printed on a terminal: each
    character ``str.isprintable()`` refuses shown as an escape (the exact value is in
    ``--json``)."""
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text
    )


def _test_hook() -> Any:
    kill_after = int(os.environ.get(KILL_AFTER) or 0)
    delay = float(os.environ.get(DELAY) or 0)
    if not kill_after and not delay:
        return None
    done = [0]

    log = logging.getLogger("consumers")

    def after(delivered: Delivered[Any], result: Result) -> None:
        done[0] += 1
        log.info("test hook: handled %s (%s)", delivered.ce_id, result.outcome.value)
        if kill_after and done[0] >= kill_after:
            log.warning("test hook: SIGKILL after %d transactions (%s)", done[0], delivered.ce_id)
            os.kill(os.getpid(), signal.SIGKILL)
        if delay:
            time.sleep(delay)

    return after


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m consumers", description=__doc__.split("\n")[0])
    parser.add_argument("name", choices=sorted(CONSUMERS))
    parser.add_argument("--store", required=True, help="SQLite file or postgresql:// URL")
    parser.add_argument("--bootstrap", help="Kafka bootstrap servers, host:port[,host:port]")
    parser.add_argument("--topic", default=DEFAULT_TOPIC)
    parser.add_argument("--group", help="consumer group id (default: secstate-NAME)")
    parser.add_argument("--dead-letter-topic", help="default: TOPIC.dlq")
    parser.add_argument("--max-attempts", type=int, default=3)
    parser.add_argument("--transaction-size", type=int, default=200, help="messages at most")
    parser.add_argument("--max-poll-records", type=int, default=500)
    parser.add_argument("--session-timeout-ms", type=int)
    parser.add_argument("--heartbeat-interval-ms", type=int)
    parser.add_argument("--fetch-max-wait-ms", type=int)
    parser.add_argument("--show", action="store_true", help="list the actions and exit")
    parser.add_argument("--json", action="store_true", help="with --show: JSON lines")
    args = parser.parse_args(argv)
    opener, default_group = CONSUMERS[args.name]
    app = opener(args.store)
    try:
        if args.show:
            for action in reactions.list_actions(app.store):
                if args.json:
                    print(json.dumps(action.as_dict(), ensure_ascii=True, sort_keys=True))
                else:
                    print(
                        action.log_position,
                        action.kind,
                        action.target_kind,
                        inert(action.target),
                    )
            return 0
        if not args.bootstrap:
            parser.error("--bootstrap is required to run a consumer")
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s"
        )
        config = {
            name: value
            for name, value in (
                ("session_timeout_ms", args.session_timeout_ms),
                ("heartbeat_interval_ms", args.heartbeat_interval_ms),
                ("fetch_max_wait_ms", args.fetch_max_wait_ms),
            )
            if value is not None
        }
        options = RunOptions(
            dead_letter_topic=args.dead_letter_topic,
            max_attempts=args.max_attempts,
            transaction_size=args.transaction_size,
            max_poll_records=args.max_poll_records,
            consumer_config=config,
            after_transaction=_test_hook(),
        )
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        summary = app.run(
            args.bootstrap, args.topic, args.group or default_group, stop=stop, options=options
        )
        print(
            json.dumps(
                {
                    "messages": summary.messages,
                    "outcomes": dict(summary.outcomes),
                    "gaps": summary.gaps,
                    "dead_lettered": summary.dead_lettered,
                    "commits": summary.commits,
                }
            ),
            flush=True,
        )
        return 0
    finally:
        app.store.close()


if __name__ == "__main__":
    sys.exit(main())
