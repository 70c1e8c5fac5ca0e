"""``secstate apikey``: create, list, revoke and verify an account's API keys. A token
is printed once, at creation, and never stored."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from domain import commands as cmd
from secstate.cli.commanding import (
    AccountArg,
    ReasonOpt,
    SecretInput,
    get_account,
    out,
    perform,
    reply,
    warn,
    when,
)
from secstate.cli.common import STATE, JsonOption, print_json, print_table

if TYPE_CHECKING:
    from domain.values import ApiKey


apikey_app = typer.Typer(help="Create, list, revoke and verify API keys.", no_args_is_help=True)


def api_key_row(key: ApiKey) -> dict[str, object]:
    # Never the secret hash: it is all an attacker needs to test guesses offline.
    return {
        "key_id": key.key_id,
        "name": key.name,
        "scopes": list(key.scopes),
        "display": key.display,
        "created_by": key.created_by,
        "created_at": key.created_at,
        "active": key.active,
        "revoked_at": key.revoked_at,
        "revoked_by": key.revoked_by,
        "revoke_reason": key.revoke_reason,
    }


@apikey_app.command("create")
def apikey_create(
    account: AccountArg,
    name: Annotated[
        str | None, typer.Option("--name", metavar="TEXT", help="What the key is for (required).")
    ] = None,
    scopes: Annotated[
        list[str] | None,
        typer.Option("--scope", metavar="SCOPE", help="Permission scope (repeat; at least one)."),
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Create an API key; its token is printed once and never stored."""
    _, issued = perform(
        cmd.CreateApiKey,
        lambda ledger: ledger.create_api_key,
        account=account,
        name=name,
        scopes=scopes or [],
    )
    warn(
        "warning: this token is shown only now and is not stored (secstate keeps only its "
        "hash); put it in a secret store"
    )
    if json_out:
        print_json(
            {
                "account": issued.account,
                "key_id": issued.key_id,
                "name": issued.name,
                "scopes": issued.scopes,
                "token": issued.token,
            }
        )
        return
    out(f"created API key {issued.key_id} ({issued.name}) for {issued.account}")
    out(f"scopes: {', '.join(issued.scopes)}")
    out(f"token:  {issued.token}")


@apikey_app.command("list")
def apikey_list(account: AccountArg, json_out: JsonOption = False) -> None:
    """List an account's API keys (never their secrets)."""
    acc = get_account(account)
    keys = sorted(acc.api_keys.values(), key=lambda k: k.created_at)
    if json_out:
        print_json({"account": acc.name, "api_keys": [api_key_row(k) for k in keys]})
        return
    print_table(
        f"API keys of {acc.name}",
        ["key id", "name", "scopes", "display", "created by", "created", "revoked"],
        [
            (
                k.key_id,
                k.name,
                " ".join(k.scopes),
                k.display,
                k.created_by,
                when(k.created_at),
                when(k.revoked_at) if k.revoked_at else "",
            )
            for k in keys
        ],
    )


@apikey_app.command("revoke")
def apikey_revoke(
    account: AccountArg,
    key_id: Annotated[str, typer.Argument(metavar="KEY_ID", help="The key's id.")],
    reason: ReasonOpt = None,
    json_out: JsonOption = False,
) -> None:
    """Revoke an API key; it stops authenticating at once."""
    command, _ = perform(
        cmd.RevokeApiKey,
        lambda ledger: ledger.revoke_api_key,
        account=account,
        key_id=key_id,
        reason=reason,
    )
    if json_out:
        print_json(
            api_key_row(STATE.ledger.get_account(command.account).get_api_key(command.key_id))
        )
    else:
        out(f"revoked API key {command.key_id} of {command.account}")


@apikey_app.command("verify")
def apikey_verify(json_out: JsonOption = False) -> None:
    """Check a token read from stdin; prints whose key it is, or exits 1."""
    token = SecretInput("AuthenticateApiKey", from_stdin=True).read("token", "API key").strip()
    _, principal = perform(
        cmd.AuthenticateApiKey, lambda ledger: ledger.authenticate_api_key, token=token
    )
    reply(
        json_out,
        principal,
        f"valid: key {principal.key_id} ({principal.name}) of account {principal.account}, "
        f"scopes {', '.join(principal.scopes)}",
    )


def register(app: typer.Typer) -> None:
    app.add_typer(apikey_app, name="apikey")
