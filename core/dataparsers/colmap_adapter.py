"""The only module that calls pycolmap (4.x): SfM steps, and COLMAP models read, written and converted.

Everything it returns is plain Python / numpy, or a `pycolmap.Reconstruction` that other modules only
hand back to functions here. pycolmap conventions handled here: `Image.cam_from_world()` is a method
returning world-to-camera in OpenCV axes (inverted to our camera-to-world); `Rigid3d.rotation.quat` is
**xyzw**; a model built by hand needs a rig per camera and a frame per image (the `trivial` helpers);
camera models are chosen through `ImageReaderOptions.camera_model`; `incremental_mapping` returns
{index: Reconstruction} and the largest one is kept (never assume index 0).
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pycolmap

from core.dataparsers.colmap_layout import MODEL_FILES, model_format  # noqa: F401  (re-exported)
from core.dataparsers.geo import Sim3
from core.errors import Cancelled, UserInputError
from core.functional.cameras import Intrinsics
from core.progress import StopFn, never_stop
from core.scene.capture import Capture

# The COLMAP camera models we can represent as `Intrinsics` (and let SfM use).
CAMERA_MODELS = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV")
# A COLMAP model in memory; other modules name the type through this module.
Reconstruction = pycolmap.Reconstruction


@dataclass(frozen=True)
class CameraGroup:
    """Images that share one camera in SfM.

    names: image file names in the working-copy folder. width, height: their size (pixels).
    focal_px: prior focal length in working-copy pixels (from EXIF), or None (COLMAP's default guess).
    """

    names: tuple[str, ...]
    width: int
    height: int
    focal_px: float | None = None


@dataclass(frozen=True)
class ExtractOptions:
    camera_model: str = "SIMPLE_RADIAL"
    max_num_features: int = 8192
    num_threads: int = -1
    chunk_size: int = 16  # images per extraction call, i.e. per progress update


@dataclass
class DatabaseStats:
    """What feature extraction and matching found.

    keypoints: {image name: number of SIFT features}.
    pairs: (name_a, name_b, verified inlier matches) for every geometrically verified pair.
    """

    keypoints: dict[str, int] = field(default_factory=dict)
    pairs: list[tuple[str, str, int]] = field(default_factory=list)


@dataclass
class MappingResult:
    """The largest reconstruction, in working-copy pixels and COLMAP's frame.

    reconstruction: also holds the images it did not register (without poses) and their cameras.
    model_sizes: registered images of every model COLMAP built, largest first.
    mean_reprojection_error: pixels (working copy). mean_track_length: observations per 3D point.
    """

    reconstruction: pycolmap.Reconstruction
    model_sizes: list[int]
    mean_reprojection_error: float
    mean_track_length: float
    num_points: int


@contextlib.contextmanager
def _cancellable(should_stop: StopFn, poll_s: float = 0.2) -> Iterator[pycolmap.CancellationToken]:
    """A token that a watcher thread cancels once should_stop() is True; raises Cancelled after."""
    token = pycolmap.CancellationToken()
    done = threading.Event()

    def watch() -> None:
        while not done.wait(poll_s):
            if should_stop():
                token.cancel()
                return

    if should_stop():
        raise Cancelled("pose estimation cancelled")
    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield token
    except InterruptedError as e:  # pycolmap's answer to a cancelled token
        raise Cancelled("pose estimation cancelled") from e
    finally:
        done.set()
        thread.join()
    if token.is_cancelled or should_stop():
        raise Cancelled("pose estimation cancelled")


def _camera_params(model: str, group: CameraGroup) -> str:
    """COLMAP parameter string for the group's prior focal length (principal point at the centre)."""
    cam = pycolmap.Camera.create_from_model_name(0, model, float(group.focal_px), group.width, group.height)
    return cam.params_to_string()


def extract_features(database: Path, image_dir: Path, groups: list[CameraGroup], options: ExtractOptions,
                     on_progress: Callable[[int, int], None] = lambda done, total: None,
                     should_stop: StopFn = never_stop) -> None:
    """SIFT features of every image into `database`, one COLMAP camera per group.

    Extraction runs in chunks of `options.chunk_size` images so that progress (done, total) is
    reported and cancellation is checked between them. Raises Cancelled.
    """
    if options.camera_model not in CAMERA_MODELS:
        raise ValueError(f"camera model {options.camera_model} not in {CAMERA_MODELS}")
    total, done = sum(len(g.names) for g in groups), 0
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.num_threads = options.num_threads
    extraction.sift.max_num_features = options.max_num_features
    for group in groups:
        camera_id = -1
        for start in range(0, len(group.names), options.chunk_size):
            names = list(group.names[start:start + options.chunk_size])
            reader = pycolmap.ImageReaderOptions()
            reader.camera_model = options.camera_model
            if group.focal_px:
                reader.camera_params = _camera_params(options.camera_model, group)
            mode = pycolmap.CameraMode.SINGLE
            if camera_id >= 0:
                reader.existing_camera_id = camera_id
            with _cancellable(should_stop) as token:
                pycolmap.extract_features(database, image_dir, image_names=names, camera_mode=mode,
                                          reader_options=reader, extraction_options=extraction,
                                          device=pycolmap.Device.cpu, cancellation_token=token)
            if camera_id < 0:
                with _open(database) as db:
                    camera_id = db.read_image_with_name(names[0]).camera_id
            done += len(names)
            on_progress(done, total)


@contextlib.contextmanager
def _open(database: Path) -> Iterator[pycolmap.Database]:
    db = pycolmap.Database.open(database)
    try:
        yield db
    finally:
        db.close()


def write_position_priors(database: Path, positions: dict[str, np.ndarray],
                          sigma_m: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> int:
    """Store camera positions (e.g. GPS in ENU metres) as COLMAP pose priors, for spatial matching.

    positions: {image name: (3,) float64, a Cartesian frame in metres}; sigma_m: standard deviation
    of each axis (metres). Returns how many priors were written.
    """
    n = 0
    cov = np.diag(np.square(np.asarray(sigma_m, dtype=np.float64)))
    with _open(database) as db:
        for image in db.read_all_images():
            if image.name not in positions:
                continue
            prior = pycolmap.PosePrior()
            prior.corr_data_id = image.data_id
            prior.position = np.asarray(positions[image.name], dtype=np.float64).reshape(3, 1)
            prior.position_covariance = cov
            prior.coordinate_system = pycolmap.PosePriorCoordinateSystem.CARTESIAN
            db.write_pose_prior(prior)
            n += 1
    return n


def match(database: Path, matcher: str, num_threads: int = -1, sequential_overlap: int = 10,
          spatial_max_distance: float = 1e9, should_stop: StopFn = never_stop) -> None:
    """Match features and verify pairs geometrically: "exhaustive", "sequential" or "spatial".

    Sequential matching pairs each image with its `sequential_overlap` successors (loop detection
    off: no vocabulary tree ships with the service). Spatial matching pairs images whose position
    priors (see write_position_priors) are within `spatial_max_distance` metres, horizontally.
    """
    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = num_threads
    verification = pycolmap.TwoViewGeometryOptions()
    with _cancellable(should_stop) as token:
        if matcher == "exhaustive":
            pycolmap.match_exhaustive(database, matching, pycolmap.ExhaustivePairingOptions(), verification,
                                      pycolmap.Device.cpu, token)
        elif matcher == "sequential":
            pairing = pycolmap.SequentialPairingOptions()
            pairing.overlap = sequential_overlap
            pairing.loop_detection = False
            pycolmap.match_sequential(database, matching, pairing, verification, pycolmap.Device.cpu, token)
        elif matcher == "spatial":
            pairing = pycolmap.SpatialPairingOptions()
            pairing.ignore_z = True
            pairing.max_distance = float(spatial_max_distance)
            pycolmap.match_spatial(database, matching, pairing, verification, pycolmap.Device.cpu, token)
        else:
            raise ValueError(f"unknown matcher {matcher!r}")


def database_stats(database: Path) -> DatabaseStats:
    """Features per image and verified pairs (with inlier counts) from the database."""
    stats = DatabaseStats()
    with _open(database) as db:
        images = db.read_all_images()
        by_id = {im.image_id: im.name for im in images}
        for im in images:
            stats.keypoints[im.name] = db.num_keypoints_for_image(im.image_id)
        pair_ids, counts = db.read_two_view_geometry_num_inliers()
    for pair_id, count in zip(pair_ids, counts, strict=True):
        a, b = pycolmap.pair_id_to_image_pair(pair_id)
        if count > 0 and a in by_id and b in by_id:
            stats.pairs.append((by_id[a], by_id[b], int(count)))
    return stats


def incremental_mapping(database: Path, image_dir: Path, output_dir: Path, num_threads: int = -1,
                        seed: int = 0, min_model_size: int = 3, use_position_priors: bool = False,
                        on_registered: Callable[[int], None] = lambda k: None,
                        should_stop: StopFn = never_stop) -> MappingResult | None:
    """COLMAP incremental SfM; returns the largest model (None if nothing was reconstructed).

    on_registered(k) is called as images register (k counts from the initial pair of the current
    model). use_position_priors: bundle adjustment also fits the pose priors in the database
    (`write_position_priors`, weighted by their covariance), so a GPS survey keeps GPS-consistent distances.
    Raises Cancelled.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    options = pycolmap.IncrementalPipelineOptions()
    options.num_threads = num_threads
    options.random_seed = seed
    options.min_model_size = min_model_size
    options.use_prior_position = use_position_priors
    count = [0]

    def initial_pair() -> None:
        count[0] = 2
        on_registered(count[0])

    def next_image() -> None:
        count[0] += 1
        on_registered(count[0])

    with _cancellable(should_stop) as token:
        models = pycolmap.incremental_mapping(database, image_dir, output_dir, options,
                                              initial_image_pair_callback=initial_pair,
                                              next_image_callback=next_image, cancellation_token=token)
    if not models:
        return None
    ranked = sorted(models.values(), key=lambda r: r.num_reg_images(), reverse=True)
    best = ranked[0]
    return MappingResult(reconstruction=best, model_sizes=[r.num_reg_images() for r in ranked],
                         mean_reprojection_error=float(best.compute_mean_reprojection_error()),
                         mean_track_length=float(best.compute_mean_track_length()),
                         num_points=int(best.num_points3D()))


# --- COLMAP models --------------------------------------------------------------------------------------------

class RegisteredView(NamedTuple):
    """One registered image of a model.

    name: image file name as COLMAP stores it. camera_id: its COLMAP camera.
    intrinsics: that camera, in the model's pixels. c2w: (4, 4) float64 camera-to-world, OpenCV axes, model frame.
    """

    name: str
    camera_id: int
    intrinsics: Intrinsics
    c2w: np.ndarray


# Reading a model in a child process first: pycolmap trusts the counts in a .bin file, so a truncated or
# tampered upload can make it allocate without bound (a cut points3D.bin grew past 14 GB) or fail
# half-way. The child gets an address-space cap of this base plus this many times the model's bytes.
_PROBE_BASE_BYTES = 512 * 2**20
_PROBE_BYTES_PER_BYTE = 32
_PROBE_TIMEOUT_S = 600
_PROBE = """
import resource, sys
import pycolmap
try:
    used = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (used + int(sys.argv[2]), resource.RLIM_INFINITY))
except (OSError, ValueError):
    pass
pycolmap.Reconstruction(sys.argv[1])
"""


def _probe_model(model_dir: Path) -> str | None:
    """None if pycolmap reads `model_dir` within bounded memory and time, else what went wrong."""
    size = sum(f.stat().st_size for f in model_dir.iterdir() if f.is_file() and f.suffix in (".bin", ".txt"))
    budget = _PROBE_BASE_BYTES + _PROBE_BYTES_PER_BYTE * size
    try:
        run = subprocess.run([sys.executable, "-c", _PROBE, str(model_dir), str(budget)], capture_output=True,
                             text=True, timeout=_PROBE_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return f"reading took over {_PROBE_TIMEOUT_S} s"
    if run.returncode == 0:
        return None
    lines = [ln.strip() for ln in run.stderr.splitlines() if ln.strip()]
    return lines[-1] if lines else f"the reader exited with status {run.returncode}"


def read_reconstruction(model_dir: str | Path) -> pycolmap.Reconstruction:
    """The COLMAP model in `model_dir` (.bin or .txt, see `model_format`), cameras and poses as stored.

    Raises UserInputError colmap_model_missing (no complete model) or colmap_model_corrupt (unreadable,
    including files whose counts would make pycolmap exhaust memory).
    """
    d = Path(model_dir)
    fmt = model_format(d)
    if fmt is None:
        raise UserInputError(
            "colmap_model_missing",
            f"{d}: no complete COLMAP model (need cameras, images and points3D as .bin or .txt).",
            "Point to the sparse model folder (e.g. sparse/0) that COLMAP wrote.")
    problem = _probe_model(d)
    if problem is None:
        try:
            return pycolmap.Reconstruction(d)
        except (ValueError, IndexError, RuntimeError, MemoryError) as e:
            problem = str(e)
    raise UserInputError("colmap_model_corrupt", f"{d}: the COLMAP model ({fmt}) is unreadable: {problem}",
                         "Re-export the model from COLMAP (File > Export model).")


def write_reconstruction(rec: pycolmap.Reconstruction, model_dir: str | Path, binary: bool = True) -> Path:
    """Write `rec` into `model_dir` as .bin (binary=True) or .txt; returns the folder.

    pycolmap writes rigs and frames next to cameras, images and points3D, and only registered images.
    Image names with spaces do not survive the .txt format (COLMAP splits its lines on spaces).
    """
    d = Path(model_dir)
    d.mkdir(parents=True, exist_ok=True)
    if binary:
        rec.write_binary(d)
    else:
        rec.write_text(d)
    return d


def camera_to_intrinsics(camera: pycolmap.Camera, source: str = "COLMAP model") -> Intrinsics:
    """Our Intrinsics for a COLMAP camera (same pixels); UserInputError for models we cannot represent."""
    model = camera.model.name
    p = [float(v) for v in camera.params]
    w, h = int(camera.width), int(camera.height)
    if model == "SIMPLE_PINHOLE":
        return Intrinsics(p[0], p[0], p[1], p[2], w, h)
    if model == "PINHOLE":
        return Intrinsics(p[0], p[1], p[2], p[3], w, h)
    if model == "SIMPLE_RADIAL":
        return Intrinsics(p[0], p[0], p[1], p[2], w, h, k1=p[3])
    if model == "RADIAL":
        return Intrinsics(p[0], p[0], p[1], p[2], w, h, k1=p[3], k2=p[4])
    if model == "OPENCV":
        return Intrinsics(*p[:4], w, h, k1=p[4], k2=p[5], p1=p[6], p2=p[7])
    raise UserInputError(
        "unsupported_camera_model",
        f"{source}: camera model {model} is not supported (supported: {', '.join(CAMERA_MODELS)}).",
        "Re-run COLMAP with --ImageReader.camera_model OPENCV (or PINHOLE for undistorted images).")


def _camera_model_and_params(intr: Intrinsics) -> tuple[str, np.ndarray]:
    """PINHOLE without distortion, OPENCV with it; params: (4,) or (8,) float64."""
    if intr.has_distortion:
        return "OPENCV", intr.params()
    return "PINHOLE", intr.params()[:4]


def intrinsics_to_camera(intr: Intrinsics, camera_id: int = 1) -> pycolmap.Camera:
    """A COLMAP camera for our Intrinsics: PINHOLE without distortion, OPENCV with it."""
    model, params = _camera_model_and_params(intr)
    return pycolmap.Camera(model=model, width=intr.width, height=intr.height, params=params, camera_id=camera_id)


def _c2w(image: pycolmap.Image) -> np.ndarray:
    """(4, 4) float64 camera-to-world of a registered image, OpenCV axes, model frame."""
    c2w = np.eye(4)
    c2w[:3] = image.cam_from_world().inverse().matrix()
    return c2w


def registered_views(rec: pycolmap.Reconstruction, source: str = "COLMAP model") -> list[RegisteredView]:
    """The registered images of `rec`, sorted by name; UserInputError for camera models we cannot represent."""
    views = []
    for image_id in rec.reg_image_ids():
        image = rec.image(image_id)
        intr = camera_to_intrinsics(rec.camera(image.camera_id), source)
        views.append(RegisteredView(image.name, int(image.camera_id), intr, _c2w(image)))
    return sorted(views, key=lambda v: v.name)


def capture_to_reconstruction(capture: Capture) -> pycolmap.Reconstruction:
    """A COLMAP model of a capture's cameras and poses (no points); equal intrinsics share a camera.

    Camera ids count from 1 in order of first use, image ids are the frame index + 1.
    """
    rec = pycolmap.Reconstruction()
    cam_ids: dict[Intrinsics, int] = {}
    for i, (intr, name) in enumerate(zip(capture.intrinsics, capture.names, strict=True)):
        if intr not in cam_ids:
            cam_ids[intr] = len(cam_ids) + 1
            rec.add_camera_with_trivial_rig(intrinsics_to_camera(intr, cam_ids[intr]))
        w2c = np.linalg.inv(np.asarray(capture.c2w[i], dtype=np.float64))
        image = pycolmap.Image(name=name, camera_id=cam_ids[intr], image_id=i + 1)
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(w2c[:3]))
    return rec


def rescale_to_image_sizes(rec: pycolmap.Reconstruction, sizes: dict[str, tuple[int, int]]
                           ) -> pycolmap.Reconstruction:
    """A copy of `rec` whose cameras and 2D points are in the pixels of resized images.

    sizes: {image name: (width, height) pixels of the image the model should describe}. Each camera is
    rescaled per axis to the size of its first image (pixel centres at +0.5 make this exact) and becomes
    PINHOLE/OPENCV, so that fx and fy may differ after rounding to whole pixels; the 2D points of each
    image are scaled with its camera. Cameras of no listed image stay as they are.
    """
    out = pycolmap.Reconstruction(rec)
    first: dict[int, str] = {}
    for _, image in sorted(out.images.items(), key=lambda item: item[0]):
        if image.name in sizes:
            first.setdefault(image.camera_id, image.name)
    scale: dict[int, np.ndarray] = {}
    for camera_id, name in first.items():
        camera = out.camera(camera_id)
        intr = camera_to_intrinsics(camera).scaled(*sizes[name])
        scale[camera_id] = np.array([intr.width / camera.width, intr.height / camera.height])
        camera.model, camera.params = _camera_model_and_params(intr)
        camera.width, camera.height = intr.width, intr.height
    for image in out.images.values():
        if image.camera_id in scale:
            for point in image.points2D:
                point.xy = point.xy * scale[image.camera_id]
    return out


def transform_reconstruction(rec: pycolmap.Reconstruction, sim: Sim3) -> pycolmap.Reconstruction:
    """A copy of `rec` in a new world frame: x_new = sim(x_old) for points and camera centres.

    Camera rotations are left-multiplied by sim.rotation, as `Sim3.apply_c2w` does; cameras and 2D points
    are unchanged.
    """
    out = pycolmap.Reconstruction(rec)
    out.transform(pycolmap.Sim3d(float(sim.scale), pycolmap.Rotation3d(np.asarray(sim.rotation, np.float64)),
                                 np.asarray(sim.translation, np.float64)))
    return out
