"""Checking uploaded files before a job is made: kind by content (not name), zips listed safely, limits.

Nothing here decodes images or extracts archives (the ingest stage does, with core.dataparsers.ingest); it refuses,
early and with a message, what the ingest stage would refuse anyway or what is unsafe to keep.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from core.dataparsers.ingest.archive import ZipLimits, check_members
from core.errors import UserInputError
from service.settings import Settings

IMAGE_EXT = {".jpg", ".jpeg", ".png", ".heic", ".heif", ".tif", ".tiff", ".webp", ".bmp", ".avif"}
VIDEO_EXT = {".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi", ".3gp"}
HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"mif1", b"msf1", b"avif", b"avis"}
ACCEPTED = "images (JPEG, PNG, HEIC, TIFF, WebP, BMP), a .zip of images, or a video (MP4, MOV, MKV, WebM, AVI)"


def sniff(head: bytes) -> str | None:
    """'image' | 'video' | 'zip' from a file's first 16+ bytes, or None."""
    if head.startswith(b"\xff\xd8\xff") or head.startswith(b"\x89PNG\r\n\x1a\n") or head.startswith(b"BM"):
        return "image"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "image"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image"
    if head[:4] == b"RIFF" and head[8:11] == b"AVI":
        return "video"
    if head[4:8] == b"ftyp":
        return "image" if head[8:12] in HEIF_BRANDS else "video"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "video"
    if head[:4] == b"PK\x03\x04":
        return "zip"
    return None


def zip_limits(settings: Settings) -> ZipLimits:
    """The caps an uploaded zip is checked against at submission (from the settings)."""
    return ZipLimits(max_members=settings.max_zip_members, max_uncompressed_bytes=settings.zip_unpacked_cap,
                     max_ratio=settings.max_zip_ratio)


@dataclass
class Intake:
    """What a set of uploaded files holds."""

    files: int = 0
    images: int = 0
    videos: int = 0
    bytes: int = 0


def check_zip(path: Path, name: str, max_images: int, limits: ZipLimits) -> Intake:
    """List a zip (no extraction): refuse zip-slip names, links, bombs (declared total size, member count,
    compression ratio); count its images and videos."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise UserInputError("zip_corrupt", f"{name}: not a readable zip archive ({e})",
                             "re-create the archive (e.g. `zip -r capture.zip images/`)") from None
    # The same member checks as the ingest stage's extraction (names, links, count, declared size and ratio).
    check_members(Path(name), infos, replace(limits, max_members=min(limits.max_members, 2 * max_images + 100)))
    out = Intake(files=1)
    for info in infos:
        if info.is_dir():
            continue
        ext = PurePosixPath(info.filename).suffix.lower()
        base = PurePosixPath(info.filename).name
        if base.startswith(".") or "__MACOSX" in info.filename:
            continue
        out.images += ext in IMAGE_EXT
        out.videos += ext in VIDEO_EXT
    if out.images + out.videos == 0:
        raise UserInputError("no_images", f"{name}: the archive holds no images or videos",
                             f"put {ACCEPTED} in the archive")
    return out


def check_file(path: Path, name: str, max_images: int, limits: ZipLimits) -> Intake:
    """Check one uploaded file; raise UserInputError naming it if it cannot be used."""
    size = path.stat().st_size
    if size == 0:
        raise UserInputError("empty_file", f"{name} is empty (0 bytes)", "upload the file again")
    with open(path, "rb") as f:
        head = f.read(32)
    kind = sniff(head)
    if kind is None:
        raise UserInputError("unsupported_file", f"{name} is not an image, zip or video (by its content)",
                             f"upload {ACCEPTED}")
    if kind == "zip":
        out = check_zip(path, name, max_images, limits)
    else:
        out = Intake(files=1, images=int(kind == "image"), videos=int(kind == "video"))
    out.bytes = size
    return out


def check_files(paths: list[tuple[Path, str]], max_images: int, limits: ZipLimits | None = None) -> Intake:
    """Check every (path, original name); the total image count must stay within max_images."""
    if not paths:
        raise UserInputError("no_files", "the upload holds no files", f"send {ACCEPTED} as `files` parts")
    limits = limits or ZipLimits()
    total = Intake()
    for path, name in paths:
        one = check_file(path, name, max_images, limits)
        total.files += one.files
        total.images += one.images
        total.videos += one.videos
        total.bytes += one.bytes
    if total.images > max_images:
        raise UserInputError("too_many_images", f"{total.images} images, over the limit of {max_images}",
                             "send fewer images (every 2nd or 3rd of a dense capture is usually enough)")
    return total
