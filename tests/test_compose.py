"""compose.yaml, read as Docker Compose reads it (anchors and merge keys resolved), and
validated by Docker Compose itself (``docker-compose config``, offline)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

COMPOSE = Path(__file__).resolve().parent.parent / "compose.yaml"
# The services that seal or open secrets: commands run by an operator, and the demo.
SEALING = {"secstate-admin", "secstate-demo"}


def services() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return dict(loaded["services"])


def test_only_the_services_that_seal_secrets_are_given_the_application_keys() -> None:
    # given the services of compose.yaml
    found = services()
    secstate = set(runs_secstate(found))
    # when we look for the key ring in each one's environment
    with_keys = {name for name in secstate if "SECSTATE_KEYS" in found[name].get("environment", {})}
    # then only the sealing ones have it, and the follower is not one of them
    assert with_keys == SEALING
    assert "project run" in " ".join(found["secstate"]["command"])
    assert "SECSTATE_KEYS" not in found["secstate"]["environment"]


def test_every_secstate_service_talks_to_the_same_ledger_database() -> None:
    # given the secstate services
    found = {n: s for n, s in services().items() if n.startswith("secstate")}
    # then each is pointed at PostgreSQL (the demo in a schema of its own)
    urls = {name: s["environment"]["SECSTATE_DATABASE_URL"] for name, s in found.items()}
    assert all(url.startswith("postgresql://") for url in urls.values())
    assert urls["secstate"] == urls["secstate-admin"]
    assert urls["secstate-demo"].endswith("schema=demo")


def runs_secstate(found: dict[str, Any]) -> dict[str, list[str]]:
    """The services that run a secstate command, and that command's words."""
    commands: dict[str, list[str]] = {}
    for name, service in found.items():
        command = service.get("command") or []
        text = " ".join(command) if isinstance(command, list) else str(command)
        if "exec secstate " in text:
            commands[name] = shlex.split(text.split("exec secstate ", 1)[1])
        elif isinstance(command, list) and command[:1] == ["secstate"]:
            commands[name] = command[1:]
    return commands


def test_docker_compose_accepts_the_file() -> None:
    # given Docker Compose's own parser (offline; the Debian package docker-compose)
    binary = shutil.which("docker-compose")
    if binary is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("docker-compose is not installed; .ci/run installs it")
        pytest.skip("docker-compose is not installed (apt-get install docker-compose)")
    env = {**os.environ, "POSTGRES_PASSWORD": "x", "SECSTATE_KEYS": "k:x"}
    # when it reads compose.yaml
    done = subprocess.run(
        [binary, "-f", str(COMPOSE), "config", "--services"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    # then it accepts it, with every service we run
    assert done.returncode == 0, done.stderr
    assert set(done.stdout.split()) >= {
        "postgres",
        "kafka",
        "kafka-topics",
        "secstate",
        "secstate-relay",
        "secstate-replica",
        "secstate-reactions",
    }


def ctx_of(command: Any) -> Any:
    """A context of the command-line library typer is built on (it may bundle its own)."""
    return command.make_context("secstate", ["--help"], resilient_parsing=True)


def is_group(command: Any) -> bool:
    return hasattr(command, "commands") and hasattr(command, "get_command")


def test_every_service_runs_a_command_the_cli_has() -> None:
    from secstate.cli import app

    # given the secstate command of each service (and of each health check)
    found = services()
    commands = runs_secstate(found)
    for name, service in found.items():
        test = (service.get("healthcheck") or {}).get("test") or []
        if test[:2] == ["CMD", "secstate"]:
            commands[f"{name} (health check)"] = test[2:]
    assert len(commands) >= 8
    root = typer.main.get_command(app)
    for name, words in commands.items():
        # when the words are looked up and parsed as the command line would
        command: Any = root
        rest = list(words)
        while is_group(command) and rest and not rest[0].startswith("-"):
            found_command = command.get_command(ctx_of(command), rest[0])
            assert found_command is not None, f"{name}: no command {' '.join(words)!r}"
            command, rest = found_command, rest[1:]
        if rest == ["--help"]:
            continue
        # then each is a command (not a group) whose options and arguments parse
        assert not is_group(command), f"{name}: {words!r} names a group, not a command"
        try:
            command.make_context("secstate", rest)
        except Exception as e:  # the library's usage errors
            pytest.fail(f"{name}: {' '.join(words)!r} does not parse: {e}")


def test_the_kafka_services_get_the_brokers_and_no_keys() -> None:
    # given the services that talk to Kafka
    found = services()
    kafka_users = {
        name: words
        for name, words in runs_secstate(found).items()
        if words[:1] in (["relay"], ["consume"])
    }
    assert set(kafka_users) == {
        "kafka-topics",
        "secstate-relay",
        "secstate-replica",
        "secstate-reactions",
    }
    for name in kafka_users:
        environment = found[name]["environment"]
        # then each knows where the brokers are, and none holds the application keys
        assert environment["SECSTATE_KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
        assert "SECSTATE_KEYS" not in environment
        # and each waits for the broker to be healthy
        assert found[name]["depends_on"]["kafka"]["condition"] == "service_healthy"
    # and the consumers have a database of their own, not the ledger's schema
    for name in ("secstate-replica", "secstate-reactions"):
        url = found[name]["environment"]["SECSTATE_CONSUMER_DATABASE_URL"]
        assert url.endswith("schema=downstream")
