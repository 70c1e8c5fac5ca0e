"""Command validation at the edge: every bad field named at once, secrets never shown."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from domain import commands as c
from domain.errors import InvalidCommandError, SecStateError
from domain.values import AccountKind, Role

SECRET = "Hunter2-very-secret-Xy9"


def problems(command_class: type[c.Command], **data: Any) -> dict[str, str]:
    """Field path -> problem, from the InvalidCommandError that parsing must raise."""
    with pytest.raises(InvalidCommandError) as info:
        c.parse_command(command_class, **data)
    error = info.value
    assert error.command == command_class.__name__
    assert isinstance(error, SecStateError)
    found: dict[str, str] = {}
    for problem in error.problems:
        where, _, msg = problem.partition(": ")
        found[where] = msg
        assert f"{where}: {msg}" in str(error)
    return found


# --- every bad field is named -------------------------------------------------------------


def test_every_bad_field_is_listed_at_once() -> None:
    # given three bad fields / when / then
    found = problems(c.OpenAccount, name="Not A Slug!", kind="robot", display_name="")
    assert set(found) == {"name", "kind", "display_name"}
    assert found["name"].startswith("has an invalid format (expected ^[a-z0-9]")
    assert "customer" in found["kind"]
    assert "at least 1 character" in found["display_name"]


def test_missing_and_unexpected_fields_are_named() -> None:
    found = problems(c.RegisterUser, account="acme", colour="blue")
    assert set(found) == {"username", "email", "password", "colour"}
    assert found["username"] == "Field required"
    assert found["colour"] == "Extra inputs are not permitted"


def test_register_user_lists_each_bad_field() -> None:
    found = problems(
        c.RegisterUser,
        account="ACME",
        username="-alice",
        email="alice-at-example",
        password=SECRET,
        role="admin",
    )
    assert set(found) == {"account", "username", "email", "role"}
    assert "password" not in found


def test_nested_list_items_are_named_by_position() -> None:
    found = problems(c.CreateApiKey, account="acme", name="ci", scopes=["send", "Bad Scope", 7])
    assert set(found) == {"scopes.1", "scopes.2"}


@pytest.mark.parametrize(
    ("command_class", "data", "field"),
    [
        (c.CreateApiKey, {"account": "acme", "name": "ci", "scopes": []}, "scopes"),
        (c.GenerateRecoveryCodes, {"username": "alice", "count": 4}, "count"),
        (c.GenerateRecoveryCodes, {"username": "alice", "count": 21}, "count"),
        (c.RevokeApiKey, {"account": "acme", "key_id": "short", "reason": "x"}, "key_id"),
        (c.RevokeApiKey, {"account": "acme", "key_id": "A" * 12, "reason": ""}, "reason"),
        (
            c.GenerateDkimKey,
            {"account": "acme", "domain": "localhost", "selector": "s1"},
            "domain",
        ),
        (
            c.GenerateDkimKey,
            {"account": "acme", "domain": "acme.example", "selector": "-s1"},
            "selector",
        ),
        (
            c.GenerateDkimKey,
            {"account": "acme", "domain": "acme.example", "selector": "s1", "algorithm": "dsa"},
            "algorithm",
        ),
        (
            c.ConfirmTotpEnrolment,
            {"username": "alice", "factor_id": "tf_XYZ", "code": "123456"},
            "factor_id",
        ),
        (
            c.RecordStaffAccess,
            {"username": "e-1", "system": "crm", "resource": "r", "records": -1},
            "records",
        ),
        (
            c.RecordStaffAccess,
            {
                "username": "e-1",
                "system": "crm",
                "resource": "r",
                "records": 1,
                "action": "rm",
            },
            "action",
        ),
        (c.SetTwoFactorPolicy, {"account": "acme", "required": "maybe"}, "required"),
    ],
)
def test_out_of_range_field_is_named(
    command_class: type[c.Command], data: dict[str, Any], field: str
) -> None:
    assert set(problems(command_class, **data)) == {field}


@pytest.mark.parametrize("code", ["12345", "1234567", "abcdef", "12 456", "\u0661" * 6])
def test_totp_code_must_be_six_ascii_digits(code: str) -> None:
    found = problems(c.Login, username="alice", password=SECRET, totp_code=code)
    assert set(found) == {"totp_code"}


def test_valid_command_is_stripped_and_defaulted() -> None:
    command = c.parse_command(
        c.RegisterUser, account=" acme ", username="alice", email="a@b.io", password=SECRET
    )
    assert command.account == "acme"
    assert command.role is Role.OWNER
    opened = c.parse_command(c.OpenAccount, name="staff", kind="staff")
    assert opened.kind is AccountKind.STAFF


def test_commands_are_immutable() -> None:
    command = c.parse_command(c.OpenAccount, name="acme")
    with pytest.raises(ValidationError):
        command.name = "other"


# --- bulk reset targets -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("targets", "problem"),
    [
        ({}, "name usernames or accounts, or set everyone"),
        ({"everyone": False}, "name usernames or accounts, or set everyone"),
        ({"everyone": True, "usernames": ["alice"]}, "cannot be combined"),
        ({"everyone": True, "accounts": ["acme"]}, "cannot be combined"),
    ],
)
def test_bulk_reset_needs_exactly_one_kind_of_target(targets: dict[str, Any], problem: str) -> None:
    found = problems(c.RequirePasswordResets, reason="breach", campaign_id="camp-1", **targets)
    assert set(found) == {"everyone"}
    assert problem in found["everyone"]


@pytest.mark.parametrize(
    "targets",
    [{"everyone": True}, {"usernames": ["alice"]}, {"accounts": ["acme", "zeta"]}],
)
def test_bulk_reset_with_one_kind_of_target_is_valid(targets: dict[str, Any]) -> None:
    c.parse_command(c.RequirePasswordResets, reason="breach", campaign_id="camp-1", **targets)


def test_bad_bulk_target_is_reported_once_not_as_a_missing_target() -> None:
    found = problems(c.RequirePasswordResets, reason="b", campaign_id="c", usernames=["-x"])
    assert set(found) == {"usernames.0"}


# --- secrets never shown ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command_class", "data"),
    [
        (
            c.RegisterUser,
            {"account": "acme", "username": "alice", "email": "a@b.io", "password": SECRET},
        ),
        (c.SetPassword, {"username": "alice", "password": SECRET}),
        (
            c.ChangePassword,
            {"username": "alice", "current_password": SECRET, "new_password": SECRET},
        ),
        (c.CompletePasswordReset, {"username": "alice", "new_password": SECRET}),
        (c.Login, {"username": "alice", "password": SECRET, "recovery_code": SECRET}),
        (c.AuthenticateApiKey, {"token": SECRET}),
    ],
)
def test_secret_fields_never_appear_in_repr_str_or_dumps(
    command_class: type[c.Command], data: dict[str, Any]
) -> None:
    command = c.parse_command(command_class, **data)
    for text in (
        repr(command),
        str(command),
        command.model_dump_json(),
        str(command.model_dump()),
    ):
        assert SECRET not in text
    assert "**********" in repr(command)


def test_secret_is_kept_exactly_as_typed_while_names_are_stripped() -> None:
    # Blanks around a password are part of it: silently dropping them would change it.
    command = c.parse_command(c.SetPassword, username="  alice ", password=f" {SECRET} ")
    assert command.username == "alice"
    assert command.password.get_secret_value() == f" {SECRET} "


def test_invalid_command_message_never_contains_a_secret() -> None:
    with pytest.raises(InvalidCommandError) as info:
        c.parse_command(c.Login, username="-bad", password=SECRET, recovery_code=SECRET)
    assert SECRET not in str(info.value)
    assert SECRET not in repr(info.value.problems)


def test_invalid_value_is_not_echoed_back() -> None:
    # A password pasted into the wrong field must not be echoed in the error.
    with pytest.raises(InvalidCommandError) as info:
        c.parse_command(c.UnlockUser, username=SECRET + " !")
    assert SECRET not in str(info.value)


# --- CIDR and IP strictness ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "normalised"),
    [
        ("10.0.0.0/8", "10.0.0.0/8"),
        (" 203.0.113.0/24 ", "203.0.113.0/24"),
        ("203.0.113.7", "203.0.113.7/32"),
        ("2001:DB8::/32", "2001:db8::/32"),
        ("2001:db8:0:0::/64", "2001:db8::/64"),
        ("::/0", "::/0"),
    ],
)
def test_valid_cidr_is_normalised(given: str, normalised: str) -> None:
    command = c.parse_command(c.AddAllowlistEntry, account="acme", cidr=given, label="office")
    assert command.cidr == normalised


@pytest.mark.parametrize(
    ("cidr", "hint"),
    [
        ("10.0.0.1/8", "has host bits set"),
        ("2001:db8::1/32", "has host bits set"),
        ("10.0.0.0/33", "not a valid CIDR"),
        ("2001:db8::/129", "not a valid CIDR"),
        ("example.com/24", "not a valid CIDR"),
        ("", "not a valid CIDR"),
    ],
)
def test_cidr_must_be_a_strict_network(cidr: str, hint: str) -> None:
    found = problems(c.AddAllowlistEntry, account="acme", cidr=cidr, label="office")
    assert set(found) == {"cidr"}
    assert hint in found["cidr"]


@pytest.mark.parametrize(
    ("given", "normalised"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("2001:DB8:0::1", "2001:db8::1"),
        # one form everywhere: an IPv4-mapped address is the IPv4 address it maps
        ("::ffff:203.0.113.7", "203.0.113.7"),
        ("  198.51.100.7 ", "198.51.100.7"),
    ],
)
def test_ip_address_is_normalised(given: str, normalised: str) -> None:
    command = c.parse_command(c.CheckControlPanelAccess, account="acme", ip=given)
    assert command.ip == normalised


@pytest.mark.parametrize("ip", ["10.0.0.0/8", "256.1.1.1", "2001:db8::g", "localhost", ""])
def test_ip_address_must_be_a_single_address(ip: str) -> None:
    found = problems(c.CheckControlPanelAccess, account="acme", ip=ip)
    assert set(found) == {"ip"}
    assert "is not an IPv4 or IPv6 address" in found["ip"]


def test_an_address_with_a_zone_id_is_refused_naming_it() -> None:
    found = problems(c.CheckControlPanelAccess, account="acme", ip="fe80::1%eth0")
    assert "has a zone id" in found["ip"]
