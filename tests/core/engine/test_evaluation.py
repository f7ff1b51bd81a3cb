"""The held-out evaluation (core.engine.evaluation.evaluate): bounded views and size, ground truth resized to match,
per-view progress; and the options that set it (TrainConfig, the CLI, the API)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from core.engine.evaluation import eval_size, evaluate, pick_views
from core.functional.cameras import Intrinsics
from core.models.config import TrainConfig
from core.scene.capture import Capture
from core.scene.trained import RenderResult


def _pattern(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A smooth colour image of normalised image coordinates x, y in [0, 1] (pixel centres) -> (..., 3)."""
    return np.stack([x, y, 0.5 + 0.4 * np.sin(2 * np.pi * 3 * x) * np.cos(2 * np.pi * 2 * y)], -1)


def _grid(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    return np.meshgrid((np.arange(width) + 0.5) / width, (np.arange(height) + 0.5) / height)


class _AnalyticScene(SimpleNamespace):
    """Renders `_pattern` at each pixel centre of the intrinsics it is given: the exact scene of its capture."""

    def __init__(self) -> None:
        super().__init__(config=TrainConfig(), calls=[])

    def render(self, c2w: np.ndarray, intrinsics: Intrinsics, chunk: int = 65536) -> RenderResult:
        self.calls.append((intrinsics.width, intrinsics.height, intrinsics.fx, intrinsics.cx))
        rgb = _pattern(*_grid(intrinsics.width, intrinsics.height)).astype(np.float32)
        zeros = np.zeros(rgb.shape[:2], np.float32)
        return RenderResult(rgb, zeros, zeros, zeros + 1)


def _capture(views: int = 5, width: int = 120, height: int = 90) -> Capture:
    img = np.round(_pattern(*_grid(width, height)) * 255).astype(np.uint8)
    intr = Intrinsics(100.0, 100.0, width / 2, height / 2, width, height)
    return Capture([img] * views, [intr] * views, np.stack([np.eye(4)] * views), [f"{i}.png" for i in range(views)])


def test_eval_size_and_view_choice():
    assert eval_size(1920, 1080, 400) == (400, 225)
    assert eval_size(1080, 1920, 400) == (225, 400)
    assert eval_size(1920, 1080, 0) == (1920, 1080)
    assert eval_size(64, 48, 400) == (64, 48)                          # never upscaled
    assert eval_size(1000, 100, 32) == (160, 16)                       # SSIM's window still fits
    assert pick_views([0, 8, 16, 24, 32, 40, 48], 4) == [0, 8, 24, 40]
    assert pick_views([0, 8, 16], 4) == [0, 8, 16] == pick_views([0, 8, 16], 0)
    assert pick_views([], 4) == []


def test_evaluate_renders_at_max_side_on_at_most_eval_views_and_reports_each():
    capture, scene, events = _capture(), _AnalyticScene(), []
    held_out = [0, 1, 2, 3, 4]
    m = evaluate(scene, capture, held_out, max_views=3, max_side=40, progress=events.append)
    assert [c[:2] for c in scene.calls] == [(40, 30)] * 3
    assert scene.calls[0][2:] == pytest.approx((100 / 3, 20.0))        # intrinsics scaled by 40 / 120
    assert (m["holdout_views"], m["holdout_views_total"], m["holdout_size"]) == (3, 5, "40x30")
    # The ground truth, area-averaged to 40x30, matches a render of the exact scene there: sizes and pixel
    # centres agree (55 dB; a third of a pixel off costs over 20 dB).
    assert min(m["psnr_per_view"]) > 45 and m["ssim_holdout"] > 0.98
    assert [e.metrics["eval_view"] for e in events] == [1, 2, 3]
    assert all(e.stage == "training" and e.fraction == 1.0 and e.metrics["eval_views"] == 3 for e in events)
    assert all((e.metrics["eval_width"], e.metrics["eval_height"]) == (40, 30) for e in events)
    assert "eta_s" not in events[0].metrics and all(e.metrics["eta_s"] >= 0 for e in events[1:])
    assert "1/3" in events[0].message and "40x30" in events[0].message


def test_evaluate_at_full_size_and_without_views():
    scene = _AnalyticScene()
    m = evaluate(scene, _capture(views=2), [0, 1], max_views=0, max_side=0)
    assert [c[:2] for c in scene.calls] == [(120, 90)] * 2 and m["holdout_size"] == "120x90"
    assert m["psnr_holdout"] > 45                                       # uint8 rounding only
    assert evaluate(scene, _capture(views=2), [], max_views=4, max_side=40) == {}


def test_eval_options_are_validated_and_old_configs_load():
    assert (TrainConfig().eval_views, TrainConfig().eval_max_side) == (4, 400)
    for bad in ({"eval_views": -1}, {"eval_views": 51}, {"eval_max_side": 31}, {"eval_max_side": 8193}):
        with pytest.raises(ValueError, match="eval_"):
            TrainConfig(**bad)
    assert TrainConfig(eval_views=0, eval_max_side=0).eval_max_side == 0
    old = {k: v for k, v in TrainConfig().to_dict().items() if k not in ("eval_views", "eval_max_side")}
    loaded = TrainConfig.from_dict({**old, "eval_max_views": 2})        # a scene saved before the rename
    assert (loaded.eval_views, loaded.eval_max_side) == (2, 400)
    with pytest.raises(ValueError, match="unknown"):
        TrainConfig.from_dict({**old, "eval_views_max": 2})


def test_eval_options_reach_the_train_config_from_the_cli_and_the_api():
    from pydantic import ValidationError

    from cli import build_parser
    from cli.engine import train_config_from_args
    from core.errors import UserInputError
    from core.jobspec import STAGE_OF_OPTION, JobSpec, train_config
    from core.pipeline import first_stage_for_changes

    parser = build_parser()
    cli = train_config_from_args(parser.parse_args(["train", "d", "--out", "o", "--eval-views", "2",
                                                    "--eval-max-side", "0"]))
    api = train_config(JobSpec.from_store(JobSpec(eval_views=2, eval_max_side=0).to_store(), device="cpu"))
    for cfg in (cli, api):
        assert (cfg.eval_views, cfg.eval_max_side) == (2, 0)
    defaults = train_config(JobSpec())
    assert (defaults.eval_views, defaults.eval_max_side) == (4, 400)
    for bad in ({"eval_views": 51}, {"eval_max_side": 16}, {"eval_max_side": 9000}):
        with pytest.raises(ValidationError):
            JobSpec(**bad)
    for arg in (["--eval-views", "51"], ["--eval-max-side", "31"]):
        with pytest.raises(UserInputError):
            train_config_from_args(parser.parse_args(["train", "d", "--out", "o", *arg]))
    assert STAGE_OF_OPTION["eval_views"] == STAGE_OF_OPTION["eval_max_side"] == "train"
    stored = JobSpec().to_store()
    assert first_stage_for_changes(stored, {**stored, "eval_max_side": 800}) == "train"
    # A job stored before the options existed keeps its training when only an export option changes.
    before = {k: v for k, v in stored.items() if not k.startswith("eval_")}
    assert first_stage_for_changes(before, {**stored, "mesh_resolution": 512}) == "export"
