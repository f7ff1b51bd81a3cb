"""TSDF fusion (Curless & Levoy 1996) of rendered depth maps, then marching cubes at zero.

For every voxel and camera: sdf = depth(pixel) - z(voxel) (z-depth, input-frame units), truncated to
[-trunc, trunc] and divided by trunc; the running weighted mean over cameras is the TSDF. Voxels far
behind the surface (sdf < -trunc) are not updated; pixels with no surface (opacity below the threshold)
carve free space (+1). Voxels no camera updated are inside (-1) if some camera saw them behind a
surface, else outside (+1). Voxels outside the (dilated) occupancy grid are outside without any work.
Faces in cells with a corner no camera updated are dropped: there the zero crossing is between guesses
(e.g. the solid block "behind" a ground plane that no view sees from below), not measured.
"""

from __future__ import annotations

import numpy as np
import torch
import trimesh

from core.errors import Cancelled
from core.export.grid import Occupancy, VoxelGrid
from core.export.marching import marching_cubes_chunked
from core.export.mesh_clean import submesh
from core.export.renders import ViewRender
from core.functional.projection import project_to_pixels, sample_nearest
from core.progress import StopFn, never_stop

SLAB_VOXELS = 1 << 21


def fuse_points(points: torch.Tensor, views: list[ViewRender], trunc: float, opacity_threshold: float
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """TSDF of (N, 3) float64 input-frame points from the views' depth maps.

    Returns values (N,) float32 in [-1, 1] and observed (N,) bool (some camera updated the point).
    """
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
    return torch.where(weight > 0, acc / weight.clamp(min=1), empty), weight > 0


def fuse_tsdf(grid: VoxelGrid, views: list[ViewRender], trunc: float, opacity_threshold: float,
              occupancy: Occupancy | None = None, should_stop: StopFn = never_stop) -> tuple[np.ndarray, np.ndarray]:
    """The TSDF volume over `grid`, built in x-slabs: (X, Y, Z) float32 in [-1, 1], negative inside, and
    (X, Y, Z) bool, True where measured (a camera updated it, or the occupancy grid says empty)."""
    nx, ny, nz = grid.shape
    tsdf = np.ones(grid.shape, dtype=np.float32)
    observed = np.ones(grid.shape, dtype=bool)
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
        seen = np.ones(len(pts), dtype=bool)
        fused, measured = fuse_points(torch.from_numpy(pts[todo]), views, trunc, opacity_threshold)
        values[todo], seen[todo] = fused.numpy(), measured.numpy()
        tsdf[x0:x1] = values.reshape(x1 - x0, ny, nz)
        observed[x0:x1] = seen.reshape(x1 - x0, ny, nz)
    return tsdf, observed


def measured_cells(observed: np.ndarray) -> np.ndarray:
    """(X-1, Y-1, Z-1) bool: cells whose 8 corner voxels are all measured. observed: (X, Y, Z) bool."""
    ok = observed[:-1, :-1, :-1].copy()
    for dx, dy, dz in np.ndindex(2, 2, 2):
        ok &= observed[dx:dx + ok.shape[0], dy:dy + ok.shape[1], dz:dz + ok.shape[2]]
    return ok


def tsdf_mesh(grid: VoxelGrid, views: list[ViewRender], opacity_threshold: float = 0.5,
              trunc_voxels: float = 4.0, occupancy: Occupancy | None = None, chunk: int = 96,
              should_stop: StopFn = never_stop) -> tuple[trimesh.Trimesh, dict]:
    """Fuse the views' depth into a TSDF over `grid` (truncation trunc_voxels * voxel) and mesh its zero
    level. Returns the mesh (input frame) and a dict {truncation, voxel, grid_shape}."""
    trunc = trunc_voxels * grid.voxel
    tsdf, observed = fuse_tsdf(grid, views, trunc, opacity_threshold, occupancy, should_stop)

    def sample(lo, hi):
        block = tsdf[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        return None if block.min() > 0 else -block   # inside is where -tsdf > 0

    mesh = marching_cubes_chunked(grid, sample, 0.0, chunk, should_stop)
    if len(mesh.faces):
        cells = measured_cells(observed)
        idx = np.floor((mesh.triangles_center - grid.origin) / grid.voxel).astype(np.int64)
        idx = np.clip(idx, 0, np.array(cells.shape) - 1)
        mesh = submesh(mesh, cells[idx[:, 0], idx[:, 1], idx[:, 2]])
    return mesh, {"truncation": trunc, "voxel": grid.voxel, "grid_shape": list(grid.shape)}
