"""Foreground / background composition (GIRAFFE's operator, core.fields.compose) applied to a capture:
the foreground box in the input frame, the support plane (ground, table top, wall) cut off the foreground so
the background field carries it, and one part of a composed scene as a density for the mesh exporter."""

from __future__ import annotations

import numpy as np
import torch
import trimesh

from core.errors import UserInputError
from core.fields.compose import ComposedField
from core.functional.projection import backproject_depth
from core.scene.capture import Capture, SceneNormalization, compute_normalization, half_fov
from core.scene.trained import TrainedScene

PLANE_TOLERANCES = (0.01, 0.02)  # support-plane inlier distances tried, as fractions of the foreground box diagonal
PLANE_SIDE = 64               # training views are rendered at this side to find the support plane


def default_foreground_box(capture: Capture) -> tuple[np.ndarray, np.ndarray]:
    """The region the cameras look at, as an input-frame box (min (3,), max (3,) float64): the ROI of a
    bounded ("object") normalisation of the capture, whatever the capture's own mode."""
    roi = compute_normalization(capture.c2w, "bounded", fov_half=half_fov(capture.intrinsics))
    centre, half = np.asarray(roi.center), 1.0 / roi.scale
    return centre - half, centre + half


def set_foreground_box(field: ComposedField, norm: SceneNormalization, box_world: tuple[np.ndarray, np.ndarray]
                       ) -> None:
    """Move a composed field's foreground box to `box_world` (min (3,), max (3,) input frame)."""
    lo, hi = (norm.to_field(np.asarray(b, dtype=np.float64)) for b in box_world)
    if np.any(hi <= lo):
        raise UserInputError("roi_box_empty", f"the foreground box {list(box_world[0])} .. {list(box_world[1])} "
                             "is empty.", "Give the box as (min corner, max corner) in the input frame.")
    field.set_region(lo.tolist(), hi.tolist())


def fit_support_plane(points: np.ndarray, cameras: np.ndarray, tol: float, min_fraction: float = 0.15,
                      min_camera_fraction: float = 0.95, iters: int = 512, seed: int = 0) -> np.ndarray | None:
    """The dominant support plane (ground, table top, wall) among surface points: RANSAC, then least squares
    on the inliers.

    A support is seen from one side only, so a candidate plane counts only when at least min_camera_fraction
    of the cameras lie on one side of it (that side is kept); a plane through an object the cameras circle
    fails this. And what a support holds stands in front of it: a candidate scores its inliers minus the
    points more than 2 tol behind it, so a flat part of the subject (a plane through it that every camera
    happens to see from one side, with the wall behind it) loses to the wall even when it holds more points
    (the fox: a plane through the head and the shield's base held more of the feature field's points than its
    noisy wall). The best must hold min_fraction of the points, and only one plane is cut (with a table top and
    a wall, whatever lies below the table top, such as the lower wall or the floor, counts against it).

    points: (N, 3) float64 surface points, any frame; cameras: (C, 3) float64 camera centres, same frame;
    tol: inlier distance, same units. Returns [nx, ny, nz, d] (float64, n unit, pointing to the cameras' side:
    the points kept are n . x >= d), shifted towards the cameras by 3 standard deviations of the inliers'
    residuals (at least tol), so that the plane's own surface lies behind it; or None.
    """
    if len(points) < 3 or len(cameras) == 0:
        return None
    rng = np.random.default_rng(seed)
    best, best_count, best_score = None, 0, 0
    for _ in range(iters):
        a, b, c = points[rng.choice(len(points), 3, replace=False)]
        n = np.cross(b - a, c - a)
        norm = np.linalg.norm(n)
        if norm < 1e-12:
            continue
        n, d = oriented_plane(n / norm, n @ a / norm, cameras)
        if np.mean(cameras @ n > d) < min_camera_fraction:
            continue
        h = points @ n - d
        count = int((np.abs(h) < tol).sum())
        score = count - int((h < -2.0 * tol).sum())
        if score > best_score:
            best, best_count, best_score = (n, d), count, score
    if best is None or best_count < min_fraction * len(points):
        return None
    inliers = points[np.abs(points @ best[0] - best[1]) < tol]
    centre = inliers.mean(0)
    n = np.linalg.svd(inliers - centre)[2][-1]
    n, d = oriented_plane(n, n @ centre, cameras)
    d = d + max(3.0 * (inliers @ n - d).std(), tol)
    if np.mean(cameras @ n > d) < min_camera_fraction:        # the refit or the shift moved it past cameras
        return None
    return np.array([*n, d])


def oriented_plane(n: np.ndarray, d: float, cameras: np.ndarray) -> tuple[np.ndarray, float]:
    """The plane n . x = d (n: (3,) unit) with its normal flipped, if need be, to the side that holds most
    of `cameras` (C, 3), same frame."""
    if np.mean(cameras @ n > d) < 0.5:
        n, d = -n, -d
    return n, float(d)


def find_support_plane(scene: TrainedScene, indices: list[int], tol_fractions: tuple[float, ...] = PLANE_TOLERANCES
                       ) -> np.ndarray | None:
    """The support plane (ground, table top, wall) of a composed field's foreground, in the field frame.

    Renders the capture cameras `indices` at PLANE_SIDE px (depth from a ray at every pixel), keeps the
    opaque surface points inside the foreground box and fits `support_plane_of_points` with tolerances of
    tol_fractions x the box diagonal.
    Returns [nx, ny, nz, d] (field frame) or None.
    """
    field = scene.model.field
    lo, hi = field.box_min.cpu().numpy().astype(np.float64), field.box_max.cpu().numpy().astype(np.float64)
    pts = []
    for i in indices:
        k = scene.intrinsics[i]
        scale = min(1.0, PLANE_SIDE / max(k.width, k.height))
        k = k.scaled(max(1, round(k.width * scale)), max(1, round(k.height * scale)))
        r = scene.render(scene.c2w[i], k, exact_depth=True)   # a feature field's depth at every pixel
        ok = r.opacity >= 0.9
        if ok.any():
            pts.append(scene.normalization.to_field(backproject_depth(r.depth_median, scene.c2w[i], k)[ok]))
    if not pts:
        return None
    pts = np.concatenate(pts)
    pts = pts[((pts >= lo) & (pts <= hi)).all(1)]
    cameras = scene.normalization.to_field(np.asarray(scene.c2w)[:, :3, 3])
    diagonal = float(np.linalg.norm(hi - lo))
    return support_plane_of_points(pts, cameras, [f * diagonal for f in tol_fractions])


def support_plane_of_points(points: np.ndarray, cameras: np.ndarray, tols: list[float]) -> np.ndarray | None:
    """`fit_support_plane` at each tolerance of `tols` in turn (finest first): the first plane found, or None.

    A field's surface is a thin shell in a well-fitted NeRF but can be a band a few times thicker early in
    training (the feature field on the fox capture: its wall was a 2-3% deep band at the plane search) that
    holds too few points within the finest tolerance; a coarser one then finds it, and its plane is shifted
    further towards the cameras (by 3 standard deviations of its wider inliers). The finer tolerance is tried
    first so that a sharp surface keeps its tight cut. points, cameras as fit_support_plane; tols: same units.
    """
    for tol in tols:
        plane = fit_support_plane(points, cameras, tol)
        if plane is not None:
            return plane
    return None


def foreground_region_world(field: ComposedField, norm: SceneNormalization) -> dict:
    """The foreground region in the input frame: {"box_min", "box_max": (3,) lists, "plane": [nx, ny, nz, d]
    (points with n . x >= d are kept) or None}."""
    lo, hi = (norm.to_world(b.detach().cpu().numpy().astype(np.float64)) for b in (field.box_min, field.box_max))
    if not field.has_plane:
        return {"box_min": lo.tolist(), "box_max": hi.tolist(), "plane": None}
    plane = field.plane.detach().cpu().numpy().astype(np.float64)
    # n . x_field >= d with x_field = (x - c) s  <=>  n . x >= d / s + n . c
    d_world = plane[3] / norm.scale + plane[:3] @ np.asarray(norm.center)
    return {"box_min": lo.tolist(), "box_max": hi.tolist(), "plane": [*plane[:3].tolist(), float(d_world)]}


@torch.no_grad()
def density_of_part(scene: TrainedScene, points_world: np.ndarray, part: str, chunk: int = 1 << 18) -> np.ndarray:
    """points_world: (N, 3) float64 input frame -> (N,) float32 density (per field-frame unit) of one part
    ("all", "foreground", "background") of a scene whose field is a ComposedField (NeRF or feature field).
    Raises UserInputError for a part other than "all" on a single field."""
    field = scene.model.field
    if not isinstance(field, ComposedField):
        if part == "all":
            return scene.query_density(points_world, chunk)
        raise UserInputError("mesh_part_needs_composition", f"mesh part {part!r} needs a model trained with "
                             "composition on; this one has a single field.",
                             "Use --mesh-part all, or retrain with --composition on.")
    scene.model.eval()
    pts = torch.from_numpy(scene.normalization.to_field(np.asarray(points_world).reshape(-1, 3))).float()
    out = np.zeros(len(pts), np.float32)
    for start in range(0, len(pts), chunk):
        d = field.density(pts[start:start + chunk].to(scene.device), part=part)
        out[start:start + len(d)] = d.float().cpu().numpy()
    return out


def crop_to_foreground(mesh: trimesh.Trimesh, scene: TrainedScene) -> trimesh.Trimesh:
    """The faces of `mesh` (input frame) whose vertices all lie in the scene's foreground region: inside
    its box and on the cameras' side of its support plane (scene.metrics["foreground_region"],
    `foreground_region_world`). Raises UserInputError for a scene trained without composition."""
    region = scene.metrics.get("foreground_region") if isinstance(scene.model.field, ComposedField) else None
    if region is None:
        raise UserInputError("mesh_part_needs_composition", "mesh part 'foreground' needs a model trained with "
                             "composition on; this one has a single field.",
                             "Use --mesh-part all, or retrain with --composition on.")
    v = np.asarray(mesh.vertices)
    keep = ((v >= np.asarray(region["box_min"])) & (v <= np.asarray(region["box_max"]))).all(1)
    if region["plane"] is not None:
        keep &= v @ np.asarray(region["plane"][:3]) >= region["plane"][3]
    mesh = mesh.copy()
    mesh.update_faces(keep[mesh.faces].all(1))
    mesh.remove_unreferenced_vertices()
    return mesh


class PartScene:
    """What the mesh exporter needs (core.export.scene_api.SceneLike) from one part of a composed scene:
    `query_density` and the occupied bounds are the part's (the foreground box for "foreground"); rendering,
    cameras and everything else are the whole scene's. Mesh with the whole scene's iso-level."""

    def __init__(self, scene: TrainedScene, part: str) -> None:
        self.scene, self.part = scene, part
        if part != "all":
            density_of_part(scene, np.zeros((1, 3)), part)     # fails early for a single field

    def __getattr__(self, name: str):
        return getattr(self.scene, name)

    def query_density(self, points_world: np.ndarray, chunk: int = 1 << 18) -> np.ndarray:
        """points_world: (N, 3) float64 input frame -> (N,) float32 density of this part."""
        return density_of_part(self.scene, points_world, self.part, chunk)

    def occupied_bbox_world(self) -> tuple[np.ndarray, np.ndarray]:
        """(3,), (3,) float64 input-frame bounds: the scene's occupied box, within the foreground box."""
        lo, hi = self.scene.occupied_bbox_world()
        if self.part == "foreground":
            region = foreground_region_world(self.scene.model.field, self.scene.normalization)
            lo, hi = np.maximum(lo, region["box_min"]), np.minimum(hi, region["box_max"])
        return lo, hi
