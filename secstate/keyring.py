"""This host's key ring: where it comes from, when one may be created, and its file.

The ring comes from ``SECSTATE_KEYS`` (``KEY_ID:BASE64,...``), else from ``keyring.json``
in ``SECSTATE_HOME``. It is loaded only when something seals or opens a secret.

**Creation rule.** A key is made without being asked for only for an embedded SQLite
store that holds no sealed value: its ``keyring.json`` lives beside the store, so no
other host can hold a ring for it, and a new key makes nothing unreadable. A store that
holds sealed values never gets a new ring made for it silently (the values would stay
sealed under a key this host lacks), and a PostgreSQL store never does (it is shared by
hosts, and a ring made here would differ from theirs): the host refuses, naming what to
set. ``secstate keys init`` makes a ring on purpose, under the same refusal.

Sealed values are found by scanning the store's events of the topics in
``SEALED_FIELDS``; ``secstate keys status`` uses the same scan.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import json
import os
import secrets
import stat
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from domain.account import dkim_aad
from domain.decoder import EventDecoder
from domain.errors import DuplicateKeyIdError, NoKeyRingError, SecretKeyError, SecStateError
from domain.ledger import Ledger
from domain.reader import LedgerReader
from domain.secrets import (
    KeyRing,
    check_key_id,
    check_key_length,
    key_fingerprint,
    new_key_id,
)
from domain.user import totp_aad
from secstate.settings import Settings
from store.files import private_dir

KEYRING_FILE = "keyring.json"
ENV_SOURCE = "SECSTATE_KEYS"
_FILE_FIELDS = frozenset({"active", "keys", "fingerprints"})
_SCAN_BATCH = 1000


class KeyRingExistsError(SecStateError):
    """A key ring is configured already; creating another is refused."""


class KeyRingChangeRefusedError(SecStateError):
    """A change to the key ring would leave sealed values unreadable or the ring unusable."""


# --- sealed values in the store -------------------------------------------------------------


@dataclass(frozen=True)
class SealedField:
    """An event field that holds a sealed value, and the associated data it is bound to."""

    topic: str
    field: str
    associated_data: Callable[[Any], bytes]


SEALED_FIELDS: tuple[SealedField, ...] = (
    SealedField(
        "secstate.User.TotpEnrolmentStarted",
        "sealed_seed",
        lambda e: totp_aad(e.originator_id, e.factor_id),
    ),
    SealedField(
        "secstate.Account.DkimKeyGenerated",
        "sealed_private_key",
        lambda e: dkim_aad(e.originator_id, e.domain, e.selector),
    ),
)
_BY_TOPIC = {f.topic: f for f in SEALED_FIELDS}
DAMAGED = "(damaged)"  # the key id reported for a sealed value that names none


@dataclass(frozen=True)
class SealedValue:
    """One sealed value of the store: where it is, which key id it names."""

    position: int
    originator_id: UUID
    topic: str
    key_id: str
    sealed: str
    associated_data: bytes

    def __repr__(self) -> str:
        return (
            f"SealedValue(position={self.position}, topic={self.topic!r}, key_id={self.key_id!r})"
        )


def sealed_values(ledger: LedgerReader, *, limit: int | None = None) -> Iterator[SealedValue]:
    """Every sealed value in the store, in log order (the first ``limit`` of them)."""
    topics = [f.topic for f in SEALED_FIELDS]
    decoder = EventDecoder(ledger.mapper)
    found = 0
    for rows in ledger.log_store.scan(topics=topics, batch=_SCAN_BATCH):
        for row in rows:
            spec = _BY_TOPIC[row.topic]
            event = decoder.decode(row)
            sealed = str(getattr(event, spec.field, ""))
            try:
                key_id = KeyRing.key_id_of(sealed)
                check_key_id(key_id)
            except SecretKeyError:
                key_id = DAMAGED
            yield SealedValue(
                row.position,
                event.originator_id,
                row.topic,
                key_id,
                sealed,
                spec.associated_data(event),
            )
            found += 1
            if limit is not None and found >= limit:
                return


def sealed_key_ids(ledger: Ledger) -> Counter[str]:
    """How many of the store's sealed values name each key id."""
    return Counter(value.key_id for value in sealed_values(ledger))


def describe_usage(usage: Mapping[str, int]) -> str:
    """``k1 (3 values), k2 (1 value)``: the key ids sealed values name, and how often."""
    return ", ".join(
        f"{key_id} ({count} value{'' if count == 1 else 's'})"
        for key_id, count in sorted(usage.items())
    )


def restore_advice(settings: Settings) -> str:
    """What to do when this host lacks the ring the store's sealed values need."""
    if settings.uses_postgres:
        return (
            "set SECSTATE_KEYS to the ring the other hosts use (`secstate keys export` "
            "there), or restore keyring.json from its backup"
        )
    return "restore keyring.json from its backup, or set SECSTATE_KEYS to the ring that sealed them"


# --- SECSTATE_KEYS ------------------------------------------------------------------------


def parse_keys(text: str) -> dict[str, bytes]:
    """``KEY_ID:BASE64[,KEY_ID:BASE64...]``; a key id given twice is refused."""
    keys: dict[str, bytes] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key_id, sep, b64 = part.partition(":")
        if not sep:
            raise SecretKeyError("SECSTATE_KEYS entries must look like KEY_ID:BASE64")
        check_key_id(key_id)
        if key_id in keys:
            raise DuplicateKeyIdError(
                f"key id {key_id} appears twice in SECSTATE_KEYS: each id must name one key"
            )
        try:
            keys[key_id] = base64.b64decode(b64.strip(), validate=True)
        except binascii.Error:
            raise SecretKeyError(f"key {key_id} in SECSTATE_KEYS is not valid base64") from None
    if not keys:
        raise SecretKeyError("SECSTATE_KEYS holds no keys")
    return keys


def format_keys(keys: Mapping[str, bytes]) -> str:
    """The value of SECSTATE_KEYS that holds ``keys``."""
    return ",".join(f"{k}:{base64.b64encode(v).decode()}" for k, v in sorted(keys.items()))


# --- keyring.json ---------------------------------------------------------------------------


def keyring_path(settings: Settings) -> Path:
    """Where this host's key ring file is (or would be); nothing is created."""
    return settings.home / KEYRING_FILE


@dataclass(frozen=True)
class RingFile:
    """What a key ring file holds."""

    path: Path
    keys: dict[str, bytes]
    active: str

    def __repr__(self) -> str:
        return f"RingFile(path={str(self.path)!r}, keys={sorted(self.keys)}, active={self.active})"


def read_ring_file(path: Path) -> RingFile:
    """Parse and check a key ring file; duplicate names and wrong fingerprints are refused."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise
    except OSError as e:
        raise SecretKeyError(f"key ring file {path} cannot be read: {e.strerror}") from None

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for name, value in pairs:
            if name in seen:
                raise DuplicateKeyIdError(
                    f"key ring file {path} names {name!r} twice: each key id (and field) "
                    "must appear once"
                )
            seen[name] = value
        return seen

    try:
        data = json.loads(text, object_pairs_hook=no_duplicates)
    except ValueError as e:
        raise SecretKeyError(f"key ring file {path} is not valid JSON: {e}") from None
    return RingFile(path, *_check_ring_data(path, data))


def _check_ring_data(path: Path, data: Any) -> tuple[dict[str, bytes], str]:
    """The keys and active id of a parsed key ring file, or a named problem."""
    where = f"key ring file {path}"
    if not isinstance(data, dict):
        raise SecretKeyError(f"{where} must hold a JSON object")
    unknown = sorted(set(data) - _FILE_FIELDS)
    if unknown:
        raise SecretKeyError(f"{where} has unknown field(s) {', '.join(map(repr, unknown))}")
    encoded, active = data.get("keys"), data.get("active")
    if not isinstance(encoded, dict) or not encoded:
        raise SecretKeyError(f"{where} must hold 'keys': an object of key id to base64 key")
    if not isinstance(active, str):
        raise SecretKeyError(f"{where} must name its 'active' key id")
    keys: dict[str, bytes] = {}
    for key_id, b64 in encoded.items():
        check_key_id(key_id)
        try:
            keys[key_id] = base64.b64decode(str(b64), validate=True)
        except binascii.Error:
            raise SecretKeyError(f"key {key_id} in {where} is not valid base64") from None
        check_key_length(key_id, keys[key_id])
    fingerprints = data.get("fingerprints", {})
    if not isinstance(fingerprints, dict):
        raise SecretKeyError(f"{where}: 'fingerprints' must be an object of key id to text")
    for key_id, recorded in fingerprints.items():
        if key_id in keys and recorded != key_fingerprint(keys[key_id]):
            raise SecretKeyError(
                f"{where}: key {key_id} does not match its recorded fingerprint {recorded!r}: "
                "the key was changed under an existing id; restore the file from its backup"
            )
    return keys, active


def ring_file_text(keys: Mapping[str, bytes], active: str) -> str:
    """The JSON of a key ring file: keys, the active id and each key's fingerprint."""
    data = {
        "active": active,
        "keys": {k: base64.b64encode(v).decode() for k, v in sorted(keys.items())},
        "fingerprints": {k: key_fingerprint(v) for k, v in sorted(keys.items())},
    }
    return json.dumps(data, indent=2) + "\n"


def write_ring_file(path: Path, keys: Mapping[str, bytes], active: str, *, replace: bool) -> None:
    """Write the file atomically, mode 0600. Without ``replace``, an existing file is
    left alone and FileExistsError raised (two first uses at once: one ring wins)."""
    KeyRing(keys, active)  # refuse to write a ring that would not load
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(ring_file_text(keys, active))
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if the file exists: never replaces a ring
    finally:
        tmp.unlink(missing_ok=True)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


@contextlib.contextmanager
def ring_file_lock(settings: Settings) -> Iterator[None]:
    """Serialise changes to this home's key ring file (read, change, replace)."""
    home = _ensure_home(settings)
    fd = os.open(home / f".{KEYRING_FILE}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def file_mode_problem(path: Path) -> str | None:
    """A one-line problem if others than the owner may read or write the file."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        return f"key ring file {path} has mode {mode:04o}; make it 0600 (chmod 600)"
    return None


def _ensure_home(settings: Settings) -> Path:
    """The data directory, created 0700 or checked and tightened, as the store's is."""
    return private_dir(settings.home, "SECSTATE_HOME")


# --- the ring this host uses ------------------------------------------------------------------


def configured_ring(settings: Settings) -> KeyRing | None:
    """The ring SECSTATE_KEYS or keyring.json defines, or None if neither exists.

    Never creates anything.
    """
    if settings.keys is not None:
        keys = parse_keys(settings.keys.get_secret_value())
        active = settings.active_key_id or sorted(keys)[-1]
        return KeyRing(keys, active, source=ENV_SOURCE)
    path = keyring_path(settings)
    try:
        ring = read_ring_file(path)
    except FileNotFoundError:
        return None
    return KeyRing(ring.keys, settings.active_key_id or ring.active, source=str(path))


def load_keyring(settings: Settings, store_usage: Callable[[], Counter[str]]) -> KeyRing:
    """This host's ring; a first one is made only where the creation rule allows.

    ``store_usage`` counts the store's sealed values by key id; it is asked only when
    there is no ring.
    """
    ring = configured_ring(settings)
    if ring is not None:
        return ring
    usage = store_usage()
    check_may_create_ring(settings, usage, automatic=True)
    with contextlib.suppress(FileExistsError):  # another process made one a moment ago: use it
        create_ring_file(settings)
    ring = configured_ring(settings)
    if ring is None:
        raise NoKeyRingError(f"key ring file {keyring_path(settings)} vanished while loading")
    return ring


def no_ring_here(settings: Settings) -> str:
    return (
        f"no key ring on this host (SECSTATE_KEYS is unset and {keyring_path(settings)} "
        "does not exist)"
    )


def check_may_create_ring(
    settings: Settings,
    usage: Mapping[str, int],
    *,
    automatic: bool,
    accept_unreadable: bool = False,
) -> None:
    """The creation rule: no ring the store's sealed values need, none unasked on PostgreSQL."""
    if settings.keys is not None:
        raise KeyRingExistsError(
            "the key ring comes from SECSTATE_KEYS; keyring.json would be ignored: add keys "
            "to SECSTATE_KEYS instead (`secstate keys generate` prints an entry)"
        )
    if settings.active_key_id is not None:
        raise NoKeyRingError(
            f"{no_ring_here(settings)}, but SECSTATE_ACTIVE_KEY_ID names "
            f"{settings.active_key_id!r}: set SECSTATE_KEYS to the ring that holds it, or "
            "restore keyring.json"
        )
    if usage and not accept_unreadable:
        advice = restore_advice(settings)
        if not automatic:
            advice += "; --accept-unreadable makes a new ring anyway and leaves them sealed"
        raise NoKeyRingError(
            f"{no_ring_here(settings)}, and the store holds values sealed under "
            f"{describe_usage(usage)}, which a new key would not open: {advice}"
        )
    if automatic and settings.uses_postgres:
        raise NoKeyRingError(
            f"{no_ring_here(settings)}; a PostgreSQL store is shared by hosts, so none is "
            "made here: set SECSTATE_KEYS to the ring the other hosts use (`secstate keys "
            "export` there), or restore keyring.json; for a store that has no keys yet, run "
            "`secstate keys init` on one host"
        )


def create_ring_file(settings: Settings) -> RingFile:
    """A new ring of one fresh key, written to keyring.json (never over an existing one)."""
    path = _ensure_home(settings) / KEYRING_FILE
    key_id = new_key_id(datetime.now(UTC))
    keys = {key_id: KeyRing.generate_key()}
    write_ring_file(path, keys, key_id, replace=False)
    return RingFile(path, keys, key_id)


def fresh_key_id(taken: Collection[str]) -> str:
    """A new key id no key of ``taken`` has."""
    existing = set(taken)
    while True:
        key_id = new_key_id(datetime.now(UTC))
        if key_id not in existing:
            return key_id
