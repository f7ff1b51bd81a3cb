"""The public view of a job, the same for API answers and webhook payloads."""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel, Field

from service.models import Job


class JobError(BaseModel):
    code: str | None
    message: str | None


class JobOut(BaseModel):
    id: str
    state: str
    stage: str | None
    stage_progress: float = Field(description="0..1 within the current stage")
    progress: float = Field(description="0..100 overall")
    eta_s: float | None
    created_at: datetime
    updated_at: datetime
    options: dict
    metrics: dict
    error: JobError | None
    attempts: int
    input_files: int
    input_bytes: int
    urls: dict[str, str]



def iso(t: float | None) -> datetime:
    return datetime.fromtimestamp(t or 0.0, UTC)


def job_urls(base: str, job_id: str) -> dict[str, str]:
    j = f"{base}/v1/jobs/{job_id}"
    return {"self": j, "log": f"{j}/log", "cancel": f"{j}/cancel", "restart": f"{j}/restart",
            "artifacts": f"{j}/artifacts", "renders": f"{j}/renders"}


def job_out(job: Job, base: str = "") -> JobOut:
    """The public view of a job row (no lease internals)."""
    err = JobError(code=job.error_code, message=job.error_message) if job.error_code else None
    return JobOut(id=job.id, state=job.state, stage=job.stage, stage_progress=job.stage_progress or 0.0,
                  progress=round(job.progress or 0.0, 2), eta_s=job.eta_s, created_at=iso(job.created_at),
                  updated_at=iso(job.updated_at), options=job.options or {}, metrics=job.metrics or {},
                  error=err, attempts=job.attempts or 0, input_files=job.input_files or 0,
                  input_bytes=job.input_bytes or 0, urls=job_urls(base, job.id))
