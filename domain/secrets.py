"""Everything that touches a secret in clear lives here, and nothing here logs one.

- passwords: argon2id PHC strings (argon2-cffi);
- API keys: ``<prefix><key id>_<secret><crc32>``; only a SHA-256 of the secret is kept;
- TOTP seeds and DKIM private keys: AES-256-GCM under a key ring with key ids;
- recovery codes: random, kept as SHA-256 digests, single use.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import argon2
import pyotp
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from domain.errors import (
    MalformedApiKeyError,
    MissingKeyError,
    SealedValueTamperedError,
    SecretKeyError,
)

# --- sealing (AES-GCM with key ids) ------------------------------------------

_SEAL_VERSION = "v1"
KEY_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
KEY_BYTES = 32
# A fingerprint names a key without revealing it: HMAC-SHA256 of this label under the
# key, first 64 bits. Two keys of one id with different fingerprints are different keys.
_FINGERPRINT_LABEL = b"secstate key fingerprint v1"
FINGERPRINT_HEX_LEN = 16


def key_fingerprint(key: bytes) -> str:
    """The key's fingerprint: 16 hex digits of HMAC-SHA256(key, fixed label)."""
    return hmac.new(key, _FINGERPRINT_LABEL, hashlib.sha256).hexdigest()[:FINGERPRINT_HEX_LEN]


def new_key_id(moment: datetime) -> str:
    """``k<YYYYMMDD>-<8 random hex>``: the UTC date for people, the random part so that
    no two keys, on any host, ever share an id."""
    if moment.tzinfo is None:
        raise ValueError("a key id's date needs a timezone-aware moment")
    return f"k{moment.astimezone(UTC):%Y%m%d}-{secrets.token_hex(4)}"


def check_key_id(key_id: str) -> None:
    """A key id is 1-64 of [A-Za-z0-9_-] (it travels in clear inside sealed values)."""
    if not KEY_ID_PATTERN.fullmatch(key_id):
        raise SecretKeyError(f"key id {key_id!r} must be 1-64 of [A-Za-z0-9_-]")


def check_key_length(key_id: str, key: bytes) -> None:
    """An AES-256 key is 32 bytes."""
    if len(key) != KEY_BYTES:
        raise SecretKeyError(f"key {key_id!r} must be {KEY_BYTES} bytes, got {len(key)}")


class KeyRing:
    """Named AES-256 keys; seals under the active one, opens under any it holds.

    A sealed value is ``v1.<key id>.<base64url(nonce || ciphertext+tag)>``; the key id
    in clear lets keys rotate: add a new key, make it active, keep the old ones.
    ``source`` says where the keys came from, for error messages.
    """

    def __init__(
        self, keys: Mapping[str, bytes], active_key_id: str, *, source: str | None = None
    ) -> None:
        for key_id, key in keys.items():
            check_key_id(key_id)
            check_key_length(key_id, key)
        if active_key_id not in keys:
            raise SecretKeyError(f"active key id {active_key_id!r} is not in the key ring")
        self._keys = {k: AESGCM(v) for k, v in keys.items()}
        self._fingerprints = {k: key_fingerprint(v) for k, v in keys.items()}
        self._active = active_key_id
        self._source = source

    @property
    def active_key_id(self) -> str:
        return self._active

    @property
    def key_ids(self) -> list[str]:
        return sorted(self._keys)

    @property
    def source(self) -> str | None:
        return self._source

    def require(self) -> KeyRing:
        """The ring itself, ready to use (a lazy ring loads here, or says why it cannot)."""
        return self

    def holds(self, key_id: str) -> bool:
        return key_id in self._keys

    def fingerprint(self, key_id: str) -> str:
        if key_id not in self._fingerprints:
            raise self._missing(key_id)
        return self._fingerprints[key_id]

    def seal(self, plaintext: bytes, associated_data: bytes) -> str:
        nonce = secrets.token_bytes(12)
        ct = self._keys[self._active].encrypt(nonce, plaintext, associated_data)
        blob = base64.urlsafe_b64encode(nonce + ct).decode().rstrip("=")
        return f"{_SEAL_VERSION}.{self._active}.{blob}"

    def open(self, sealed: str, associated_data: bytes) -> bytes:
        version, key_id, blob = self.parse(sealed)
        if version != _SEAL_VERSION:
            raise SecretKeyError(f"unsupported sealed-value version {version!r}")
        if not KEY_ID_PATTERN.fullmatch(key_id):
            raise SecretKeyError("sealed value names no valid key id: it is damaged")
        aead = self._keys.get(key_id)
        if aead is None:
            raise self._missing(key_id)
        try:
            # Strict decoding: only seal() makes these, so anything else is damage.
            raw = base64.b64decode(blob + "=" * (-len(blob) % 4), altchars=b"-_", validate=True)
        except ValueError:
            raise SecretKeyError(f"sealed value under key {key_id} is not valid base64") from None
        try:
            return aead.decrypt(raw[:12], raw[12:], associated_data)
        except (InvalidTag, ValueError):  # ValueError: too short to hold a nonce
            raise SealedValueTamperedError(
                f"sealed value under key {key_id} failed authentication: it was altered or "
                f"moved, or the key named {key_id} here (fingerprint "
                f"{self._fingerprints[key_id]}) is not the one that sealed it: compare "
                "fingerprints with the other hosts and the backups"
            ) from None

    def _missing(self, key_id: str) -> MissingKeyError:
        where = f" ({self._source})" if self._source else ""
        return MissingKeyError(
            f"key {key_id} is missing from the key ring{where}: restore it from "
            "the backup of SECSTATE_KEYS or keyring.json; rotation keeps old keys, so every "
            "key that sealed a value must stay in the ring"
        )

    @staticmethod
    def parse(sealed: str) -> tuple[str, str, str]:
        parts = sealed.split(".", 2)
        if len(parts) != 3:
            raise SecretKeyError("sealed value is not in v1.<key id>.<data> form")
        return parts[0], parts[1], parts[2]

    @staticmethod
    def key_id_of(sealed: str) -> str:
        return KeyRing.parse(sealed)[1]

    @staticmethod
    def generate_key() -> bytes:
        return AESGCM.generate_key(bit_length=256)


class LazyKeyRing(KeyRing):
    """A key ring loaded by ``load`` on first use, so work that needs no key needs no ring.

    A failed load is not remembered: the next use tries again (a restored ring file, say).
    """

    def __init__(self, load: Callable[[], KeyRing]) -> None:  # no super(): nothing to hold yet
        self._load = load
        self._ring: KeyRing | None = None

    @property
    def loaded(self) -> bool:
        return self._ring is not None

    def require(self) -> KeyRing:
        if self._ring is None:
            self._ring = self._load()
        return self._ring

    @property
    def active_key_id(self) -> str:
        return self.require().active_key_id

    @property
    def key_ids(self) -> list[str]:
        return self.require().key_ids

    @property
    def source(self) -> str | None:
        return self.require().source

    def holds(self, key_id: str) -> bool:
        return self.require().holds(key_id)

    def fingerprint(self, key_id: str) -> str:
        return self.require().fingerprint(key_id)

    def seal(self, plaintext: bytes, associated_data: bytes) -> str:
        return self.require().seal(plaintext, associated_data)

    def open(self, sealed: str, associated_data: bytes) -> bytes:
        return self.require().open(sealed, associated_data)


# --- passwords -----------------------------------------------------------------


@dataclass(frozen=True)
class Argon2Parameters:
    """argon2id cost; the default is RFC 9106's second recommended option."""

    time_cost: int = 3
    memory_cost_kib: int = 65536
    parallelism: int = 4
    hash_len: int = 32
    salt_len: int = 16


class PasswordHasher:
    """argon2id hashing; verification is constant-time inside argon2."""

    def __init__(self, params: Argon2Parameters | None = None) -> None:
        self.params = params or Argon2Parameters()
        self._hasher = argon2.PasswordHasher(
            time_cost=self.params.time_cost,
            memory_cost=self.params.memory_cost_kib,
            parallelism=self.params.parallelism,
            hash_len=self.params.hash_len,
            salt_len=self.params.salt_len,
            type=argon2.Type.ID,
        )

    def hash(self, password: str) -> str:
        return self._hasher.hash(password)

    def verify_nothing(self, password: str) -> bool:
        """Cost exactly what ``verify`` of a hash with these parameters costs; always False.

        For checks against an unknown user, so that timing does not tell which usernames
        exist. The hash is made up (a random salt and digest in PHC form), not computed,
        so the first call costs no more than later ones.
        """
        p = self.params
        salt = base64.b64encode(secrets.token_bytes(p.salt_len)).decode().rstrip("=")
        digest = base64.b64encode(secrets.token_bytes(p.hash_len)).decode().rstrip("=")
        phc = (
            f"$argon2id$v=19$m={p.memory_cost_kib},t={p.time_cost},p={p.parallelism}"
            f"${salt}${digest}"
        )
        self.verify(phc, password)
        return False

    def verify(self, phc: str, password: str) -> bool:
        try:
            return self._hasher.verify(phc, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, phc: str) -> bool:
        return self._hasher.check_needs_rehash(phc)


# --- API keys --------------------------------------------------------------------

_B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
KEY_ID_LEN = 12  # ~71 bits: public, unguessable enough to avoid enumeration
SECRET_LEN = 22  # ~131 bits of secret
CHECKSUM_LEN = 6  # base62 of CRC32


def _b62_random(n: int) -> str:
    return "".join(secrets.choice(_B62) for _ in range(n))


def _b62_encode(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, rem = divmod(number, 62)
        digits.append(_B62[rem])
    return "".join(reversed(digits))


def _checksum(body: str) -> str:
    return _b62_encode(binascii.crc32(body.encode()), CHECKSUM_LEN)


@dataclass(frozen=True)
class IssuedApiKey:
    """A freshly minted key: ``token`` is shown once and never stored."""

    key_id: str
    token: str
    secret_hash: str
    display: str

    def __repr__(self) -> str:
        return f"IssuedApiKey(key_id={self.key_id!r}, display={self.display!r})"


@dataclass(frozen=True)
class PresentedApiKey:
    key_id: str
    secret: str

    def __repr__(self) -> str:
        return f"PresentedApiKey(key_id={self.key_id!r})"


class ApiKeyCodec:
    """Mints and parses API keys of the form ``<prefix><key id>_<secret><checksum>``.

    The prefix lets secret scanners find leaked keys; the CRC32 lets them reject
    look-alikes offline; the key id gives an O(1) lookup before a constant-time check.
    """

    def __init__(self, prefix: str = "sst_") -> None:
        if not re.fullmatch(r"[a-z][a-z0-9]{1,9}_", prefix):
            raise ValueError("API key prefix must be 2-10 lowercase letters/digits then '_'")
        self.prefix = prefix
        self._pattern = re.compile(
            rf"{re.escape(prefix)}(?P<kid>[0-9A-Za-z]{{{KEY_ID_LEN}}})_"
            rf"(?P<secret>[0-9A-Za-z]{{{SECRET_LEN}}})(?P<crc>[0-9A-Za-z]{{{CHECKSUM_LEN}}})"
        )

    def issue(self) -> IssuedApiKey:
        key_id = _b62_random(KEY_ID_LEN)
        secret = _b62_random(SECRET_LEN)
        body = f"{self.prefix}{key_id}_{secret}"
        return IssuedApiKey(
            key_id=key_id,
            token=body + _checksum(body),
            secret_hash=hash_api_secret(key_id, secret),
            display=f"{self.prefix}{key_id}_…",
        )

    def parse(self, token: str) -> PresentedApiKey:
        match = self._pattern.fullmatch(token.strip())
        if match is None:
            raise MalformedApiKeyError(f"API key is not of the form {self.prefix}<id>_<secret>")
        body = token.strip()[:-CHECKSUM_LEN]
        if not hmac.compare_digest(_checksum(body), match["crc"]):
            raise MalformedApiKeyError("API key checksum does not match (typo or look-alike)")
        return PresentedApiKey(key_id=match["kid"], secret=match["secret"])

    def key_id_of(self, token: str) -> str | None:
        """The key id of a token of the key's form, whether or not its checksum holds."""
        match = self._pattern.fullmatch(token.strip())
        return match["kid"] if match else None

    def looks_like_key(self, text: str) -> bool:
        """Offline check a secret scanner can run: format and checksum both hold."""
        try:
            self.parse(text)
        except MalformedApiKeyError:
            return False
        return True


def hash_api_secret(key_id: str, secret: str) -> str:
    # The secret has >128 bits of entropy, so a fast hash resists brute force.
    return "sha256:" + hashlib.sha256(f"{key_id}:{secret}".encode()).hexdigest()


def api_secret_matches(stored_hash: str, key_id: str, secret: str) -> bool:
    return hmac.compare_digest(stored_hash, hash_api_secret(key_id, secret))


# --- TOTP --------------------------------------------------------------------------

TOTP_PERIOD = 30
TOTP_DIGITS = 6
TOTP_DRIFT_STEPS = 1


def new_totp_seed() -> str:
    return pyotp.random_base32(32)  # 160 bits, RFC 4226's recommendation


def totp_step(moment: datetime) -> int:
    return int(moment.timestamp()) // TOTP_PERIOD


def totp_code_at_step(seed: str, step: int) -> str:
    return str(pyotp.TOTP(seed, digits=TOTP_DIGITS, interval=TOTP_PERIOD).at(step * TOTP_PERIOD))


def match_totp_step(seed: str, code: str, moment: datetime) -> int | None:
    """The time step whose code equals ``code`` within the allowed drift, or None."""
    # [0-9], not \d: \d matches non-ASCII digits, which compare_digest refuses with TypeError.
    if not re.fullmatch(rf"[0-9]{{{TOTP_DIGITS}}}", code or ""):
        return None
    now_step = totp_step(moment)
    found = None
    # Check every candidate so timing does not reveal which step matched.
    for step in range(now_step - TOTP_DRIFT_STEPS, now_step + TOTP_DRIFT_STEPS + 1):
        if hmac.compare_digest(totp_code_at_step(seed, step), code):
            found = step
    return found


def provisioning_uri(seed: str, username: str, issuer: str) -> str:
    return pyotp.TOTP(seed, digits=TOTP_DIGITS, interval=TOTP_PERIOD).provisioning_uri(
        name=username, issuer_name=issuer
    )


# --- recovery codes ------------------------------------------------------------------

_RC_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # no 0/o/1/l/i


def new_recovery_code() -> str:
    raw = "".join(secrets.choice(_RC_ALPHABET) for _ in range(16))  # ~79 bits
    return "-".join(raw[i : i + 4] for i in range(0, 16, 4))


def hash_recovery_code(code: str) -> str:
    normalised = code.strip().lower().replace("-", "").replace(" ", "")
    return "sha256:" + hashlib.sha256(normalised.encode()).hexdigest()


# --- DKIM ------------------------------------------------------------------------------

DKIM_ALGORITHMS = ("rsa-sha256", "ed25519-sha256")


@dataclass(frozen=True)
class DkimKeyMaterial:
    public_key_b64: str  # the DNS TXT record's p= value
    private_key_pem: bytes

    def __repr__(self) -> str:
        return f"DkimKeyMaterial(public_key_b64={self.public_key_b64[:16]!r}…)"


def generate_dkim_key(algorithm: str, rsa_bits: int = 2048) -> DkimKeyMaterial:
    private: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    if algorithm == "rsa-sha256":
        private = rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
        public_der = private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    elif algorithm == "ed25519-sha256":
        private = ed25519.Ed25519PrivateKey.generate()
        # RFC 8463: p= is the raw 32-byte public key.
        public_der = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
    else:
        raise ValueError(f"DKIM algorithm must be one of {', '.join(DKIM_ALGORITHMS)}")
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return DkimKeyMaterial(base64.b64encode(public_der).decode(), pem)


def dkim_txt_record(algorithm: str, public_key_b64: str) -> str:
    k = "rsa" if algorithm == "rsa-sha256" else "ed25519"
    return f"v=DKIM1; k={k}; p={public_key_b64}"
