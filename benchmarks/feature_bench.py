"""Feature-field model vs NeRF on the synthetic capture, side by side, in one run; prints one JSON document.

    python benchmarks/feature_bench.py [--views 40] [--size 200] [--nerf-steps 4000 | --budget SECONDS]
                                       [--orbit 60] [--device cpu|cuda|auto] [--upsample 4] [--feature-dim 16]
                                       [--patch-size 16] [--pixel-features on|off] [--skip-kernel 1|3]
                                       [--exact-depth-orbit] [--frame PNG]

Both models train for the same wall-clock budget. By default (`--nerf-steps N`) the budget is what the NeRF
takes for N steps on this machine: the NeRF trains N steps (its complete learning-rate schedule), and the
seconds that took, set-up included, are the feature field's budget. So every machine compares the two after
the same amount of NeRF training; a fixed `--budget` in seconds buys a slow machine far fewer steps of both
(README). The feature field's budget is met with a pilot run, stopped at the budget, which counts the steps
that fit; the real run makes that many steps (a complete schedule) and is stopped at the budget should it get
there first (the training seconds and steps are reported). With `--budget` both models are trained that way.
The capture is the synthetic one at its own default size (SyntheticConfig: 40 views, 200 px). Figures, per
model:
- psnr_holdout: held-out views (every 8th) at full resolution, on white (core.engine.train.evaluate);
- render_s: seconds per full-resolution frame (median of 3, after a warm-up), and at 4x the side;
- orbit warp_l1: a `--orbit`-frame orbit of the synthetic capture, each frame warped to the next with the
  rendered depth and the known poses; mean absolute colour difference on co-visible pixels
  (core.engine.evaluation.orbit_consistency). For the feature field with its default depth (feature resolution,
  guided upsampling) and, with --exact-depth-orbit, again with exact (full-resolution) depth.
And the issue-6 criteria: PSNR gap <= 1.5 dB, render speed-up >= 8x, warp ratio <= 1.5.
With --frame, the first held-out view as each model renders it at 4x the training side (NeRF left, feature
field right) is written to that PNG (docs/feature_field_frame.png is one).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from render_bench import machine, sync

from core.dataparsers.synthetic import SyntheticConfig, orbit_poses, render_synthetic
from core.engine.evaluation import evaluate, orbit_consistency
from core.engine.loop import checkpoint_step, latest_checkpoint
from core.engine.train import train
from core.errors import Cancelled
from core.models.config import TrainConfig

COMMON = dict(batch_rays=1024, grid_levels=12, grid_log2_size=17, grid_max_res=512, march_steps=128,
              grid_resolution=32, checkpoint_every=10 ** 9)
NERF_STEPS = 4000           # default budget: the time the NeRF takes for this many steps on this machine


def configs(args) -> dict[str, TrainConfig]:
    common = {**COMMON, "device": args.device}
    return {"nerf": TrainConfig(model="nerf", **common),
            "feature_field": TrainConfig(model="feature_field", feature_dim=args.feature_dim, upsample=args.upsample,
                                         patch_size=args.patch_size, pixel_features=args.pixel_features == "on",
                                         skip_kernel=args.skip_kernel,
                                         **common)}


def steps_in(capture, config: TrainConfig, seconds: float) -> int:
    """How many steps `config` makes in `seconds`: a pilot run stopped there by should_stop (which the
    trainers call once before every step)."""
    calls = [0]
    t = time.perf_counter()

    def stop() -> bool:
        calls[0] += 1
        return time.perf_counter() - t > seconds

    with contextlib.suppress(Cancelled):
        train(capture, TrainConfig.from_dict({**config.to_dict(), "steps": 10 ** 6}), should_stop=stop,
                        evaluate_holdout=False)
    return max(1, calls[0] - 1)


def train_within(capture, config: TrainConfig, budget: float | None, steps: int | None = None
                 ) -> tuple[object, dict]:
    """Train `config` and evaluate it on the held-out views. Returns the scene and a record.

    budget (seconds), steps None: a complete learning-rate schedule within the budget: a pilot run finds how
    many steps fit (`steps_in`), the real run makes that many (and is stopped at the budget should it get
    there first; the model as it is then is evaluated). steps given, budget None: exactly that many steps.
    The record's train_seconds is the wall time of the real run, set-up (resize, pixel store, model) included.
    """
    if (budget is None) == (steps is None):
        raise ValueError("give exactly one of a budget in seconds and a number of steps")
    pilot = steps_in(capture, config, budget) if steps is None else None
    config = TrainConfig.from_dict({**config.to_dict(), "steps": steps or pilot})
    over = (lambda: False) if budget is None else (lambda: time.perf_counter() - t > budget)
    with tempfile.TemporaryDirectory() as ckpt:
        t = time.perf_counter()
        try:
            scene = train(capture, config, checkpoint_dir=Path(ckpt), evaluate_holdout=False, should_stop=over)
        except Cancelled:
            reached = checkpoint_step(latest_checkpoint(Path(ckpt)))
            config = TrainConfig.from_dict({**config.to_dict(), "steps": reached})
            scene = train(capture, config, checkpoint_dir=Path(ckpt), evaluate_holdout=False)
        seconds = time.perf_counter() - t
    scene.metrics.update(evaluate(scene, capture, scene.test_indices))
    m = scene.metrics
    return scene, {"steps": int(scene.config.steps), "pilot_steps": pilot, "train_seconds": seconds,
                   "psnr_holdout": m.get("psnr_holdout"), "ssim_holdout": m.get("ssim_holdout")}


def render_seconds(scene, c2w: np.ndarray, intrinsics, scale: int = 1, repeats: int = 3) -> tuple[float, object]:
    """Median seconds to render one frame at `scale` x the camera's size (after a warm-up), and the frame
    (the RenderResult of the last render)."""
    w, h = intrinsics.width * scale, intrinsics.height * scale
    dev = str(scene.device)
    frame = scene.render(c2w, intrinsics, w, h)
    times = []
    for _ in range(repeats):
        sync(dev)
        t = time.perf_counter()
        frame = scene.render(c2w, intrinsics, w, h)
        sync(dev)
        times.append(time.perf_counter() - t)
    return statistics.median(times), frame


def compare(args) -> dict:
    syn = render_synthetic(SyntheticConfig(views=args.views, size=args.size))
    cap = syn.capture
    orbit = orbit_poses(SyntheticConfig(views=args.orbit, size=args.size, seed=1))
    test = cap.holdout_split()[1][0]
    out: dict = {}
    frames = []
    budget = args.budget
    for name, config in configs(args).items():          # the NeRF first: with --nerf-steps it sets the budget
        torch.manual_seed(0)
        fixed = args.nerf_steps if name == "nerf" and budget is None else None
        scene, record = train_within(cap, config, None if fixed else budget, fixed)
        if fixed:
            budget = record["train_seconds"]
        record["budget_s"] = budget
        record["render_s"] = render_seconds(scene, cap.c2w[test], cap.intrinsics[test])[0]
        record["render_s_4x_side"], frame = render_seconds(scene, cap.c2w[test], cap.intrinsics[test], scale=4,
                                                           repeats=1)
        frames.append(frame.rgb)
        record["orbit"] = orbit_consistency(scene, orbit, cap.intrinsics[0])
        if name == "feature_field" and args.exact_depth_orbit:
            record["orbit_exact_depth"] = orbit_consistency(scene, orbit, cap.intrinsics[0], exact_depth=True)
        out[name] = record
    if args.frame:
        from PIL import Image

        Image.fromarray((np.concatenate(frames, 1) * 255).round().astype(np.uint8)).save(args.frame)
    nerf, ff = out["nerf"], out["feature_field"]
    out["psnr_gap_db"] = nerf["psnr_holdout"] - ff["psnr_holdout"]
    out["render_speedup"] = nerf["render_s"] / ff["render_s"]
    out["render_speedup_4x_side"] = nerf["render_s_4x_side"] / ff["render_s_4x_side"]
    out["warp_ratio"] = ff["orbit"]["warp_l1"] / nerf["orbit"]["warp_l1"]
    if "orbit_exact_depth" in ff:
        out["warp_ratio_exact_depth"] = ff["orbit_exact_depth"]["warp_l1"] / nerf["orbit"]["warp_l1"]
    out["criteria"] = {"psnr_within_1.5db": out["psnr_gap_db"] <= 1.5, "render_8x_faster": out["render_speedup"] >= 8,
                       "warp_ratio_at_most_1.5": out["warp_ratio"] <= 1.5}
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (argv, default sys.argv); device "auto" resolved."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = SyntheticConfig()
    ap.add_argument("--views", type=int, default=defaults.views)
    ap.add_argument("--size", type=int, default=defaults.size)
    budget = ap.add_mutually_exclusive_group()
    budget.add_argument("--nerf-steps", type=int, default=None,
                        help=f"budget: the seconds the NeRF takes for this many steps here (default {NERF_STEPS})")
    budget.add_argument("--budget", type=float, default=None, help="budget: training seconds per model")
    ap.add_argument("--orbit", type=int, default=60)
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--upsample", type=int, default=4)
    ap.add_argument("--feature-dim", type=int, default=16)
    ap.add_argument("--patch-size", type=int, default=16)
    ap.add_argument("--pixel-features", choices=("on", "off"), default="on")
    ap.add_argument("--skip-kernel", type=int, choices=(1, 3), default=1)
    ap.add_argument("--exact-depth-orbit", action="store_true",
                    help="also measure the feature field's orbit warp error with full-resolution depth")
    ap.add_argument("--frame", type=Path, default=None,
                    help="write the first held-out view at 4x the side, NeRF | feature field, to this PNG")
    args = ap.parse_args(argv)
    if args.budget is None and args.nerf_steps is None:
        args.nerf_steps = NERF_STEPS
    if (args.budget is not None and args.budget <= 0) or (args.nerf_steps is not None and args.nerf_steps < 1):
        ap.error("the budget must be positive")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args


def main() -> None:
    args = parse_args()
    t = time.perf_counter()
    figures = compare(args)
    config = {"scene": f"synthetic {args.views} views {args.size} px", "budget_s": figures["feature_field"]["budget_s"],
              "budget_from": f"NeRF {args.nerf_steps} steps" if args.nerf_steps else "seconds", "orbit": args.orbit,
              "upsample": args.upsample, "feature_dim": args.feature_dim, "patch_size": args.patch_size,
              "pixel_features": args.pixel_features, "skip_kernel": args.skip_kernel,
              "common": COMMON, "wall_s": time.perf_counter() - t}
    print(json.dumps({"machine": machine(args.device), "config": config, "figures": figures}, indent=2))


if __name__ == "__main__":
    main()
