"""Point cloud: the confident pixels of the rendered depth maps back-projected, coloured and
voxel-downsampled (one point per voxel: the mean position and colour of the points in it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import trimesh

from core.atomic import atomic_write_bytes
from core.export.manifest import Artifact
from core.export.mesh_colour import image_at_size
from core.export.renders import ViewRender
from core.functional.projection import backproject_depth
from core.scene.capture import FrameInfo


def backprojected_points(views: list[ViewRender], opacity_threshold: float,
                         images: list[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Every pixel with opacity >= threshold as a world point with its colour.

    images: None (use the rendered colours) or one (H, W, 3|4) uint8 photo per view.
    Returns points (N, 3) float64 input frame and colours (N, 3) float32 [0, 1].
    """
    pts, cols = [], []
    for i, v in enumerate(views):
        ok = (v.opacity >= opacity_threshold) & np.isfinite(v.depth) & (v.depth > 0)
        if not ok.any():
            continue
        rgb = v.rgb if images is None else image_at_size(images[i], v.intrinsics.width, v.intrinsics.height)
        pts.append(backproject_depth(np.where(ok, v.depth, np.nan), v.c2w, v.intrinsics)[ok])
        cols.append(rgb[ok])
    if not pts:
        return np.zeros((0, 3)), np.zeros((0, 3), dtype=np.float32)
    return np.concatenate(pts), np.concatenate(cols).astype(np.float32)


def voxel_downsample(points: np.ndarray, colours: np.ndarray, voxel: float) -> tuple[np.ndarray, np.ndarray]:
    """One point per occupied voxel of size `voxel` (input-frame units): the mean of its points and colours.

    points: (N, 3) float64; colours: (N, 3) float [0, 1]. Returns (M, 3) float64, (M, 3) float32, M <= N.
    """
    if len(points) == 0:
        return points, colours
    _, inverse, counts = np.unique(np.floor(points / voxel).astype(np.int64), axis=0, return_inverse=True,
                                   return_counts=True)
    inverse = inverse.reshape(-1)
    p = np.zeros((len(counts), 3))
    c = np.zeros((len(counts), 3))
    np.add.at(p, inverse, points)
    np.add.at(c, inverse, colours)
    return p / counts[:, None], (c / counts[:, None]).astype(np.float32)


def in_box(points: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """(N,) bool: points (N, 3) inside the box [lo, hi] (3,)."""
    return np.all((points >= lo) & (points <= hi), axis=1)


def write_pointcloud(out_dir: Path, points: np.ndarray, colours: np.ndarray, frame: FrameInfo,
                     name: str = "points") -> Artifact:
    """Write pointcloud/NAME.ply (binary, xyz float64 input frame + uchar RGBA)."""
    rgba = np.concatenate([np.round(np.clip(colours, 0, 1) * 255), np.full((len(colours), 1), 255)], 1)
    cloud = trimesh.PointCloud(points, colors=rgba.astype(np.uint8))
    path = atomic_write_bytes(Path(out_dir) / "pointcloud" / f"{name}.ply", cloud.export(file_type="ply"))
    return Artifact(path, "pointcloud", "ply", "input", frame.units, {"points": len(points)})
