"""``secstate relay``: publish every event to Kafka as a CloudEvent; see where it stands.

The relay is the follower ``relay`` (``secstate.relaying``): it runs from a reader with
no key ring, one process at a time per store (a second is refused at once), and keeps
its position in its own view database so ``relay status`` (and ``project status``)
read it without the broker.
"""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from producers.kafka import create_topic
from producers.publisher import PublishError
from secstate.bootstrap import store_config
from secstate.cli.common import STATE, JsonOption, print_json, print_table, say
from secstate.cli.following import (
    BatchSizeOption,
    finish,
    logging_to_stderr,
    status_json,
    stop_on_signals,
)
from secstate.cli.render import error
from secstate.followers import follower_report
from secstate.relaying import RELAY, events_topic, kafka_connection
from secstate.runner import Runner
from store.locks import exclusive

relay_app = typer.Typer(
    help="Publish every security event to Kafka (CloudEvents), in per-account order.",
    no_args_is_help=True,
)

EXIT_KAFKA = 2


@relay_app.command("run")
def relay_run(
    once: Annotated[
        bool, typer.Option("--once", help="Publish up to the log's head, then exit.")
    ] = False,
    batch_size: BatchSizeOption = 2000,
    poll_interval: Annotated[
        float,
        typer.Option(
            "--poll-interval",
            min=0.01,
            max=3600,
            help="Seconds between looks at the log when idle (PostgreSQL is woken by "
            "NOTIFY sooner).",
        ),
    ] = 0.5,
) -> None:
    """Follow the ledger and publish each event once acknowledged, until SIGINT/SIGTERM.

    While the broker is unreachable it backs off and keeps its position (one log line
    per change of state); on SIGINT/SIGTERM it finishes the batch in hand, waits for its
    acknowledgement, saves the position and exits.
    """
    settings = STATE.settings
    settings.kafka_servers()  # a clear error now if Kafka is not configured
    with (
        exclusive(store_config(settings), [f"follower-{RELAY}"]),
        logging_to_stderr(),
        Runner(
            settings, STATE.reader, [RELAY], batch_size=batch_size, poll_interval=poll_interval
        ) as runner,
        stop_on_signals(runner.stop),
    ):
        logging.getLogger("secstate.projections").info(
            "relaying %s to topic %s at %s",
            settings.describe_store(),
            settings.events_topic,
            ",".join(settings.kafka_servers()),
        )
        report = runner.run(once=once)
    finish(report, once)


@relay_app.command("status")
def relay_status(json_out: JsonOption = False) -> None:
    """The relay's position, the log head, the lag and the last error, if any."""
    settings = STATE.settings
    status = follower_report(settings, STATE.reader, RELAY)
    if json_out:
        print_json({**status_json(status), "topic": settings.events_topic})
        return
    print_table(
        "relay",
        ["state", "position", "head", "lag", "topic", "last error"],
        [
            (
                status.state,
                status.position,
                status.head,
                status.lag,
                settings.events_topic,
                f"{status.last_error.failed_at.isoformat()} {status.last_error.message}"
                if status.last_error
                else "",
            )
        ],
    )


@relay_app.command("create-topic")
def relay_create_topic(json_out: JsonOption = False) -> None:
    """Create the events topic with the configured partitions and replication factor
    (SECSTATE_EVENTS_TOPIC_*); an existing topic is left as it is."""
    settings = STATE.settings
    spec = events_topic(settings)
    try:
        created = create_topic(kafka_connection(settings, "admin"), spec)
    except PublishError as e:
        raise typer.Exit(_kafka_failed(str(e))) from None
    if json_out:
        print_json(
            {
                "topic": spec.name,
                "created": created,
                "partitions": spec.partitions,
                "replication_factor": spec.replication_factor,
            }
        )
        return
    if created:
        say(
            f"created topic {spec.name} ({spec.partitions} partitions, "
            f"replication factor {spec.replication_factor})"
        )
    else:
        say(f"topic {spec.name} exists already; left as it is")


def _kafka_failed(message: str) -> int:
    error(f"error: {message}")
    return EXIT_KAFKA


def register(app: typer.Typer) -> None:
    app.add_typer(relay_app, name="relay")
