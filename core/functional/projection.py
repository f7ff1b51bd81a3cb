"""Camera geometry for exports: world points to pixels, and z-depth maps back to world points.

All in the input frame with OpenCV camera axes [Right, Down, Forward]; depth is z-depth.
"""

from __future__ import annotations

import numpy as np
import torch

from core.functional.cameras import Intrinsics, distort, pixel_directions_camera


def world_to_camera(points_world: torch.Tensor, c2w: np.ndarray) -> torch.Tensor:
    """points_world: (N, 3) float tensor, input frame; c2w: (4, 4) float64.

    Returns (N, 3) tensor (same dtype/device), camera frame [Right, Down, Forward].
    """
    w2c = np.linalg.inv(np.asarray(c2w, dtype=np.float64))
    rot = torch.as_tensor(w2c[:3, :3], dtype=points_world.dtype, device=points_world.device)
    trans = torch.as_tensor(w2c[:3, 3], dtype=points_world.dtype, device=points_world.device)
    return points_world @ rot.T + trans


def project_to_pixels(points_world: torch.Tensor, c2w: np.ndarray, intrinsics: Intrinsics
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Project world points into a camera (with lens distortion).

    points_world: (N, 3) float tensor, input frame. Returns
    uv: (N, 2) continuous pixel coordinates (pixel (u, v) covers [u, u+1) x [v, v+1)); garbage where z <= 0;
    z: (N,) camera z-depth, input-frame units (<= 0 means behind the camera).
    """
    p = world_to_camera(points_world, c2w)
    z = p[:, 2]
    safe_z = torch.where(z.abs() < 1e-9, torch.full_like(z, 1e-9), z)
    x, y = p[:, 0] / safe_z, p[:, 1] / safe_z
    k = intrinsics
    if k.has_distortion:
        dist = torch.tensor([[k.k1, k.k2, k.p1, k.p2]], dtype=p.dtype, device=p.device).expand(len(p), 4)
        x, y = distort(x, y, dist)
    uv = torch.stack([x * k.fx + k.cx, y * k.fy + k.cy], dim=-1)
    return uv, z


def sample_nearest(image: torch.Tensor, uv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest-pixel lookup. image: (H, W, ...) tensor; uv: (N, 2) continuous pixel coordinates.

    Returns (values (N, ...), inside (N,) bool); values are from clamped indices where not inside.
    """
    h, w = image.shape[:2]
    u = torch.floor(uv[:, 0]).long()
    v = torch.floor(uv[:, 1]).long()
    inside = (u >= 0) & (u < w) & (v >= 0) & (v < h)
    return image[v.clamp(0, h - 1), u.clamp(0, w - 1)], inside


def backproject_depth(depth: np.ndarray, c2w: np.ndarray, intrinsics: Intrinsics) -> np.ndarray:
    """World points of every pixel of a z-depth map.

    depth: (H, W) float z-depth, input-frame units (NaN allowed; propagates);
    c2w: (4, 4) float64 input frame; intrinsics: at size W x H.
    Returns (H, W, 3) float64 points, input frame.
    """
    h, w = depth.shape
    v, u = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    params = torch.from_numpy(intrinsics.params()).float()[None].expand(h * w, 8)
    d_cam = pixel_directions_camera(u.reshape(-1), v.reshape(-1), params).double().numpy()  # z == 1
    pts_cam = d_cam * np.asarray(depth, dtype=np.float64).reshape(-1, 1)
    c2w = np.asarray(c2w, dtype=np.float64)
    return (pts_cam @ c2w[:3, :3].T + c2w[:3, 3]).reshape(h, w, 3)
