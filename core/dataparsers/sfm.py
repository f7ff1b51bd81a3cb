"""Pose estimation: clean images (core.dataparsers.ingest) -> posed capture, transforms.json, COLMAP model, report.

Steps: working copies at `max_image_size` -> SIFT features (one camera per device) -> matching
(exhaustive; sequential for video; spatial for GPS) -> incremental mapping (largest model kept) ->
intrinsics scaled back to the stored images -> geo-registration to ENU metres when GPS allows it.
Failures are `UserInputError`s that name the likely causes and their fixes (see `diagnose`).

Outputs in `out_dir`: images/ (the registered stored images, hard-linked where possible),
transforms.json (OpenGL axes, nerfstudio / instant-ngp flavour, with a `nerfserve` frame block),
colmap/sparse/0 (binary COLMAP model: same frame, stored resolution), sfm_report.json.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from core.atomic import atomic_write
from core.dataparsers import colmap_adapter as colmap
from core.dataparsers.geo import enu_origin, fit_sim3_robust, geodetic_to_enu
from core.dataparsers.ingest import IngestConfig, IngestResult, ingest
from core.dataparsers.ingest.images import working_copy
from core.dataparsers.ingest.types import REPORT_NAME as INGEST_REPORT
from core.dataparsers.readers import load_capture, read_transforms_json, write_transforms_json
from core.errors import Cancelled, UserInputError
from core.progress import ProgressEvent, ProgressFn, StopFn, never_stop, no_progress
from core.scene.capture import Capture, FrameInfo

MATCHERS = ("auto", "exhaustive", "sequential", "spatial")
REPORT_NAME = "sfm_report.json"
# Where each step ends within the "poses" stage (ProgressEvent.fraction).
_BANDS = {"copies": 0.05, "features": 0.35, "matching": 0.55, "mapping": 0.95}
_MIN_INLIERS = 15  # a verified pair with fewer inliers does not count as a match (COLMAP's default)
EXHAUSTIVE_MAX_IMAGES = 100  # beyond this, exhaustive matching (N^2 pairs) gets slow

Sizes = dict[str, tuple[int, int]]  # {image name: (width, height) pixels}
Gps = tuple[tuple[float, float, float], dict[str, np.ndarray]]  # ENU origin, {name: (3,) ENU metres}


@dataclass
class SfmConfig:
    """Pose-estimation options; every default works.

    matcher: "auto" picks sequential for video frames, spatial for geotagged photos, else exhaustive.
    max_image_size: longest side of the working copies SIFT runs on (pixels).
    camera_model: COLMAP model, one of SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL, RADIAL, OPENCV.
    single_camera: None (auto: one camera per device, i.e. equal EXIF make, model and size),
        True (one camera per image size), False (one camera per image).
    min_registered_fraction: below this fraction of the images registered, pose estimation fails.
    num_threads: -1 uses every core.
    gps_prior: with GPS on most images, bundle adjustment also fits the camera centres to the GPS
        positions (standard deviation gps_sigma_m, east/north/up, metres): distances between cameras then
        agree with GPS even where the images alone leave some drift. The sigma is tight because a
        flight's GPS fixes are consistent with each other to centimetres-decimetres (their error is mostly
        a common offset, which the ENU origin absorbs).
    """

    matcher: str = "auto"
    max_image_size: int = 1600
    max_num_features: int = 8192
    camera_model: str = "SIMPLE_RADIAL"
    single_camera: bool | None = None
    min_registered_fraction: float = 0.5
    num_threads: int = -1
    sequential_overlap: int = 10
    seed: int = 0
    keep_database: bool = False
    gps_prior: bool = True
    gps_sigma_m: tuple[float, float, float] = (0.03, 0.03, 0.06)


@dataclass
class SfmResult:
    """capture: the registered images at stored resolution, c2w in the output frame (see
    capture.frame). report: the content of sfm_report.json."""

    capture: Capture
    report: dict = field(default_factory=dict)


def _emit(progress: ProgressFn, fraction: float, message: str, **metrics) -> None:
    progress(ProgressEvent("poses", float(min(max(fraction, 0.0), 1.0)), message, metrics))


class _StepTimer:
    """Wall-clock seconds per named step (the report's timings_s)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = time.perf_counter() - t

    def finish(self) -> dict[str, float]:
        self.timings["total"] = time.perf_counter() - self.start
        return self.timings


# --- inputs --------------------------------------------------------------------------------------

def _resolve_source(source: IngestResult | Path, out_dir: Path, progress: ProgressFn) -> IngestResult:
    if isinstance(source, IngestResult):
        return source
    source = Path(source)
    if (source / INGEST_REPORT).is_file():
        return IngestResult.load(source)
    return ingest([source], out_dir / "ingest", IngestConfig(), progress)


def choose_matcher(config: SfmConfig, ingest_result: IngestResult) -> str:
    """The configured matcher, or for "auto": sequential (video), spatial (>= 90% geotagged), exhaustive."""
    if config.matcher not in MATCHERS:
        raise UserInputError("bad_matcher", f"Unknown matcher {config.matcher!r}.",
                             f"Use one of {', '.join(MATCHERS)}.")
    if config.matcher != "auto":
        return config.matcher
    if ingest_result.sequential:
        return "sequential"
    n = len(ingest_result.image_paths)
    if n and ingest_result.gps_count >= max(3, int(0.9 * n)):
        return "spatial"
    return "exhaustive"


def gps_enu(result: IngestResult) -> Gps | None:
    """ENU origin (lat, lon, alt) and {name: (3,) float64 ENU metres} of the geotagged images.

    None with fewer than 3 geotagged images. The origin is their mean position at the lowest altitude.
    """
    named = [(n, result.priors[n].gps) for n in result.names if n in result.priors and result.priors[n].gps]
    if len(named) < 3:
        return None
    lla = np.array([g for _, g in named], dtype=np.float64)
    origin = enu_origin(lla)
    enu = geodetic_to_enu(lla, origin)
    return origin, {n: enu[i] for i, (n, _) in enumerate(named)}


def camera_groups(result: IngestResult, stored: Sizes, work: Sizes, single_camera: bool | None
                  ) -> list[colmap.CameraGroup]:
    """Images sharing a camera: same device (EXIF make, model) and size; see SfmConfig.single_camera.

    stored, work: sizes of the stored images and of their working copies. The EXIF focal prior
    (stored pixels) is scaled to the working copies.
    """
    groups: dict[tuple, list[str]] = {}
    for name in result.names:
        prior = result.priors.get(name)
        if single_camera is False:
            key: tuple = (name,)
        elif single_camera is True or prior is None:
            key = (work[name],)
        else:
            key = (prior.make, prior.model, work[name])
        groups.setdefault(key, []).append(name)
    out = []
    for names in groups.values():
        w, h = work[names[0]]
        focals = [result.priors[n].focal_px * w / stored[n][0]
                  for n in names if n in result.priors and result.priors[n].focal_px]
        out.append(colmap.CameraGroup(tuple(names), w, h, float(np.median(focals)) if focals else None))
    return out


# --- diagnosis -----------------------------------------------------------------------------------

_LABELS = {"overlap": "too little overlap", "blur": "motion blur",
           "unrelated": "images from unrelated scenes", "textureless": "a textureless subject",
           "matcher": "the matcher may have missed image pairs"}
_FIXES = {
    "overlap": "Capture with 60-80% overlap between neighbouring photos: move a little between shots and "
               "keep the subject in view.",
    "blur": "Hold the camera still or use a faster shutter (more light), and leave out the blurred photos.",
    "unrelated": "Upload one scene per job: the photos form separate groups that share nothing.",
    "textureless": "Give the scene texture (objects, markers or a patterned cloth around the subject) and "
                   "avoid plain, shiny or transparent surfaces filling the frame.",
    "matcher": "Try --matcher exhaustive, which matches every pair of images.",
}


def _components(names: list[str], pairs: list[tuple[str, str, int]]) -> list[set[str]]:
    """Connected groups of images in the verified match graph, largest first."""
    parent = {n: n for n in names}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b, k in pairs:
        if k >= _MIN_INLIERS and a in parent and b in parent:
            parent[find(a)] = find(b)
    comps: dict[str, set[str]] = {}
    for n in names:
        comps.setdefault(find(n), set()).add(n)
    return sorted(comps.values(), key=len, reverse=True)


def diagnose(names: list[str], registered: set[str], stats: colmap.DatabaseStats, sharpness: dict[str, float],
             matcher: str) -> tuple[list[str], dict[str, str]]:
    """Likely causes (keys of _FIXES, most specific first) and a reason per unregistered image.

    sharpness: {name: Laplacian variance}. Per image: few features -> textureless; much blurrier
    than the registered images -> blur; no verified match -> too little overlap; matches only
    outside the registered group -> unrelated scene; else weak overlap. A non-exhaustive matcher
    adds "matcher" (exhaustive matching may find the missing pairs).
    """
    kp = stats.keypoints
    ref = [sharpness[n] for n in (registered or names) if n in sharpness]
    sharp_ref = float(np.median(ref)) if ref else 0.0
    degree = dict.fromkeys(names, 0)
    for a, b, k in stats.pairs:
        if k >= _MIN_INLIERS:
            degree[a] = degree.get(a, 0) + 1
            degree[b] = degree.get(b, 0) + 1
    comps = [c for c in _components(names, stats.pairs) if len(c) >= 2]
    main = max(comps, key=lambda c: (len(c & registered), len(c))) if comps else set()
    reasons: dict[str, str] = {}
    causes: list[str] = []
    for n in (n for n in names if n not in registered):
        if kp.get(n, 0) < 300:
            reasons[n], cause = f"only {kp.get(n, 0)} features (textureless or too dark)", "textureless"
        elif sharp_ref > 0 and sharpness.get(n, sharp_ref) < 0.35 * sharp_ref:
            reasons[n], cause = "much blurrier than the registered images (motion blur)", "blur"
        elif degree.get(n, 0) == 0:
            reasons[n], cause = "no verified matches with any other image (too little overlap)", "overlap"
        elif n not in main:
            reasons[n], cause = "matches only a separate group of images (unrelated scene)", "unrelated"
        else:
            reasons[n] = f"matched {degree[n]} images but could not be placed (weak overlap)"
            cause = "overlap"
        if cause not in causes:
            causes.append(cause)
    if len(comps) > 1 and "unrelated" not in causes:
        causes.append("unrelated")
    if matcher != "exhaustive" and reasons:
        causes.append("matcher")
    return causes, reasons


def _failure(code: str, headline: str, causes: list[str], reasons: dict[str, str]) -> UserInputError:
    listed = "; ".join(f"{n}: {r}" for n, r in list(reasons.items())[:8])
    more = f" (+{len(reasons) - 8} more)" if len(reasons) > 8 else ""
    message = headline
    if causes:
        message += " Likely cause: " + ", ".join(_LABELS[c] for c in causes) + "."
    if listed:
        message += f" Not registered: {listed}{more}."
    return UserInputError(code, message, " ".join(_FIXES[c] for c in causes) or _FIXES["overlap"])


def _registration_error(report: dict, min_fraction: float) -> UserInputError | None:
    """The error for too few registered images, or None when registration is good enough."""
    n, k = report["images"], report["registered"]
    if report["models"] and k >= max(3, min_fraction * n):
        return None
    reasons = {u["name"]: u["reason"] for u in report["unregistered"]}
    if not report["models"]:
        return _failure("sfm_no_model", "No reconstruction could be started: no pair of images has enough "
                        "verified matches.", report["likely_causes"], reasons)
    return _failure("sfm_low_registration", f"Only {k} of {n} images registered ({100 * k / n:.0f}%; at "
                    f"least {100 * min_fraction:.0f}% are needed).", report["likely_causes"], reasons)


# --- geo-registration ---------------------------------------------------------------------------

def georegister(rec: colmap.Reconstruction, gps: Gps | None
                ) -> tuple[colmap.Reconstruction, FrameInfo, dict]:
    """Align the model to GPS (ENU metres) with a robust Sim3 fit of the camera centres.

    Returns the (possibly transformed copy of the) model, its frame, and a report block with the GPS
    residuals after alignment (metres) or the reason the frame stayed COLMAP's (arbitrary scale).
    """
    arbitrary = FrameInfo("arbitrary", None, "COLMAP frame, arbitrary scale (no usable GPS)")
    if gps is None:
        return rec, arbitrary, {"used": False, "reason": "fewer than 3 geotagged images"}
    origin, enu = gps
    centres = {v.name: v.c2w[:3, 3] for v in colmap.registered_views(rec)}
    names = [n for n in centres if n in enu]
    if len(names) < 3:
        return rec, arbitrary, {"used": False, "reason": "fewer than 3 registered geotagged images"}
    src = np.stack([centres[n] for n in names])
    dst = np.stack([enu[n] for n in names])
    spread = np.linalg.svd(dst - dst.mean(0), compute_uv=False)
    if spread[0] < 1.0 or spread[1] < 0.05 * spread[0]:
        return rec, arbitrary, {"used": False, "reason": "the GPS positions span under 1 m or lie on a "
                                "line, so they cannot fix the orientation"}
    sim, inliers = fit_sim3_robust(src, dst)
    res = np.linalg.norm(sim.apply_points(src) - dst, axis=1)
    frame = FrameInfo("metres", origin, "ENU metres (x east, y north, z up) about the GPS origin")
    block = {"used": True, "origin_lat_lon_alt": list(origin), "images": len(names),
             "inliers": int(inliers.sum()), "residual_rms_m": float(np.sqrt(np.mean(res[inliers] ** 2))),
             "residual_median_m": float(np.median(res)), "residual_max_m": float(res.max()),
             "scale_colmap_to_metres": float(sim.scale)}
    return colmap.transform_reconstruction(rec, sim), frame, block


# --- outputs -------------------------------------------------------------------------------------

def _link_images(paths: list[Path], dest: Path) -> list[str]:
    """Hard-link (or copy) `paths` into `dest`; returns their paths relative to dest's parent."""
    dest.mkdir(parents=True, exist_ok=True)
    rel = []
    for p in paths:
        target = dest / p.name
        if target.resolve() != p.resolve():
            target.unlink(missing_ok=True)
            try:
                os.link(p, target)
            except OSError:
                shutil.copyfile(p, target)
        rel.append(f"{dest.name}/{p.name}")
    return rel


def _write_outputs(rec: colmap.Reconstruction, frame: FrameInfo, image_paths: dict[str, Path], out_dir: Path,
                   sequential: bool) -> Capture:
    """Write colmap/sparse/0, images/ and transforms.json; return the capture read back from them."""
    colmap.write_reconstruction(rec, out_dir / "colmap" / "sparse" / "0", binary=True)
    views = colmap.registered_views(rec)
    rel = _link_images([image_paths[v.name] for v in views], out_dir / "images")
    intrinsics = [v.intrinsics for v in views]
    c2w = np.stack([v.c2w for v in views])
    # The writer needs poses and sizes only: zero-memory placeholder images of the right shape.
    blank = np.zeros((1, 1, 3), np.uint8)
    placeholders = [np.broadcast_to(blank, (k.height, k.width, 3)) for k in intrinsics]
    poses_only = Capture(placeholders, intrinsics, c2w, [v.name for v in views], frame=frame,
                         sequential=sequential)
    write_transforms_json(poses_only, out_dir / "transforms.json", rel)
    return read_transforms_json(out_dir / "transforms.json")


def _write_report(out_dir: Path, report: dict) -> None:
    atomic_write(out_dir / REPORT_NAME,
                 lambda p: p.write_text(json.dumps(report, indent=2, default=float), encoding="utf-8"))


# --- the stage -----------------------------------------------------------------------------------

@dataclass
class _ColmapRun:
    """What the COLMAP steps produced. stored, work: image sizes (stored images, working copies)."""

    stored: Sizes
    work: Sizes
    stats: colmap.DatabaseStats
    mapped: colmap.MappingResult | None


def _working_copies(result: IngestResult, work_dir: Path, max_side: int, progress: ProgressFn,
                    should_stop: StopFn) -> tuple[Sizes, Sizes]:
    """RGB JPEG copies of the stored images at `max_side` in work_dir; returns (stored, work) sizes."""
    work_dir.mkdir(parents=True, exist_ok=True)
    stored, work = {}, {}
    n = len(result.image_paths)
    for i, path in enumerate(result.image_paths):
        if should_stop():
            raise Cancelled("pose estimation cancelled")
        stored[path.name], work[path.name] = working_copy(path, work_dir / path.name, max_side)
        _emit(progress, _BANDS["copies"] * (i + 1) / n, f"working copies {i + 1}/{n}",
              step="working_copies", done=i + 1, total=n)
    return stored, work


def _run_colmap(result: IngestResult, colmap_dir: Path, config: SfmConfig, matcher: str, gps: Gps | None,
                timer: _StepTimer, progress: ProgressFn, should_stop: StopFn) -> _ColmapRun:
    """Working copies, features, matching and mapping in colmap_dir; the intermediates are removed."""
    database, work_dir = colmap_dir / "database.db", colmap_dir / "work_images"
    n = len(result.names)
    with timer.step("working_copies"):
        stored, work = _working_copies(result, work_dir, config.max_image_size, progress, should_stop)
    lo, hi = _BANDS["copies"], _BANDS["features"]
    with timer.step("features"):
        colmap.extract_features(
            database, work_dir, camera_groups(result, stored, work, config.single_camera),
            colmap.ExtractOptions(config.camera_model, config.max_num_features, config.num_threads),
            on_progress=lambda d, t: _emit(progress, lo + (hi - lo) * d / t, f"features {d}/{t}",
                                           step="features", done=d, total=t),
            should_stop=should_stop)
    with timer.step("matching"):
        if gps is not None and (matcher == "spatial" or config.gps_prior):
            colmap.write_position_priors(database, gps[1], config.gps_sigma_m)
        _emit(progress, hi, f"matching ({matcher})", step="matching", matcher=matcher)
        colmap.match(database, matcher, config.num_threads, config.sequential_overlap,
                     should_stop=should_stop)
        stats = colmap.database_stats(database)
    _emit(progress, _BANDS["matching"], f"matched: {len(stats.pairs)} verified pairs", step="matching",
          verified_pairs=len(stats.pairs))
    lo, hi = _BANDS["matching"], _BANDS["mapping"]
    with timer.step("mapping"):
        mapped = colmap.incremental_mapping(
            database, work_dir, colmap_dir / "mapper", config.num_threads, config.seed,
            use_position_priors=gps is not None and config.gps_prior,
            on_registered=lambda k: _emit(progress, lo + (hi - lo) * min(k, n) / n,
                                          f"registered {min(k, n)}/{n}", step="mapping",
                                          registered=min(k, n), total=n),
            should_stop=should_stop)
    if not config.keep_database:
        database.unlink(missing_ok=True)
    shutil.rmtree(work_dir, ignore_errors=True)
    shutil.rmtree(colmap_dir / "mapper", ignore_errors=True)
    return _ColmapRun(stored, work, stats, mapped)


def _registration_report(result: IngestResult, run: _ColmapRun, matcher: str) -> dict:
    """Registration figures, the unregistered images with reasons, and the likely causes."""
    registered = {v.name for v in colmap.registered_views(run.mapped.reconstruction)} if run.mapped else set()
    sharpness = {k: p.sharpness for k, p in result.priors.items()}
    causes, reasons = diagnose(result.names, registered, run.stats, sharpness, matcher)
    kp = list(run.stats.keypoints.values())
    report = {"registered": len(registered), "registered_fraction": len(registered) / len(result.names),
              "unregistered": [{"name": k, "reason": v} for k, v in reasons.items()], "likely_causes": causes,
              "models": run.mapped.model_sizes if run.mapped else [], "verified_pairs": len(run.stats.pairs),
              "median_features": float(np.median(kp)) if kp else 0.0}
    if run.mapped is not None:
        report.update({"mean_reprojection_error_px": run.mapped.mean_reprojection_error,
                       "reprojection_error_units": "pixels of the working copies",
                       "points3d": run.mapped.num_points, "mean_track_length": run.mapped.mean_track_length})
    return report


def _warnings(result: IngestResult, matcher: str) -> list[str]:
    n = len(result.names)
    out = []
    if matcher == "exhaustive" and n > EXHAUSTIVE_MAX_IMAGES:
        out.append(f"exhaustive matching of {n} images compares {n * (n - 1) // 2} pairs and is slow; no "
                   "vocabulary tree ships with the service for retrieval-based matching")
    if 0 < result.gps_count < n:
        out.append(f"only {result.gps_count} of {n} images carry GPS; the others are placed by SfM alone")
    return out


def _known_poses(result: IngestResult, out_dir: Path, progress: ProgressFn) -> SfmResult:
    """The upload carried poses: write the same outputs without SfM."""
    start = time.perf_counter()
    capture = load_capture(result.known_poses)
    base = result.known_poses.parent
    paths = {n: base / "images" / n if (base / "images" / n).is_file() else base / n for n in capture.names}
    rec = colmap.capture_to_reconstruction(capture)
    capture = _write_outputs(rec, capture.frame, paths, out_dir, capture.sequential)
    n = len(capture)
    report = {"status": "ok", "mode": "known_poses", "images": n, "registered": n, "registered_fraction": 1.0,
              "unregistered": [], "frame": capture.frame.to_dict(), "source": result.known_poses.name,
              "timings_s": {"total": time.perf_counter() - start}}
    _write_report(out_dir, report)
    _emit(progress, 1.0, f"known poses for {n} images", registered=n, total=n)
    return SfmResult(capture, report)


def estimate_poses(source: IngestResult | Path, out_dir: Path, config: SfmConfig | None = None,
                   progress: ProgressFn = no_progress, should_stop: StopFn = never_stop) -> SfmResult:
    """Camera poses for an ingested capture (an IngestResult, an ingest folder, or an image folder).

    Writes out_dir/{images/, transforms.json, colmap/sparse/0, sfm_report.json}; returns the
    registered capture at the stored images' resolution, in ENU metres when GPS allowed it, else in
    COLMAP's frame (arbitrary scale). Raises UserInputError (too_few_images, spatial_needs_gps,
    sfm_no_model, sfm_low_registration: sfm_report.json is written first) naming causes and fixes,
    and Cancelled once should_stop() is True (checked between images and steps, and polled during
    each pycolmap call).
    """
    config = config or SfmConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = _resolve_source(source, out_dir, progress)
    if result.known_poses is not None:
        return _known_poses(result, out_dir, progress)
    if len(result.names) < 3:
        raise UserInputError("too_few_images", f"{len(result.names)} usable images; at least 3 are needed.",
                             "Upload at least 20 overlapping photos of the scene, taken from different "
                             "places.")
    matcher = choose_matcher(config, result)
    gps = gps_enu(result)
    if matcher == "spatial" and gps is None:
        raise UserInputError("spatial_needs_gps", "Spatial matching needs GPS positions in the photos' EXIF; "
                             "fewer than 3 photos have one.", "Use --matcher auto or exhaustive.")
    timer = _StepTimer()
    colmap_dir = out_dir / "colmap"
    shutil.rmtree(colmap_dir, ignore_errors=True)
    colmap_dir.mkdir(parents=True)
    run = _run_colmap(result, colmap_dir, config, matcher, gps, timer, progress, should_stop)
    report: dict = {"status": "running", "mode": "sfm", "images": len(result.names), "matcher": matcher,
                    "config": asdict(config), "rejected_inputs": [list(r) for r in result.rejected],
                    "duplicates": [list(d) for d in result.duplicates], "timings_s": timer.timings,
                    "warnings": _warnings(result, matcher), **_registration_report(result, run, matcher)}
    error = _registration_error(report, config.min_registered_fraction)
    if error is not None:
        report.update(status="failed", error=error.to_dict(), timings_s=timer.finish())
        _write_report(out_dir, report)
        raise error
    with timer.step("georegistration"):
        rec = colmap.rescale_to_image_sizes(run.mapped.reconstruction, run.stored)
        rec, frame, report["geo_registration"] = georegister(rec, gps)
        report["frame"] = frame.to_dict()
    with timer.step("outputs"):
        paths = {p.name: p for p in result.image_paths}
        capture = _write_outputs(rec, frame, paths, out_dir, result.sequential)
    report.update(status="ok", timings_s=timer.finish())
    _write_report(out_dir, report)
    k, n = report["registered"], report["images"]
    _emit(progress, 1.0, f"registered {k}/{n}", step="done", registered=k, total=n)
    return SfmResult(capture, report)
