"""`FeatureScene`: a TrainedScene whose `render` volume-renders the low-resolution feature map and runs the
neural renderer; depth comes from the field at feature resolution, upsampled with the rendered image as the
guide (joint bilateral), or from full-resolution rays with `exact_depth=True`."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from core.fields.neural_renderer import joint_bilateral_upsample, over_background, render_tiled
from core.functional.cameras import Intrinsics
from core.functional.rays import rays_from_pixels
from core.models.feature import FeatureFieldModel, lowres_centres
from core.scene.composition import density_of_part
from core.scene.trained import RenderResult, TrainedScene


class FeatureScene(TrainedScene):
    """A trained feature-field model: renders through the neural renderer (see the module docstring)."""

    model: FeatureFieldModel

    @torch.no_grad()
    def _lowres(self, c2w_f: torch.Tensor, params: torch.Tensor, n_u: int, n_v: int, chunk: int,
                image_index: int, s: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rays of an n_u x n_v grid, one per s x s block (s = 1: every pixel), rendered in chunks.

        Returns the renderer input (n_v, n_u, M_f + 1), z-depth and median z-depth (n_v, n_u) in
        input-frame units, and opacity (n_v, n_u); all float32 on the scene's device.
        """
        dev = self.device
        zero = torch.zeros(1, dtype=torch.long, device=dev)
        u, v = (t.reshape(-1) for t in lowres_centres(zero, zero, n_u, n_v, s))
        feats, depth, median, opacity = [], [], [], []
        inv_scale = 1.0 / self.normalization.scale
        for start in range(0, u.shape[0], chunk):
            uu, vv = u[start:start + chunk], v[start:start + chunk]
            m = uu.shape[0]
            rays = rays_from_pixels(c2w_f[None].expand(m, -1, -1), params[None].expand(m, -1), uu, vv,
                                    torch.full((m,), image_index, dtype=torch.long, device=dev))
            f, out = self.model.feature_rays(rays, training=False)
            feats.append(f.float())
            depth.append((out.depth * rays.z_scale * inv_scale).float())
            median.append((out.depth_median * rays.z_scale * inv_scale).float())
            opacity.append(out.opacity.float())
        return tuple(torch.cat(x).view(n_v, n_u, -1).squeeze(-1) for x in (feats, depth, median, opacity))

    @torch.no_grad()
    def render(self, c2w: np.ndarray, intrinsics: Intrinsics, width: int | None = None, height: int | None = None,
               chunk: int = 65536, background=(1.0, 1.0, 1.0), image_index: int = -1,
               exact_depth: bool = False) -> RenderResult:
        """Render one view (c2w: (4, 4) input frame, OpenCV axes) through the neural renderer.

        The feature map has ceil(H / s) x ceil(W / s) rays (s = upsample), rendered `chunk` rays at a time;
        the renderer runs tile by tile. Depth: the feature-resolution depth upsampled with the rendered
        image as the guide, or (exact_depth) full-resolution rays.
        """
        self.model.eval()
        width, height = width or intrinsics.width, height or intrinsics.height
        if (width, height) != (intrinsics.width, intrinsics.height):
            intrinsics = intrinsics.scaled(width, height)
        dev, s = self.device, self.model.upsample
        c2w_f = torch.from_numpy(self.normalization.c2w_to_field(np.asarray(c2w))).float().to(dev)
        params = torch.from_numpy(intrinsics.params()).float().to(dev)
        n_u, n_v = -(-width // s), -(-height // s)
        fmap, depth, median, opacity = self._lowres(c2w_f, params, n_u, n_v, chunk, image_index, s)
        z_field = depth * self.normalization.scale

        def pixels(y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
            corner = (torch.tensor([x0 * s], device=dev), torch.tensor([y0 * s], device=dev))
            return self.model.pixel_features(c2w_f[None], params[None], *corner, z_field[None, y0:y1, x0:x1])

        pixel_fn = pixels if self.model.renderer.pixel_proj is not None else None
        out = render_tiled(self.model.renderer, fmap.permute(2, 0, 1)[None], pixel_fn=pixel_fn)
        bg = torch.tensor(background, dtype=torch.float32, device=dev)
        rgb = over_background(out.image, bg)[0].permute(1, 2, 0).clamp(0, 1)          # (n_v s, n_u s, 3)
        alpha = out.image[0, 3]
        if exact_depth:
            _, depth, median, _ = self._lowres(c2w_f, params, width, height, chunk, image_index, 1)
        else:
            guide_low = F.avg_pool2d(rgb.permute(2, 0, 1)[None], s)[0].permute(1, 2, 0)
            depth, median = (joint_bilateral_upsample(d, opacity, guide_low, rgb) for d in (depth, median))
        crop = (slice(0, height), slice(0, width))
        as_np = lambda t: t[crop].float().cpu().numpy()  # noqa: E731
        return RenderResult(as_np(rgb), as_np(depth), as_np(median), as_np(alpha))

    def query_density(self, points_world: np.ndarray, chunk: int = 1 << 18, part: str = "all") -> np.ndarray:
        """points_world: (N, 3) input frame -> (N,) float32 density per field-frame unit length.

        part: "all" (the composed density), "foreground" or "background" (models trained with composition).
        """
        if part == "all":
            return super().query_density(points_world, chunk)
        return density_of_part(self, points_world, part, chunk)
