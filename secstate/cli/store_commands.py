"""The store as a whole: busy-store errors for every command."""

from __future__ import annotations

from typing import Any

from typer.core import TyperGroup

from domain.errors import StoreBusyError
from secstate.cli.common import STATE
from secstate.settings import Settings
from secstate.store import busy_error


class StoreGroup(TyperGroup):
    """The root command group: database trouble that says nothing about the command (a
    store locked past its timeout, a lost connection) leaves as ``StoreBusyError``, a
    refusal on one line, rather than as an internal error."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except StoreBusyError:
            raise
        except Exception as error:
            busy = busy_error(error, _settings_if_any())
            if busy is None:
                raise
            raise busy from error


def _settings_if_any() -> Settings | None:
    """The command's settings, for the message; None if they are what failed."""
    try:
        return STATE.settings
    except Exception:
        return None
