"""``secstate demo``: replay the 2015 incident into the configured store."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TimeElapsedColumn,
)

from domain.errors import InvalidCommandError
from secstate.cli.common import (
    STATE,
    JsonOption,
    fmt_time,
    print_json,
    print_table,
    say,
)
from secstate.cli.render import err_console, inert, text_column
from secstate.demo import DemoSummary, parse_demo_options, run_demo


def demo(
    accounts: Annotated[
        int, typer.Option("--accounts", help="Customer accounts to generate (>= 1).")
    ] = 50,
    seed: Annotated[int, typer.Option("--seed", help="Fixes every random choice.")] = 2015,
    weeks: Annotated[
        int, typer.Option("--weeks", help="Weeks of 2015 activity, from 2015-01-05 (3-52).")
    ] = 8,
    employees: Annotated[
        int, typer.Option("--employees", help="Staff employees, e-042 among them (5-999).")
    ] = 15,
    batch_events: Annotated[
        int, typer.Option("--batch-events", help="Events per save: one transaction each.")
    ] = 10_000,
    dkim_algorithm: Annotated[
        str,
        typer.Option(
            "--dkim-algorithm",
            help="auto (RSA for up to 20 custom-key accounts, else ed25519), "
            "rsa-sha256 or ed25519-sha256.",
        ),
    ] = "auto",
    json_out: JsonOption = False,
) -> None:
    """Replay a 2015 staff-credential breach and its response into an EMPTY store.

    Staff organisation and employees, customer accounts with users, API keys, TOTP,
    recovery codes, allowlists and DKIM keys; weeks of activity; an attacker using
    employee e-042's password from 203.0.113.0/24 and 2001:db8::/32 on three nights;
    then the employee disabled, a forced password reset of every user and a DKIM key
    rotation. Synthetic users use a cheap argon2id profile (t=1, m=8 KiB, p=1).
    """
    try:
        options = parse_demo_options(
            accounts=accounts,
            seed=seed,
            weeks=weeks,
            employees=employees,
            batch_events=batch_events,
            dkim_algorithm=dkim_algorithm,
        )
    except InvalidCommandError as e:
        # Name the option as typed on the command line: "--batch-events", not "batch_events".
        raise InvalidCommandError(
            "secstate demo options", [_as_option(p) for p in e.problems]
        ) from None
    settings = STATE.settings
    with Progress(
        text_column("{task.description:<24}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
        disable=not err_console.is_terminal,
    ) as bar:
        tasks: dict[str, TaskID] = {}

        def progress(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(inert(phase), total=total)
            bar.update(tasks[phase], completed=done, total=total)

        summary = run_demo(settings, options, progress)
    if json_out:
        print_json(summary)
    else:
        show_summary(summary)


def _as_option(problem: str) -> str:
    name, sep, rest = problem.partition(":")
    return f"--{name.replace('_', '-')}{sep}{rest}" if sep else problem


def show_summary(s: DemoSummary) -> None:
    print_table(
        "secstate demo: the 2015 incident, replayed",
        ["what", "value"],
        [
            ("store", s.store),
            ("seed", s.seed),
            ("customer accounts / employees / users", f"{s.accounts} / {s.employees} / {s.users}"),
            ("domain time", f"{fmt_time(s.period_start)} .. {fmt_time(s.period_end)}"),
            ("events", f"{s.events_total:,}"),
            ("elapsed", f"{s.elapsed_seconds:.1f} s ({s.cpu_seconds:.1f} s CPU)"),
            ("events/s", f"{s.events_per_second:,.0f}"),
            ("synthetic password hashes", s.password_hasher),
            (
                f"password reset campaign {s.password_campaign}",
                f"{s.users_marked_for_reset} marked, {s.resets_completed} completed, "
                f"{s.users_still_needing_reset} users still need a reset",
            ),
            (
                f"DKIM rotation {s.dkim_campaign}",
                f"{s.dkim_keys_rotated} new keys ({s.dkim_algorithm}) active, "
                f"{s.dkim_keys_retired} old keys retired",
            ),
            (
                f"attacker ({s.attacker_employee})",
                f"{len(s.attacker_sessions)} nights, "
                f"{s.attacker_customer_accounts_touched} customer accounts touched, "
                f"{s.attacker_refused_after_disable} login(s) refused after the disable",
            ),
        ],
    )
    print_table(
        f"attacker sessions with {s.attacker_employee}'s credentials",
        [
            "day",
            "source IPs",
            "logins ok/failed",
            "accesses",
            "records read",
            "accounts",
            "systems",
        ],
        [
            (
                a.day,
                ", ".join(a.ips),
                f"{a.logins_succeeded}/{a.logins_failed}",
                a.accesses,
                a.records_read,
                a.customer_accounts_touched,
                ", ".join(a.systems),
            )
            for a in s.attacker_sessions
        ],
    )
    print_table(
        "events by type",
        ["type", "count"],
        [(name, f"{n:,}") for name, n in s.events_by_type.items()],
    )
    say(
        "Explore it: secstate timeline / state / history (same SECSTATE_HOME or "
        "SECSTATE_DATABASE_URL)."
    )


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
