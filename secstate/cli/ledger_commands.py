"""Command-side CLI groups: one subcommand per ledger command."""

from __future__ import annotations

from typing import Annotated

import typer

from domain import commands as cmd
from domain.account import Account
from domain.values import AccountKind
from secstate.cli.common import STATE, JsonOption, fmt_time, print_json, print_table, say

account_app = typer.Typer(help="Open accounts and set account-wide policy.", no_args_is_help=True)


def account_summary(account: Account) -> dict[str, object]:
    return {
        "id": str(account.id),
        "name": account.name,
        "kind": account.kind,
        "display_name": account.display_name,
        "opened_at": account.opened_at,
        "two_factor_required": account.two_factor_required,
        "members": len(account.members),
        "allowlist_entries": len(account.allowlist),
        "active_api_keys": sum(1 for k in account.api_keys.values() if k.active),
        "dkim_keys": len(account.dkim_keys),
        "version": account.version,
    }


@account_app.command("open")
def account_open(
    name: Annotated[str, typer.Argument(help="Account name: lowercase slug.")],
    kind: Annotated[AccountKind, typer.Option(help="customer or staff.")] = AccountKind.CUSTOMER,
    display_name: Annotated[str | None, typer.Option(help="Human-readable name.")] = None,
    json_out: JsonOption = False,
) -> None:
    """Open a customer account (or the staff organisation)."""
    command = cmd.parse_command(cmd.OpenAccount, name=name, kind=kind, display_name=display_name)
    account_id = STATE.ledger.open_account(command, STATE.request_context())
    if json_out:
        print_json({"id": str(account_id), "name": command.name, "kind": command.kind})
    else:
        say(f"opened {command.kind.value} account {command.name} ({account_id})")


@account_app.command("show")
def account_show(
    name: Annotated[str, typer.Argument(help="Account name.")],
    json_out: JsonOption = False,
) -> None:
    """Show an account's security controls as the ledger holds them now."""
    account = STATE.ledger.get_account(name)
    summary = account_summary(account)
    if json_out:
        print_json(summary)
        return
    print_table(
        f"account {account.name}",
        ["field", "value"],
        [(k, fmt_time(account.opened_at) if k == "opened_at" else v) for k, v in summary.items()],
    )


def register(app: typer.Typer) -> None:
    app.add_typer(account_app, name="account")
