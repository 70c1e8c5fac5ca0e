"""The checked-in contracts, generated from the models: one JSON Schema per event type
(the whole message value, ``SecurityEvent[Model]``) and the AsyncAPI document.

    python -m contracts.schemas [DIR]

writes ``DIR/<ce_type>.json`` for every model, ``DIR/index.json`` (every type, its
model and file) and ``DIR/../asyncapi.yaml``; DIR is ``docs/schemas`` by default. The
output is stable (sorted keys, two-space indent, a trailing newline), so the files are
regenerated whenever a model changes, and a test fails while they differ.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from contracts.asyncapi import render_asyncapi
from contracts.payloads import MODELS, EventData
from contracts.registry import envelope_for

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
DEFAULT_DIR = Path("docs") / "schemas"
INDEX = "index.json"
ASYNCAPI = "asyncapi.yaml"
REGENERATE = "python -m contracts.schemas"


def schema_file(model: type[EventData]) -> str:
    return f"{model.CE_TYPE}.json"


def event_schema(model: type[EventData]) -> dict[str, Any]:
    """The JSON Schema of a message value of ``model``'s type."""
    schema = envelope_for(model).model_json_schema()
    schema["$schema"] = JSON_SCHEMA_DIALECT
    schema["title"] = model.CE_TYPE
    schema["description"] = f"{model.EVENT_TYPE}: {(model.__doc__ or '').strip()}"
    schema["properties"]["type"]["const"] = model.EVENT_TYPE
    return schema


def index() -> dict[str, Any]:
    return {
        "events": [
            {
                "ce_type": model.CE_TYPE,
                "event_type": model.EVENT_TYPE,
                "model": f"{model.__module__}.{model.__qualname__}",
                "schema": schema_file(model),
                "summary": (model.__doc__ or "").strip(),
                "version": model.VERSION,
            }
            for model in MODELS
        ]
    }


def dumps(document: Any) -> str:
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=True) + "\n"


def render(schema_dir: str = "schemas") -> dict[str, str]:
    """Every generated file, by its path relative to the docs directory."""
    files = {f"{schema_dir}/{schema_file(m)}": dumps(event_schema(m)) for m in MODELS}
    files[f"{schema_dir}/{INDEX}"] = dumps(index())
    files[ASYNCAPI] = render_asyncapi({m: f"./{schema_dir}/{schema_file(m)}" for m in MODELS})
    return files


def write(target: Path) -> list[Path]:
    """Write the files for schema directory ``target``; stale schemas are removed."""
    target.mkdir(parents=True, exist_ok=True)
    docs = target.parent
    files = render(target.name)
    for stale in target.glob("io.secstate.*.json"):
        if f"{target.name}/{stale.name}" not in files:
            stale.unlink()
    written = []
    for relative, text in files.items():
        path = docs / relative
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) > 1 or any(a.startswith("-") for a in args):
        print(f"usage: {REGENERATE} [DIR]  (default {DEFAULT_DIR})", file=sys.stderr)
        return 2
    target = Path(args[0]) if args else DEFAULT_DIR
    written = write(target)
    print(f"{len(MODELS)} event types; {len(written)} file(s) changed under {target.parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
