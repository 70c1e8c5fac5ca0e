"""``secstate staff``: record an employee's access to an internal system."""

from __future__ import annotations

from typing import Annotated

import typer

from domain import commands as cmd
from secstate.cli.commanding import UsernameArg, out, perform
from secstate.cli.common import JsonOption, print_json

staff_app = typer.Typer(help="Staff access to internal systems.", no_args_is_help=True)


@staff_app.command("access")
def staff_access(
    username: UsernameArg,
    system: Annotated[
        str | None, typer.Option("--system", metavar="NAME", help="Internal system (required).")
    ] = None,
    resource: Annotated[
        str | None, typer.Option("--resource", metavar="TEXT", help="What was touched (required).")
    ] = None,
    action: Annotated[
        str, typer.Option("--action", metavar="ACTION", help="read, export, write or delete.")
    ] = "read",
    records: Annotated[
        int | None, typer.Option("--records", metavar="N", help="How many records (required).")
    ] = None,
    customers: Annotated[
        list[str] | None,
        typer.Option(
            "--customer", metavar="ACCOUNT", help="Customer account whose data it was (repeat)."
        ),
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Record an employee's access to an internal system (the breach trail)."""
    command, _ = perform(
        cmd.RecordStaffAccess,
        lambda ledger: ledger.record_staff_access,
        username=username,
        system=system,
        resource=resource,
        action=action,
        records=records,
        customer_accounts=customers or [],
    )
    if json_out:
        print_json(command.model_dump())
    else:
        whose = f" of {', '.join(command.customer_accounts)}" if command.customer_accounts else ""
        out(
            f"recorded: {command.username} {command.action} {command.records} record(s) "
            f"in {command.system}:{command.resource}{whose}"
        )


def register(app: typer.Typer) -> None:
    app.add_typer(staff_app, name="staff")
