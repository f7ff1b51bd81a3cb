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
