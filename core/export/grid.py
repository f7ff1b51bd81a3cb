"""Regular sample grids over a box of the input frame, chunked so large grids fit in memory, and
lookups into the scene's occupancy grid to skip empty chunks."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import binary_dilation


@dataclass(frozen=True)
class VoxelGrid:
    """Sample points origin + index * voxel, index in [0, shape) per axis (x, y, z of the input frame).

    origin: (3,) float64 input frame; voxel: sample spacing, input-frame units (the same on every axis).
    """

    origin: np.ndarray
    voxel: float
    shape: tuple[int, int, int]

    def points(self, lo: tuple[int, int, int], hi: tuple[int, int, int]) -> np.ndarray:
        """(nx*ny*nz, 3) float64 input-frame positions of indices lo <= i < hi, C order (x slowest)."""
        axes = [self.origin[a] + np.arange(lo[a], hi[a]) * self.voxel for a in range(3)]
        return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)


def grid_over_box(bmin: np.ndarray, bmax: np.ndarray, resolution: int, pad: int = 2) -> VoxelGrid:
    """A grid with `resolution` samples along the box's longest side and cubic voxels, padded by `pad`
    samples on every side. bmin, bmax: (3,) input frame."""
    bmin, bmax = np.asarray(bmin, dtype=np.float64), np.asarray(bmax, dtype=np.float64)
    voxel = float((bmax - bmin).max()) / max(resolution - 1, 1)
    counts = np.ceil((bmax - bmin) / voxel).astype(int) + 1 + 2 * pad
    return VoxelGrid(bmin - pad * voxel, voxel, tuple(int(c) for c in counts))


def iter_chunks(shape: tuple[int, int, int], chunk: int) -> Iterator[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Index boxes [lo, hi) covering the grid with cells of `chunk` cubes that share their boundary
    samples with the next chunk (hi = lo + chunk + 1), so marching cubes over the chunks covers every cube."""
    starts = [range(0, max(n - 1, 1), chunk) for n in shape]
    for i in starts[0]:
        for j in starts[1]:
            for k in starts[2]:
                lo = (i, j, k)
                yield lo, tuple(min(lo[a] + chunk + 1, shape[a]) for a in range(3))


@dataclass(frozen=True)
class Occupancy:
    """Occupancy grid: occupied (R, R, R) bool indexed [ix, iy, iz] over the box [bmin, bmax] (3,) input frame."""

    occupied: np.ndarray
    bmin: np.ndarray
    bmax: np.ndarray

    def _cells(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        r = np.array(self.occupied.shape)
        idx = np.floor((points - self.bmin) / (self.bmax - self.bmin) * r).astype(np.int64)
        inside = np.all((idx >= 0) & (idx < r), axis=-1)
        return np.clip(idx, 0, r - 1), inside

    def any_in_box(self, lo: np.ndarray, hi: np.ndarray) -> bool:
        """True if an occupied cell meets the box [lo, hi] ((3,) each, input frame)."""
        if np.any(hi < self.bmin) or np.any(lo > self.bmax):
            return False
        idx, _ = self._cells(np.stack([lo, hi]))
        return bool(self.occupied[idx[0, 0]:idx[1, 0] + 1, idx[0, 1]:idx[1, 1] + 1, idx[0, 2]:idx[1, 2] + 1].any())

    def contains(self, points: np.ndarray) -> np.ndarray:
        """(N,) bool: point (N, 3) (input frame) lies in an occupied cell."""
        idx, inside = self._cells(points)
        return inside & self.occupied[idx[:, 0], idx[:, 1], idx[:, 2]]


def scene_occupancy(occupancy: tuple[np.ndarray, np.ndarray, np.ndarray], dilate: int = 1) -> Occupancy:
    """Occupancy from `scene.occupancy_world()`'s (occupied, bmin, bmax), grown by `dilate` cells so that
    surfaces at a cell's edge are not cut off."""
    occupied, bmin, bmax = occupancy
    occupied = np.asarray(occupied, dtype=bool)
    if dilate > 0:
        occupied = binary_dilation(occupied, iterations=dilate)
    return Occupancy(occupied, np.asarray(bmin, dtype=np.float64), np.asarray(bmax, dtype=np.float64))
