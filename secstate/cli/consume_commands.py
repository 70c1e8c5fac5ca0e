"""``secstate consume NAME``: run one of secstate's downstream consumers, or show what it
holds. Each has its own consumer group and database, and none holds application keys.

- ``state-replica``: every account's security state, from the topic alone;
  ``--show [--account NAME]`` lists accounts, or one account's records.
- ``reactions``: the actions a platform takes (revoke sessions, drop grants, reload
  signing keys, notify customers); ``--show [--kind K] [--limit N]`` lists them.
- ``--status``: handled, duplicates, gaps and dead letters so far.
"""

from __future__ import annotations

import logging
import threading
from typing import Annotated, Any

import typer

from consumers import ConsumerApp
from consumers import reactions as r
from consumers import state_replica as replica
from secstate.cli.common import STATE, JsonOption, print_json, print_table, say
from secstate.cli.following import logging_to_stderr, stop_on_signals
from secstate.consuming import (
    CONSUMERS,
    check_consumer,
    connection_for,
    group_id,
    open_consumer,
    run_options,
)

EXIT_FAILED = 1


def consume(
    name: Annotated[str, typer.Argument(help="The consumer: " + ", ".join(sorted(CONSUMERS)))],
    show: Annotated[
        bool, typer.Option("--show", help="List what it holds (actions, accounts) and exit.")
    ] = False,
    status: Annotated[
        bool, typer.Option("--status", help="Show what it has handled so far and exit.")
    ] = False,
    account: Annotated[
        str | None, typer.Option("--account", help="state-replica --show: this account.")
    ] = None,
    kind: Annotated[
        str | None, typer.Option("--kind", help="reactions --show: only this kind of action.")
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, max=1_000_000, help="At most this many.")
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Run a downstream consumer of the events topic until SIGINT/SIGTERM (or --show).

    It reads in its own consumer group, handles each event once (by its CloudEvents id,
    in the same transaction as its effect), records gaps in an account's sequence, and
    sends what it cannot handle to the dead-letter topic with the reason.
    """
    check_consumer(name)
    if kind is not None and kind not in r.KINDS:
        raise typer.BadParameter(f"must be one of {', '.join(r.KINDS)}", param_hint="--kind")
    settings = STATE.settings
    if not (show or status):
        settings.kafka_servers()  # a clear error now if Kafka is not configured
    app = open_consumer(settings, name)
    try:
        if status:
            _show_status(app, json_out)
        elif show:
            _show(app, name, account, kind, limit, json_out)
        else:
            _run(app, name)
    finally:
        app.store.close()


def _run(app: ConsumerApp, name: str) -> None:
    settings = STATE.settings
    stop = threading.Event()
    with logging_to_stderr(), stop_on_signals(stop.set):
        logging.getLogger("secstate.projections").info(
            "consuming %s as group %s into %s",
            settings.events_topic,
            group_id(settings, name),
            app.store.where,
        )
        summary = app.run(
            connection_for(settings, name),
            settings.events_topic,
            group_id(settings, name),
            stop=stop,
            options=run_options(settings),
        )
    say(
        f"{name}: {summary.messages} messages, {summary.gaps} gaps, "
        f"{summary.dead_lettered} dead-lettered; offsets committed"
    )


def _show_status(app: ConsumerApp, json_out: bool) -> None:
    status = app.status()
    if json_out:
        print_json(status.as_dict())
        return
    print_table(
        f"consumer {status.consumer}",
        ["counter", "value"],
        sorted(status.counters.items()),
    )
    if status.gaps:
        print_table(
            "gaps",
            ["partition key", "expected", "got", "ce_id"],
            [(g.partition_key, g.expected, g.got, g.ce_id) for g in status.gaps],
        )


def _show(
    app: ConsumerApp,
    name: str,
    account: str | None,
    kind: str | None,
    limit: int | None,
    json_out: bool,
) -> None:
    if name == r.NAME:
        actions = r.list_actions(app.store, kind=kind, limit=limit)
        if json_out:
            print_json([a.as_dict() for a in actions])
            return
        print_table(
            "actions",
            ["position", "kind", "target", "event", "occurred at", "detail"],
            [
                (
                    a.log_position,
                    a.kind,
                    f"{a.target_kind}:{a.target}",
                    a.event_type,
                    a.occurred_at,
                    ", ".join(f"{k}={v}" for k, v in sorted(a.detail.items())),
                )
                for a in actions
            ],
        )
        return
    if account is not None:
        held = replica.replica_account(app.store, account)
        if json_out:
            print_json(held.as_dict())
            return
        print_table(
            f"account {account}",
            ["user", "role", "locked", "disabled", "reset required", "factors"],
            [
                (
                    u["username"],
                    u["role"],
                    u["locked"],
                    u["disabled"],
                    u["reset_required"],
                    len(u["factors"]),
                )
                for u in held.users
            ],
        )
        return
    records = replica.all_records(app.store)
    accounts: list[dict[str, Any]] = sorted(records["accounts"].values(), key=lambda a: a["name"])[
        :limit
    ]
    if json_out:
        print_json(
            [{"id": a["id"], "name": a["name"], "members": len(a["members"])} for a in accounts]
        )
        return
    print_table(
        "replicated accounts",
        ["account", "kind", "members", "api keys", "dkim keys"],
        [
            (a["name"], a["kind"], len(a["members"]), len(a["api_keys"]), len(a["dkim_keys"]))
            for a in accounts
        ],
    )


def register(app: typer.Typer) -> None:
    app.command("consume")(consume)
