"""Training the feature-field model by image patches, and the scene that renders it (GIRAFFE design).

`train_feature_field(capture, config, ...) -> FeatureScene` mirrors `core.train.train` (same optimiser
groups, schedule, checkpoints, progress and held-out evaluation) but draws random image patches
(core.data.PatchStream) instead of random rays: a patch of P x P output pixels costs (P / s)^2 rays
(s = config.upsample), plus a margin of low-res rays that is rendered and cropped away. Losses: L1 + MSE
on the full-resolution patch, and the same on the renderer's first skip output (the feature map's own
RGB) against the block-averaged patch, which keeps colour in the 3D field.

`FeatureScene` is a TrainedScene whose `render` volume-renders the low-resolution feature map and runs
the neural renderer; depth comes from the field at feature resolution, upsampled with the rendered
image as the guide (joint bilateral), or from full-resolution rays with `exact_depth=True`.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from core.cameras import Intrinsics, stack_params
from core.capture import Capture, SceneNormalization, compute_normalization, half_fov
from core.config import TrainConfig
from core.data import PatchStream, PixelStore
from core.errors import Cancelled, UserInputError
from core.export.projection import backproject_depth, project_to_pixels
from core.fields.compose import ComposedField
from core.fields.feature import FeatureFieldModel, build_feature_model, lowres_centres
from core.fields.neural_renderer import joint_bilateral_upsample, over_background, render_tiled
from core.progress import ProgressEvent, ProgressFn, StopFn, never_stop, no_progress
from core.rays import rays_from_pixels
from core.scene import RenderResult, TrainedScene, resolve_device
from core.train import _composite, _param_groups, _save_checkpoint, _scheduler, evaluate, latest_checkpoint

LOW_RES_WEIGHT = 1.0          # weight of the first-skip (feature resolution) loss
RENDERER_LR_FACTOR = 0.5      # the CNN's learning rate, relative to config.lr
PATCH_MARGIN = 1              # low-res rays rendered around each patch and cropped away
PATCHES_MIN = 2
PLANE_AT = 0.3                # with composition: fit the support plane after this fraction of the steps
PLANE_VIEWS = 6               # training views rendered (at PLANE_SIDE px) to find the support plane
PLANE_SIDE = 64


# ---- the foreground region ------------------------------------------------------------------------

def default_foreground_box(capture: Capture) -> tuple[np.ndarray, np.ndarray]:
    """The region the cameras look at, as an input-frame box (min (3,), max (3,) float64): the ROI of a
    bounded ("object") normalisation of the capture, whatever the capture's own mode."""
    roi = compute_normalization(capture.c2w, "bounded", fov_half=half_fov(capture.intrinsics))
    centre, half = np.asarray(roi.center), 1.0 / roi.scale
    return centre - half, centre + half


def set_foreground_box(field: ComposedField, norm: SceneNormalization, box_world: tuple[np.ndarray, np.ndarray]
                       ) -> None:
    """Move a composed field's foreground box to `box_world` (min (3,), max (3,) input frame)."""
    lo, hi = (norm.to_field(np.asarray(b, dtype=np.float64)) for b in box_world)
    if np.any(hi <= lo):
        raise UserInputError("roi_box_empty", f"the foreground box {list(box_world[0])} .. {list(box_world[1])} "
                             "is empty.", "Give the box as (min corner, max corner) in the input frame.")
    field.set_region(lo.tolist(), hi.tolist())


def camera_up(c2w: np.ndarray) -> np.ndarray:
    """(3,) float64 unit vector: the mean of the cameras' up axes (-y in OpenCV axes). c2w: (N, 4, 4)."""
    up = -np.asarray(c2w)[:, :3, 1].mean(0)
    return up / max(np.linalg.norm(up), 1e-12)


def fit_support_plane(points: np.ndarray, up: np.ndarray, tol: float, min_fraction: float = 0.15,
                      max_tilt_deg: float = 30.0, iters: int = 256, seed: int = 0) -> np.ndarray | None:
    """The dominant plane facing `up` among surface points (RANSAC, then least squares on the inliers).

    points: (N, 3) float64 surface points, any frame; up: (3,) unit, same frame; tol: inlier distance,
    same units. Planes tilted more than max_tilt_deg from horizontal (w.r.t. up) are ignored, and the best
    must hold min_fraction of the points. Returns [nx, ny, nz, d] (float64, n unit with n . up > 0; the
    points above are n . x >= d), shifted up by 3 standard deviations of the inliers' residuals (at
    least tol), so that the plane's own surface lies below it; or None.
    """
    if len(points) < 3:
        return None
    rng = np.random.default_rng(seed)
    cos_max = np.cos(np.deg2rad(max_tilt_deg))
    best, best_count = None, 0
    for _ in range(iters):
        a, b, c = points[rng.choice(len(points), 3, replace=False)]
        n = np.cross(b - a, c - a)
        norm = np.linalg.norm(n)
        if norm < 1e-12:
            continue
        n = n / norm * np.sign(n @ up or 1.0)
        if n @ up < cos_max:
            continue
        count = int((np.abs(points @ n - n @ a) < tol).sum())
        if count > best_count:
            best, best_count = (n, n @ a), count
    if best is None or best_count < min_fraction * len(points):
        return None
    inliers = points[np.abs(points @ best[0] - best[1]) < tol]
    centre = inliers.mean(0)
    n = np.linalg.svd(inliers - centre)[2][-1]
    n = n * np.sign(n @ up or 1.0)
    residual = (inliers - centre) @ n
    return np.array([*n, n @ centre + max(3.0 * residual.std(), tol)])


def find_support_plane(scene: FeatureScene, indices: list[int], tol_fraction: float = 0.01) -> np.ndarray | None:
    """The support plane (ground, table top) under a composed field's foreground, in the field frame.

    Renders the capture cameras `indices` at PLANE_SIDE px, keeps the opaque surface points inside the
    foreground box and fits `fit_support_plane` with a tolerance of tol_fraction x the box diagonal.
    Returns [nx, ny, nz, d] (field frame) or None.
    """
    field = scene.model.field
    lo, hi = field.box_min.cpu().numpy().astype(np.float64), field.box_max.cpu().numpy().astype(np.float64)
    pts = []
    for i in indices:
        k = scene.intrinsics[i]
        scale = min(1.0, PLANE_SIDE / max(k.width, k.height))
        k = k.scaled(max(1, round(k.width * scale)), max(1, round(k.height * scale)))
        r = scene.render(scene.c2w[i], k)
        ok = r.opacity >= 0.9
        if ok.any():
            pts.append(scene.normalization.to_field(backproject_depth(r.depth_median, scene.c2w[i], k)[ok]))
    if not pts:
        return None
    pts = np.concatenate(pts)
    pts = pts[((pts >= lo) & (pts <= hi)).all(1)]
    return fit_support_plane(pts, camera_up(scene.c2w), tol_fraction * float(np.linalg.norm(hi - lo)))


def foreground_region_world(field: ComposedField, norm: SceneNormalization) -> dict:
    """The foreground region in the input frame: {"box_min", "box_max": (3,) lists, "plane": [nx, ny, nz, d]
    (points with n . x >= d are kept) or None}."""
    lo, hi = (norm.to_world(b.detach().cpu().numpy().astype(np.float64)) for b in (field.box_min, field.box_max))
    plane = field.plane.detach().cpu().numpy().astype(np.float64)
    if not plane[:3].any():
        return {"box_min": lo.tolist(), "box_max": hi.tolist(), "plane": None}
    # n . x_field >= d with x_field = (x - c) s  <=>  n . x >= d / s + n . c
    d_world = plane[3] / norm.scale + plane[:3] @ np.asarray(norm.center)
    return {"box_min": lo.tolist(), "box_max": hi.tolist(), "plane": [*plane[:3].tolist(), float(d_world)]}


# ---- losses ---------------------------------------------------------------------------------------

def image_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 + MSE, averaged. pred, target: (K, 3, H, W) float32 RGB in [0, 1]. Returns a scalar."""
    diff = pred - target
    return diff.abs().mean() + (diff * diff).mean()


def patch_targets(colors: torch.Tensor, background: torch.Tensor, s: int) -> tuple[torch.Tensor, torch.Tensor]:
    """colors: (K, P, P, C) float32 sRGB in [0, 1] (C = 4 has alpha); background: (K, 3) one colour a patch.
    Returns the patches on their background (K, 3, P, P) and its s x s block means (K, 3, P/s, P/s)."""
    k, p, _, c = colors.shape
    bg = background[:, None, :].expand(k, p * p, 3).reshape(-1, 3)
    full = _composite(colors.reshape(-1, c), bg).view(k, p, p, 3).permute(0, 3, 1, 2)
    return full, F.avg_pool2d(full, s)


def patch_layout(config: TrainConfig, store: PixelStore) -> tuple[int, int]:
    """(patch size P, patches per batch K): P = config.patch_size (a multiple of config.upsample, at most
    the smallest image side); K so that a batch has about config.batch_rays low-res rays."""
    s = config.upsample
    smallest = int(min(store.widths.min(), store.heights.min()))
    size = min(config.patch_size, smallest) // s * s
    if size < s:
        raise UserInputError("images_too_small", f"the smallest training image side is {smallest} px, less "
                             f"than the feature-field upsampling {s}.", "Use larger images or a smaller --upsample.")
    return size, max(PATCHES_MIN, config.batch_rays // (size // s) ** 2)


# ---- mesh parts -----------------------------------------------------------------------------------

@torch.no_grad()
def density_of_part(scene: TrainedScene, points_world: np.ndarray, part: str, chunk: int = 1 << 18) -> np.ndarray:
    """points_world: (N, 3) float64 input frame -> (N,) float32 density (per field-frame unit) of one part
    ("all", "foreground", "background") of a scene whose field is a ComposedField (NeRF or feature field).
    Raises UserInputError for a part other than "all" on a single field."""
    field = scene.model.field
    if not isinstance(field, ComposedField):
        if part == "all":
            return scene.query_density(points_world, chunk)
        raise UserInputError("mesh_part_needs_composition", f"mesh part {part!r} needs a model trained with "
                             "composition on; this one has a single field.",
                             "Use --mesh-part all, or retrain with --composition on.")
    scene.model.eval()
    pts = torch.from_numpy(scene.normalization.to_field(np.asarray(points_world).reshape(-1, 3))).float()
    out = np.zeros(len(pts), np.float32)
    for start in range(0, len(pts), chunk):
        d = field.density(pts[start:start + chunk].to(scene.device), part=part)
        out[start:start + len(d)] = d.float().cpu().numpy()
    return out


class PartScene:
    """What the mesh exporter needs (core.export.scene_api.SceneLike) from one part of a composed scene:
    `query_density` and the occupied bounds are the part's (the foreground box for "foreground"); rendering,
    cameras and everything else are the whole scene's. Mesh with the whole scene's iso-level."""

    def __init__(self, scene: TrainedScene, part: str) -> None:
        self.scene, self.part = scene, part
        if part != "all":
            density_of_part(scene, np.zeros((1, 3)), part)     # fails early for a single field

    def __getattr__(self, name: str):
        return getattr(self.scene, name)

    def query_density(self, points_world: np.ndarray, chunk: int = 1 << 18) -> np.ndarray:
        """points_world: (N, 3) float64 input frame -> (N,) float32 density of this part."""
        return density_of_part(self.scene, points_world, self.part, chunk)

    def occupied_bbox_world(self) -> tuple[np.ndarray, np.ndarray]:
        """(3,), (3,) float64 input-frame bounds: the scene's occupied box, within the foreground box."""
        lo, hi = self.scene.occupied_bbox_world()
        if self.part == "foreground":
            region = foreground_region_world(self.scene.model.field, self.scene.normalization)
            lo, hi = np.maximum(lo, region["box_min"]), np.minimum(hi, region["box_max"])
        return lo, hi


# ---- the scene ------------------------------------------------------------------------------------

class FeatureScene(TrainedScene):
    """A trained feature-field model: renders through the neural renderer (see the module docstring)."""

    model: FeatureFieldModel

    @torch.no_grad()
    def _lowres(self, c2w_f: torch.Tensor, params: torch.Tensor, n_u: int, n_v: int, chunk: int,
                image_index: int, s: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rays of an n_u x n_v grid, one per s x s block (s = 1: every pixel), rendered in chunks.

        Returns the renderer input (n_v, n_u, M_f + 1), z-depth and median z-depth (n_v, n_u) in
        input-frame units, and opacity (n_v, n_u); all float32 on the scene's device.
        """
        dev = self.device
        zero = torch.zeros(1, dtype=torch.long, device=dev)
        u, v = (t.reshape(-1) for t in lowres_centres(zero, zero, n_u, n_v, s))
        feats, depth, median, opacity = [], [], [], []
        inv_scale = 1.0 / self.normalization.scale
        for start in range(0, u.shape[0], chunk):
            uu, vv = u[start:start + chunk], v[start:start + chunk]
            m = uu.shape[0]
            rays = rays_from_pixels(c2w_f[None].expand(m, -1, -1), params[None].expand(m, -1), uu, vv,
                                    torch.full((m,), image_index, dtype=torch.long, device=dev))
            f, out = self.model.feature_rays(rays, training=False)
            feats.append(f.float())
            depth.append((out.depth * rays.z_scale * inv_scale).float())
            median.append((out.depth_median * rays.z_scale * inv_scale).float())
            opacity.append(out.opacity.float())
        return tuple(torch.cat(x).view(n_v, n_u, -1).squeeze(-1) for x in (feats, depth, median, opacity))

    @torch.no_grad()
    def render(self, c2w: np.ndarray, intrinsics: Intrinsics, width: int | None = None, height: int | None = None,
               chunk: int = 65536, background=(1.0, 1.0, 1.0), image_index: int = -1,
               exact_depth: bool = False) -> RenderResult:
        """Render one view (c2w: (4, 4) input frame, OpenCV axes) through the neural renderer.

        The feature map has ceil(H / s) x ceil(W / s) rays (s = upsample), rendered `chunk` rays at a time;
        the renderer runs tile by tile. Depth: the feature-resolution depth upsampled with the rendered
        image as the guide, or (exact_depth) full-resolution rays.
        """
        self.model.eval()
        width, height = width or intrinsics.width, height or intrinsics.height
        if (width, height) != (intrinsics.width, intrinsics.height):
            intrinsics = intrinsics.scaled(width, height)
        dev, s = self.device, self.model.upsample
        c2w_f = torch.from_numpy(self.normalization.c2w_to_field(np.asarray(c2w))).float().to(dev)
        params = torch.from_numpy(intrinsics.params()).float().to(dev)
        n_u, n_v = -(-width // s), -(-height // s)
        fmap, depth, median, opacity = self._lowres(c2w_f, params, n_u, n_v, chunk, image_index, s)
        out = render_tiled(self.model.renderer, fmap.permute(2, 0, 1)[None])
        bg = torch.tensor(background, dtype=torch.float32, device=dev)
        rgb = over_background(out.image, bg)[0].permute(1, 2, 0).clamp(0, 1)          # (n_v s, n_u s, 3)
        alpha = out.image[0, 3]
        if exact_depth:
            _, depth, median, _ = self._lowres(c2w_f, params, width, height, chunk, image_index, 1)
        else:
            guide_low = F.avg_pool2d(rgb.permute(2, 0, 1)[None], s)[0].permute(1, 2, 0)
            depth, median = (joint_bilateral_upsample(d, opacity, guide_low, rgb) for d in (depth, median))
        crop = (slice(0, height), slice(0, width))
        as_np = lambda t: t[crop].float().cpu().numpy()  # noqa: E731
        return RenderResult(as_np(rgb), as_np(depth), as_np(median), as_np(alpha))

    def query_density(self, points_world: np.ndarray, chunk: int = 1 << 18, part: str = "all") -> np.ndarray:
        """points_world: (N, 3) input frame -> (N,) float32 density per field-frame unit length.

        part: "all" (the composed density), "foreground" or "background" (models trained with composition).
        """
        if part == "all":
            return super().query_density(points_world, chunk)
        return density_of_part(self, points_world, part, chunk)

    @classmethod
    def load(cls, directory: Path, device: str = "auto") -> FeatureScene:
        directory = Path(directory)
        meta = json.loads((directory / "scene.json").read_text())
        dev = resolve_device(device)
        cfg = TrainConfig.from_dict(meta["config"])
        model = build_feature_model(cfg, meta["normalization"]["mode"] == "unbounded", len(meta["train_indices"]),
                                    dev)
        model.load_state_dict(torch.load(directory / "scene.pt", map_location=dev, weights_only=True))
        return cls.from_meta(meta, model, dev)


# ---- training -------------------------------------------------------------------------------------

def _optimizer(model: FeatureFieldModel, config: TrainConfig) -> torch.optim.Optimizer:
    """Adam over the engine's groups (hash tables / MLPs), the renderer's convolutions in a third group
    with lr * RENDERER_LR_FACTOR."""
    renderer = {id(p) for p in model.renderer.parameters()}
    groups = [{**g, "params": [p for p in g["params"] if id(p) not in renderer]} for g in _param_groups(model, config)]
    groups.append({"params": list(model.renderer.parameters()), "eps": 1e-15, "weight_decay": config.weight_decay,
                   "lr": config.lr * RENDERER_LR_FACTOR})
    return torch.optim.Adam(groups, lr=config.lr, betas=(0.9, 0.99))


def _restore(path: Path, device: torch.device, model, opt, sched, stream, scaler) -> int:
    """Load a checkpoint written by core.train._save_checkpoint; returns its step."""
    state = torch.load(path, map_location=device, weights_only=False)
    for obj, key in ((model, "model"), (opt, "optimizer"), (sched, "scheduler"), (stream, "stream")):
        obj.load_state_dict(state[key])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng_cpu"])
    if state.get("rng_cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng_cuda"])
    return int(state["step"])


def train_feature_field(capture: Capture, config: TrainConfig, progress: ProgressFn = no_progress,
                        should_stop: StopFn = never_stop, checkpoint_dir: Path | None = None, resume: bool = True,
                        evaluate_holdout: bool = True,
                        foreground_box: tuple[np.ndarray, np.ndarray] | None = None,
                        support_plane: bool = True) -> FeatureScene:
    """Train the feature-field model (config.model == "feature_field") on a posed capture, by patches.

    With config.composition the scene is normalised as unbounded and split into a foreground field in
    `foreground_box` (min (3,), max (3,) input frame; default `default_foreground_box`) and a contracted
    background field elsewhere; with support_plane, after PLANE_AT of the steps the dominant upward-facing
    plane in the box (ground, table top: `find_support_plane`) is cut off the foreground, so the background
    carries it. Checkpoints, resume and cancellation behave as in core.train.train.
    """
    if len(capture) < 2:
        raise UserInputError("too_few_images", f"training needs at least 2 posed images, got {len(capture)}.",
                             "Upload more overlapping photos of the subject.")
    if config.model != "feature_field":
        raise ValueError(f"train_feature_field needs model 'feature_field', got {config.model!r}")
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    if config.max_side:
        capture = capture.resized(max_side=config.max_side)
    mode = "unbounded" if config.composition else config.scene_mode
    norm = compute_normalization(capture.c2w, mode, fov_half=half_fov(capture.intrinsics))
    train_idx, test_idx = capture.holdout_split(config.holdout_every)
    train_cap = capture.subset(train_idx)
    model = build_feature_model(config, norm.mode == "unbounded", len(train_idx), device)
    if isinstance(model.field, ComposedField):
        set_foreground_box(model.field, norm, foreground_box or default_foreground_box(capture))
    config_run = TrainConfig.from_dict({**config.to_dict(), "backend": model.field.backend})
    c2w_field = torch.from_numpy(norm.c2w_to_field(train_cap.c2w)).float().to(device)
    params = stack_params(train_cap.intrinsics).to(device)
    opt = _optimizer(model, config)
    sched = _scheduler(opt, config)
    amp = device.type == "cuda" and config.mixed_precision
    scaler = torch.amp.GradScaler("cuda") if amp else None
    store = PixelStore.from_capture(train_cap, device=device)
    size, count = patch_layout(config, store)
    s = config.upsample
    stream = PatchStream(store, size, count, device, seed=config.seed)
    ckpt = latest_checkpoint(checkpoint_dir) if resume else None
    start = _restore(ckpt, device, model, opt, sched, stream, scaler) if ckpt is not None else 0
    white = torch.ones(1, 3, device=device)

    def snapshot() -> FeatureScene:
        return FeatureScene(model=model, normalization=norm, intrinsics=list(capture.intrinsics), c2w=capture.c2w,
                            names=list(capture.names), frame=capture.frame, train_indices=train_idx,
                            test_indices=test_idx, config=config_run, device=device)

    plane_step = int(PLANE_AT * config.steps) if support_plane and isinstance(model.field, ComposedField) else -1
    t0, last_report, rays_done, samples_done = time.time(), 0.0, 0, 0
    loss_value = psnr_value = float("nan")
    try:
        for step in range(start, config.steps):
            if should_stop():
                if checkpoint_dir is not None:
                    _save_checkpoint(checkpoint_dir, step, model, opt, sched, stream, scaler, config.keep_checkpoints)
                raise Cancelled(f"training stopped at step {step}")
            if step == plane_step:
                progress(ProgressEvent("training", step / config.steps, "finding the support plane"))
                plane = find_support_plane(snapshot(), train_idx[::max(1, len(train_idx) // PLANE_VIEWS)])
                if plane is not None:
                    model.field.set_region(model.field.box_min, model.field.box_max, plane.tolist())
            model.train()
            model.update_grid(step)
            batch = next(stream)
            idx = batch.image_index
            # Random backgrounds (one colour a patch) where images have alpha, so empty space learns to be empty.
            bg = torch.rand(len(idx), 3, device=device) if store.channels == 4 else white.expand(len(idx), 3)
            target, target_low = patch_targets(batch.colors, bg, s)
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                rendered, out = model.patches(c2w_field[idx], params[idx], idx, batch.u0, batch.v0, size,
                                              PATCH_MARGIN, training=True)
            pred = over_background(rendered.image.float(), bg)
            mse_full = F.mse_loss(pred, target)
            loss = image_loss(pred, target) + LOW_RES_WEIGHT * image_loss(
                over_background(rendered.low_res.float(), bg), target_low)
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
            rays_done += out.opacity.shape[0]
            samples_done += out.n_samples
            psnr_value = -10 * math.log10(max(float(mse_full.detach()), 1e-10))
            done = step + 1
            if checkpoint_dir is not None and (done % config.checkpoint_every == 0 or done == config.steps):
                _save_checkpoint(checkpoint_dir, done, model, opt, sched, stream, scaler, config.keep_checkpoints)
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
    scene = snapshot()
    scene.metrics = {"steps": config.steps, "resumed_from": start, "train_seconds": train_seconds,
                     "rays_per_s": rays_done / max(train_seconds, 1e-9),
                     "samples_per_s": samples_done / max(train_seconds, 1e-9), "final_train_loss": loss_value,
                     "final_train_psnr": psnr_value, "backend": config_run.backend, "device": str(device),
                     "scene_mode": norm.mode, "model": config.model, "patch_size": size, "patches_per_batch": count}
    if isinstance(model.field, ComposedField):
        scene.metrics["foreground_region"] = foreground_region_world(model.field, norm)
    if evaluate_holdout and test_idx:
        progress(ProgressEvent("training", 1.0, "evaluating held-out views"))
        scene.metrics.update(evaluate(scene, capture, test_idx, config.eval_max_views))
    return scene


# ---- multi-view consistency -----------------------------------------------------------------------

def warp_error(rgb_src: np.ndarray, depth_src: np.ndarray, c2w_src: np.ndarray, rgb_dst: np.ndarray,
               depth_dst: np.ndarray, c2w_dst: np.ndarray, intrinsics: Intrinsics, opacity_dst: np.ndarray,
               rel_tol: float = 0.03) -> tuple[float, int]:
    """Mean absolute colour difference between a frame and the previous frame warped onto it.

    rgb_*: (H, W, 3) float32 [0, 1]; depth_*: (H, W) float32 z-depth, input frame; c2w_*: (4, 4) float64
    input frame; opacity_dst: (H, W) float32. Every destination pixel with opacity >= 0.5 is lifted to 3D
    with its depth and projected into the source frame; it counts when it lands inside the source and the
    source's depth there agrees within rel_tol (co-visible). The source is sampled bilinearly.
    Returns (mean over co-visible pixels and channels, number of co-visible pixels).
    """
    h, w = depth_dst.shape
    pts = torch.from_numpy(backproject_depth(depth_dst, c2w_dst, intrinsics).reshape(-1, 3))
    uv, z = project_to_pixels(pts, c2w_src, intrinsics)
    grid = torch.stack([uv[:, 0] / w * 2 - 1, uv[:, 1] / h * 2 - 1], -1).float().view(1, h, w, 2)
    src = torch.from_numpy(np.concatenate([rgb_src, depth_src[..., None]], -1)).float().permute(2, 0, 1)[None]
    warped = F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)[0]
    warped = warped.permute(1, 2, 0).numpy()
    z = z.view(h, w).numpy()
    inside = (uv[:, 0] >= 0.5) & (uv[:, 0] <= w - 0.5) & (uv[:, 1] >= 0.5) & (uv[:, 1] <= h - 0.5)
    ok = (inside.view(h, w).numpy() & (opacity_dst >= 0.5) & np.isfinite(depth_dst) & (z > 0)
          & (np.abs(warped[..., 3] - z) <= rel_tol * np.abs(z)))
    if not ok.any():
        return float("nan"), 0
    return float(np.abs(warped[..., :3] - rgb_dst)[ok].mean()), int(ok.sum())


def orbit_consistency(scene: TrainedScene, c2w: np.ndarray, intrinsics: Intrinsics) -> dict:
    """Render frames along a path (c2w: (N, 4, 4) float64 input frame) and warp each to the next.

    Returns {"warp_l1": mean of the per-pair errors (colour in [0, 1]), "pairs", "covisible_fraction",
    "render_seconds"}: the flicker a 2D renderer may add between nearby views shows up as a larger figure.
    """
    t = time.perf_counter()
    frames = [scene.render(p, intrinsics) for p in c2w]
    seconds = time.perf_counter() - t
    errors, covisible = [], []
    for a, b, pa, pb in zip(frames[:-1], frames[1:], c2w[:-1], c2w[1:], strict=True):
        err, n = warp_error(a.rgb, a.depth, pa, b.rgb, b.depth, pb, intrinsics, b.opacity)
        if n:
            errors.append(err)
            covisible.append(n / b.depth.size)
    return {"warp_l1": float(np.mean(errors)) if errors else float("nan"), "pairs": len(errors),
            "covisible_fraction": float(np.mean(covisible)) if covisible else 0.0, "render_seconds": seconds}
