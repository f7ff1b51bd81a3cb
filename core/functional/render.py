"""Volume rendering over packed samples (nerfacc-style): pure functions, no parameters.

Samples of all rays are packed in one flat list, grouped by ray in ascending `ray_indices` and
ordered front to back within each ray. Distances t are along unit ray directions, field units.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class RaySamples:
    """ray_indices: (S,) int64 ascending. t_starts, t_ends: (S,) float32 interval bounds along the ray."""

    ray_indices: torch.Tensor
    t_starts: torch.Tensor
    t_ends: torch.Tensor
    n_rays: int

    def __len__(self) -> int:
        return self.ray_indices.shape[0]

    @property
    def t_mid(self) -> torch.Tensor:
        return 0.5 * (self.t_starts + self.t_ends)

    def positions(self, origins: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
        """origins, directions: (R, 3) -> (S, 3) interval midpoints, same frame as the rays."""
        return origins[self.ray_indices] + directions[self.ray_indices] * self.t_mid[:, None]

    def select(self, keep: torch.Tensor) -> RaySamples:
        """keep: (S,) bool; order is preserved, so the packing stays valid."""
        return RaySamples(self.ray_indices[keep], self.t_starts[keep], self.t_ends[keep], self.n_rays)


@dataclass
class RenderOutput:
    """Per ray: features (R, D) (RGB composited on the background when D == 3 and one was given);
    depth (R,) expected distance along the ray normalised by opacity, field units; depth_median (R,);
    opacity (R,) in [0, 1]; weights (S,) per sample; n_samples: int; foreground_opacity (R,) in [0, 1],
    the opacity of a composed field's foreground alone, 1 - exp(-sum of its sigma delta) (training renders
    once a support plane is cut, else None)."""

    features: torch.Tensor
    depth: torch.Tensor
    depth_median: torch.Tensor
    opacity: torch.Tensor
    weights: torch.Tensor
    n_samples: int
    foreground_opacity: torch.Tensor | None = None


def join_outputs(parts: list[RenderOutput], order: torch.Tensor | None = None, keep_weights: bool = True
                 ) -> RenderOutput:
    """The renders of consecutive ray sets as one render of all their rays.

    Per-ray tensors are concatenated, then taken in `order` ((R,) int64 indices into the concatenation) when
    given; weights are concatenated in the parts' sample order, not reordered (or dropped: keep_weights False);
    n_samples is summed; foreground_opacity is kept where every part has it.
    """
    def per_ray(name: str) -> torch.Tensor:
        joined = torch.cat([getattr(p, name) for p in parts])
        return joined if order is None else joined[order]

    fg = per_ray("foreground_opacity") if all(p.foreground_opacity is not None for p in parts) else None
    weights = torch.cat([p.weights for p in parts]) if keep_weights else torch.empty(0)
    return RenderOutput(per_ray("features"), per_ray("depth"), per_ray("depth_median"), per_ray("opacity"),
                        weights, sum(p.n_samples for p in parts), fg)


def _segment_starts(ray_indices: torch.Tensor, n_rays: int) -> torch.Tensor:
    """(S,) int64: for each sample, the flat index of the first sample of its ray."""
    counts = torch.bincount(ray_indices, minlength=n_rays)
    starts = torch.cumsum(counts, 0) - counts
    return starts[ray_indices]


def segment_cumsum(values: torch.Tensor, ray_indices: torch.Tensor, n_rays: int,
                   exclusive: bool = False) -> torch.Tensor:
    """Per-ray cumulative sum of packed values (S,). Accumulates in float64 to keep precision."""
    total = torch.cumsum(values.double(), 0)
    first = _segment_starts(ray_indices, n_rays)
    prefix = total - values.double()            # exclusive cumsum over the whole list
    out = (prefix if exclusive else total) - prefix[first]
    return out.to(values.dtype)


def transmittance_and_alpha(samples: RaySamples, density: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """density (S,) -> transmittance before each sample (S,) and alpha (S,)."""
    tau = density * (samples.t_ends - samples.t_starts)
    trans = torch.exp(-segment_cumsum(tau, samples.ray_indices, samples.n_rays, exclusive=True))
    alpha = 1.0 - torch.exp(-tau)
    return trans, alpha


def accumulate(values: torch.Tensor, ray_indices: torch.Tensor, n_rays: int) -> torch.Tensor:
    """Sum packed values (S,) or (S, D) per ray -> (R,) or (R, D)."""
    out = torch.zeros((n_rays, *values.shape[1:]), dtype=values.dtype, device=values.device)
    return out.index_add_(0, ray_indices, values)


def median_distance(samples: RaySamples, weights: torch.Tensor, opacity: torch.Tensor) -> torch.Tensor:
    """(R,) the midpoint t of the first sample where the accumulated weight reaches half the opacity."""
    cw = segment_cumsum(weights.detach(), samples.ray_indices, samples.n_rays)
    reached = cw >= 0.5 * opacity.detach()[samples.ray_indices]
    big = torch.full_like(samples.ray_indices, len(samples))
    idx = torch.where(reached, torch.arange(len(samples), device=weights.device), big)
    first = torch.full((samples.n_rays,), len(samples), dtype=torch.long, device=weights.device)
    first = first.scatter_reduce(0, samples.ray_indices, idx, reduce="amin")
    t_mid = torch.cat([samples.t_mid.detach(), torch.zeros(1, device=weights.device)])
    return t_mid[first]


def volume_render(samples: RaySamples, density: torch.Tensor, features: torch.Tensor,
                  background: torch.Tensor | None = None) -> RenderOutput:
    """Composite packed samples.

    density: (S,) >= 0 per field unit; features: (S, D); background: None, (D,) or (R, D) in the
    features' space, added with weight (1 - opacity).
    """
    trans, alpha = transmittance_and_alpha(samples, density)
    weights = trans * alpha
    r = samples.n_rays
    opacity = accumulate(weights, samples.ray_indices, r)
    feats = accumulate(weights[:, None] * features, samples.ray_indices, r)
    depth = accumulate(weights * samples.t_mid, samples.ray_indices, r) / opacity.clamp_min(1e-6)
    if background is not None:
        feats = feats + (1.0 - opacity)[:, None] * background
    return RenderOutput(feats, depth, median_distance(samples, weights, opacity), opacity, weights,
                        len(samples))
