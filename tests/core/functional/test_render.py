"""Volume rendering and samplers against closed forms."""

from __future__ import annotations

import math

import torch

from core.functional.render import RaySamples, segment_cumsum, volume_render
from core.functional.sampling import (
    OccupancyGrid,
    SamplerConfig,
    importance_intervals,
    march_occupied,
    pack,
    ray_aabb,
    s_to_t,
    t_to_s,
    uniform_intervals,
)


def _uniform(n_rays: int, n: int, t0: float, t1: float) -> RaySamples:
    edges = torch.linspace(t0, t1, n + 1)
    ts, te = edges[:-1].expand(n_rays, n), edges[1:].expand(n_rays, n)
    return pack(ts.contiguous(), te.contiguous(), torch.ones(n_rays, n, dtype=torch.bool))


def test_constant_density_opacity_matches_beer_lambert():
    s = _uniform(3, 200, 0.0, 2.0)
    sigma = torch.tensor([0.1, 1.0, 5.0]).repeat_interleave(200)
    out = volume_render(s, sigma, torch.ones(len(s), 3))
    expected = 1 - torch.exp(-torch.tensor([0.1, 1.0, 5.0]) * 2.0)
    assert torch.allclose(out.opacity, expected, atol=1e-5)
    # Expected distance for constant density on [0, L], normalised by opacity: closed form.
    lam = torch.tensor([0.1, 1.0, 5.0])
    ed = (1 / lam - torch.exp(-lam * 2) * (2 + 1 / lam)) / expected
    assert torch.allclose(out.depth, ed, atol=5e-3)


def test_opaque_wall_depth_and_median():
    s = _uniform(2, 400, 0.0, 4.0)
    t = s.t_mid
    sigma = torch.where(t > torch.tensor([1.0, 3.0])[s.ray_indices], 1e4, 0.0)
    out = volume_render(s, sigma, torch.ones(len(s), 3), background=torch.zeros(3))
    assert torch.allclose(out.depth, torch.tensor([1.0, 3.0]), atol=0.02)
    assert torch.allclose(out.depth_median, torch.tensor([1.0, 3.0]), atol=0.02)
    assert torch.allclose(out.opacity, torch.ones(2), atol=1e-4)


def test_background_fills_empty_rays_and_gradients_flow():
    s = _uniform(2, 10, 0.0, 1.0)
    sigma = torch.zeros(len(s), requires_grad=True)
    feats = torch.rand(len(s), 3, requires_grad=True)
    out = volume_render(s, sigma, feats, background=torch.tensor([0.2, 0.4, 0.6]))
    assert torch.allclose(out.features, torch.tensor([[0.2, 0.4, 0.6]] * 2))
    out.features.sum().backward()
    assert sigma.grad.abs().sum() > 0


def test_segment_cumsum_restarts_per_ray():
    ray = torch.tensor([0, 0, 0, 2, 2, 3])
    v = torch.tensor([1.0, 2.0, 3.0, 10.0, 20.0, 5.0])
    assert segment_cumsum(v, ray, 4).tolist() == [1, 3, 6, 10, 30, 5]
    assert segment_cumsum(v, ray, 4, exclusive=True).tolist() == [0, 1, 3, 0, 10, 0]


def test_ray_aabb_and_s_space():
    o = torch.tensor([[-3.0, 0.0, 0.0], [0.0, 5.0, 0.0]])
    d = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    near, far = ray_aabb(o, d, 1.0)
    assert torch.allclose(near[0], torch.tensor(2.0)) and torch.allclose(far[0], torch.tensor(4.0))
    assert far[1] < near[1]                                  # misses the box
    t = torch.tensor([0.3, 1.0, 7.0, 500.0])
    assert torch.allclose(s_to_t(t_to_s(t)), t, rtol=1e-4)


def test_occupancy_grid_skips_empty_space():
    grid = OccupancyGrid(32, contracted=False)
    cfg = SamplerConfig(march_steps=128, grid_resolution=32)

    def sphere_density(p: torch.Tensor) -> torch.Tensor:      # a dense ball of radius 0.3
        return torch.where(p.norm(dim=-1) < 0.3, 100.0, 0.0)

    grid.update(sphere_density, step=0, cfg=cfg, step_size=2 * math.sqrt(3) / 128)
    o = torch.tensor([[-2.0, 0.0, 0.0], [-2.0, 0.9, 0.0]])
    d = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    s = march_occupied(o, d, grid, cfg, jitter=False)
    ts, _, valid = uniform_intervals(o, d, False, 128, 0.02, jitter=False)
    assert (s.ray_indices == 1).sum() == 0                  # the ray past the ball has no samples
    assert 0 < (s.ray_indices == 0).sum() < valid[0].sum() / 3
    hit_t = s.t_mid[s.ray_indices == 0]
    assert hit_t.min() > 2 - 0.3 - 0.1 and hit_t.max() < 2 + 0.3 + 0.1


def test_importance_sampling_concentrates_on_the_surface():
    s = _uniform(1, 64, 0.0, 4.0)
    w = torch.exp(-((s.t_mid - 2.5) ** 2) / 0.01)
    ts, te = importance_intervals(s, w, 64, jitter=False, n_per_ray=64)
    mid = 0.5 * (ts + te)
    near = ((mid - 2.5).abs() < 0.3).float().mean()
    assert near > 0.4                                          # uniform would give 0.15
