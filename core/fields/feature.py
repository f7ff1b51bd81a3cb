"""The neural feature field (GIRAFFE): density and an M_f-dim feature per point, volume-rendered into a
low-resolution feature map that `core.fields.neural_renderer` decodes into the full-resolution image.

- `FeatureField`: the hash-grid field of `core.fields.nerf` whose head outputs M_f raw features.
- `build_field`: the field a TrainConfig asks for (NeRF or feature field), composed of a foreground and a
  background field (`core.fields.compose`) when `composition` is on.
- `FeatureFieldModel`: the model layer: a RadianceModel (sampler + volume renderer) plus the neural
  renderer, with ray grids for patches and whole frames (a ray per s x s block of output pixels).
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from core.config import TrainConfig
from core.fields.base import FieldOutput
from core.fields.compose import ComposedField
from core.fields.contraction import to_unit_cube
from core.fields.nerf import FieldConfig, HashNerfField
from core.fields.neural_renderer import NeuralRenderer, NeuralRendererConfig, RendererOutput
from core.model import RadianceModel, field_config, sampler_config
from core.rays import RayBundle, rays_from_pixels
from core.render import RenderOutput, join_outputs
from core.sampling import SamplerConfig


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


def renderer_config(cfg: TrainConfig) -> NeuralRendererConfig:
    """The neural renderer for a feature-field config: M_f features + opacity in (`FeatureFieldModel.
    feature_rays` layout), `cfg.upsample` x out; with cfg.pixel_features the hash-grid encoding at every output
    pixel's point goes to the last block."""
    pixel = cfg.grid_levels * cfg.grid_features if cfg.pixel_features and cfg.upsample > 1 else 0
    return NeuralRendererConfig(in_channels=cfg.feature_dim + 1, upsample=cfg.upsample, pixel_channels=pixel,
                                skip_kernel=cfg.skip_kernel)


def pixel_points(c2w_field: torch.Tensor, params: torch.Tensor, u0: torch.Tensor, v0: torch.Tensor,
                 z_low: torch.Tensor, s: int, crop: int = 0) -> torch.Tensor:
    """Each output pixel's 3D point: its own ray at the feature map's z-depth (bilinearly upsampled).

    c2w_field: (K, 4, 4) float32 field frame; params: (K, 8) intrinsics; u0, v0: (K,) int64 top-left output
    pixel; z_low: (K, n_v, n_u) float32 z-depth in field units of the low-res grid starting there.
    crop: output pixels left out on every side of the grid (the depth is still upsampled from the whole grid).
    Returns (K, n_v s - 2 crop, n_u s - 2 crop, 3) float32 field-frame points (row-major pixels).
    """
    z = F.interpolate(z_low[:, None], scale_factor=s, mode="bilinear", align_corners=False)[:, 0]
    if crop:
        z = z[:, crop:-crop, crop:-crop]
    k, h, w = z.shape
    dv, du = torch.meshgrid(torch.arange(h, device=z.device), torch.arange(w, device=z.device), indexing="ij")
    u = (u0[:, None, None] + crop + du).reshape(-1)
    v = (v0[:, None, None] + crop + dv).reshape(-1)
    m = h * w
    rays = rays_from_pixels(c2w_field.repeat_interleave(m, 0), params.repeat_interleave(m, 0), u, v)
    t = z.reshape(-1) / rays.z_scale
    return (rays.origins + rays.directions * t[:, None]).view(k, h, w, 3)


def lowres_centres(u0: torch.Tensor, v0: torch.Tensor, n_u: int, n_v: int, s: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-resolution pixel coordinates of the rays of a low-resolution grid.

    u0, v0: (K,) int64 top-left output pixel of each grid; n_u x n_v low-res pixels, each covering s x s
    output pixels. Low-res pixel (i, j) sits at the centre of output pixels u0 + s i .. u0 + s i + s - 1, i.e.
    at integer-pixel coordinate u0 + s i + (s - 1) / 2 (pixel centres are at +0.5, core.cameras).
    Returns u, v: (K, n_v, n_u) float32 (fractional for even s).
    """
    off = (s - 1) / 2.0
    i = torch.arange(n_u, device=u0.device, dtype=torch.float32) * s + off
    j = torch.arange(n_v, device=u0.device, dtype=torch.float32) * s + off
    u = u0.float()[:, None, None] + i[None, None, :]
    v = v0.float()[:, None, None] + j[None, :, None]
    return u.expand(-1, n_v, n_u), v.expand(-1, n_v, n_u)


class FeatureFieldModel(RadianceModel):
    """RadianceModel over a feature field, plus the neural renderer (`renderer`).

    `forward(rays, background, training)` is the RadianceModel's: per-ray features (R, M_f) premultiplied
    by opacity when background is None. `patches` renders whole image patches through the renderer.
    """

    def __init__(self, field: nn.Module, contracted: bool, sampler: SamplerConfig,
                 renderer: NeuralRenderer) -> None:
        super().__init__(field, contracted, sampler)
        self.renderer = renderer

    @property
    def upsample(self) -> int:
        return self.renderer.upsample

    def feature_rays(self, rays: RayBundle, training: bool) -> tuple[torch.Tensor, RenderOutput]:
        """Per-ray renderer input (R, M_f + 1): premultiplied colour (3), opacity (1), the other M_f - 3
        features (premultiplied); and the volume render itself (depth, opacity, sample count)."""
        out = self(rays, None, training)
        f = out.features.float()
        return torch.cat([f[:, :3], out.opacity[:, None].float(), f[:, 3:]], -1), out

    def pixel_features(self, c2w_field: torch.Tensor, params: torch.Tensor, u0: torch.Tensor, v0: torch.Tensor,
                       z_low: torch.Tensor, crop: int = 0) -> torch.Tensor:
        """The renderer's per-pixel input (K, G, n_v s - 2 crop, n_u s - 2 crop): the field's `pixel_features`
        at `pixel_points` (arguments as there)."""
        pts = pixel_points(c2w_field, params, u0, v0, z_low, self.upsample, crop)
        k, h, w, _ = pts.shape
        return self.field.pixel_features(pts.reshape(-1, 3)).view(k, h, w, -1).permute(0, 3, 1, 2)

    def patches(self, c2w_field: torch.Tensor, params: torch.Tensor, image_index: torch.Tensor,
                u0: torch.Tensor, v0: torch.Tensor, size: int, margin: int, training: bool,
                margin_grad: bool = True) -> tuple[RendererOutput, RenderOutput]:
        """Render K patches of size x size output pixels (size a multiple of the upsampling s).

        c2w_field: (K, 4, 4) float32 field frame; params: (K, 8) intrinsics; image_index, u0, v0: (K,) int64.
        margin: extra low-res rays on each side, rendered and cropped away, so the patch's border pixels
        see neighbours as in a whole-frame render. margin_grad False: the margin rays are rendered without
        gradients (context for the renderer only: the field then learns from the patch's own rays, and a
        training step skips their backward pass).
        Returns the renderer output (image cropped to the patch: (K, 4, size, size); low_res, the first skip's
        RGBA at every rendered ray, margin included: (K, 4, n, n) with n = size / s + 2 margin) and the volume
        render of all K n^2 rays (per-ray tensors in patch-major, row-major order).
        """
        s = self.upsample
        if size % s:
            raise ValueError(f"patch size {size} is not a multiple of the upsampling {s}")
        n, k = size // s + 2 * margin, u0.shape[0]
        u, v = lowres_centres(u0 - margin * s, v0 - margin * s, n, n, s)
        per_ray = n * n
        rays = rays_from_pixels(c2w_field.repeat_interleave(per_ray, 0), params.repeat_interleave(per_ray, 0),
                                u.reshape(-1), v.reshape(-1), image_index.repeat_interleave(per_ray, 0))
        if margin_grad or not margin:
            feats, out = self.feature_rays(rays, training)
        else:
            order, inner = inner_rays_first(k, n, margin, rays.origins.device)
            feats_in, out_in = self.feature_rays(rays.take(order[:inner]), training)
            with torch.no_grad():
                feats_out, out_out = self.feature_rays(rays.take(order[inner:]), training)
            back = torch.argsort(order)
            feats = torch.cat([feats_in, feats_out])[back]
            out = join_outputs([out_in, out_out], back, keep_weights=False)   # per-sample weights: not needed
        fmap = feats.view(k, n, n, -1).permute(0, 3, 1, 2)
        pixels = None
        if self.renderer.pixel_proj is not None:
            # Only the patch's pixels and the ring its outputs read (renderer.pixel_radius) need their own
            # features: the rest of the margin gets zeros, which changes only outputs cropped away below.
            z = (out.depth * rays.z_scale).detach().view(k, n, n)
            crop = max(0, margin * s - self.renderer.pixel_radius)
            pixels = F.pad(self.pixel_features(c2w_field, params, u0 - margin * s, v0 - margin * s, z, crop),
                           (crop,) * 4)
        rendered = self.renderer(fmap, pixels)
        lo, hi = margin * s, (n - margin) * s
        return RendererOutput(rendered.image[:, :, lo:hi, lo:hi], rendered.low_res), out


def inner_rays_first(k: int, n: int, margin: int, device: torch.device) -> tuple[torch.Tensor, int]:
    """K grids of n x n rays, flat in patch-major, row-major order: (order (K n^2,) int64, the rays inside
    each grid's margin first, then the margin's; the number of inner rays)."""
    ring = torch.ones(k, n, n, dtype=torch.bool, device=device)
    ring[:, margin:n - margin, margin:n - margin] = False
    flat = ring.reshape(-1)
    return torch.cat([torch.nonzero(~flat)[:, 0], torch.nonzero(flat)[:, 0]]), int((~flat).sum())


def build_feature_model(cfg: TrainConfig, contracted: bool, n_images: int, device: torch.device
                        ) -> FeatureFieldModel:
    """A FeatureFieldModel for `cfg` (model "feature_field") on `device`; composed fields are contracted."""
    if cfg.model != "feature_field":
        raise ValueError(f"build_feature_model needs model 'feature_field', got {cfg.model!r}")
    field = build_field(cfg, contracted, n_images, device)
    renderer = NeuralRenderer(renderer_config(cfg))
    return FeatureFieldModel(field, contracted or cfg.composition, sampler_config(cfg), renderer).to(device)
