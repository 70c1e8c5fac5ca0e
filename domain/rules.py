"""Small named checks; each raises one named domain error with a message that names the problem."""

from __future__ import annotations

import ipaddress
from functools import cache
from importlib import resources

from domain.errors import (
    DuplicateAllowlistEntryError,
    InvalidCidrError,
    PasswordReuseError,
    WeakPasswordError,
)

MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024  # argon2 accepts more; nobody types more, and hashing is costly

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@cache
def common_passwords() -> frozenset[str]:
    text = resources.files("domain").joinpath("data/common_passwords.txt").read_text("utf-8")
    return frozenset(
        line.strip().lower() for line in text.splitlines() if line and not line.startswith("#")
    )


def check_password_strength(password: str, username: str, email: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise WeakPasswordError(
            f"password is too short: {len(password)} characters, at least "
            f"{MIN_PASSWORD_LENGTH} required"
        )
    if len(password) > MAX_PASSWORD_LENGTH:
        raise WeakPasswordError(f"password is longer than {MAX_PASSWORD_LENGTH} characters")
    lowered = password.lower()
    local_part = email.split("@", 1)[0].lower()
    for label, ident in (
        ("username", username.lower()),
        ("email", email.lower()),
        ("email name", local_part),
    ):
        if len(ident) >= 3 and ident in lowered:
            raise WeakPasswordError(f"password must not contain the {label}")
    if lowered in common_passwords():
        raise WeakPasswordError("password is in the list of commonly used passwords")
    if len(set(password)) < 4:
        raise WeakPasswordError("password uses fewer than 4 distinct characters")


def check_not_current_password(matches_current: bool) -> None:
    if matches_current:
        raise PasswordReuseError("new password must differ from the current password")


def parse_cidr(text: str) -> IPNetwork:
    """A strict network: host bits must be zero (``10.0.0.1/8`` is refused, not guessed)."""
    try:
        return ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as e:
        raise InvalidCidrError(f"invalid CIDR {text!r}: {e}") from None


def check_not_covered(new: IPNetwork, existing: dict[str, str]) -> None:
    """``existing`` maps entry id to CIDR text; refuse a network another entry already covers."""
    for entry_id, cidr in existing.items():
        net = ipaddress.ip_network(cidr)
        if net.version == new.version and new.subnet_of(net):  # type: ignore[arg-type]
            raise DuplicateAllowlistEntryError(
                f"{new} is already covered by allowlist entry {entry_id} ({net})"
            )


def ip_in_networks(ip: str, cidrs: dict[str, str]) -> str | None:
    """The id of the first entry whose network holds ``ip``, else None."""
    addr = ipaddress.ip_address(ip)
    for entry_id, cidr in cidrs.items():
        if addr in ipaddress.ip_network(cidr):
            return entry_id
    return None
