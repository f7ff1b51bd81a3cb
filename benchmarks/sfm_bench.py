"""Pose-estimation benchmark on the real captures in ../shared/data; prints one JSON document.

    python benchmarks/sfm_bench.py                       # fox (800 px) and brighton_beach (1600 px)
    python benchmarks/sfm_bench.py --only fox --threads 2 --keep /tmp/sfm_runs

Per capture: timings per step (ingest, working copies, features, matching, mapping,
geo-registration, outputs), registered/total images, mean reprojection error, 3D points, mean
track length, and a check against the reference: fox, the median rotation (deg) and position error
(fraction of the scene extent) after a Sim3 alignment to its transforms.json; brighton_beach, the
GPS residual after alignment (m) and the relative error of the camera-to-camera distances against
the GPS distances.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from core.dataparsers.geo import compare_poses, geodetic_to_enu
from core.dataparsers.ingest import ingest
from core.dataparsers.readers import read_transforms_json
from core.dataparsers.sfm import SfmConfig, estimate_poses

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _run(inputs: Path, work: Path, config: SfmConfig) -> tuple[dict, object, object, float]:
    t = time.perf_counter()
    ingested = ingest([inputs], work / "ingest")
    ingest_s = time.perf_counter() - t
    result = estimate_poses(ingested, work / "out", config)
    return result.report, result, ingested, ingest_s


def _summary(report: dict, ingest_s: float) -> dict:
    keys = ("images", "registered", "matcher", "mean_reprojection_error_px", "points3d", "mean_track_length",
            "verified_pairs", "median_features")
    return {**{k: report.get(k) for k in keys}, "timings_s": {"ingest": ingest_s, **report["timings_s"]},
            "unregistered": [u["name"] for u in report.get("unregistered", [])]}


def bench_fox(data: Path, work: Path, threads: int) -> dict:
    report, result, _, ingest_s = _run(data / "fox" / "images", work, SfmConfig(max_image_size=800,
                                                                                 num_threads=threads))
    ref = read_transforms_json(data / "fox" / "transforms.json")
    idx = [ref.names.index(n) for n in result.capture.names]
    cmp = compare_poses(result.capture.c2w, ref.c2w[idx])
    return {**_summary(report, ingest_s), "max_image_size": 800,
            "median_rotation_error_deg": cmp.median_rotation_deg,
            "median_position_error_fraction_of_extent": cmp.median_position_fraction}


def bench_brighton(data: Path, work: Path, threads: int) -> dict:
    report, result, ingested, ingest_s = _run(data / "brighton_beach", work, SfmConfig(num_threads=threads))
    out = {**_summary(report, ingest_s), "max_image_size": 1600, "frame": report.get("frame"),
           "geo_registration": report.get("geo_registration")}
    if report.get("frame", {}).get("units") == "metres":
        origin = tuple(report["frame"]["geo_origin"])
        gps = geodetic_to_enu(np.array([ingested.priors[n].gps for n in result.capture.names]), origin)
        c = result.capture.c2w[:, :3, 3]
        pairs = list(itertools.combinations(range(len(c)), 2))
        d_gps = np.array([np.linalg.norm(gps[i] - gps[j]) for i, j in pairs])
        d_sfm = np.array([np.linalg.norm(c[i] - c[j]) for i, j in pairs])
        rel = np.abs(d_sfm - d_gps) / d_gps
        out["pair_distance_vs_gps_rel_error"] = {"median": float(np.median(rel)), "max": float(np.max(rel)),
                                                 "pairs_over_5pct": int(np.sum(rel > 0.05))}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="folder holding fox/ and brighton_beach/")
    parser.add_argument("--only", choices=["fox", "brighton"], help="run one capture only")
    parser.add_argument("--threads", type=int, default=-1, help="pycolmap threads (-1: all cores)")
    parser.add_argument("--keep", type=Path,
                        help="keep the outputs under this folder (default: a temp folder)")
    args = parser.parse_args()
    work_root = args.keep or Path(tempfile.mkdtemp(prefix="sfm_bench_"))
    results: dict = {"machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                                 "load_avg_1m": os.getloadavg()[0]}}
    try:
        for name, fn in (("fox", bench_fox), ("brighton", bench_brighton)):
            if args.only and args.only != name:
                continue
            if not (args.data / ("fox" if name == "fox" else "brighton_beach")).is_dir():
                results[name] = {"skipped": f"not found under {args.data}"}
                continue
            start = time.perf_counter()
            results[name] = fn(args.data, work_root / name, args.threads)
            results[name]["wall_s"] = time.perf_counter() - start
    finally:
        if args.keep is None:
            shutil.rmtree(work_root, ignore_errors=True)
    results["machine"]["load_avg_1m_end"] = os.getloadavg()[0]
    print(json.dumps(results, indent=2, default=float))


if __name__ == "__main__":
    main()
