"""The only module that calls pycolmap (4.x). Everything it returns is plain Python / numpy.

pycolmap conventions handled here: `Image.cam_from_world()` is a method returning world-to-camera
in OpenCV axes; `Rigid3d.rotation.quat` is **xyzw** (converted to wxyz for `core.dataparsers.colmap_model`);
camera models are chosen through `ImageReaderOptions.camera_model`; `incremental_mapping` returns
{index: Reconstruction} and the largest one is kept (never assume index 0).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pycolmap

from core.dataparsers.colmap_model import ColmapCamera, ColmapImage, ColmapModel
from core.errors import Cancelled
from core.progress import StopFn, never_stop

CAMERA_MODELS = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV")


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
    """The largest reconstruction, as a plain COLMAP model in working-copy pixels, COLMAP's frame.

    model_sizes: registered images of every model COLMAP built, largest first.
    mean_reprojection_error: pixels (working copy). mean_track_length: observations per 3D point.
    """

    model: ColmapModel
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


def _to_model(rec: pycolmap.Reconstruction) -> ColmapModel:
    cameras = {cid: ColmapCamera(cam.model.name, cam.width, cam.height, np.asarray(cam.params, np.float64))
               for cid, cam in rec.cameras.items()}
    images, points2d = {}, {}
    for iid in rec.reg_image_ids():
        im = rec.image(iid)
        pose = im.cam_from_world()
        x, y, z, w = pose.rotation.quat  # pycolmap: xyzw
        images[iid] = ColmapImage(im.name, im.camera_id, np.array([w, x, y, z]), np.array(pose.translation))
        pts = im.points2D
        xys = np.array([p.xy for p in pts], dtype=np.float64).reshape(-1, 2)
        ids = np.array([p.point3D_id if p.has_point3D() else -1 for p in pts], dtype=np.int64)
        points2d[iid] = (xys, ids)
    pids = sorted(rec.point3D_ids())
    pts3 = [rec.point3D(pid) for pid in pids]
    tracks = [np.array([[e.image_id, e.point2D_idx] for e in p.track.elements], dtype=np.int64).reshape(-1, 2)
              for p in pts3]
    return ColmapModel(
        cameras=cameras, images=images, point_ids=np.array(pids, dtype=np.int64),
        xyz=np.array([p.xyz for p in pts3], dtype=np.float64).reshape(-1, 3),
        rgb=np.array([p.color for p in pts3], dtype=np.uint8).reshape(-1, 3),
        error=np.array([p.error for p in pts3], dtype=np.float64),
        track_length=np.array([len(t) for t in tracks], dtype=np.int64), tracks=tracks, points2d=points2d)


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
    return MappingResult(model=_to_model(best), model_sizes=[r.num_reg_images() for r in ranked],
                         mean_reprojection_error=float(best.compute_mean_reprojection_error()),
                         mean_track_length=float(best.compute_mean_track_length()),
                         num_points=int(best.num_points3D()))
