"""The model: wires a field to a sampler and the volume renderer (nerfstudio's "model" layer)."""

from __future__ import annotations

import math

import torch
from torch import nn

from core.fields.compose import ComposedField
from core.fields.encoding import HashGridConfig
from core.fields.nerf import FieldConfig
from core.functional.rays import RayBundle
from core.functional.render import RaySamples, RenderOutput, accumulate, join_outputs, volume_render
from core.functional.sampling import (
    OccupancyGrid,
    SamplerConfig,
    early_stop,
    importance_intervals,
    march_occupied,
    pack,
    uniform_intervals,
)
from core.models.config import TrainConfig


class RadianceModel(nn.Module):
    """field: a module with forward(points, directions, image_index) -> FieldOutput and density(points).

    Rays are in the field frame. The occupancy grid (sampler kind "occupancy") is a buffer of this
    module, so it is saved and restored with the field.
    """

    def __init__(self, field: nn.Module, contracted: bool, sampler: SamplerConfig) -> None:
        super().__init__()
        self.field = field
        self.contracted = contracted
        self.sampler = sampler
        self.grid = OccupancyGrid(sampler.grid_resolution, contracted) if sampler.kind == "occupancy" else None

    @property
    def step_size(self) -> float:
        """Nominal render step in field units (for the occupancy threshold)."""
        return (2 * math.sqrt(3) if not self.contracted else 2.0) / self.sampler.march_steps

    def update_grid(self, step: int) -> None:
        if self.grid is not None and step % self.sampler.grid_update_every == 0:
            self.grid.update(self.field.density, step, self.sampler, self.step_size)

    def sample(self, rays: RayBundle, training: bool) -> RaySamples:
        cfg = self.sampler
        if cfg.kind == "occupancy":
            samples = march_occupied(rays.origins, rays.directions, self.grid, cfg, jitter=training)
            if len(samples) and cfg.early_stop_eps > 0:
                # Early ray termination: drop samples hidden behind opaque ones (density-only pass).
                with torch.no_grad():
                    dens = self.field.density(samples.positions(rays.origins, rays.directions))
                    samples = samples.select(early_stop(samples, dens, cfg.early_stop_eps))
            return samples
        if cfg.kind == "hierarchical":
            n = cfg.n_coarse
            ts, te, valid = uniform_intervals(rays.origins, rays.directions, self.contracted, n,
                                              cfg.near_plane, jitter=training, step=None)
            ts = torch.where(valid, ts, te)          # keep fixed count per ray: empty intervals
            coarse = pack(ts, te, torch.ones_like(valid))
            with torch.no_grad():
                dens = self.field.density(coarse.positions(rays.origins, rays.directions))
                out = volume_render(coarse, dens, dens[:, None])
            fs, fe = importance_intervals(coarse, out.weights, cfg.n_fine, training, n)
            return pack(fs, fe, fe > fs)
        raise ValueError(f"unknown sampler {cfg.kind!r}: use occupancy or hierarchical")

    def forward(self, rays: RayBundle, background: torch.Tensor | None, training: bool = False) -> RenderOutput:
        samples = self.sample(rays, training)
        pts = samples.positions(rays.origins, rays.directions)
        idx = samples.ray_indices
        out = self.field(pts, rays.directions[idx], rays.image_index[idx])
        render = volume_render(samples, out.density, out.features, background)
        if training and isinstance(self.field, ComposedField) and self.field.has_plane:
            # The foreground's own opacity along each ray, once a support plane is cut (core.engine.loop.
            # foreground_sparsity): its densities alone, so that a penalty on it reaches the foreground field
            # only, not the background in front through the transmittance.
            inside = self.field.in_foreground(pts)
            optical = torch.where(inside, out.density.float() * (samples.t_ends - samples.t_starts), 0.0)
            render.foreground_opacity = 1.0 - torch.exp(-accumulate(optical, idx, len(rays)))
        return render

    @torch.no_grad()
    def render_chunked(self, rays: RayBundle, background: torch.Tensor | None, chunk: int) -> RenderOutput:
        """Evaluation render of many rays, `chunk` rays at a time (weights are not kept)."""
        parts = [self.forward(rays.slice(i, i + chunk), background, training=False)
                 for i in range(0, len(rays), chunk)]
        return join_outputs(parts, keep_weights=False)


def sampler_config(cfg: TrainConfig) -> SamplerConfig:
    return SamplerConfig(kind=cfg.sampler, march_steps=cfg.march_steps, grid_resolution=cfg.grid_resolution,
                         grid_decay=cfg.grid_decay, grid_warmup_steps=cfg.grid_warmup_steps,
                         early_stop_eps=cfg.early_stop_eps, n_coarse=cfg.n_coarse, n_fine=cfg.n_fine)


def field_config(cfg: TrainConfig, n_images: int, out_features: int = 3, out_activation: str = "sigmoid"
                 ) -> FieldConfig:
    grid = HashGridConfig(cfg.grid_levels, cfg.grid_features, cfg.grid_log2_size, cfg.grid_base_res,
                          cfg.grid_max_res)
    return FieldConfig(grid=grid, backend=cfg.backend, hidden=cfg.hidden, appearance_dim=cfg.appearance_dim,
                       n_images=n_images, out_features=out_features, out_activation=out_activation)
