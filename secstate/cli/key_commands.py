"""``secstate keys``: this host's key ring, for operators.

``status`` says where the ring comes from, its key ids and fingerprints, the active key,
and which key ids the store's sealed values name, flagging any the ring lacks (exit 1
when there is a problem). ``init`` makes a first ``keyring.json`` on purpose;
``generate`` makes a new key (an entry for SECSTATE_KEYS, or added to keyring.json with
``--add``); ``activate`` and ``remove`` finish a rotation; ``export`` prints the ring as
SECSTATE_KEYS for another host. Key material is printed only by ``generate`` (without
``--add``) and ``export``, once, on stdout; nothing here logs it.
"""

from __future__ import annotations

import dataclasses
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from domain.errors import SecretKeyError, SecStateError
from domain.secrets import KeyRing
from secstate.cli import render
from secstate.cli.common import STATE, JsonOption, print_json, print_table, say
from secstate.keyring import (
    DAMAGED,
    ENV_SOURCE,
    KeyRingChangeRefusedError,
    KeyRingExistsError,
    RingFile,
    check_may_create_ring,
    configured_ring,
    create_ring_file,
    describe_usage,
    file_mode_problem,
    format_keys,
    fresh_key_id,
    keyring_path,
    no_ring_here,
    parse_keys,
    read_ring_file,
    restore_advice,
    ring_file_lock,
    sealed_key_ids,
    sealed_values,
    write_ring_file,
)
from secstate.settings import Settings

keys_app = typer.Typer(
    help="This host's key ring: status, creation, new keys and rotation.", no_args_is_help=True
)

KeyIdArg = Annotated[str, typer.Argument(metavar="KEY_ID", help="A key id of the ring.")]


class KeyRingProblemError(SecStateError):
    """``keys status`` found a problem with the key ring or the store's sealed values."""


def note(text: str) -> None:
    """Guidance for the operator, on stderr so stdout stays the data."""
    render.say(text, err=True)


def emit_secret(line: str) -> None:
    """Key material: one line on stdout, written once, never through a logger or a table."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


# --- status ---------------------------------------------------------------------------------


@dataclass
class KeyRow:
    key_id: str
    fingerprint: str | None
    in_ring: bool
    active: bool
    sealed_values: int
    opened: int | None = None
    failed: int | None = None


@dataclass
class Status:
    source: str  # "SECSTATE_KEYS", "file" or "none"
    path: str | None
    active_key_id: str | None
    active_from: str | None
    store: str
    rows: list[KeyRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "path": self.path,
            "active_key_id": self.active_key_id,
            "active_from": self.active_from,
            "store": self.store,
            "sealed_values": sum(r.sealed_values for r in self.rows),
            "keys": [dataclasses.asdict(r) for r in self.rows],
            "missing_key_ids": [
                r.key_id for r in self.rows if not r.in_ring and r.key_id != DAMAGED
            ],
            "notes": self.notes,
            "problems": self.problems,
            "ok": not self.problems,
        }


def _active_from(settings: Settings) -> str:
    if settings.active_key_id is not None:
        return "SECSTATE_ACTIVE_KEY_ID"
    if settings.keys is not None:
        return "last id in sort order (set SECSTATE_ACTIVE_KEY_ID to choose)"
    return "the file's active"


def gather_status(settings: Settings, *, verify: bool) -> Status:
    ring = configured_ring(settings)
    path = keyring_path(settings)
    source = "none" if ring is None else (ENV_SOURCE if settings.keys is not None else "file")
    status = Status(
        source=source,
        path=str(path) if source != ENV_SOURCE else None,
        active_key_id=ring.active_key_id if ring else None,
        active_from=_active_from(settings) if ring else None,
        store=settings.describe_store(),
    )
    usage: Counter[str] = Counter()
    opened: Counter[str] = Counter()
    failed: Counter[str] = Counter()
    for value in sealed_values(STATE.ledger):
        usage[value.key_id] += 1
        if verify and ring is not None and ring.holds(value.key_id):
            try:
                ring.open(value.sealed, value.associated_data)
            except SecretKeyError:
                failed[value.key_id] += 1
            else:
                opened[value.key_id] += 1
    ids = sorted(set(ring.key_ids if ring else []) | set(usage))
    for key_id in ids:
        held = ring is not None and ring.holds(key_id)
        status.rows.append(
            KeyRow(
                key_id=key_id,
                fingerprint=ring.fingerprint(key_id) if ring is not None and held else None,
                in_ring=held,
                active=ring is not None and key_id == ring.active_key_id,
                sealed_values=usage[key_id],
                opened=opened[key_id] if verify and held else None,
                failed=failed[key_id] if verify and held else None,
            )
        )
    _judge(settings, ring, status, usage, opened, failed)
    return status


def _judge(
    settings: Settings,
    ring: KeyRing | None,
    status: Status,
    usage: Counter[str],
    opened: Counter[str],
    failed: Counter[str],
) -> None:
    """Notes and problems of a status: what an operator must act on."""
    path = keyring_path(settings)
    if ring is None:
        if usage:
            status.problems.append(
                f"{no_ring_here(settings)}, and the store holds values sealed under "
                f"{describe_usage(usage)}: {restore_advice(settings)}"
            )
        elif settings.uses_postgres:
            status.notes.append(
                "no key ring on this host: set SECSTATE_KEYS to the ring the other hosts use, "
                "or, if no host has one yet, run `secstate keys init` on one of them"
            )
        else:
            status.notes.append(f"no key ring yet: {path} is made when a secret is first sealed")
    elif settings.keys is not None and path.exists():
        status.notes.append(f"{path} is ignored while SECSTATE_KEYS is set")
    if ring is not None and settings.keys is None:
        mode = file_mode_problem(path)
        if mode:
            status.problems.append(mode)
    for key_id, count in sorted(usage.items()):
        if key_id == DAMAGED:
            status.problems.append(f"{count} sealed value(s) name no valid key id: damaged")
        elif ring is None or not ring.holds(key_id):
            if ring is not None:
                status.problems.append(
                    f"key {key_id} is missing from the key ring: {count} sealed value(s) "
                    "cannot be opened; restore it from the backup of SECSTATE_KEYS or "
                    "keyring.json"
                )
        elif failed[key_id] and not opened[key_id]:
            status.problems.append(
                f"key {key_id} here (fingerprint {ring.fingerprint(key_id)}) opens none of its "
                f"{count} sealed value(s): it is not the key that sealed them; compare "
                "fingerprints with the other hosts and the backups"
            )
        elif failed[key_id]:
            status.problems.append(
                f"{failed[key_id]} of {count} value(s) sealed under key {key_id} fail "
                "authentication: they were altered or moved"
            )


def print_status(status: Status, *, verify: bool) -> None:
    source = {
        "SECSTATE_KEYS": "SECSTATE_KEYS",
        "file": str(status.path),
        "none": "none",
    }[status.source]
    say(f"key ring: {source}")
    if status.active_key_id:
        say(f"active key: {status.active_key_id} ({status.active_from})")
    say(f"store: {status.store}")
    columns = ["key id", "fingerprint", "in ring", "active", "sealed values"]
    if verify:
        columns += ["open", "fail"]
    rows = []
    for r in status.rows:
        row: list[Any] = [
            r.key_id,
            r.fingerprint or "-",
            "yes" if r.in_ring else "MISSING",
            "yes" if r.active else "",
            r.sealed_values,
        ]
        if verify:
            row += ["-" if r.opened is None else r.opened, "-" if r.failed is None else r.failed]
        rows.append(row)
    if rows:
        print_table(None, columns, rows)
    for text in status.notes:
        say(f"note: {text}")
    for text in status.problems:
        say(f"problem: {text}")


@keys_app.command("status")
def keys_status(
    json_out: JsonOption = False,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify",
            help="Also open every sealed value, to tell a wrong key from tampering.",
        ),
    ] = False,
) -> None:
    """Where the ring comes from, its keys, and the key ids the store's sealed values use."""
    status = gather_status(STATE.settings, verify=verify)
    if json_out:
        print_json(status.as_json())
    else:
        print_status(status, verify=verify)
    if status.problems:
        more = f" (and {len(status.problems) - 1} more)" if len(status.problems) > 1 else ""
        raise KeyRingProblemError(status.problems[0] + more)


# --- making keys ------------------------------------------------------------------------------


@keys_app.command("init")
def keys_init(
    accept_unreadable: Annotated[
        bool,
        typer.Option(
            "--accept-unreadable",
            help="Make a ring although the store holds values sealed under keys it will not "
            "have (the keys are lost; those values stay unreadable).",
        ),
    ] = False,
) -> None:
    """Make this host's first key ring file, keyring.json (refused if one is configured,
    or if the store holds sealed values a new key would not open)."""
    settings = STATE.settings
    path = keyring_path(settings)
    if settings.keys is None and path.exists():
        ring = read_ring_file(path)
        raise KeyRingExistsError(
            f"key ring file {path} exists already (keys {', '.join(sorted(ring.keys))}); add a "
            "key with `secstate keys generate --add`"
        )
    usage = sealed_key_ids(STATE.ledger) if settings.keys is None else Counter[str]()
    check_may_create_ring(settings, usage, automatic=False, accept_unreadable=accept_unreadable)
    try:
        made = create_ring_file(settings)
    except FileExistsError:
        raise KeyRingExistsError(f"key ring file {path} was made meanwhile: use that") from None
    key_id = made.active
    say(
        f"created key ring {made.path} with key {key_id} "
        f"(fingerprint {KeyRing(made.keys, key_id).fingerprint(key_id)})"
    )
    if usage:
        note(
            f"warning: {sum(usage.values())} value(s) sealed under {describe_usage(usage)} "
            "stay unreadable"
        )
    note(f"back up {made.path} now, apart from the database: a lost key loses its secrets")
    if settings.uses_postgres:
        note(
            "every host on this store needs the same ring: `secstate keys export` prints it "
            "for SECSTATE_KEYS, or copy the file (mode 0600)"
        )


def _file_ring_to_change(settings: Settings, doing: str) -> Path:
    """The key ring file a command changes, or why there is none to change."""
    if settings.keys is not None:
        raise KeyRingChangeRefusedError(
            f"the key ring comes from SECSTATE_KEYS, which this command cannot change: {doing}"
        )
    path = keyring_path(settings)
    if not path.exists():
        raise KeyRingChangeRefusedError(
            f"{no_ring_here(settings)}: run `secstate keys init` first, or set SECSTATE_KEYS"
        )
    return path


def _refuse_active_override(settings: Settings) -> None:
    """The file's active key is moot while SECSTATE_ACTIVE_KEY_ID overrides it."""
    if settings.active_key_id is not None:
        raise KeyRingChangeRefusedError(
            f"SECSTATE_ACTIVE_KEY_ID={settings.active_key_id} overrides the file's active key: "
            "change or unset it instead"
        )


def _change_ring_file(
    settings: Settings, path: Path, change: Callable[[RingFile], tuple[dict[str, bytes], str]]
) -> RingFile:
    """Read, change and atomically replace the ring file, under this home's lock."""
    with ring_file_lock(settings):
        before = read_ring_file(path)
        keys, active = change(before)
        write_ring_file(path, keys, active, replace=True)
    return RingFile(path, keys, active)


@keys_app.command("generate")
def keys_generate(
    add: Annotated[
        bool, typer.Option("--add", help="Add the key to keyring.json instead of printing it.")
    ] = False,
    activate: Annotated[
        bool, typer.Option("--activate", help="With --add: seal new secrets with the key.")
    ] = False,
) -> None:
    """Make a new key: printed once as a KEY_ID:BASE64 entry for SECSTATE_KEYS, or added to
    keyring.json with --add."""
    settings = STATE.settings
    if not add:
        if activate:
            raise KeyRingChangeRefusedError(
                "--activate needs --add; with SECSTATE_KEYS, set SECSTATE_ACTIVE_KEY_ID to the "
                "new key id on every host instead"
            )
        ring = configured_ring(settings)
        key_id = fresh_key_id(ring.key_ids if ring else [])
        key = KeyRing.generate_key()
        emit_secret(format_keys({key_id: key}))
        fingerprint = KeyRing({key_id: key}, key_id).fingerprint(key_id)
        note(
            f"new key {key_id} (fingerprint {fingerprint}): add the entry above to "
            "SECSTATE_KEYS on every host, keeping the old keys (comma-separated), then seal "
            f"with it: SECSTATE_ACTIVE_KEY_ID={key_id}"
            + ("; or run `secstate keys generate --add`" if settings.keys is None else "")
        )
        return
    path = _file_ring_to_change(settings, "add the printed entry of `secstate keys generate`")
    if activate:
        _refuse_active_override(settings)

    added: list[str] = []

    def add_key(ring: RingFile) -> tuple[dict[str, bytes], str]:
        key_id = fresh_key_id(list(ring.keys))
        added.append(key_id)
        keys = {**ring.keys, key_id: KeyRing.generate_key()}
        return keys, key_id if activate else ring.active

    after = _change_ring_file(settings, path, add_key)
    key_id = added[0]
    fingerprint = KeyRing(after.keys, after.active).fingerprint(key_id)
    say(f"added key {key_id} (fingerprint {fingerprint}) to {path}")
    say(f"active key: {after.active}")
    note(f"back up {path} now; other hosts need the new key too before it seals anything")


@keys_app.command("activate")
def keys_activate(key_id: KeyIdArg) -> None:
    """Seal new secrets with KEY_ID (keyring.json; with SECSTATE_KEYS set
    SECSTATE_ACTIVE_KEY_ID)."""
    settings = STATE.settings
    path = _file_ring_to_change(settings, f"set SECSTATE_ACTIVE_KEY_ID={key_id} instead")
    _refuse_active_override(settings)

    def make_active(ring: RingFile) -> tuple[dict[str, bytes], str]:
        if key_id not in ring.keys:
            raise KeyRingChangeRefusedError(
                f"key {key_id} is not in {path} (keys {', '.join(sorted(ring.keys))})"
            )
        return ring.keys, key_id

    _change_ring_file(settings, path, make_active)
    say(f"active key: {key_id}: new secrets are sealed with it; older ones still open")


@keys_app.command("remove")
def keys_remove(
    key_id: KeyIdArg,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Remove it although the store holds values sealed under it (they become "
            "unreadable).",
        ),
    ] = False,
) -> None:
    """Drop a key that no longer seals anything the store needs (keyring.json)."""
    settings = STATE.settings
    path = _file_ring_to_change(settings, f"drop {key_id} from SECSTATE_KEYS instead")
    in_use = sealed_key_ids(STATE.ledger)[key_id]

    def drop(ring: RingFile) -> tuple[dict[str, bytes], str]:
        if key_id not in ring.keys:
            raise KeyRingChangeRefusedError(f"key {key_id} is not in {path}")
        if key_id in (ring.active, settings.active_key_id):
            raise KeyRingChangeRefusedError(
                f"key {key_id} is the active key; activate another one first"
            )
        if in_use and not force:
            raise KeyRingChangeRefusedError(
                f"the store holds {in_use} value(s) sealed under key {key_id}, which would "
                "become unreadable: issue new secrets first (re-enrol TOTP, rotate DKIM keys), "
                "or give --force"
            )
        return {k: v for k, v in ring.keys.items() if k != key_id}, ring.active

    _change_ring_file(settings, path, drop)
    say(f"removed key {key_id} from {path}")
    if in_use:
        note(f"warning: {in_use} value(s) sealed under {key_id} can no longer be opened")


@keys_app.command("export")
def keys_export() -> None:
    """Print this host's ring as SECSTATE_KEYS and SECSTATE_ACTIVE_KEY_ID lines, for the
    other hosts on the same store (key material: pass it only over a secure channel)."""
    settings = STATE.settings
    ring = configured_ring(settings)
    if ring is None:
        raise KeyRingChangeRefusedError(f"{no_ring_here(settings)}: there is nothing to export")
    if settings.keys is not None:
        keys = parse_keys(settings.keys.get_secret_value())
    else:
        keys = read_ring_file(keyring_path(settings)).keys
    note("warning: the lines below are the keys themselves; keep them out of logs and tickets")
    emit_secret(f"SECSTATE_KEYS={format_keys(keys)}")
    emit_secret(f"SECSTATE_ACTIVE_KEY_ID={ring.active_key_id}")


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="keys")
