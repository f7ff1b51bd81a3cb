"""Host gather and host-to-device throughput of the ray batch stream (core.engine.data), as JSON.

    python benchmarks/h2d_bench.py                      # 100 images of 800x600, batch 65536
    python benchmarks/h2d_bench.py --images 20 --device cpu --steps 30 --mode selective

Measures, on a synthetic random capture:
- gather: planning (permutation walk) + `index_select` of the batch's colours into a staging
  buffer (pinned on CUDA), host only: rays/s and GB/s of colour gathered;
- h2d (CUDA): one batch's staging buffers (colours + int64 indices) copied with non_blocking,
  timed with CUDA events; and the peak for one large pinned buffer. On CPU: null (device=cpu);
- stream: RayBatchStream end to end with nothing else to do (rays/s), and with a simulated training
  step of --compute-ms on the device, the step time against the compute alone (overlap).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch

from core.engine.data import PixelStore, RayBatchStream
from core.engine.data.stream import mix_seed, permutation_walk


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def synthetic_images(n: int, width: int, height: int, channels: int, seed: int) -> list[np.ndarray]:
    """n random (height, width, channels) uint8 images."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (height, width, channels), dtype=np.uint8) for _ in range(n)]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_gather(store: PixelStore, batch: int, steps: int, pin: bool) -> dict:
    """Host-only plan + gather of `steps` batches into one staging buffer."""
    out = torch.empty((batch, store.channels), dtype=torch.uint8, pin_memory=pin)
    key = mix_seed(0, 1)
    t0 = time.perf_counter()
    for j in range(steps):
        flat = store.valid_flat(permutation_walk(j * batch, batch, store.num_valid, key))
        torch.index_select(store.colors, 0, flat, out=out)
    dt = time.perf_counter() - t0
    return {"gather_rays_per_s": batch * steps / dt,
            "gather_gb_per_s": batch * steps * store.channels / dt / 1e9,
            "gather_ms_per_batch": dt / steps * 1e3}


def bench_h2d(store: PixelStore, batch: int, steps: int, device: torch.device) -> dict:
    """CUDA only: copy one batch's pinned staging buffers, and one large pinned buffer, to the device."""
    if device.type != "cuda":
        return {"h2d_gb_per_s": None, "h2d_peak_gb_per_s": None}
    colors = torch.empty((batch, store.channels), dtype=torch.uint8, pin_memory=True)
    flat = torch.empty(batch, dtype=torch.int64, pin_memory=True)
    big = torch.empty(256 * 2**20, dtype=torch.uint8, pin_memory=True)
    stream = torch.cuda.Stream(device)

    def timed(tensors: list[torch.Tensor], reps: int) -> float:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        with torch.cuda.stream(stream):
            for t in tensors:
                t.to(device, non_blocking=True)                    # warm-up
            start.record(stream)
            for _ in range(reps):
                for t in tensors:
                    t.to(device, non_blocking=True)
            end.record(stream)
        end.synchronize()
        nbytes = sum(t.numel() * t.element_size() for t in tensors) * reps
        return nbytes / (start.elapsed_time(end) / 1e3) / 1e9

    return {"h2d_gb_per_s": timed([colors, flat], steps), "h2d_peak_gb_per_s": timed([big], 5)}


def simulated_step(device: torch.device, compute_ms: float) -> tuple[callable, float]:
    """A device workload taking about compute_ms (matmuls, sized by calibration); its measured ms."""
    if compute_ms <= 0:
        return (lambda: None), 0.0
    n = 1024 if device.type == "cuda" else 256
    a = torch.randn(n, n, device=device)

    def matmuls(k: int) -> None:
        x = a
        for _ in range(k):
            x = (x @ a).tanh_()

    def time_it(k: int) -> float:
        sync(device)
        t0 = time.perf_counter()
        matmuls(k)
        sync(device)
        return (time.perf_counter() - t0) * 1e3

    time_it(2)
    per = max(time_it(10) / 10, 1e-3)
    k = max(1, round(compute_ms / per))
    reps = [time_it(k) for _ in range(5)]
    return (lambda: matmuls(k)), float(np.median(reps))


def bench_stream(store: PixelStore, args: argparse.Namespace, device: torch.device) -> dict:
    """End-to-end stream throughput, alone and overlapped with a simulated training step."""
    step, compute_ms = simulated_step(device, args.compute_ms)
    results = {}
    for label, work in (("stream", lambda: None), ("overlap", step)):
        with RayBatchStream(store, args.batch_size, device, seed=0, mode=args.mode,
                            prefetch=args.prefetch) as stream:
            for _ in range(3):
                next(stream)
            sync(device)
            t0 = time.perf_counter()
            for _ in range(args.steps):
                batch = next(stream)
                work()
                if args.mode == "selective":
                    stream.update_errors(batch, batch.colors.mean(1))
            sync(device)
            results[label] = (time.perf_counter() - t0) / args.steps
    out = {"stream_rays_per_s": args.batch_size / results["stream"],
           "stream_ms_per_batch": results["stream"] * 1e3}
    if args.compute_ms > 0:
        out.update({"compute_only_ms_per_step": compute_ms, "overlap_ms_per_step": results["overlap"] * 1e3,
                    "overlap_overhead_ms": results["overlap"] * 1e3 - compute_ms})
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--width", type=int, default=800)
    p.add_argument("--height", type=int, default=600)
    p.add_argument("--channels", type=int, choices=(3, 4), default=3)
    p.add_argument("--batch-size", type=int, default=65536)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--mode", choices=("uniform", "selective"), default="uniform")
    p.add_argument("--prefetch", type=int, default=2)
    p.add_argument("--compute-ms", type=float, default=10.0, help="simulated training step; 0 = skip")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)

    images = synthetic_images(args.images, args.width, args.height, args.channels, seed=0)
    t0 = time.perf_counter()
    store = PixelStore.from_images(images, device=device)
    build_s = time.perf_counter() - t0
    del images

    results = {"device": str(device), "batch_size": args.batch_size, "store_build_s": build_s,
               "store_nbytes": store.nbytes, "bytes_per_pixel": store.nbytes / store.num_pixels,
               "pinned": store.pinned}
    results.update(bench_gather(store, args.batch_size, args.steps, pin=device.type == "cuda"))
    results.update(bench_h2d(store, args.batch_size, args.steps, device))
    results.update(bench_stream(store, args, device))
    report = {
        "machine": {"cpu": cpu_name(), "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "torch": torch.__version__,
                    "cuda_device": torch.cuda.get_device_name(device) if device.type == "cuda" else None},
        "config": {k: v for k, v in vars(args).items()},
        "results": results,
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
