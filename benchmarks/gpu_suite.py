"""GPU engine suite: every figure the GPU engine is held to, each part time-boxed, as one JSON document.

    python benchmarks/gpu_suite.py [--device auto|cpu|cuda] [--small] [--parts synthetic,fox,...]
                                   [--fox PATH|none] [--out PATH] [--budget-scale 1.0] [--deadline S]

The full run is sized for one CUDA machine and under 6 minutes in all (--deadline 330 s for the parts,
each part also in its own time box). --small checks the script on a 2-core CPU in under 3 minutes: preset
"fast", 12 synthetic views at 100 px for 20 s, the fox at 240 px for 15 s, the timed evaluation on 2 views,
chunks of 1024 rays (faster than large chunks on a CPU), a 320x240 frame, a 64^3 mesh, small hash-grid and
stream batches. The targets are those of the full run on the GPU; --small figures say nothing about them.
Each size, budget and chunk has its own option (below) for smaller checks still.

Parts, in the order they run (--parts picks some; each runs in its own try/except, so a failure records
{"error": ...} in its figures and the rest still run; each is stopped by an alarm at its time box, and a
part is skipped when the suite's --deadline leaves it too little time):
  synthetic  the synthetic capture (core.dataparsers.synthetic; 40 views at 400 px, rendered in parallel processes)
             written to a temporary folder and read back (core.dataparsers.readers.load_capture), as `nerfserve synth`
             then `nerfserve train` do; preset "balanced" trained for a wall-clock budget (60 s) with the
             held-out PSNR measured at fixed training-clock times (evaluation time excluded): time to 25 and
             30 dB, PSNR at the end, the curve; training rays/s and samples/ray.
  fox        the fox capture (--fox; transforms.json + images) at full resolution, unbounded, preset
             "balanced" for 30 s: training rays/s, samples/ray, held-out PSNR (on its 7 held-out views).
  eval       seconds of core.engine.evaluation.evaluate on the fox's 7 held-out views (--eval-views; the synthetic
             capture's held-out views without the fox).
  render     TrainedScene.render of one 4032x3024 frame (RGB + depth) of the trained synthetic scene: MP/s.
  hashgrid   the hash grid alone (hashgrid_bench.GRID: 12 levels, 2^17 entries, F=2, resolution 16..512),
             forward + backward points/s on 2^20 ray-like points, for each backend that
             core.fields.encoding.resolve_backend accepts of torch, triton and tcnn (the best is the figure).
  h2d        the host-to-device ray stream (core.engine.data.RayBatchStream) through h2d_bench's functions: rays/s.
  mesh       density marching cubes (core.export.density_mesh) of the trained synthetic scene at 512^3
             (its level from 8 renders at 128 px, made beforehand and not counted).
Time to 25 / 30 dB is the training time of the first measurement at or above it, so the measurement times
bound its resolution; null (met: false) when it is never reached.

Training runs core.engine.train's own parts for per-ray models (core.engine.loop.prepare, core.models.build.build_model,
core.engine.train.ray_training, core.engine.loop.optimise) with optimise's between_steps hook measuring the held-out
PSNR at the chosen times and a stop at the budget: core.engine.train.train itself runs a fixed number of steps,
and its should_stop raises without returning the scene. The schedule is the preset's (its steps; the
learning rate decays over them) unless --steps is given; no checkpoints are written.

Every figure is {"value", "unit", "target", "met", ...details}; met is null where there is no value.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
for _p in (str(REPO), str(REPO / "benchmarks")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from h2d_bench import bench_gather, bench_h2d, bench_stream, cpu_name, synthetic_images  # noqa: E402
from hashgrid_bench import GRID  # noqa: E402
from render_bench import machine, sync, timed  # noqa: E402

PARTS = ("synthetic", "fox", "eval", "render", "hashgrid", "h2d", "mesh")

# figure -> (part, unit, comparison, target, what the target says)
FIGURES: dict[str, tuple[str, str, str | None, float | None, str]] = {
    "synthetic_time_to_25db_s": ("synthetic", "s", "<=", 3.0, "held-out 25 dB within 3 s of training"),
    "synthetic_time_to_30db_s": ("synthetic", "s", "<=", 10.0, "held-out 30 dB within 10 s of training"),
    "synthetic_psnr_end_db": ("synthetic", "dB", ">=", 33.0, ">= 33 dB held-out at 60 s"),
    "synthetic_train_rays_per_s": ("synthetic", "rays/s", ">=", 3e6, ">= 3 M training rays/s"),
    "synthetic_samples_per_ray": ("synthetic", "samples/ray", None, None, "no target"),
    "fox_train_rays_per_s": ("fox", "rays/s", ">=", 1.5e6, ">= 1.5 M training rays/s"),
    "fox_samples_per_ray": ("fox", "samples/ray", "<=", 40.0, "<= 40 samples/ray"),
    "fox_psnr_holdout_db": ("fox", "dB", ">=", 25.0, ">= 25 dB held-out after <= 30 s"),
    "eval_seconds": ("eval", "s", "<=", 5.0, "final held-out evaluation (7 views) <= 5 s"),
    "render_mp_per_s": ("render", "MP/s", ">=", 30.0, "RGB + depth >= 30 MP/s at 4032x3024"),
    "hashgrid_points_per_s": ("hashgrid", "points/s", ">=", 1e9, "forward + backward >= 1 G points/s"),
    "h2d_rays_per_s": ("h2d", "rays/s", ">=", 1e7, "host -> device ray stream >= 10 M rays/s"),
    "marching_cubes_s": ("mesh", "s", "<=", 3.0, "density marching cubes at 512^3 <= 3 s"),
}

# Held-out PSNR measurement times, seconds of training for a 60 s budget (scaled to the budget).
EVAL_AT_FULL = (0, 1, 1.5, 2, 2.5, 3, 4, 5, 6, 7.5, 10, 12.5, 15, 20, 25, 30, 40, 50)
EVAL_AT_SMALL = (0, 15, 30, 45)

_T0 = time.perf_counter()


def log(msg: str) -> None:
    """One progress line on stderr, stamped with the seconds since the suite started."""
    print(f"[{time.perf_counter() - _T0:7.1f} s] {msg}", file=sys.stderr, flush=True)


# ---- time boxes ---------------------------------------------------------------------------------------

class PartTimeout(TimeoutError):
    """Raised in the main thread by SIGALRM when a part outruns its time box."""


def _on_alarm(signum, frame):
    raise PartTimeout("the part outran its time box")


class TimeBox:
    """`with TimeBox(seconds):` raises PartTimeout in the block after `seconds` (SIGALRM, main thread only);
    `.left()` is the seconds remaining."""

    def __init__(self, seconds: float) -> None:
        self.seconds = max(float(seconds), 0.001)
        self.end = time.perf_counter() + self.seconds

    def left(self) -> float:
        return self.end - time.perf_counter()

    def __enter__(self) -> TimeBox:
        self.end = time.perf_counter() + self.seconds
        self._old = signal.signal(signal.SIGALRM, _on_alarm)
        signal.setitimer(signal.ITIMER_REAL, self.seconds)
        return self

    def __exit__(self, *exc) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self._old)


# ---- figures ------------------------------------------------------------------------------------------

def figure(key: str, value: float | None, **details) -> dict:
    """The figure `key` with its value, unit, target and whether the target is met (None without a value)."""
    _, unit, op, target, says = FIGURES[key]
    met = None
    if value is not None and op is not None and math.isfinite(value):
        met = bool(value <= target) if op == "<=" else bool(value >= target)
    return {"value": value, "unit": unit, "target": None if op is None else f"{op} {target:g}", "target_says": says,
            "met": met, **details}


def failed(key: str, **reason) -> dict:
    """The figure `key` without a value: reason is error="..." or skipped="..."."""
    _, unit, op, target, says = FIGURES[key]
    return {"value": None, "unit": unit, "target": None if op is None else f"{op} {target:g}", "target_says": says,
            "met": None, **reason}


def finite(obj):
    """JSON-safe copy: non-finite floats become None, numpy scalars plain numbers, tuples lists."""
    if isinstance(obj, dict):
        return {str(k): finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def suite_machine(device: str) -> dict:
    """render_bench.machine plus the CPU model, Python, CUDA and Triton versions."""
    info = machine(device)
    info.update({"cpu_name": cpu_name(), "python": platform.python_version(), "cuda": torch.version.cuda})
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception as e:
        info["triton"] = f"not importable: {type(e).__name__}"
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(0)
        info.update({"gpu_memory_gb": props.total_memory / 1024 ** 3,
                     "gpu_multiprocessors": props.multi_processor_count})
    return info


# ---- synthetic capture --------------------------------------------------------------------------------

def _render_one(job: tuple) -> np.ndarray:
    """Process-pool job: (seed, c2w (4, 4) float64, intrinsics dict, supersample) -> (H, W, 4) uint8 RGBA
    rendered by core.dataparsers.synthetic.render_views (one view of the turntable scene)."""
    from core.dataparsers.synthetic import render_views, turntable_shapes
    from core.functional.cameras import Intrinsics

    seed, c2w, intr, supersample = job
    images, _ = render_views(turntable_shapes(seed), c2w, Intrinsics.from_dict(intr), supersample)
    return images[0]


def synthetic_capture(views: int, size: int, workers: int):
    """core.dataparsers.synthetic.render_synthetic's capture (same poses, images, names and frame), its views rendered
    by `workers` processes (1: in this process); the depth maps and meshes are not made.
    Returns a core.scene.capture.Capture of `views` RGBA (size, size, 4) uint8 images."""
    from core.dataparsers.synthetic import SyntheticConfig, orbit_poses, pinhole
    from core.scene.capture import Capture, FrameInfo

    cfg = SyntheticConfig(views=views, size=size)
    c2w = orbit_poses(cfg)
    intr = pinhole(cfg.size, cfg.fov_deg)
    jobs = [(cfg.seed, pose, intr.to_dict(), cfg.supersample) for pose in c2w]
    if workers <= 1:
        images = [_render_one(j) for j in jobs]
    else:
        import multiprocessing

        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=torch.set_num_threads, initargs=(1,))
        try:
            images = list(pool.map(_render_one, jobs))
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
    return Capture(images, [intr] * views, c2w, [f"r_{i:03d}.png" for i in range(views)],
                   frame=FrameInfo("arbitrary", None, "synthetic turntable, world up +z, ground top z=0"))


# ---- training for a wall-clock budget -----------------------------------------------------------------

def train_for(capture, config, budget_s: float, eval_at: list[float], curve_views: int, label: str,
              box: TimeBox | None = None):
    """Train a per-ray model ("nerf" / "reference", no composition) as core.engine.train.train does, for at most
    `budget_s` seconds of training (or config.steps steps, whichever comes first).

    capture: core.scene.capture.Capture (input frame); eval_at: training-clock seconds at which the held-out PSNR
    is measured (core.engine.evaluation.evaluate on the first `curve_views` held-out views, 0 = all), its time not
    counted as training. With a time box, a measurement is left out (curve_skipped) when the box could not
    also hold the rest of the training and two more measurements (this one and a final evaluation).
    Returns (scene, capture as trained (resized to config.max_side), run) with run = {setup_s, train_seconds,
    steps, planned_steps, stopped_by, rays, rays_per_s, samples_per_ray, curve: [{step, seconds, psnr}],
    curve_views, curve_eval_s, curve_skipped}.
    """
    from core.engine.evaluation import evaluate
    from core.engine.loop import optimise, param_groups, prepare
    from core.engine.train import ray_training
    from core.errors import Cancelled
    from core.models.build import build_model
    from core.models.config import TrainConfig
    from core.progress import no_progress
    from core.scene.trained import TrainedScene

    if config.model not in ("nerf", "reference") or config.composition:
        raise ValueError("train_for runs per-ray models without composition only")
    t = time.perf_counter()
    data = prepare(capture, config)
    model = build_model(config, data.normalization.mode == "unbounded", len(data.train_indices), data.device)
    config_run = TrainConfig.from_dict({**config.to_dict(), "backend": getattr(model.field, "backend", "torch")})
    scene = TrainedScene(model=model, normalization=data.normalization, intrinsics=list(data.capture.intrinsics),
                         c2w=data.capture.c2w, names=list(data.capture.names), frame=data.capture.frame,
                         train_indices=data.train_indices, test_indices=data.test_indices, config=config_run,
                         device=data.device)
    opt = torch.optim.Adam(param_groups(model, config), lr=config.lr, betas=(0.9, 0.99))
    stream, step = ray_training(model, data, config)
    compile_s = warm_kernels(model, data.device)
    sync(str(data.device))
    setup_s = time.perf_counter() - t
    log(f"{label}: prepared in {setup_s:.1f} s ({len(data.train_indices)} training / {len(data.test_indices)} "
        f"held-out views, {data.normalization.mode}, backend {config_run.backend}); training for {budget_s:.1f} s")

    counts = {"rays": 0, "samples": 0}

    def counted(batch):
        out = step(batch)
        counts["rays"] += int(out.rays)
        counts["samples"] += int(out.samples)
        return out

    state = {"seconds": 0.0, "steps": 0, "eval_s": 0.0, "last_eval_s": 0.0, "skipped": 0}
    pending = sorted(eval_at)
    curve: list[dict] = []
    views = data.test_indices[:curve_views] if curve_views else data.test_indices

    def between_steps(done: int, seconds: float) -> None:
        state["seconds"], state["steps"] = seconds, done
        if pending and views and seconds >= pending[0]:
            while pending and seconds >= pending[0]:
                pending.pop(0)
            if box is not None and box.left() < (budget_s - seconds) + 2 * state["last_eval_s"] + 5:
                state["skipped"] += 1
                return
            t_eval = time.perf_counter()
            p = evaluate(scene, data.capture, views)["psnr_holdout"]
            state["last_eval_s"] = time.perf_counter() - t_eval
            state["eval_s"] += state["last_eval_s"]
            curve.append({"step": done, "seconds": round(seconds, 3), "psnr": round(p, 3)})
            log(f"{label}: {seconds:6.2f} s  step {done:5d}  held-out {p:6.2f} dB  "
                f"{counts['rays'] / max(seconds, 1e-9) / 1e6:.3f} M rays/s")

    stopped_by = "steps"
    try:
        optimise(model, opt, stream, counted, config, data.device, no_progress,
                 lambda: state["seconds"] >= budget_s, None, False, between_steps)
    except Cancelled:
        stopped_by = "budget"
    model.eval()
    secs = max(state["seconds"], 1e-9)
    run = {"setup_s": setup_s, "kernel_compile_s": compile_s, "train_seconds": state["seconds"],
           "steps": state["steps"],
           "planned_steps": config.steps, "stopped_by": stopped_by, "rays": counts["rays"],
           "rays_per_s": counts["rays"] / secs, "samples_per_ray": counts["samples"] / max(counts["rays"], 1),
           "curve": curve, "curve_views": len(views), "curve_eval_s": state["eval_s"],
           "curve_skipped": state["skipped"]}
    log(f"{label}: {state['steps']} steps in {state['seconds']:.1f} s ({stopped_by}), "
        f"{run['rays_per_s'] / 1e6:.3f} M rays/s, {run['samples_per_ray']:.1f} samples/ray")
    return scene, data.capture, run


def warm_kernels(model, device: torch.device) -> float:
    """Run the hash grid's forward and backward once, outside the training clock: Triton compiles its kernels on
    first use (once per machine; they are cached on disk). Returns the seconds it took."""
    encoding = getattr(model.field, "encoding", None)
    if encoding is None:
        return 0.0
    t = time.perf_counter()
    x = torch.rand(4096, 3, device=device)
    encoding(x).sum().backward()
    for p in encoding.parameters():
        p.grad = None
    sync(str(device))
    return time.perf_counter() - t


def first_time_at(curve: list[dict], db: float) -> float | None:
    """Training seconds of the first curve point at or above `db` (bounded by the curve's spacing), or None."""
    return next((p["seconds"] for p in curve if p["psnr"] >= db), None)


def train_config(args, preset: str, **overrides):
    """TrainConfig.preset(preset) on the suite's device, with --steps and --eval-chunk when given."""
    from core.models.config import TrainConfig

    if args.steps:
        overrides["steps"] = args.steps
    if args.eval_chunk:
        overrides["eval_chunk"] = args.eval_chunk
    return TrainConfig.preset(preset, device=args.device, backend=args.backend, **overrides)


# ---- parts ---------------------------------------------------------------------------------------------

def part_synthetic(args, ctx: dict, box: TimeBox) -> dict:
    """Write, read back and train the synthetic capture; the PSNR-over-time and throughput figures."""
    from core.dataparsers.readers import load_capture, write_capture
    from core.engine.evaluation import evaluate

    views, size = args.syn_views, args.syn_size
    workers = args.gen_workers or (min(os.cpu_count() or 1, views) if views * size * size > 2e6 else 1)
    t = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_suite_synth_") as tmp:
        write_capture(synthetic_capture(views, size, workers), tmp)
        capture = load_capture(tmp)
    gen_s = time.perf_counter() - t
    log(f"synthetic: {views} views at {size} px written and read back in {gen_s:.1f} s ({workers} processes)")
    cfg = train_config(args, args.preset)
    reserve = 10 + 0.2 * args.syn_seconds          # evaluations during and after training
    budget = max(1.0, min(args.syn_seconds, box.left() - reserve))
    eval_at = [f * budget / 60.0 for f in (EVAL_AT_SMALL if args.small else EVAL_AT_FULL)]
    scene, cap, run = train_for(capture, cfg, budget, eval_at, args.curve_views, "synthetic", box)
    ctx.update(synthetic_scene=scene, synthetic_capture=cap)
    curve = run["curve"]
    detail = {"train_seconds": run["train_seconds"], "steps": run["steps"]}
    try:
        (res, eval_s) = timed(lambda: evaluate(scene, cap, scene.test_indices), args.device)
        end = res.get("psnr_holdout")
        log(f"synthetic: final held-out {end} dB on {len(scene.test_indices)} views ({eval_s:.1f} s)")
        if end is not None and run["curve_views"] == len(scene.test_indices):   # the same views: the curve's end
            curve.append({"step": run["steps"], "seconds": round(run["train_seconds"], 3), "psnr": round(end, 3)})
        end_figure = figure("synthetic_psnr_end_db", end, ssim=res.get("ssim_holdout"),
                            holdout_views=len(scene.test_indices), curve=curve, **detail)
    except PartTimeout:                 # keep the curve and the throughput figures
        eval_s, msg = None, "PartTimeout: the final held-out evaluation outran the time box"
        log(f"synthetic: {msg}")
        end_figure = failed("synthetic_psnr_end_db", error=msg, curve=curve, **detail)
    t25, t30 = first_time_at(curve, 25.0), first_time_at(curve, 30.0)
    figures = {
        "synthetic_time_to_25db_s": figure("synthetic_time_to_25db_s", t25, reached=t25 is not None, **detail),
        "synthetic_time_to_30db_s": figure("synthetic_time_to_30db_s", t30, reached=t30 is not None, **detail),
        "synthetic_psnr_end_db": end_figure,
        "synthetic_train_rays_per_s": figure("synthetic_train_rays_per_s", run["rays_per_s"],
                                             batch_rays=cfg.batch_rays, **detail),
        "synthetic_samples_per_ray": figure("synthetic_samples_per_ray", run["samples_per_ray"], **detail),
    }
    for key in ("synthetic_time_to_25db_s", "synthetic_time_to_30db_s"):
        if figures[key]["value"] is None:
            figures[key]["met"] = False                  # never reached within the budget
    details = {"views": views, "size": size, "generate_s": gen_s, "generate_processes": workers,
               "preset": args.preset, "budget_s": budget, "final_eval_s": eval_s,
               **{k: v for k, v in run.items() if k != "curve"}}
    return {"figures": figures, "details": details}


def find_fox(arg: str | None) -> Path | None:
    """--fox: a path, "none", or unset (REPO/data/fox, then ../shared/data/fox beside the repo)."""
    if arg and arg.lower() == "none":
        return None
    candidates = [Path(arg)] if arg else [REPO / "data" / "fox", REPO.parent / "shared" / "data" / "fox"]
    return next((p for p in candidates if (p / "transforms.json").is_file()), None)


def part_fox(args, ctx: dict, box: TimeBox) -> dict:
    """Train the fox capture (unbounded) for its budget; its held-out evaluation is timed for `eval`."""
    from core.dataparsers.readers import load_capture
    from core.engine.evaluation import evaluate

    path = find_fox(args.fox)
    if path is None:
        reason = ("--fox none" if args.fox and args.fox.lower() == "none" else
                  f"no fox capture (transforms.json) at {args.fox or 'data/fox or ../shared/data/fox'}")
        return {"skipped": reason}
    t = time.perf_counter()
    capture = load_capture(path, max_side=args.fox_side)
    load_s = time.perf_counter() - t
    w, h = capture.intrinsics[0].width, capture.intrinsics[0].height
    log(f"fox: {len(capture)} images of {w}x{h} loaded in {load_s:.1f} s from {path}")
    cfg = train_config(args, args.preset, scene_mode="unbounded")
    budget = max(1.0, min(args.fox_seconds, box.left() - 25))
    scene, cap, run = train_for(capture, cfg, budget, [], 0, "fox", box)
    detail = {"train_seconds": run["train_seconds"], "steps": run["steps"]}
    try:
        # What training runs after its steps: eval_views held-out views at eval_max_side (TrainConfig's defaults).
        (res, eval_s) = timed(lambda: evaluate(scene, cap, scene.test_indices, args.eval_views, args.eval_max_side),
                              args.device)
        views = [None] * res.get("holdout_views", 0)
    except PartTimeout:                 # keep the training figures; the evaluation's own say why they are missing
        msg = f"PartTimeout: the held-out evaluation of {args.eval_views} views outran the time box"
        ctx["eval"] = {"error": msg}
        log(f"fox: {msg}")
        figures = {"fox_train_rays_per_s": figure("fox_train_rays_per_s", run["rays_per_s"], **detail),
                   "fox_samples_per_ray": figure("fox_samples_per_ray", run["samples_per_ray"], **detail),
                   "fox_psnr_holdout_db": failed("fox_psnr_holdout_db", error=msg)}
        return {"figures": figures, "details": {"path": str(path), **{k: v for k, v in run.items() if k != "curve"}}}
    log(f"fox: held-out {res.get('psnr_holdout')} dB on {len(views)} views, evaluated in {eval_s:.2f} s")
    ctx["eval"] = {"seconds": eval_s, "views": len(views), "scene": "fox", "size": res.get("holdout_size"),
                   "psnr_holdout": res.get("psnr_holdout")}
    figures = {
        "fox_train_rays_per_s": figure("fox_train_rays_per_s", run["rays_per_s"], batch_rays=cfg.batch_rays,
                                       **detail),
        "fox_samples_per_ray": figure("fox_samples_per_ray", run["samples_per_ray"], **detail),
        "fox_psnr_holdout_db": figure("fox_psnr_holdout_db", res.get("psnr_holdout"), ssim=res.get("ssim_holdout"),
                                      holdout_views=len(views), **detail),
    }
    details = {"path": str(path), "images": len(capture), "size": f"{w}x{h}", "load_s": load_s,
               "preset": args.preset, "budget_s": budget, **{k: v for k, v in run.items() if k != "curve"}}
    return {"figures": figures, "details": details}


def part_eval(args, ctx: dict, box: TimeBox) -> dict:
    """Seconds of the final held-out evaluation: the fox's (timed by its part), else the synthetic's."""
    from core.engine.evaluation import evaluate

    if "eval" not in ctx:
        scene, cap = ctx.get("synthetic_scene"), ctx.get("synthetic_capture")
        if scene is None:
            raise RuntimeError("needs a trained scene: the fox or synthetic part did not produce one")
        res, sec = timed(lambda: evaluate(scene, cap, scene.test_indices, args.eval_views, args.eval_max_side),
                         args.device)
        ctx["eval"] = {"seconds": sec, "views": res.get("holdout_views", 0), "scene": "synthetic",
                       "size": res.get("holdout_size"), "psnr_holdout": res.get("psnr_holdout")}
    e = ctx["eval"]
    if "error" in e:
        raise RuntimeError(e["error"])
    log(f"eval: {e['views']} {e['scene']} views of {e['size']} in {e['seconds']:.2f} s")
    return {"figures": {"eval_seconds": figure("eval_seconds", e["seconds"], **{k: v for k, v in e.items()
                                                                               if k != "seconds"})},
            "details": e}


def part_render(args, ctx: dict, box: TimeBox) -> dict:
    """One RGB + depth frame of the trained synthetic scene at --render-size (after a warm-up and a 640x480
    estimate; skipped when the estimate does not fit the time box)."""
    scene = ctx.get("synthetic_scene")
    if scene is None:
        raise RuntimeError("needs the synthetic part's trained scene")
    w, h = args.render_size
    cam = scene.test_indices[0] if scene.test_indices else 0
    c2w, intr = scene.c2w[cam], scene.intrinsics[cam]
    chunk = args.render_chunk
    scene.render(c2w, intr, 64, 48, chunk=chunk)                                 # warm-up
    ew, eh = min(w, 640), min(h, 480)
    _, est_s = timed(lambda: scene.render(c2w, intr, ew, eh, chunk=chunk), args.device)
    est_rate = ew * eh / 1e6 / est_s
    predicted = w * h / 1e6 / est_rate
    details = {"size": f"{w}x{h}", "chunk": chunk, "estimate_size": f"{ew}x{eh}", "estimate_mp_per_s": est_rate,
               "predicted_s": predicted}
    if (ew, eh) == (w, h):
        sec = est_s
    elif predicted > box.left() - 2:
        msg = f"skipped: {w}x{h} predicted {predicted:.1f} s from {ew}x{eh}, over the time box"
        return {"figures": {"render_mp_per_s": failed("render_mp_per_s", error=msg, **details)}, "details": details}
    else:
        _, sec = timed(lambda: scene.render(c2w, intr, w, h, chunk=chunk), args.device)
    rate = w * h / 1e6 / sec
    log(f"render: {w}x{h} in {sec:.2f} s = {rate:.3f} MP/s")
    details.update(seconds=sec)
    return {"figures": {"render_mp_per_s": figure("render_mp_per_s", rate, **details)}, "details": details}


def ray_points(n: int, device: str, seed: int = 0) -> torch.Tensor:
    """(n, 3) float32 points in [0, 1]^3 along random rays, 100 a ray (as hashgrid_bench)."""
    gen = torch.Generator().manual_seed(seed)
    rays = max(1, -(-n // 100))
    origins = torch.rand(rays, 1, 3, generator=gen)
    dirs = torch.nn.functional.normalize(torch.randn(rays, 1, 3, generator=gen), dim=-1)
    x = origins + dirs * torch.linspace(0, 0.5, 100)[None, :, None]
    return x.reshape(-1, 3)[:n].clamp(0, 1).contiguous().to(device)


def part_hashgrid(args, ctx: dict, box: TimeBox) -> dict:
    """Forward + backward points/s of the hash grid for every backend resolve_backend accepts."""
    from core.fields.encoding import make_hash_grid, resolve_backend

    x = ray_points(args.hash_points, args.device)
    grad = torch.randn(len(x), GRID.n_output_dims, device=args.device)
    backends: dict[str, dict] = {}
    candidates = ("torch", "triton", "tcnn")
    for i, name in enumerate(candidates):
        try:
            resolve_backend(name, args.device)
        except ValueError as e:
            backends[name] = {"unavailable": str(e)}
            continue
        try:
            grid = make_hash_grid(GRID, name, args.device).to(args.device)
            params = list(grid.parameters())

            def fwd_bwd(grid=grid, params=params) -> None:
                for p in params:
                    p.grad = None
                grid(x).backward(grad)

            for _ in range(2):
                fwd_bwd()                                                      # warm-up (and compilation)
            share = max(box.left() - 1, 0.5) / (len(candidates) - i)
            sync(args.device)
            t, reps = time.perf_counter(), 0
            while reps < args.hash_reps and (reps < 3 or time.perf_counter() - t < min(share, 3.0)):
                fwd_bwd()
                sync(args.device)
                reps += 1
            sync(args.device)
            sec = (time.perf_counter() - t) / reps
            backends[name] = {"points_per_s": len(x) / sec, "seconds_per_pass": sec, "repeats": reps}
            log(f"hashgrid: {name} {len(x) / sec / 1e6:.1f} M points/s (forward + backward, {len(x)} points)")
            del grid, params
        except PartTimeout:
            raise
        except Exception as e:
            backends[name] = {"error": f"{type(e).__name__}: {e}"}
    timed_ok = {k: v for k, v in backends.items() if "points_per_s" in v}
    details = {"points": len(x), "grid": GRID.__dict__, "backends": backends}
    if not timed_ok:
        return {"figures": {"hashgrid_points_per_s": failed("hashgrid_points_per_s", error="no backend ran",
                                                            **details)}, "details": details}
    best = max(timed_ok, key=lambda k: timed_ok[k]["points_per_s"])
    return {"figures": {"hashgrid_points_per_s": figure("hashgrid_points_per_s", timed_ok[best]["points_per_s"],
                                                        backend=best, **details)}, "details": details}


def part_h2d(args, ctx: dict, box: TimeBox) -> dict:
    """h2d_bench's ray-stream figures (RayBatchStream alone, no simulated step) on random images."""
    from core.engine.data import PixelStore

    device = torch.device(args.device)
    n, w, h = args.h2d_images
    images = synthetic_images(n, w, h, 3, seed=0)
    store = PixelStore.from_images(images, device=device)
    del images
    ns = argparse.Namespace(batch_size=args.h2d_batch, steps=args.h2d_steps, mode="uniform", prefetch=2,
                            compute_ms=0.0)
    res = {"images": f"{n} x {w}x{h}", "batch_size": ns.batch_size, "steps": ns.steps, "pinned": store.pinned}
    res.update(bench_gather(store, ns.batch_size, ns.steps, pin=device.type == "cuda"))
    res.update(bench_h2d(store, ns.batch_size, ns.steps, device))
    res.update(bench_stream(store, ns, device))
    log(f"h2d: stream {res['stream_rays_per_s'] / 1e6:.2f} M rays/s, gather {res['gather_rays_per_s'] / 1e6:.2f} M "
        f"rays/s, copy {res.get('h2d_gb_per_s')} GB/s")
    return {"figures": {"h2d_rays_per_s": figure("h2d_rays_per_s", res["stream_rays_per_s"], **res)}, "details": res}


def part_mesh(args, ctx: dict, box: TimeBox) -> dict:
    """density_mesh of the trained synthetic scene at --mesh-res (the level from 8 renders at 128 px, not
    timed in the figure); stopped (core.errors.Cancelled) when the time box is nearly spent."""
    from core.errors import Cancelled
    from core.export.density_mesh import density_mesh
    from core.export.grid import scene_occupancy
    from core.export.renders import render_scene_cameras

    scene = ctx.get("synthetic_scene")
    if scene is None:
        raise RuntimeError("needs the synthetic part's trained scene")
    res = args.mesh_res
    views, views_s = timed(lambda: render_scene_cameras(scene, list(scene.train_indices)[:8],
                                                        max_side=args.mesh_view_side), args.device)
    occupancy = scene_occupancy(scene.occupancy_world())
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    try:
        (mesh, info), sec = timed(lambda: density_mesh(scene, views, res, occupancy,
                                                       should_stop=lambda: box.left() < 2), args.device)
    except Cancelled:
        msg = f"stopped after {time.perf_counter() - t:.1f} s, at the time box"
        return {"figures": {"marching_cubes_s": failed("marching_cubes_s", error=msg, resolution=res)},
                "details": {"resolution": res, "views_s": views_s}}
    details = {"resolution": res, "seconds": sec, "faces": int(len(mesh.faces)), "level_views_s": views_s,
               "grid_shape": info["grid_shape"], "level_rule": info["level_rule"]}
    if args.device.startswith("cuda"):
        details["peak_gpu_gb"] = torch.cuda.max_memory_allocated() / 1024 ** 3
    log(f"mesh: {res}^3 in {sec:.2f} s, {details['faces']} faces")
    return {"figures": {"marching_cubes_s": figure("marching_cubes_s", sec, **details)}, "details": details}


RUNNERS = {"synthetic": part_synthetic, "fox": part_fox, "eval": part_eval, "render": part_render,
           "hashgrid": part_hashgrid, "h2d": part_h2d, "mesh": part_mesh}


# ---- main ----------------------------------------------------------------------------------------------

def size_arg(text: str) -> tuple[int, int]:
    w, h = text.lower().split("x")
    return int(w), int(h)


def images_arg(text: str) -> tuple[int, int, int]:
    """'N' or 'NxWxH' -> (N, W, H) (W, H default 800x600)."""
    parts = [int(p) for p in text.lower().split("x")]
    return (parts[0], 800, 600) if len(parts) == 1 else tuple(parts)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--small", action="store_true", help="CPU-sized run of every part (checks the script)")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of: {', '.join(PARTS)}")
    ap.add_argument("--out", default=None, help="also write the JSON document here")
    ap.add_argument("--fox", default=None, help="fox capture folder, or 'none' (default: data/fox, "
                    "then ../shared/data/fox)")
    ap.add_argument("--budget-scale", type=float, default=1.0,
                    help="multiplies the training budgets, the parts' time boxes and the deadline")
    ap.add_argument("--deadline", type=float, default=None,
                    help="seconds for the whole suite (default 330, --small 170); parts that would start "
                         "with too little of it left are skipped")
    ap.add_argument("--preset", default=None, help="training preset (default balanced, --small fast)")
    ap.add_argument("--steps", type=int, default=0, help="training steps (default: the preset's)")
    ap.add_argument("--backend", default="auto", choices=("auto", "torch", "triton", "tcnn"),
                    help="hash-grid backend of the trainings (default auto)")
    ap.add_argument("--syn-views", type=int, default=None, help="synthetic views (default 40, --small 12)")
    ap.add_argument("--syn-size", type=int, default=None, help="synthetic image side, px (default 400, --small 100)")
    ap.add_argument("--syn-seconds", type=float, default=None, help="synthetic training budget (60, --small 20)")
    ap.add_argument("--curve-views", type=int, default=None,
                    help="held-out views per curve point (default all, --small 1)")
    ap.add_argument("--gen-workers", type=int, default=0, help="processes rendering the synthetic views (0: auto)")
    ap.add_argument("--fox-side", type=int, default=None, help="fox longest side, px (default full, --small 240)")
    ap.add_argument("--fox-seconds", type=float, default=None, help="fox training budget (30, --small 15)")
    ap.add_argument("--render-size", type=size_arg, default=None, help="WxH (default 4032x3024, --small 320x240)")
    ap.add_argument("--render-chunk", type=int, default=None,
                    help="rays per chunk (default TrainedScene.render's 65536, --small 1024: faster on a CPU)")
    ap.add_argument("--eval-chunk", type=int, default=None,
                    help="rays per chunk of the held-out evaluations (default the preset's, --small 1024)")
    ap.add_argument("--hash-points", type=int, default=None, help="points per pass (default 2^20, --small 2^15)")
    ap.add_argument("--hash-reps", type=int, default=50, help="at most this many timed passes per backend")
    ap.add_argument("--h2d-images", type=images_arg, default=None,
                    help="N or NxWxH random images (default 100x800x600, --small 10x200x150)")
    ap.add_argument("--h2d-batch", type=int, default=None, help="rays per batch (default 65536, --small 8192)")
    ap.add_argument("--h2d-steps", type=int, default=None, help="batches timed (default 50, --small 20)")
    ap.add_argument("--mesh-res", type=int, default=None, help="marching cubes resolution (512, --small 64)")
    ap.add_argument("--mesh-view-side", type=int, default=None,
                    help="longest side of the 8 renders that set the mesh's level (128, --small 32)")
    ap.add_argument("--eval-views", type=int, default=None,
                    help="held-out views of the timed final evaluation (TrainConfig's default, --small 2)")
    ap.add_argument("--eval-max-side", type=int, default=None,
                    help="long side of its renders, px; 0: full size (TrainConfig's default)")
    args = ap.parse_args(argv)
    from core.models.config import TrainConfig

    small = args.small
    defaults = {"preset": "fast" if small else "balanced", "syn_views": 12 if small else 40,
                "syn_size": 100 if small else 400, "syn_seconds": 20.0 if small else 60.0,
                "curve_views": 1 if small else 0, "fox_side": 240 if small else None,
                "fox_seconds": 15.0 if small else 30.0, "render_size": (320, 240) if small else (4032, 3024),
                "hash_points": 2 ** 15 if small else 2 ** 20,
                "h2d_images": (10, 200, 150) if small else (100, 800, 600),
                "h2d_batch": 8192 if small else 65536, "h2d_steps": 20 if small else 50,
                "mesh_res": 64 if small else 512, "mesh_view_side": 32 if small else 128,
                "eval_views": 2 if small else TrainConfig().eval_views,
                "eval_max_side": TrainConfig().eval_max_side, "render_chunk": 1024 if small else 65536,
                "eval_chunk": 1024 if small else 0, "deadline": 170.0 if small else 330.0}
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.syn_seconds *= args.budget_scale
    args.fox_seconds *= args.budget_scale
    args.deadline *= args.budget_scale
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(args.parts) - set(PARTS)
    if unknown:
        ap.error(f"unknown parts {', '.join(sorted(unknown))}: choose from {', '.join(PARTS)}")
    return args


def time_boxes(args) -> dict[str, float]:
    """Seconds each part may take at most (training budgets plus their set-up and evaluations)."""
    s = args.budget_scale
    if args.small:
        boxes = {"synthetic": args.syn_seconds + 60 * s, "fox": args.fox_seconds + 60 * s, "eval": 30 * s,
                 "render": 30 * s, "hashgrid": 15 * s, "h2d": 15 * s, "mesh": 30 * s}
    else:
        boxes = {"synthetic": args.syn_seconds + 90 * s, "fox": args.fox_seconds + 60 * s, "eval": 30 * s,
                 "render": 30 * s, "hashgrid": 20 * s, "h2d": 20 * s, "mesh": 60 * s}
    return boxes


MIN_START_S = {"synthetic": 20.0, "fox": 15.0, "eval": 3.0, "render": 3.0, "hashgrid": 3.0, "h2d": 3.0, "mesh": 5.0}


def run_suite(args) -> dict:
    """Run the selected parts in order; returns the JSON document {machine, config, figures, details}."""
    from core.fields.encoding import resolve_backend

    figures: dict[str, dict] = {}
    details: dict[str, dict] = {}
    ctx: dict = {}
    boxes = time_boxes(args)
    for part in PARTS:
        keys = [k for k, v in FIGURES.items() if v[0] == part]
        if part not in args.parts:
            for k in keys:
                figures[k] = failed(k, skipped="not in --parts")
            continue
        left = args.deadline - (time.perf_counter() - _T0)
        box_s = min(boxes[part], left)
        if box_s < MIN_START_S[part] * min(args.budget_scale, 1.0):
            for k in keys:
                figures[k] = failed(k, skipped=f"the suite's deadline ({args.deadline:.0f} s) left {left:.1f} s")
            log(f"{part}: skipped, {left:.1f} s left of the deadline")
            continue
        log(f"{part}: start (time box {box_s:.0f} s)")
        t = time.perf_counter()
        try:
            with TimeBox(box_s) as box:
                out = RUNNERS[part](args, ctx, box)
            if "skipped" in out:
                for k in keys:
                    figures[k] = failed(k, skipped=out["skipped"])
            else:
                figures.update(out["figures"])
            details[part] = out.get("details", {})
        except Exception as e:
            msg = f"{type(e).__name__}: {e}"
            if isinstance(e, PartTimeout):
                msg += f" ({box_s:.0f} s)"
            log(f"{part}: FAILED {msg}")
            for k in keys:
                figures[k] = failed(k, error=msg)
            details[part] = {"error": msg}
        details.setdefault(part, {})["part_seconds"] = time.perf_counter() - t
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    try:
        backend = resolve_backend("auto", args.device)
    except ValueError as e:
        backend = str(e)
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()}
    config.update({"time_boxes_s": boxes, "hash_grid_auto_backend": backend,
                   "note": "targets are those of the full run on the GPU; --small figures only check the script",
                   "suite_seconds": time.perf_counter() - _T0})
    return {"machine": suite_machine(args.device), "config": config,
            "figures": {k: figures[k] for k in FIGURES}, "details": details}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    log(f"gpu_suite on {args.device}: parts {', '.join(args.parts)}; deadline {args.deadline:.0f} s")
    doc = finite(run_suite(args))
    text = json.dumps(doc, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    print(text)
    met = [k for k, f in doc["figures"].items() if f.get("met") is True]
    log(f"done in {time.perf_counter() - _T0:.1f} s; targets met: {len(met)}/{len(FIGURES)}")
    return doc


if __name__ == "__main__":
    main()
