"""Vertex colours: the median colour over the cameras that see the vertex.

A camera sees a vertex when the vertex projects inside its image, in front of it, and its z-depth agrees
with the camera's rendered depth there (a z-buffer test, so occluded cameras do not vote). The colours
come from the capture's images when given (resized to the render size), else from the rendered images.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from core.export.renders import ViewRender
from core.export.visibility import surface_depth, view_visibility
from core.functional.projection import sample_nearest

GREY = 0.5


def image_at_size(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """(H, W, 3|4) uint8 -> (height, width, 3) float32 [0, 1]; alpha (if any) composited on white."""
    if image.shape[1] != width or image.shape[0] != height:
        image = np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))
    rgb = image[..., :3].astype(np.float32) / 255
    if image.shape[2] == 4:
        a = image[..., 3:].astype(np.float32) / 255
        rgb = rgb * a + (1 - a)
    return rgb


def vertex_colours(vertices: np.ndarray, views: list[ViewRender], images: list[np.ndarray] | None = None,
                   opacity_threshold: float = 0.5, abs_tol: float = 0.0, rel_tol: float = 0.01,
                   batch: int = 100_000) -> np.ndarray:
    """Median colour of each vertex over the views that see it.

    vertices: (V, 3) float64 input frame. views: rendered cameras (depth for the visibility test).
    images: None, or one (H, W, 3|4) uint8 image per view (the capture's photos).
    abs_tol, rel_tol: a vertex is visible if |z - depth| <= abs_tol + rel_tol * depth (input-frame units).
    Vertices no camera sees take the median over cameras whose frustum holds them, else grey.
    Returns (V, 3) uint8 sRGB.
    """
    colour_maps = [torch.from_numpy(v.rgb if images is None else
                                    image_at_size(img, v.intrinsics.width, v.intrinsics.height))
                   for v, img in zip(views, images if images is not None else [None] * len(views), strict=True)]
    depth_maps = [surface_depth(v, opacity_threshold) for v in views]
    out = np.empty((len(vertices), 3), dtype=np.uint8)
    for s in range(0, len(vertices), batch):
        pts = torch.from_numpy(np.asarray(vertices[s:s + batch], dtype=np.float64))
        seen = torch.full((len(pts), len(views), 3), float("nan"), dtype=torch.float32)
        framed = seen.clone()
        for j, v in enumerate(views):
            inside, visible, uv = view_visibility(pts, v, depth_maps[j], abs_tol, rel_tol)
            col, _ = sample_nearest(colour_maps[j], uv)
            framed[inside, j] = col[inside]
            seen[visible, j] = col[visible]
        med = torch.nanmedian(seen, dim=1).values
        fallback = torch.nanmedian(framed, dim=1).values
        med = torch.where(torch.isnan(med), fallback, med)
        med = torch.nan_to_num(med, nan=GREY)
        out[s:s + batch] = np.round(med.clamp(0, 1).numpy() * 255).astype(np.uint8)
    return out
