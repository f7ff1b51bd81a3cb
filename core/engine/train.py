"""Training: the one entry point the CLI, the pipeline and the workers call (nerfstudio's "trainer" layer).

`train(capture, config, progress=..., should_stop=...) -> TrainedScene` builds the model `config.model`
asks for and runs core.engine.loop.optimise with that model's step:
- "nerf" / "reference": random rays from every training pixel (core.engine.data.RayBatchStream), MSE;
- "feature_field": random image patches through the neural renderer (core.engine.train_feature).
With `config.composition` the field is a foreground field in a box plus a contracted background field
(core.scene.composition), for either model; partway through, the foreground's support plane is cut off it,
so the background carries the ground, the table or the wall.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from core.engine.data import RayBatchStream
from core.engine.evaluation import composite, evaluate
from core.engine.loop import StepOutput, TrainingData, optimise, param_groups, prepare
from core.engine.train_feature import feature_optimizer, patch_training
from core.fields.compose import ComposedField
from core.functional.rays import rays_from_pixels
from core.models.build import build_model
from core.models.config import TrainConfig
from core.models.losses import foreground_sparsity, per_ray_mse
from core.models.radiance import RadianceModel
from core.progress import ProgressEvent, ProgressFn, StopFn, never_stop, no_progress
from core.scene.capture import Capture
from core.scene.composition import (
    default_foreground_box,
    find_support_plane,
    foreground_region_world,
    set_foreground_box,
)
from core.scene.feature import FeatureScene
from core.scene.trained import TrainedScene

PLANE_AT = 0.3                # with composition: fit the support plane after this fraction of the steps
PLANE_VIEWS = 6               # training views rendered to find it
CURVE_VIEWS = 2               # held-out views of each holdout-curve point (fewer if config.eval_views is)


def ray_training(model: RadianceModel, data: TrainingData, config: TrainConfig):
    """(stream, step_fn) for per-ray training: MSE against each pixel on a random background where the
    images have alpha (so empty space learns to be empty), white otherwise."""
    stream = RayBatchStream(data.store, config.batch_rays, data.device, seed=config.seed, mode=config.pixel_sampling)
    white = torch.ones(3, device=data.device)

    def step(batch) -> StepOutput:
        idx = batch.image_index
        rays = rays_from_pixels(data.c2w_field[idx], data.params[idx], batch.u, batch.v, idx)
        bg = torch.rand(len(rays), 3, device=data.device) if data.store.channels == 4 else white.expand(len(rays), 3)
        out = model(rays, bg, training=True)
        per_ray = per_ray_mse(out.features, composite(batch.colors, bg))
        if config.pixel_sampling == "selective":
            stream.update_errors(batch, per_ray.detach())
        mse = per_ray.mean()
        loss = mse + foreground_sparsity(out, config.foreground_sparsity_weight)
        return StepOutput(loss, mse.detach(), len(rays), out.n_samples)

    return stream, step


def train(capture: Capture, config: TrainConfig, progress: ProgressFn = no_progress,
          should_stop: StopFn = never_stop, checkpoint_dir: Path | None = None, resume: bool = True,
          evaluate_holdout: bool = True, curve_every: int = 0,
          foreground_box: tuple[np.ndarray, np.ndarray] | None = None, support_plane: bool = True) -> TrainedScene:
    """Train `config.model` on a posed capture; returns the scene (a FeatureScene for "feature_field").

    Resumes from the newest checkpoint in `checkpoint_dir` (when resume) and writes one every
    `config.checkpoint_every` steps. Raises core.errors.Cancelled when should_stop() turns True
    (checked between steps), after saving a checkpoint. With evaluate_holdout, the scene's metrics get the
    held-out PSNR/SSIM of up to `config.eval_views` views at `config.eval_max_side` (core.engine.evaluation.evaluate:
    psnr_holdout, ssim_holdout, holdout_views, holdout_size, ...), one progress event a view. With
    curve_every > 0, the held-out PSNR (on CURVE_VIEWS views, or eval_views if fewer, at eval_max_side) is
    measured every that many steps and stored as metrics["holdout_curve"] = [{step, seconds, psnr}], seconds
    of training excluding the evaluations.
    With config.composition: foreground_box is (min (3,), max (3,)) in the input frame (default: the
    region the cameras look at); support_plane cuts off the foreground the dominant plane in it that the
    cameras see from one side (ground, table top, wall).
    """
    data = prepare(capture, config)
    model = build_model(config, data.normalization.mode == "unbounded", len(data.train_indices), data.device)
    composed = isinstance(model.field, ComposedField)
    if composed:
        set_foreground_box(model.field, data.normalization, foreground_box or default_foreground_box(data.capture))
    config_run = TrainConfig.from_dict({**config.to_dict(), "backend": getattr(model.field, "backend", "torch")})
    feature = config.model == "feature_field"
    scene = (FeatureScene if feature else TrainedScene)(
        model=model, normalization=data.normalization, intrinsics=list(data.capture.intrinsics),
        c2w=data.capture.c2w, names=list(data.capture.names), frame=data.capture.frame,
        train_indices=data.train_indices, test_indices=data.test_indices, config=config_run, device=data.device)
    if feature:
        opt = feature_optimizer(model, config)
        stream, step, extra = patch_training(model, data, config)
    else:
        opt = torch.optim.Adam(param_groups(model, config), lr=config.lr, betas=(0.9, 0.99))
        (stream, step), extra = ray_training(model, data, config), {}

    curve: list[dict] = []
    plane_step = int(PLANE_AT * config.steps) if composed and support_plane else -1

    def between_steps(done: int, seconds: float) -> None:
        if done == plane_step:
            progress(ProgressEvent("training", done / config.steps, "finding the support plane"))
            views = data.train_indices[::max(1, len(data.train_indices) // PLANE_VIEWS)]
            plane = find_support_plane(scene, views)
            if plane is not None:
                model.field.set_region(model.field.box_min, model.field.box_max, plane.tolist())
        if curve_every and data.test_indices and (done % curve_every == 0 or done == config.steps):
            views = min(config.eval_views or CURVE_VIEWS, CURVE_VIEWS)
            p = evaluate(scene, data.capture, data.test_indices, views, config.eval_max_side)["psnr_holdout"]
            curve.append({"step": done, "seconds": round(seconds, 3), "psnr": round(p, 3)})

    stats = optimise(model, opt, stream, step, config, data.device, progress, should_stop, checkpoint_dir, resume,
                     between_steps)
    scene.metrics = {"steps": config.steps, **stats, "backend": config_run.backend, "device": str(data.device),
                     "scene_mode": data.normalization.mode, "model": config.model, **extra}
    if curve:
        scene.metrics["holdout_curve"] = curve
    if composed:
        scene.metrics["foreground_region"] = foreground_region_world(model.field, data.normalization)
    if evaluate_holdout and data.test_indices:
        scene.metrics.update(evaluate(scene, data.capture, data.test_indices, config.eval_views,
                                      config.eval_max_side, progress))
    return scene
