"""Mesh by marching cubes on the field's density, over the occupied part of the region of interest.

Level rule ("rendered surface"): the renderer's surface is where transmittance crosses 0.5, which is
the median depth. So we back-project the median depth of fully opaque pixels (opacity >= 0.95) of the
capture's cameras, query the density there, and take the median of those densities as the iso-level.
The level therefore follows the field's own density scale (nothing hard-coded) and the mesh agrees with
the rendered depth maps. Fallback when no pixel is opaque: the density whose alpha over one voxel step
is 0.5, sigma = ln 2 / (voxel size in field units).
"""

from __future__ import annotations

import numpy as np
import trimesh

from core.export.grid import Occupancy, VoxelGrid, grid_over_box
from core.export.marching import ChunkSampler, marching_cubes_chunked
from core.export.renders import ViewRender
from core.export.scene_api import SceneLike
from core.functional.projection import backproject_depth
from core.progress import StopFn, never_stop

QUERY_BATCH = 1 << 18


def mesh_box(scene: SceneLike) -> tuple[np.ndarray, np.ndarray]:
    """(3,), (3,) input-frame box to mesh: the occupied bbox clipped to the region of interest (the field's
    unit box mapped back to the input frame), so contracted far-away space is never meshed."""
    lo, hi = (np.asarray(b, dtype=np.float64) for b in scene.occupied_bbox_world())
    norm = scene.normalization
    centre, half = np.asarray(norm.center), 1.0 / norm.scale
    lo, hi = np.maximum(lo, centre - half), np.minimum(hi, centre + half)
    if np.any(hi <= lo):  # nothing occupied inside the ROI: mesh the ROI itself
        lo, hi = centre - half, centre + half
    return lo, hi


def query_density_batched(scene: SceneLike, points_world: np.ndarray, batch: int = QUERY_BATCH) -> np.ndarray:
    """points_world: (N, 3) float64 input frame -> (N,) float32 density, queried `batch` points at a time."""
    out = np.empty(len(points_world), dtype=np.float32)
    for s in range(0, len(points_world), batch):
        out[s:s + batch] = scene.query_density(points_world[s:s + batch])
    return out


def density_sampler(scene: SceneLike, grid: VoxelGrid, occupancy: Occupancy | None) -> ChunkSampler:
    """Chunk sampler of the density; chunks with no occupied cell return None without querying the field."""

    def sample(lo, hi):
        box_lo = grid.origin + np.asarray(lo) * grid.voxel
        box_hi = grid.origin + (np.asarray(hi) - 1) * grid.voxel
        if occupancy is not None and not occupancy.any_in_box(box_lo, box_hi):
            return None
        pts = grid.points(lo, hi)
        return query_density_batched(scene, pts).reshape(tuple(h - l for l, h in zip(lo, hi, strict=True)))

    return sample


def surface_level(scene: SceneLike, views: list[ViewRender], min_opacity: float = 0.95,
                  max_points: int = 200_000, seed: int = 0) -> float | None:
    """Median density at the median-depth points of opaque pixels (see the module doc); None if none."""
    pts = []
    for v in views:
        ok = (v.opacity >= min_opacity) & np.isfinite(v.depth_median) & (v.depth_median > 0)
        if ok.any():
            pts.append(backproject_depth(np.where(ok, v.depth_median, np.nan), v.c2w, v.intrinsics)[ok])
    if not pts:
        return None
    pts = np.concatenate(pts)
    if len(pts) > max_points:
        pts = pts[np.random.default_rng(seed).choice(len(pts), max_points, replace=False)]
    return float(np.median(query_density_batched(scene, pts)))


def alpha_level(voxel_world: float, scene: SceneLike) -> float:
    """Density whose alpha over one voxel step is 0.5 (density per field-frame unit)."""
    return float(np.log(2.0) / (voxel_world * scene.normalization.scale))


def density_mesh(scene: SceneLike, views: list[ViewRender], resolution: int, occupancy: Occupancy | None,
                 level: float | None = None, chunk: int = 96, should_stop: StopFn = never_stop
                 ) -> tuple[trimesh.Trimesh, dict]:
    """Marching-cubes mesh of the density (input frame) and a dict {level, level_rule, voxel, grid_shape}.

    views: renders of the capture's cameras (for the level rule); level: override the rule.
    """
    grid = grid_over_box(*mesh_box(scene), resolution)
    rule = "given"
    if level is None:
        level, rule = surface_level(scene, views), "median density at the rendered median-depth surface"
    if level is None or not np.isfinite(level) or level <= 0:
        level, rule = alpha_level(grid.voxel, scene), "alpha over one voxel = 0.5"
    mesh = marching_cubes_chunked(grid, density_sampler(scene, grid, occupancy), level, chunk, should_stop)
    return mesh, {"level": level, "level_rule": rule, "voxel": grid.voxel, "grid_shape": list(grid.shape)}
