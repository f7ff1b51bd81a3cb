"""Composition of fields (GIRAFFE's parameter-free operator) and a foreground/background field.

The operator: densities add, features are averaged with weights proportional to each field's density,
    sigma = sum_i sigma_i,    f = sum_i sigma_i f_i / sigma.
Where sigma = 0 the weighted mean is undefined; `compose` uses weights (sigma_i + eps / n) / (sigma + eps),
which equal sigma_i / sigma to within eps / sigma and fall back to the plain mean of the f_i where every
density is 0, so values and gradients are finite everywhere.

`ComposedField` splits space between a bounded foreground field (the region of interest: a box, optionally
cut by a support plane such as the ground or a table top) and an unbounded, contracted background field.
The two supports are disjoint, so every point belongs to exactly one part and the split is unambiguous:
whatever lies inside the region is foreground, everything else background. The foreground field sees its
box mapped onto [-1, 1]^3 (its bounded domain), so its whole grid resolution covers the region.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from core.fields.base import FieldOutput

COMPOSE_EPS = 1e-10


def compose(densities: Sequence[torch.Tensor], features: Sequence[torch.Tensor], eps: float = COMPOSE_EPS
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Compose n fields evaluated at the same S points.

    densities: n tensors (S,) float32, >= 0, per field-frame unit length.
    features: n tensors (S, D) float32 (RGB or M_f features, one space for all).
    Returns density (S,) = sum of the densities, and features (S, D) = their density-weighted mean
    (the plain mean where every density is 0). Differentiable in every input, never NaN for finite inputs.
    """
    if len(densities) != len(features) or not densities:
        raise ValueError(f"compose needs as many densities as feature sets (>= 1), got "
                         f"{len(densities)} and {len(features)}")
    if len(densities) == 1:
        return densities[0], features[0]
    sigma = torch.stack(list(densities), 0)                          # (n, S)
    total = sigma.sum(0)
    weights = (sigma + eps / len(densities)) / (total + eps)[None]   # (n, S), sums to 1
    feats = (weights[..., None] * torch.stack(list(features), 0)).sum(0)
    return total, feats


def compose_outputs(outputs: Sequence[FieldOutput], eps: float = COMPOSE_EPS) -> FieldOutput:
    """`compose` on FieldOutputs of the same S points -> one FieldOutput (density (S,), features (S, D))."""
    density, feats = compose([o.density for o in outputs], [o.features for o in outputs], eps)
    return FieldOutput(density=density, features=feats)


def region_mask(points_field: torch.Tensor, box_min: torch.Tensor, box_max: torch.Tensor,
                plane: torch.Tensor) -> torch.Tensor:
    """Which points lie in the foreground region.

    points_field: (S, 3) float32, field frame. box_min, box_max: (3,) float32, field frame.
    plane: (4,) float32 [nx, ny, nz, d] (field frame): points with n . x >= d are kept; [0, 0, 0, 0]
        keeps everything (no plane).
    Returns (S,) bool.
    """
    inside = ((points_field >= box_min) & (points_field <= box_max)).all(-1)
    return inside & (points_field @ plane[:3] >= plane[3])


class ComposedField(nn.Module):
    """A foreground field restricted to a region (box [box_min, box_max] of the field frame, cut by an
    optional plane) composed with a contracted background field that is zero inside that region.

    foreground: a bounded field (contracted=False) queried at box coordinates (`to_box`, box -> [-1, 1]^3);
    background: a contracted field queried at field-frame points. Both have forward(points, directions,
    image_index) -> FieldOutput and density(points) -> (S,), the same feature dimension, and a `cfg`.
    Densities stay per field-frame unit. The region is stored as buffers, so it is saved and restored
    with the model. `contracted` is True: rays are sampled as in an unbounded scene.

    forward(points_field (S, 3), directions (S, 3) unit, image_index (S,) int64) -> FieldOutput
    (density (S,), features (S, D)).
    """

    contracted = True

    def __init__(self, foreground: nn.Module, background: nn.Module,
                 box_min: Sequence[float] = (-1.0, -1.0, -1.0), box_max: Sequence[float] = (1.0, 1.0, 1.0),
                 plane: Sequence[float] = (0.0, 0.0, 0.0, 0.0)) -> None:
        super().__init__()
        self.foreground = foreground
        self.background = background
        self.register_buffer("box_min", torch.tensor(box_min, dtype=torch.float32))
        self.register_buffer("box_max", torch.tensor(box_max, dtype=torch.float32))
        self.register_buffer("plane", torch.tensor(plane, dtype=torch.float32))

    @property
    def backend(self) -> str:
        return getattr(self.foreground, "backend", "torch")

    def set_region(self, box_min: Sequence[float], box_max: Sequence[float],
                   plane: Sequence[float] = (0.0, 0.0, 0.0, 0.0)) -> None:
        """Move the foreground region (field frame): box corners (3,) and plane [nx, ny, nz, d]."""
        for name, value in (("box_min", box_min), ("box_max", box_max), ("plane", plane)):
            getattr(self, name).copy_(torch.as_tensor(value, dtype=torch.float32))

    @property
    def has_plane(self) -> bool:
        """Whether a support plane cuts the foreground region."""
        return bool(self.plane[:3].any())

    def to_box(self, points_field: torch.Tensor) -> torch.Tensor:
        """(S, 3) field frame -> (S, 3) foreground-box coordinates, the box at [-1, 1]^3."""
        centre = 0.5 * (self.box_min + self.box_max)
        half = (0.5 * (self.box_max - self.box_min)).clamp_min(1e-6)
        return (points_field - centre) / half

    def in_foreground(self, points_field: torch.Tensor) -> torch.Tensor:
        """(S, 3) field frame -> (S,) bool: inside the foreground region."""
        return region_mask(points_field, self.box_min, self.box_max, self.plane)

    def _split(self, points_field: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices (F,), (B,) int64 of the points in the foreground region and of the others."""
        fg = self.in_foreground(points_field)
        return fg.nonzero().squeeze(1), (~fg).nonzero().squeeze(1)

    def density_parts(self, points_field: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(S, 3) field frame -> foreground density (S,) and background density (S,) (each 0 off its part)."""
        fi, bi = self._split(points_field)
        fg = points_field.new_zeros(points_field.shape[0])
        bg = points_field.new_zeros(points_field.shape[0])
        if len(fi):
            fg = fg.index_put((fi,), self.foreground.density(self.to_box(points_field[fi])).float())
        if len(bi):
            bg = bg.index_put((bi,), self.background.density(points_field[bi]).float())
        return fg, bg

    def pixel_features(self, points_field: torch.Tensor) -> torch.Tensor:
        """(S, 3) field frame -> (S, G) float32: each part's own `pixel_features` at its points (the
        foreground's at box coordinates). Both parts share one grid layout, so G is the same."""
        fi, bi = self._split(points_field)
        out = points_field.new_zeros(points_field.shape[0], self.foreground.cfg.grid.n_output_dims)
        if len(fi):
            out = out.index_put((fi,), self.foreground.pixel_features(self.to_box(points_field[fi])).float())
        if len(bi):
            out = out.index_put((bi,), self.background.pixel_features(points_field[bi]).float())
        return out

    def density(self, points_field: torch.Tensor, part: str = "all") -> torch.Tensor:
        """(S, 3) field frame -> (S,) density of part "all" (composed), "foreground" or "background"."""
        fg, bg = self.density_parts(points_field)
        if part == "foreground":
            return fg
        if part == "background":
            return bg
        if part != "all":
            raise ValueError(f"unknown part {part!r}: use all, foreground or background")
        return fg + bg

    @staticmethod
    def _evaluate(field: nn.Module, index: torch.Tensor, points: torch.Tensor, directions: torch.Tensor,
                  image_index: torch.Tensor, dim: int) -> FieldOutput:
        """One part's output at its `index` points (points already in its own coordinates, (F, 3)),
        scattered to all S points (zero density and features off its part)."""
        s = directions.shape[0]
        density = directions.new_zeros(s)
        feats = directions.new_zeros(s, dim)
        if len(index):
            out = field(points, directions[index], image_index[index])
            density = density.index_put((index,), out.density.float())
            feats = feats.index_put((index,), out.features.float())
        return FieldOutput(density=density, features=feats)

    def forward(self, points_field: torch.Tensor, directions: torch.Tensor,
                image_index: torch.Tensor) -> FieldOutput:
        fi, bi = self._split(points_field)
        dim = self.foreground.cfg.out_features
        fg = self._evaluate(self.foreground, fi, self.to_box(points_field[fi]), directions, image_index, dim)
        bg = self._evaluate(self.background, bi, points_field[bi], directions, image_index, dim)
        return compose_outputs([fg, bg])
