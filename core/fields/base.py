"""The field contract: positions (and directions) in, density and features out."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class FieldOutput:
    """What every field returns for S sample points.

    density: (S,) float32, >= 0, per unit length in the field frame.
    features: (S, D) float32. D == 3 for a radiance field (linear RGB in [0, 1]); D == M_f for a
        feature field. The volume renderer treats both alike.
    """

    density: torch.Tensor
    features: torch.Tensor
