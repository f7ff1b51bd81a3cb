"""Scene contraction for unbounded scenes (mip-NeRF 360 style, L-infinity norm so it fills a cube)."""

from __future__ import annotations

import torch


def contract(points_field: torch.Tensor) -> torch.Tensor:
    """points_field: (S, 3) field frame -> (S, 3) in [-2, 2]^3.

    Identity inside the unit cube; beyond it, x -> (2 - 1/|x|) x/|x| with |.| the max-norm.
    """
    norm = points_field.abs().amax(-1, keepdim=True).clamp_min(1e-9)
    return torch.where(norm <= 1, points_field, (2 - 1 / norm) * points_field / norm)


def to_unit_cube(points_field: torch.Tensor, contracted: bool) -> torch.Tensor:
    """Map field-frame points to the encoding's [0, 1]^3 input.

    bounded: [-1, 1]^3 -> [0, 1]^3 (outside is clamped by the encoding; the sampler never asks).
    unbounded: contract to [-2, 2]^3, then -> [0, 1]^3.
    """
    if contracted:
        return contract(points_field) * 0.25 + 0.5
    return points_field * 0.5 + 0.5
