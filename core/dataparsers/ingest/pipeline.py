"""Uploads (images, folders, zips, videos, or a capture with poses) -> clean images in one folder."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from core.dataparsers.colmap_adapter import model_format
from core.dataparsers.ingest.archive import safe_extract_zip
from core.dataparsers.ingest.exif import CameraPrior
from core.dataparsers.ingest.images import IMAGE_SUFFIXES, ImageRejected, file_digest, open_image, save_clean_copy
from core.dataparsers.ingest.types import IngestConfig, IngestResult
from core.dataparsers.ingest.video import VIDEO_SUFFIXES, VideoRejected, extract_frames
from core.dataparsers.readers import find_image_dir, read_colmap_capture, read_transforms_json, write_capture
from core.errors import UserInputError
from core.progress import ProgressEvent, ProgressFn, no_progress

_UNSUPPORTED = "not a supported image or video (JPEG, PNG, HEIC, MP4, MOV)"
_IGNORED_NAMES = {"thumbs.db", "desktop.ini"}
_POSE_FILES = {"transforms.json"}
_COLMAP_CAMERAS = {"cameras.bin", "cameras.txt"}
_SIDE_FILES = {"images.bin", "images.txt", "points3d.bin", "points3d.txt", "project.ini", "database.db",
               "rigs.bin", "frames.bin", "rigs.txt", "frames.txt", "license", "readme.md", "readme.txt"}


@dataclass(frozen=True)
class _Source:
    """One input file: where it is, and how the user knows it (for messages)."""

    path: Path
    label: str


def _ignored(path: Path) -> bool:
    return path.name.startswith(".") or path.name.lower() in _IGNORED_NAMES or "__MACOSX" in path.parts


def _walk(root: Path, prefix: str) -> list[_Source]:
    files = sorted(p for p in root.rglob("*") if p.is_file() and not _ignored(p.relative_to(root)))
    return [_Source(p, f"{prefix}{p.relative_to(root).as_posix()}") for p in files]


def _expand(inputs: list[Path], unpack_dir: Path, config: IngestConfig) -> tuple[list[_Source], list[Path]]:
    """Every input file (zips extracted), and the folders to search for known poses."""
    sources, roots = [], []
    for i, raw in enumerate(inputs):
        path = Path(raw)
        if path.is_dir():
            sources += _walk(path, f"{path.name}/")
            roots.append(path)
        elif path.suffix.lower() == ".zip":
            dest = unpack_dir / f"{i:03d}_{path.stem}"
            safe_extract_zip(path, dest, config.zip_limits)
            sources += _walk(dest, f"{path.name}:")
            roots.append(dest)
        elif path.is_file():
            if not _ignored(Path(path.name)):
                sources.append(_Source(path, path.name))
                roots.append(path.parent)
        else:
            raise UserInputError("input_missing", f"{path} does not exist.", "Check the path of the upload.")
    return sources, roots


def find_known_poses(sources: list[_Source], roots: list[Path]) -> tuple[str, Path, Path | None] | None:
    """("transforms", json path, None) or ("colmap", model dir, image dir) if the upload has poses."""
    for src in sources:
        if src.path.name.lower() in _POSE_FILES:
            return "transforms", src.path, None
    for src in sources:
        model_dir = src.path.parent
        if src.path.name.lower() in _COLMAP_CAMERAS and model_format(model_dir):
            root = next((r for r in roots if model_dir.is_relative_to(r)), model_dir)
            return "colmap", model_dir, find_image_dir(model_dir, root)
    return None


def _ingest_known(kind: str, path: Path, image_dir: Path | None, work_dir: Path) -> IngestResult:
    """Load the capture the upload describes and store it as work_dir/known (transforms.json + images)."""
    if kind == "transforms":
        capture = read_transforms_json(path)
    else:
        if image_dir is None:
            raise UserInputError("capture_images_missing",
                                 f"COLMAP model {path.name} found but no images/ folder next to it.",
                                 "Put the images in an images/ folder beside the sparse/ folder.")
        capture = read_colmap_capture(path, image_dir)
    json_path = write_capture(capture, work_dir / "known")
    image_paths = sorted(p for p in (work_dir / "known" / "images").rglob("*") if p.is_file())
    return IngestResult(work_dir=work_dir, image_paths=image_paths, known_poses=json_path,
                        sequential=capture.sequential)


def _unique_stem(image_dir: Path, stem: str, taken: set[str]) -> Path:
    candidate, k = stem, 1
    while candidate.lower() in taken:
        k += 1
        candidate = f"{stem}_{k}"
    taken.add(candidate.lower())
    return image_dir / candidate


def _add_photo(src: _Source, result: IngestResult, seen: dict[str, str], taken: set[str],
               config: IngestConfig) -> bool:
    """Store one photo (or record why not). Returns True if it was added."""
    digest = file_digest(src.path)
    if digest in seen:
        result.duplicates.append((src.label, seen[digest]))
        return False
    try:
        image, prior = open_image(src.path, config.max_pixels)
    except ImageRejected as e:
        result.rejected.append((src.label, str(e)))
        return False
    if config.max_side and max(image.size) > config.max_side:
        s = config.max_side / max(image.size)
        image = image.resize((max(1, round(image.width * s)), max(1, round(image.height * s))),
                             Image.Resampling.LANCZOS)
        focal = prior.focal_px * s if prior.focal_px else None
        prior = CameraPrior(**{**prior.to_dict(), "width": image.width, "height": image.height,
                               "focal_px": focal, "gps": prior.gps})
    out = save_clean_copy(src.path, image, _unique_stem(result.image_dir, src.path.stem, taken),
                          config.jpeg_quality)
    seen[digest] = out.name
    result.image_paths.append(out)
    result.priors[out.name] = prior
    return True


def _add_video(src: _Source, result: IngestResult, taken: set[str], config: IngestConfig,
               progress: ProgressFn) -> None:
    try:
        prefix = _unique_stem(result.image_dir, src.path.stem, taken).name
        frames = extract_frames(src.path, result.image_dir, config.video_target_frames,
                                config.video_min_sharpness_ratio, config.jpeg_quality, prefix, progress)
    except VideoRejected as e:
        result.rejected.append((src.label, str(e)))
        return
    for name in frames.dropped_blurry:
        result.rejected.append((f"{src.label} frame {name}", "motion blur (sharpest frame of its window is "
                                "still much blurrier than the others)"))
    for path, sharp in zip(frames.paths, frames.sharpness, strict=True):
        if config.max_side:
            with Image.open(path) as img:
                if max(img.size) > config.max_side:
                    s = config.max_side / max(img.size)
                    img.resize((max(1, round(img.width * s)), max(1, round(img.height * s))),
                               Image.Resampling.LANCZOS).save(path, quality=config.jpeg_quality)
        with Image.open(path) as img:
            result.priors[path.name] = CameraPrior(width=img.width, height=img.height, sharpness=sharp)
        result.image_paths.append(path)


def _check_count(result: IngestResult, config: IngestConfig) -> None:
    n = len(result.image_paths)
    if n >= config.min_images:
        return
    parts = [f"{n} usable image{'s' if n != 1 else ''} (at least {config.min_images} needed)."]
    if result.duplicates:
        parts.append(f"{len(result.duplicates)} exact duplicate(s) dropped: "
                     + ", ".join(d for d, _ in result.duplicates[:5]) + ".")
    if result.rejected:
        parts.append("Rejected: " + "; ".join(f"{f}: {r}" for f, r in result.rejected[:5]) + ".")
    raise UserInputError("too_few_images", " ".join(parts),
                         "Upload at least 20 distinct, overlapping photos (or a video) of the scene, "
                         "taken from different positions, as JPEG, PNG or HEIC.")


def ingest(inputs: list[Path], work_dir: Path, config: IngestConfig | None = None,
           progress: ProgressFn = no_progress) -> IngestResult:
    """Turn uploads into clean, upright images in work_dir/images, and write work_dir/ingest_report.json.

    inputs: image files, folders, zips and videos, mixed. A transforms.json or a COLMAP model
    among them means the poses are known: that capture is stored in work_dir/known and returned
    with `known_poses` set. Unreadable files are listed in `rejected`, exact copies in `duplicates`.
    Raises UserInputError for unsafe zips, and when fewer than `config.min_images` images remain.
    """
    config = config or IngestConfig()
    work_dir = Path(work_dir)
    for sub in ("images", "known", "unpacked"):
        shutil.rmtree(work_dir / sub, ignore_errors=True)
    image_dir = work_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    sources, roots = _expand(inputs, work_dir / "unpacked", config)
    known = find_known_poses(sources, roots)
    if known is not None:
        result = _ingest_known(*known, work_dir)
    else:
        result = IngestResult(work_dir=work_dir)
        seen: dict[str, str] = {}
        taken: set[str] = set()
        videos = photos = 0
        for i, src in enumerate(sources):
            progress(ProgressEvent("ingest", i / max(len(sources), 1), f"reading {src.label}",
                                   {"step": "images", "done": i, "total": len(sources)}))
            suffix = src.path.suffix.lower()
            if suffix in VIDEO_SUFFIXES:
                videos += 1
                _add_video(src, result, taken, config, progress)
            elif suffix in IMAGE_SUFFIXES:
                photos += _add_photo(src, result, seen, taken, config)
            elif src.path.name.lower() not in _SIDE_FILES:
                result.rejected.append((src.label, _UNSUPPORTED))
        result.sequential = videos == 1 and photos == 0
        _check_count(result, config)
    shutil.rmtree(work_dir / "unpacked", ignore_errors=True)
    result.save()
    progress(ProgressEvent("ingest", 1.0, f"{len(result.image_paths)} images ready",
                           {"images": len(result.image_paths), "rejected": len(result.rejected)}))
    return result
