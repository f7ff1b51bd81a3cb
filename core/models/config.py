"""Training configuration: one flat dataclass with named presets."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Literal, get_args, get_origin, get_type_hints

# Ranges of the evaluation options (the API and the CLI refuse values outside them too).
EVAL_VIEWS_MAX = 50
EVAL_MAX_SIDE_RANGE = (32, 8192)          # or 0: full size


@dataclass(frozen=True)
class TrainConfig:
    # schedule
    steps: int = 3000
    batch_rays: int = 4096
    lr: float = 1e-2
    lr_final_factor: float = 0.05     # exponential decay from lr to lr * factor over `steps`
    lr_schedule: Literal["exp", "plateau"] = "exp"  # plateau: ReduceLROnPlateau on the train loss
    weight_decay: float = 1e-6        # MLPs only
    seed: int = 0
    # hardware
    device: str = "auto"              # auto | cpu | cuda | cuda:N
    backend: Literal["auto", "torch", "triton", "tcnn"] = "auto"  # hash grid
    mixed_precision: bool = True      # CUDA only
    # model
    model: Literal["nerf", "reference", "feature_field"] = "nerf"  # reference: an MLP NeRF
    grid_levels: int = 16
    grid_features: int = 2
    grid_log2_size: int = 19
    grid_base_res: int = 16
    grid_max_res: int = 2048
    hidden: int = 64
    appearance_dim: int = 0           # per-image appearance embedding (NeRF-W); 0 = off
    # feature field
    feature_dim: int = 16
    upsample: int = 4
    composition: bool = False
    foreground_sparsity: float | None = None  # composition, after the plane cut: loss weight of the foreground's
                                      # opacity; None: the model's (FOREGROUND_SPARSITY)
    patch_size: int = 16
    pixel_features: bool = True       # the renderer's last block sees the hash grid at each output pixel's point
    skip_kernel: Literal[1, 3] = 1    # the first skip's colour correction: 1 (per ray) or 3 (3x3, GIRAFFE)
    margin_loss: bool = False         # also supervise the first-skip colour of the rays around each patch
    # sampling
    sampler: Literal["occupancy", "hierarchical"] = "occupancy"
    march_steps: int = 384
    grid_resolution: int = 64
    grid_decay: float = 0.95          # occupancy EMA decay per update (every 16 steps); lower for short runs
    grid_warmup_steps: int = 256      # update every cell (not a sample of cells) until this step
    early_stop_eps: float = 1e-4
    n_coarse: int = 64
    n_fine: int = 64
    pixel_sampling: Literal["uniform", "selective"] = "uniform"  # selective: error-guided
    # data
    scene_mode: Literal["auto", "bounded", "unbounded"] = "auto"
    holdout_every: int = 8            # every 8th image held out (LLFF); 0 = none
    max_side: int | None = None       # downscale images to this longest side before training
    # bookkeeping
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    eval_chunk: int = 16384
    eval_views: int = 4               # held-out views evaluated after training, spread over them; 0 = every one
    eval_max_side: int = 400          # longest side in px of the evaluation renders (ground truth area-averaged
                                      # to their size; never upscaled); 0 = the training images' size

    def __post_init__(self) -> None:
        if not 0 <= self.eval_views <= EVAL_VIEWS_MAX:
            raise ValueError(f"eval_views must be 0 (every held-out view) to {EVAL_VIEWS_MAX}, got {self.eval_views}")
        if self.eval_max_side != 0 and not EVAL_MAX_SIDE_RANGE[0] <= self.eval_max_side <= EVAL_MAX_SIDE_RANGE[1]:
            raise ValueError(f"eval_max_side must be 0 (full size) or {EVAL_MAX_SIDE_RANGE[0]} to "
                             f"{EVAL_MAX_SIDE_RANGE[1]} pixels, got {self.eval_max_side}")
        for name, kind in get_type_hints(TrainConfig).items():
            if get_origin(kind) is Literal and getattr(self, name) not in get_args(kind):
                raise ValueError(f"{name} {getattr(self, name)!r} is not one of {', '.join(map(str, get_args(kind)))}")

    @staticmethod
    def preset(name: str, **overrides) -> TrainConfig:
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
        return replace(PRESETS[name], **overrides)

    @property
    def foreground_sparsity_weight(self) -> float:
        """foreground_sparsity, or the model's default (FOREGROUND_SPARSITY) when it is None."""
        if self.foreground_sparsity is not None:
            return self.foreground_sparsity
        return FOREGROUND_SPARSITY.get(self.model, FOREGROUND_SPARSITY["nerf"])

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> TrainConfig:
        """From `to_dict()` output, also of an older version (saved scenes): renamed options are read under
        their new names. Raises ValueError for unknown options or values out of range."""
        d = dict(d)
        if "eval_max_views" in d:                     # renamed eval_views (0 = every view, both)
            old = d.pop("eval_max_views")
            d.setdefault("eval_views", min(int(old), EVAL_VIEWS_MAX))
        names = {f.name for f in fields(TrainConfig)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown training options: {', '.join(sorted(unknown))}")
        return TrainConfig(**d)


# The foreground-opacity loss weight after the support plane is cut (core.models.losses.foreground_sparsity), per
# model: the feature field learns its geometry from 1 / upsample^2 of the rays, so its support is fuzzier and needs a
# stronger push out of the foreground; as strong a push moves a NeRF's sharp objects into the background field.
FOREGROUND_SPARSITY = {"nerf": 0.01, "feature_field": 0.05}

PRESETS: dict[str, TrainConfig] = {
    # A few minutes on a 2-core CPU at 128 px; seconds on a GPU.
    # Sized for a 2-core CPU: 40 views at 128 px reach >= 25 dB held-out in a few minutes. The short
    # schedule needs a fast-decaying occupancy grid (0.7 per update) so empty space is carved early.
    "fast": TrainConfig(steps=1500, batch_rays=1024, grid_levels=8, grid_log2_size=17, grid_max_res=512,
                        march_steps=128, grid_resolution=64, grid_decay=0.7, grid_warmup_steps=128,
                        checkpoint_every=250),
    "balanced": TrainConfig(steps=5000, batch_rays=8192, grid_levels=16, grid_log2_size=19, grid_max_res=2048,
                            appearance_dim=8, march_steps=512, grid_resolution=128, grid_decay=0.8,
                            checkpoint_every=1000),
    "quality": TrainConfig(steps=20000, batch_rays=16384, grid_levels=16, grid_log2_size=21, grid_max_res=4096,
                           appearance_dim=16, hidden=64, march_steps=1024, grid_resolution=128,
                           checkpoint_every=2000),
}
