"""Mesh clean-up: keep the large connected components, drop faces no training camera sees, decimate."""

from __future__ import annotations

import numpy as np
import torch
import trimesh

from core.export.renders import ViewRender
from core.export.visibility import seen_at_surface
from core.functional.cameras import Intrinsics
from core.functional.projection import project_to_pixels


def keep_large_components(mesh: trimesh.Trimesh, min_ratio: float) -> trimesh.Trimesh:
    """Keep the connected components with at least `min_ratio` times the largest one's face count
    (so the main objects stay and small floaters go). min_ratio <= 0 keeps everything."""
    if len(mesh.faces) == 0 or min_ratio <= 0:
        return mesh
    labels = trimesh.graph.connected_component_labels(mesh.face_adjacency, node_count=len(mesh.faces))
    counts = np.bincount(labels)
    keep = counts >= min_ratio * counts.max()
    return submesh(mesh, keep[labels])


def submesh(mesh: trimesh.Trimesh, face_mask: np.ndarray) -> trimesh.Trimesh:
    """The faces where face_mask (F,) bool is True, with unreferenced vertices (and their colours) removed."""
    out = mesh.copy()
    out.update_faces(np.asarray(face_mask, dtype=bool))
    out.remove_unreferenced_vertices()
    return out


def seen_by_any_camera(points_world: np.ndarray, c2w: np.ndarray, intrinsics: list[Intrinsics]) -> np.ndarray:
    """(N,) bool: the point (N, 3) input frame projects inside the image, in front of at least one camera.

    c2w: (C, 4, 4) float64 input frame; intrinsics: C entries.
    """
    pts = torch.from_numpy(np.array(points_world, dtype=np.float64))
    seen = torch.zeros(len(pts), dtype=torch.bool)
    for pose, k in zip(c2w, intrinsics, strict=True):
        uv, z = project_to_pixels(pts, pose, k)
        seen |= (z > 0) & (uv[:, 0] >= 0) & (uv[:, 0] <= k.width) & (uv[:, 1] >= 0) & (uv[:, 1] <= k.height)
    return seen.numpy()


def cull_outside_frusta(mesh: trimesh.Trimesh, c2w: np.ndarray, intrinsics: list[Intrinsics]) -> trimesh.Trimesh:
    """Drop faces whose centroid no camera (c2w (C, 4, 4), input frame) sees."""
    if len(mesh.faces) == 0:
        return mesh
    return submesh(mesh, seen_by_any_camera(mesh.triangles_center, c2w, intrinsics))


def cull_unseen(mesh: trimesh.Trimesh, views: list[ViewRender], opacity_threshold: float, abs_tol: float,
                rel_tol: float = 0.02) -> trimesh.Trimesh:
    """Drop faces no rendered camera sees as its surface (z-buffer test of the face centroid against the
    rendered depth, tolerance abs_tol + rel_tol * depth): removes the unconstrained density behind and
    under observed surfaces (e.g. below a ground plane) that no view ever checked."""
    if len(mesh.faces) == 0:
        return mesh
    return submesh(mesh, seen_at_surface(mesh.triangles_center, views, opacity_threshold, abs_tol, rel_tol))


def cluster_decimate(mesh: trimesh.Trimesh, face_budget: int) -> trimesh.Trimesh:
    """Vertex-clustering decimation to at most `face_budget` faces (no extra dependency).

    Vertices are snapped to a grid whose cell is found by bisection; each cell's vertices merge into
    their mean, and collapsed or duplicate faces are dropped.
    """
    v, f = np.asarray(mesh.vertices), np.asarray(mesh.faces)

    def collapse(cell: float) -> tuple[np.ndarray, np.ndarray]:
        _, inverse, counts = np.unique(np.floor(v / cell).astype(np.int64), axis=0, return_inverse=True,
                                       return_counts=True)
        inverse = inverse.reshape(-1)
        verts = np.zeros((len(counts), 3))
        np.add.at(verts, inverse, v)
        faces = inverse[f]
        ok = (faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])
        faces = faces[ok]
        _, first = np.unique(np.sort(faces, axis=1), axis=0, return_index=True)
        return verts / counts[:, None], faces[np.sort(first)]

    lo = float(np.mean(mesh.edges_unique_length)) * 0.5
    hi = lo
    while len(collapse(hi)[1]) > face_budget:
        hi *= 2
    for _ in range(12):
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if len(collapse(mid)[1]) <= face_budget else (mid, hi)
    verts, faces = collapse(hi)
    out = trimesh.Trimesh(verts, faces, process=False)
    out.remove_unreferenced_vertices()
    return out


def decimate(mesh: trimesh.Trimesh, face_budget: int | None) -> trimesh.Trimesh:
    """Reduce to at most `face_budget` faces: quadric decimation when `fast_simplification` is installed,
    otherwise vertex clustering. Vertex colours are dropped (colour after decimating)."""
    if face_budget is None or len(mesh.faces) <= face_budget:
        return mesh
    try:
        import fast_simplification  # noqa: F401

        out = mesh.simplify_quadric_decimation(face_count=int(face_budget))
    except ImportError:
        out = cluster_decimate(mesh, int(face_budget))
    return trimesh.Trimesh(out.vertices, out.faces, process=False)
