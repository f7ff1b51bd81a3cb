"""The model a TrainConfig asks for: the field (NeRF, feature field or reference MLP, composed or not) and
the model that wires it to the sampler and renderers."""

from __future__ import annotations

import torch
from torch import nn

from core.fields.compose import ComposedField
from core.fields.feature import FeatureField
from core.fields.nerf import HashNerfField, ReferenceNerfField
from core.fields.neural_renderer import NeuralRenderer
from core.models.config import TrainConfig
from core.models.feature import FeatureFieldModel, renderer_config
from core.models.radiance import RadianceModel, field_config, sampler_config


def build_field(cfg: TrainConfig, contracted: bool, n_images: int, device: torch.device | str) -> nn.Module:
    """The field of `cfg.model` ("nerf" -> RGB, "feature_field" -> `cfg.feature_dim` features).

    With `cfg.composition`: a ComposedField of a bounded foreground field (its box set later with
    `set_region`, default the unit box) and a contracted background field (seed + 1); `contracted` is
    then ignored (the composed field is always sampled as an unbounded scene).
    """
    base = field_config(cfg, n_images)

    def one(is_contracted: bool, seed: int) -> nn.Module:
        if cfg.model == "feature_field":
            return FeatureField(base, cfg.feature_dim, is_contracted, device, seed)
        if cfg.model == "nerf":
            return HashNerfField(base, is_contracted, device, seed)
        raise ValueError(f"no hash-grid field for model {cfg.model!r}: use nerf or feature_field")

    if not cfg.composition:
        return one(contracted, cfg.seed)
    return ComposedField(one(False, cfg.seed), one(True, cfg.seed + 1))


def build_feature_model(cfg: TrainConfig, contracted: bool, n_images: int, device: torch.device
                        ) -> FeatureFieldModel:
    """A FeatureFieldModel for `cfg` (model "feature_field") on `device`; composed fields are contracted."""
    if cfg.model != "feature_field":
        raise ValueError(f"build_feature_model needs model 'feature_field', got {cfg.model!r}")
    field = build_field(cfg, contracted, n_images, device)
    renderer = NeuralRenderer(renderer_config(cfg))
    return FeatureFieldModel(field, contracted or cfg.composition, sampler_config(cfg), renderer).to(device)


def build_model(cfg: TrainConfig, contracted: bool, n_images: int, device: torch.device) -> RadianceModel:
    """The model a config asks for, on `device` (n_images: training images, for appearance codes).

    "nerf" (hash grid, RGB), "reference" (MLP NeRF) or "feature_field" (core.models.feature: features, and
    the neural renderer). With cfg.composition (nerf or feature_field) the field is a ComposedField of a
    bounded foreground and a contracted background, and the model is sampled as unbounded."""
    if cfg.model == "reference":
        field = ReferenceNerfField(contracted)
    elif cfg.model in ("nerf", "feature_field"):
        if cfg.model == "feature_field":
            return build_feature_model(cfg, contracted, n_images, device)
        field = build_field(cfg, contracted, n_images, device)
        contracted = contracted or cfg.composition
    else:
        raise ValueError(f"unknown model {cfg.model!r}: use nerf, feature_field or reference")
    return RadianceModel(field, contracted, sampler_config(cfg)).to(device)
