"""TSDF fusion (Curless & Levoy 1996) of rendered depth maps, then marching cubes at zero.

For every voxel and camera: sdf = depth(pixel) - z(voxel) (z-depth, input-frame units), truncated to
[-trunc, trunc] and divided by trunc; the running weighted mean over cameras is the TSDF. Voxels far
behind the surface (sdf < -trunc) are not updated; pixels with no surface (opacity below the threshold)
carve free space (+1). Voxels no camera updated are inside (-1) if some camera saw them behind a
surface, else outside (+1). Voxels outside the (dilated) occupancy grid are outside without any work.
"""

from __future__ import annotations

import numpy as np
import torch
import trimesh

from core.errors import Cancelled
from core.export.grid import Occupancy, VoxelGrid
from core.export.marching import marching_cubes_chunked
from core.export.projection import project_to_pixels, sample_nearest
from core.export.renders import ViewRender
from core.progress import StopFn, never_stop

SLAB_VOXELS = 1 << 21


def fuse_points(points: torch.Tensor, views: list[ViewRender], trunc: float, opacity_threshold: float
                ) -> torch.Tensor:
    """TSDF values in [-1, 1] of (N, 3) float64 input-frame points from the views' depth maps; (N,) float32."""
    acc = torch.zeros(len(points), dtype=torch.float32)
    weight = torch.zeros(len(points), dtype=torch.float32)
    behind = torch.zeros(len(points), dtype=torch.bool)
    for v in views:
        depth = torch.from_numpy(np.where(v.opacity >= opacity_threshold, v.depth, np.nan).astype(np.float32))
        uv, z = project_to_pixels(points, v.c2w, v.intrinsics)
        d, inside = sample_nearest(depth, uv)
        inside &= z > 0
        has_surface = torch.isfinite(d)
        sdf = torch.where(has_surface, (d - z.float()) / trunc, torch.ones_like(d))
        use = inside & (sdf >= -1)
        acc[use] += sdf[use].clamp(max=1)
        weight[use] += 1
        behind |= inside & has_surface & (sdf < -1)
    empty = torch.where(behind, -1.0, 1.0)
    return torch.where(weight > 0, acc / weight.clamp(min=1), empty)


def fuse_tsdf(grid: VoxelGrid, views: list[ViewRender], trunc: float, opacity_threshold: float,
              occupancy: Occupancy | None = None, should_stop: StopFn = never_stop) -> np.ndarray:
    """The TSDF volume over `grid`: (X, Y, Z) float32 in [-1, 1], negative inside. Built in x-slabs."""
    nx, ny, nz = grid.shape
    tsdf = np.ones(grid.shape, dtype=np.float32)
    slab = max(1, SLAB_VOXELS // (ny * nz))
    for x0 in range(0, nx, slab):
        if should_stop():
            raise Cancelled("export cancelled during TSDF fusion")
        x1 = min(x0 + slab, nx)
        pts = grid.points((x0, 0, 0), (x1, ny, nz))
        todo = occupancy.contains(pts) if occupancy is not None else np.ones(len(pts), dtype=bool)
        if not todo.any():
            continue
        values = np.ones(len(pts), dtype=np.float32)
        values[todo] = fuse_points(torch.from_numpy(pts[todo]), views, trunc, opacity_threshold).numpy()
        tsdf[x0:x1] = values.reshape(x1 - x0, ny, nz)
    return tsdf


def tsdf_mesh(grid: VoxelGrid, views: list[ViewRender], opacity_threshold: float = 0.5,
              trunc_voxels: float = 4.0, occupancy: Occupancy | None = None, chunk: int = 96,
              should_stop: StopFn = never_stop) -> tuple[trimesh.Trimesh, dict]:
    """Fuse the views' depth into a TSDF over `grid` (truncation trunc_voxels * voxel) and mesh its zero
    level. Returns the mesh (input frame) and a dict {truncation, voxel, grid_shape}."""
    trunc = trunc_voxels * grid.voxel
    tsdf = fuse_tsdf(grid, views, trunc, opacity_threshold, occupancy, should_stop)

    def sample(lo, hi):
        block = tsdf[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        return None if block.min() > 0 else -block   # inside is where -tsdf > 0

    mesh = marching_cubes_chunked(grid, sample, 0.0, chunk, should_stop)
    return mesh, {"truncation": trunc, "voxel": grid.voxel, "grid_shape": list(grid.shape)}
