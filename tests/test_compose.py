"""compose.yaml, read as Docker Compose reads it (anchors and merge keys resolved)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
    secstate = {name for name in found if name.startswith("secstate")}
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
