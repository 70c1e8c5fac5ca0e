"""The ``secstate`` command line.

Errors print one line on stderr and exit non-zero; ``--debug`` adds the traceback.
Command groups live in sibling modules and register themselves on ``app`` below.
"""

from __future__ import annotations

import functools
import sys
import traceback
from typing import Any

import typer
from pydantic import ValidationError

from domain.commands import describe_validation_error
from domain.errors import DamagedHistoryError, InvalidCommandError, SecStateError
from projections.base import ProjectionError
from secstate.cli.common import STATE, err_console, refresh_console_width, root_callback

app = typer.Typer(
    name="secstate",
    help="Event-sourced account-security ledger: record, inspect and investigate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.callback()(root_callback)

# Exit codes: 1 = refused by a domain rule or bad input, 2 = usage error, 3 = internal error.
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3


def _register_groups() -> None:
    # Imported here so each module can import ``app`` helpers without cycles.
    from secstate.cli import ledger_commands

    ledger_commands.register(app)
    for module_name in (
        "demo",
        "state_commands",
        "timeline_commands",
        "projection_commands",
        "key_commands",
    ):
        try:
            module = __import__(f"secstate.cli.{module_name}", fromlist=["register"])
        except ModuleNotFoundError as e:
            if e.name != f"secstate.cli.{module_name}":
                raise
            continue
        module.register(app)


_register_groups()


@functools.cache
def _command() -> Any:
    # Typer rebuilds its click command tree on every app() call (~0.1 s for all groups);
    # build it once so in-process callers (the tests) can run many commands cheaply.
    return typer.main.get_command(app)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    sys.exit(run(argv))


def run(argv: list[str] | None = None) -> int:
    refresh_console_width()
    try:
        result = _command()(args=argv, standalone_mode=False)
    except typer.Abort:
        err_console.print("aborted")
        return 130
    except typer.Exit as e:
        return e.exit_code
    except typer.TyperException as e:  # usage errors: bad option, missing argument, ...
        show = getattr(e, "show", None)
        if callable(show):
            show()
        else:
            err_console.print(f"error: {e.format_message()}", markup=False, highlight=False)
        return e.exit_code or EXIT_USAGE
    except InvalidCommandError as e:
        err_console.print(f"error: {e}", markup=False, highlight=False)
        return EXIT_REFUSED
    except DamagedHistoryError as e:
        # Not bad input and not a bug: the store holds a row the ledger cannot trust.
        err_console.print(f"error: {STATE.locate(e)}", markup=False, highlight=False)
        return EXIT_INTERNAL
    except ProjectionError as e:
        err_console.print(f"error: {e}", markup=False, highlight=False)
        return EXIT_INTERNAL
    except SecStateError as e:
        err_console.print(f"error: {e}", markup=False, highlight=False)
        if STATE.debug:
            traceback.print_exc()
        return EXIT_REFUSED
    except ValidationError as e:  # settings or other pydantic input
        err_console.print(
            "error: invalid settings or input: " + "; ".join(describe_validation_error(e)),
            markup=False,
            highlight=False,
        )
        return EXIT_REFUSED
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130
    except Exception as e:
        err_console.print(f"internal error: {type(e).__name__}: {e}", markup=False, highlight=False)
        if STATE.debug:
            traceback.print_exc()
        else:
            err_console.print("(run with --debug for the traceback)")
        return EXIT_INTERNAL
    finally:
        STATE.close()
    return result if isinstance(result, int) else 0
