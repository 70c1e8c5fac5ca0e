"""``secstate user`` and ``secstate password``: register users, log in, lock and
disable; set, change and reset passwords, one user or a whole campaign."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer

from domain import commands as cmd
from domain.errors import DuplicateUsernameError, InvalidCommandError, UnknownUserError
from secstate.cli.commanding import (
    AccountArg,
    PasswordStdin,
    ReasonOpt,
    SecretInput,
    UsernameArg,
    get_user,
    given,
    out,
    parse_with_secrets,
    perform,
    reply,
    user_must_exist,
)
from secstate.cli.common import STATE, JsonOption, print_json
from secstate.cli.render import err_console, inert, text_column

if TYPE_CHECKING:
    from domain.ledger import BulkResult


user_app = typer.Typer(help="Register users, log in, lock and disable.", no_args_is_help=True)


@user_app.command("register")
def user_register(
    account: AccountArg,
    username: UsernameArg,
    email: Annotated[
        str | None, typer.Option("--email", metavar="EMAIL", help="Email address (required).")
    ] = None,
    role: Annotated[
        str, typer.Option("--role", metavar="ROLE", help="owner, teammate or employee.")
    ] = "owner",
    password_stdin: PasswordStdin = False,
    json_out: JsonOption = False,
) -> None:
    """Register a user in an account; the password is prompted for (or read from stdin)."""

    def before_prompt(c: cmd.RegisterUser) -> None:
        STATE.ledger.get_account(c.account)
        try:
            STATE.ledger.get_user(c.username)
        except UnknownUserError:
            return
        raise DuplicateUsernameError(f"username {c.username!r} is already taken")

    command = parse_with_secrets(
        cmd.RegisterUser,
        SecretInput("RegisterUser", from_stdin=password_stdin),
        {"password": ("Password", True)},
        before_prompt,
        **given(account=account, username=username, email=email, role=role),
    )
    user_id = STATE.ledger.register_user(command, STATE.request_context())
    result = {
        "id": str(user_id),
        "account": command.account,
        "username": command.username,
        "email": command.email,
        "role": command.role.value,
    }
    reply(
        json_out,
        result,
        f"registered {command.role.value} {command.username} in {command.account} ({user_id})",
    )


@user_app.command("show")
def user_show(username: UsernameArg, json_out: JsonOption = False) -> None:
    """Show a user's credentials state (never a hash or seed): the user's entry of its
    account's ``state`` document."""
    from datetime import UTC, datetime

    from domain.account import Account
    from projections.state import user_state
    from secstate.cli.state_commands import render_user_state

    user = get_user(username)
    account = STATE.reader.load(Account, user.account_id)
    doc = user_state(user, account, datetime.now(UTC))
    if json_out:
        print_json(doc)
        return
    render_user_state(doc)


def _status_result(username: str, json_out: bool, message: str) -> None:
    user = STATE.ledger.get_user(username)
    if json_out:
        print_json({"username": user.username, "status": user.status.value})
    else:
        out(f"{message} (status: {user.status.value})")


@user_app.command("unlock")
def user_unlock(username: UsernameArg, json_out: JsonOption = False) -> None:
    """Unlock a user locked out by failed logins."""
    command, _ = perform(cmd.UnlockUser, lambda ledger: ledger.unlock_user, username=username)
    _status_result(command.username, json_out, f"unlocked {command.username}")


@user_app.command("disable")
def user_disable(
    username: UsernameArg, reason: ReasonOpt = None, json_out: JsonOption = False
) -> None:
    """Disable a user: no logins, no actions, until enabled again."""
    command, _ = perform(
        cmd.DisableUser, lambda ledger: ledger.disable_user, username=username, reason=reason
    )
    _status_result(command.username, json_out, f"disabled {command.username}")


@user_app.command("enable")
def user_enable(username: UsernameArg, json_out: JsonOption = False) -> None:
    """Enable a disabled user."""
    command, _ = perform(cmd.EnableUser, lambda ledger: ledger.enable_user, username=username)
    _status_result(command.username, json_out, f"enabled {command.username}")


@user_app.command("login")
def user_login(
    username: UsernameArg,
    totp: Annotated[
        str | None, typer.Option("--totp", metavar="CODE", help="Current 6-digit TOTP code.")
    ] = None,
    recovery_code_stdin: Annotated[
        bool,
        typer.Option(
            "--recovery-code-stdin",
            help="Use a recovery code as second factor, read from stdin "
            "(after the password line with --password-stdin).",
        ),
    ] = False,
    password_stdin: PasswordStdin = False,
    json_out: JsonOption = False,
) -> None:
    """Attempt a login and record the decision; a refusal exits 1 with its reason."""
    secrets = SecretInput("Login", from_stdin=password_stdin)
    prompts = {"password": ("Password", False)}
    data = given(username=username, totp_code=totp)
    if recovery_code_stdin:
        if totp:
            raise InvalidCommandError("Login", ["give either --totp or --recovery-code-stdin"])
        # The code is read after the password: from stdin when piped, hidden on a terminal.
        secrets.from_stdin = True
        if not password_stdin and not (sys.stdin is not None and sys.stdin.isatty()):
            raise InvalidCommandError(
                "Login",
                [
                    "password: stdin carries the recovery code and is not a terminal; "
                    "pass --password-stdin with the password on the first line"
                ],
            )
        prompts["recovery_code"] = ("Recovery code", False)
    # No check that the user exists before the prompt: an unknown username is refused
    # like a wrong password, and recorded (credential stuffing shows up exactly there).
    command = parse_with_secrets(cmd.Login, secrets, prompts, None, **data)
    outcome = STATE.ledger.login(command, STATE.request_context())
    reply(
        json_out,
        {
            "username": command.username,
            "allowed": outcome.allowed,
            "method": outcome.method,
            "rehashed": outcome.rehashed,
        },
        f"login allowed for {command.username} (method: {outcome.method})",
    )


password_app = typer.Typer(help="Set, change and reset passwords.", no_args_is_help=True)


def _password_result(username: str, json_out: bool, message: str) -> None:
    user = STATE.ledger.get_user(username)
    reply(
        json_out,
        {
            "username": user.username,
            "password_changed_at": user.password_changed_at,
            "reset_required": user.reset_required,
            "status": user.status.value,
        },
        message,
    )


@password_app.command("set")
def password_set(
    username: UsernameArg, password_stdin: PasswordStdin = False, json_out: JsonOption = False
) -> None:
    """Set a user's password as an administrator (no current password needed)."""
    command = parse_with_secrets(
        cmd.SetPassword,
        SecretInput("SetPassword", from_stdin=password_stdin),
        {"password": ("New password", True)},
        user_must_exist,
        username=username,
    )
    STATE.ledger.set_password(command, STATE.request_context())
    _password_result(command.username, json_out, f"password set for {command.username}")


@password_app.command("change")
def password_change(
    username: UsernameArg, password_stdin: PasswordStdin = False, json_out: JsonOption = False
) -> None:
    """Change a password, proving the current one (stdin: current, then new, one per line)."""
    command = parse_with_secrets(
        cmd.ChangePassword,
        SecretInput("ChangePassword", from_stdin=password_stdin),
        {"current_password": ("Current password", False), "new_password": ("New password", True)},
        None,  # an unknown username is refused and recorded like a wrong password
        username=username,
    )
    STATE.ledger.change_password(command, STATE.request_context())
    _password_result(command.username, json_out, f"password changed for {command.username}")


@password_app.command("require-reset")
def password_require_reset(
    username: UsernameArg,
    reason: ReasonOpt = None,
    campaign: Annotated[
        str | None,
        typer.Option("--campaign", metavar="ID", help="Campaign id this reset belongs to."),
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Require one user to reset the password before the next login."""
    command, marked = perform(
        cmd.RequirePasswordReset,
        lambda ledger: ledger.require_password_reset,
        username=username,
        reason=reason,
        campaign_id=campaign,
    )
    reply(
        json_out,
        {"username": command.username, "campaign_id": command.campaign_id, "marked": marked},
        f"password reset required for {command.username}"
        if marked
        else f"{command.username} was already marked by this campaign; nothing recorded",
    )


@password_app.command("complete-reset")
def password_complete_reset(
    username: UsernameArg, password_stdin: PasswordStdin = False, json_out: JsonOption = False
) -> None:
    """Complete a required reset with a new password."""
    command = parse_with_secrets(
        cmd.CompletePasswordReset,
        SecretInput("CompletePasswordReset", from_stdin=password_stdin),
        {"new_password": ("New password", True)},
        user_must_exist,
        username=username,
    )
    STATE.ledger.complete_password_reset(command, STATE.request_context())
    _password_result(command.username, json_out, f"password reset completed for {command.username}")


@contextmanager
def bulk_progress(description: str) -> Iterator[Callable[[int, int], None]]:
    """A rich progress bar on stderr, fed by the ledger's (done, total) callback.

    It starts at the first finished batch, so a command refused while its targets are
    resolved prints nothing but its error line.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TimeElapsedColumn

    progress = Progress(
        text_column(),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
    )
    task: TaskID | None = None

    def update(done: int, total: int) -> None:
        nonlocal task
        if task is None:
            progress.start()
            task = progress.add_task(inert(description), total=total)
        progress.update(task, completed=done, total=total)

    try:
        yield update
    finally:
        if task is not None:
            progress.stop()


@password_app.command("reset-campaign")
def password_reset_campaign(
    campaign: Annotated[
        str | None, typer.Option("--campaign", metavar="ID", help="Campaign id (required).")
    ] = None,
    reason: ReasonOpt = None,
    accounts: Annotated[
        list[str] | None,
        typer.Option("--account", metavar="ACCOUNT", help="Every user of this account (repeat)."),
    ] = None,
    users: Annotated[
        list[str] | None, typer.Option("--user", metavar="USERNAME", help="This user (repeat).")
    ] = None,
    everyone: Annotated[bool, typer.Option("--everyone", help="Every user in the ledger.")] = False,
    json_out: JsonOption = False,
) -> None:
    """Require a password reset of many users at once (idempotent per campaign)."""
    command = cmd.parse_command(
        cmd.RequirePasswordResets,
        **given(
            campaign_id=campaign,
            reason=reason,
            usernames=users or [],
            accounts=accounts or [],
            everyone=everyone,
        ),
    )
    with bulk_progress(f"campaign {command.campaign_id}") as progress:
        result: BulkResult = STATE.ledger.require_password_resets(
            command, STATE.request_context(), progress
        )
    summary = {
        "campaign_id": command.campaign_id,
        "reason": command.reason,
        "targeted": result.targeted,
        "marked": result.marked,
        "already_marked": result.already_marked,
        "batches": result.batches,
    }
    reply(
        json_out,
        summary,
        f"campaign {command.campaign_id}: {result.marked} user(s) marked, "
        f"{result.already_marked} already marked, {result.targeted} targeted "
        f"in {result.batches} batch(es)",
    )


def register(app: typer.Typer) -> None:
    app.add_typer(user_app, name="user")
    app.add_typer(password_app, name="password")
