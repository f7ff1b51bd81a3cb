"""The optimisation loop every model trains with (core.engine.train picks the model and its step function).

`prepare` turns a posed capture into training data on the device; `optimise` runs the steps: Adam
(eps 1e-15, hash tables without weight decay), an exponential or plateau schedule, AMP on CUDA,
atomic checkpoints (model, optimiser, schedule, stream position, RNG) every `checkpoint_every` steps,
resume from the newest one, cancellation between steps (a checkpoint is written first), and throttled
progress events with PSNR, rays/s, samples/s and ETA.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core.atomic import atomic_write
from core.engine.data import PixelStore
from core.errors import Cancelled, UserInputError
from core.functional.cameras import stack_params
from core.models.config import TrainConfig
from core.progress import ProgressEvent, ProgressFn, StopFn
from core.scene.capture import Capture, SceneNormalization, compute_normalization, half_fov
from core.scene.trained import resolve_device

CKPT_PREFIX = "ckpt_"
REPORT_EVERY_S = 1.0


@dataclass
class TrainingData:
    """A capture made ready for training.

    capture: every image, resized to config.max_side (held-out views included, for evaluation).
    normalization: input frame -> field frame. train_indices / test_indices: into `capture`.
    c2w_field: (T, 4, 4) float32 field frame, training views, on `device`. params: (T, 8) float32 intrinsics.
    store: the training images' pixels in host RAM (uint8).
    """

    capture: Capture
    normalization: SceneNormalization
    train_indices: list[int]
    test_indices: list[int]
    c2w_field: torch.Tensor
    params: torch.Tensor
    store: PixelStore
    device: torch.device


def prepare(capture: Capture, config: TrainConfig) -> TrainingData:
    """Seed the RNGs, resize, normalise (unbounded whenever config.composition: the background field is
    contracted) and split every `config.holdout_every`-th view off for evaluation."""
    if len(capture) < 2:
        raise UserInputError("too_few_images", f"training needs at least 2 posed images, got {len(capture)}.",
                             "Upload more overlapping photos of the subject.")
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    if config.max_side:
        capture = capture.resized(max_side=config.max_side)
    mode = "unbounded" if config.composition else config.scene_mode
    norm = compute_normalization(capture.c2w, mode, fov_half=half_fov(capture.intrinsics))
    train_idx, test_idx = capture.holdout_split(config.holdout_every)
    train_cap = capture.subset(train_idx)
    return TrainingData(capture=capture, normalization=norm, train_indices=train_idx, test_indices=test_idx,
                        c2w_field=torch.from_numpy(norm.c2w_to_field(train_cap.c2w)).float().to(device),
                        params=stack_params(train_cap.intrinsics).to(device),
                        store=PixelStore.from_capture(train_cap, device=device), device=device)


# ---- optimiser ------------------------------------------------------------------------------------

def param_groups(model: torch.nn.Module, cfg: TrainConfig, exclude: set[int] = frozenset()) -> list[dict]:
    """Adam groups: hash tables (eps 1e-15, no weight decay, as Instant-NGP) and the rest (small weight
    decay). Parameters whose id is in `exclude` are left out (a caller gives them their own group)."""
    named = [(n, p) for n, p in model.named_parameters() if id(p) not in exclude]
    return [{"params": [p for n, p in named if "encoding" in n], "eps": 1e-15, "weight_decay": 0.0},
            {"params": [p for n, p in named if "encoding" not in n], "eps": 1e-15, "weight_decay": cfg.weight_decay}]


def make_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig):
    if cfg.lr_schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=200, min_lr=cfg.lr * 1e-3)
    if cfg.lr_schedule != "exp":
        raise ValueError(f"unknown lr_schedule {cfg.lr_schedule!r}: use exp or plateau")
    gamma = cfg.lr_final_factor ** (1.0 / max(cfg.steps, 1))
    return torch.optim.lr_scheduler.ExponentialLR(opt, gamma)


# ---- checkpoints ----------------------------------------------------------------------------------

def latest_checkpoint(checkpoint_dir: Path | None) -> Path | None:
    if checkpoint_dir is None or not Path(checkpoint_dir).is_dir():
        return None
    ckpts = sorted(Path(checkpoint_dir).glob(f"{CKPT_PREFIX}*.pt"))
    return ckpts[-1] if ckpts else None


def checkpoint_step(path: Path) -> int:
    """The step a checkpoint file was written at (from its name)."""
    return int(Path(path).stem.removeprefix(CKPT_PREFIX))


def host_bytes(state: torch.Tensor) -> torch.Tensor:
    """An RNG state as the CPU ByteTensor the generators' set_state insists on.

    state: (S,) uint8 on any device (a checkpoint loaded with a CUDA map_location puts it there).
    Returns (S,) uint8, CPU, contiguous.
    """
    return state.detach().to("cpu", torch.uint8).contiguous()


def rng_states(device: torch.device) -> dict:
    """The RNG states a checkpoint keeps: {"rng_cpu": (S,) uint8 CPU, "rng_cuda": (S',) uint8 CPU or None
    (the CUDA generator of `device` when it is a CUDA device), "rng_device": str(device)}."""
    cuda = device.type == "cuda"
    return {"rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state(device) if cuda else None, "rng_device": str(device)}


def restore_rng(state: dict, device: torch.device) -> None:
    """Set the RNGs from `rng_states` output (any device: each state is copied to a CPU ByteTensor first).

    The CUDA generator of `device` gets the saved CUDA state when training runs on CUDA and one was
    saved; it is left alone otherwise (a checkpoint from a CPU run, or training now on the CPU).
    Checkpoints from before "rng_device" hold torch.cuda.get_rng_state_all() (a list, one per GPU): the
    entry of device's index is used when there is one.
    """
    torch.set_rng_state(host_bytes(state["rng_cpu"]))
    saved = state.get("rng_cuda")
    if device.type != "cuda" or saved is None:
        return
    if isinstance(saved, list | tuple):
        index = device.index if device.index is not None else torch.cuda.current_device()
        saved = saved[index] if index < len(saved) else None
    if saved is not None:
        torch.cuda.set_rng_state(host_bytes(saved), device)


@dataclass
class _State:
    """Everything a checkpoint holds, and the training device (whose RNGs it saves and restores)."""

    model: torch.nn.Module
    opt: torch.optim.Optimizer
    sched: object
    stream: object
    scaler: torch.amp.GradScaler | None
    device: torch.device

    def save(self, checkpoint_dir: Path, step: int, keep: int) -> Path:
        state = {"step": step, "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                 "scheduler": self.sched.state_dict(), "stream": self.stream.state_dict(),
                 "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                 **rng_states(self.device)}
        path = atomic_write(Path(checkpoint_dir) / f"{CKPT_PREFIX}{step:08d}.pt", lambda p: torch.save(state, p))
        for old in sorted(Path(checkpoint_dir).glob(f"{CKPT_PREFIX}*.pt"))[:-keep]:
            old.unlink(missing_ok=True)
        return path

    def restore(self, path: Path) -> int:
        """Load a checkpoint; returns its step.

        It is read onto the host: the model and the optimiser copy their tensors to their parameters'
        device, the stream's state (tile losses, planned batches) lives on the host, and the RNG states
        must be CPU ByteTensors. (Read onto a CUDA device, torch.set_rng_state refused the CPU state and
        the selective sampler got CUDA tile losses.)
        """
        state = torch.load(path, map_location="cpu", weights_only=False)
        for obj, key in ((self.model, "model"), (self.opt, "optimizer"), (self.sched, "scheduler"),
                         (self.stream, "stream")):
            obj.load_state_dict(state[key])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        restore_rng(state, self.device)
        return int(state["step"])


# ---- the loop -------------------------------------------------------------------------------------

@dataclass
class StepOutput:
    """What one training step computed: the scalar `loss` to minimise, the image `mse` behind the
    reported PSNR (a detached 0-dim tensor: read on the host only when progress is reported, so a step
    does not wait for the device), and how many rays and samples it rendered."""

    loss: torch.Tensor
    mse: torch.Tensor
    rays: int
    samples: int


StepFn = Callable[[object], StepOutput]          # (the stream's next batch) -> StepOutput


def _host_values(loss: torch.Tensor, mse: torch.Tensor) -> tuple[float, float]:
    """(loss, PSNR in dB) of a step on the host (one device sync)."""
    return float(loss), -10 * math.log10(max(float(mse), 1e-10))


def optimise(model, opt: torch.optim.Optimizer, stream, step_fn: StepFn, config: TrainConfig, device: torch.device,
             progress: ProgressFn, should_stop: StopFn, checkpoint_dir: Path | None = None, resume: bool = True,
             between_steps: Callable[[int, float], None] | None = None) -> dict:
    """Run steps up to config.steps (from the newest checkpoint in `checkpoint_dir` when `resume`).

    Each step: should_stop() (True: checkpoint, then raise core.errors.Cancelled), model.train(), the
    occupancy grid update, step_fn(next(stream)) under autocast (CUDA with config.mixed_precision), then
    backward, optimiser and schedule. between_steps(done, seconds) runs after step `done` (seconds: the
    training time so far); its own time is not counted as training time. The stream is closed at the end.

    Returns {"resumed_from", "train_seconds", "rays_per_s", "samples_per_s", "final_train_loss",
    "final_train_psnr"}.
    """
    amp = device.type == "cuda" and config.mixed_precision
    state = _State(model, opt, make_scheduler(opt, config), stream, torch.amp.GradScaler("cuda") if amp else None,
                   device)
    ckpt = latest_checkpoint(checkpoint_dir) if resume else None
    start = state.restore(ckpt) if ckpt is not None else 0
    plateau = isinstance(state.sched, torch.optim.lr_scheduler.ReduceLROnPlateau)
    t0, last_report, rays_done, samples_done = time.time(), 0.0, 0, 0
    loss_value = psnr_value = float("nan")
    loss_t = mse_t = None
    try:
        for step in range(start, config.steps):
            if should_stop():
                if checkpoint_dir is not None:
                    state.save(checkpoint_dir, step, config.keep_checkpoints)
                raise Cancelled(f"training stopped at step {step}")
            model.train()
            model.update_grid(step)
            batch = next(stream)
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                out = step_fn(batch)
            opt.zero_grad(set_to_none=True)
            if state.scaler is not None:
                state.scaler.scale(out.loss).backward()
                state.scaler.step(opt)
                state.scaler.update()
            else:
                out.loss.backward()
                opt.step()
            loss_t, mse_t = out.loss.detach(), out.mse
            state.sched.step(float(loss_t)) if plateau else state.sched.step()
            rays_done += out.rays
            samples_done += out.samples
            done = step + 1
            if checkpoint_dir is not None and (done % config.checkpoint_every == 0 or done == config.steps):
                state.save(checkpoint_dir, done, config.keep_checkpoints)
            if between_steps is not None:
                t_hook = time.time()
                between_steps(done, t_hook - t0)
                t0 += time.time() - t_hook
            now = time.time()
            if now - last_report >= REPORT_EVERY_S or done == config.steps:
                last_report = now
                loss_value, psnr_value = _host_values(loss_t, mse_t)
                elapsed = max(now - t0, 1e-9)
                rate = (done - start) / elapsed
                progress(ProgressEvent("training", done / config.steps, f"step {done}/{config.steps}", {
                    "step": done, "total_steps": config.steps, "loss": loss_value, "psnr": psnr_value,
                    "rays_per_s": rays_done / elapsed, "samples_per_s": samples_done / elapsed,
                    "eta_s": (config.steps - done) / max(rate, 1e-9)}))
    finally:
        stream.close()
    if loss_t is not None:
        loss_value, psnr_value = _host_values(loss_t, mse_t)
    seconds = time.time() - t0
    return {"resumed_from": start, "train_seconds": seconds, "rays_per_s": rays_done / max(seconds, 1e-9),
            "samples_per_s": samples_done / max(seconds, 1e-9), "final_train_loss": loss_value,
            "final_train_psnr": psnr_value}
