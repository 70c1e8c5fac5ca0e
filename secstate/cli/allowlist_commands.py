"""``secstate allowlist`` and ``secstate access``: the control-panel IP allowlist of an
account, and the recorded decision whether an IP may enter."""

from __future__ import annotations

from typing import Annotated

import typer

from domain import commands as cmd
from secstate.cli.commanding import AccountArg, get_account, out, perform, reply, when
from secstate.cli.common import JsonOption, print_json, print_table

allowlist_app = typer.Typer(help="The account's control-panel IP allowlist.", no_args_is_help=True)
access_app = typer.Typer(help="Control-panel access decisions.", no_args_is_help=True)


@allowlist_app.command("add")
def allowlist_add(
    account: AccountArg,
    cidr: Annotated[str, typer.Argument(metavar="CIDR", help="Network, e.g. 203.0.113.0/24.")],
    label: Annotated[
        str | None, typer.Option("--label", metavar="TEXT", help="What it is (required).")
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Allow a network into the account's control panel."""
    command, entry_id = perform(
        cmd.AddAllowlistEntry,
        lambda ledger: ledger.add_allowlist_entry,
        account=account,
        cidr=cidr,
        label=label,
    )
    reply(
        json_out,
        {
            "account": command.account,
            "entry_id": entry_id,
            "cidr": command.cidr,
            "label": command.label,
        },
        f"added {command.cidr} ({command.label}) to {command.account}'s allowlist as {entry_id}",
    )


@allowlist_app.command("remove")
def allowlist_remove(
    account: AccountArg,
    entry: Annotated[str, typer.Argument(metavar="ENTRY_ID_OR_CIDR", help="Entry id or its CIDR.")],
    force: Annotated[
        bool,
        typer.Option("--force", help="Remove even if it locks the --source-ip out."),
    ] = False,
    json_out: JsonOption = False,
) -> None:
    """Remove an allowlist entry (refused if it would lock your --source-ip out)."""
    command, entry_id = perform(
        cmd.RemoveAllowlistEntry,
        lambda ledger: ledger.remove_allowlist_entry,
        account=account,
        entry=entry,
        force=force,
    )
    reply(
        json_out,
        {"account": command.account, "entry_id": entry_id, "forced": command.force},
        f"removed allowlist entry {entry_id} of {command.account}",
    )


@allowlist_app.command("list")
def allowlist_list(account: AccountArg, json_out: JsonOption = False) -> None:
    """List the account's allowlist (empty: every IP may enter)."""
    acc = get_account(account)
    rows = [
        {
            "entry_id": e.entry_id,
            "cidr": e.cidr,
            "label": e.label,
            "added_at": e.added_at,
            "added_by": e.added_by,
        }
        for e in sorted(acc.allowlist.values(), key=lambda e: e.added_at)
    ]
    if json_out:
        print_json({"account": acc.name, "entries": rows})
        return
    if not rows:
        out(f"{acc.name} has no allowlist: every IP may reach its control panel")
        return
    print_table(
        f"allowlist of {acc.name}",
        ["entry id", "cidr", "label", "added", "added by"],
        [(r["entry_id"], r["cidr"], r["label"], when(r["added_at"]), r["added_by"]) for r in rows],
    )


@access_app.command("check")
def access_check(
    account: AccountArg,
    ip: Annotated[str, typer.Argument(metavar="IP", help="Address asking for the control panel.")],
    json_out: JsonOption = False,
) -> None:
    """Decide and record control-panel access for an IP: exit 0 allowed, 1 denied."""
    command, allowed = perform(
        cmd.CheckControlPanelAccess,
        lambda ledger: ledger.check_control_panel_access,
        account=account,
        ip=ip,
    )
    if json_out:
        print_json({"account": command.account, "ip": command.ip, "allowed": allowed})
    else:
        verdict = "allowed" if allowed else "denied"
        out(f"{verdict}: {command.ip} to the control panel of {command.account}")
    if not allowed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(allowlist_app, name="allowlist")
    app.add_typer(access_app, name="access")
