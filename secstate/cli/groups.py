"""The root command group: which commands there are, and where each one lives.

``secstate --help`` and a one-event command should start in a fraction of a second, so
the root knows its commands from the table below (name, module, the line its help
shows) and imports a command's module only when that command is run or its own help is
shown. ``secstate account open`` loads ``account_commands`` and nothing of ``state``,
``timeline`` or ``project``; ``secstate --help`` loads no command module at all.

``build_eager`` registers every module at once, as the command line did before: for
code that walks the whole tree, and for the test that keeps this table and the modules
in step (same names, same order, same help lines).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import typer
from typer.core import TyperCommand, TyperGroup

if TYPE_CHECKING:
    from secstate.settings import Settings

HELP = "Event-sourced account-security ledger: record, inspect and investigate."


@dataclass(frozen=True)
class Entry:
    """One command of the root: a group (``account``) or a command (``timeline``)."""

    name: str
    module: str  # under secstate.cli; its register(app) adds this command (and maybe others)
    help: str  # the first paragraph of the command's help, as the root's help lists it


# In the order the root's help lists them (typer lists commands first, then groups).
COMMANDS = (
    Entry(
        "demo",
        "demo",
        "Replay a 2015 staff-credential breach and its response into an EMPTY store.",
    ),
    Entry(
        "state",
        "state_commands",
        "Show an account's security state: users, 2FA, API keys, allowlist, DKIM keys.",
    ),
    Entry(
        "history",
        "state_commands",
        "Replay every event of an account and its users (or of one user), with what it changed.",
    ),
    Entry(
        "timeline",
        "timeline_commands",
        "Who did what, from where, when: the ledger's events as a forensic timeline.",
    ),
    Entry(
        "init",
        "store_commands",
        "Create the store's schema and tables (ledger and views) if missing.",
    ),
    Entry(
        "consume",
        "consume_commands",
        "Run a downstream consumer of the events topic until SIGINT/SIGTERM (or --show).",
    ),
    Entry("account", "account_commands", "Open accounts and set account-wide policy."),
    Entry("user", "user_commands", "Register users, log in, lock and disable."),
    Entry("password", "user_commands", "Set, change and reset passwords."),
    Entry("apikey", "apikey_commands", "Create, list, revoke and verify API keys."),
    Entry("totp", "factor_commands", "Enrol, confirm and remove TOTP authenticators."),
    Entry("recovery-codes", "factor_commands", "Single-use recovery codes."),
    Entry("allowlist", "allowlist_commands", "The account's control-panel IP allowlist."),
    Entry("access", "allowlist_commands", "Control-panel access decisions."),
    Entry("dkim", "dkim_commands", "DKIM signing keys of sending domains."),
    Entry("staff", "staff_commands", "Staff access to internal systems."),
    Entry(
        "project",
        "projection_commands",
        "Keep the read views (state, timeline) up to date with the ledger.",
    ),
    Entry(
        "relay",
        "relay_commands",
        "Publish every security event to Kafka (CloudEvents), in per-account order.",
    ),
    Entry("keys", "key_commands", "This host's key ring: status, creation, new keys and rotation."),
)

MODULES = tuple(dict.fromkeys(entry.module for entry in COMMANDS))


def new_app(cls: type[TyperGroup]) -> typer.Typer:
    """A root ``secstate`` app with the root options and no commands yet."""
    from secstate.cli.common import root_callback

    app = typer.Typer(
        name="secstate",
        help=HELP,
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
        cls=cls,
    )
    app.callback()(root_callback)
    return app


def register(app: typer.Typer, module_name: str) -> None:
    """Add the commands of ``secstate.cli.<module_name>`` to ``app``."""
    module = importlib.import_module(f"secstate.cli.{module_name}")
    module.register(app)


def build_eager() -> typer.Typer:
    """The whole command line, every module imported and registered."""
    app = new_app(StoreGroup)
    for module_name in MODULES:
        register(app, module_name)
    return app


def load_commands(module_name: str) -> dict[str, Any]:
    """The click commands ``secstate.cli.<module_name>`` registers, by name, built as
    the eager root builds them."""
    scratch = typer.Typer(pretty_exceptions_enable=False, add_completion=False)
    register(scratch, module_name)
    return dict(typer.main.get_group(scratch).commands)


class StoreGroup(TyperGroup):
    """The root command group: database trouble that says nothing about the command (a
    store locked past its timeout, a lost connection) leaves as ``StoreBusyError``, a
    refusal on one line, rather than as an internal error."""

    def invoke(self, ctx: Any) -> Any:
        from domain.errors import SecStateError

        try:
            return super().invoke(ctx)
        except SecStateError:
            raise  # the ledger's own verdicts, busy ones included
        except Exception as error:
            from store.busy import busy_error

            settings = _settings_if_any()
            busy = busy_error(error, settings.sqlite_lock_timeout if settings else None)
            if busy is None:
                raise
            raise busy from error


def _settings_if_any() -> Settings | None:
    """The command's settings, for the message; None if they are what failed."""
    from secstate.cli.common import STATE

    try:
        return STATE.settings
    except Exception:
        return None


class LazyCommands(MutableMapping[str, Any]):
    """The root's commands by name: the names from ``COMMANDS``, each command built
    (its module imported) when it is first looked up. Iterating lists the names and
    loads nothing; ``items()`` and ``values()`` load every module."""

    def __init__(self, entries: tuple[Entry, ...]) -> None:
        self.entries = {entry.name: entry for entry in entries}
        self.loaded: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        if name not in self.loaded and name in self.entries:
            for loaded_name, command in load_commands(self.entries[name].module).items():
                self.loaded.setdefault(loaded_name, command)
        return self.loaded[name]

    def __setitem__(self, name: str, command: Any) -> None:
        self.loaded[name] = command

    def __delitem__(self, name: str) -> None:
        if name not in self:
            raise KeyError(name)
        self.entries.pop(name, None)
        self.loaded.pop(name, None)

    def __iter__(self) -> Iterator[str]:
        yield from self.entries
        yield from (name for name in self.loaded if name not in self.entries)

    def __len__(self) -> int:
        return len(self.entries.keys() | self.loaded.keys())

    def __contains__(self, name: object) -> bool:
        return name in self.entries or name in self.loaded

    def summary(self, name: str) -> Any:
        """What the root's help needs of a command (its name and help line), without
        loading it; the command itself once it is loaded."""
        if name in self.loaded or name not in self.entries:
            return self.loaded.get(name)
        return TyperCommand(name=name, help=self.entries[name].help)


class LazyGroup(StoreGroup):
    """The root group whose commands come from ``COMMANDS`` and load on first use."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        lazy = LazyCommands(COMMANDS)
        lazy.loaded.update(self.commands)
        self.commands = self.lazy = lazy
        self._listing = False

    def list_commands(self, ctx: Any) -> list[str]:
        return list(self.commands)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if self._listing:
            return self.lazy.summary(cmd_name)
        return self.commands.get(cmd_name)

    def format_help(self, ctx: Any, formatter: Any) -> None:
        # The list of commands needs their names and help lines only: load none of them.
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False
