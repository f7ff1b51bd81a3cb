"""Rendering the capture's cameras (or any camera) into plain arrays the exporters share."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.errors import Cancelled
from core.export.scene_api import SceneLike
from core.functional.cameras import Intrinsics
from core.progress import StopFn, never_stop


@dataclass
class ViewRender:
    """One rendered camera.

    c2w: (4, 4) float64, input frame. intrinsics: at the rendered size (width x height).
    rgb: (H, W, 3) float32 [0, 1]; depth, depth_median: (H, W) float32 z-depth, input-frame units;
    opacity: (H, W) float32 [0, 1].
    """

    name: str
    c2w: np.ndarray
    intrinsics: Intrinsics
    rgb: np.ndarray
    depth: np.ndarray
    depth_median: np.ndarray
    opacity: np.ndarray


def fit_size(intrinsics: Intrinsics, max_side: int | None) -> tuple[int, int]:
    """(width, height) of the camera scaled down (never up) so its longer side is <= max_side."""
    w, h = intrinsics.width, intrinsics.height
    if max_side is None or max(w, h) <= max_side:
        return w, h
    s = max_side / max(w, h)
    return max(1, round(w * s)), max(1, round(h * s))


def render_camera(scene: SceneLike, name: str, c2w: np.ndarray, intrinsics: Intrinsics,
                  max_side: int | None = None, chunk: int = 65536) -> ViewRender:
    """Render one camera (c2w: (4, 4) input frame) at its size capped to max_side, on white."""
    w, h = fit_size(intrinsics, max_side)
    out = scene.render(np.asarray(c2w, dtype=np.float64), intrinsics, width=w, height=h, chunk=chunk,
                       background=(1.0, 1.0, 1.0))
    return ViewRender(name, np.asarray(c2w, dtype=np.float64), intrinsics.scaled(w, h),
                      np.asarray(out.rgb, dtype=np.float32), np.asarray(out.depth, dtype=np.float32),
                      np.asarray(out.depth_median, dtype=np.float32), np.asarray(out.opacity, dtype=np.float32))


def render_scene_cameras(scene: SceneLike, indices: list[int], max_side: int | None, chunk: int = 65536,
                         should_stop: StopFn = never_stop) -> list[ViewRender]:
    """Render the scene's own cameras `indices` (into scene.c2w / intrinsics / names)."""
    views = []
    for i in indices:
        if should_stop():
            raise Cancelled("export cancelled while rendering the capture's cameras")
        views.append(render_camera(scene, scene.names[i], scene.c2w[i], scene.intrinsics[i], max_side, chunk))
    return views
