"""Mesh-to-mesh Chamfer distance for checking exports against ground truth (built on core.functional.metrics)."""

from __future__ import annotations

import trimesh

from core.functional.metrics import chamfer_distance, sample_mesh_points


def mesh_chamfer(mesh: trimesh.Trimesh, reference: trimesh.Trimesh, samples: int = 30_000, seed: int = 0
                 ) -> float:
    """Symmetric mean Chamfer distance (input-frame units) between `samples` points drawn uniformly on
    each surface; inf if `mesh` has no faces."""
    if len(mesh.faces) == 0:
        return float("inf")
    return chamfer_distance(sample_mesh_points(mesh, samples, seed),
                            sample_mesh_points(reference, samples, seed + 1))[0]
