"""The feature-field model: a RadianceModel (sampler + volume renderer) over a `FeatureField`, plus the
neural renderer, with ray grids for patches and whole frames (a ray per s x s block of output pixels)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from core.fields.neural_renderer import NeuralRenderer, NeuralRendererConfig, RendererOutput
from core.functional.rays import RayBundle, rays_from_pixels
from core.functional.render import RenderOutput, join_outputs
from core.functional.sampling import SamplerConfig
from core.models.config import TrainConfig
from core.models.radiance import RadianceModel


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
    at integer-pixel coordinate u0 + s i + (s - 1) / 2 (pixel centres are at +0.5, core.functional.cameras).
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
