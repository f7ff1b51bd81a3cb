"""What the exporters need from a scene: the part of `core.scene.trained.TrainedScene` they use.

Written as a Protocol so that exports depend on this contract only (the engine's TrainedScene and the
analytic stand-in in `fixtures.analytic` both satisfy it).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from core.functional.cameras import Intrinsics
from core.scene.capture import FrameInfo, SceneNormalization


class RenderLike(Protocol):
    """rgb: (H, W, 3) float32 [0, 1] composited on the background.
    depth: (H, W) float32 expected z-depth, input-frame units (normalised by opacity).
    depth_median: (H, W) float32 z-depth where transmittance crosses 0.5, input-frame units.
    opacity: (H, W) float32 [0, 1] accumulated alpha.
    """

    rgb: np.ndarray
    depth: np.ndarray
    depth_median: np.ndarray
    opacity: np.ndarray


class SceneLike(Protocol):
    """c2w: (N, 4, 4) float64 camera-to-world of the capture's cameras, OpenCV axes, input frame."""

    normalization: SceneNormalization
    intrinsics: list[Intrinsics]
    c2w: np.ndarray
    names: list[str]
    frame: FrameInfo
    train_indices: list[int]
    test_indices: list[int]
    metrics: dict

    def render(self, c2w: np.ndarray, intrinsics: Intrinsics, width: int | None = None,
               height: int | None = None, chunk: int = 65536,
               background: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> RenderLike:
        """c2w: (4, 4) float64 input frame. Renders in chunks of `chunk` rays."""
        ...

    def query_density(self, points_world: np.ndarray) -> np.ndarray:
        """points_world: (N, 3) float64 input frame -> (N,) float32 density >= 0, per field-frame unit."""
        ...

    def occupied_bbox_world(self) -> tuple[np.ndarray, np.ndarray]:
        """(3,), (3,) float64 input-frame bounds of occupied space."""
        ...

    def occupancy_world(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """occupied: (R, R, R) bool indexed [ix, iy, iz] along input-frame x, y, z;
        bbox min, max: (3,) float64 input frame; cell (i, j, k) covers min + ([i, j, k] + [0, 1]) * size / R.
        """
        ...
