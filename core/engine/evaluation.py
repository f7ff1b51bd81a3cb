"""Evaluating a trained scene: held-out PSNR/SSIM on a background, and multi-view consistency (how much
a rendered frame disagrees with its neighbour warped onto it through the rendered depth)."""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from core.functional.cameras import Intrinsics
from core.functional.metrics import psnr, ssim
from core.functional.projection import backproject_depth, project_to_pixels
from core.progress import ProgressEvent, ProgressFn, no_progress
from core.scene.capture import Capture
from core.scene.trained import TrainedScene


def composite(colors: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
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


SSIM_MIN_SIDE = 16          # evaluation renders keep at least this short side (SSIM's window is 11 px)


def eval_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(width, height) in px to evaluate an image of width x height at: scaled (never up) so that its longest
    side is at most max_side, rounded as core.scene.capture.Capture.resized does; 0 = unchanged. The short side is
    kept at SSIM_MIN_SIDE or more (the image's own where smaller), which only a panorama's would fall below."""
    if not max_side or max(width, height) <= max_side:
        return width, height
    s = max(max_side / max(width, height), min(1.0, SSIM_MIN_SIDE / min(width, height)))
    return max(1, round(width * s)), max(1, round(height * s))


def pick_views(indices: list[int], max_views: int) -> list[int]:
    """Up to max_views entries of indices, spread evenly over them (the first always); all when max_views
    is 0 or at least len(indices)."""
    n = len(indices)
    if not max_views or max_views >= n:
        return list(indices)
    return [indices[k * n // max_views] for k in range(max_views)]


def area_resize(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """(H, W, C) float32 -> (height, width, C) float32, each output pixel the mean of the input area it covers
    (torch's "area" interpolation: exact box averages when the factors are integers)."""
    if img.shape[:2] == (height, width):
        return img
    t = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)).permute(2, 0, 1)[None]
    return F.interpolate(t, size=(height, width), mode="area")[0].permute(1, 2, 0).numpy()


def evaluate(scene: TrainedScene, capture: Capture, indices: list[int], max_views: int = 0, max_side: int = 0,
             progress: ProgressFn = no_progress) -> dict:
    """Held-out PSNR/SSIM of views of `capture`, rendered on white and compared with the images on white.

    indices: the held-out views (into capture); up to max_views of them (0: all), spread over them
    (`pick_views`). max_side: render each at `eval_size(W, H, max_side)` (intrinsics scaled; 0: the capture's
    size), against its ground truth composited on white, then area-averaged to that size. progress: one
    ProgressEvent("training", 1.0, ...) as each view starts, metrics {eval_view: k (1-based), eval_views: n,
    eval_width, eval_height, and eta_s from the second view on}.
    Returns {} without views; else {"psnr_holdout", "ssim_holdout" (means), "psnr_per_view", "holdout_views"
    (evaluated), "holdout_views_total" (held out), "holdout_size" ("WxH" of the renders, comma-separated if the
    views differ)}.
    """
    chosen = pick_views(indices, max_views)
    ps, ss, sizes = [], [], []
    t0 = time.perf_counter()
    for k, i in enumerate(chosen):
        h, w = capture.images[i].shape[:2]
        ew, eh = eval_size(w, h, max_side)
        metrics = {"eval_view": k + 1, "eval_views": len(chosen), "eval_width": ew, "eval_height": eh}
        if k:
            metrics["eta_s"] = (time.perf_counter() - t0) / k * (len(chosen) - k)
        progress(ProgressEvent("training", 1.0, f"evaluating held-out view {k + 1}/{len(chosen)} at {ew}x{eh}",
                               metrics))
        intrinsics = capture.intrinsics[i]
        if (intrinsics.width, intrinsics.height) != (ew, eh):
            intrinsics = intrinsics.scaled(ew, eh)
        out = scene.render(capture.c2w[i], intrinsics, chunk=scene.config.eval_chunk)
        gt = area_resize(composite_image(capture.images[i]), ew, eh)
        ps.append(psnr(out.rgb, gt))
        ss.append(ssim(out.rgb, gt))
        sizes.append(f"{ew}x{eh}")
    if not ps:
        return {}
    return {"psnr_holdout": float(np.mean(ps)), "ssim_holdout": float(np.mean(ss)),
            "psnr_per_view": [float(p) for p in ps], "holdout_views": len(ps), "holdout_views_total": len(indices),
            "holdout_size": ",".join(dict.fromkeys(sizes))}


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


def orbit_consistency(scene: TrainedScene, c2w: np.ndarray, intrinsics: Intrinsics, exact_depth: bool = False
                      ) -> dict:
    """Render frames along a path (c2w: (N, 4, 4) float64 input frame) and warp each to the next
    (exact_depth: a FeatureScene's depth from full-resolution rays).

    Returns {"warp_l1": mean of the per-pair errors (colour in [0, 1]), "pairs", "covisible_fraction",
    "render_seconds"}: the flicker a 2D renderer may add between nearby views shows up as a larger figure.
    """
    t = time.perf_counter()
    extra = {"exact_depth": True} if exact_depth else {}
    frames = [scene.render(p, intrinsics, **extra) for p in c2w]
    seconds = time.perf_counter() - t
    errors, covisible = [], []
    for a, b, pa, pb in zip(frames[:-1], frames[1:], c2w[:-1], c2w[1:], strict=True):
        err, n = warp_error(a.rgb, a.depth, pa, b.rgb, b.depth, pb, intrinsics, b.opacity)
        if n:
            errors.append(err)
            covisible.append(n / b.depth.size)
    return {"warp_l1": float(np.mean(errors)) if errors else float("nan"), "pairs": len(errors),
            "covisible_fraction": float(np.mean(covisible)) if covisible else 0.0, "render_seconds": seconds}
