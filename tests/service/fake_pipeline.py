"""A small, fast stand-in for the real pipeline, with the same contracts (the test seam of the workers).

Selected with NERFSERVE_PIPELINE=tests.service.fake_pipeline:PIPELINE. It behaves like the real stages
where the service depends on it: it reports progress, checks should_stop between training steps,
checkpoints atomically and resumes from the newest checkpoint, and exports real files (a PLY mesh,
16-bit depth PNGs, RGB views, manifest.json with sha256).

Knobs (environment of the worker process):
    FAKE_STEP_S           seconds per training step (default 0.02)
    FAKE_SUICIDE_STAGE    a stage that SIGKILLs its own process on every attempt (an OOM kill)
    FAKE_FAIL_STAGE       a stage that raises UserInputError("fake_refused", ...)
Every stage run appends "<stage> <pid>" to <job>/fake_calls.txt, so tests can count executions.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from core.errors import Cancelled, UserInputError
from core.jobspec import JobSpec
from core.pipeline import JobDirs, Pipeline, RenderRequest, atomic_write_text
from core.progress import ProgressEvent, ProgressFn, StopFn

IMAGE_EXT = {".png", ".jpg", ".jpeg"}


def _enter(dirs: JobDirs, stage: str) -> None:
    with open(dirs.root / "fake_calls.txt", "a") as f:
        f.write(f"{stage} {os.getpid()}\n")
    if os.environ.get("FAKE_SUICIDE_STAGE") == stage:
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get("FAKE_FAIL_STAGE") == stage:
        raise UserInputError("fake_refused", f"the fake {stage} stage refuses this capture", "it is a test")


def ingest(dirs: JobDirs, options: JobSpec, progress: ProgressFn, should_stop: StopFn) -> dict:
    _enter(dirs, "ingest")
    out = dirs.ingest / "images"
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    for p in sorted(dirs.inputs.iterdir()):
        if p.suffix.lower() == ".zip":
            with zipfile.ZipFile(p) as zf:
                for name in zf.namelist():
                    if Path(name).suffix.lower() in IMAGE_EXT:
                        (out / Path(name).name).write_bytes(zf.read(name))
                        n += 1
        elif p.suffix.lower() in IMAGE_EXT:
            (out / p.name).write_bytes(p.read_bytes())
            n += 1
        progress(ProgressEvent("ingest", 0.5, f"read {p.name}", {"images": n}))
    if n == 0:
        raise UserInputError("no_images", "the upload holds no PNG/JPEG images", "upload images")
    progress(ProgressEvent("ingest", 1.0, "done", {"images": n}))
    return {"images": n}


def poses(dirs: JobDirs, options: JobSpec, progress: ProgressFn, should_stop: StopFn) -> dict:
    _enter(dirs, "poses")
    names = sorted(p.name for p in (dirs.ingest / "images").iterdir())
    for i, _ in enumerate(names):
        progress(ProgressEvent("poses", (i + 1) / len(names), "registering", {"registered": i + 1}))
    atomic_write_text(dirs.sfm / "transforms.json", json.dumps({"frames": [{"file_path": n} for n in names]}))
    return {"registered": len(names), "images": len(names)}


def _checkpoint_step(dirs: JobDirs) -> int:
    try:
        return int(json.loads((dirs.checkpoints / "latest.json").read_text())["step"])
    except (FileNotFoundError, ValueError, KeyError):
        return 0


def train(dirs: JobDirs, options: JobSpec, progress: ProgressFn, should_stop: StopFn) -> dict:
    _enter(dirs, "train")
    total = int(options.steps or 20)
    step_s = float(os.environ.get("FAKE_STEP_S", "0.02"))
    start = _checkpoint_step(dirs)
    with open(dirs.root / "fake_calls.txt", "a") as f:
        f.write(f"train-resume {start}\n")
    for step in range(start + 1, total + 1):
        if should_stop():
            atomic_write_text(dirs.checkpoints / "latest.json", json.dumps({"step": step - 1}))
            raise Cancelled()
        time.sleep(step_s)
        if step % 5 == 0 or step == total:
            atomic_write_text(dirs.checkpoints / "latest.json", json.dumps({"step": step}))
        psnr = 10.0 + 20.0 * step / total
        progress(ProgressEvent("training", step / total, "", {
            "step": step, "total_steps": total, "loss": 1.0 / step, "psnr": psnr,
            "eta_s": (total - step) * step_s}))
    atomic_write_text(dirs.scene / "scene.json", json.dumps({"steps": total}))
    return {"steps": total, "resumed_from": start, "psnr_holdout": 30.0}


def _png(path: Path, arr: np.ndarray) -> dict:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(arr).save(tmp, format="PNG")
    os.replace(tmp, path)
    return {"bytes": path.stat().st_size, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def export(dirs: JobDirs, options: JobSpec, progress: ProgressFn, should_stop: StopFn) -> dict:
    _enter(dirs, "export")
    import trimesh

    out = dirs.outputs
    files = []
    mesh = trimesh.creation.icosphere(subdivisions=2)
    mesh_path = out / "mesh.ply"
    mesh_path.parent.mkdir(parents=True, exist_ok=True)
    mesh.export(mesh_path.with_name(".mesh.ply.tmp"), file_type="ply")
    os.replace(mesh_path.with_name(".mesh.ply.tmp"), mesh_path)
    files.append({"path": "mesh.ply", "kind": "mesh", "format": "ply", "frame": "input", "units": "arbitrary",
                  "bytes": mesh_path.stat().st_size, "sha256": hashlib.sha256(mesh_path.read_bytes()).hexdigest()})
    progress(ProgressEvent("exporting", 0.4, "mesh"))
    yy, xx = np.mgrid[0:32, 0:48]
    for i in range(2):
        depth = ((xx + yy + i) * 100).astype(np.uint16)
        info = _png(out / "depth" / f"depth_{i:03d}.png", depth)
        files.append({"path": f"depth/depth_{i:03d}.png", "kind": "depth", "format": "png16", "frame": "camera",
                      "units": "millimetres", **info})
        rgb = np.stack([xx * 5, yy * 7, np.full_like(xx, 40 * i)], -1).astype(np.uint8)
        info = _png(out / "views" / f"view_{i:03d}.png", rgb)
        files.append({"path": f"views/view_{i:03d}.png", "kind": "view", "format": "png", "frame": "camera",
                      "units": "srgb", **info})
        progress(ProgressEvent("exporting", 0.4 + 0.3 * (i + 1), f"view {i}"))
    atomic_write_text(out / "manifest.json", json.dumps({"files": files, "frame": {"units": "arbitrary"}}))
    return {"files": len(files)}


def render(dirs: JobDirs, request: RenderRequest, out_dir: Path, progress: ProgressFn,
           should_stop: StopFn) -> list[Path]:
    paths = []
    for i, c2w in enumerate(request.c2w):
        shade = int(abs(c2w[0, 3]) * 50) % 255
        if "rgb" in request.what:
            p = out_dir / f"rgb_{i:03d}.png"
            _png(p, np.full((request.height, request.width, 3), shade, np.uint8))
            paths.append(p)
        if "depth" in request.what:
            p = out_dir / f"depth_{i:03d}.png"
            _png(p, np.full((request.height, request.width), 1000 + i, np.uint16))
            paths.append(p)
    return paths


PIPELINE = Pipeline(ingest=ingest, poses=poses, train=train, export=export, render=render, name="fake")
