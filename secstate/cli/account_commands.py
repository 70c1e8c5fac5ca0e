"""``secstate account``: open accounts, set account-wide policy, list members."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from domain import commands as cmd
from secstate.cli.commanding import (
    AccountArg,
    AccountQuery,
    get_account,
    perform,
    reply,
    when,
)
from secstate.cli.common import STATE, JsonOption, print_json, print_table

if TYPE_CHECKING:
    from domain.user import User


account_app = typer.Typer(help="Open accounts and set account-wide policy.", no_args_is_help=True)


@account_app.command("open")
def account_open(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Account name: lowercase slug.")],
    kind: Annotated[str, typer.Option(metavar="KIND", help="customer or staff.")] = "customer",
    display_name: Annotated[
        str | None, typer.Option(metavar="TEXT", help="Human-readable name.")
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Open a customer account (or the staff organisation)."""
    command, account_id = perform(
        cmd.OpenAccount,
        lambda ledger: ledger.open_account,
        name=name,
        kind=kind,
        display_name=display_name,
    )
    reply(
        json_out,
        {"id": str(account_id), "name": command.name, "kind": command.kind},
        f"opened {command.kind.value} account {command.name} ({account_id})",
    )


@account_app.command("show")
def account_show(name: AccountArg, json_out: JsonOption = False) -> None:
    """Show an account's security controls as the ledger holds them now: its part of the
    ``state`` document (all of it but the users)."""
    from datetime import UTC, datetime

    from projections.state import account_state
    from secstate.cli.state_commands import render_account_state

    account = get_account(name)
    keys = STATE.reader.account_key_indexes(account)
    doc = account_state(account, datetime.now(UTC), keys)
    if json_out:
        print_json(doc)
        return
    render_account_state(doc)


@account_app.command("policy")
def account_policy(
    name: AccountArg,
    require_2fa: Annotated[
        bool,
        typer.Option(
            "--require-2fa/--no-require-2fa", help="Require a second factor at every login."
        ),
    ],
    json_out: JsonOption = False,
) -> None:
    """Set the account's two-factor policy."""
    command, changed = perform(
        cmd.SetTwoFactorPolicy,
        lambda ledger: ledger.set_two_factor_policy,
        account=name,
        required=require_2fa,
    )
    state = "required" if command.required else "optional"
    reply(
        json_out,
        {"account": command.account, "two_factor_required": command.required, "changed": changed},
        f"two-factor login is now {state} for {command.account}"
        if changed
        else f"two-factor login was already {state} for {command.account}; nothing recorded",
    )


def member_row(user: User) -> dict[str, object]:
    return {
        "user_id": str(user.id),
        "username": user.username,
        "role": user.role,
        "email": user.email,
        "status": user.status.value,
        "second_factors": len(user.confirmed_factors),
        "registered_at": user.registered_at,
        "last_login_at": user.last_login_at,
    }


@account_app.command("members")
def account_members(name: AccountArg, json_out: JsonOption = False) -> None:
    """List the account's users with their role and status."""
    query = cmd.parse_command(AccountQuery, account=name)
    rows = [member_row(u) for u in STATE.ledger.account_users(query.account)]
    rows.sort(key=lambda r: str(r["username"]))
    if json_out:
        print_json({"account": query.account, "members": rows})
        return
    print_table(
        f"members of {query.account}",
        ["username", "role", "status", "email", "2FA", "last login"],
        [
            (
                r["username"],
                r["role"],
                r["status"],
                r["email"],
                r["second_factors"],
                when(r["last_login_at"]),
            )
            for r in rows
        ],
    )


def register(app: typer.Typer) -> None:
    app.add_typer(account_app, name="account")
