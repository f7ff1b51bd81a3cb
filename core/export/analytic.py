"""An analytic stand-in for a trained scene: a sphere and a box with a closed-form density.

It has the attributes and methods of `core.scene.TrainedScene` that exports use (see
`core.export.scene_api.SceneLike`), so the export geometry (frames, marching-cubes level, TSDF fusion,
back-projection, z-depth vs ray distance, the input-frame transform) can be tested and benchmarked
without training a NeRF. It also gives the ground truth (mesh, z-depth by sphere tracing).

The objects live in a canonical frame; the input ("world") frame is a similarity transform of it:
x_world = s * R @ x_canon + t. The field frame is x_field = (x_world - t) / s = R @ x_canon, so field
and canonical distances agree and the density is per unit of either. The density is VolSDF's
Laplace-CDF density of the signed distance: sigma = Psi_beta(-sdf) / beta.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import trimesh

from core.cameras import Intrinsics
from core.capture import FrameInfo, SceneNormalization
from core.export.paths import look_at
from core.rays import camera_rays

SPHERE_CENTER = (-0.35, 0.0, 0.0)
SPHERE_RADIUS = 0.28
BOX_CENTER = (0.35, 0.0, 0.05)
BOX_HALF = (0.18, 0.25, 0.18)
FLOATER_CENTER = (0.0, 0.45, 0.35)
FLOATER_RADIUS = 0.035


@dataclass
class AnalyticRender:
    """Same fields as the engine's RenderResult (see core.export.scene_api.RenderLike)."""

    rgb: np.ndarray
    depth: np.ndarray
    depth_median: np.ndarray
    opacity: np.ndarray


def similarity_matrix(scale: float, rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """(4, 4) float64 matrix of x -> scale * rotation @ x + translation."""
    m = np.eye(4)
    m[:3, :3] = scale * np.asarray(rotation, dtype=np.float64)
    m[:3, 3] = np.asarray(translation, dtype=np.float64)
    return m


def orbit_cameras(n_views: int, size: int, radius: float = 2.4, fov_deg: float = 40.0
                  ) -> tuple[np.ndarray, Intrinsics]:
    """Cameras on a Fibonacci spiral of the upper 3/4 sphere, looking at the origin, z up.

    Returns c2w (n, 4, 4) float64 canonical frame (OpenCV axes) and one square Intrinsics.
    """
    i = np.arange(n_views) + 0.5
    z = 1.0 - 1.5 * i / n_views           # from near the top down to z = -0.5
    phi = np.pi * (3.0 - np.sqrt(5.0)) * i
    r_xy = np.sqrt(1 - z * z)
    eyes = radius * np.stack([r_xy * np.cos(phi), r_xy * np.sin(phi), z], axis=1)
    c2w = np.stack([look_at(e, np.zeros(3), np.array([0.0, 0.0, 1.0])) for e in eyes])
    f = 0.5 * size / np.tan(np.deg2rad(fov_deg) / 2)
    return c2w, Intrinsics(f, f, size / 2, size / 2, size, size)


def _sdf_box(p: torch.Tensor, center, half) -> torch.Tensor:
    q = (p - p.new_tensor(center)).abs() - p.new_tensor(half)
    outside = q.clamp(min=0).norm(dim=-1)
    inside = q.max(dim=-1).values.clamp(max=0)
    return outside + inside


def _sdf_sphere(p: torch.Tensor, center, radius: float) -> torch.Tensor:
    return (p - p.new_tensor(center)).norm(dim=-1) - radius


class AnalyticScene:
    """Sphere + box (+ optional small floater) seen by an orbit of cameras; a TrainedScene stand-in.

    similarity: (4, 4) float64 canonical -> input frame (scale * rotation, translation), default identity.
    beta: sharpness of the density, canonical units. samples: quadrature samples per ray.
    """

    def __init__(self, n_views: int = 24, size: int = 64, similarity: np.ndarray | None = None,
                 beta: float = 0.01, samples: int = 256, floater: bool = False, units: str = "arbitrary"):
        self.sim = np.eye(4) if similarity is None else np.asarray(similarity, dtype=np.float64)
        self.sim_scale = float(np.cbrt(np.linalg.det(self.sim[:3, :3])))
        self.sim_rot = self.sim[:3, :3] / self.sim_scale
        self.beta, self.samples, self.floater = beta, samples, floater
        cams, intr = orbit_cameras(n_views, size)
        self.c2w = np.stack([self._canon_pose_to_world(c) for c in cams])
        self.intrinsics = [intr] * n_views
        self.names = [f"v_{i:03d}" for i in range(n_views)]
        self.test_indices = list(range(0, n_views, 8))
        self.train_indices = [i for i in range(n_views) if i not in self.test_indices]
        self.frame = FrameInfo(units=units, description="analytic stand-in frame")
        self.normalization = SceneNormalization(tuple(self.sim[:3, 3]), 1.0 / self.sim_scale, "bounded")
        self.metrics: dict = {}

    # ---- frames -------------------------------------------------------------------------------------
    def _canon_pose_to_world(self, c2w_canon: np.ndarray) -> np.ndarray:
        out = np.eye(4)
        out[:3, :3] = self.sim_rot @ c2w_canon[:3, :3]
        out[:3, 3] = self.sim[:3, :3] @ c2w_canon[:3, 3] + self.sim[:3, 3]
        return out

    def to_canonical(self, points_world: np.ndarray) -> np.ndarray:
        """(N, 3) input frame -> (N, 3) canonical frame."""
        return (np.asarray(points_world, dtype=np.float64) - self.sim[:3, 3]) @ self.sim_rot / self.sim_scale

    # ---- the closed-form field ----------------------------------------------------------------------
    def sdf_canonical(self, p: torch.Tensor) -> torch.Tensor:
        """p: (N, 3) canonical -> (N,) signed distance, canonical units (negative inside)."""
        d = torch.minimum(_sdf_sphere(p, SPHERE_CENTER, SPHERE_RADIUS), _sdf_box(p, BOX_CENTER, BOX_HALF))
        if self.floater:
            d = torch.minimum(d, _sdf_sphere(p, FLOATER_CENTER, FLOATER_RADIUS))
        return d

    def _density_canonical(self, p: torch.Tensor) -> torch.Tensor:
        s = -self.sdf_canonical(p) / self.beta
        psi = torch.where(s <= 0, 0.5 * torch.exp(s.clamp(max=0)), 1 - 0.5 * torch.exp(-s.clamp(min=0)))
        return psi / self.beta

    @staticmethod
    def _colour_canonical(p: torch.Tensor) -> torch.Tensor:
        phase = p.new_tensor([0.0, 2.1, 4.2])
        return 0.5 + 0.4 * torch.sin(5.0 * p[:, :1] + 3.0 * p[:, 2:3] + phase)

    def query_density(self, points_world: np.ndarray) -> np.ndarray:
        """(N, 3) input frame -> (N,) float32 density per field unit."""
        p = torch.from_numpy(self.to_canonical(points_world))
        return self._density_canonical(p).float().numpy()

    def _object_bounds_canonical(self) -> list[tuple[np.ndarray, np.ndarray]]:
        sc, bc = np.array(SPHERE_CENTER), np.array(BOX_CENTER)
        out = [(sc - SPHERE_RADIUS, sc + SPHERE_RADIUS), (bc - BOX_HALF, bc + BOX_HALF)]
        if self.floater:
            fc = np.array(FLOATER_CENTER)
            out.append((fc - FLOATER_RADIUS, fc + FLOATER_RADIUS))
        return out

    def occupied_bbox_world(self) -> tuple[np.ndarray, np.ndarray]:
        corners = []
        for lo, hi in self._object_bounds_canonical():
            lo, hi = lo - 5 * self.beta, hi + 5 * self.beta
            grid = np.array(np.meshgrid(*zip(lo, hi, strict=True), indexing="ij")).reshape(3, -1).T
            corners.append(grid @ self.sim[:3, :3].T + self.sim[:3, 3])
        pts = np.concatenate(corners)
        return pts.min(0), pts.max(0)

    def occupancy_world(self, resolution: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cube = np.array(np.meshgrid(*[[-1.0, 1.0]] * 3, indexing="ij")).reshape(3, -1).T
        world = cube @ self.sim[:3, :3].T + self.sim[:3, 3]
        lo, hi = world.min(0), world.max(0)
        cell = (hi - lo) / resolution
        idx = np.stack(np.meshgrid(*[np.arange(resolution)] * 3, indexing="ij"), -1).reshape(-1, 3)
        centres = lo + (idx + 0.5) * cell
        sdf = self.sdf_canonical(torch.from_numpy(self.to_canonical(centres))).numpy()
        half_diag = 0.5 * np.linalg.norm(cell) / self.sim_scale
        return (sdf < half_diag + 5 * self.beta).reshape((resolution,) * 3), lo, hi

    # ---- rendering ----------------------------------------------------------------------------------
    def _canonical_rays(self, c2w: np.ndarray, intrinsics: Intrinsics, width: int, height: int):
        c2w_c = np.eye(4)
        c2w_c[:3, :3] = self.sim_rot.T @ c2w[:3, :3]
        c2w_c[:3, 3] = self.to_canonical(c2w[None, :3, 3])[0]
        params = torch.from_numpy(intrinsics.scaled(width, height).params()).float()
        return camera_rays(torch.from_numpy(c2w_c).float(), params, width, height)

    def render(self, c2w: np.ndarray, intrinsics: Intrinsics, width: int | None = None,
               height: int | None = None, chunk: int = 65536,
               background: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> AnalyticRender:
        """Volume-render (quadrature) one camera; c2w (4, 4) input frame. See RenderLike for outputs."""
        width, height = width or intrinsics.width, height or intrinsics.height
        rays = self._canonical_rays(c2w, intrinsics, width, height)
        outs = []
        step = max(1, chunk // 8)  # rays per batch; each ray carries `samples` points
        for s in range(0, len(rays), step):
            outs.append(self._render_rays(rays.slice(s, s + step), background))
        rgb, depth, median, acc = (torch.cat(o) for o in zip(*outs, strict=True))
        shape = (height, width)
        return AnalyticRender(rgb.reshape(*shape, 3).numpy(), depth.reshape(shape).numpy(),
                              median.reshape(shape).numpy(), acc.reshape(shape).numpy())

    def _render_rays(self, rays, background):
        near, far = 2.4 - 0.8, 2.4 + 0.8  # cameras at radius 2.4, objects within radius 0.75
        n = self.samples
        dt = (far - near) / n
        t = near + (torch.arange(n, dtype=torch.float32) + 0.5) * dt                     # (S,)
        pts = rays.origins[:, None] + rays.directions[:, None] * t[None, :, None]         # (R, S, 3)
        flat = pts.reshape(-1, 3)
        sigma = self._density_canonical(flat).reshape(len(rays), n)
        alpha = 1 - torch.exp(-sigma * dt)
        trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1 - alpha[:, :-1] + 1e-10], 1), 1)
        w = alpha * trans
        acc = w.sum(1)
        keep = w.reshape(-1) > 1e-6  # colour only where it counts
        colour = torch.zeros(len(flat), 3)
        colour[keep] = self._colour_canonical(flat[keep])
        rgb = (w[..., None] * colour.reshape(len(rays), n, 3)).sum(1) + (1 - acc[:, None]) * torch.tensor(background)
        t_exp = (w * t).sum(1) / acc.clamp(min=1e-8)
        cum = torch.cumsum(w, 1)
        idx = torch.searchsorted(cum, torch.full_like(acc[:, None], 0.5)).clamp(max=n - 1)[:, 0]
        t_med = torch.where(acc >= 0.5, t[idx], t_exp)
        to_z = rays.z_scale * self.sim_scale   # canonical ray distance -> input-frame z-depth
        return rgb.clamp(0, 1), t_exp * to_z, t_med * to_z, acc

    # ---- ground truth -------------------------------------------------------------------------------
    def gt_depth(self, c2w: np.ndarray, intrinsics: Intrinsics, width: int | None = None,
                 height: int | None = None) -> np.ndarray:
        """(H, W) float32 true z-depth (input-frame units) of the surface by sphere tracing; NaN on misses."""
        width, height = width or intrinsics.width, height or intrinsics.height
        rays = self._canonical_rays(c2w, intrinsics, width, height)
        o, d = rays.origins.double(), rays.directions.double()
        t = torch.full((len(rays),), 1.0, dtype=torch.float64)
        for _ in range(200):
            t = t + self.sdf_canonical(o + d * t[:, None]).clamp(min=0)
        hit = self.sdf_canonical(o + d * t[:, None]).abs() < 1e-4
        z = (t * rays.z_scale.double() * self.sim_scale).float()
        return torch.where(hit, z, torch.full_like(z, float("nan"))).reshape(height, width).numpy()

    def gt_mesh(self) -> trimesh.Trimesh:
        """The true surface as a mesh, input frame."""
        parts = [trimesh.creation.icosphere(5, SPHERE_RADIUS).apply_translation(SPHERE_CENTER),
                 trimesh.creation.box(2 * np.array(BOX_HALF)).apply_translation(BOX_CENTER)]
        if self.floater:
            parts.append(trimesh.creation.icosphere(3, FLOATER_RADIUS).apply_translation(FLOATER_CENTER))
        return trimesh.util.concatenate(parts).apply_transform(self.sim)

    def bbox_diagonal(self) -> float:
        """Diagonal of the ground-truth mesh's bounding box, input-frame units."""
        return float(np.linalg.norm(np.ptp(self.gt_mesh().bounds, axis=0)))
