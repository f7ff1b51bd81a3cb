"""The 2D neural renderer of GIRAFFE: a low-resolution feature map in, a full-resolution image out.

n blocks, each: nearest-neighbour upsampling x2, a 3x3 conv, a leaky ReLU. At every resolution (the
input's included) a 3x3 conv maps the features to the output channels; the output of the previous
resolution is bilinearly upsampled x2 and added (skip connections), so the image is refined coarse to
fine. The output of the input resolution (the "first skip") is returned as well: supervising it keeps
the 3D field responsible for colour, hence consistent across views.

With `rgba_skip` (the default) the first four input channels are the volume-rendered premultiplied RGB
and opacity. The first skip's colour logits are the field's plus a conv's correction, and its alpha
is the field's opacity, uncorrected: the low-resolution output starts as exactly what the field renders (a
NeRF at feature resolution), and its alpha stays tied to the density as in volume rendering. That colour
correction is by default (`skip_kernel` 1) a 1 x 1 conv: each ray's low-resolution colour depends on that ray's
features only, so the first-skip loss checks every ray's render against the image the way a NeRF's loss does.
With `skip_kernel` 3 it is a 3 x 3 conv (GIRAFFE's, as at every other resolution), and a ray can borrow its
neighbours' colour, which leaves thick, foggy surfaces. Alpha gets no correction: with one, the network learns to
make a faint field look opaque. The to-RGB convs start at zero, so an untrained renderer outputs the field's
render, bilinearly upsampled (in logit space).

With `pixel_channels` > 0 the last block also receives per-output-pixel features (B, G, H, W), added
through a 1x1 conv before its activation: the field's encoding at each output pixel's own 3D point (its
ray at the feature map's depth, see core.fields.feature). The detail finer than the feature map then comes
from the 3D field, the same in every view, rather than being invented by the 2D network.

Output channels: 4 = premultiplied RGB and alpha (both squashed by a sigmoid); an image on a background
`bg` is `rgb + (1 - alpha) * bg` (see `over_background`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

OUT_CHANNELS = 4            # premultiplied R, G, B and alpha


@dataclass(frozen=True)
class NeuralRendererConfig:
    """in_channels: channels of the feature map (M_f, plus 1 when opacity is appended).
    upsample: output / input resolution, a power of two 2^n (n blocks; 1 = no block).
    width: channels after the first block; each further block halves it, down to min_width.
    leaky_slope: negative slope of the leaky ReLUs.
    rgba_skip: input channels 0..3 are premultiplied RGB and opacity in [0, 1], added (as logits) to the
        first skip (see the module docstring).
    pixel_channels: channels G of the per-output-pixel features fed to the last block (0: none; needs
        upsample >= 2).
    skip_kernel: with rgba_skip, the kernel of the first skip's colour correction: 1 (per ray) or 3 (3 x 3)."""

    in_channels: int = 17
    upsample: int = 4
    width: int = 64
    min_width: int = 16
    leaky_slope: float = 0.2
    rgba_skip: bool = True
    pixel_channels: int = 0
    skip_kernel: int = 1

    @property
    def n_blocks(self) -> int:
        n = round(math.log2(self.upsample)) if self.upsample >= 1 else -1
        if n < 0 or 2 ** n != self.upsample:
            raise ValueError(f"upsample must be a power of two (1, 2, 4, 8, ...), got {self.upsample}")
        return n

    def widths(self) -> list[int]:
        """Channels at each resolution, input first: n_blocks + 1 entries."""
        return [self.in_channels] + [max(self.min_width, self.width >> i) for i in range(self.n_blocks)]


@dataclass
class RendererOutput:
    """image: (B, 4, H_v * s, W_v * s) float32 in [0, 1], premultiplied RGB + alpha at full resolution.
    low_res: (B, 4, H_v, W_v) float32 in [0, 1], the first skip output (the feature map's own RGBA)."""

    image: torch.Tensor
    low_res: torch.Tensor


def logit(x: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Inverse sigmoid of x in [0, 1], clamped to [eps, 1 - eps] first. Same shape."""
    x = x.clamp(eps, 1.0 - eps)
    return torch.log(x) - torch.log1p(-x)


def upsample_nearest(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, 2H, 2W), each value repeated 2 x 2."""
    return F.interpolate(x, scale_factor=2, mode="nearest")


def upsample_bilinear(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, 2H, 2W), bilinear with pixel centres aligned (align_corners=False)."""
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


def over_background(rgba: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """Composite premultiplied RGBA on a background.

    rgba: (B, 4, H, W) in [0, 1]; background: (3,), (B, 3) or (B, 3, H, W) in [0, 1].
    Returns (B, 3, H, W) RGB = rgb + (1 - alpha) * background.
    """
    bg = background
    if bg.dim() == 1:
        bg = bg[None, :, None, None]
    elif bg.dim() == 2:
        bg = bg[:, :, None, None]
    return rgba[:, :3] + (1.0 - rgba[:, 3:4]) * bg


class NeuralRenderer(nn.Module):
    """forward(features (B, C_in, H_v, W_v) float32, pixel_features (B, G, H_v s, W_v s) float32 or None)
    -> RendererOutput (full res = H_v * upsample s). pixel_features are required iff cfg.pixel_channels."""

    def __init__(self, cfg: NeuralRendererConfig) -> None:
        super().__init__()
        self.cfg = cfg
        widths = cfg.widths()
        self.blocks = nn.ModuleList(nn.Conv2d(widths[i], widths[i + 1], 3, padding=1)
                                    for i in range(cfg.n_blocks))
        # With rgba_skip the first to-RGB conv corrects colour only (alpha is the field's opacity), over 3 x 3
        # rays or ray by ray (skip_kernel 1): see the module docstring.
        if cfg.skip_kernel not in (1, 3):
            raise ValueError(f"skip_kernel must be 1 or 3, got {cfg.skip_kernel}")
        first_out, first_k = (3, cfg.skip_kernel) if cfg.rgba_skip else (OUT_CHANNELS, 3)
        self.to_rgb = nn.ModuleList(
            nn.Conv2d(w, first_out, first_k, padding=first_k // 2) if i == 0 else
            nn.Conv2d(w, OUT_CHANNELS, 3, padding=1) for i, w in enumerate(widths))
        if cfg.rgba_skip:
            if cfg.in_channels < OUT_CHANNELS:
                raise ValueError(f"rgba_skip needs >= {OUT_CHANNELS} input channels, got {cfg.in_channels}")
            for conv in self.to_rgb:
                nn.init.zeros_(conv.weight)
                nn.init.zeros_(conv.bias)
        self.pixel_proj = None
        if cfg.pixel_channels:
            if not cfg.n_blocks:
                raise ValueError("per-pixel features need upsample >= 2 (at least one block)")
            self.pixel_proj = nn.Conv2d(cfg.pixel_channels, widths[-1], 1)

    @property
    def upsample(self) -> int:
        return self.cfg.upsample

    @property
    def pixel_radius(self) -> int:
        """How far (output pixels) an output pixel sees the per-pixel features: the last to-RGB conv's radius
        (they enter just before it)."""
        return self.to_rgb[-1].kernel_size[0] // 2

    def forward(self, features: torch.Tensor, pixel_features: torch.Tensor | None = None) -> RendererOutput:
        if (pixel_features is None) != (self.pixel_proj is None):
            raise ValueError(f"this renderer takes {self.cfg.pixel_channels} per-pixel feature channels; got "
                             f"{'none' if pixel_features is None else tuple(pixel_features.shape)}")
        net = features
        logits = self.to_rgb[0](net)
        if self.cfg.rgba_skip:
            # A zero alpha channel after the colour correction: the field's own opacity comes through as is.
            logits = F.pad(logits, (0, 0, 0, 0, 0, 1)) + logit(net[:, :OUT_CHANNELS])
        low_res = torch.sigmoid(logits)
        last = len(self.blocks) - 1
        for i, (block, to_rgb) in enumerate(zip(self.blocks, self.to_rgb[1:], strict=True)):
            net = block(upsample_nearest(net))
            if i == last and self.pixel_proj is not None:
                net = net + self.pixel_proj(pixel_features)
            net = F.leaky_relu(net, self.cfg.leaky_slope)
            logits = upsample_bilinear(logits) + to_rgb(net)
        return RendererOutput(image=torch.sigmoid(logits), low_res=low_res)


def render_tiled(renderer: NeuralRenderer, features: torch.Tensor, tile: int = 128, halo: int | None = None,
                 pixel_fn: Callable[[int, int, int, int], torch.Tensor] | None = None) -> RendererOutput:
    """The renderer on a large feature map, `tile` x `tile` low-res pixels at a time, so memory is bounded
    by one tile (4032 x 3024 outputs at upsample 4 take tiles of 512 x 512 output pixels).

    features: (1, C, H_v, W_v). Each tile is rendered with `halo` extra low-res pixels on every side
    (default 2 + n_blocks, more than the renderer's receptive radius), so the result equals the
    whole-map render up to float rounding. Returns RendererOutput like `renderer(features)`.
    pixel_fn(y0, y1, x0, x1): the per-pixel features (1, G, (y1 - y0) s, (x1 - x0) s) of the output pixels
    under low-res rows y0..y1-1 and columns x0..x1-1, for renderers that take them.
    """
    _, _, h, w = features.shape

    def run(ya: int, yb: int, xa: int, xb: int) -> RendererOutput:
        pixels = None if pixel_fn is None else pixel_fn(ya, yb, xa, xb)
        return renderer(features[:, :, ya:yb, xa:xb], pixels)

    if h <= tile and w <= tile:
        return run(0, h, 0, w)
    s = renderer.upsample
    halo = 2 + renderer.cfg.n_blocks if halo is None else halo
    image = features.new_empty(1, OUT_CHANNELS, h * s, w * s)
    low = features.new_empty(1, OUT_CHANNELS, h, w)
    for y0 in range(0, h, tile):
        for x0 in range(0, w, tile):
            y1, x1 = min(h, y0 + tile), min(w, x0 + tile)
            ya, xa, yb, xb = max(0, y0 - halo), max(0, x0 - halo), min(h, y1 + halo), min(w, x1 + halo)
            out = run(ya, yb, xa, xb)
            image[:, :, y0 * s:y1 * s, x0 * s:x1 * s] = out.image[:, :, (y0 - ya) * s:(y1 - ya) * s,
                                                                  (x0 - xa) * s:(x1 - xa) * s]
            low[:, :, y0:y1, x0:x1] = out.low_res[:, :, y0 - ya:y1 - ya, x0 - xa:x1 - xa]
    return RendererOutput(image=image, low_res=low)


def joint_bilateral_upsample(values: torch.Tensor, confidence: torch.Tensor, guide_low: torch.Tensor,
                             guide: torch.Tensor, sigma_spatial: float = 0.75, sigma_range: float = 0.1,
                             rows_per_chunk: int = 64) -> torch.Tensor:
    """Joint bilateral upsampling (Kopf et al. 2007): a low-res map to full resolution, edges from an image.

    values: (h, w) float32, e.g. z-depth (any finite values where confidence > 0).
    confidence: (h, w) float32 >= 0, e.g. opacity; a neighbour's weight is multiplied by it.
    guide_low: (h, w, 3) float32, the guide image at low resolution (the block means of `guide`).
    guide: (h s, w s, 3) float32, the full-resolution guide image (s = the integer upsampling factor).
    Each output pixel averages its 3 x 3 low-res neighbourhood with weights
    exp(-d^2 / 2 sigma_spatial^2) (d in low-res pixels, from the output pixel's centre) x
    exp(-|guide - guide_low|^2 / 2 sigma_range^2) x confidence. Where every weight is ~0 the nearest
    low-res value is kept. Returns (h s, w s) float32.
    """
    h, w = values.shape
    s = guide.shape[0] // h
    if guide.shape[:2] != (h * s, w * s):
        raise ValueError(f"guide {tuple(guide.shape)} is not an integer upsampling of {h}x{w}")
    dev = values.device
    frac = (torch.arange(s, device=dev, dtype=torch.float32) + 0.5) / s - 0.5        # offset in the block
    pad = (1, 1, 1, 1)
    v_pad = F.pad(values[None, None], pad, mode="replicate")[0, 0]
    c_pad = F.pad(confidence[None, None], pad)[0, 0]                                 # zero outside
    g_pad = F.pad(guide_low.permute(2, 0, 1)[None], pad, mode="replicate")[0].permute(1, 2, 0)
    out = torch.empty(h * s, w * s, dtype=torch.float32, device=dev)
    for r0 in range(0, h, rows_per_chunk):
        r1 = min(h, r0 + rows_per_chunk)
        g_hi = guide[r0 * s:r1 * s].float()                                          # (R s, W, 3)
        num = torch.zeros(g_hi.shape[:2], device=dev)
        den = torch.zeros_like(num)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                sl = (slice(1 + r0 + dy, 1 + r1 + dy), slice(1 + dx, 1 + w + dx))
                nb_v, nb_c, nb_g = (x[sl].repeat_interleave(s, 0).repeat_interleave(s, 1)
                                    for x in (v_pad, c_pad, g_pad))
                dist2 = ((frac - dy) ** 2).repeat(r1 - r0)[:, None] + ((frac - dx) ** 2).repeat(w)[None, :]
                wgt = torch.exp(-dist2 / (2 * sigma_spatial ** 2)
                                - ((g_hi - nb_g) ** 2).sum(-1) / (2 * sigma_range ** 2)) * nb_c
                num += wgt * nb_v
                den += wgt
        nearest = values[r0:r1].repeat_interleave(s, 0).repeat_interleave(s, 1)
        out[r0 * s:r1 * s] = torch.where(den > 1e-8, num / den.clamp_min(1e-8), nearest)
    return out
