"""``secstate dkim``: the DKIM signing keys of an account's sending domains, from
generation (with the DNS record to publish) to retirement. Public material only."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from domain import commands as cmd
from secstate.cli.commanding import AccountArg, get_account, out, perform, when
from secstate.cli.common import STATE, JsonOption, print_json, print_table

if TYPE_CHECKING:
    from domain.values import DkimKey


dkim_app = typer.Typer(help="DKIM signing keys of sending domains.", no_args_is_help=True)

DomainArg = Annotated[str, typer.Argument(metavar="DOMAIN", help="Sending domain.")]
SelectorArg = Annotated[str, typer.Argument(metavar="SELECTOR", help="DKIM selector.")]


def txt_chunks(value: str, size: int = 255) -> list[str]:
    # One DNS character-string holds at most 255 bytes; longer TXT values are split.
    return [value[i : i + size] for i in range(0, len(value), size)]


def dkim_ref(domain: str, selector: str) -> str:
    """The key's DNS record name, ``<selector>._domainkey.<domain>``."""
    from domain.account import dkim_ref as ref

    return ref(domain, selector)


def dkim_row(key: DkimKey) -> dict[str, object]:
    # Public material only: the sealed private key never leaves the ledger.
    from domain.secrets import dkim_txt_record

    return {
        "domain": key.domain,
        "selector": key.selector,
        "record_name": dkim_ref(key.domain, key.selector),
        "algorithm": key.algorithm,
        "state": key.state,
        "public_key": key.public_key,
        "record_value": dkim_txt_record(key.algorithm, key.public_key),
        "campaign_id": key.campaign_id,
        "generated_at": key.generated_at,
        "published_at": key.published_at,
        "activated_at": key.activated_at,
        "retired_at": key.retired_at,
        "retire_reason": key.retire_reason,
    }


@dkim_app.command("generate")
def dkim_generate(
    account: AccountArg,
    domain: DomainArg,
    selector: SelectorArg,
    algorithm: Annotated[
        str, typer.Option("--algorithm", metavar="ALG", help="rsa-sha256 or ed25519-sha256.")
    ] = "rsa-sha256",
    campaign: Annotated[
        str | None, typer.Option("--campaign", metavar="ID", help="Rotation campaign id.")
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Generate a DKIM key; prints the DNS TXT record to publish."""
    command, key = perform(
        cmd.GenerateDkimKey,
        lambda ledger: ledger.generate_dkim_key,
        account=account,
        domain=domain,
        selector=selector,
        algorithm=algorithm,
        campaign_id=campaign,
    )
    row = dkim_row(key)
    value = str(row["record_value"])
    if json_out:
        print_json(
            {
                "account": command.account,
                **row,
                "record_type": "TXT",
                "record_chunks": txt_chunks(value),
            }
        )
        return
    name = str(row["record_name"])
    out(f"generated {key.algorithm} DKIM key {name} for {command.account} (state: {key.state})")
    out("publish this DNS record, then run:")
    out(f"  secstate dkim publish {command.account} {key.domain} {key.selector}")
    out(f"name:  {name}")
    out("type:  TXT")
    out(f"value: {value}")
    quoted = " ".join(f'"{c}"' for c in txt_chunks(value))
    out(f"zone:  {name}. IN TXT ( {quoted} )")


def _dkim_transition(
    command: cmd.DkimKeyRef, json_out: bool, message: str, extra: dict[str, object] | None = None
) -> None:
    key = STATE.ledger.get_account(command.account).get_dkim_key(command.domain, command.selector)
    if json_out:
        print_json({"account": command.account, **dkim_row(key), **(extra or {})})
    else:
        out(message)


@dkim_app.command("publish")
def dkim_publish(
    account: AccountArg, domain: DomainArg, selector: SelectorArg, json_out: JsonOption = False
) -> None:
    """Record that the key's TXT record is published in DNS."""
    command, _ = perform(
        cmd.PublishDkimKey,
        lambda ledger: ledger.publish_dkim_key,
        account=account,
        domain=domain,
        selector=selector,
    )
    ref = dkim_ref(command.domain, command.selector)
    _dkim_transition(command, json_out, f"DKIM key {ref} is published")


@dkim_app.command("activate")
def dkim_activate(
    account: AccountArg, domain: DomainArg, selector: SelectorArg, json_out: JsonOption = False
) -> None:
    """Start signing with a published key; the domain's previous key is retired."""
    command, retired = perform(
        cmd.ActivateDkimKey,
        lambda ledger: ledger.activate_dkim_key,
        account=account,
        domain=domain,
        selector=selector,
    )
    ref = dkim_ref(command.domain, command.selector)
    note = f"; retired {', '.join(retired)}" if retired else ""
    _dkim_transition(
        command, json_out, f"DKIM key {ref} is active{note}", {"retired_selectors": retired}
    )


@dkim_app.command("retire")
def dkim_retire(
    account: AccountArg,
    domain: DomainArg,
    selector: SelectorArg,
    reason: Annotated[str | None, typer.Option("--reason", metavar="TEXT", help="Why.")] = None,
    json_out: JsonOption = False,
) -> None:
    """Stop using a key."""
    command, _ = perform(
        cmd.RetireDkimKey,
        lambda ledger: ledger.retire_dkim_key,
        account=account,
        domain=domain,
        selector=selector,
        reason=reason,
    )
    ref = dkim_ref(command.domain, command.selector)
    _dkim_transition(command, json_out, f"DKIM key {ref} is retired")


@dkim_app.command("list")
def dkim_list(account: AccountArg, json_out: JsonOption = False) -> None:
    """List the account's DKIM keys (public information only)."""
    acc = get_account(account)
    rows = [
        dkim_row(k)
        for k in sorted(acc.dkim_keys.values(), key=lambda k: (k.domain, k.generated_at))
    ]
    if json_out:
        print_json({"account": acc.name, "dkim_keys": rows})
        return
    print_table(
        f"DKIM keys of {acc.name}",
        ["record", "algorithm", "state", "generated", "activated", "retired"],
        [
            (
                r["record_name"],
                r["algorithm"],
                r["state"],
                when(r["generated_at"]),
                when(r["activated_at"]),
                when(r["retired_at"]),
            )
            for r in rows
        ],
    )


def register(app: typer.Typer) -> None:
    app.add_typer(dkim_app, name="dkim")
