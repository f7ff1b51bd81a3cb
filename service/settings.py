"""Service settings from the environment (pydantic-settings). Every field works by default.

Environment variables: `NERFSERVE_<FIELD>` (e.g. `NERFSERVE_DATA_DIR`, `NERFSERVE_LEASE_TIMEOUT_S`), plus the
conventional `DATABASE_URL` and `REDIS_URL` without prefix. With neither of those set, the service runs on
SQLite in the data dir and a broker that needs no server (see cli.embedded).
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Annotated

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PLACEHOLDER_SECRETS = {"changeme", "change-me", "secret", "password", "xxx", "todo"}


class Settings(BaseSettings):
    """Flat service configuration. Sizes are bytes, times are seconds."""

    model_config = SettingsConfigDict(env_prefix="NERFSERVE_", extra="ignore")

    data_dir: Path = Path("data")
    database_url: str = Field("", validation_alias=AliasChoices("DATABASE_URL", "NERFSERVE_DATABASE_URL"))
    redis_url: str = Field("", validation_alias=AliasChoices("REDIS_URL", "NERFSERVE_REDIS_URL"))
    # Explicit Celery broker URL; default: REDIS_URL, else the filesystem transport under data_dir/broker.
    broker_url: str = ""
    # Prefix of every Redis key the broker uses: several deployments (or tests) can share one Redis.
    redis_key_prefix: str = ""

    # Limits (413 / 429 with a message).
    max_upload_bytes: int = 4 * 1024**3
    max_part_bytes: int = 64 * 1024**2
    max_images: int = 2000
    max_jobs_in_flight: int = 4
    max_render_poses: int = 64
    max_render_pixels: int = 4096 * 4096
    # Zip archives: checked at submission from the declared sizes; the ingest stage checks the bytes it writes.
    max_unpacked_bytes: int = 0  # what one zip may expand to; 0: 4 x max_upload_bytes
    max_zip_members: int = 10_000  # also at most 2 x max_images + 100
    max_zip_ratio: float = Field(200.0, ge=1.0)  # per member, expanded : compressed (members under 1 MiB exempt)

    # Workers, leases and the reconciler.
    lease_timeout_s: float = 60.0
    heartbeat_s: float = 3.0
    max_attempts: int = 3
    visibility_timeout_s: float = 7200.0
    reconcile_interval_s: float = 10.0
    requeue_grace_s: float = 30.0
    progress_interval_s: float = 1.0
    cancel_grace_s: float = 20.0
    upload_expiry_s: float = 24 * 3600.0  # a resumable upload not committed by then is dropped

    # Webhooks.
    webhook_secret: str = ""
    webhook_retries: int = 5
    webhook_backoff_s: float = 2.0
    webhook_timeout_s: float = 10.0
    # Webhook targets allowed although internal (loopback, private, link-local...): host names or CIDRs.
    # Env: comma-separated, e.g. NERFSERVE_WEBHOOK_ALLOW_HOSTS=hooks.internal,10.1.0.0/16
    webhook_allow_hosts: Annotated[list[str], NoDecode] = []

    cors_origins: list[str] = []
    # Public base URL of the API (for URLs in webhook payloads); empty: paths only.
    public_url: str = ""
    # "module:ATTRIBUTE" of the core.pipeline.Pipeline the workers run. Tests point it at a fake.
    pipeline: str = "core.stages:PIPELINE"
    # Training device for the workers ("auto" | "cpu" | "cuda").
    device: str = "auto"

    @field_validator("webhook_secret")
    @classmethod
    def _no_placeholder(cls, v: str) -> str:
        if v.strip().lower() in PLACEHOLDER_SECRETS:
            raise ValueError("NERFSERVE_WEBHOOK_SECRET is a placeholder; set a random value "
                             "(python -c 'import secrets; print(secrets.token_hex(32))') or leave it empty")
        return v

    @field_validator("webhook_allow_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, v: object) -> object:
        if isinstance(v, str):
            v = json.loads(v) if v.strip().startswith("[") else v.split(",")
        if isinstance(v, list | tuple):
            return [str(x).strip() for x in v if str(x).strip()]
        return v

    @cached_property
    def data_root(self) -> Path:
        return self.data_dir.expanduser().resolve()

    @property
    def zip_unpacked_cap(self) -> int:
        """What one uploaded zip may expand to (bytes)."""
        return self.max_unpacked_bytes or 4 * self.max_upload_bytes

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_root / 'nerfserve.db'}"

    @property
    def celery_broker_url(self) -> str:
        return self.broker_url or self.redis_url or "filesystem://"

    @property
    def broker_dir(self) -> Path:
        """Folder of the filesystem transport (embedded mode without Redis)."""
        return self.data_root / "broker"


def get_settings() -> Settings:
    return Settings()
