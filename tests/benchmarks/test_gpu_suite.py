"""benchmarks/gpu_suite.py end to end on the CPU at tiny sizes, with PyAV and pycolmap unimportable (the GPU
machine it is sized for has neither)."""

from __future__ import annotations

import importlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = Path(os.environ.get("NERFSERVE_SHARED_DATA", REPO.parent / "shared" / "data"))
BLOCKED = ("av", "pycolmap")
FIGURES = ("synthetic_time_to_25db_s", "synthetic_time_to_30db_s", "synthetic_psnr_end_db",
           "synthetic_train_rays_per_s", "synthetic_samples_per_ray", "fox_train_rays_per_s", "fox_samples_per_ray",
           "fox_psnr_holdout_db", "eval_seconds", "render_mp_per_s", "hashgrid_points_per_s", "h2d_rays_per_s",
           "marching_cubes_s")
# Every part at a few seconds: 9 views of 48 px (one held out per 8), the fox at 64 px, tiny render/mesh/stream.
TINY = ["--syn-views", "9", "--syn-size", "48", "--syn-seconds", "8", "--fox-side", "64", "--fox-seconds", "3",
        "--render-size", "64x48", "--mesh-res", "32", "--mesh-view-side", "24", "--hash-points", "4096",
        "--h2d-images", "2x100x80", "--h2d-batch", "1024", "--h2d-steps", "5", "--deadline", "150"]


def blocked_modules(folder: Path) -> dict[str, str]:
    """A folder of av.py / pycolmap.py that raise ImportError, first on PYTHONPATH: the environment to run in."""
    folder.mkdir()
    for name in BLOCKED:
        (folder / f"{name}.py").write_text(f"raise ImportError('{name} is blocked in this test')\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), str(REPO)]), "PYTHONUNBUFFERED": "1"}


def gpu_suite():
    """benchmarks/gpu_suite.py as a module (the benchmarks folder put on sys.path once)."""
    folder = str(REPO / "benchmarks")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return importlib.import_module("gpu_suite")


def test_gpu_suite_small_on_cpu_without_pyav_or_pycolmap(tmp_path):
    env = blocked_modules(tmp_path / "blocked")
    check = subprocess.run([sys.executable, "-c", "import core.engine.train, core.export.pipeline, core.scene.load\n"
                            "import core.dataparsers.readers\n"
                            "try:\n    import av\nexcept ImportError:\n    print('blocked')"],
                           env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert check.stdout.strip() == "blocked", check.stderr[-2000:]

    fox = SHARED_DATA / "fox"
    out = tmp_path / "suite.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_suite.py"), "--device", "cpu", "--small",
                           *TINY, "--fox", str(fox) if fox.is_dir() else "none", "--out", str(out)],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    assert doc == json.loads(out.read_text())
    assert {"device", "torch", "triton", "cpu_count"} <= set(doc["machine"]), doc["machine"]
    assert doc["config"]["device"] == "cpu" and doc["config"]["small"] is True

    figures = doc["figures"]
    assert list(figures) == list(FIGURES)
    for key, f in figures.items():
        value = f["value"]
        explained = isinstance(f.get("error"), str) or isinstance(f.get("skipped"), str)
        never_reached = key.startswith("synthetic_time_to_") and f.get("reached") is False
        assert (isinstance(value, int | float) and math.isfinite(value)) or explained or never_reached, (key, f)
        assert f["met"] in (True, False, None) and "target" in f, (key, f)
    measured = [k for k in FIGURES if not k.startswith(("synthetic_time_to_", "fox_"))]
    if fox.is_dir():
        measured += [k for k in FIGURES if k.startswith("fox_")]
    else:
        assert all("skipped" in figures[k] for k in FIGURES if k.startswith("fox_")), figures
    errors = {k: figures[k].get("error") or figures[k].get("skipped") for k in measured if figures[k]["value"] is None}
    assert not errors, (errors, proc.stderr[-3000:])

    curve = figures["synthetic_psnr_end_db"]["curve"]
    assert len(curve) >= 2, curve
    assert [p["seconds"] for p in curve] == sorted(p["seconds"] for p in curve)
    assert curve[-1]["psnr"] > curve[0]["psnr"], curve


def test_parallel_synthetic_capture_is_render_synthetics():
    """The suite renders the synthetic views in worker processes; the capture is render_synthetic's."""
    from core.dataparsers.synthetic import SyntheticConfig, render_synthetic

    ref = render_synthetic(SyntheticConfig(views=3, size=24)).capture
    got = gpu_suite().synthetic_capture(3, 24, workers=2)
    assert got.names == ref.names and got.frame == ref.frame and got.intrinsics == ref.intrinsics
    np.testing.assert_array_equal(got.c2w, ref.c2w)
    for a, b in zip(got.images, ref.images, strict=True):
        np.testing.assert_array_equal(a, b)


def test_figure_targets_and_time_to_threshold():
    suite = gpu_suite()
    assert suite.figure("eval_seconds", 4.0)["met"] is True
    assert suite.figure("eval_seconds", 6.0)["met"] is False
    assert suite.figure("h2d_rays_per_s", 2e7)["met"] is True
    assert suite.figure("synthetic_samples_per_ray", 12.0)["met"] is None
    assert suite.failed("render_mp_per_s", error="x")["met"] is None
    curve = [{"seconds": 1.0, "psnr": 20.0}, {"seconds": 2.0, "psnr": 26.0}, {"seconds": 3.0, "psnr": 25.5}]
    assert suite.first_time_at(curve, 25.0) == 2.0
    assert suite.first_time_at(curve, 30.0) is None
    assert suite.finite({"a": float("nan"), "b": (1, np.float32(2.5))}) == {"a": None, "b": [1, 2.5]}
