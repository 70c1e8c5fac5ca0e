"""The reactions consumer's handlers, called directly: each event becomes the platform's
actions in the action table, each exactly once, on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from consumer_support import store_location

from consumers import ConsumerStore, Delivered, Outcome
from consumers import reactions as r
from consumers.testing import delivery
from contracts.payloads import (
    AllowlistEntryAdded,
    AllowlistEntryRemoved,
    ApiKeyCreated,
    ApiKeyRevoked,
    DkimKeyActivated,
    DkimKeyGenerated,
    DkimKeyRetired,
    EventData,
    LoginFailed,
    PasswordChanged,
    PasswordResetCompleted,
    PasswordResetRequired,
    SecondFactorRemoved,
    UserDisabled,
    UserLocked,
    UserUnlocked,
)

ACCOUNT = uuid.uuid4()
USER = uuid.uuid4()


@pytest.fixture
def store(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ConsumerStore]:
    opened = ConsumerStore.open(store_location(backend, tmp_path, request))
    opened.ensure_tables(r.TABLES)
    yield opened
    opened.close()


def user_event(data: EventData, version: int = 5, sequence: int = 1) -> Delivered[Any]:
    return delivery(
        data,
        aggregate_id=USER,
        version=version,
        account_id=ACCOUNT,
        sequence=sequence,
        actor_id="support-7",
        request_id="req-42",
    )


def account_event(data: EventData, version: int = 9, sequence: int = 1) -> Delivered[Any]:
    return delivery(
        data, aggregate_id=ACCOUNT, version=version, account_id=ACCOUNT, sequence=sequence
    )


def test_a_password_change_revokes_the_users_sessions(store: ConsumerStore) -> None:
    # given a PasswordChanged of the user
    given = user_event(PasswordChanged())
    # when the handler runs
    with store.transaction() as tx:
        r.revoke_user_sessions(given, tx)
    # then one action revokes that user's sessions, saying why and by whom
    [action] = r.list_actions(store)
    assert (action.kind, action.target_kind, action.target) == (
        r.REVOKE_USER_SESSIONS,
        "user",
        str(USER),
    )
    assert action.ce_id == given.ce_id
    assert action.account_id == str(ACCOUNT)
    assert action.event_type == "User.PasswordChanged"
    assert action.detail == {
        "event": "User.PasswordChanged",
        "actor_kind": "user",
        "actor_id": "support-7",
        "request_id": "req-42",
    }
    assert (action.log_position, action.account_sequence) == (1, 1)


def test_the_same_event_twice_is_one_action(store: ConsumerStore) -> None:
    given = user_event(UserLocked(failed_logins=5))
    with store.transaction() as tx:
        r.revoke_user_sessions(given, tx)
        r.revoke_user_sessions(given, tx)
    with store.transaction() as tx:
        r.revoke_user_sessions(given, tx)
    assert len(r.list_actions(store)) == 1


def test_a_revoked_api_key_drops_its_cached_grants(store: ConsumerStore) -> None:
    with store.transaction() as tx:
        r.revoke_api_key_grants(account_event(ApiKeyRevoked(key_id="ak_123", reason="leaked")), tx)
    [action] = r.list_actions(store)
    assert (action.kind, action.target_kind, action.target) == (
        r.REVOKE_API_KEY_GRANTS,
        "api_key",
        "ak_123",
    )
    assert action.detail["reason"] == "leaked"


def test_dkim_activation_and_retirement_reload_the_signing_keys(store: ConsumerStore) -> None:
    with store.transaction() as tx:
        r.reload_signing_keys(
            account_event(DkimKeyActivated(domain="mail.example.com", selector="s2"), 3), tx
        )
        r.reload_signing_keys(
            account_event(
                DkimKeyRetired(domain="mail.example.com", selector="s1", reason="rotated"), 4
            ),
            tx,
        )
    actions = r.list_actions(store)
    assert [(a.kind, a.target, a.detail["change"], a.detail["selector"]) for a in actions] == [
        (r.RELOAD_SIGNING_KEYS, "mail.example.com", "activated", "s2"),
        (r.RELOAD_SIGNING_KEYS, "mail.example.com", "retired", "s1"),
    ]
    assert actions[1].detail["reason"] == "rotated"


@pytest.mark.parametrize(
    ("data", "template", "target_kind", "facts"),
    [
        (
            SecondFactorRemoved(factor_id="f1", kind="totp", reason="lost phone"),
            "second_factor_removed",
            "user",
            {"factor_id": "f1", "factor_kind": "totp", "reason": "lost phone"},
        ),
        (
            ApiKeyCreated(key_id="ak_9", name="ci", scopes=["send"], display="ak_9…wxyz"),
            "api_key_created",
            "account",
            {"key_id": "ak_9", "name": "ci", "display": "ak_9…wxyz"},
        ),
        (
            AllowlistEntryAdded(entry_id="e1", cidr="203.0.113.0/24", label="office"),
            "allowlist_entry_added",
            "account",
            {"entry_id": "e1", "cidr": "203.0.113.0/24", "label": "office"},
        ),
        (
            AllowlistEntryRemoved(entry_id="e1", cidr="203.0.113.0/24", forced=True),
            "allowlist_entry_removed",
            "account",
            {"entry_id": "e1", "cidr": "203.0.113.0/24", "forced": True},
        ),
        (
            PasswordResetRequired(reason="breach", campaign_id="c-2015"),
            "password_reset_required",
            "user",
            {"reason": "breach", "campaign_id": "c-2015"},
        ),
    ],
)
def test_the_customer_is_told(
    store: ConsumerStore, data: EventData, template: str, target_kind: str, facts: dict[str, Any]
) -> None:
    # given an event the customer must hear of
    given = user_event(data) if target_kind == "user" else account_event(data)
    # when the notification handler runs
    with store.transaction() as tx:
        r.notify_customer(given, tx)
    # then one notification is queued with its template and the event's public facts
    [action] = r.list_actions(store)
    assert action.kind == r.NOTIFY_CUSTOMER
    assert (action.target_kind, action.target) == (
        target_kind,
        str(USER if target_kind == "user" else ACCOUNT),
    )
    assert action.detail["template"] == template
    assert {k: action.detail[k] for k in facts} == facts


# Every event type the reactions act on, and the actions each gets.
EXPECTED: list[tuple[EventData, set[str]]] = [
    (PasswordChanged(), {r.REVOKE_USER_SESSIONS}),
    (PasswordResetCompleted(campaign_id=None), {r.REVOKE_USER_SESSIONS}),
    (
        PasswordResetRequired(reason="x", campaign_id=None),
        {r.REVOKE_USER_SESSIONS, r.NOTIFY_CUSTOMER},
    ),
    (UserLocked(failed_logins=5), {r.REVOKE_USER_SESSIONS}),
    (UserDisabled(reason="left"), {r.REVOKE_USER_SESSIONS}),
    (ApiKeyRevoked(key_id="ak_1", reason="x"), {r.REVOKE_API_KEY_GRANTS}),
    (DkimKeyActivated(domain="d.example", selector="s"), {r.RELOAD_SIGNING_KEYS}),
    (DkimKeyRetired(domain="d.example", selector="s", reason="x"), {r.RELOAD_SIGNING_KEYS}),
    (SecondFactorRemoved(factor_id="f", kind="totp", reason="x"), {r.NOTIFY_CUSTOMER}),
    (ApiKeyCreated(key_id="ak_2", name="n", scopes=[], display="ak_2…"), {r.NOTIFY_CUSTOMER}),
    (AllowlistEntryAdded(entry_id="e", cidr="192.0.2.0/24", label=""), {r.NOTIFY_CUSTOMER}),
    (AllowlistEntryRemoved(entry_id="e", cidr="192.0.2.0/24", forced=False), {r.NOTIFY_CUSTOMER}),
    # and some it does not act on
    (UserUnlocked(), set()),
    (LoginFailed(reason="bad_password", counts_toward_lockout=True), set()),
    (
        DkimKeyGenerated(
            domain="d.example",
            selector="s",
            algorithm="ed25519-sha256",
            public_key="k",
            campaign_id=None,
        ),
        set(),
    ),
]


@pytest.mark.parametrize(("data", "kinds"), EXPECTED, ids=lambda v: getattr(v, "EVENT_TYPE", ""))
def test_the_consumer_turns_each_event_into_its_actions_once(
    store: ConsumerStore, data: EventData, kinds: set[str]
) -> None:
    # given the reactions consumer
    app = r.build_app(store)
    given = user_event(data) if data.EVENT_TYPE.startswith("User.") else account_event(data)
    # when the event is delivered, and delivered again
    first, again = app.handle(given), app.handle(given)
    # then it has exactly its actions, once
    assert first.outcome == (Outcome.HANDLED if kinds else Outcome.NO_HANDLER)
    assert again.outcome == Outcome.DUPLICATE
    actions = r.list_actions(store)
    assert sorted(a.kind for a in actions) == sorted(kinds)
    assert {a.ce_id for a in actions} <= {given.ce_id}


def test_actions_are_listed_in_log_order_and_filtered(store: ConsumerStore) -> None:
    app = r.build_app(store)
    other = uuid.uuid4()
    app.handle(user_event(PasswordChanged(), version=2, sequence=1))
    app.handle(
        delivery(
            ApiKeyRevoked(key_id="ak_o", reason="x"),
            aggregate_id=other,
            account_id=other,
            sequence=1,
            position=5,
        )
    )
    app.handle(user_event(UserDisabled(reason="left"), version=3, sequence=2))
    assert [a.account_sequence for a in r.list_actions(store, account_id=str(ACCOUNT))] == [1, 2]
    assert [a.target for a in r.list_actions(store, kind=r.REVOKE_API_KEY_GRANTS)] == ["ak_o"]
    assert [a.log_position for a in r.list_actions(store)] == [1, 2, 5]
    assert len(r.list_actions(store, limit=1)) == 1
    assert r.list_actions(store)[0].as_dict()["kind"] == r.REVOKE_USER_SESSIONS
