"""Command-side CLI groups: one subcommand per ledger command.

Every command builds its input with ``parse_command`` (so one error lists every bad
field) and raises domain errors; ``secstate.cli.run`` turns them into one line on
stderr. Passwords, recovery codes and API tokens are never CLI arguments: they are
prompted for without echo, or read one per line from stdin with ``--password-stdin``.
Secrets the ledger issues (API tokens, TOTP seeds, recovery codes) are printed once.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Annotated, Any, TypeVar

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TimeElapsedColumn,
)

from domain import commands as cmd
from domain.account import Account, dkim_ref
from domain.errors import DuplicateUsernameError, InvalidCommandError, UnknownUserError
from domain.ledger import BulkResult
from domain.secrets import dkim_txt_record
from domain.user import User
from domain.values import ApiKey, DkimKey
from secstate.cli.common import (
    STATE,
    JsonOption,
    fmt_time,
    print_json,
    print_table,
)
from secstate.cli.render import err_console, inert, say, text_column

C = TypeVar("C", bound=cmd.Command)

# --- shared helpers ------------------------------------------------------------------


class AccountQuery(cmd.Command):
    """Validates an account name given to a read-only command."""

    account: cmd.AccountName


class UserQuery(cmd.Command):
    """Validates a username given to a read-only command."""

    username: cmd.Username


def out(text: str) -> None:
    """A message on stdout: inert, and long values (tokens, URIs, DNS records) stay on one
    line to copy."""
    say(text)


def warn(text: str) -> None:
    say(text, err=True)


def when(value: object) -> str:
    """A time cell of a table: ISO 8601 to the second, '-' when unset."""
    if value is None or isinstance(value, datetime):
        return fmt_time(value)
    return str(value)


def given(**data: Any) -> dict[str, Any]:
    """Drop options that were not given, so pydantic reports them as 'Field required'."""
    return {k: v for k, v in data.items() if v is not None}


def get_account(name: str) -> Account:
    query = cmd.parse_command(AccountQuery, account=name)
    return STATE.ledger.get_account(query.account)


def get_user(username: str) -> User:
    query = cmd.parse_command(UserQuery, username=username)
    return STATE.ledger.get_user(query.username)


class SecretInput:
    """Reads secrets without ever echoing them or taking them from argv.

    On a terminal it prompts with echo off (prompt text on stderr so stdout stays
    clean for --json). Otherwise it reads one line per secret from stdin, but only when
    the caller opted in (--password-stdin): a script that forgot the flag fails at
    once instead of silently consuming stdin.
    """

    def __init__(self, command: str, *, from_stdin: bool) -> None:
        self.command = command
        self.from_stdin = from_stdin

    def read(self, field: str, label: str, *, confirm: bool = False) -> str:
        stdin = sys.stdin
        if stdin is not None and stdin.isatty():
            value: str = typer.prompt(label, hide_input=True, confirmation_prompt=confirm, err=True)
            return value
        if not self.from_stdin:
            raise InvalidCommandError(
                self.command,
                [
                    f"{field}: stdin is not a terminal, so it cannot be prompted for; "
                    "pipe it on stdin and pass --password-stdin"
                ],
            )
        line = stdin.readline() if stdin is not None else ""
        if not line:
            raise InvalidCommandError(self.command, [f"{field}: stdin ended before it was read"])
        return line.removesuffix("\n").removesuffix("\r")


def parse_with_secrets(
    command_class: type[C],
    secrets: SecretInput,
    prompts: dict[str, tuple[str, bool]],
    before_prompt: Callable[[C], None] | None = None,
    **data: Any,
) -> C:
    """Validate the visible fields, run cheap store checks, and only then ask for secrets.

    ``prompts`` maps a secret field to (prompt label, ask twice?). Nobody should type a
    password only to learn the account name had a typo.
    """
    probe = cmd.parse_command(command_class, **data, **dict.fromkeys(prompts, ""))
    if before_prompt is not None:
        before_prompt(probe)
    values = {
        field: secrets.read(field, label, confirm=confirm)
        for field, (label, confirm) in prompts.items()
    }
    return cmd.parse_command(command_class, **data, **values)


def user_must_exist(command: Any) -> None:
    STATE.ledger.get_user(command.username)


PasswordStdin = Annotated[
    bool,
    typer.Option(
        "--password-stdin",
        help="Read the password(s) from stdin, one per line, instead of prompting.",
    ),
]
AccountArg = Annotated[str, typer.Argument(metavar="ACCOUNT", help="Account name.")]
UsernameArg = Annotated[str, typer.Argument(metavar="USERNAME", help="Username.")]
ReasonOpt = Annotated[str | None, typer.Option("--reason", metavar="TEXT", help="Why (required).")]


# --- account ---------------------------------------------------------------------------

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
    name: Annotated[str, typer.Argument(metavar="NAME", help="Account name: lowercase slug.")],
    kind: Annotated[str, typer.Option(metavar="KIND", help="customer or staff.")] = "customer",
    display_name: Annotated[
        str | None, typer.Option(metavar="TEXT", help="Human-readable name.")
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Open a customer account (or the staff organisation)."""
    command = cmd.parse_command(
        cmd.OpenAccount, **given(name=name, kind=kind, display_name=display_name)
    )
    account_id = STATE.ledger.open_account(command, STATE.request_context())
    if json_out:
        print_json({"id": str(account_id), "name": command.name, "kind": command.kind})
    else:
        out(f"opened {command.kind.value} account {command.name} ({account_id})")


@account_app.command("show")
def account_show(name: AccountArg, json_out: JsonOption = False) -> None:
    """Show an account's security controls as the ledger holds them now."""
    account = get_account(name)
    summary = account_summary(account)
    if json_out:
        print_json(summary)
        return
    print_table(
        f"account {account.name}",
        ["field", "value"],
        [(k, fmt_time(account.opened_at) if k == "opened_at" else v) for k, v in summary.items()],
    )


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
    command = cmd.parse_command(cmd.SetTwoFactorPolicy, account=name, required=require_2fa)
    changed = STATE.ledger.set_two_factor_policy(command, STATE.request_context())
    if json_out:
        print_json(
            {
                "account": command.account,
                "two_factor_required": command.required,
                "changed": changed,
            }
        )
        return
    state = "required" if command.required else "optional"
    out(
        f"two-factor login is now {state} for {command.account}"
        if changed
        else f"two-factor login was already {state} for {command.account}; nothing recorded"
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


# --- user ------------------------------------------------------------------------------

user_app = typer.Typer(help="Register users, log in, lock and disable.", no_args_is_help=True)


def user_summary(user: User) -> dict[str, object]:
    account = STATE.ledger.load(Account, user.account_id)
    codes = user.recovery_codes
    return {
        "id": str(user.id),
        "username": user.username,
        "account": account.name,
        "email": user.email,
        "role": user.role,
        "status": user.status.value,
        "registered_at": user.registered_at,
        "password_set": user.password_hash is not None,
        "password_changed_at": user.password_changed_at,
        "reset_required": user.reset_required,
        "reset_reason": user.reset_reason,
        "reset_campaign_id": user.reset_campaign_id,
        "locked": user.locked,
        "disabled": user.disabled,
        "failed_logins": user.failed_logins,
        "second_factors": [
            {
                "factor_id": f.factor_id,
                "kind": f.kind,
                "label": f.label,
                "confirmed": f.confirmed,
                "started_at": f.started_at,
                "confirmed_at": f.confirmed_at,
            }
            for f in user.factors.values()
        ],
        "recovery_codes_remaining": codes.remaining if codes else 0,
        "recovery_codes_generated_at": codes.generated_at if codes else None,
        "last_login_at": user.last_login_at,
        "last_login_ip": user.last_login_ip,
        "version": user.version,
    }


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
    if json_out:
        print_json(result)
    else:
        out(f"registered {command.role.value} {command.username} in {command.account} ({user_id})")


@user_app.command("show")
def user_show(username: UsernameArg, json_out: JsonOption = False) -> None:
    """Show a user's credentials state (never a hash or seed)."""
    user = get_user(username)
    summary = user_summary(user)
    if json_out:
        print_json(summary)
        return
    del summary["second_factors"]
    print_table(
        f"user {user.username}",
        ["field", "value"],
        [(k, when(v) if k.endswith("_at") else v) for k, v in summary.items()],
    )
    if user.factors:
        print_table(
            "second factors",
            ["factor id", "kind", "label", "confirmed", "started", "confirmed at"],
            [
                (
                    f.factor_id,
                    f.kind,
                    f.label,
                    f.confirmed,
                    when(f.started_at),
                    when(f.confirmed_at),
                )
                for f in user.factors.values()
            ],
        )


def _status_result(username: str, json_out: bool, message: str) -> None:
    user = STATE.ledger.get_user(username)
    if json_out:
        print_json({"username": user.username, "status": user.status.value})
    else:
        out(f"{message} (status: {user.status.value})")


@user_app.command("unlock")
def user_unlock(username: UsernameArg, json_out: JsonOption = False) -> None:
    """Unlock a user locked out by failed logins."""
    command = cmd.parse_command(cmd.UnlockUser, username=username)
    STATE.ledger.unlock_user(command, STATE.request_context())
    _status_result(command.username, json_out, f"unlocked {command.username}")


@user_app.command("disable")
def user_disable(
    username: UsernameArg, reason: ReasonOpt = None, json_out: JsonOption = False
) -> None:
    """Disable a user: no logins, no actions, until enabled again."""
    command = cmd.parse_command(cmd.DisableUser, **given(username=username, reason=reason))
    STATE.ledger.disable_user(command, STATE.request_context())
    _status_result(command.username, json_out, f"disabled {command.username}")


@user_app.command("enable")
def user_enable(username: UsernameArg, json_out: JsonOption = False) -> None:
    """Enable a disabled user."""
    command = cmd.parse_command(cmd.EnableUser, username=username)
    STATE.ledger.enable_user(command, STATE.request_context())
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
    if json_out:
        print_json(
            {
                "username": command.username,
                "allowed": outcome.allowed,
                "method": outcome.method,
                "rehashed": outcome.rehashed,
            }
        )
    else:
        out(f"login allowed for {command.username} (method: {outcome.method})")


# --- password --------------------------------------------------------------------------

password_app = typer.Typer(help="Set, change and reset passwords.", no_args_is_help=True)


def _password_result(username: str, json_out: bool, message: str) -> None:
    user = STATE.ledger.get_user(username)
    if json_out:
        print_json(
            {
                "username": user.username,
                "password_changed_at": user.password_changed_at,
                "reset_required": user.reset_required,
                "status": user.status.value,
            }
        )
    else:
        out(message)


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
    command = cmd.parse_command(
        cmd.RequirePasswordReset, **given(username=username, reason=reason, campaign_id=campaign)
    )
    marked = STATE.ledger.require_password_reset(command, STATE.request_context())
    if json_out:
        print_json(
            {"username": command.username, "campaign_id": command.campaign_id, "marked": marked}
        )
    else:
        out(
            f"password reset required for {command.username}"
            if marked
            else f"{command.username} was already marked by this campaign; nothing recorded"
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
    if json_out:
        print_json(summary)
    else:
        out(
            f"campaign {command.campaign_id}: {result.marked} user(s) marked, "
            f"{result.already_marked} already marked, {result.targeted} targeted "
            f"in {result.batches} batch(es)"
        )


# --- API keys --------------------------------------------------------------------------

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
    command = cmd.parse_command(
        cmd.CreateApiKey, **given(account=account, name=name, scopes=scopes or [])
    )
    issued = STATE.ledger.create_api_key(command, STATE.request_context())
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
    command = cmd.parse_command(
        cmd.RevokeApiKey, **given(account=account, key_id=key_id, reason=reason)
    )
    STATE.ledger.revoke_api_key(command, STATE.request_context())
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
    command = cmd.parse_command(cmd.AuthenticateApiKey, token=token)
    principal = STATE.ledger.authenticate_api_key(command, STATE.request_context())
    if json_out:
        print_json(principal)
    else:
        out(
            f"valid: key {principal.key_id} ({principal.name}) of account {principal.account}, "
            f"scopes {', '.join(principal.scopes)}"
        )


# --- second factors ----------------------------------------------------------------------

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
    command = cmd.parse_command(cmd.StartTotpEnrolment, **given(username=username, label=label))
    enrolment = STATE.ledger.start_totp_enrolment(command, STATE.request_context())
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
    command = cmd.parse_command(
        cmd.ConfirmTotpEnrolment, username=username, factor_id=factor_id, code=code
    )
    STATE.ledger.confirm_totp_enrolment(command, STATE.request_context())
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
    command = cmd.parse_command(
        cmd.RemoveSecondFactor, **given(username=username, factor_id=factor_id, reason=reason)
    )
    STATE.ledger.remove_second_factor(command, STATE.request_context())
    if json_out:
        print_json({"username": command.username, "factor_id": command.factor_id, "removed": True})
    else:
        out(f"removed second factor {command.factor_id} of {command.username}")


@recovery_app.command("generate")
def recovery_codes_generate(
    username: UsernameArg,
    count: Annotated[int, typer.Option("--count", metavar="N", help="How many codes (5-20).")] = 10,
    json_out: JsonOption = False,
) -> None:
    """Generate fresh recovery codes (replacing older ones); printed once."""
    command = cmd.parse_command(cmd.GenerateRecoveryCodes, username=username, count=count)
    codes = STATE.ledger.generate_recovery_codes(command, STATE.request_context())
    warn(
        "warning: these codes are shown only now and stored only as hashes; "
        "each works once. Older codes no longer work."
    )
    if json_out:
        print_json({"username": command.username, "codes": codes})
        return
    for code in codes:
        out(code)


# --- allowlist and control-panel access ---------------------------------------------------

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
    command = cmd.parse_command(
        cmd.AddAllowlistEntry, **given(account=account, cidr=cidr, label=label)
    )
    entry_id = STATE.ledger.add_allowlist_entry(command, STATE.request_context())
    if json_out:
        print_json(
            {
                "account": command.account,
                "entry_id": entry_id,
                "cidr": command.cidr,
                "label": command.label,
            }
        )
    else:
        out(
            f"added {command.cidr} ({command.label}) to {command.account}'s allowlist as {entry_id}"
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
    command = cmd.parse_command(cmd.RemoveAllowlistEntry, account=account, entry=entry, force=force)
    entry_id = STATE.ledger.remove_allowlist_entry(command, STATE.request_context())
    if json_out:
        print_json({"account": command.account, "entry_id": entry_id, "forced": command.force})
    else:
        out(f"removed allowlist entry {entry_id} of {command.account}")


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
    command = cmd.parse_command(cmd.CheckControlPanelAccess, account=account, ip=ip)
    allowed = STATE.ledger.check_control_panel_access(command, STATE.request_context())
    if json_out:
        print_json({"account": command.account, "ip": command.ip, "allowed": allowed})
    else:
        verdict = "allowed" if allowed else "denied"
        out(f"{verdict}: {command.ip} to the control panel of {command.account}")
    if not allowed:
        raise typer.Exit(1)


# --- DKIM ---------------------------------------------------------------------------------

dkim_app = typer.Typer(help="DKIM signing keys of sending domains.", no_args_is_help=True)

DomainArg = Annotated[str, typer.Argument(metavar="DOMAIN", help="Sending domain.")]
SelectorArg = Annotated[str, typer.Argument(metavar="SELECTOR", help="DKIM selector.")]


def txt_chunks(value: str, size: int = 255) -> list[str]:
    # One DNS character-string holds at most 255 bytes; longer TXT values are split.
    return [value[i : i + size] for i in range(0, len(value), size)]


def dkim_row(key: DkimKey) -> dict[str, object]:
    # Public material only: the sealed private key never leaves the ledger.
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
    command = cmd.parse_command(
        cmd.GenerateDkimKey,
        **given(
            account=account,
            domain=domain,
            selector=selector,
            algorithm=algorithm,
            campaign_id=campaign,
        ),
    )
    key = STATE.ledger.generate_dkim_key(command, STATE.request_context())
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
    command = cmd.parse_command(
        cmd.PublishDkimKey, account=account, domain=domain, selector=selector
    )
    STATE.ledger.publish_dkim_key(command, STATE.request_context())
    ref = dkim_ref(command.domain, command.selector)
    _dkim_transition(command, json_out, f"DKIM key {ref} is published")


@dkim_app.command("activate")
def dkim_activate(
    account: AccountArg, domain: DomainArg, selector: SelectorArg, json_out: JsonOption = False
) -> None:
    """Start signing with a published key; the domain's previous key is retired."""
    command = cmd.parse_command(
        cmd.ActivateDkimKey, account=account, domain=domain, selector=selector
    )
    retired = STATE.ledger.activate_dkim_key(command, STATE.request_context())
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
    command = cmd.parse_command(
        cmd.RetireDkimKey,
        **given(account=account, domain=domain, selector=selector, reason=reason),
    )
    STATE.ledger.retire_dkim_key(command, STATE.request_context())
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


# --- staff --------------------------------------------------------------------------------

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
    command = cmd.parse_command(
        cmd.RecordStaffAccess,
        **given(
            username=username,
            system=system,
            resource=resource,
            action=action,
            records=records,
            customer_accounts=customers or [],
        ),
    )
    STATE.ledger.record_staff_access(command, STATE.request_context())
    if json_out:
        print_json(command.model_dump())
    else:
        whose = f" of {', '.join(command.customer_accounts)}" if command.customer_accounts else ""
        out(
            f"recorded: {command.username} {command.action} {command.records} record(s) "
            f"in {command.system}:{command.resource}{whose}"
        )


def register(app: typer.Typer) -> None:
    app.add_typer(account_app, name="account")
    app.add_typer(user_app, name="user")
    app.add_typer(password_app, name="password")
    app.add_typer(apikey_app, name="apikey")
    app.add_typer(totp_app, name="totp")
    app.add_typer(recovery_app, name="recovery-codes")
    app.add_typer(allowlist_app, name="allowlist")
    app.add_typer(access_app, name="access")
    app.add_typer(dkim_app, name="dkim")
    app.add_typer(staff_app, name="staff")
