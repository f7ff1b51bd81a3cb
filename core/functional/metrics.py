"""Image, depth and geometry metrics (numpy/scipy; no torch needed).

Images are float arrays in [0, 1] (data range 1). Depth maps are z-depth in one frame's units,
NaN where unknown. Point sets and meshes are in one frame (e.g. the input frame).
"""

from __future__ import annotations

import numpy as np
from skimage.metrics import structural_similarity

SSIM_WINDOW = 11   # Gaussian window (sigma 1.5), as mip-NeRF and the usual NeRF evaluation code


def _as_float(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def mse(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean squared error. pred, gt: (H, W, C) float in [0, 1]; mask: (H, W) bool (True = counted)."""
    diff = (_as_float(pred) - _as_float(gt)) ** 2
    if mask is not None:
        diff = diff[np.asarray(mask, dtype=bool)]
    if diff.size == 0:
        raise ValueError("mse: the mask selects no pixels")
    return float(diff.mean())


def psnr(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Peak signal-to-noise ratio in dB for data range 1: -10 log10(MSE); inf for identical images.

    pred, gt: (H, W, 3) float in [0, 1]. mask: (H, W) bool or None (all pixels).
    """
    m = mse(pred, gt, mask)
    return float("inf") if m == 0 else float(-10.0 * np.log10(m))


def ssim(pred: np.ndarray, gt: np.ndarray) -> float:
    """Mean structural similarity (skimage's), Gaussian window (sigma 1.5, 11 px), K1 = 0.01, K2 = 0.03, range 1,
    population covariance, averaged over channels.

    pred, gt: (H, W, C) or (H, W) float in [0, 1], H and W >= 11.
    """
    x, y = _as_float(pred), _as_float(gt)
    if x.shape != y.shape:
        raise ValueError(f"ssim: shapes differ {x.shape} vs {y.shape}")
    if min(x.shape[:2]) < SSIM_WINDOW:
        raise ValueError(f"ssim: images must be at least {SSIM_WINDOW} px on each side")
    return float(structural_similarity(x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                       data_range=1.0, channel_axis=-1 if x.ndim == 3 else None))


def _depth_pairs(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Valid (pred, gt) values: both finite, gt > 0, and inside `mask` if given."""
    p, g = _as_float(pred), _as_float(gt)
    if p.shape != g.shape:
        raise ValueError(f"depth metrics: shapes differ {p.shape} vs {g.shape}")
    valid = np.isfinite(p) & np.isfinite(g) & (g > 0)
    if mask is not None:
        valid &= np.asarray(mask, dtype=bool)
    if not valid.any():
        raise ValueError("depth metrics: no pixel has both depths (check the mask and NaNs)")
    return p[valid], g[valid]


def depth_abs_rel(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean |pred - gt| / gt over valid pixels. pred, gt: (H, W) z-depth (NaN = unknown); mask (H, W) bool."""
    p, g = _depth_pairs(pred, gt, mask)
    return float(np.mean(np.abs(p - g) / g))


def depth_rmse(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Root mean squared depth error over valid pixels, in depth units. Shapes as `depth_abs_rel`."""
    p, g = _depth_pairs(pred, gt, mask)
    return float(np.sqrt(np.mean((p - g) ** 2)))
