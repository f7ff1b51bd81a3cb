"""Every training loss, in one place."""

from __future__ import annotations

import torch

from core.functional.render import RenderOutput


def per_ray_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """pred, target: (R, 3) colours in [0, 1] -> (R,) float32 squared error per ray, averaged over channels.

    Kept per ray so that error-driven pixel sampling can read it before the mean is taken."""
    return ((pred.float() - target.float()) ** 2).mean(-1)


def image_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 + MSE, averaged. pred, target: (K, 3, H, W) float32 RGB in [0, 1]. Returns a scalar."""
    diff = pred - target
    return diff.abs().mean() + (diff * diff).mean()


def foreground_sparsity(out: RenderOutput, weight: float) -> torch.Tensor | float:
    """weight x the mean foreground opacity of a training render (RenderOutput.foreground_opacity, which the
    model sets once a support plane cuts a composed field's foreground); 0 without it. The ground, table top or
    wall the background field can now explain leaves the foreground: without this, the copy the foreground
    learned before the cut stays just in front of the plane, costing nothing photometrically, and ends up in
    its mesh."""
    if weight <= 0 or out.foreground_opacity is None:
        return 0.0
    return weight * out.foreground_opacity.mean()
