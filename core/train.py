"""Training: optimiser, schedule, checkpoints, progress and held-out evaluation (the "trainer" layer).

`train(capture, config, progress=..., should_stop=...) -> TrainedScene` is the one entry point the
CLI and the workers call.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from core.atomic import atomic_write
from core.cameras import stack_params
from core.capture import Capture, compute_normalization, half_fov
from core.config import TrainConfig
from core.data import PixelStore, RayBatchStream
from core.errors import Cancelled, UserInputError
from core.metrics import psnr, ssim
from core.model import RadianceModel, build_model
from core.progress import ProgressEvent, ProgressFn, StopFn, never_stop, no_progress
from core.rays import rays_from_pixels
from core.scene import TrainedScene, resolve_device

CKPT_PREFIX = "ckpt_"


def _param_groups(model: RadianceModel, cfg: TrainConfig) -> list[dict]:
    grid = [p for n, p in model.named_parameters() if "encoding" in n]
    rest = [p for n, p in model.named_parameters() if "encoding" not in n]
    # Hash tables: Adam eps 1e-15 and no weight decay (Instant-NGP); MLPs: small weight decay.
    return [{"params": grid, "eps": 1e-15, "weight_decay": 0.0},
            {"params": rest, "eps": 1e-15, "weight_decay": cfg.weight_decay}]


def _scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig):
    if cfg.lr_schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=200, min_lr=cfg.lr * 1e-3)
    if cfg.lr_schedule != "exp":
        raise ValueError(f"unknown lr_schedule {cfg.lr_schedule!r}: use exp or plateau")
    gamma = cfg.lr_final_factor ** (1.0 / max(cfg.steps, 1))
    return torch.optim.lr_scheduler.ExponentialLR(opt, gamma)


def latest_checkpoint(checkpoint_dir: Path | None) -> Path | None:
    if checkpoint_dir is None or not Path(checkpoint_dir).is_dir():
        return None
    ckpts = sorted(Path(checkpoint_dir).glob(f"{CKPT_PREFIX}*.pt"))
    return ckpts[-1] if ckpts else None


def _save_checkpoint(checkpoint_dir: Path, step: int, model, opt, sched, stream, scaler, keep: int) -> Path:
    state = {"step": step, "model": model.state_dict(), "optimizer": opt.state_dict(),
             "scheduler": sched.state_dict(), "stream": stream.state_dict(),
             "scaler": scaler.state_dict() if scaler is not None else None,
             "rng_cpu": torch.get_rng_state(),
             "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
    path = atomic_write(Path(checkpoint_dir) / f"{CKPT_PREFIX}{step:08d}.pt", lambda p: torch.save(state, p))
    for old in sorted(Path(checkpoint_dir).glob(f"{CKPT_PREFIX}*.pt"))[:-keep]:
        old.unlink(missing_ok=True)
    return path


def _composite(colors: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """colors (B, 3|4) in [0,1] -> (B, 3) RGB over the background (B, 3) where there is alpha."""
    if colors.shape[1] == 4:
        a = colors[:, 3:4]
        return colors[:, :3] * a + background * (1 - a)
    return colors[:, :3]


def composite_image(img: np.ndarray, background=(1.0, 1.0, 1.0)) -> np.ndarray:
    """(H, W, 3|4) uint8 -> (H, W, 3) float32 in [0,1], alpha composited over the background."""
    x = img.astype(np.float32) / 255.0
    if x.shape[2] == 4:
        return x[..., :3] * x[..., 3:] + np.asarray(background, np.float32) * (1 - x[..., 3:])
    return x


def evaluate(scene: TrainedScene, capture: Capture, indices: list[int], max_views: int = 0) -> dict:
    """Held-out PSNR/SSIM of `indices`, rendered on white and compared with the images on white."""
    if max_views:
        indices = indices[:max_views]
    ps, ss = [], []
    for i in indices:
        out = scene.render(capture.c2w[i], capture.intrinsics[i], chunk=scene.config.eval_chunk)
        gt = composite_image(capture.images[i])
        ps.append(psnr(out.rgb, gt))
        ss.append(ssim(out.rgb, gt))
    if not ps:
        return {}
    return {"psnr_holdout": float(np.mean(ps)), "ssim_holdout": float(np.mean(ss)),
            "psnr_per_view": [float(p) for p in ps], "holdout_views": len(ps)}


def train(capture: Capture, config: TrainConfig, progress: ProgressFn = no_progress,
          should_stop: StopFn = never_stop, checkpoint_dir: Path | None = None, resume: bool = True,
          evaluate_holdout: bool = True, curve_every: int = 0) -> TrainedScene:
    """Train a radiance field on a posed capture.

    Resumes from the newest checkpoint in `checkpoint_dir` (when resume) and writes one every
    `config.checkpoint_every` steps. Raises core.errors.Cancelled when should_stop() turns True
    (checked between steps), after saving a checkpoint. With curve_every > 0, the held-out PSNR
    (on up to `config.eval_max_views` views, or 2) is measured every that many steps and stored as
    metrics["holdout_curve"] = [{step, seconds, psnr}], seconds of training excluding the evaluations.
    """
    if len(capture) < 2:
        raise UserInputError("too_few_images", f"training needs at least 2 posed images, got {len(capture)}.",
                             "Upload more overlapping photos of the subject.")
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    if config.max_side:
        capture = capture.resized(max_side=config.max_side)
    norm = compute_normalization(capture.c2w, config.scene_mode, fov_half=half_fov(capture.intrinsics))
    train_idx, test_idx = capture.holdout_split(config.holdout_every)
    train_cap = capture.subset(train_idx)
    model = build_model(config, norm.mode == "unbounded", len(train_idx), device)
    config_run = TrainConfig.from_dict({**config.to_dict(), "backend": getattr(model.field, "backend", "torch")})
    c2w_field = torch.from_numpy(norm.c2w_to_field(train_cap.c2w)).float().to(device)
    params = stack_params(train_cap.intrinsics).to(device)
    opt = torch.optim.Adam(_param_groups(model, config), lr=config.lr, betas=(0.9, 0.99))
    sched = _scheduler(opt, config)
    amp = device.type == "cuda" and config.mixed_precision
    scaler = torch.amp.GradScaler("cuda") if amp else None
    store = PixelStore.from_capture(train_cap, device=device)
    stream = RayBatchStream(store, config.batch_rays, device, seed=config.seed, mode=config.pixel_sampling)
    start = 0
    ckpt = latest_checkpoint(checkpoint_dir) if resume else None
    if ckpt is not None:
        state = torch.load(ckpt, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        stream.load_state_dict(state["stream"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng_cpu"])
        if state.get("rng_cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        start = int(state["step"])
    scene = TrainedScene(model=model, normalization=norm, intrinsics=list(capture.intrinsics), c2w=capture.c2w,
                         names=list(capture.names), frame=capture.frame, train_indices=train_idx,
                         test_indices=test_idx, config=config_run, device=device)
    curve: list[dict] = []
    white = torch.ones(3, device=device)
    t0, last_report, rays_done, samples_done = time.time(), 0.0, 0, 0
    loss_value = psnr_value = float("nan")
    try:
        for step in range(start, config.steps):
            if should_stop():
                if checkpoint_dir is not None:
                    _save_checkpoint(checkpoint_dir, step, model, opt, sched, stream, scaler,
                                     config.keep_checkpoints)
                raise Cancelled(f"training stopped at step {step}")
            model.train()
            model.update_grid(step)
            batch = next(stream)
            rays = rays_from_pixels(c2w_field[batch.image_index], params[batch.image_index], batch.u, batch.v,
                                    batch.image_index)
            # Random backgrounds where images have alpha, so empty space learns to be empty.
            bg = torch.rand(len(rays), 3, device=device) if store.channels == 4 else white.expand(len(rays), 3)
            target = _composite(batch.colors, bg)
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                out = model(rays, bg, training=True)
            per_ray = ((out.features.float() - target) ** 2).mean(-1)
            loss = per_ray.mean()
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()
            loss_value = float(loss.detach())
            if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                sched.step(loss_value)
            else:
                sched.step()
            if config.pixel_sampling == "selective":
                stream.update_errors(batch, per_ray.detach())
            rays_done += len(rays)
            samples_done += out.n_samples
            psnr_value = -10 * math.log10(max(loss_value, 1e-10))
            done = step + 1
            if checkpoint_dir is not None and (done % config.checkpoint_every == 0 or done == config.steps):
                _save_checkpoint(checkpoint_dir, done, model, opt, sched, stream, scaler, config.keep_checkpoints)
            if curve_every and test_idx and (done % curve_every == 0 or done == config.steps):
                t_eval = time.time()
                p = evaluate(scene, capture, test_idx, config.eval_max_views or 2)["psnr_holdout"]
                curve.append({"step": done, "seconds": round(t_eval - t0, 3), "psnr": round(p, 3)})
                t0 += time.time() - t_eval          # evaluation time is not training time
            now = time.time()
            if now - last_report >= 1.0 or done == config.steps:
                last_report = now
                elapsed = max(now - t0, 1e-9)
                rate = (done - start) / elapsed
                progress(ProgressEvent("training", done / config.steps, f"step {done}/{config.steps}", {
                    "step": done, "total_steps": config.steps, "loss": loss_value, "psnr": psnr_value,
                    "rays_per_s": rays_done / elapsed, "samples_per_s": samples_done / elapsed,
                    "eta_s": (config.steps - done) / max(rate, 1e-9)}))
    finally:
        stream.close()
    train_seconds = time.time() - t0
    scene.metrics = {"steps": config.steps, "resumed_from": start, "train_seconds": train_seconds,
                     "rays_per_s": rays_done / max(train_seconds, 1e-9),
                     "samples_per_s": samples_done / max(train_seconds, 1e-9), "final_train_loss": loss_value,
                     "final_train_psnr": psnr_value, "backend": config_run.backend, "device": str(device),
                     "scene_mode": norm.mode, "model": config.model}
    if curve:
        scene.metrics["holdout_curve"] = curve
    if evaluate_holdout and test_idx:
        progress(ProgressEvent("training", 1.0, "evaluating held-out views"))
        scene.metrics.update(evaluate(scene, capture, test_idx, config.eval_max_views))
    return scene
