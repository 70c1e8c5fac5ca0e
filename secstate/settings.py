"""The one settings object, read from ``SECSTATE_*`` environment variables at start-up."""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from pydantic import Field, SecretStr, field_validator
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
