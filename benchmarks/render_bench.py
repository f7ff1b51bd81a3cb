"""Render and mesh-extraction benchmark; prints one JSON document.

    python benchmarks/render_bench.py [--run-dir RUN] [--device cpu|cuda|auto] [--steps 300]
                                      [--no-big] [--no-512]

Figures: megapixels/s for RGB + depth (one 640x480 view after a warm-up), the time of one
4032x3024 frame (rendered in chunks), and the time and peak memory of density marching cubes at
256^3 and 512^3 (grid sampling + marching cubes; the level is chosen from 8 low-resolution renders
beforehand). Without --run-dir it trains the synthetic capture for --steps steps first (not timed);
--analytic uses the closed-form stand-in scene instead (to check the script, not the engine).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from pathlib import Path

import torch

from core.export.density_mesh import density_mesh
from core.export.grid import scene_occupancy
from core.export.renders import render_scene_cameras


def machine(device: str) -> dict:
    info = {"platform": platform.platform(), "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "device": device}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def load_or_train(args) -> tuple[object, dict]:
    from core.models.config import TrainConfig
    from core.scene.load import load_scene

    if args.analytic:
        import sys

        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the test fixtures' stand-in scene
        from fixtures.analytic import AnalyticScene

        return AnalyticScene(n_views=16, size=128), {"scene": "analytic stand-in (fixtures.analytic)"}
    if args.run_dir:
        run = Path(args.run_dir)
        return load_scene(run / "scene" if (run / "scene").is_dir() else run, device=args.device), {
            "scene": str(run)}
    from core.dataparsers.synthetic import SyntheticConfig, render_synthetic
    from core.engine.train import train

    syn = render_synthetic(SyntheticConfig(views=40, size=128))
    t = time.perf_counter()
    scene = train(syn.capture, TrainConfig.preset("fast", steps=args.steps, device=args.device))
    return scene, {"scene": f"synthetic 40 views 128 px, fast preset, {args.steps} steps",
                   "train_seconds": time.perf_counter() - t}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str):
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", default=None)
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--chunk", type=int, default=65536)
    ap.add_argument("--no-big", action="store_true", help="skip the 4032x3024 frame")
    ap.add_argument("--no-512", action="store_true", help="skip the 512^3 mesh")
    ap.add_argument("--analytic", action="store_true",
                    help="use the analytic stand-in scene instead of a trained one (checks the script itself)")
    args = ap.parse_args()
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    scene, source = load_or_train(args)
    dev = str(getattr(scene, "device", args.device))
    figures: dict[str, float] = {}
    cam = scene.test_indices[0] if scene.test_indices else 0
    c2w, intr = scene.c2w[cam], scene.intrinsics[cam]
    scene.render(c2w, intr, 64, 48, chunk=args.chunk)                          # warm-up
    _, sec = timed(lambda: scene.render(c2w, intr, 640, 480, chunk=args.chunk), dev)
    figures["rgb_depth_megapixels_per_s"] = 640 * 480 / 1e6 / sec
    if not args.no_big:
        _, sec = timed(lambda: scene.render(c2w, intr, 4032, 3024, chunk=args.chunk), dev)
        figures["frame_4032x3024_s"] = sec
    views = render_scene_cameras(scene, list(scene.train_indices)[:8], max_side=128, chunk=args.chunk)
    occupancy = scene_occupancy(scene.occupancy_world())
    for res in (256,) if args.no_512 else (256, 512):
        if dev.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        (mesh, info), sec = timed(lambda r=res: density_mesh(scene, views, r, occupancy), dev)
        figures[f"mesh_{res}_s"] = sec
        figures[f"mesh_{res}_faces"] = int(len(mesh.faces))
        figures[f"mesh_{res}_peak_rss_gb"] = peak_rss_gb()
        if dev.startswith("cuda"):
            figures[f"mesh_{res}_peak_gpu_gb"] = torch.cuda.max_memory_allocated() / 1024 ** 3
    config = {**source, "chunk": args.chunk, "render_sizes": ["640x480"] + ([] if args.no_big else ["4032x3024"])}
    print(json.dumps({"machine": machine(dev), "config": config, "figures": figures}, indent=2))


if __name__ == "__main__":
    main()
