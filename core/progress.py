"""Progress reporting shared by every stage (ingest, poses, training, export)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class ProgressEvent:
    """stage: "ingest" | "poses" | "training" | "exporting" | ...; fraction: 0..1 within the stage.

    metrics: stage figures, e.g. for training {step, total_steps, loss, psnr, rays_per_s,
    samples_per_s, eta_s}; for poses {step: "features", done: i, total: N} or {registered: k}.
    """

    stage: str
    fraction: float
    message: str = ""
    metrics: dict = field(default_factory=dict)


ProgressFn = Callable[[ProgressEvent], None]
StopFn = Callable[[], bool]


def no_progress(_: ProgressEvent) -> None:
    return None


def never_stop() -> bool:
    return False
