"""Samplers: candidate intervals along rays, an Instant-NGP occupancy grid that skips empty space
(with early ray termination), and hierarchical (coarse-to-fine) importance sampling.

All distances are along unit directions in the field frame. Bounded scenes live in [-1, 1]^3;
unbounded ones are sampled uniformly in the mip-NeRF 360 spacing s(t) = t (t < 1), 2 - 1/t (t >= 1)
and contracted for lookups (core.functional.contraction).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from core.functional.contraction import to_unit_cube
from core.functional.render import RaySamples, transmittance_and_alpha

FAR_UNBOUNDED = 1e3


@dataclass(frozen=True)
class SamplerConfig:
    kind: str = "occupancy"        # occupancy | hierarchical
    march_steps: int = 384         # candidate steps across the bounded box diagonal / the s-range
    near_plane: float = 0.02       # field units
    grid_resolution: int = 64
    grid_update_every: int = 16
    grid_warmup_steps: int = 256
    grid_decay: float = 0.95
    occ_alpha_threshold: float = 0.01
    early_stop_eps: float = 1e-4
    n_coarse: int = 64             # hierarchical
    n_fine: int = 64


def ray_aabb(origins: torch.Tensor, directions: torch.Tensor, half: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Entry/exit distances of rays (R, 3) with the box [-half, half]^3; far < near when missed."""
    inv = 1.0 / torch.where(directions.abs() < 1e-9, torch.full_like(directions, 1e-9), directions)
    t0 = (-half - origins) * inv
    t1 = (half - origins) * inv
    near = torch.minimum(t0, t1).amax(-1)
    far = torch.maximum(t0, t1).amin(-1)
    return near, far


def s_to_t(s: torch.Tensor) -> torch.Tensor:
    return torch.where(s < 1, s, 1.0 / (2.0 - s).clamp_min(1.0 / FAR_UNBOUNDED))


def t_to_s(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t < 1, t, 2.0 - 1.0 / t.clamp_min(1e-9))


def ray_ranges(origins: torch.Tensor, directions: torch.Tensor, contracted: bool, near_plane: float
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per ray (near, far) in t: the box for bounded scenes, [near_plane, FAR] for unbounded."""
    if contracted:
        near = torch.full_like(origins[:, 0], near_plane)
        return near, torch.full_like(near, FAR_UNBOUNDED)
    near, far = ray_aabb(origins, directions, 1.0)
    return near.clamp_min(near_plane), far


def uniform_intervals(origins: torch.Tensor, directions: torch.Tensor, contracted: bool, n: int,
                      near_plane: float, jitter: bool, step: float | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Candidate intervals, padded: t_starts, t_ends (R, n) and valid (R, n) bool.

    bounded: fixed step `step` (default 2*sqrt(3)/n) from the box entry; unbounded: n equal steps in s.
    jitter: one random offset per ray (stratified), for training.
    """
    near, far = ray_ranges(origins, directions, contracted, near_plane)
    k = torch.arange(n + 1, device=origins.device, dtype=torch.float32)
    off = torch.rand_like(near)[:, None] if jitter else torch.zeros_like(near)[:, None]
    if contracted:
        s0, s1 = t_to_s(near), t_to_s(far)
        s = s0[:, None] + (s1 - s0)[:, None] * ((k[None] + off).clamp(max=n) / n)
        edges = s_to_t(s)
    else:
        dt = step if step is not None else 2 * math.sqrt(3) / n
        edges = near[:, None] + (k[None] + off) * dt
    t_starts, t_ends = edges[:, :-1], edges[:, 1:]
    valid = (t_starts < far[:, None]) & (far > near)[:, None]
    return t_starts, t_ends.minimum(far[:, None]), valid


def pack(t_starts: torch.Tensor, t_ends: torch.Tensor, keep: torch.Tensor) -> RaySamples:
    """(R, n) padded intervals + keep mask -> packed RaySamples (row-major order = ray-major)."""
    ray_idx, _ = keep.nonzero(as_tuple=True)
    return RaySamples(ray_idx, t_starts[keep], t_ends[keep], t_starts.shape[0])


def uncontract(y: torch.Tensor) -> torch.Tensor:
    """Inverse of core.functional.contraction.contract: [-2, 2]^3 -> field frame (clamped near the edge)."""
    norm = y.abs().amax(-1, keepdim=True).clamp_min(1e-9)
    scale = 1.0 / (2.0 - norm).clamp_min(1e-3) / norm
    return torch.where(norm <= 1, y, y * scale)


class OccupancyGrid(nn.Module):
    """A density grid over the encoding's unit cube (after contraction for unbounded scenes).

    Buffers: `density` (R^3,) float32, an EMA of the field's density per cell; `occupied` (R^3,) bool.
    A cell is occupied when its density's alpha over one render step exceeds the threshold (or the
    mean density, whichever is lower, as in Instant-NGP).
    """

    def __init__(self, resolution: int, contracted: bool) -> None:
        super().__init__()
        self.resolution = resolution
        self.contracted = contracted
        n = resolution ** 3
        self.register_buffer("density", torch.zeros(n))            # all cells occupied until the first update
        self.register_buffer("occupied", torch.ones(n, dtype=torch.bool))

    def cell_index(self, points_field: torch.Tensor) -> torch.Tensor:
        """(S, 3) field frame -> (S,) flat cell index (z-major)."""
        u = to_unit_cube(points_field, self.contracted)
        c = (u * self.resolution).long().clamp(0, self.resolution - 1)
        r = self.resolution
        return (c[:, 2] * r + c[:, 1]) * r + c[:, 0]

    def is_occupied(self, points_field: torch.Tensor) -> torch.Tensor:
        return self.occupied[self.cell_index(points_field)]

    def cell_points(self, cells: torch.Tensor, jitter: bool) -> torch.Tensor:
        """(K,) flat cell indices -> (K, 3) field-frame points (random inside the cell if jitter)."""
        r = self.resolution
        xyz = torch.stack([cells % r, (cells // r) % r, cells // (r * r)], -1).float()
        off = torch.rand_like(xyz) if jitter else torch.full_like(xyz, 0.5)
        u = (xyz + off) / r
        return uncontract(u * 4 - 2) if self.contracted else u * 2 - 1

    @torch.no_grad()
    def update(self, density_fn, step: int, cfg: SamplerConfig, step_size: float, chunk: int = 1 << 18) -> None:
        """Re-evaluate (a subset of) cells with `density_fn((K,3) field points) -> (K,)`."""
        n = self.density.shape[0]
        if step < cfg.grid_warmup_steps:
            cells = torch.arange(n, device=self.density.device)
        else:
            rand = torch.randint(0, n, (n // 4,), device=self.density.device)
            occ = self.occupied.nonzero().squeeze(1)
            occ = occ[torch.randperm(len(occ), device=occ.device)[: n // 4]]
            cells = torch.cat([rand, occ])
        new = torch.cat([density_fn(self.cell_points(c, jitter=True)).float()
                         for c in cells.split(chunk)])
        self.density[cells] = torch.maximum(self.density[cells] * cfg.grid_decay, new)
        thre = min(-math.log(1 - cfg.occ_alpha_threshold) / step_size, float(self.density.mean()))
        self.occupied.copy_(self.density > thre)


def march_occupied(origins: torch.Tensor, directions: torch.Tensor, grid: OccupancyGrid,
                   cfg: SamplerConfig, jitter: bool) -> RaySamples:
    """Candidate intervals whose midpoints fall in occupied cells, packed."""
    t_starts, t_ends, valid = uniform_intervals(origins, directions, grid.contracted, cfg.march_steps,
                                                cfg.near_plane, jitter)
    mid = 0.5 * (t_starts + t_ends)
    pts = origins[:, None, :] + directions[:, None, :] * mid[..., None]
    occ = grid.is_occupied(pts.reshape(-1, 3)).view_as(valid)
    return pack(t_starts, t_ends, valid & occ)


def early_stop(samples: RaySamples, density: torch.Tensor, eps: float) -> torch.Tensor:
    """(S,) bool: samples still visible (transmittance > eps) given densities (S,)."""
    trans, _ = transmittance_and_alpha(samples, density)
    return trans > eps


def importance_intervals(samples: RaySamples, weights: torch.Tensor, n_fine: int, jitter: bool,
                         n_per_ray: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Coarse samples with a fixed count n_per_ray per ray (padded order) -> fine interval edges.

    Returns t_starts, t_ends (R, n_coarse + n_fine) sorted: the union of coarse and resampled edges.
    """
    r = samples.n_rays
    w = weights.view(r, n_per_ray) + 1e-5
    edges = torch.cat([samples.t_starts.view(r, n_per_ray), samples.t_ends.view(r, n_per_ray)[:, -1:]], 1)
    pdf = w / w.sum(-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[:, :1]), torch.cumsum(pdf, -1)], -1).clamp(max=1.0)
    base = torch.arange(n_fine, device=w.device, dtype=w.dtype).expand(r, n_fine)
    u = base + (torch.rand(r, n_fine, device=w.device) if jitter else 0.5)
    u = (u / n_fine).clamp(max=1 - 1e-6).contiguous()
    idx = torch.searchsorted(cdf.contiguous(), u, right=True).clamp(1, n_per_ray)
    c0, c1 = cdf.gather(1, idx - 1), cdf.gather(1, idx)
    e0, e1 = edges.gather(1, idx - 1), edges.gather(1, idx)
    frac = ((u - c0) / (c1 - c0).clamp_min(1e-9)).clamp(0, 1)
    new = e0 + frac * (e1 - e0)
    allt = torch.sort(torch.cat([edges, new], -1), -1).values
    return allt[:, :-1], allt[:, 1:]
