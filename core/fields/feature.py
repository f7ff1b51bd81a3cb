"""The neural feature field (GIRAFFE): the hash-grid NeRF field whose head outputs M_f features per point.

Volume-rendered, the features form a low-resolution feature map that `core.fields.neural_renderer` decodes
into the full-resolution image (the model that wires the two is `core.models.feature`).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from core.fields.base import FieldOutput
from core.fields.nerf import FieldConfig, HashNerfField
from core.functional.contraction import to_unit_cube


class FeatureField(HashNerfField):
    """HashNerfField (same hash grid, density MLP, SH view encoding, appearance codes) whose head outputs
    `feature_dim` features instead of RGB: channels 0..2 are a colour in [0, 1] (sigmoid), the others raw.
    Volume-rendered, the colour channels give the field's own low-resolution image, which the neural
    renderer refines (NeuralRendererConfig.rgba_skip).

    forward(points_field (S, 3), directions (S, 3) unit, image_index (S,) int64) -> FieldOutput
    (density (S,) per field unit, features (S, feature_dim) float32).
    """

    def __init__(self, cfg: FieldConfig, feature_dim: int, contracted: bool, device: str | torch.device = "cpu",
                 seed: int = 0) -> None:
        if feature_dim < 3:
            raise ValueError(f"feature_dim must be >= 3 (a colour and the rest), got {feature_dim}")
        super().__init__(replace(cfg, out_features=feature_dim, out_activation="none"), contracted, device, seed)

    def forward(self, points_field: torch.Tensor, directions: torch.Tensor, image_index: torch.Tensor
                ) -> FieldOutput:
        out = super().forward(points_field, directions, image_index)
        feats = torch.cat([torch.sigmoid(out.features[:, :3]), out.features[:, 3:]], -1)
        return FieldOutput(density=out.density, features=feats)

    @property
    def feature_dim(self) -> int:
        return self.cfg.out_features

    def pixel_features(self, points_field: torch.Tensor) -> torch.Tensor:
        """(S, 3) field frame -> (S, G) float32: the hash-grid encoding at the points (G = levels x features),
        the per-output-pixel input of the neural renderer."""
        return self.encoding(to_unit_cube(points_field, self.contracted)).float()
