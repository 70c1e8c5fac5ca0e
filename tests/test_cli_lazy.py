"""The root command loads a command's module only when that command runs.

``secstate.cli.groups.COMMANDS`` is what ``secstate --help`` lists without importing the
command modules: these tests keep it equal to what the modules register (the eager app),
and check, in fresh interpreters, which modules a help or a command actually loads.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer

from secstate import cli
from secstate.cli.groups import COMMANDS, MODULES, LazyGroup, new_app

# Heavy imports no help text needs: the ledger and its libraries, the settings.
HEAVY = (
    "argon2",
    "cryptography",
    "domain.commands",
    "domain.ledger",
    "eventsourcing",
    "pydantic",
    "pydantic_settings",
    "secstate.bootstrap",
    "secstate.settings",
)


def eager_root() -> Any:
    return typer.main.get_command(cli.eager_app())


def lazy_root() -> Any:
    return typer.main.get_command(new_app(LazyGroup))


def help_of(root: Any, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    capsys.readouterr()
    with pytest.raises(typer.Exit), root.make_context("secstate", [*args, "--help"]) as ctx:
        root.invoke(ctx)
    return capsys.readouterr().out


def leaves(command: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    if not hasattr(command, "commands"):
        return [path]
    return [leaf for name, sub in command.commands.items() for leaf in leaves(sub, (*path, name))]


def test_the_table_lists_the_eager_apps_commands_in_order_with_their_help_lines() -> None:
    # given: the root as every module registers itself on it
    eager = eager_root()
    # then: the table has the same names in the same order, and each one's help line
    assert [entry.name for entry in COMMANDS] == list(eager.commands)
    for entry in COMMANDS:
        help_text = eager.commands[entry.name].help or ""
        assert entry.help == inspect.cleandoc(help_text).split("\n\n")[0], entry.name
    # and: each entry names the module that registers it
    for module_name in MODULES:
        scratch = typer.Typer()
        __import__(f"secstate.cli.{module_name}", fromlist=["register"]).register(scratch)
        names = {info.name for info in scratch.registered_commands}
        names |= {info.name for info in scratch.registered_groups}
        assert names == {e.name for e in COMMANDS if e.module == module_name}, module_name


def test_the_lazy_roots_help_is_the_eager_apps(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    # given: a lazy root that has loaded nothing
    lazy = lazy_root()
    # when
    shown = help_of(lazy, capsys)
    # then: the same text as the eager app's, and still nothing loaded
    assert shown == help_of(eager_root(), capsys)
    assert all(entry.help.split()[0] in shown for entry in COMMANDS)
    assert lazy.commands.loaded == {}
    # and: a group's help is its module's
    assert help_of(lazy, capsys, "user") == help_of(eager_root(), capsys, "user")
    assert set(lazy.commands.loaded) == {"user", "password"}


def test_the_lazy_root_has_every_command_of_the_eager_app() -> None:
    # given
    lazy = lazy_root()
    # then: asking whether a name is there loads nothing; walking the tree loads
    # everything, and finds every leaf command the eager app has
    assert "account" in lazy.commands
    assert lazy.commands.loaded == {}
    assert lazy.commands.get("no-such-command") is None
    assert leaves(lazy) == leaves(eager_root())
    assert list(lazy.commands) == [entry.name for entry in COMMANDS]


def test_secstate_cli_app_is_the_whole_typer_app() -> None:
    assert isinstance(cli.app, typer.Typer)
    assert cli.app is cli.eager_app()
    with pytest.raises(AttributeError):
        _ = cli.no_such_attribute


def test_a_mistyped_command_is_still_suggested(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.run(["acount", "open", "x"]) == 2
    err = capsys.readouterr().err
    assert "No such command 'acount'" in err
    assert "Did you mean 'account'?" in err


# --- what a fresh process loads ----------------------------------------------------------------

PROBE = """
import json, sys
from secstate.cli import run
code = run(sys.argv[1:])
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


def loaded_by(home: Path, *args: str) -> tuple[set[str], set[str]]:
    """The command modules (``secstate.cli.<name>``) and the heavy packages that running
    ``secstate ARGS`` in a fresh interpreter loads."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECSTATE_")}
    env.update(
        SECSTATE_HOME=str(home),
        SECSTATE_ARGON2_TIME_COST="1",
        SECSTATE_ARGON2_MEMORY_KIB="1024",
        SECSTATE_ARGON2_PARALLELISM="1",
        COLUMNS="100",
    )
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=True,
    )
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["code"] == 0, proc.stderr
    modules = set(result["modules"])
    commands = {name for name in MODULES if f"secstate.cli.{name}" in modules}
    heavy = {name for name in HEAVY if name in modules}
    return commands, heavy


def test_the_root_help_loads_no_command_module_and_nothing_heavy(tmp_path: Path) -> None:
    assert loaded_by(tmp_path, "--help") == (set(), set())


def test_a_groups_help_loads_that_group_only(tmp_path: Path) -> None:
    commands, _ = loaded_by(tmp_path, "account", "--help")
    assert commands == {"account_commands"}


def test_a_command_loads_its_own_module_only(tmp_path: Path) -> None:
    # when: a one-event command on a fresh store
    commands, heavy = loaded_by(tmp_path, "account", "open", "acme")
    # then: the ledger is there (it did the work), the other command groups are not
    assert commands == {"account_commands"}
    assert {"domain.ledger", "secstate.bootstrap"} <= heavy
