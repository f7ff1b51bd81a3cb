"""Radiance fields: the hash-grid NeRF (Instant-NGP style) and a reference MLP NeRF (original NeRF)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from core.fields.base import FieldOutput
from core.fields.encoding import HashGridConfig, fourier_encode, make_hash_grid, sh_encode
from core.functional.contraction import to_unit_cube


def trunc_exp(x: torch.Tensor) -> torch.Tensor:
    """exp with a clamped input so densities cannot overflow in float16/32."""
    return torch.exp(x.clamp(max=15.0))


def mlp(n_in: int, n_hidden: int, n_layers: int, n_out: int) -> nn.Sequential:
    """n_layers hidden layers of width n_hidden with ReLU; a linear output layer."""
    layers: list[nn.Module] = []
    width = n_in
    for _ in range(n_layers):
        layers += [nn.Linear(width, n_hidden), nn.ReLU(inplace=True)]
        width = n_hidden
    layers.append(nn.Linear(width, n_out))
    return nn.Sequential(*layers)


@dataclass(frozen=True)
class FieldConfig:
    grid: HashGridConfig = HashGridConfig()
    backend: str = "auto"            # auto | torch | triton | tcnn (hash grid)
    hidden: int = 64
    geo_features: int = 15
    color_layers: int = 2
    sh_degree: int = 4
    appearance_dim: int = 0          # 0 turns the per-image appearance embedding off
    n_images: int = 0
    out_features: int = 3            # 3 for RGB; M_f for a feature field
    out_activation: str = "sigmoid"  # sigmoid (RGB) | none (features)


class HashNerfField(nn.Module):
    """Density from a hash grid + tiny MLP; colour (or features) from geometry features, SH-encoded view
    direction and an optional per-image appearance embedding (NeRF-W).

    forward(points_field (S,3) field frame, directions (S,3) unit, image_index (S,) int64, -1 = novel
    view) -> FieldOutput(density (S,) per field unit, features (S, out_features)).
    """

    def __init__(self, cfg: FieldConfig, contracted: bool, device: str | torch.device = "cpu", seed: int = 0):
        super().__init__()
        self.cfg = cfg
        self.contracted = contracted
        self.encoding = make_hash_grid(cfg.grid, cfg.backend, device, seed)
        self.density_net = mlp(cfg.grid.n_output_dims, cfg.hidden, 1, 1 + cfg.geo_features)
        n_app = cfg.appearance_dim if cfg.n_images > 0 else 0
        self.appearance = nn.Embedding(cfg.n_images, n_app) if n_app else None
        if self.appearance is not None:
            nn.init.zeros_(self.appearance.weight)
        self.color_net = mlp(cfg.geo_features + cfg.sh_degree ** 2 + n_app, cfg.hidden, cfg.color_layers,
                             cfg.out_features)

    @property
    def backend(self) -> str:
        names = {"HashGridTcnn": "tcnn", "HashGridTriton": "triton"}
        return names.get(type(self.encoding).__name__, "torch")

    def _geometry(self, points_field: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.density_net(self.encoding(to_unit_cube(points_field, self.contracted)))
        return trunc_exp(h[:, 0] - 1.0), h[:, 1:]

    def density(self, points_field: torch.Tensor) -> torch.Tensor:
        """(S, 3) field frame -> (S,) density."""
        return self._geometry(points_field)[0]

    def appearance_code(self, image_index: torch.Tensor) -> torch.Tensor:
        """(S,) int64 -> (S, A): the image's embedding; novel views (-1) get the mean embedding."""
        assert self.appearance is not None
        known = image_index >= 0
        mean = self.appearance.weight.mean(0, keepdim=True).expand(image_index.shape[0], -1)
        return torch.where(known[:, None], self.appearance(image_index.clamp_min(0)), mean)

    def forward(self, points_field: torch.Tensor, directions: torch.Tensor,
                image_index: torch.Tensor) -> FieldOutput:
        density, geo = self._geometry(points_field)
        parts = [geo, sh_encode(directions, self.cfg.sh_degree)]
        if self.appearance is not None:
            parts.append(self.appearance_code(image_index))
        out = self.color_net(torch.cat(parts, dim=-1))
        if self.cfg.out_activation == "sigmoid":
            out = torch.sigmoid(out)
        return FieldOutput(density=density, features=out.float())


class ReferenceNerfField(nn.Module):
    """The original NeRF field: Fourier features + an 8-layer MLP (smaller by default), for comparison
    and testing. Same interface as HashNerfField."""

    def __init__(self, contracted: bool, hidden: int = 128, layers: int = 4, n_freqs: int = 10,
                 dir_freqs: int = 4):
        super().__init__()
        self.contracted = contracted
        self.n_freqs, self.dir_freqs = n_freqs, dir_freqs
        self.trunk = mlp(3 * (2 * n_freqs + 1), hidden, layers, hidden + 1)
        self.head = mlp(hidden + 3 * (2 * dir_freqs + 1), hidden // 2, 1, 3)

    backend = "mlp"

    def _trunk(self, points_field: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = to_unit_cube(points_field, self.contracted) * 2 - 1
        h = self.trunk(fourier_encode(x, self.n_freqs))
        return torch.nn.functional.softplus(h[:, 0] - 1.0) * 10.0, h[:, 1:]

    def density(self, points_field: torch.Tensor) -> torch.Tensor:
        return self._trunk(points_field)[0]

    def forward(self, points_field: torch.Tensor, directions: torch.Tensor,
                image_index: torch.Tensor) -> FieldOutput:
        density, h = self._trunk(points_field)
        rgb = torch.sigmoid(self.head(torch.cat([h, fourier_encode(directions, self.dir_freqs)], -1)))
        return FieldOutput(density=density, features=rgb)
