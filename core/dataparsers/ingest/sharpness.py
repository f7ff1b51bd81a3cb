"""Image sharpness as the variance of the Laplacian, on a small grey copy (for blur checks)."""

from __future__ import annotations

import numpy as np
from PIL import Image

SHARPNESS_SIDE = 512  # sharpness is measured at this max side so that values compare across sizes


def laplacian_variance(gray: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian. gray: (H, W) float or uint8, H, W >= 3. Higher is sharper."""
    g = np.asarray(gray, dtype=np.float32)
    lap = g[1:-1, :-2] + g[1:-1, 2:] + g[:-2, 1:-1] + g[2:, 1:-1] - 4.0 * g[1:-1, 1:-1]
    return float(lap.var())


def image_sharpness(image: Image.Image, side: int = SHARPNESS_SIDE) -> float:
    """Laplacian variance of `image` converted to grey and downscaled to a max side of `side` px."""
    gray = image.convert("L")
    scale = side / max(gray.size)
    if scale < 1.0:
        gray = gray.resize((max(3, round(gray.width * scale)), max(3, round(gray.height * scale))),
                           Image.Resampling.BILINEAR)
    return laplacian_variance(np.asarray(gray))
