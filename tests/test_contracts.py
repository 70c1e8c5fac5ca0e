"""The published contracts (contracts/): payload models, envelope, CloudEvents headers,
the checked-in JSON Schemas and the AsyncAPI document.

The models must be the catalogue's public form of every event, nothing more and nothing
secret; every event a ledger stores must validate into its model as published; a value
or header that is not valid is refused with a named error; and the files in docs/ must
be what the code generates.
"""

from __future__ import annotations

import json
import re
import typing
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import make_settings
from fixture_store import load_sqlite
from pydantic import ValidationError

from contracts import cloudevents as ce
from contracts.asyncapi import document
from contracts.envelope import SecurityEvent
from contracts.payloads import (
    MODELS,
    AccountOpened,
    ApiKeyUsed,
    DkimKeyGenerated,
    EventData,
    InternalSystemAccessed,
    LoginFailed,
    MemberAdded,
    PasswordChanged,
    PasswordChangeFailed,
    SecondFactorRemoved,
    TotpConfirmationFailed,
    UnknownUserRefused,
    UserRegistered,
    ce_type_for,
)
from contracts.registry import (
    ContractError,
    HeadersMismatch,
    PayloadInvalid,
    UnknownEventType,
    UnknownVersion,
    envelope_for,
    model_for_ce_type,
    model_for_event_type,
    parse_message,
    parse_value,
    validate_value,
)
from contracts.schemas import REGENERATE, main, render
from domain.account import Account, ApiKeyIndex
from domain.attempts import CredentialAttempt
from domain.catalogue import CATALOGUE, secret_fields
from domain.commands import RecordStaffAccess
from domain.context import ActorKind
from domain.public import public_payload
from domain.secrets import DKIM_ALGORITHMS
from domain.user import LoginFailure, User
from domain.values import AccountKind, FactorKind, Role
from projections.source import LogSource
from secstate.bootstrap import build_reader
from secstate.demo import DemoOptions, run_demo

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
FIXTURES = ("history-v1", "history-v2")


def model_fields(model: type[EventData]) -> set[str]:
    return set(model.model_fields)


# --- the models are the catalogue's public form ------------------------------------------


def test_every_catalogue_entry_has_exactly_one_model_of_its_public_fields() -> None:
    for entry in CATALOGUE.values():
        models = [m for m in MODELS if entry.type_name == m.EVENT_TYPE]
        assert len(models) == 1, entry.type_name
        (model,) = models
        derived = {name for _, name, _ in entry.derived}
        assert model_fields(model) == set(entry.public) | derived, entry.type_name
        assert model_for_event_type(entry.type_name) is model
    # and there is no model of an event the catalogue does not know
    assert {m.EVENT_TYPE for m in MODELS} == {e.type_name for e in CATALOGUE.values()}


SECRET_NAME = re.compile(r"hash|sealed|secret|seed|private|password|ciphertext")


def test_no_model_field_is_a_secret() -> None:
    secrets = secret_fields()
    assert secrets  # the catalogue has secret fields to keep out
    for model in MODELS:
        for name in model_fields(model):
            assert name not in secrets, f"{model.__name__}.{name}"
            # nor named like one (a field added under a telling name is caught too)
            assert not SECRET_NAME.search(name), f"{model.__name__}.{name}"


def test_models_are_frozen_and_refuse_unknown_fields() -> None:
    for model in MODELS:
        # every field is required, nullable ones too: a missing field is refused
        assert all(f.is_required() for f in model.model_fields.values()), model.__name__
        assert model.model_config.get("extra") == "forbid", model.__name__
        assert model.model_config.get("frozen") is True, model.__name__
        assert (model.__doc__ or "").strip(), f"{model.__name__} says what happened"
        assert "\n" not in (model.__doc__ or "").strip(), model.__name__
    event = LoginFailed(reason="bad_password", counts_toward_lockout=True)
    with pytest.raises(ValidationError):
        event.reason = "user_locked"  # type: ignore[misc]


def test_ce_types_are_versioned_snake_case_names_of_the_event_types() -> None:
    assert PasswordChanged.CE_TYPE == "io.secstate.user.password_changed.v1"
    assert ApiKeyUsed.CE_TYPE == "io.secstate.api_key_index.used.v1"
    assert UnknownUserRefused.CE_TYPE == "io.secstate.credential_attempt.unknown_user_refused.v1"
    assert ce_type_for("Account.DkimKeyGenerated", 2) == "io.secstate.account.dkim_key_generated.v2"
    for model in MODELS:
        assert re.fullmatch(ce.TYPE_PATTERN, model.CE_TYPE), model.CE_TYPE
        assert ce_type_for(model.EVENT_TYPE, model.VERSION) == model.CE_TYPE
        assert model_for_ce_type(model.CE_TYPE) is model
    assert len({m.CE_TYPE for m in MODELS}) == len(MODELS)


def literal_values(model: type[Any], field: str) -> set[Any]:
    """The values a field's Literal type admits (None aside)."""

    def values(annotation: Any) -> set[Any]:
        if typing.get_origin(annotation) is typing.Literal:
            return set(typing.get_args(annotation))
        return {v for arg in typing.get_args(annotation) for v in values(arg)}

    return values(model.model_fields[field].annotation)


def test_the_fixed_sets_are_the_domains() -> None:
    # where the domain names a fixed set of values, the model admits exactly that set
    failures = {v for k, v in vars(LoginFailure).items() if k.isupper()}
    assert literal_values(AccountOpened, "kind") == {k.value for k in AccountKind}
    assert literal_values(MemberAdded, "role") == {r.value for r in Role}
    assert literal_values(UserRegistered, "role") == {r.value for r in Role}
    assert literal_values(SecondFactorRemoved, "kind") == {k.value for k in FactorKind}
    assert literal_values(DkimKeyGenerated, "algorithm") == set(DKIM_ALGORITHMS)
    assert literal_values(InternalSystemAccessed, "action") == literal_values(
        RecordStaffAccess, "action"
    )
    assert literal_values(SecurityEvent, "actor_kind") == {k.value for k in ActorKind}
    # a check of a user's secret: every reason but those of other paths
    refusals = failures - {"unknown_user", "no_pending_enrolment"}
    assert literal_values(LoginFailed, "reason") == refusals
    assert literal_values(PasswordChangeFailed, "reason") == refusals
    assert literal_values(TotpConfirmationFailed, "reason") <= failures


# --- every stored event validates as published ------------------------------------------


def account_ids(events: list[Any]) -> Iterator[tuple[Any, uuid.UUID | None]]:
    """Each event (in log order) with the account it belongs to."""
    user_accounts: dict[uuid.UUID, uuid.UUID] = {}
    for event in events:
        account: uuid.UUID | None
        if isinstance(event, Account.Event):
            account = event.originator_id
        elif isinstance(event, User.Registered):
            account = user_accounts[event.originator_id] = event.account_id
        elif isinstance(event, User.Event):
            account = user_accounts[event.originator_id]
        elif isinstance(event, ApiKeyIndex.Event):
            account = event.account_id
        else:
            assert isinstance(event, CredentialAttempt.Event)
            account = None
        yield event, account


def stored_events(home: Path) -> list[Any]:
    reader = build_reader(make_settings("sqlite", home))
    try:
        source = LogSource.of(reader)
        return [source.decode(row) for rows in reader.log_store.scan() for row in rows]
    finally:
        reader.close()


def published_value(event: Any, account: uuid.UUID | None) -> dict[str, Any]:
    payload = public_payload(event)
    return {**payload, "account_id": None if account is None else str(account)}


def check_publishes(events: list[Any]) -> set[str]:
    """Every event validates into SecurityEvent[its model], from the dict and from JSON;
    the type names seen."""
    seen = set()
    for position, (event, account) in enumerate(account_ids(events), start=1):
        value = published_value(event, account)
        model = model_for_event_type(value["type"])
        assert model is not None, value["type"]
        parsed = validate_value(value)
        assert type(parsed) is envelope_for(model)
        assert isinstance(parsed.data, model)
        from_wire = parse_value(model.CE_TYPE, json.dumps(value).encode())
        assert from_wire == parsed
        # what the model writes reads back the same, and holds the same fields
        assert parse_value(model.CE_TYPE, parsed.model_dump_json()) == parsed
        assert set(json.loads(parsed.model_dump_json())) == set(value)
        assert parsed.aggregate_id == event.originator_id
        assert parsed.version == event.originator_version
        assert parsed.account_id == account
        # and as a whole message, with the headers the relay sets
        attrs = ce.CloudEventAttributes.for_event(parsed, position=position, account_seq=1)
        assert parse_message(attrs.to_headers(), json.dumps(value)) == (attrs, parsed)
        seen.add(value["type"])
    return seen


@pytest.mark.parametrize("fixture", FIXTURES)
def test_every_event_of_the_fixture_stores_validates_into_its_model(
    fixture: str, tmp_path: Path
) -> None:
    # given a fixture store written by the code of its time (hostile text included)
    home = tmp_path / "home"
    load_sqlite(fixture, home / "ledger.sqlite3")
    events = stored_events(home)
    assert events
    # when each event's public payload is published, then it validates into its model
    seen = check_publishes(events)
    if fixture == FIXTURES[-1]:  # the newest holds every event type
        assert seen == {e.type_name for e in CATALOGUE.values()}


def test_every_event_of_a_small_demo_validates_into_its_model(tmp_path: Path) -> None:
    settings = make_settings("sqlite", tmp_path / "home")
    run_demo(settings, DemoOptions(accounts=2, weeks=3, employees=5, seed=3))
    assert len(check_publishes(stored_events(tmp_path / "home"))) > 10


# --- invalid values are refused with named errors ----------------------------------------


def valid_value() -> dict[str, Any]:
    return {
        "type": "User.InternalSystemAccessed",
        "aggregate_id": "8e2b7c1e-2f7c-5a4e-9d1b-0c3a4b5d6e7f",
        "version": 7,
        "account_id": "0b8a2f0e-6c3d-5e4f-8a9b-1c2d3e4f5a6b",
        "occurred_at": "2015-05-01T10:00:00+00:00",
        "recorded_at": "2026-12-04T18:00:00.123456+00:00",
        "actor_kind": "staff",
        "actor_id": "e-042",
        "source_ip": "203.0.113.9",
        "user_agent": None,
        "request_id": "req-1",
        "data": {
            "system": "support-console",
            "resource": "accounts",
            "action": "export",
            "records": 1200,
            "customer_accounts": ["acme", "globex"],
        },
    }


CE_TYPE = InternalSystemAccessed.CE_TYPE


def parse(value: Any, ce_type: str = CE_TYPE) -> SecurityEvent[Any]:
    return parse_value(ce_type, json.dumps(value).encode())


def test_a_valid_value_parses_into_typed_fields() -> None:
    event = parse(valid_value())
    assert isinstance(event.data, InternalSystemAccessed)
    assert event.data.records == 1200
    assert event.occurred_at == datetime(2015, 5, 1, 10, tzinfo=UTC)
    assert event.account_id == uuid.UUID("0b8a2f0e-6c3d-5e4f-8a9b-1c2d3e4f5a6b")


def changed(path: str, new: Any) -> dict[str, Any]:
    value = valid_value()
    *parents, last = path.split(".")
    target = value
    for key in parents:
        target = target[key]
    if new is DELETE:
        del target[last]
    else:
        target[last] = new
    return value


DELETE = object()


@pytest.mark.parametrize(
    ("path", "new", "where"),
    [
        ("data.extra", "x", "data.extra"),  # a field the model does not have
        ("extra", "x", "extra"),  # an envelope field that is not one
        ("data.password_hash", "$argon2id$...", "data.password_hash"),
        ("data.records", "1200", "data.records"),  # a number as text
        ("data.records", 12.5, "data.records"),
        ("data.action", "burn", "data.action"),  # not one of the fixed set
        ("data.customer_accounts", "acme", "data.customer_accounts"),
        ("aggregate_id", "not-a-uuid", "aggregate_id"),
        ("version", 0, "version"),
        ("version", "7", "version"),
        ("occurred_at", "2015-05-01T10:00:00", "occurred_at"),  # naive time
        ("actor_kind", "robot", "actor_kind"),
        ("data.system", DELETE, "data.system"),  # a missing field
        ("account_id", DELETE, "account_id"),
        ("source_ip", DELETE, "source_ip"),  # nullable, but present
        ("data", DELETE, "data"),
    ],
)
def test_a_value_that_does_not_fit_its_model_is_refused_naming_the_field(
    path: str, new: Any, where: str
) -> None:
    with pytest.raises(PayloadInvalid) as caught:
        parse(changed(path, new))
    assert caught.value.reason == "payload_invalid"
    assert where in str(caught.value)
    assert next(".".join(map(str, e["loc"])) for e in caught.value.errors).endswith(where)


def test_a_value_of_no_known_type_is_refused_before_publishing() -> None:
    with pytest.raises(UnknownEventType):
        validate_value(changed("type", "User.Teleported"))
    with pytest.raises(UnknownEventType):
        validate_value(changed("type", DELETE))
    with pytest.raises(PayloadInvalid, match=r"data\.records"):
        validate_value(changed("data.records", "many"))
    assert validate_value(valid_value()) == parse(valid_value())


def test_a_value_of_another_type_than_its_ce_type_is_refused() -> None:
    with pytest.raises(PayloadInvalid, match="type"):
        parse(changed("type", "User.LoginFailed"))
    with pytest.raises(PayloadInvalid):
        parse(valid_value(), LoginFailed.CE_TYPE)


@pytest.mark.parametrize("raw", [b"", b"{", b"\xff\xfe", b"[]", b"null", b'"text"'])
def test_a_value_that_is_not_a_json_object_is_refused(raw: bytes) -> None:
    with pytest.raises(PayloadInvalid):
        parse_value(CE_TYPE, raw)


@pytest.mark.parametrize(
    "ce_type",
    [
        "io.secstate.user.no_such_event.v1",
        "io.secstate.nobody.password_changed.v1",
        "com.example.user.password_changed.v1",
        "io.secstate.user.password_changed",
        "",
    ],
)
def test_a_type_secstate_does_not_publish_is_an_unknown_event_type(ce_type: str) -> None:
    with pytest.raises(UnknownEventType) as caught:
        parse(valid_value(), ce_type)
    assert caught.value.reason == "unknown_event_type"
    assert isinstance(caught.value, ContractError)


@pytest.mark.parametrize("version", ["v2", "v0", "v99999"])
def test_a_known_type_in_an_unknown_version_is_an_unknown_version(version: str) -> None:
    ce_type = f"io.secstate.user.password_changed.{version}"
    with pytest.raises(UnknownVersion, match=r"known: v1") as caught:
        parse(valid_value(), ce_type)
    assert caught.value.reason == "unknown_version"


# --- CloudEvents headers --------------------------------------------------------------------


def attributes() -> ce.CloudEventAttributes:
    return ce.CloudEventAttributes.for_event(parse(valid_value()), position=42, account_seq=9)


def test_headers_carry_every_attribute_as_utf8_text() -> None:
    attrs = attributes()
    headers = attrs.to_headers()
    assert [name for name, _ in headers] == list(ce.REQUIRED_HEADERS)
    text = {name: value.decode() for name, value in headers}
    assert text == {
        "ce_specversion": "1.0",
        "ce_id": "8e2b7c1e-2f7c-5a4e-9d1b-0c3a4b5d6e7f:7",
        "ce_source": ce.DEFAULT_SOURCE,
        "ce_type": "io.secstate.user.internal_system_accessed.v1",
        "ce_time": "2015-05-01T10:00:00Z",
        "ce_subject": "user/8e2b7c1e-2f7c-5a4e-9d1b-0c3a4b5d6e7f",
        "content-type": "application/json",
        "ce_logposition": "42",
        "ce_accountseq": "9",
        "ce_recordedtime": "2026-12-04T18:00:00.123456Z",
        "ce_partitionkey": "0b8a2f0e-6c3d-5e4f-8a9b-1c2d3e4f5a6b",
    }
    assert attrs.key == b"0b8a2f0e-6c3d-5e4f-8a9b-1c2d3e4f5a6b"
    assert ce.CloudEventAttributes.from_headers(headers) == attrs
    assert attrs.aggregate_id == uuid.UUID("8e2b7c1e-2f7c-5a4e-9d1b-0c3a4b5d6e7f")
    assert attrs.version == 7


def test_an_event_of_no_account_is_keyed_by_its_aggregate() -> None:
    value = {
        **valid_value(),
        "type": "CredentialAttempt.UnknownUserRefused",
        "version": 1,
        "account_id": None,
        "data": {"username": "mallory", "check": "login"},
    }
    event = parse(value, UnknownUserRefused.CE_TYPE)
    attrs = ce.CloudEventAttributes.for_event(event, position=1, account_seq=1)
    assert attrs.partitionkey == event.aggregate_id
    assert attrs.subject == f"credential_attempt/{event.aggregate_id}"


def test_extension_names_are_lowercase_alphanumeric() -> None:
    for name in ce.EXTENSIONS:
        assert re.fullmatch(r"[a-z0-9]{1,20}", name), name
        assert ce.HEADERS[name] == f"ce_{name}"
    for attribute, header in ce.HEADERS.items():
        expected = "content-type" if attribute == "datacontenttype" else f"ce_{attribute}"
        assert header == expected


def headers_with(name: str, value: bytes | None) -> list[tuple[str, bytes | None]]:
    return [(n, value if n == name else v) for n, v in attributes().to_headers()]


@pytest.mark.parametrize("name", ce.REQUIRED_HEADERS)
def test_a_missing_header_is_named(name: str) -> None:
    headers = [(n, v) for n, v in attributes().to_headers() if n != name]
    with pytest.raises(ce.HeaderError, match=re.escape(name)) as caught:
        ce.CloudEventAttributes.from_headers(headers)
    assert caught.value.header == name


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ce_specversion", b"0.3"),
        ("ce_id", b"8e2b7c1e-2f7c-5a4e-9d1b-0c3a4b5d6e7f"),
        ("ce_id", b"8e2b7c1e-2f7c-5a4e-9d1b-0c3a4b5d6e7f:0"),
        ("ce_source", b""),
        ("ce_type", b"com.example.thing"),
        ("ce_time", b"yesterday"),
        ("ce_time", b"2015-05-01T10:00:00"),
        ("ce_subject", b"user/not-an-id"),
        ("content-type", b"application/xml"),
        ("ce_logposition", b"0"),
        ("ce_logposition", b"+42"),
        ("ce_accountseq", b"nine"),
        ("ce_accountseq", b" 9"),
        ("ce_recordedtime", b"2026-13-01T00:00:00Z"),
        ("ce_partitionkey", b"acme"),
        ("ce_partitionkey", b"\xff"),
        ("ce_id", None),
    ],
)
def test_an_invalid_header_is_named(name: str, value: bytes | None) -> None:
    with pytest.raises(ce.HeaderError, match=re.escape(name)) as caught:
        ce.CloudEventAttributes.from_headers(headers_with(name, value))
    assert caught.value.header == name
    assert caught.value.reason == "headers_invalid"


def test_a_header_given_twice_is_refused_and_other_headers_are_ignored() -> None:
    headers = attributes().to_headers()
    with pytest.raises(ce.HeaderError, match="ce_type is given twice"):
        ce.CloudEventAttributes.from_headers([*headers, ("ce_type", b"x")])
    extra = [("traceparent", b"00-abc"), ("dlq_reason", b"\xff"), *headers]
    assert ce.CloudEventAttributes.from_headers(extra) == attributes()


def test_subject_and_id_must_name_the_same_aggregate() -> None:
    other = f"user/{uuid.uuid4()}".encode()
    with pytest.raises(ce.HeaderError, match="different aggregates"):
        ce.CloudEventAttributes.from_headers(headers_with("ce_subject", other))
    account = f"account/{attributes().aggregate_id}".encode()
    with pytest.raises(ce.HeaderError, match="subject is of family 'account', the type"):
        ce.CloudEventAttributes.from_headers(headers_with("ce_subject", account))


def test_a_message_whose_headers_and_value_disagree_is_refused() -> None:
    headers = attributes().to_headers()
    assert parse_message(headers, json.dumps(valid_value())).attributes == attributes()
    for path, new, header in [
        ("version", 8, "ce_id"),
        ("aggregate_id", str(uuid.uuid4()), "ce_id"),
        ("account_id", str(uuid.uuid4()), "ce_partitionkey"),
        ("account_id", None, "ce_partitionkey"),
        ("occurred_at", "2015-05-01T10:00:01+00:00", "ce_time"),
        ("recorded_at", "2026-12-04T18:00:00+00:00", "ce_recordedtime"),
    ]:
        with pytest.raises(HeadersMismatch, match=header) as caught:
            parse_message(headers, json.dumps(changed(path, new)))
        assert caught.value.reason == "headers_mismatch"
    # the headers are read first, then the value
    with pytest.raises(ce.HeaderError):
        parse_message(headers_with("ce_type", b"nonsense"), json.dumps(valid_value()))
    with pytest.raises(UnknownVersion):
        parse_message(
            headers_with("ce_type", b"io.secstate.user.internal_system_accessed.v2"),
            json.dumps(valid_value()),
        )


# --- the checked-in files are what the code generates ------------------------------------


def test_checked_in_schemas_and_asyncapi_match_the_models() -> None:
    expected = render()
    stale = [
        path
        for path, text in expected.items()
        if not (DOCS / path).exists() or (DOCS / path).read_text(encoding="utf-8") != text
    ]
    extra = sorted(
        f"schemas/{p.name}"
        for p in (DOCS / "schemas").iterdir()
        if f"schemas/{p.name}" not in expected
    )
    assert (stale, extra) == ([], []), (
        f"docs/ differs from the models; regenerate with `{REGENERATE}` and commit the result"
    )


def test_the_generator_writes_every_file_and_removes_stale_schemas(tmp_path: Path) -> None:
    # given a schema directory holding a schema no model has any more
    target = tmp_path / "docs" / "schemas"
    target.mkdir(parents=True)
    (target / "io.secstate.user.gone.v1.json").write_text("{}")
    (target / "README.md").write_text("kept")
    # when the generator runs, twice
    assert main([str(target)]) == 0
    first = {p.name: p.read_text() for p in target.iterdir()}
    assert main([str(target)]) == 0
    # then the directory holds exactly the generated files (and what is not a schema)
    expected = render()
    assert sorted(first) == sorted(
        ["README.md", *(p.removeprefix("schemas/") for p in expected if p.startswith("schemas/"))]
    )
    assert {p.name: p.read_text() for p in target.iterdir()} == first
    assert (tmp_path / "docs" / "asyncapi.yaml").read_text() == expected["asyncapi.yaml"]
    assert main(["--help"]) == 2


def test_each_schema_describes_its_message_value() -> None:
    for model in MODELS:
        schema = json.loads((DOCS / "schemas" / f"{model.CE_TYPE}.json").read_text())
        assert schema["title"] == model.CE_TYPE
        assert schema["additionalProperties"] is False
        assert schema["properties"]["type"]["const"] == model.EVENT_TYPE
        data = schema["$defs"][schema["properties"]["data"]["$ref"].rpartition("/")[2]]
        assert data["additionalProperties"] is False
        assert set(data.get("properties", {})) == model_fields(model)
        assert set(schema["required"]) == set(SecurityEvent.model_fields)
    index = json.loads((DOCS / "schemas" / "index.json").read_text())
    assert [e["ce_type"] for e in index["events"]] == [m.CE_TYPE for m in MODELS]


def asyncapi() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DOCS / "asyncapi.yaml").read_text(encoding="utf-8"))
    return loaded


def resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def test_asyncapi_document_parses_and_has_every_event_type() -> None:
    doc = asyncapi()
    assert doc["asyncapi"] == "3.0.0"
    # the YAML reads as the document the code builds
    assert doc == document({m: f"./schemas/{m.CE_TYPE}.json" for m in MODELS})
    (channel,) = doc["channels"].values()
    assert channel["address"] == "secstate.security-events"
    messages = [resolve(doc, ref["$ref"]) for ref in channel["messages"].values()]
    by_title = {m["title"]: m for m in messages}
    # every catalogue event type has exactly one message, named by its ce_type
    assert sorted(by_title) == sorted(e.type_name for e in CATALOGUE.values())
    assert len(messages) == len(by_title)
    for message in messages:
        model = model_for_event_type(message["title"])
        assert model is not None
        assert message["name"] == model.CE_TYPE
        # its payload reference is a schema file that exists
        payload = DOCS / message["payload"]["$ref"]
        assert payload.is_file(), payload
        assert json.loads(payload.read_text())["title"] == model.CE_TYPE
        # and its headers are the CloudEvents attributes, every one required
        (trait,) = [resolve(doc, t["$ref"]) for t in message["traits"]]
        headers = resolve(doc, trait["headers"]["$ref"])
        assert set(headers["required"]) == set(ce.REQUIRED_HEADERS)
        assert set(headers["properties"]) == set(ce.REQUIRED_HEADERS)
        assert trait["bindings"]["kafka"]["key"]["format"] == "uuid"
    # the operation sends every message of the channel
    (operation,) = doc["operations"].values()
    assert operation["action"] == "send"
    assert len(operation["messages"]) == len(messages)
    for ref in operation["messages"]:
        assert resolve(doc, resolve(doc, ref["$ref"])["$ref"]) in messages
