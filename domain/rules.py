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


_V4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def normalise_ip(text: str) -> str:
    """The one text form of an address everywhere: compressed, an IPv4-mapped IPv6
    address (``::ffff:198.51.100.7``) as the IPv4 address it is; ValueError if bad.

    A zone id (``fe80::1%eth0``) means something only on the host that saw it: refused.
    """
    value = text.strip()
    if "%" in value:
        raise ValueError(f"{value!r} has a zone id (%...); give the address without it")
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an IPv4 or IPv6 address") from None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def normalise_network(text: str, *, strict: bool = True) -> IPNetwork:
    """A network in the one form: an IPv4-mapped IPv6 network (``::ffff:198.51.100.0/120``)
    as the IPv4 network it is. ``strict``: host bits must be zero. ValueError if bad."""
    value = text.strip()
    if "%" in value:
        raise ValueError(f"{value!r} has a zone id (%...); give the network without it")
    network = ipaddress.ip_network(value, strict=strict)
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(_V4_MAPPED):
        return ipaddress.IPv4Network(
            (int(network.network_address) & 0xFFFFFFFF, network.prefixlen - 96)
        )
    return network


def parse_cidr(text: str) -> IPNetwork:
    """A strict network: host bits must be zero (``10.0.0.1/8`` is refused, not guessed)."""
    try:
        return normalise_network(text, strict=True)
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
    addr = ipaddress.ip_address(normalise_ip(ip))
    for entry_id, cidr in cidrs.items():
        if addr in ipaddress.ip_network(cidr):
            return entry_id
    return None
