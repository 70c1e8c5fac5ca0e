"""``secstate totp`` and ``secstate recovery-codes``: a user's second factors. Seeds and
codes are printed once, when they are made."""

from __future__ import annotations

from typing import Annotated

import typer

from domain import commands as cmd
from secstate.cli.commanding import UsernameArg, out, perform, reply, warn
from secstate.cli.common import JsonOption, print_json

totp_app = typer.Typer(help="Enrol, confirm and remove TOTP authenticators.", no_args_is_help=True)
recovery_app = typer.Typer(help="Single-use recovery codes.", no_args_is_help=True)


@totp_app.command("enrol")
def totp_enrol(
    username: UsernameArg,
    label: Annotated[
        str | None, typer.Option("--label", metavar="TEXT", help="Name of the device.")
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Start a TOTP enrolment; prints the seed and otpauth:// URI once."""
    command, enrolment = perform(
        cmd.StartTotpEnrolment,
        lambda ledger: ledger.start_totp_enrolment,
        username=username,
        label=label,
    )
    warn(
        "warning: the seed is shown only now and stored only encrypted; confirm with "
        f"`secstate totp confirm {enrolment.username} {enrolment.factor_id} CODE`"
    )
    if json_out:
        print_json(
            {
                "username": enrolment.username,
                "factor_id": enrolment.factor_id,
                "label": command.label,
                "seed": enrolment.seed,
                "uri": enrolment.uri,
            }
        )
        return
    out(f"started TOTP enrolment {enrolment.factor_id} for {enrolment.username} ({command.label})")
    out(f"seed: {enrolment.seed}")
    out(f"uri:  {enrolment.uri}")


@totp_app.command("confirm")
def totp_confirm(
    username: UsernameArg,
    factor_id: Annotated[str, typer.Argument(metavar="FACTOR_ID", help="From `totp enrol`.")],
    code: Annotated[str, typer.Argument(metavar="CODE", help="Current 6-digit code.")],
    json_out: JsonOption = False,
) -> None:
    """Confirm an enrolment with a code from the authenticator."""
    command, _ = perform(
        cmd.ConfirmTotpEnrolment,
        lambda ledger: ledger.confirm_totp_enrolment,
        username=username,
        factor_id=factor_id,
        code=code,
    )
    if json_out:
        print_json(
            {"username": command.username, "factor_id": command.factor_id, "confirmed": True}
        )
    else:
        out(f"confirmed TOTP factor {command.factor_id} for {command.username}")


@totp_app.command("remove")
def totp_remove(
    username: UsernameArg,
    factor_id: Annotated[str, typer.Argument(metavar="FACTOR_ID", help="Factor to remove.")],
    reason: Annotated[str | None, typer.Option("--reason", metavar="TEXT", help="Why.")] = None,
    json_out: JsonOption = False,
) -> None:
    """Remove a second factor (confirmed or pending)."""
    command, _ = perform(
        cmd.RemoveSecondFactor,
        lambda ledger: ledger.remove_second_factor,
        username=username,
        factor_id=factor_id,
        reason=reason,
    )
    reply(
        json_out,
        {"username": command.username, "factor_id": command.factor_id, "removed": True},
        f"removed second factor {command.factor_id} of {command.username}",
    )


@recovery_app.command("generate")
def recovery_codes_generate(
    username: UsernameArg,
    count: Annotated[int, typer.Option("--count", metavar="N", help="How many codes (5-20).")] = 10,
    json_out: JsonOption = False,
) -> None:
    """Generate fresh recovery codes (replacing older ones); printed once."""
    command, codes = perform(
        cmd.GenerateRecoveryCodes,
        lambda ledger: ledger.generate_recovery_codes,
        username=username,
        count=count,
    )
    warn(
        "warning: these codes are shown only now and stored only as hashes; "
        "each works once. Older codes no longer work."
    )
    if json_out:
        print_json({"username": command.username, "codes": codes})
        return
    for code in codes:
        out(code)


def register(app: typer.Typer) -> None:
    app.add_typer(totp_app, name="totp")
    app.add_typer(recovery_app, name="recovery-codes")
