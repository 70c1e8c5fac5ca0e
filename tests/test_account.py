"""Account aggregate rules, given/when/then, without a store.

Every refused command must raise its named error and record nothing.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from domain.account import Account, ApiKeyIndex, dkim_aad
from domain.context import Actor, ActorKind, RequestContext, Stamp
from domain.errors import (
    AccountKindError,
    ApiKeyAlreadyRevokedError,
    DkimKeyStateError,
    DkimSelectorInUseError,
    DuplicateAllowlistEntryError,
    InvalidCidrError,
    SecretKeyError,
    SecStateError,
    SelfLockoutError,
    UnknownAllowlistEntryError,
    UnknownApiKeyError,
    UnknownDkimKeyError,
)
from domain.secrets import ApiKeyCodec, KeyRing, api_secret_matches
from domain.values import AccountKind, natural_id

T0 = datetime(2026, 3, 1, 9, 0, 0, tzinfo=UTC)
KEYRING = KeyRing({"k1": KeyRing.generate_key()}, "k1")
CODEC = ApiKeyCodec()
CALLER_IP = "198.51.100.10"
ADMIN = Actor(ActorKind.USER, "alice")


def at(seconds: float = 0, source_ip: str | None = CALLER_IP) -> Stamp:
    return Stamp(RequestContext(ADMIN, source_ip=source_ip), T0 + timedelta(seconds=seconds))


def opened(name: str = "acme", kind: AccountKind = AccountKind.CUSTOMER) -> Account:
    account = Account.open(name, kind, name.title(), at())
    account.collect_events()
    return account


def names(account: Account) -> list[str]:
    return [type(e).__name__ for e in account.collect_events()]


def refused(account: Account, error: type[SecStateError], action: Callable[[], object]) -> str:
    """Run ``action``, expect ``error``, and check it recorded and changed nothing."""
    before = copy.deepcopy(account)
    with pytest.raises(error) as info:
        action()
    assert account.pending_events == []
    assert account == before
    return str(info.value)


def with_entries(*cidrs: str) -> Account:
    account = opened()
    for cidr in cidrs:
        account.add_allowlist_entry(cidr, f"net {cidr}", at())
    account.collect_events()
    return account


# --- opening, policy, members -----------------------------------------------------------------


def test_opened_account_has_empty_controls_and_a_natural_id() -> None:
    # given / when
    account = Account.open("acme", AccountKind.CUSTOMER, "Acme Inc.", at())
    # then
    [event] = account.collect_events()
    assert type(event).__name__ == "Opened"
    assert event.actor_id == "alice"  # type: ignore[attr-defined]
    assert account.id == natural_id("account", "acme") == Account.create_id(" ACME ")
    assert account.kind == "customer"
    assert account.display_name == "Acme Inc."
    assert account.opened_at == T0
    assert not account.two_factor_required
    assert [account.members, account.allowlist, account.api_keys, account.dkim_keys] == [{}] * 4


def test_two_factor_policy_change_is_recorded_once() -> None:
    account = opened()
    assert account.set_two_factor_policy(True, at())
    assert names(account) == ["TwoFactorPolicyChanged"]
    assert account.two_factor_required
    # asking for what is already so records nothing
    before = copy.deepcopy(account)
    assert not account.set_two_factor_policy(True, at(1))
    assert account.pending_events == []
    assert account == before


@pytest.mark.parametrize(
    ("kind", "role"),
    [
        (AccountKind.CUSTOMER, "owner"),
        (AccountKind.CUSTOMER, "teammate"),
        (AccountKind.STAFF, "employee"),
    ],
)
def test_member_with_a_role_that_fits_the_account_kind_is_added(
    kind: AccountKind, role: str
) -> None:
    account = opened(kind=kind)
    user_id = uuid.uuid4()
    account.add_member(user_id, "alice", role, at())
    assert names(account) == ["MemberAdded"]
    member = account.members[str(user_id)]
    assert (member.username, member.role, member.added_at) == ("alice", role, T0)


@pytest.mark.parametrize(
    ("kind", "role", "problem"),
    [
        (AccountKind.CUSTOMER, "employee", "only the staff organisation has employees"),
        (AccountKind.STAFF, "owner", "are employees, not owners"),
        (AccountKind.STAFF, "teammate", "are employees, not owners"),
    ],
)
def test_member_role_must_fit_the_account_kind(kind: AccountKind, role: str, problem: str) -> None:
    account = opened(kind=kind)
    message = refused(
        account, AccountKindError, lambda: account.add_member(uuid.uuid4(), "bob", role, at())
    )
    assert problem in message


# --- allowlist ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("203.0.113.0/24", "203.0.113.0/24"),
        (" 203.0.113.7/32 ", "203.0.113.7/32"),
        ("2001:DB8::/32", "2001:db8::/32"),
        ("2001:db8:0:0:0:0:0:1/128", "2001:db8::1/128"),
    ],
)
def test_allowlist_entry_is_stored_normalised(given: str, stored: str) -> None:
    account = opened()
    entry_id = account.add_allowlist_entry(given, "office", at())
    [event] = account.collect_events()
    assert event.cidr == stored  # type: ignore[attr-defined]
    entry = account.allowlist[entry_id]
    assert entry_id.startswith("ale_")
    assert (entry.cidr, entry.label, entry.added_by) == (stored, "office", "user:alice")


@pytest.mark.parametrize(
    "cidr",
    [
        "nonsense",
        "",
        "10.0.0.0/33",
        "256.0.0.0/8",
        "10.0.0.1/8",  # host bits set
        "192.168.1.5/24",  # host bits set
        "2001:db8::1/32",  # host bits set
        "2001:db8::/129",
        "10.0.0.0/8/8",
    ],
)
def test_invalid_cidr_is_refused(cidr: str) -> None:
    account = opened()
    message = refused(
        account, InvalidCidrError, lambda: account.add_allowlist_entry(cidr, "x", at())
    )
    assert f"invalid CIDR {cidr!r}" in message


@pytest.mark.parametrize(
    ("existing", "new"),
    [
        ("203.0.113.0/24", "203.0.113.0/24"),  # equal
        ("203.0.113.0/24", "203.0.113.128/25"),  # contained
        ("203.0.113.0/24", "203.0.113.9/32"),  # contained host
        ("0.0.0.0/0", "10.0.0.0/8"),
        ("2001:db8::/32", "2001:DB8::/32"),  # equal, other spelling
        ("2001:db8::/32", "2001:db8:ab::/48"),  # contained
        ("::/0", "2001:db8::1/128"),
    ],
)
def test_network_already_covered_by_an_entry_is_refused(existing: str, new: str) -> None:
    account = with_entries(existing)
    message = refused(
        account,
        DuplicateAllowlistEntryError,
        lambda: account.add_allowlist_entry(new, "again", at()),
    )
    assert "already covered by allowlist entry" in message


@pytest.mark.parametrize(
    ("existing", "new"),
    [
        ("0.0.0.0/0", "::/0"),  # families never cover each other
        ("203.0.113.0/24", "203.0.114.0/24"),  # neighbour
        ("203.0.113.0/25", "203.0.113.128/25"),
        ("203.0.113.0/24", "203.0.0.0/16"),  # wider: broadens the list, allowed
    ],
)
def test_network_not_covered_by_an_entry_is_added(existing: str, new: str) -> None:
    account = with_entries(existing)
    account.add_allowlist_entry(new, "more", at())
    assert names(account) == ["AllowlistEntryAdded"]
    assert len(account.allowlist) == 2


def test_entry_is_removed_by_id_or_by_cidr_text() -> None:
    account = with_entries("203.0.113.0/24", "2001:db8::/32")
    ids = {e.cidr: e.entry_id for e in account.allowlist.values()}
    assert account.remove_allowlist_entry(ids["203.0.113.0/24"], at()) == ids["203.0.113.0/24"]
    assert account.remove_allowlist_entry("2001:DB8::/32", at()) == ids["2001:db8::/32"]
    events = account.collect_events()
    assert [type(e).__name__ for e in events] == ["AllowlistEntryRemoved"] * 2
    assert [e.forced for e in events] == [False, False]  # type: ignore[attr-defined]
    assert account.allowlist == {}


@pytest.mark.parametrize("ref", ["ale_000000000000", "10.9.9.0/24", "not a cidr"])
def test_removing_an_unknown_entry_is_refused(ref: str) -> None:
    account = with_entries("203.0.113.0/24")
    refused(account, UnknownAllowlistEntryError, lambda: account.remove_allowlist_entry(ref, at()))


def test_removing_the_entry_that_admits_the_caller_is_refused() -> None:
    # given the caller's network and another one
    account = with_entries("198.51.100.0/24", "203.0.113.0/24")
    # when / then
    message = refused(
        account,
        SelfLockoutError,
        lambda: account.remove_allowlist_entry("198.51.100.0/24", at()),
    )
    assert CALLER_IP in message
    assert "use force" in message


def test_removing_the_callers_entry_is_allowed_when_forced() -> None:
    account = with_entries("198.51.100.0/24", "203.0.113.0/24")
    account.remove_allowlist_entry("198.51.100.0/24", at(), force=True)
    [event] = account.collect_events()
    assert event.forced is True  # type: ignore[attr-defined]
    assert account.allowlist_decision(CALLER_IP) == (False, None)


def test_removing_the_callers_ipv6_entry_is_refused() -> None:
    account = with_entries("2001:db8:1::/48", "2001:db8:2::/48")
    stamp = at(source_ip="2001:DB8:1::99")
    refused(
        account,
        SelfLockoutError,
        lambda: account.remove_allowlist_entry("2001:db8:1::/48", stamp),
    )


def test_removing_the_last_entry_is_allowed_since_an_empty_list_admits_everyone() -> None:
    account = with_entries("198.51.100.0/24")
    account.remove_allowlist_entry("198.51.100.0/24", at())
    assert names(account) == ["AllowlistEntryRemoved"]
    assert account.allowlist_decision(CALLER_IP) == (True, None)


def test_removing_the_callers_entry_is_allowed_when_another_entry_admits_the_caller() -> None:
    account = with_entries("198.51.100.0/24", "198.51.0.0/16")
    account.remove_allowlist_entry("198.51.100.0/24", at())
    assert names(account) == ["AllowlistEntryRemoved"]
    assert account.allowlist_decision(CALLER_IP)[0]


def test_removing_an_entry_that_does_not_admit_the_caller_is_allowed() -> None:
    account = with_entries("198.51.100.0/24", "203.0.113.0/24")
    account.remove_allowlist_entry("203.0.113.0/24", at())
    assert names(account) == ["AllowlistEntryRemoved"]


def test_caller_without_a_source_ip_cannot_lock_itself_out() -> None:
    # System jobs have no IP; the control-panel lockout does not apply to them.
    account = with_entries("198.51.100.0/24", "203.0.113.0/24")
    account.remove_allowlist_entry("198.51.100.0/24", at(source_ip=None))
    assert names(account) == ["AllowlistEntryRemoved"]


def test_empty_allowlist_admits_every_ip() -> None:
    account = opened()
    assert account.check_control_panel_access("203.0.113.5", at())
    [event] = account.collect_events()
    assert type(event).__name__ == "ControlPanelAccessAllowed"
    assert event.entry_id is None  # type: ignore[attr-defined]


def test_control_panel_access_is_decided_by_the_allowlist_and_recorded() -> None:
    # given
    account = with_entries("198.51.100.0/24", "2001:db8::/32")
    entry_v6 = account.find_allowlist_entry("2001:db8::/32").entry_id
    # when
    allowed_v6 = account.check_control_panel_access("2001:DB8::0:1", at())
    denied = account.check_control_panel_access("203.0.113.5", at())
    # then
    assert (allowed_v6, denied) == (True, False)
    allowed_event, denied_event = account.collect_events()
    assert type(allowed_event).__name__ == "ControlPanelAccessAllowed"
    assert allowed_event.ip == "2001:db8::1"  # type: ignore[attr-defined]
    assert allowed_event.entry_id == entry_v6  # type: ignore[attr-defined]
    assert type(denied_event).__name__ == "ControlPanelAccessDenied"
    assert denied_event.ip == "203.0.113.5"  # type: ignore[attr-defined]


# --- API keys -----------------------------------------------------------------------------------


def test_created_api_key_stores_only_a_hash_of_its_secret() -> None:
    # given / when
    account = opened()
    issued = account.create_api_key("deploy", ["send", "read", "send"], CODEC, at())
    # then
    [event] = account.collect_events()
    assert type(event).__name__ == "ApiKeyCreated"
    secret = CODEC.parse(issued.token).secret
    stored = str(event.__dict__)
    assert issued.token not in stored
    assert secret not in stored
    key = account.get_api_key(issued.key_id)
    assert key.scopes == ["read", "send"]
    assert key.active
    assert key.created_by == "user:alice"
    assert api_secret_matches(key.secret_hash, issued.key_id, secret)


def test_revoked_key_records_who_and_why() -> None:
    account = opened()
    issued = account.create_api_key("deploy", ["send"], CODEC, at())
    account.revoke_api_key(issued.key_id, "leaked in a log", at(60))
    assert names(account) == ["ApiKeyCreated", "ApiKeyRevoked"]
    key = account.get_api_key(issued.key_id)
    assert not key.active
    assert (key.revoked_at, key.revoked_by, key.revoke_reason) == (
        T0 + timedelta(seconds=60),
        "user:alice",
        "leaked in a log",
    )


def test_revoking_an_already_revoked_key_is_refused() -> None:
    account = opened()
    issued = account.create_api_key("deploy", ["send"], CODEC, at())
    account.revoke_api_key(issued.key_id, "leaked", at())
    account.collect_events()
    message = refused(
        account,
        ApiKeyAlreadyRevokedError,
        lambda: account.revoke_api_key(issued.key_id, "again", at()),
    )
    assert "already revoked" in message


def test_revoking_an_unknown_key_is_refused() -> None:
    account = opened()
    refused(account, UnknownApiKeyError, lambda: account.revoke_api_key("AAAAAAAAAAAA", "x", at()))


def test_api_key_index_maps_key_id_to_account() -> None:
    index = ApiKeyIndex.index("AAAAAAAAAAAA", Account.create_id("acme"), at())
    assert index.id == natural_id("api-key", "AAAAAAAAAAAA")
    assert index.account_id == Account.create_id("acme")


# --- DKIM --------------------------------------------------------------------------------------


def with_key(
    state: str = "generated", domain: str = "mail.acme.example", selector: str = "s1"
) -> Account:
    account = opened()
    account.generate_dkim_key(domain, selector, "ed25519-sha256", KEYRING, at())
    if state in ("published", "active", "retired"):
        account.publish_dkim_key(domain, selector, at())
    if state in ("active", "retired"):
        account.activate_dkim_key(domain, selector, at())
    if state == "retired":
        account.retire_dkim_key(domain, selector, "done", at())
    account.collect_events()
    assert account.get_dkim_key(domain, selector).state == state
    return account


@pytest.mark.parametrize("algorithm", ["rsa-sha256", "ed25519-sha256"])
def test_generated_dkim_key_keeps_the_private_key_sealed(algorithm: str) -> None:
    # given / when
    account = opened()
    key = account.generate_dkim_key(
        "Mail.Acme.Example", "S1", algorithm, KEYRING, at(), campaign_id="rot-1", rsa_bits=1024
    )
    # then
    [event] = account.collect_events()
    assert type(event).__name__ == "DkimKeyGenerated"
    assert (key.domain, key.selector, key.state) == ("mail.acme.example", "s1", "generated")
    assert key.campaign_id == "rot-1"
    pem = account.open_dkim_private_key("mail.acme.example", "s1", KEYRING)
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    stored = str(event.__dict__)
    body = b"".join(pem.splitlines()[1:-1]).decode()
    assert body[:40] not in stored
    assert key.public_key in stored


def test_sealed_dkim_key_opens_only_for_its_account_domain_and_selector() -> None:
    account = with_key()
    sealed = account.get_dkim_key("mail.acme.example", "s1").sealed_private_key
    KEYRING.open(sealed, dkim_aad(account.id, "mail.acme.example", "s1"))
    for aad in (
        dkim_aad(Account.create_id("other"), "mail.acme.example", "s1"),
        dkim_aad(account.id, "other.example", "s1"),
        dkim_aad(account.id, "mail.acme.example", "s2"),
    ):
        with pytest.raises(SecretKeyError):
            KEYRING.open(sealed, aad)


@pytest.mark.parametrize("selector", ["s1", "S1"])
def test_dkim_selector_already_used_for_the_domain_is_refused(selector: str) -> None:
    account = with_key("retired")  # even a retired key keeps its selector
    message = refused(
        account,
        DkimSelectorInUseError,
        lambda: account.generate_dkim_key(
            "MAIL.acme.example", selector, "ed25519-sha256", KEYRING, at()
        ),
    )
    assert "already used" in message


def test_same_selector_on_another_domain_is_fine() -> None:
    account = with_key()
    account.generate_dkim_key("news.acme.example", "s1", "ed25519-sha256", KEYRING, at())
    assert names(account) == ["DkimKeyGenerated"]


def test_dkim_key_goes_generated_published_active_retired() -> None:
    account = with_key("generated")
    account.publish_dkim_key("mail.acme.example", "s1", at(1))
    assert account.activate_dkim_key("mail.acme.example", "s1", at(2)) == []
    account.retire_dkim_key("mail.acme.example", "s1", "compromised", at(3))
    assert names(account) == ["DkimKeyPublished", "DkimKeyActivated", "DkimKeyRetired"]
    key = account.get_dkim_key("mail.acme.example", "s1")
    assert key.state == "retired"
    assert (key.published_at, key.activated_at, key.retired_at) == (
        T0 + timedelta(seconds=1),
        T0 + timedelta(seconds=2),
        T0 + timedelta(seconds=3),
    )
    assert key.retire_reason == "compromised"


def test_activating_a_key_retires_the_domains_active_key_only() -> None:
    # given an active key on two domains and a published successor on one
    account = with_key("active", selector="s1")
    account.generate_dkim_key("news.acme.example", "s1", "ed25519-sha256", KEYRING, at())
    account.publish_dkim_key("news.acme.example", "s1", at())
    account.activate_dkim_key("news.acme.example", "s1", at())
    account.generate_dkim_key("mail.acme.example", "s2", "ed25519-sha256", KEYRING, at())
    account.publish_dkim_key("mail.acme.example", "s2", at())
    account.collect_events()
    # when
    retired = account.activate_dkim_key("mail.acme.example", "s2", at(60))
    # then
    assert retired == ["s1"]
    [activated, retirement] = account.collect_events()
    assert type(activated).__name__ == "DkimKeyActivated"
    assert retirement.reason == "superseded by s2"  # type: ignore[attr-defined]
    assert account.get_dkim_key("mail.acme.example", "s1").state == "retired"
    assert account.get_dkim_key("mail.acme.example", "s2").state == "active"
    assert account.get_dkim_key("news.acme.example", "s1").state == "active"


@pytest.mark.parametrize(
    ("state", "action"),
    [
        ("published", "publish"),
        ("active", "publish"),
        ("retired", "publish"),
        ("generated", "activate"),
        ("active", "activate"),
        ("retired", "activate"),
        ("retired", "retire"),
    ],
)
def test_dkim_transition_from_the_wrong_state_is_refused(state: str, action: str) -> None:
    account = with_key(state)
    do: Callable[[], object] = {
        "publish": lambda: account.publish_dkim_key("mail.acme.example", "s1", at()),
        "activate": lambda: account.activate_dkim_key("mail.acme.example", "s1", at()),
        "retire": lambda: account.retire_dkim_key("mail.acme.example", "s1", "x", at()),
    }[action]
    refused(account, DkimKeyStateError, do)


@pytest.mark.parametrize("state", ["generated", "published", "active"])
def test_a_key_can_be_retired_from_any_live_state(state: str) -> None:
    account = with_key(state)
    account.retire_dkim_key("mail.acme.example", "s1", "not needed", at())
    assert names(account) == ["DkimKeyRetired"]


@pytest.mark.parametrize(
    "action",
    [
        lambda a: a.publish_dkim_key("mail.acme.example", "s9", at()),
        lambda a: a.activate_dkim_key("other.example", "s1", at()),
        lambda a: a.retire_dkim_key("mail.acme.example", "s9", "x", at()),
        lambda a: a.open_dkim_private_key("mail.acme.example", "s9", KEYRING),
    ],
)
def test_unknown_dkim_key_is_refused(action: Callable[[Account], object]) -> None:
    account = with_key()
    refused(account, UnknownDkimKeyError, lambda: action(account))
