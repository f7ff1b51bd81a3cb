"""Marching cubes over a chunked grid: the volume never has to exist whole, empty chunks are skipped."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import trimesh
from skimage.measure import marching_cubes

from core.errors import Cancelled
from core.export.grid import VoxelGrid, iter_chunks
from core.progress import StopFn, never_stop

# sample(lo, hi) -> (hi - lo) float32 values over grid indices [lo, hi), "inside" where value > level;
# or None when the chunk is known to be empty.
ChunkSampler = Callable[[tuple[int, ...], tuple[int, ...]], "np.ndarray | None"]


def marching_cubes_chunked(grid: VoxelGrid, sample: ChunkSampler, level: float, chunk: int = 96,
                           should_stop: StopFn = never_stop) -> trimesh.Trimesh:
    """Extract the surface {value == level} with inside = {value > level}, chunk by chunk.

    The grid's outermost samples are treated as outside, so the surface is closed at the grid's edge.
    Chunks share their boundary samples, and their vertices are welded afterwards.
    Returns a mesh in the input frame (vertices (V, 3) float64), faces wound outward.
    """
    verts, faces, count = [], [], 0
    shape = np.array(grid.shape)
    for lo, hi in iter_chunks(grid.shape, chunk):
        if should_stop():
            raise Cancelled("export cancelled during marching cubes")
        values = sample(lo, hi)
        if values is None or min(values.shape) < 2:
            continue
        values = np.array(values, dtype=np.float32, copy=True)
        for a in range(3):  # close the surface at the grid's outer faces
            sl = [slice(None)] * 3
            if lo[a] == 0:
                sl[a] = 0
                values[tuple(sl)] = np.minimum(values[tuple(sl)], level - 1.0)
            if hi[a] == shape[a]:
                sl[a] = -1
                values[tuple(sl)] = np.minimum(values[tuple(sl)], level - 1.0)
        if not (values.max() > level > values.min()):
            continue
        v, f, _, _ = marching_cubes(values, level=level, gradient_direction="ascent")
        verts.append(grid.origin + (v + np.asarray(lo)) * grid.voxel)
        faces.append(f + count)
        count += len(v)
    if not verts:
        return trimesh.Trimesh(np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64), process=False)
    mesh = trimesh.Trimesh(np.concatenate(verts), np.concatenate(faces), process=False)
    mesh.merge_vertices(digits_vertex=int(max(0, -np.floor(np.log10(grid.voxel * 1e-4)))))
    mesh.update_faces(mesh.nondegenerate_faces())
    mesh.remove_unreferenced_vertices()
    return mesh
