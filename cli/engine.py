"""CLI: synth (a synthetic ground-truth capture), train (a radiance field from a posed capture)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="write a synthetic capture with ground truth (images, poses, depth, mesh)")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--views", type=int, default=40)
    p.add_argument("--size", type=int, default=200, help="image side in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("train", help="train a radiance field on DATA (transforms.json or a COLMAP model + images)")
    p.add_argument("data", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--preset", default="fast", choices=["fast", "balanced", "quality"])
    p.add_argument("--steps", type=int)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "tcnn"])
    p.add_argument("--model", default="nerf", choices=["nerf", "feature_field", "reference"])
    p.add_argument("--sampler", choices=["occupancy", "hierarchical"])
    p.add_argument("--pixel-sampling", choices=["uniform", "selective"])
    p.add_argument("--scene-mode", choices=["auto", "bounded", "unbounded"])
    p.add_argument("--max-side", type=int, help="downscale images to this longest side first")
    p.add_argument("--feature-dim", type=int)
    p.add_argument("--upsample", type=int)
    p.add_argument("--composition", choices=["on", "off"])
    p.add_argument("--margin-loss", choices=["on", "off"],
                   help="feature_field: also supervise the colour of the rays around each patch")
    p.add_argument("--skip-kernel", type=int, choices=[1, 3],
                   help="feature_field: the first skip's colour correction, per ray (1, default) or 3x3 (3)")
    p.add_argument("--renders", type=int, default=3, help="held-out views to save as PNG")
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints in OUT/checkpoints")
    p.add_argument("--no-resume", action="store_true", help="ignore checkpoints in OUT/checkpoints")
    p.set_defaults(func=cmd_train)


def cmd_synth(args: argparse.Namespace) -> int:
    from core.dataparsers.synthetic import synth_main

    out = synth_main(args.out_dir, views=args.views, size=args.size, seed=args.seed)
    print(f"synthetic capture written to {out}")
    return 0


def train_config_from_args(args: argparse.Namespace):
    from core.models.config import TrainConfig

    overrides = {k: v for k, v in {
        "steps": args.steps, "device": args.device, "backend": args.backend, "model": args.model,
        "sampler": args.sampler, "pixel_sampling": args.pixel_sampling, "scene_mode": args.scene_mode,
        "max_side": args.max_side, "feature_dim": args.feature_dim, "upsample": args.upsample,
        "composition": None if args.composition is None else args.composition == "on",
        "margin_loss": None if args.margin_loss is None else args.margin_loss == "on",
        "skip_kernel": args.skip_kernel,
        "checkpoint_every": args.checkpoint_every}.items() if v is not None}
    return TrainConfig.preset(args.preset, **overrides)


class ProgressBar:
    """A one-line progress bar on stderr from training ProgressEvents (tqdm)."""

    def __init__(self) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=0, unit="step", file=sys.stderr, dynamic_ncols=True)

    def __call__(self, ev) -> None:
        m = ev.metrics
        if "total_steps" in m:
            self.bar.total = m["total_steps"]
            self.bar.n = m["step"]
            self.bar.set_postfix(loss=f"{m['loss']:.4f}", psnr=f"{m['psnr']:.2f}",
                                 rays_s=f"{m['rays_per_s']:.0f}", eta_s=f"{m['eta_s']:.0f}", refresh=False)
            self.bar.refresh()
        elif ev.message:
            self.bar.set_description(ev.message)

    def close(self) -> None:
        self.bar.close()


def cmd_train(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from core.atomic import atomic_write_json
    from core.dataparsers.readers import load_capture
    from core.engine.train import train

    cfg = train_config_from_args(args)
    capture = load_capture(args.data)
    out = Path(args.out)
    bar = ProgressBar()
    try:
        scene = train(capture, cfg, progress=bar, checkpoint_dir=out / "checkpoints", resume=not args.no_resume)
    finally:
        bar.close()
    scene.save(out / "scene")
    metrics = {k: v for k, v in scene.metrics.items() if k != "psnr_per_view"}
    metrics.update({"preset": args.preset, "images": len(capture), "config": scene.config.to_dict()})
    atomic_write_json(out / "metrics.json", metrics)
    renders = out / "renders"
    renders.mkdir(parents=True, exist_ok=True)
    for i in scene.test_indices[: args.renders]:
        r = scene.render(scene.c2w[i], scene.intrinsics[i])
        Image.fromarray((r.rgb * 255 + 0.5).astype(np.uint8)).save(renders / f"{Path(scene.names[i]).stem}.png")
    print(json.dumps({k: metrics[k] for k in ("psnr_holdout", "ssim_holdout", "steps", "train_seconds",
                                               "rays_per_s", "backend", "device") if k in metrics}, indent=2))
    return 0
