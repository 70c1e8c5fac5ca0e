"""``python -m consumers reactions --show [--json]``: the queued actions, as text or JSON
lines, from the consumer's store."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from consumers import reactions as r
from consumers.__main__ import inert, main
from consumers.testing import delivery
from contracts.payloads import ApiKeyRevoked, PasswordChanged


def test_show_lists_the_actions_as_text_and_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # given a reactions store with two actions
    path = tmp_path / "reactions.db"
    app = r.open_app(path)
    account, user = uuid.uuid4(), uuid.uuid4()
    app.handle(delivery(PasswordChanged(), aggregate_id=user, account_id=account, sequence=1))
    app.handle(
        delivery(
            ApiKeyRevoked(key_id="ak_1", reason="leaked"),
            aggregate_id=account,
            account_id=account,
            sequence=2,
        )
    )
    app.store.close()
    # when they are shown as text
    assert main(["reactions", "--store", str(path), "--show"]) == 0
    text = capsys.readouterr().out.splitlines()
    # then one line each, in log order
    assert text == [f"1 revoke_user_sessions user {user}", "2 revoke_api_key_grants api_key ak_1"]
    # and as JSON lines, every field
    assert main(["reactions", "--store", str(path), "--show", "--json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [rec["kind"] for rec in records] == [r.REVOKE_USER_SESSIONS, r.REVOKE_API_KEY_GRANTS]
    assert records[1]["detail"]["reason"] == "leaked"
    assert records[0]["account_id"] == str(account)


def test_running_needs_the_brokers(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["reactions", "--store", str(tmp_path / "r.db")])
    assert stopped.value.code == 2


def test_request_text_is_shown_inert() -> None:
    assert inert("ak_1\x1b[31m\u202e") == "ak_1\\x1b[31m\\u202e"
    assert inert("domäne.test") == "domäne.test"
