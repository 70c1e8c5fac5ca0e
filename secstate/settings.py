"""The one settings object, read from ``SECSTATE_*`` environment variables at start-up."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs, unquote, urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from domain.errors import SecStateError


class SettingsError(SecStateError):
    """A setting is missing or does not fit what was asked of it."""


def default_home() -> Path:
    """Platform convention: $XDG_DATA_HOME/secstate, else ~/.local/share/secstate."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "secstate"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SECSTATE_", extra="ignore")

    home: Path = Field(
        default_factory=default_home,
        description="data directory for the embedded SQLite stores and key ring",
    )
    database_url: SecretStr | None = Field(
        default=None,
        description="postgresql://user:pass@host:port/db[?schema=NAME]; unset = embedded SQLite",
    )
    keys: SecretStr | None = Field(
        default=None,
        description="application keys as KEY_ID:BASE64[,KEY_ID:BASE64...]; unset = "
        "keyring.json in home (made by itself only for a SQLite store with no sealed value)",
    )
    active_key_id: str | None = Field(default=None, description="key id that seals new secrets")

    argon2_time_cost: int = Field(default=3, ge=1)
    argon2_memory_kib: int = Field(default=65536, ge=8)
    argon2_parallelism: int = Field(default=4, ge=1)

    api_key_prefix: str = "sst_"
    lockout_threshold: int = Field(default=5, ge=1)
    max_retries: int = Field(default=5, ge=1)
    bulk_batch_size: int = Field(default=5000, ge=1)
    dkim_rsa_bits: int = Field(default=2048, ge=1024)
    totp_issuer: str = "secstate"
    api_key_use_interval: int = Field(
        default=60,
        ge=0,
        le=86400,
        description="seconds between recorded uses of one API key from one place (0: every use)",
    )
    sqlite_lock_timeout: int = Field(default=10, ge=1)

    # --- Kafka: the relay publishes there, consumers read there --------------------------
    kafka_bootstrap_servers: str | None = Field(
        default=None, description="host:port[,host:port...] of the Kafka brokers; unset = no Kafka"
    )
    kafka_client_id: str = Field(default="secstate", pattern=r"^[A-Za-z0-9._-]{1,64}$")
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    events_topic: str = Field(
        default="secstate.security-events",
        pattern=r"^[A-Za-z0-9._-]{1,249}$",
        description="the topic every security event is published to",
    )
    events_topic_partitions: int = Field(default=6, ge=1, le=10000)
    events_topic_replication: int = Field(default=1, ge=1, le=16)
    events_source: str = Field(
        default="urn:secstate:ledger",
        pattern=r"^[\x21-\x7e]{1,200}$",
        description="the CloudEvents source (a URI-reference) of every published event",
    )
    relay_linger_ms: int = Field(default=5, ge=0, le=10_000)
    relay_batch_bytes: int = Field(default=256 * 1024, ge=1024, le=64 * 1024 * 1024)
    relay_delivery_timeout_ms: int = Field(default=30_000, ge=1_000, le=3_600_000)

    # --- consumers: downstream services that read the events topic -----------------------
    consumer_database_url: SecretStr | None = Field(
        default=None,
        description="postgresql://...[?schema=NAME] for the consumers' own databases "
        "(one schema each); unset = a SQLite file per consumer in home/consumers",
    )
    consumer_group_prefix: str = Field(
        default="secstate",
        pattern=r"^[A-Za-z0-9._-]{1,100}$",
        description="consumer group ids are PREFIX.NAME",
    )
    dead_letter_topic: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9._-]{1,249}$",
        description="where messages no handler can take go; unset = EVENTS_TOPIC.dlq",
    )
    consumer_max_attempts: int = Field(default=3, ge=1, le=100)
    consumer_session_timeout_ms: int = Field(default=45_000, ge=1_000, le=3_600_000)
    consumer_heartbeat_interval_ms: int = Field(default=3_000, ge=100, le=600_000)
    consumer_fetch_max_wait_ms: int = Field(default=500, ge=0, le=60_000)

    @field_validator("database_url")
    @classmethod
    def _postgres_only(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        url = urlsplit(value.get_secret_value())
        if url.scheme not in ("postgresql", "postgres"):
            raise ValueError(
                f"database_url must start with postgresql://, got {url.scheme[:20]}://"
            )
        try:
            url.port  # noqa: B018 - parsing it is the check
        except ValueError:
            raise ValueError("database_url has no valid port (a number from 1 to 65535)") from None
        schema = parse_qs(url.query).get("schema", [None])[0]
        if schema is not None and not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", schema):
            raise ValueError(
                f"database_url schema {schema[:70]!r} must match [a-z_][a-z0-9_]{{0,62}}"
            )
        return value

    @field_validator("consumer_database_url")
    @classmethod
    def _consumer_postgres_only(cls, value: SecretStr | None) -> SecretStr | None:
        return cls._postgres_only(value)

    @model_validator(mode="after")
    def _relay_timeouts(self) -> Settings:
        if self.relay_delivery_timeout_ms < self.relay_linger_ms + 1000:
            raise ValueError(
                "relay_delivery_timeout_ms must be at least relay_linger_ms + 1000 "
                "(a request needs time of its own after the linger)"
            )
        return self

    @model_validator(mode="after")
    def _consumer_heartbeat(self) -> Settings:
        if self.consumer_heartbeat_interval_ms * 3 > self.consumer_session_timeout_ms:
            raise ValueError(
                "consumer_heartbeat_interval_ms must be at most a third of "
                "consumer_session_timeout_ms (so a member is not evicted between heartbeats)"
            )
        return self

    @property
    def dead_letters(self) -> str:
        """The dead-letter topic's name."""
        return self.dead_letter_topic or f"{self.events_topic}.dlq"

    @field_validator("api_key_prefix")
    @classmethod
    def _key_prefix(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z][a-z0-9]{1,9}_", value):
            raise ValueError("api_key_prefix must be 2-10 lowercase letters or digits, then '_'")
        return value

    @field_validator("totp_issuer")
    @classmethod
    def _issuer(cls, value: str) -> str:
        if not 1 <= len(value) <= 64 or not re.fullmatch(r"[^\x00-\x1f\x7f:]+", value):
            raise ValueError("totp_issuer must be 1-64 printable characters, without ':'")
        return value

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _brokers(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        for server in value.split(","):
            host, sep, port = server.strip().rpartition(":")
            if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
                raise ValueError(
                    f"kafka_bootstrap_servers must be host:port[,host:port...]; "
                    f"{server.strip()[:80]!r} is not"
                )
        return value

    def kafka_servers(self) -> tuple[str, ...]:
        """The bootstrap servers; SettingsError if Kafka is not configured."""
        if self.kafka_bootstrap_servers is None:
            raise SettingsError(
                "no SECSTATE_KAFKA_BOOTSTRAP_SERVERS is set: say where the Kafka brokers are "
                "(host:port[,host:port...])"
            )
        return tuple(s.strip() for s in self.kafka_bootstrap_servers.split(","))

    @property
    def uses_postgres(self) -> bool:
        return self.database_url is not None

    def postgres_params(self) -> dict[str, str]:
        """The database URL split into eventsourcing's POSTGRES_* settings."""
        if self.database_url is None:
            raise SettingsError("no SECSTATE_DATABASE_URL is set: the store is embedded SQLite")
        url = urlsplit(self.database_url.get_secret_value())
        query = parse_qs(url.query)
        params = {
            "POSTGRES_DBNAME": unquote(url.path.lstrip("/")) or "postgres",
            "POSTGRES_HOST": url.hostname or "127.0.0.1",
            "POSTGRES_PORT": str(url.port or 5432),
            "POSTGRES_USER": unquote(url.username or "postgres"),
            "POSTGRES_PASSWORD": unquote(url.password or ""),
        }
        if "schema" in query:
            params["POSTGRES_SCHEMA"] = query["schema"][0]
        return params

    def describe_store(self) -> str:
        """Where events are kept, without any password."""
        if self.database_url is None:
            return f"sqlite:{self.home / 'ledger.sqlite3'}"
        p = self.postgres_params()
        schema = p.get("POSTGRES_SCHEMA", "public")
        return (
            f"postgresql://{p['POSTGRES_USER']}@{p['POSTGRES_HOST']}:{p['POSTGRES_PORT']}/"
            f"{p['POSTGRES_DBNAME']} (schema {schema})"
        )
