"""Pinhole intrinsics with optional OpenCV radial-tangential distortion (k1, k2, p1, p2).

Camera space is [Right, Down, Forward]. Pixel (u, v) (integer column, row) has its centre at
continuous image coordinates (u + 0.5, v + 0.5); its undistorted camera-space direction is
[(u + 0.5 - cx) / fx, (v + 0.5 - cy) / fy, 1] after removing lens distortion. We undistort ray
directions, never the images.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

# Column order of the packed per-camera parameter tensor used on the device.
PARAM_NAMES = ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2")


@dataclass(frozen=True)
class Intrinsics:
    """One camera's intrinsics. Focal lengths and principal point are in pixels."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    k1: float = 0.0
    k2: float = 0.0
    p1: float = 0.0
    p2: float = 0.0

    @property
    def has_distortion(self) -> bool:
        return any(abs(c) > 0 for c in (self.k1, self.k2, self.p1, self.p2))

    def scaled(self, width: int, height: int) -> Intrinsics:
        """Intrinsics of the same camera for the image resized to (width, height).

        Continuous pixel coordinates scale linearly, so cx' = cx * sx (the +0.5 pixel-centre
        convention makes this exact). Distortion acts on normalised coordinates: unchanged.
        """
        sx, sy = width / self.width, height / self.height
        return replace(self, fx=self.fx * sx, fy=self.fy * sy, cx=self.cx * sx, cy=self.cy * sy,
                       width=int(width), height=int(height))

    def params(self) -> np.ndarray:
        """(8,) float64: [fx, fy, cx, cy, k1, k2, p1, p2]."""
        return np.array([getattr(self, n) for n in PARAM_NAMES], dtype=np.float64)

    def matrix(self) -> np.ndarray:
        """(3, 3) float64 pinhole matrix K."""
        return np.array([[self.fx, 0, self.cx], [0, self.fy, self.cy], [0, 0, 1.0]])

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> Intrinsics:
        return Intrinsics(**{k: d[k] for k in Intrinsics.__dataclass_fields__ if k in d})


def stack_params(intrinsics: list[Intrinsics]) -> torch.Tensor:
    """(N, 8) float32 tensor of [fx, fy, cx, cy, k1, k2, p1, p2], one row per camera."""
    return torch.from_numpy(np.stack([k.params() for k in intrinsics])).float()


def distort(x: torch.Tensor, y: torch.Tensor, dist: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply OpenCV radial-tangential distortion to normalised coordinates.

    x, y: (N,) float32, undistorted normalised camera coordinates (X/Z, Y/Z).
    dist: (N, 4) float32, [k1, k2, p1, p2] per point.
    Returns distorted (xd, yd), each (N,) float32.
    """
    k1, k2, p1, p2 = dist.unbind(-1)
    r2 = x * x + y * y
    radial = 1 + k1 * r2 + k2 * r2 * r2
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    return xd, yd


def undistort(xd: torch.Tensor, yd: torch.Tensor, dist: torch.Tensor, iters: int = 10
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Invert `distort` by Newton iterations (as COLMAP does).

    xd, yd: (N,) float32, distorted normalised coordinates. dist: (N, 4) [k1, k2, p1, p2].
    Returns undistorted (x, y), each (N,) float32. Exact to ~1e-6 for phone-like distortion.
    """
    k1, k2, p1, p2 = dist.unbind(-1)
    x, y = xd.clone(), yd.clone()
    for _ in range(iters):
        r2 = x * x + y * y
        radial = 1 + k1 * r2 + k2 * r2 * r2
        fx = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x) - xd
        fy = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y - yd
        # Jacobian of the distortion map.
        dr_dx = 2 * x * (k1 + 2 * k2 * r2)
        dr_dy = 2 * y * (k1 + 2 * k2 * r2)
        j00 = radial + x * dr_dx + 2 * p1 * y + 6 * p2 * x
        j01 = x * dr_dy + 2 * p1 * x + 2 * p2 * y
        j10 = y * dr_dx + 2 * p1 * x + 2 * p2 * y
        j11 = radial + y * dr_dy + 6 * p1 * y + 2 * p2 * x
        det = j00 * j11 - j01 * j10
        det = torch.where(det.abs() < 1e-12, torch.full_like(det, 1e-12), det)
        x = x - (j11 * fx - j01 * fy) / det
        y = y - (-j10 * fx + j00 * fy) / det
    return x, y


def pixel_directions_camera(u: torch.Tensor, v: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Camera-space ray directions for integer pixels, lens distortion removed.

    u, v: (N,) pixel column and row (any numeric dtype; pixel centres are at +0.5).
    params: (N, 8) float32 [fx, fy, cx, cy, k1, k2, p1, p2] for each pixel's camera.
    Returns (N, 3) float32, camera frame [Right, Down, Forward], z == 1 (not normalised).
    """
    fx, fy, cx, cy = params[:, 0], params[:, 1], params[:, 2], params[:, 3]
    xd = (u.to(params.dtype) + 0.5 - cx) / fx
    yd = (v.to(params.dtype) + 0.5 - cy) / fy
    dist = params[:, 4:8]
    if bool((dist != 0).any()):
        x, y = undistort(xd, yd, dist)
    else:
        x, y = xd, yd
    return torch.stack([x, y, torch.ones_like(x)], dim=-1)


def project_points(points_cam: np.ndarray, intr: Intrinsics) -> np.ndarray:
    """Project camera-frame points to continuous pixel coordinates (with distortion).

    points_cam: (N, 3) float, camera frame [Right, Down, Forward], z > 0.
    Returns (N, 2) float64 continuous pixel coordinates (pixel (u, v) covers [u, u+1) x [v, v+1)).
    """
    p = torch.from_numpy(np.asarray(points_cam, dtype=np.float64))
    x, y = p[:, 0] / p[:, 2], p[:, 1] / p[:, 2]
    dist = torch.tensor([[intr.k1, intr.k2, intr.p1, intr.p2]], dtype=torch.float64).expand(len(p), 4)
    xd, yd = distort(x, y, dist)
    return np.stack([(xd * intr.fx + intr.cx).numpy(), (yd * intr.fy + intr.cy).numpy()], axis=-1)
