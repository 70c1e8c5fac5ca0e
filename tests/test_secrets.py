"""Secret handling primitives: sealing, API key format, recovery codes, TOTP windows."""

from __future__ import annotations

import base64
import hashlib
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest

from domain.errors import (
    MalformedApiKeyError,
    MissingKeyError,
    NoKeyRingError,
    SealedValueTamperedError,
    SecretKeyError,
)
from domain.secrets import (
    CHECKSUM_LEN,
    KEY_ID_LEN,
    SECRET_LEN,
    TOTP_PERIOD,
    ApiKeyCodec,
    Argon2Parameters,
    KeyRing,
    LazyKeyRing,
    PasswordHasher,
    api_secret_matches,
    generate_dkim_key,
    hash_api_secret,
    hash_recovery_code,
    key_fingerprint,
    match_totp_step,
    new_key_id,
    new_recovery_code,
    new_totp_seed,
    totp_code_at_step,
    totp_step,
)

AD = b"totp:some-user:tf_000000000000"
MOMENT = datetime(2026, 3, 1, 9, 0, 10, tzinfo=UTC)


def ring(*key_ids: str, active: str | None = None) -> KeyRing:
    keys = {k: KeyRing.generate_key() for k in key_ids}
    return KeyRing(keys, active or key_ids[-1])


# --- KeyRing --------------------------------------------------------------------------------


def test_sealed_value_opens_to_the_plaintext_and_hides_it() -> None:
    # given
    keyring = ring("k1")
    # when
    sealed = keyring.seal(b"JBSWY3DPEHPK3PXP", AD)
    # then
    assert sealed.startswith("v1.k1.")
    assert "JBSWY3DPEHPK3PXP" not in sealed
    assert keyring.open(sealed, AD) == b"JBSWY3DPEHPK3PXP"


def test_sealing_twice_gives_different_ciphertexts() -> None:
    keyring = ring("k1")
    assert keyring.seal(b"same", AD) != keyring.seal(b"same", AD)


def test_rotated_ring_seals_under_new_key_and_still_opens_old_values() -> None:
    # given a value sealed under the old key
    old_key, new_key = KeyRing.generate_key(), KeyRing.generate_key()
    sealed_old = KeyRing({"k1": old_key}, "k1").seal(b"old secret", AD)
    # when the ring gains a new active key
    rotated = KeyRing({"k1": old_key, "k2": new_key}, "k2")
    sealed_new = rotated.seal(b"new secret", AD)
    # then new values use k2 and old ones still open
    assert KeyRing.key_id_of(sealed_new) == "k2"
    assert rotated.open(sealed_old, AD) == b"old secret"
    assert rotated.open(sealed_new, AD) == b"new secret"
    assert rotated.key_ids == ["k1", "k2"]


def test_value_sealed_under_a_key_the_ring_lacks_is_reported_as_a_missing_key() -> None:
    # given a value sealed under a key the ring does not hold
    sealed = ring("gone").seal(b"x", AD)
    holder = KeyRing({"k1": KeyRing.generate_key()}, "k1", source="SECSTATE_KEYS")
    # when it is opened
    with pytest.raises(MissingKeyError) as caught:
        holder.open(sealed, AD)
    # then the message names the key and the remedy, and says nothing of tampering
    message = str(caught.value)
    assert message.startswith("key gone is missing from the key ring (SECSTATE_KEYS)")
    assert "restore it from the backup" in message
    assert "authentication" not in message


def test_value_failing_authentication_under_a_key_the_ring_holds_is_a_tamper_error() -> None:
    # given the same key id, but another key: a wrong key or a forged value
    sealed = ring("k1").seal(b"x", AD)
    other = ring("k1")
    # when / then
    with pytest.raises(SealedValueTamperedError, match="under key k1 failed authentication") as e:
        other.open(sealed, AD)
    assert other.fingerprint("k1") in str(e.value)


def test_fingerprint_names_a_key_without_revealing_it() -> None:
    # given
    key, other = KeyRing.generate_key(), KeyRing.generate_key()
    # when
    fingerprint = key_fingerprint(key)
    # then: stable, 64 bits of hex, differs between keys, holds no part of the key
    assert fingerprint == key_fingerprint(key) == KeyRing({"a": key}, "a").fingerprint("a")
    assert re.fullmatch(r"[0-9a-f]{16}", fingerprint)
    assert fingerprint != key_fingerprint(other)
    assert fingerprint not in key.hex()
    assert fingerprint != hashlib.sha256(key).hexdigest()[:16]


def test_new_key_ids_carry_the_utc_date_and_never_repeat() -> None:
    # given a moment late on 2 December in New York, 3 December in UTC
    moment = datetime(2026, 12, 2, 22, 0, tzinfo=timezone(timedelta(hours=-5)))
    # when
    ids = {new_key_id(moment) for _ in range(1000)}
    # then
    assert len(ids) == 1000
    assert all(re.fullmatch(r"k20261203-[0-9a-f]{8}", key_id) for key_id in ids)
    KeyRing({key_id: KeyRing.generate_key() for key_id in ids}, min(ids))  # valid ids
    with pytest.raises(ValueError, match="timezone-aware"):
        new_key_id(datetime(2026, 12, 3))  # naive: no date can be told from it


def test_lazy_key_ring_loads_on_first_use_only_and_retries_a_failed_load() -> None:
    # given a loader that fails once, then gives a ring
    calls: list[int] = []
    real = ring("k1")

    def load() -> KeyRing:
        calls.append(1)
        if len(calls) == 1:
            raise NoKeyRingError("no key ring yet")
        return real

    lazy = LazyKeyRing(load)
    # then: nothing is loaded before a secret is sealed or opened
    assert calls == []
    assert not lazy.loaded
    with pytest.raises(NoKeyRingError):
        lazy.seal(b"x", AD)
    # when it is used again, the load is tried again, and then kept
    sealed = lazy.seal(b"x", AD)
    assert lazy.open(sealed, AD) == b"x"
    assert real.open(sealed, AD) == b"x"
    assert lazy.active_key_id == "k1"
    assert lazy.require() is real
    assert len(calls) == 2


def _flip_char(text: str, index: int) -> str:
    replacement = "A" if text[index] != "A" else "B"
    return text[:index] + replacement + text[index + 1 :]


def _flip_bit(sealed: str, byte_index: int) -> str:
    # Flip a bit of the decoded bytes: changing a base64 character may change nothing
    # (the last character of unpadded base64 carries spare bits).
    version, key_id, blob = sealed.split(".", 2)
    raw = bytearray(base64.urlsafe_b64decode(blob + "=" * (-len(blob) % 4)))
    raw[byte_index] ^= 0x01
    return f"{version}.{key_id}." + base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")


@pytest.mark.parametrize(
    "byte_index", [0, 11, 12, 20, -1], ids=["nonce", "nonce-end", "ciphertext", "mid", "tag-end"]
)
def test_tampered_ciphertext_is_refused(byte_index: int) -> None:
    # given
    keyring = ring("k1")
    sealed = keyring.seal(b"the TOTP seed", AD)
    # when one bit of the nonce, ciphertext or tag changes
    tampered = _flip_bit(sealed, byte_index)
    # then
    with pytest.raises(SecretKeyError, match="failed authentication"):
        keyring.open(tampered, AD)


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda s: s[:-1], id="truncated-by-one"),
        pytest.param(lambda s: s[:-3], id="truncated-by-three"),
        pytest.param(lambda s: s.rsplit(".", 1)[0] + ".", id="empty-data"),
        pytest.param(lambda s: s.rsplit(".", 1)[0] + ".AAAA", id="too-short"),
        pytest.param(lambda s: s + "!", id="junk-appended"),
        pytest.param(lambda s: "v1.k1", id="no-data-part"),
        pytest.param(lambda s: "v9" + s[2:], id="unknown-version"),
    ],
)
def test_mangled_sealed_value_is_a_secret_key_error_not_a_crash(mangle: object) -> None:
    # Any damage must surface as the named error, never as ValueError/binascii.Error.
    keyring = ring("k1")
    sealed = keyring.seal(b"the TOTP seed", AD)
    assert callable(mangle)
    with pytest.raises(SecretKeyError):
        keyring.open(mangle(sealed), AD)


def test_wrong_associated_data_is_refused() -> None:
    # A sealed blob copied to another user or factor must not open there.
    keyring = ring("k1")
    sealed = keyring.seal(b"seed", AD)
    with pytest.raises(SecretKeyError):
        keyring.open(sealed, b"totp:other-user:tf_000000000000")


@pytest.mark.parametrize(
    ("keys", "active", "problem"),
    [
        ({"k1": b"\0" * 32}, "k2", "not in the key ring"),
        ({"k1": b"\0" * 16}, "k1", "must be 32 bytes"),
        ({"bad id!": b"\0" * 32}, "bad id!", "must be 1-64"),
    ],
)
def test_invalid_key_ring_is_refused(keys: dict[str, bytes], active: str, problem: str) -> None:
    with pytest.raises(SecretKeyError, match=problem):
        KeyRing(keys, active)


# --- passwords ----------------------------------------------------------------------------

CHEAP = Argon2Parameters(time_cost=1, memory_cost_kib=1024, parallelism=1)


def test_password_hash_is_argon2id_and_verifies() -> None:
    hasher = PasswordHasher(CHEAP)
    phc = hasher.hash("correct horse battery")
    assert phc.startswith("$argon2id$")
    assert "correct horse battery" not in phc
    assert hasher.verify(phc, "correct horse battery")
    assert not hasher.verify(phc, "correct horse battery!")
    assert not hasher.verify("not a hash", "correct horse battery")


def test_hash_made_with_other_parameters_needs_rehash() -> None:
    old = PasswordHasher(CHEAP).hash("correct horse battery")
    stronger = PasswordHasher(Argon2Parameters(time_cost=2, memory_cost_kib=2048, parallelism=1))
    assert stronger.needs_rehash(old)
    assert not PasswordHasher(CHEAP).needs_rehash(old)


# --- API keys -----------------------------------------------------------------------------


def test_issued_api_key_has_the_documented_format() -> None:
    # given / when
    codec = ApiKeyCodec("sst_")
    issued = codec.issue()
    # then
    prefix_len = len("sst_")
    assert issued.token.startswith("sst_" + issued.key_id + "_")
    assert len(issued.token) == prefix_len + KEY_ID_LEN + 1 + SECRET_LEN + CHECKSUM_LEN
    assert issued.display == f"sst_{issued.key_id}_…"
    presented = codec.parse(issued.token)
    assert presented.key_id == issued.key_id
    assert api_secret_matches(issued.secret_hash, presented.key_id, presented.secret)
    assert presented.secret not in issued.secret_hash


def test_issued_and_presented_keys_never_show_the_secret_in_repr() -> None:
    codec = ApiKeyCodec()
    issued = codec.issue()
    presented = codec.parse(issued.token)
    for text in (repr(issued), repr(presented), str(issued), str(presented)):
        assert presented.secret not in text
        assert issued.token not in text


@pytest.mark.parametrize("position", range(4, 4 + KEY_ID_LEN + 1 + SECRET_LEN + CHECKSUM_LEN))
def test_any_single_character_change_is_rejected_as_a_look_alike(position: int) -> None:
    # given a valid key
    codec = ApiKeyCodec()
    token = codec.issue().token
    if token[position] == "_":
        return  # the separator is checked by the format, not the checksum
    # when one character changes to another of the key alphabet
    look_alike = _flip_char(token, position)
    # then the offline check refuses it
    assert not codec.looks_like_key(look_alike)
    with pytest.raises(MalformedApiKeyError):
        codec.parse(look_alike)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "sst_",
        "xyz_AAAAAAAAAAAA_AAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "sst_AAAAAAAAAAAA-AAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "sst_AAAAAAAAAAAA_AAAAAAAAAAAAAAAAAAAAAAAAAAA",  # one short
        "sst_AAAAAAAAAAAA_AAAAAAAAAAAAAAAAAAAAAAAAAAAA\u00e9",
    ],
)
def test_text_not_in_key_format_is_malformed(text: str) -> None:
    codec = ApiKeyCodec()
    assert not codec.looks_like_key(text)
    with pytest.raises(MalformedApiKeyError, match="not of the form"):
        codec.parse(text)


def test_looks_like_key_accepts_a_real_key_even_with_surrounding_whitespace() -> None:
    codec = ApiKeyCodec()
    token = codec.issue().token
    assert codec.looks_like_key(token)
    assert codec.looks_like_key(f"  {token}\n")


def test_key_of_another_prefix_is_not_ours() -> None:
    token = ApiKeyCodec("abc_").issue().token
    assert not ApiKeyCodec("sst_").looks_like_key(token)


@pytest.mark.parametrize("prefix", ["sst", "S_", "_", "a_", "abcdefghijk_", "a-b_"])
def test_invalid_prefix_is_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        ApiKeyCodec(prefix)


def test_secret_hash_binds_the_key_id() -> None:
    stored = hash_api_secret("AAAAAAAAAAAA", "s" * SECRET_LEN)
    assert api_secret_matches(stored, "AAAAAAAAAAAA", "s" * SECRET_LEN)
    assert not api_secret_matches(stored, "BBBBBBBBBBBB", "s" * SECRET_LEN)
    assert not api_secret_matches(stored, "AAAAAAAAAAAA", "t" * SECRET_LEN)


# --- recovery codes -----------------------------------------------------------------------


def test_recovery_code_is_four_groups_without_ambiguous_characters() -> None:
    code = new_recovery_code()
    groups = code.split("-")
    assert [len(g) for g in groups] == [4, 4, 4, 4]
    assert not set(code) & set("01lio")


def test_recovery_code_hash_ignores_dashes_spaces_and_case() -> None:
    code = new_recovery_code()
    expected = hash_recovery_code(code)
    assert hash_recovery_code(code.replace("-", "")) == expected
    assert hash_recovery_code(code.upper()) == expected
    assert hash_recovery_code("  " + code.replace("-", " ") + "\n") == expected
    assert hash_recovery_code(new_recovery_code()) != expected
    assert code.replace("-", "") not in expected


# --- TOTP ---------------------------------------------------------------------------------


def test_totp_code_matches_its_own_step() -> None:
    seed = new_totp_seed()
    step = totp_step(MOMENT)
    assert match_totp_step(seed, totp_code_at_step(seed, step), MOMENT) == step


@pytest.mark.parametrize("drift", [-1, 0, 1])
def test_totp_code_within_one_step_of_drift_is_accepted(drift: int) -> None:
    seed = new_totp_seed()
    step = totp_step(MOMENT) + drift
    assert match_totp_step(seed, totp_code_at_step(seed, step), MOMENT) == step


@pytest.mark.parametrize("drift", [-3, -2, 2, 3])
def test_totp_code_beyond_the_drift_window_is_refused(drift: int) -> None:
    seed = new_totp_seed()
    code = totp_code_at_step(seed, totp_step(MOMENT) + drift)
    # A code can collide with a neighbouring step's code by chance (1 in a million).
    if code in {totp_code_at_step(seed, totp_step(MOMENT) + d) for d in (-1, 0, 1)}:
        pytest.skip("random seed produced colliding codes")
    assert match_totp_step(seed, code, MOMENT) is None


def test_totp_step_is_the_thirty_second_window() -> None:
    start = datetime(2026, 3, 1, 9, 0, 0, tzinfo=UTC)
    assert totp_step(start + timedelta(seconds=TOTP_PERIOD - 1)) == totp_step(start)
    assert totp_step(start + timedelta(seconds=TOTP_PERIOD)) == totp_step(start) + 1


@pytest.mark.parametrize(
    "code",
    ["", "12345", "1234567", "abcdef", " 123456", "\u0661\u0662\u0663\u0664\u0665\u0666"],
)
def test_totp_code_not_of_six_ascii_digits_never_matches(code: str) -> None:
    assert match_totp_step(new_totp_seed(), code, MOMENT) is None


def test_totp_seed_is_base32_of_160_bits() -> None:
    seed = new_totp_seed()
    assert len(base64.b32decode(seed)) == 20


# --- DKIM key material --------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["rsa-sha256", "ed25519-sha256"])
def test_dkim_material_repr_hides_the_private_key(algorithm: str) -> None:
    material = generate_dkim_key(algorithm, rsa_bits=1024)
    assert material.private_key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert b"PRIVATE" not in repr(material).encode()
    assert base64.b64decode(material.public_key_b64)


def test_unknown_dkim_algorithm_is_refused() -> None:
    with pytest.raises(ValueError, match="DKIM algorithm must be one of"):
        generate_dkim_key("dsa-sha1")
