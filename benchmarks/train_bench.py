"""Training benchmark: throughput, host-to-device batch bandwidth, time to 20/25/30 dB, peak memory.

    python benchmarks/train_bench.py [--device cpu|cuda] [--size 128] [--views 40] [--preset fast] [--steps N]

Prints one JSON object: {"machine": ..., "config": ..., "results": ...}. Held-out PSNR is measured every
`--eval-every` steps on two held-out views; evaluation time is excluded from the clock.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.dataparsers.synthetic import SyntheticConfig, render_synthetic  # noqa: E402
from core.engine.data import PixelStore, RayBatchStream  # noqa: E402
from core.engine.train import train  # noqa: E402
from core.models.config import TrainConfig  # noqa: E402
from core.scene.trained import resolve_device  # noqa: E402


def machine_info(device: torch.device) -> dict:
    info = {"cpu": platform.processor() or platform.machine(), "cores": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def h2d_throughput(capture, device: torch.device, batch: int, n: int = 50) -> dict:
    """Batches/s and GB/s of the ray stream alone (gather + copy to the device)."""
    store = PixelStore.from_capture(capture, device=device)
    with RayBatchStream(store, batch, device) as stream:
        next(stream)
        t = time.perf_counter()
        for _ in range(n):
            b = next(stream)
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t
    bytes_per_batch = b.colors.shape[0] * (store.channels + 8)   # colours + flat index
    return {"batches_per_s": n / dt, "rays_per_s": n * batch / dt, "gb_per_s": n * bytes_per_batch / dt / 1e9}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="auto")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--views", type=int, default=40)
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--eval-every", type=int, default=100)
    args = ap.parse_args()
    device = resolve_device(args.device)
    synth = render_synthetic(SyntheticConfig(views=args.views, size=args.size))
    overrides = {"device": str(device)}
    if args.steps:
        overrides["steps"] = args.steps
    cfg = TrainConfig.preset(args.preset, **overrides)
    cap = synth.capture
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    scene = train(cap, cfg, curve_every=args.eval_every)
    curve = scene.metrics["holdout_curve"]
    reached = {db: next((c["seconds"] for c in curve if c["psnr"] >= db), None) for db in (20, 25, 30)}
    results = {
        "train_rays_per_s": scene.metrics["rays_per_s"], "train_samples_per_s": scene.metrics["samples_per_s"],
        "train_seconds": scene.metrics["train_seconds"], "psnr_holdout": scene.metrics["psnr_holdout"],
        "seconds_to_db": {str(k): v for k, v in reached.items()}, "curve": curve,
        "h2d": h2d_throughput(cap, device, cfg.batch_rays),
        "peak_host_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if device.type == "cuda":
        results["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    config = {"preset": args.preset, "views": args.views, "size": args.size, **cfg.to_dict()}
    print(json.dumps({"machine": machine_info(device), "config": config, "results": results}, indent=1))


if __name__ == "__main__":
    main()
