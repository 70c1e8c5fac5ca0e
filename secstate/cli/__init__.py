"""The ``secstate`` command line.

Errors print one line on stderr and exit non-zero; ``--debug`` adds the traceback.
Everything printed goes through ``secstate.cli.render``: no text from a request or
from the stored history can act on the terminal. Command groups live in sibling
modules; the root (``secstate.cli.groups``) imports one only when its command runs.
"""

from __future__ import annotations

import functools
import os
import select
import stat
import sys
import traceback
from typing import TYPE_CHECKING, Any, TypeGuard

import typer

from domain.errors import DamagedHistoryError, InvalidCommandError, SecStateError
from projections.errors import ProjectionError
from secstate.cli import failures, render
from secstate.cli.common import STATE, refresh_console_width
from secstate.cli.groups import LazyGroup, build_eager, new_app

if TYPE_CHECKING:
    from pydantic import ValidationError

# Exit codes: 1 = refused by a domain rule, bad input or a failure of the machine (a
# missing directory, a full disk, a read-only database), 2 = usage error, 3 = internal
# error, 130 = interrupted, 141 = stdout closed early (128 + SIGPIPE, as a shell reports
# any program a pipe's reader left behind: ``secstate timeline | head -1``).
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141


@functools.cache
def eager_app() -> typer.Typer:
    """The whole command line with every command module imported (``secstate.cli.app``)."""
    return build_eager()


def __getattr__(name: str) -> Any:
    if name == "app":  # built on first use: running a command never needs all of it
        return eager_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _command() -> Any:
    # The root group, built once; it imports a command's module only when the command is
    # run or its help is shown (secstate.cli.groups). In-process callers (the tests) run
    # many commands on the same tree cheaply.
    return typer.main.get_command(new_app(LazyGroup))


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    code = run(argv)
    if code == EXIT_BROKEN_PIPE:
        # What is still buffered for the closed pipe would fail again at exit, with a
        # traceback-like "Exception ignored" message: send it nowhere instead.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    sys.exit(code)


def _invoke(argv: list[str] | None) -> Any:
    """Parse and run one command; every exception reaches ``run`` as it was raised.

    (Typer's own ``main`` would turn a closed pipe into a silent exit 1 and swap
    ``sys.stdout``; parsing and invoking here keeps those decisions in ``run``.)
    """
    command = _command()
    args = sys.argv[1:] if argv is None else list(argv)
    with command.make_context("secstate", args) as ctx:
        result = command.invoke(ctx)
    sys.stdout.flush()  # a closed pipe shows here, while run() can still handle it
    if _stdout_reader_gone():
        raise BrokenPipeError(32, "Broken pipe")
    return result


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe nobody reads any more. A write the reader abandons
    halfway is reported by the kernel as a short write, not an error, and Python's
    buffered writer then drops the rest without a word: ask the pipe itself."""
    try:
        fd = sys.stdout.fileno()
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return False
    except (OSError, ValueError):  # not a file descriptor (captured, in-process)
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & select.POLLERR for _, events in poller.poll(0))


def _show_usage_error(e: typer.TyperException) -> None:
    """Click's usage error (usage line, hint, ``Error: ...``), made inert: the message
    repeats the offending argument as typed."""
    ctx = getattr(e, "ctx", None)
    if type(e).__name__ == "NoArgsIsHelpError":
        show = getattr(e, "show", None)
        if callable(show):  # the help text: ours, not the caller's
            show()
            return
    if ctx is not None:
        hint = ""
        if ctx.command.get_help_option(ctx) is not None:
            hint = f"Try '{ctx.command_path} {ctx.help_option_names[0]}' for help.\n"
        render.say(f"{ctx.get_usage()}\n{hint}", err=True)
    render.error(f"Error: {e.format_message()}")


def _command_name(argv: list[str] | None) -> str:
    """``timeline``, ``account show``: the words of argv that name the command run."""
    words: list[str] = []
    group: Any = _command()
    for arg in sys.argv[1:] if argv is None else argv:
        commands = getattr(group, "commands", None)
        if commands is None:
            break
        if arg in commands:
            words.append(arg)
            group = commands[arg]
        elif words and not arg.startswith("-"):
            break
    return " ".join(words)


def _store_description() -> str | None:
    settings = STATE._settings
    if settings is None:
        return None
    if settings.uses_postgres:
        return settings.describe_store()
    return f"SQLite store in {settings.home}"


def _is_validation_error(error: Exception) -> TypeGuard[ValidationError]:
    """Whether ``error`` is pydantic's ValidationError, without importing pydantic for a
    command that never did (then it cannot be one)."""
    pydantic = sys.modules.get("pydantic_core")
    return pydantic is not None and isinstance(error, pydantic.ValidationError)


def _print_traceback() -> None:
    render.say(traceback.format_exc().rstrip("\n"), err=True)


def run(argv: list[str] | None = None) -> int:
    refresh_console_width()
    try:
        result = _invoke(argv)
    except typer.Abort:
        render.error("aborted")
        return EXIT_INTERRUPTED
    except typer.Exit as e:
        return e.exit_code
    except typer.TyperException as e:  # usage errors: bad option, missing argument, ...
        _show_usage_error(e)
        return e.exit_code or EXIT_USAGE
    except InvalidCommandError as e:
        render.error(f"error: {e}")
        return EXIT_REFUSED
    except DamagedHistoryError as e:
        # Not bad input and not a bug: the store holds a row the ledger cannot trust.
        render.error(f"error: {STATE.locate(e)}")
        return EXIT_INTERNAL
    except ProjectionError as e:
        # A view stopped because of the machine (a full disk, say) is not an internal
        # error: say what failed; the view resumes from its position next time.
        cause = getattr(e, "cause", None)
        line = None
        if cause is not None and not isinstance(cause, DamagedHistoryError):
            line = failures.describe(cause, _command_name(argv), _store_description())
        if line is not None:
            render.error(f"{line}; {e.args[0].split(':', 1)[0]}, and resumes from there")
            return EXIT_REFUSED
        render.error(f"error: {e}")
        return EXIT_INTERNAL
    except SecStateError as e:
        render.error(f"error: {e}")
        if STATE.debug:
            _print_traceback()
        return EXIT_REFUSED
    except BrokenPipeError:
        # Whoever read stdout has gone (``| head``): nothing more to say, nowhere to say it.
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        render.error("interrupted")
        return EXIT_INTERRUPTED
    except Exception as e:
        if _is_validation_error(e):  # settings or other pydantic input
            from domain.commands import describe_validation_error

            problems = describe_validation_error(e)
            render.error("error: invalid settings or input: " + "; ".join(problems))
            return EXIT_REFUSED
        line = failures.describe(e, _command_name(argv), _store_description())
        if line is not None:
            render.error(line)
            if STATE.debug:
                _print_traceback()
            return EXIT_REFUSED
        render.error(f"internal error: {type(e).__name__}: {e}")
        if STATE.debug:
            _print_traceback()
        else:
            render.error("(run with --debug for the traceback)")
        return EXIT_INTERNAL
    finally:
        STATE.close()
    return result if isinstance(result, int) else 0
