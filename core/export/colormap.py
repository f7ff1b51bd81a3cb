"""A turbo-like colour map in numpy (no matplotlib) and a depth preview with a legend strip."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Polynomial fit of Google's Turbo colour map (A. Mikhailov, 2019), one degree-5 polynomial per channel,
# coefficients from the constant term up.
_TURBO = np.array([
    [0.13572138, 4.61539260, -42.66032258, 132.13108234, -152.94239396, 59.28637943],
    [0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604],
    [0.10667330, 12.64194608, -60.58204836, 110.36276771, -89.90310912, 27.34824973],
])


def turbo(x: np.ndarray) -> np.ndarray:
    """x: (...) float in [0, 1] (clipped) -> (..., 3) uint8 sRGB, dark blue (0) to dark red (1).

    The fit's first 3% turn brown (it is poor at the very end), so [0, 1] maps onto [0.03, 1] of it.
    """
    x = np.clip(np.nan_to_num(np.asarray(x, dtype=np.float64)), 0.0, 1.0)
    x = (0.03 + 0.97 * x)[..., None, None]
    powers = x ** np.arange(6)                                   # (..., 1, 6), broadcast per channel
    rgb = np.clip((powers * _TURBO).sum(-1), 0.0, 1.0)
    return np.round(rgb * 255).astype(np.uint8)


def robust_range(values: np.ndarray, low_pct: float = 1.0, high_pct: float = 99.0) -> tuple[float, float]:
    """(lo, hi) percentiles of the finite values; (0, 1) if there are none; hi > lo always."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(finite, [low_pct, high_pct]))
    return lo, max(hi, lo + 1e-6 * max(abs(lo), 1.0))


def depth_preview(depth: np.ndarray, lo: float, hi: float, units: str, legend: bool = True) -> np.ndarray:
    """Colour a z-depth map (near = blue, far = red) with a legend strip under it.

    depth: (H, W) float, NaN = no surface (drawn black). lo, hi: the range mapped to the colour ends.
    Returns (H + legend height, W, 3) uint8; the legend is a colour ramp labelled "lo .. hi units".
    """
    img = turbo((depth - lo) / (hi - lo))
    img[~np.isfinite(depth)] = 0
    if not legend:
        return img
    h, w = depth.shape
    bar_h = max(12, h // 16)
    ramp = np.repeat(turbo(np.linspace(0, 1, w))[None], bar_h, axis=0)
    label = Image.new("RGB", (w, max(12, bar_h)), (255, 255, 255))
    ImageDraw.Draw(label).text((2, 0), f"{lo:.3g} .. {hi:.3g} {units}", fill=(0, 0, 0),
                               font=ImageFont.load_default())
    return np.concatenate([img, ramp, np.asarray(label)], axis=0)
