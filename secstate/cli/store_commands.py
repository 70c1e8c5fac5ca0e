"""The store as a whole: ``secstate init`` (busy-store errors: ``groups.StoreGroup``).

No command needs ``init`` first: the first use of a store creates what it lacks, once,
under the store's setup lock. ``init`` is for deployments that keep the right to create
tables away from the processes that use them: run it once as the owner, then run
everything else as a role without CREATE (docs/architecture.md, "Persistence").
"""

from __future__ import annotations

import typer

from projections.follower import view_follower
from projections.registry import make_view, view_names
from projections.timeline import TimelineView
from secstate.bootstrap import open_view_db
from secstate.cli.common import STATE, JsonOption, print_json, say


def init_store(json_out: JsonOption = False) -> None:
    """Create the store's schema and tables (ledger and views) if missing.

    Not needed before use. Run it once as a database role that may create tables; the
    processes that use the store then never need that right.
    """
    settings = STATE.settings
    ledger = STATE.ledger  # creates the ledger's tables if missing
    created: list[str] = []
    for name in view_names():
        view = make_view(name)
        db = open_view_db(settings, name)
        try:
            had = db.existing_tables(view.tables)
            view_follower(ledger, view, db)  # creates the view's tables if missing
            indexed = isinstance(view, TimelineView) and bool(view.ensure_indexes(db))
            if had != set(view.tables) or indexed:
                created.append(name)
        finally:
            db.close()
    if json_out:
        print_json({"store": settings.describe_store(), "views": view_names(), "created": created})
        return
    say(f"store ready: {settings.describe_store()}")
    say(f"views: {', '.join(view_names())} ({', '.join(created) or 'none'} set up now)")


def register(app: typer.Typer) -> None:
    app.command("init")(init_store)
