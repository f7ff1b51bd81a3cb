"""Prometheus text exposition: jobs by state, stage durations, queue depth (read at scrape time)."""

from __future__ import annotations

from api.services import Services
from service import crud
from service.models import JOB_STATES


def _line(name: str, labels: dict[str, str], value: float) -> str:
    lab = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return f"{name}{{{lab}}} {value:g}" if lab else f"{name} {value:g}"


def render_metrics(svc: Services) -> str:
    out: list[str] = []
    counts = crud.count_by_state(svc.db)
    out += ["# HELP nerfserve_jobs Jobs by state.", "# TYPE nerfserve_jobs gauge"]
    out += [_line("nerfserve_jobs", {"state": s}, counts.get(s, 0)) for s in JOB_STATES]
    out += ["# HELP nerfserve_stage_duration_seconds Time spent in each completed stage.",
            "# TYPE nerfserve_stage_duration_seconds summary"]
    for stage, (total, n) in sorted(crud.stage_duration_stats(svc.db).items()):
        out.append(_line("nerfserve_stage_duration_seconds_sum", {"stage": stage}, total))
        out.append(_line("nerfserve_stage_duration_seconds_count", {"stage": stage}, n))
    out += ["# HELP nerfserve_queue_depth Messages waiting in each queue.", "# TYPE nerfserve_queue_depth gauge"]
    try:
        depths = svc.broker.queue_depths()
    except Exception:
        depths = None
    out += ["# HELP nerfserve_broker_up 1 if the broker answered this scrape.", "# TYPE nerfserve_broker_up gauge",
            _line("nerfserve_broker_up", {}, 0 if depths is None else 1)]
    for q, n in (depths or {}).items():
        out.append(_line("nerfserve_queue_depth", {"queue": q}, n))
    return "\n".join(out) + "\n"
