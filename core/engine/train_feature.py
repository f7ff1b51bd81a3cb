"""The feature-field model's training step and its scene (GIRAFFE design; core.engine.train runs the loop).

Training draws random image patches (core.engine.data.PatchStream) instead of random rays: a patch of P x P
output pixels costs (P / s)^2 rays (s = config.upsample), plus a margin of low-res rays around it, which
the renderer's convolutions see as context and which are cropped from its output (rendered without gradients,
so a step skips their backward pass, unless config.margin_loss supervises them or config.composition is on).
Losses: L1 + MSE on the full-resolution patch, and the same on the renderer's first skip output (the feature
map's own RGB) against the image where each of the patch's rays passes (`block_centres`; with
config.margin_loss, the margin's rays too), which keeps colour in the 3D field.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from core.engine.data import PatchStream, PixelStore
from core.engine.evaluation import composite
from core.engine.loop import StepOutput, TrainingData, param_groups
from core.errors import UserInputError
from core.fields.neural_renderer import over_background
from core.models.config import TrainConfig
from core.models.feature import FeatureFieldModel
from core.models.losses import foreground_sparsity, image_loss

LOW_RES_WEIGHT = 1.0          # weight of the first-skip (feature resolution) loss
RENDERER_LR_FACTOR = 0.5      # the CNN's learning rate, relative to config.lr
PATCH_MARGIN = 1              # low-res rays rendered around each patch and cropped away
PATCHES_MIN = 2


# ---- losses and patches ---------------------------------------------------------------------------

def block_centres(image: torch.Tensor, s: int) -> torch.Tensor:
    """(K, C, P, P) -> (K, C, P/s, P/s): the image at the centre of each s x s block, where the low-res ray
    passes (bilinear: the mean of the central 2 x 2 pixels for even s, the central pixel for odd s). A point
    sample like a NeRF's, not the block mean, which would ask a single ray for a blend of everything the block
    sees and so teach the field semi-transparent, fuzzy geometry at every edge."""
    k, c, p, _ = image.shape
    a, b = (s - 1) // 2, s // 2 + 1
    return image.view(k, c, p // s, s, p // s, s)[:, :, :, a:b, :, a:b].mean((3, 5))


def patch_targets(colors: torch.Tensor, background: torch.Tensor, s: int) -> tuple[torch.Tensor, torch.Tensor]:
    """colors: (K, P, P, C) float32 sRGB in [0, 1] (C = 4 has alpha); background: (K, 3) one colour a patch.
    Returns the patches on their background (K, 3, P, P) and the low-res target (K, 3, P/s, P/s),
    `block_centres`."""
    k, p, _, c = colors.shape
    bg = background[:, None, :].expand(k, p * p, 3).reshape(-1, 3)
    full = composite(colors.reshape(-1, c), bg).view(k, p, p, 3).permute(0, 3, 1, 2)
    return full, block_centres(full, s)


def margin_pixels(config: TrainConfig) -> int:
    """Pixels on each side of a patch that the stream fetches with it: the margin rays' (PATCH_MARGIN x
    upsample) with config.margin_loss, so their first-skip colour can be supervised; else 0. The fetched
    block lies inside its image, so with margin_loss an image's outer margin_pixels never get the
    full-resolution loss (the margin rays' first skip still covers them)."""
    return PATCH_MARGIN * config.upsample if config.margin_loss else 0


def patch_layout(config: TrainConfig, store: PixelStore) -> tuple[int, int]:
    """(patch size P, patches per batch K): P = config.patch_size (a multiple of config.upsample s, such that
    the patch and the margin the stream fetches with it, `margin_pixels`, fit the smallest image side); K so
    that a batch renders about config.batch_rays low-res rays, the PATCH_MARGIN rays around each patch
    included (so a step costs the field what a NeRF step does)."""
    s, ms = config.upsample, margin_pixels(config)
    smallest = int(min(store.widths.min(), store.heights.min()))
    size = min(config.patch_size, smallest - 2 * ms) // s * s
    if size < s:
        raise UserInputError("images_too_small", f"the smallest training image side is {smallest} px, less "
                             f"than {s + 2 * ms} px, the smallest patch the feature field trains on at "
                             f"upsampling {s}.", "Use larger images, a smaller --upsample, or --margin-loss off.")
    return size, max(PATCHES_MIN, config.batch_rays // (size // s + 2 * PATCH_MARGIN) ** 2)


# ---- training -------------------------------------------------------------------------------------

def feature_optimizer(model: FeatureFieldModel, config: TrainConfig) -> torch.optim.Optimizer:
    """Adam over the engine's groups (hash tables / MLPs), the renderer's convolutions in a third group
    with lr * RENDERER_LR_FACTOR."""
    renderer = {id(p) for p in model.renderer.parameters()}
    groups = param_groups(model, config, exclude=renderer)
    groups.append({"params": list(model.renderer.parameters()), "eps": 1e-15, "weight_decay": config.weight_decay,
                   "lr": config.lr * RENDERER_LR_FACTOR})
    return torch.optim.Adam(groups, lr=config.lr, betas=(0.9, 0.99))


def patch_training(model: FeatureFieldModel, data: TrainingData, config: TrainConfig):
    """(stream, step_fn, metrics) for patch training (see the module docstring); metrics records the
    patch layout."""
    size, count = patch_layout(config, data.store)
    s, ms = config.upsample, margin_pixels(config)
    # With margin_loss the stream's patches include the margin: its rays are rendered anyway (context for the
    # renderer's convolutions), so their first-skip colour is supervised too; the full-resolution loss stays
    # on the patch. Without it, the first skip is supervised on the patch's own rays.
    low = slice(None) if ms else slice(PATCH_MARGIN, size // s + PATCH_MARGIN)
    stream = PatchStream(data.store, size + 2 * ms, count, data.device, seed=config.seed)
    # The margin rays are the renderer's context only, rendered without gradients (the step skips their
    # backward pass), unless margin_loss supervises them or composition is on: its foreground-opacity loss
    # (FOREGROUND_SPARSITY) is weighted for every rendered ray pulled.
    margin_grad = bool(ms) or config.composition
    white = torch.ones(1, 3, device=data.device)

    def step(batch) -> StepOutput:
        idx = batch.image_index
        # Random backgrounds (one colour a patch) where images have alpha, so empty space learns to be empty.
        bg = torch.rand(len(idx), 3, device=data.device) if data.store.channels == 4 else white.expand(len(idx), 3)
        target, target_low = patch_targets(batch.colors, bg, s)
        target = target[:, :, ms:ms + size, ms:ms + size]
        rendered, out = model.patches(data.c2w_field[idx], data.params[idx], idx, batch.u0 + ms, batch.v0 + ms,
                                      size, PATCH_MARGIN, training=True, margin_grad=margin_grad)
        pred = over_background(rendered.image.float(), bg)
        loss = image_loss(pred, target) + LOW_RES_WEIGHT * image_loss(
            over_background(rendered.low_res[:, :, low, low].float(), bg), target_low)
        loss = loss + foreground_sparsity(out, config.foreground_sparsity_weight)
        return StepOutput(loss, F.mse_loss(pred.detach(), target), out.opacity.shape[0], out.n_samples)

    return stream, step, {"patch_size": size, "patches_per_batch": count}
