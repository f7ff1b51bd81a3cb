"""Capture readers and writers: transforms.json (instant-ngp / nerfstudio) and COLMAP models.

This is the one place where conventions are converted (see docs/conventions.md):
- transforms.json stores camera-to-world in OpenGL camera axes (x right, y up, z back); we flip the
  y and z columns of the rotation to get OpenCV axes [Right, Down, Forward] (`_opengl_to_opencv`).
- COLMAP stores world-to-camera in OpenCV axes; `core.dataparsers.colmap_adapter` (pycolmap) reads the
  model and inverts the poses.
Everything returned is a `core.scene.capture.Capture` with float64 OpenCV camera-to-world poses.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from core.dataparsers.colmap_layout import model_format
from core.errors import UserInputError
from core.functional.cameras import Intrinsics
from core.scene.capture import Capture, FrameInfo

log = logging.getLogger(__name__)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")
NERFSERVE_BLOCK_VERSION = 1
# Where load_capture looks for a COLMAP model inside a capture folder, in order.
COLMAP_MODEL_DIRS = ("sparse/0", "sparse", "colmap/sparse/0", "colmap", ".")
_FISHEYE_MODELS = ("OPENCV_FISHEYE", "FISHEYE", "EQUIRECTANGULAR")


def _opengl_to_opencv(c2w: np.ndarray) -> np.ndarray:
    """(..., 4, 4) camera-to-world with OpenGL camera axes <-> OpenCV axes (its own inverse)."""
    out = np.array(c2w, dtype=np.float64, copy=True)
    out[..., :3, 1:3] *= -1
    return out


# --- images ----------------------------------------------------------------------------------------

def _open_image(path: Path, what: str) -> Image.Image:
    try:
        img = Image.open(path)
        img.load()
    except FileNotFoundError as e:
        raise UserInputError("image_missing", f"{what}: image {path} does not exist.",
                             "Upload the image or remove its frame.") from e
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as e:
        raise UserInputError("image_unreadable", f"{what}: image {path} could not be decoded ({e}).",
                             "Re-export it as PNG or JPEG.") from e
    return img


def _to_array(img: Image.Image) -> np.ndarray:
    """PIL image -> (H, W, 3|4) uint8; alpha is kept when the image has any."""
    has_alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        img = Image.fromarray((np.asarray(img, dtype=np.uint32) >> 8).astype(np.uint8))
    return np.asarray(img.convert("RGBA" if has_alpha else "RGB"))


def load_image(path: str | Path, expect_size: tuple[int, int] | None = None, what: str = "capture"
               ) -> np.ndarray:
    """Read an image as (H, W, 3|4) uint8 sRGB (alpha kept), with its EXIF orientation applied.

    expect_size: (width, height) the poses were computed for, if known. When the EXIF-rotated image
    does not have that aspect ratio but the stored pixels do (the poses were made ignoring EXIF), the
    stored pixels are returned.
    """
    raw = _open_image(Path(path), what)
    rotated = ImageOps.exif_transpose(raw)
    if expect_size is None or _same_aspect(rotated.size, expect_size) or not _same_aspect(raw.size, expect_size):
        return _to_array(rotated)
    return _to_array(raw)


def _same_aspect(size: tuple[int, int], expect: tuple[int, int]) -> bool:
    """True if `size` is `expect` scaled uniformly, up to a pixel of rounding."""
    (w, h), (ew, eh) = size, expect
    s = w / ew
    return abs(h - eh * s) <= max(1.0, s) + 1e-9


def _fit_intrinsics(img: np.ndarray, intr: Intrinsics, path: Path, what: str) -> Intrinsics:
    """Intrinsics for the image as loaded: scaled if the image is a uniformly resized version."""
    h, w = img.shape[:2]
    if (w, h) == (intr.width, intr.height):
        return intr
    if _same_aspect((w, h), (intr.width, intr.height)):
        return intr.scaled(w, h)
    raise UserInputError(
        "image_size_mismatch",
        f"{what}: image {path} is {w}x{h} but its camera is {intr.width}x{intr.height}.",
        "Use the images the poses were computed from (same size or a uniformly resized copy).")


def _load_mask(path: Path, size: tuple[int, int], what: str) -> np.ndarray:
    """(H, W) bool, True where the pixel is used; resized (nearest) to `size` = (width, height)."""
    m = _open_image(path, what).convert("L")
    if m.size != size:
        if not _same_aspect(m.size, size):
            raise UserInputError("mask_size_mismatch", f"{what}: mask {path} is {m.size[0]}x{m.size[1]} but "
                                 f"its image is {size[0]}x{size[1]}.", "Give masks the size of their images.")
        m = m.resize(size, Image.Resampling.NEAREST)
    return np.asarray(m) > 127


def _downscale(capture: Capture, max_side: int | None) -> Capture:
    return capture if max_side is None else capture.resized(max_side=max_side)


def _resolve_file(base: Path, rel: str, what: str) -> Path:
    """`rel` relative to `base`, trying common image extensions when `rel` has none or is missing."""
    path = base / rel
    exts = IMAGE_EXTENSIONS + tuple(e.upper() for e in IMAGE_EXTENSIONS)
    for p in [path] + [path.with_name(path.name + ext) for ext in exts]:
        if p.is_file():
            return p
    raise UserInputError("image_missing", f"{what}: image {rel!r} not found (looked for {path} "
                         f"and {path.name}.png/.jpg/...).", "Upload the image or fix its file_path.")


def _unique_names(paths: list[str]) -> list[str]:
    """File names if they are unique, else the relative paths (themselves unique)."""
    names = [Path(p).name for p in paths]
    return names if len(set(names)) == len(names) else [Path(p).as_posix() for p in paths]


# --- transforms.json -------------------------------------------------------------------------------

def _json_path(path_or_dir: str | Path) -> Path:
    p = Path(path_or_dir)
    return p / "transforms.json" if p.is_dir() else p


def _lookup(frame: dict, meta: dict, key: str, default: float | None = None) -> float | None:
    """A numeric key of the frame, else of the file (global), else `default`."""
    v = frame.get(key, meta.get(key, default))
    return None if v is None else float(v)


def _focal(frame: dict, meta: dict, fl_key: str, angle_key: str, extent: float) -> float | None:
    """Focal length in pixels from fl_* or camera_angle_* (radians, full angle), frame before file."""
    for src in (frame, meta):
        if fl_key in src:
            return float(src[fl_key])
        if angle_key in src:
            return 0.5 * extent / math.tan(0.5 * float(src[angle_key]))
    return None


def _frame_intrinsics(meta: dict, frame: dict, image_size: tuple[int, int], what: str) -> Intrinsics:
    """Intrinsics of one frame: the frame's own keys override the file's global ones.

    image_size: (width, height) of the loaded image, used when the file gives no w/h.
    """
    model = str(frame.get("camera_model", meta.get("camera_model", "OPENCV"))).upper()
    if model in _FISHEYE_MODELS or frame.get("is_fisheye", meta.get("is_fisheye", False)):
        raise UserInputError("unsupported_camera_model", f"{what}: camera model {model} (fisheye) is not "
                             "supported.", "Re-run COLMAP/ns-process-data with the OPENCV or PINHOLE model.")
    try:
        if any(abs(_lookup(frame, meta, k, 0.0)) > 0 for k in ("k3", "k4", "k5", "k6")):
            raise UserInputError("unsupported_camera_model", f"{what}: distortion terms k3..k6 are unsupported.",
                                 "Re-run COLMAP with the OPENCV camera model (k1, k2, p1, p2).")
        w, h = _lookup(frame, meta, "w", image_size[0]), _lookup(frame, meta, "h", image_size[1])
        fx = _focal(frame, meta, "fl_x", "camera_angle_x", w)
        fy = _focal(frame, meta, "fl_y", "camera_angle_y", h)
        if fx is None and fy is None:
            raise UserInputError("missing_intrinsics", f"{what}: no focal length (fl_x or camera_angle_x).",
                                 "Add fl_x/fl_y (pixels) or camera_angle_x (radians) to transforms.json.")
        dist = {k: _lookup(frame, meta, k, 0.0) for k in ("k1", "k2", "p1", "p2")}
        return Intrinsics(fx or fy, fy or fx, _lookup(frame, meta, "cx", w / 2), _lookup(frame, meta, "cy", h / 2),
                          int(round(w)), int(round(h)), **dist)
    except (TypeError, ValueError) as e:
        raise UserInputError("transforms_invalid", f"{what}: intrinsics are not numbers ({e}).",
                             "Fix fl_x, fl_y, cx, cy, w, h, k1, k2, p1, p2 in transforms.json.") from e


def _frame_info(meta: dict) -> tuple[FrameInfo, bool]:
    block = meta.get("nerfserve")
    if isinstance(block, dict):
        return FrameInfo.from_dict(block.get("frame", {})), bool(block.get("sequential", False))
    desc = "transforms.json frame, arbitrary scale"
    if "applied_transform" in meta:
        desc += " (nerfstudio: applied_transform already applied to the COLMAP frame)"
    return FrameInfo(description=desc), False


def read_transforms_json(path_or_dir: str | Path, max_side: int | None = None,
                         skip_missing: bool = True) -> Capture:
    """Read an instant-ngp or nerfstudio transforms.json (a file, or a folder holding one).

    Poses are converted from OpenGL to OpenCV camera axes. Images load as uint8 RGB/RGBA with EXIF
    orientation applied, and are downscaled (never upscaled) to `max_side` if given; intrinsics follow.
    skip_missing: frames whose image file does not exist are dropped with a logged warning (datasets
        are often pruned after pose estimation); False makes any missing image an error. A frame
        whose image exists but cannot be decoded is always an error, as is a file with no images.
    """
    path = _json_path(path_or_dir)
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise UserInputError("transforms_missing", f"{path} does not exist.",
                             "Give the transforms.json file or the folder that holds it.") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserInputError("transforms_invalid", f"{path} is not valid JSON ({e}).",
                             "Fix or re-export transforms.json.") from e
    frames = meta.get("frames") if isinstance(meta, dict) else None
    if not frames:
        raise UserInputError("transforms_no_frames", f"{path} has no frames.",
                             "Each frame needs file_path and transform_matrix.")
    base = path.parent
    images, intrinsics, c2w, rel_paths, masks, missing = [], [], [], [], [], []
    for i, frame in enumerate(frames):
        what = f"{path.name} frame {i}"
        try:
            matrix = np.asarray(frame["transform_matrix"], dtype=np.float64)
            file_path = str(frame["file_path"])
        except (KeyError, TypeError, ValueError) as e:
            raise UserInputError("transforms_invalid", f"{path}: frame {i} lacks file_path or a numeric "
                                 "transform_matrix.", "Each frame needs both.") from e
        if matrix.shape == (3, 4):
            matrix = np.vstack([matrix, [0, 0, 0, 1]])
        if matrix.shape != (4, 4) or not np.all(np.isfinite(matrix)):
            raise UserInputError("transforms_invalid", f"{path}: frame {i} transform_matrix is not a finite "
                                 "4x4 matrix.", "Fix the pose of that frame.")
        try:
            img_path = _resolve_file(base, file_path, what)
        except UserInputError:
            if not skip_missing:
                raise
            missing.append(file_path)
            continue
        single = _single_frame(meta, frame, img_path, base, what, max_side)
        images.append(single.images[0])
        intrinsics.append(single.intrinsics[0])
        masks.append(single.masks[0] if single.masks else None)
        c2w.append(_opengl_to_opencv(matrix))
        rel_paths.append(img_path.relative_to(base).as_posix() if img_path.is_relative_to(base)
                         else file_path)
    if missing:
        if not images:
            raise UserInputError("image_missing", f"{path}: none of the {len(frames)} frames' images exist "
                                 f"(e.g. {missing[0]!r} relative to {base}).",
                                 "Upload the images folder too.")
        log.warning("%s: %d of %d frames skipped, their images do not exist: %s", path, len(missing),
                    len(frames), ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else ""))
    frame_info, sequential = _frame_info(meta)
    return Capture(images, intrinsics, np.stack(c2w), _unique_names(rel_paths),
                   masks=masks if any(m is not None for m in masks) else None,
                   frame=frame_info, sequential=sequential)


def _single_frame(meta: dict, frame: dict, img_path: Path, base: Path, what: str,
                  max_side: int | None) -> Capture:
    """One frame's image, intrinsics and mask, downscaled right away to keep memory low."""
    w, h = frame.get("w", meta.get("w")), frame.get("h", meta.get("h"))
    expect = (int(round(float(w))), int(round(float(h)))) if w is not None and h is not None else None
    img = load_image(img_path, expect, what)
    intr = _frame_intrinsics(meta, frame, (img.shape[1], img.shape[0]), what)
    intr = _fit_intrinsics(img, intr, img_path, what)
    mask = None
    if frame.get("mask_path"):
        mask = _load_mask(_resolve_file(base, str(frame["mask_path"]), what), (intr.width, intr.height), what)
    one = Capture([img], [intr], np.eye(4)[None], [img_path.name], masks=[mask])
    return _downscale(one, max_side)


def _intrinsics_keys(intr: Intrinsics) -> dict:
    return {"fl_x": intr.fx, "fl_y": intr.fy, "cx": intr.cx, "cy": intr.cy, "w": intr.width, "h": intr.height,
            "k1": intr.k1, "k2": intr.k2, "p1": intr.p1, "p2": intr.p2,
            "camera_angle_x": 2 * math.atan(0.5 * intr.width / intr.fx),
            "camera_angle_y": 2 * math.atan(0.5 * intr.height / intr.fy)}


def write_transforms_json(capture: Capture, path: str | Path, image_paths_rel: list[str] | None = None,
                          mask_paths_rel: list[str | None] | None = None) -> Path:
    """Write `capture` as a nerfstudio / instant-ngp compatible transforms.json (OpenGL axes).

    Intrinsics are global when all cameras are equal, else per frame. image_paths_rel: each frame's
    file_path relative to the json's folder (default "images/<name>"). mask_paths_rel likewise
    (None entries for frames without a mask). A `nerfserve` block records the frame info.
    Does not write images; see `write_capture`.
    """
    path = _json_path(path)
    n = len(capture)
    rel = image_paths_rel if image_paths_rel is not None else [f"images/{name}" for name in capture.names]
    if len(rel) != n or (mask_paths_rel is not None and len(mask_paths_rel) != n):
        raise ValueError(f"write_transforms_json: {n} frames but {len(rel)} image paths")
    shared = all(k == capture.intrinsics[0] for k in capture.intrinsics)
    any_dist = any(k.has_distortion for k in capture.intrinsics)
    meta: dict = {"camera_model": "OPENCV" if any_dist else "PINHOLE"}
    if shared:
        meta.update(_intrinsics_keys(capture.intrinsics[0]))
    c2w_gl = _opengl_to_opencv(capture.c2w)
    frames = []
    for i in range(n):
        fr: dict = {"file_path": rel[i], "transform_matrix": c2w_gl[i].tolist()}
        if not shared:
            fr.update(_intrinsics_keys(capture.intrinsics[i]))
        if mask_paths_rel is not None and mask_paths_rel[i]:
            fr["mask_path"] = mask_paths_rel[i]
        frames.append(fr)
    meta["frames"] = frames
    meta["nerfserve"] = {
        "version": NERFSERVE_BLOCK_VERSION, "frame": capture.frame.to_dict(),
        "sequential": capture.sequential,
        "note": "transform_matrix is camera-to-world with OpenGL camera axes (x right, y up, z back)",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return path


def write_capture(capture: Capture, out_dir: str | Path) -> Path:
    """Write images (images/NAME; PNG when the image has alpha), masks (masks/STEM.png) and
    transforms.json into `out_dir`; `read_transforms_json(out_dir)` reads it back. Returns the json path.
    """
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rel, mask_rel = [], []
    for i, (img, name) in enumerate(zip(capture.images, capture.names, strict=True)):
        fname = Path(name)
        if img.shape[2] == 4 and fname.suffix.lower() not in (".png", ".webp", ".tif", ".tiff"):
            fname = fname.with_suffix(".png")
        rel.append(f"images/{fname.as_posix()}")
        (out / rel[-1]).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(out / rel[-1], quality=95)
        mask = None if capture.masks is None else capture.masks[i]
        mask_rel.append(None if mask is None else f"masks/{fname.with_suffix('.png').as_posix()}")
        if mask is not None:
            (out / mask_rel[-1]).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask.astype(np.uint8) * 255).save(out / mask_rel[-1])
    return write_transforms_json(capture, out / "transforms.json", rel, mask_rel)


# --- COLMAP ----------------------------------------------------------------------------------------

def read_colmap_capture(model_dir: str | Path, image_dir: str | Path, max_side: int | None = None) -> Capture:
    """Registered images of a COLMAP model (.bin or .txt), sorted by name.

    Poses: (N, 4, 4) float64 camera-to-world, OpenCV axes, COLMAP's frame. Intrinsics follow the images as
    loaded (a uniformly resized copy is fine) and `max_side`.
    """
    model_dir, image_dir = Path(model_dir), Path(image_dir)
    what = f"COLMAP model {model_dir}"
    # pycolmap is imported only to read a COLMAP model: GPU workers that read transforms.json run without it.
    from core.dataparsers import colmap_adapter as colmap

    views = colmap.registered_views(colmap.read_reconstruction(model_dir), what)
    if not views:
        raise UserInputError("colmap_no_images", f"{model_dir}: the COLMAP model has no registered images.",
                             "Re-run reconstruction; it registered nothing.")
    images, intrinsics = [], []
    for view in views:
        img_path = image_dir / view.name
        img = load_image(img_path, (view.intrinsics.width, view.intrinsics.height), what)
        intr = _fit_intrinsics(img, view.intrinsics, img_path, what)
        one = _downscale(Capture([img], [intr], np.eye(4)[None], [view.name]), max_side)
        images.append(one.images[0])
        intrinsics.append(one.intrinsics[0])
    return Capture(images, intrinsics, np.stack([v.c2w for v in views]), [v.name for v in views],
                   frame=FrameInfo(description="COLMAP frame, arbitrary scale"))


# --- any capture folder ------------------------------------------------------------------------------

def find_image_dir(model_dir: Path, root: Path) -> Path | None:
    """The `images` folder next to the model, or next to one of its parents, never above `root`."""
    d = model_dir
    while True:
        if (d / "images").is_dir():
            return d / "images"
        if d == root or d.parent == d or not d.is_relative_to(root):
            return None
        d = d.parent


def load_capture(path: str | Path, max_side: int | None = None) -> Capture:
    """A capture from a transforms.json file, a folder holding one, or a folder with a COLMAP model.

    COLMAP models are looked for in sparse/0, sparse, colmap/sparse/0, colmap and the folder itself,
    with images in the `images/` folder next to the model (or next to one of its parents).
    """
    p = Path(path)
    if p.is_file():
        return read_transforms_json(p, max_side)
    if not p.is_dir():
        raise UserInputError("capture_not_found", f"{p} does not exist.", "Give a capture folder or a "
                             "transforms.json file.")
    if (p / "transforms.json").is_file():
        return read_transforms_json(p / "transforms.json", max_side)
    for sub in COLMAP_MODEL_DIRS:
        model_dir = (p / sub).resolve()
        if model_format(model_dir) is None:
            continue
        image_dir = find_image_dir(model_dir, p.resolve())
        if image_dir is None:
            raise UserInputError("capture_images_missing", f"COLMAP model found in {model_dir} but no "
                                 f"images/ folder next to it (up to {p}).",
                                 "Put the images in an images/ folder.")
        return read_colmap_capture(model_dir, image_dir, max_side)
    looked = ", ".join(["transforms.json"] + [f"{s}/cameras.bin|txt" for s in COLMAP_MODEL_DIRS])
    raise UserInputError("capture_not_found", f"{p}: no capture found (looked for {looked}).",
                         "Give a folder with transforms.json, or a COLMAP model (sparse/0) plus images/.")
