"""What the command groups share: parse a command, call the ledger, print the answer.

Every ledger command builds its input with ``parse_command`` (so one error lists every
bad field), calls one ``Ledger`` method with the request context, and prints either
JSON (``--json``) or one or more inert lines; a refusal is a domain error, which
``secstate.cli.run`` prints as one line on stderr. ``perform`` and ``reply`` are those
two halves. Passwords, recovery codes and API tokens are never CLI arguments: they are
prompted for without echo, or read one per line from stdin with ``--password-stdin``
(``SecretInput``). Secrets the ledger issues (API tokens, TOTP seeds, recovery codes)
are printed once.

This module is imported only when a command group is: the ledger, the aggregates and
the key ring load when a command first asks ``STATE`` for them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from domain import commands as cmd
from domain.errors import InvalidCommandError
from secstate.cli.common import STATE, fmt_time, print_json
from secstate.cli.render import say

if TYPE_CHECKING:
    from domain.account import Account
    from domain.context import RequestContext
    from domain.ledger import Ledger
    from domain.user import User

C = TypeVar("C", bound=cmd.Command)
R = TypeVar("R")


class AccountQuery(cmd.Command):
    """Validates an account name given to a read-only command."""

    account: cmd.AccountName


class UserQuery(cmd.Command):
    """Validates a username given to a read-only command."""

    username: cmd.Username


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


def given(**data: Any) -> dict[str, Any]:
    """Drop options that were not given, so pydantic reports them as 'Field required'."""
    return {k: v for k, v in data.items() if v is not None}


def perform(
    command_class: type[C],
    method: Callable[[Ledger], Callable[[C, RequestContext], R]],
    **data: Any,
) -> tuple[C, R]:
    """Parse the command (options left as None count as not given), run it with the
    ledger's ``method`` (``lambda ledger: ledger.open_account``) and this invocation's
    request context, and return both. Bad input is one ``InvalidCommandError`` naming
    every bad field, raised before the store is opened."""
    command = cmd.parse_command(command_class, **given(**data))
    return command, method(STATE.ledger)(command, STATE.request_context())


def reply(json_out: bool, data: Mapping[str, object] | object, *lines: str) -> None:
    """The answer of a command: ``data`` as JSON with ``--json``, else ``lines``."""
    if json_out:
        print_json(data)
        return
    for line in lines:
        out(line)


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


def get_account(name: str) -> Account:
    """The account, for a command that only reads: loaded without the key ring."""
    query = cmd.parse_command(AccountQuery, account=name)
    return STATE.reader.get_account(query.account)


def get_user(username: str) -> User:
    """The user, for a command that only reads: loaded without the key ring."""
    query = cmd.parse_command(UserQuery, username=username)
    return STATE.reader.get_user(query.username)


def user_must_exist(command: Any) -> None:
    STATE.ledger.get_user(command.username)


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
