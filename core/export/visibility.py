"""Which rendered cameras see a world point as their surface (a z-buffer test against rendered depth)."""

from __future__ import annotations

import numpy as np
import torch

from core.export.renders import ViewRender
from core.functional.projection import project_to_pixels, sample_nearest


def surface_depth(view: ViewRender, opacity_threshold: float) -> torch.Tensor:
    """(H, W) float32 tensor: the view's expected z-depth, NaN where opacity < threshold."""
    return torch.from_numpy(np.where(view.opacity >= opacity_threshold, view.depth, np.nan).astype(np.float32))


def view_visibility(points: torch.Tensor, view: ViewRender, depth: torch.Tensor, abs_tol: float, rel_tol: float
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """points: (N, 3) float64 tensor, input frame; depth: surface_depth(view).

    Returns in_frame (N,) bool (in front of the camera, inside the image), at_surface (N,) bool (in frame
    and |z - depth| <= abs_tol + rel_tol * depth, input-frame units), and uv (N, 2) pixel coordinates.
    """
    uv, z = project_to_pixels(points, view.c2w, view.intrinsics)
    d, in_frame = sample_nearest(depth, uv)
    in_frame &= z > 0
    at_surface = in_frame & ((z.float() - d).abs() <= abs_tol + rel_tol * d)
    return in_frame, at_surface, uv


def seen_at_surface(points_world: np.ndarray, views: list[ViewRender], opacity_threshold: float,
                    abs_tol: float, rel_tol: float) -> np.ndarray:
    """(N,) bool: some view sees the point (N, 3) input frame as its surface (see view_visibility)."""
    pts = torch.from_numpy(np.array(points_world, dtype=np.float64))
    seen = torch.zeros(len(pts), dtype=torch.bool)
    for v in views:
        seen |= view_visibility(pts, v, surface_depth(v, opacity_threshold), abs_tol, rel_tol)[1]
    return seen.numpy()
