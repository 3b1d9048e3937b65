"""Settings: every `TASKMETER_*` variable, validated once at start.

Each setting here is documented in README.md's configuration table; `tests/test_docs.py`
fails when one is not.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "normalise_database_url"]


def normalise_database_url(url: str) -> str:
    """Turn the URL an operator writes into the SQLAlchemy URL with our chosen driver.

    `postgresql://…` and `postgres://…` use psycopg 3; `sqlite:///file.db` uses the
    standard library driver.
    """
    for prefix in ("postgresql://", "postgres://", "postgresql+psycopg2://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    if url.startswith("sqlite:") and not url.startswith("sqlite+"):
        return "sqlite+pysqlite:" + url[len("sqlite:") :]
    return url


class Settings(BaseSettings):
    """Service configuration from the environment (prefix `TASKMETER_`)."""

    model_config = SettingsConfigDict(env_prefix="TASKMETER_", extra="ignore")

    database_url: str = "sqlite:///taskmeter.db"
    read_database_url: str | None = None
    read_max_lag_s: float | None = Field(default=None, gt=0)
    jwt_secret: str | None = None
    jwt_public_key_file: Path | None = None
    jwks_file: Path | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_email_claim: str = "email"
    credit_usd: Decimal = Field(default=Decimal("10"), gt=0)
    neo_cost_rate: Decimal = Field(default=Decimal("0.1"), ge=0)
    prices_file: Path | None = None
    stream_timeout_s: int = Field(default=1800, gt=0)
    sweep_interval_s: int = Field(default=60, gt=0)
    max_inflight_writes: int = Field(default=16, gt=0)
    workers: int = Field(default=1, ge=1, le=64)
    migrate_on_start: bool = True
    sqlite_busy_timeout_ms: int = Field(default=30_000, ge=0)
    auth_failures_per_minute: int = Field(default=60, gt=0)
    auth_failures_per_key_per_minute: int = Field(default=10, gt=0)
    ingest_log: str | None = None
    ingest_log_stream: str = Field(default="TASKMETER_INGEST", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    ingest_log_replicas: int = Field(default=1, ge=1, le=5)
    projector: bool = True
    max_lag_s: float | None = Field(default=None, gt=0)
    auth_cache_s: int = Field(default=300, ge=0)
    require_credits: bool = True
    reservation_ttl_s: int = Field(default=3600, gt=0, le=7 * 86400)
    webhooks: bool = True
    webhook_timeout_s: float = Field(default=10.0, gt=0, le=300)
    webhook_max_attempts: int = Field(default=10, ge=1, le=100)
    webhook_backoff_base_s: float = Field(default=10.0, gt=0)
    webhook_backoff_max_s: float = Field(default=3600.0, gt=0)
    webhook_poll_s: float = Field(default=1.0, gt=0, le=60)
    credits_low_percent: int = Field(default=10, ge=0, le=99)
    credits_expiring_days: int = Field(default=7, ge=0, le=365)

    @field_validator("jwt_secret")
    @classmethod
    def _secret_long_enough(cls, value: str | None) -> str | None:
        # A short HS256 secret can be brute-forced offline from one captured token.
        if value is not None and len(value.encode()) < 32:
            raise ValueError("TASKMETER_JWT_SECRET must be at least 32 bytes")
        return value

    @model_validator(mode="after")
    def _key_files_exist(self) -> Settings:
        for name in ("jwt_public_key_file", "jwks_file"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"TASKMETER_{name.upper()} {path} is not a readable file")
        if self.prices_file is not None and not self.prices_file.is_file():
            raise ValueError(f"TASKMETER_PRICES_FILE {self.prices_file} is not a readable file")
        return self

    @field_validator("ingest_log")
    @classmethod
    def _nats_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("nats://", "tls://")):
            raise ValueError("TASKMETER_INGEST_LOG is a nats:// (or tls://) URL")
        return value or None

    # Field validators (not a model validator) so that the CLI's one-line error names the
    # setting. Refused rather than ignored: an operator who set it expects the primary relieved.
    @field_validator("read_database_url")
    @classmethod
    def _read_replica_on_postgresql(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return value
        if not normalise_database_url(info.data.get("database_url", "")).startswith("postgresql"):
            raise ValueError(
                "TASKMETER_READ_DATABASE_URL needs a PostgreSQL TASKMETER_DATABASE_URL: "
                "a SQLite store has no streaming replicas (unset it)"
            )
        if not normalise_database_url(value).startswith("postgresql"):
            raise ValueError(
                "TASKMETER_READ_DATABASE_URL must be a postgresql:// URL of a streaming "
                "replica of TASKMETER_DATABASE_URL"
            )
        return value

    @field_validator("read_max_lag_s")
    @classmethod
    def _max_lag_needs_replica(cls, value: float | None, info: ValidationInfo) -> float | None:
        if value is not None and info.data.get("read_database_url") is None:
            raise ValueError("TASKMETER_READ_MAX_LAG_S needs TASKMETER_READ_DATABASE_URL")
        return value

    @property
    def sqlalchemy_url(self) -> str:
        return normalise_database_url(self.database_url)

    @property
    def sqlalchemy_read_url(self) -> str | None:
        if self.read_database_url is None:
            return None
        return normalise_database_url(self.read_database_url)
