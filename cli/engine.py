"""CLI: synth (a synthetic ground-truth capture), train (a radiance field from a posed capture)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cli.options import TRAIN_OPTIONS, add_spec_options, spec_from_args


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="write a synthetic capture with ground truth (images, poses, depth, mesh)")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--views", type=int, default=40)
    p.add_argument("--size", type=int, default=200, help="image side in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("train", help="train a radiance field on DATA (transforms.json or a COLMAP model + images)")
    p.add_argument("data", type=Path, help="a folder with transforms.json or a COLMAP model, and the images")
    p.add_argument("--out", type=Path, required=True, help="run folder: checkpoints/, scene/, renders/, metrics.json")
    p.add_argument("--renders", type=int, default=3, help="held-out views to save as PNG (default: 3)")
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints in OUT/checkpoints "
                   "(default: the preset's)")
    p.add_argument("--no-resume", action="store_true", help="ignore checkpoints in OUT/checkpoints")
    add_spec_options(p, TRAIN_OPTIONS)
    p.set_defaults(func=cmd_train)


def cmd_synth(args: argparse.Namespace) -> int:
    from core.dataparsers.synthetic import synth_main

    out = synth_main(args.out_dir, views=args.views, size=args.size, seed=args.seed)
    print(f"synthetic capture written to {out}")
    return 0


def train_config_from_args(args: argparse.Namespace):
    """The TrainConfig of the job options given on the command line (core.jobspec.train_config)."""
    from dataclasses import replace

    from core.jobspec import train_config

    cfg = train_config(spec_from_args(args, TRAIN_OPTIONS))
    return replace(cfg, checkpoint_every=args.checkpoint_every) if args.checkpoint_every else cfg


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
    metrics.update({"preset": args.preset or "balanced", "images": len(capture), "config": scene.config.to_dict()})
    atomic_write_json(out / "metrics.json", metrics)
    renders = out / "renders"
    renders.mkdir(parents=True, exist_ok=True)
    for i in scene.test_indices[: args.renders]:
        r = scene.render(scene.c2w[i], scene.intrinsics[i])
        Image.fromarray((r.rgb * 255 + 0.5).astype(np.uint8)).save(renders / f"{Path(scene.names[i]).stem}.png")
    print(json.dumps({k: metrics[k] for k in ("psnr_holdout", "ssim_holdout", "steps", "train_seconds",
                                               "rays_per_s", "backend", "device") if k in metrics}, indent=2))
    return 0
