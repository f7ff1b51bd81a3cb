"""COLMAP sparse models (cameras, images, points3D) read and written in pure Python, .txt and .bin.

Layouts follow COLMAP's `src/colmap/scene/reconstruction_io.cc`. Poses are stored as COLMAP does:
world-to-camera, quaternion **wxyz** then translation, OpenCV camera axes. Conversion to our
camera-to-world happens in `core.dataparsers.readers`; this module only offers the quaternion maths and the
camera-model mapping to `core.functional.cameras.Intrinsics`. pycolmap is deliberately not used here.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, NamedTuple

import numpy as np

from core.errors import UserInputError
from core.functional.cameras import Intrinsics

# name -> (COLMAP model id, number of parameters), as in COLMAP's sensor/models.h.
CAMERA_MODELS: dict[str, tuple[int, int]] = {
    "SIMPLE_PINHOLE": (0, 3), "PINHOLE": (1, 4), "SIMPLE_RADIAL": (2, 4), "RADIAL": (3, 5),
    "OPENCV": (4, 8), "OPENCV_FISHEYE": (5, 8), "FULL_OPENCV": (6, 12), "FOV": (7, 5),
    "SIMPLE_RADIAL_FISHEYE": (8, 4), "RADIAL_FISHEYE": (9, 5), "THIN_PRISM_FISHEYE": (10, 12),
    "RAD_TAN_THIN_PRISM_FISHEYE": (11, 16), "SIMPLE_DIVISION": (12, 4), "DIVISION": (13, 5),
    "SIMPLE_FISHEYE": (14, 3), "FISHEYE": (15, 4), "EUCM": (16, 6),
}
_MODEL_BY_ID = {mid: name for name, (mid, _) in CAMERA_MODELS.items()}
SUPPORTED_MODELS = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV")
_FILES = ("cameras", "images", "points3D")


class ColmapCamera(NamedTuple):
    """model: COLMAP model name (e.g. "OPENCV"); width, height: pixels; params: (K,) float64."""

    model: str
    width: int
    height: int
    params: np.ndarray


class ColmapImage(NamedTuple):
    """A registered image. qvec: (4,) float64 wxyz and tvec: (3,) float64, world-to-camera."""

    name: str
    camera_id: int
    qvec: np.ndarray
    tvec: np.ndarray


def _empty_points2d() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((0, 2)), np.zeros(0, dtype=np.int64)


@dataclass
class ColmapModel:
    """A COLMAP sparse model.

    cameras: {camera_id: ColmapCamera}. images: {image_id: ColmapImage} (world-to-camera).
    point_ids: (P,) int64. xyz: (P, 3) float64, COLMAP world frame. rgb: (P, 3) uint8.
    error: (P,) float64 mean reprojection error in pixels. track_length: (P,) int64.
    tracks: None, or P arrays (L, 2) int64 of (image_id, point2D_idx); without them points are
        written with empty tracks.
    points2d: {image_id: (xys (K, 2) float64 pixels, point3D_ids (K,) int64, -1 = none)}; images
        missing here are written with no 2D points.
    """

    cameras: dict[int, ColmapCamera] = field(default_factory=dict)
    images: dict[int, ColmapImage] = field(default_factory=dict)
    point_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    xyz: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    rgb: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), dtype=np.uint8))
    error: np.ndarray = field(default_factory=lambda: np.zeros(0))
    track_length: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    tracks: list[np.ndarray] | None = None
    points2d: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.point_ids = np.asarray(self.point_ids, dtype=np.int64).reshape(-1)
        self.xyz = np.asarray(self.xyz, dtype=np.float64).reshape(-1, 3)
        self.rgb = np.asarray(self.rgb, dtype=np.uint8).reshape(-1, 3)
        self.error = np.asarray(self.error, dtype=np.float64).reshape(-1)
        self.track_length = np.asarray(self.track_length, dtype=np.int64).reshape(-1)
        p = len(self.point_ids)
        if not (len(self.xyz) == len(self.rgb) == len(self.error) == len(self.track_length) == p):
            raise ValueError("ColmapModel: point arrays differ in length")
        if self.tracks is not None and len(self.tracks) != p:
            raise ValueError("ColmapModel: tracks must have one entry per point")


# --- rotations ------------------------------------------------------------------------------------

def qvec_to_rotmat(qvec: np.ndarray) -> np.ndarray:
    """qvec: (4,) wxyz (any norm) -> (3, 3) float64 rotation matrix."""
    w, x, y, z = np.asarray(qvec, dtype=np.float64) / np.linalg.norm(qvec)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def rotmat_to_qvec(rot: np.ndarray) -> np.ndarray:
    """rot: (3, 3) rotation matrix -> (4,) float64 unit quaternion wxyz with w >= 0."""
    r = np.asarray(rot, dtype=np.float64)
    # Symmetric 4x4 whose dominant eigenvector is the quaternion (robust for all rotations).
    k = np.array([
        [r[0, 0] - r[1, 1] - r[2, 2], 0, 0, 0],
        [r[1, 0] + r[0, 1], r[1, 1] - r[0, 0] - r[2, 2], 0, 0],
        [r[2, 0] + r[0, 2], r[2, 1] + r[1, 2], r[2, 2] - r[0, 0] - r[1, 1], 0],
        [r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1], r[0, 0] + r[1, 1] + r[2, 2]],
    ]) / 3.0
    vals, vecs = np.linalg.eigh(k)
    x, y, z, w = vecs[:, np.argmax(vals)]
    q = np.array([w, x, y, z])
    return q if q[0] >= 0 else -q


def image_world_to_camera(image: ColmapImage) -> np.ndarray:
    """(4, 4) float64 world-to-camera of a COLMAP image (OpenCV camera axes)."""
    w2c = np.eye(4)
    w2c[:3, :3] = qvec_to_rotmat(image.qvec)
    w2c[:3, 3] = image.tvec
    return w2c


def world_to_camera_qt(c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """c2w: (4, 4) float64 camera-to-world -> (qvec (4,) wxyz, tvec (3,)) world-to-camera."""
    rot = np.asarray(c2w, dtype=np.float64)[:3, :3].T
    return rotmat_to_qvec(rot), -rot @ np.asarray(c2w, dtype=np.float64)[:3, 3]


# --- camera models ---------------------------------------------------------------------------------

def camera_to_intrinsics(camera: ColmapCamera, source: str = "COLMAP model") -> Intrinsics:
    """Our Intrinsics for a COLMAP camera; UserInputError for models we cannot represent."""
    p = [float(v) for v in camera.params]
    w, h = int(camera.width), int(camera.height)
    if camera.model == "SIMPLE_PINHOLE":
        return Intrinsics(p[0], p[0], p[1], p[2], w, h)
    if camera.model == "PINHOLE":
        return Intrinsics(p[0], p[1], p[2], p[3], w, h)
    if camera.model == "SIMPLE_RADIAL":
        return Intrinsics(p[0], p[0], p[1], p[2], w, h, k1=p[3])
    if camera.model == "RADIAL":
        return Intrinsics(p[0], p[0], p[1], p[2], w, h, k1=p[3], k2=p[4])
    if camera.model == "OPENCV":
        return Intrinsics(*p[:4], w, h, k1=p[4], k2=p[5], p1=p[6], p2=p[7])
    raise UserInputError(
        "unsupported_camera_model",
        f"{source}: camera model {camera.model} is not supported (supported: {', '.join(SUPPORTED_MODELS)}).",
        "Re-run COLMAP with --ImageReader.camera_model OPENCV (or PINHOLE for undistorted images).")


def intrinsics_to_camera(intr: Intrinsics) -> ColmapCamera:
    """COLMAP camera for our Intrinsics: PINHOLE without distortion, OPENCV with it."""
    if intr.has_distortion:
        return ColmapCamera("OPENCV", intr.width, intr.height, intr.params())
    return ColmapCamera("PINHOLE", intr.width, intr.height, intr.params()[:4])


# --- reading -------------------------------------------------------------------------------------

def model_format(model_dir: str | Path) -> str | None:
    """"bin" or "txt" if `model_dir` holds a complete model in that format (bin preferred), else None."""
    d = Path(model_dir)
    for ext in ("bin", "txt"):
        if all((d / f"{n}.{ext}").is_file() for n in _FILES):
            return ext
    return None


def read_colmap_model(model_dir: str | Path) -> ColmapModel:
    """Read cameras/images/points3D from `model_dir`, in .bin or .txt (whichever is complete)."""
    d = Path(model_dir)
    fmt = model_format(d)
    if fmt is None:
        raise UserInputError(
            "colmap_model_missing",
            f"{d}: no complete COLMAP model (need cameras, images and points3D as .bin or .txt).",
            "Point to the sparse model folder (e.g. sparse/0) that COLMAP wrote.")
    try:
        if fmt == "bin":
            with open(d / "cameras.bin", "rb") as f:
                cameras = _read_cameras_bin(f)
            with open(d / "images.bin", "rb") as f:
                images, points2d = _read_images_bin(f)
            with open(d / "points3D.bin", "rb") as f:
                points = _read_points_bin(f)
        else:
            cameras = _read_cameras_txt(d / "cameras.txt")
            images, points2d = _read_images_txt(d / "images.txt")
            points = _read_points_txt(d / "points3D.txt")
    except (struct.error, ValueError, IndexError, KeyError) as e:
        raise UserInputError("colmap_model_corrupt", f"{d}: the COLMAP model ({fmt}) is unreadable: {e}",
                             "Re-export the model from COLMAP (File > Export model).") from e
    return ColmapModel(cameras, images, *points, points2d=points2d)


def _unpack(f: BinaryIO, fmt: str) -> tuple:
    size = struct.calcsize("<" + fmt)
    data = f.read(size)
    if len(data) != size:
        raise ValueError("unexpected end of file")
    return struct.unpack("<" + fmt, data)


def _read_cameras_bin(f: BinaryIO) -> dict[int, ColmapCamera]:
    cameras = {}
    for _ in range(_unpack(f, "Q")[0]):
        cam_id, model_id, width, height = _unpack(f, "iiQQ")
        name = _MODEL_BY_ID.get(model_id)
        if name is None:
            raise ValueError(f"unknown camera model id {model_id}")
        params = np.array(_unpack(f, "d" * CAMERA_MODELS[name][1]))
        cameras[cam_id] = ColmapCamera(name, width, height, params)
    return cameras


def _read_images_bin(f: BinaryIO) -> tuple[dict[int, ColmapImage], dict]:
    images, points2d = {}, {}
    for _ in range(_unpack(f, "Q")[0]):
        vals = _unpack(f, "i7di")
        name = bytearray()
        while (c := f.read(1)) != b"\x00":
            if not c:
                raise ValueError("unexpected end of file in image name")
            name += c
        n2d = _unpack(f, "Q")[0]
        raw = np.frombuffer(f.read(24 * n2d), dtype=[("xy", "<f8", 2), ("id", "<i8")])
        if len(raw) != n2d:
            raise ValueError("unexpected end of file in points2D")
        images[vals[0]] = ColmapImage(name.decode("utf-8"), vals[8], np.array(vals[1:5]), np.array(vals[5:8]))
        points2d[vals[0]] = (raw["xy"].astype(np.float64), raw["id"].astype(np.int64))
    return images, points2d


def _read_points_bin(f: BinaryIO) -> tuple:
    n = _unpack(f, "Q")[0]
    ids, xyz, rgb = np.zeros(n, np.int64), np.zeros((n, 3)), np.zeros((n, 3), np.uint8)
    err, tlen, tracks = np.zeros(n), np.zeros(n, np.int64), []
    for i in range(n):
        vals = _unpack(f, "Q3d3BdQ")
        ids[i], xyz[i], rgb[i], err[i], tlen[i] = vals[0], vals[1:4], vals[4:7], vals[7], vals[8]
        track = np.frombuffer(f.read(8 * tlen[i]), dtype="<i4")
        if len(track) != 2 * tlen[i]:
            raise ValueError("unexpected end of file in tracks")
        tracks.append(track.reshape(-1, 2).astype(np.int64))
    return ids, xyz, rgb, err, tlen, tracks


def _data_lines(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def _read_cameras_txt(path: Path) -> dict[int, ColmapCamera]:
    cameras = {}
    for ln in _data_lines(path):
        tok = ln.split()
        if tok[1] not in CAMERA_MODELS:
            raise ValueError(f"unknown camera model {tok[1]}")
        params = np.array(tok[4:], dtype=np.float64)
        cameras[int(tok[0])] = ColmapCamera(tok[1], int(tok[2]), int(tok[3]), params)
    return cameras


def _read_images_txt(path: Path) -> tuple[dict[int, ColmapImage], dict]:
    # Not _data_lines: an image with no 2D points has an empty second line, which must be kept.
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if not ln.startswith("#")]
    while lines and not lines[-1].strip():
        lines.pop()
    images, points2d = {}, {}
    i = 0
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        tok = lines[i].split(maxsplit=9)
        image_id = int(tok[0])
        pose = np.array(tok[1:8], dtype=np.float64)
        images[image_id] = ColmapImage(tok[9].rstrip("\r\n"), int(tok[8]), pose[:4], pose[4:])
        pts = np.array(lines[i + 1].split() if i + 1 < len(lines) else [], dtype=np.float64).reshape(-1, 3)
        points2d[image_id] = (pts[:, :2].copy(), pts[:, 2].astype(np.int64))
        i += 2
    return images, points2d


def _read_points_txt(path: Path) -> tuple:
    rows = [ln.split() for ln in _data_lines(path)]
    ids = np.array([int(r[0]) for r in rows], dtype=np.int64)
    xyz = np.array([r[1:4] for r in rows], dtype=np.float64).reshape(-1, 3)
    rgb = np.array([r[4:7] for r in rows], dtype=np.int64).reshape(-1, 3).astype(np.uint8)
    err = np.array([r[7] for r in rows], dtype=np.float64)
    tracks = [np.array(r[8:], dtype=np.int64).reshape(-1, 2) for r in rows]
    tlen = np.array([len(t) for t in tracks], dtype=np.int64)
    return ids, xyz, rgb, err, tlen, tracks


# --- writing --------------------------------------------------------------------------------------

def write_colmap_model(model: ColmapModel, model_dir: str | Path, binary: bool = True) -> Path:
    """Write `model` as cameras/images/points3D .bin (binary=True) or .txt into `model_dir`."""
    d = Path(model_dir)
    d.mkdir(parents=True, exist_ok=True)
    tracks = model.tracks if model.tracks is not None else [np.zeros((0, 2), np.int64)] * len(model.point_ids)
    if binary:
        with open(d / "cameras.bin", "wb") as f:
            _write_cameras_bin(f, model.cameras)
        with open(d / "images.bin", "wb") as f:
            _write_images_bin(f, model)
        with open(d / "points3D.bin", "wb") as f:
            _write_points_bin(f, model, tracks)
    else:
        _write_cameras_txt(d / "cameras.txt", model.cameras)
        _write_images_txt(d / "images.txt", model)
        _write_points_txt(d / "points3D.txt", model, tracks)
    return d


def _write_cameras_bin(f: BinaryIO, cameras: dict[int, ColmapCamera]) -> None:
    f.write(struct.pack("<Q", len(cameras)))
    for cam_id, cam in cameras.items():
        mid, nparams = CAMERA_MODELS[cam.model]
        if len(cam.params) != nparams:
            raise ValueError(f"camera {cam_id}: {cam.model} needs {nparams} params, got {len(cam.params)}")
        f.write(struct.pack("<iiQQ", cam_id, mid, int(cam.width), int(cam.height)))
        f.write(np.asarray(cam.params, dtype="<f8").tobytes())


def _write_images_bin(f: BinaryIO, model: ColmapModel) -> None:
    f.write(struct.pack("<Q", len(model.images)))
    for image_id, im in model.images.items():
        xys, ids = model.points2d.get(image_id, _empty_points2d())
        f.write(struct.pack("<i7di", image_id, *np.asarray(im.qvec, float), *np.asarray(im.tvec, float),
                            im.camera_id))
        f.write(im.name.encode("utf-8") + b"\x00")
        f.write(struct.pack("<Q", len(ids)))
        rec = np.zeros(len(ids), dtype=[("xy", "<f8", 2), ("id", "<i8")])
        rec["xy"], rec["id"] = xys, ids
        f.write(rec.tobytes())


def _write_points_bin(f: BinaryIO, model: ColmapModel, tracks: list[np.ndarray]) -> None:
    f.write(struct.pack("<Q", len(model.point_ids)))
    for i, pid in enumerate(model.point_ids):
        track = np.asarray(tracks[i], dtype="<i4").reshape(-1, 2)
        f.write(struct.pack("<Q3d3BdQ", int(pid), *model.xyz[i], *model.rgb[i], float(model.error[i]),
                            len(track)))
        f.write(track.tobytes())


def _write_cameras_txt(path: Path, cameras: dict[int, ColmapCamera]) -> None:
    lines = ["# Camera list with one line of data per camera:",
             "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]", f"# Number of cameras: {len(cameras)}"]
    for cam_id, cam in cameras.items():
        lines.append(" ".join([str(cam_id), cam.model, str(int(cam.width)), str(int(cam.height))]
                              + [repr(float(p)) for p in cam.params]))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _write_images_txt(path: Path, model: ColmapModel) -> None:
    lines = ["# Image list with two lines of data per image:",
             "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME",
             "#   POINTS2D[] as (X, Y, POINT3D_ID)", f"# Number of images: {len(model.images)}"]
    for image_id, im in model.images.items():
        xys, ids = model.points2d.get(image_id, _empty_points2d())
        pose = [repr(float(v)) for v in (*im.qvec, *im.tvec)]
        lines.append(" ".join([str(image_id), *pose, str(im.camera_id), im.name]))
        lines.append(" ".join(f"{x!r} {y!r} {int(p)}" for (x, y), p in zip(xys.tolist(), ids, strict=True)))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _write_points_txt(path: Path, model: ColmapModel, tracks: list[np.ndarray]) -> None:
    lines = ["# 3D point list with one line of data per point:",
             "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)",
             f"# Number of points: {len(model.point_ids)}"]
    for i, pid in enumerate(model.point_ids):
        vals = [str(int(pid)), *(repr(float(v)) for v in model.xyz[i]), *(str(int(c)) for c in model.rgb[i]),
                repr(float(model.error[i]))]
        vals += [str(int(v)) for v in np.asarray(tracks[i]).reshape(-1)]
        lines.append(" ".join(vals))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
