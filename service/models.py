"""Tables: api_keys, jobs (the single source of truth for every job), uploads, renders.

Times are UNIX seconds (float, UTC) so lease arithmetic is the same on SQLite and PostgreSQL.
"""

from __future__ import annotations

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from service.db import Base

JOB_STATES = ("uploading", "queued", "estimating_poses", "training", "exporting", "succeeded", "failed",
              "cancelled")
TERMINAL_STATES = ("succeeded", "failed", "cancelled")
ACTIVE_STATES = ("queued", "estimating_poses", "training", "exporting")


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)  # sha256 hex of the token
    prefix: Mapped[str] = mapped_column(String(16))  # first characters, to recognise a key in listings
    created_at: Mapped[float] = mapped_column(Float)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)  # uuid4: unguessable
    owner: Mapped[str] = mapped_column(ForeignKey("api_keys.id"), index=True)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    state: Mapped[str] = mapped_column(String(32), index=True)
    stage: Mapped[str | None] = mapped_column(String(32), nullable=True)  # the stage running or next to run
    stage_progress: Mapped[float] = mapped_column(Float, default=0.0)  # 0..1
    progress: Mapped[float] = mapped_column(Float, default=0.0)  # 0..100, never decreases within a run
    eta_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    options: Mapped[dict] = mapped_column(JSON, default=dict)
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # attempts at the current stage
    done_stages: Mapped[list] = mapped_column(JSON, default=list)
    stage_started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    stage_durations: Mapped[dict] = mapped_column(JSON, default=dict)  # stage -> seconds
    # Lease: the worker holding the job, and when it last said so.
    lease_owner: Mapped[str | None] = mapped_column(String(200), nullable=True)
    heartbeat_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    enqueued_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    input_bytes: Mapped[int] = mapped_column(Integer, default=0)
    input_files: Mapped[int] = mapped_column(Integer, default=0)
    webhook_status: Mapped[str | None] = mapped_column(String(200), nullable=True)


class Upload(Base):
    __tablename__ = "uploads"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner: Mapped[str] = mapped_column(ForeignKey("api_keys.id"), index=True)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    filename: Mapped[str] = mapped_column(String(255))
    size: Mapped[int | None] = mapped_column(Integer, nullable=True)  # declared total, if given
    # The parts themselves are files uploads/<id>/part-NNNNNN.<sha256>: the folder is their record.
    state: Mapped[str] = mapped_column(String(16), default="open")  # open | committed
    job_id: Mapped[str | None] = mapped_column(String(36), nullable=True)


class Render(Base):
    __tablename__ = "renders"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    owner: Mapped[str] = mapped_column(ForeignKey("api_keys.id"))
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    state: Mapped[str] = mapped_column(String(16), default="queued")  # queued | running | succeeded | failed
    request: Mapped[dict] = mapped_column(JSON, default=dict)
    files: Mapped[list] = mapped_column(JSON, default=list)  # [{"path", "kind", "bytes", "sha256"}]
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
