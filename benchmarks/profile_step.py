"""Where a training step's time goes, and how throughput scales with the batch; prints one JSON document.

    python benchmarks/profile_step.py [--device cuda] [--views 20] [--size 400] [--batches 8192,32768,131072]

The synthetic capture (core.dataparsers.synthetic), preset "balanced": after a warm-up (kernels compiled, the
occupancy grid past its warm-up), torch.profiler records --profile-steps steps and the JSON lists the top
operators by device time and by host time; then each batch size trains --sweep-steps steps, timed, giving rays/s,
samples/ray and ms/step.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from render_bench import machine, sync

from core.dataparsers.synthetic import SyntheticConfig, render_synthetic
from core.engine.loop import optimise, param_groups, prepare
from core.engine.train import ray_training
from core.models.build import build_model
from core.models.config import TrainConfig
from core.progress import no_progress


def trainer(capture, cfg: TrainConfig):
    """(run(n_steps) -> (seconds, rays, samples), model) for a fresh model on the capture."""
    data = prepare(capture, cfg)
    model = build_model(cfg, data.normalization.mode == "unbounded", len(data.train_indices), data.device)
    opt = torch.optim.Adam(param_groups(model, cfg), lr=cfg.lr, betas=(0.9, 0.99))
    stream, step = ray_training(model, data, cfg)
    counts = {"rays": 0, "samples": 0}

    def counted(batch):
        out = step(batch)
        counts["rays"] += out.rays
        counts["samples"] += out.samples
        return out

    def run(n: int) -> tuple[float, int, int]:
        counts.update(rays=0, samples=0)
        sync(str(data.device))
        t = time.perf_counter()
        run_cfg = TrainConfig.from_dict({**cfg.to_dict(), "steps": n})     # a fresh schedule: timing only
        optimise(model, opt, _Reusable(stream), counted, run_cfg, data.device, no_progress, lambda: False)
        sync(str(data.device))
        return time.perf_counter() - t, counts["rays"], counts["samples"]

    return run, model, stream


class _Reusable:
    """The stream without close(): optimise closes its stream at the end, and the runs share one."""

    def __init__(self, stream) -> None:
        self.stream = stream

    def __next__(self):
        return next(self.stream)

    def state_dict(self):
        return self.stream.state_dict()

    def close(self) -> None:
        pass


def top(prof, key: str, n: int = 25) -> list[dict]:
    rows = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)[:n]
    return [{"name": e.key, "count": e.count, "self_device_ms": round(e.self_device_time_total / 1e3, 3),
             "self_host_ms": round(e.self_cpu_time_total / 1e3, 3)} for e in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--views", type=int, default=20)
    ap.add_argument("--size", type=int, default=400)
    ap.add_argument("--warmup-steps", type=int, default=300)
    ap.add_argument("--profile-steps", type=int, default=30)
    ap.add_argument("--batches", default="8192,32768,131072")
    ap.add_argument("--sweep-steps", type=int, default=100)
    args = ap.parse_args()
    capture = render_synthetic(SyntheticConfig(views=args.views, size=args.size)).capture
    cfg = TrainConfig.preset("balanced", device=args.device, checkpoint_every=10**9)
    run, model, stream = trainer(capture, cfg)
    warm_s, _, _ = run(args.warmup_steps)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if args.device.startswith("cuda"):
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        prof_s, rays, samples = run(args.profile_steps)
    profile = {"steps": args.profile_steps, "seconds": prof_s, "ms_per_step": 1e3 * prof_s / args.profile_steps,
               "top_by_device": top(prof, "self_device_time_total"), "top_by_host": top(prof, "self_cpu_time_total")}
    stream.close()
    sweep = []
    for batch in (int(b) for b in args.batches.split(",")):
        run_b, _, stream_b = trainer(capture, TrainConfig.preset("balanced", device=args.device, batch_rays=batch,
                                                                 checkpoint_every=10**9))
        run_b(max(20, args.warmup_steps // 3))
        sec, rays, samples = run_b(args.sweep_steps)
        stream_b.close()
        sweep.append({"batch_rays": batch, "ms_per_step": 1e3 * sec / args.sweep_steps, "rays_per_s": rays / sec,
                      "samples_per_ray": samples / max(rays, 1)})
        print(json.dumps(sweep[-1]), flush=True)
    print(json.dumps({"machine": machine(args.device), "config": vars(args), "warmup_s": warm_s,
                      "profile": profile, "batch_sweep": sweep}, indent=1))


if __name__ == "__main__":
    main()
