"""Ray generation on the device from (camera, u, v). Nothing per-ray is stored on the host."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from core.functional.cameras import pixel_directions_camera


@dataclass
class RayBundle:
    """A batch of rays, all in one frame (the field frame, once normalised).

    origins: (R, 3) float32. directions: (R, 3) float32, unit length.
    z_scale: (R,) float32, the camera-z component of the unit direction, so that
        z-depth = distance along the ray * z_scale.
    image_index: (R,) int64, the capture image each ray came from (for appearance embeddings);
        -1 for novel views.
    """

    origins: torch.Tensor
    directions: torch.Tensor
    z_scale: torch.Tensor
    image_index: torch.Tensor

    def __len__(self) -> int:
        return self.origins.shape[0]

    def slice(self, start: int, stop: int) -> RayBundle:
        return RayBundle(self.origins[start:stop], self.directions[start:stop],
                         self.z_scale[start:stop], self.image_index[start:stop])

    def take(self, index: torch.Tensor) -> RayBundle:
        """index: (M,) int64 -> the bundle of those rays, in that order."""
        return RayBundle(self.origins[index], self.directions[index], self.z_scale[index], self.image_index[index])


def rays_from_pixels(c2w: torch.Tensor, params: torch.Tensor, u: torch.Tensor, v: torch.Tensor,
                     image_index: torch.Tensor | None = None) -> RayBundle:
    """Build rays for pixels.

    c2w: (R, 3, 4) or (R, 4, 4) float32 camera-to-world per ray (OpenCV camera axes), in
        whatever world frame the caller wants the rays in (usually the field frame).
    params: (R, 8) float32 intrinsics per ray (see core.functional.cameras.PARAM_NAMES).
    u, v: (R,) pixel column/row.
    image_index: (R,) int64 or None (-1 for all).
    """
    d_cam = pixel_directions_camera(u, v, params)                      # (R, 3), z == 1
    inv_norm = torch.rsqrt((d_cam * d_cam).sum(-1))
    rot = c2w[:, :3, :3]
    d_world = torch.einsum("rij,rj->ri", rot, d_cam) * inv_norm[:, None]
    origins = c2w[:, :3, 3].expand_as(d_world).contiguous()
    if image_index is None:
        image_index = torch.full((d_world.shape[0],), -1, dtype=torch.long, device=d_world.device)
    return RayBundle(origins, d_world, inv_norm, image_index)


def camera_rays(c2w: torch.Tensor, params: torch.Tensor, width: int, height: int,
                image_index: int = -1) -> RayBundle:
    """All rays of one camera, row-major (v, then u).

    c2w: (4, 4) or (3, 4) float32. params: (8,) float32. Returns a bundle of width*height rays.
    """
    device = c2w.device
    v, u = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device),
                          indexing="ij")
    u, v = u.reshape(-1), v.reshape(-1)
    n = u.shape[0]
    idx = torch.full((n,), image_index, dtype=torch.long, device=device)
    return rays_from_pixels(c2w[None].expand(n, -1, -1), params[None].expand(n, -1), u, v, idx)
