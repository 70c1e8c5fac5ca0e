"""The views secstate knows by name, imported only when asked for."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from domain.errors import SecStateError
from projections.view import View


class UnknownProjectionError(SecStateError):
    """No view of that name is registered."""


class ProjectionUnavailableError(SecStateError):
    """The view is registered but its module cannot be imported."""


def _lazy(module: str, class_name: str) -> Callable[[], View]:
    """A factory importing ``module`` on first use, so listing names costs nothing."""

    def make() -> View:
        try:
            cls = getattr(importlib.import_module(module), class_name)
        except (ImportError, AttributeError) as e:
            raise ProjectionUnavailableError(
                f"projection view {module}.{class_name} cannot be loaded: {e}"
            ) from e
        view = cls()
        if not isinstance(view, View):
            raise ProjectionUnavailableError(f"{module}.{class_name} is not a View")
        return view

    return make


VIEWS: dict[str, Callable[[], View]] = {
    "state": _lazy("projections.state", "StateView"),
    "timeline": _lazy("projections.timeline", "TimelineView"),
}


def view_names() -> list[str]:
    return sorted(VIEWS)


def pick_names(names: list[str], known: list[str]) -> list[str]:
    """The names asked for, in order without repeats; all of ``known`` if none.
    ``UnknownProjectionError`` lists the known names."""
    if not names:
        return list(known)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UnknownProjectionError(
            f"unknown projection {', '.join(repr(n) for n in unknown)}; known: {', '.join(known)}"
        )
    return list(dict.fromkeys(names))


def check_names(names: list[str]) -> list[str]:
    """The views asked for, in order without repeats; all registered ones if none."""
    return pick_names(names, view_names())


def make_view(name: str) -> View:
    """A fresh view by name; ``UnknownProjectionError`` lists the known names."""
    check_names([name])
    view = VIEWS[name]()
    if view.name != name:
        raise ProjectionUnavailableError(
            f"projection registered as {name!r} calls itself {view.name!r}"
        )
    return view
