"""Opening one uploaded photo safely: format check, pixel limit, full decode, EXIF orientation."""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import threading
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path

from PIL import Image, ImageOps

from core.dataparsers.ingest.exif import CameraPrior, read_camera_prior
from core.dataparsers.ingest.sharpness import image_sharpness

try:  # HEIC/HEIF from iPhones; optional at run time.
    import pillow_heif

    pillow_heif.register_heif_opener()
    HEIC_SUPPORTED = True
except ImportError:  # pragma: no cover - depends on the environment
    HEIC_SUPPORTED = False

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".heic", ".heif"}
_FORMATS = {"JPEG", "MPO", "PNG", "HEIF"}
_LIMIT_LOCK = threading.Lock()
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, zlib.error, Image.DecompressionBombError)


class ImageRejected(Exception):
    """An uploaded file is not a usable image; str(e) says why, for the user."""


def file_digest(path: Path) -> str:
    """sha256 of the file's bytes (hex), for dropping exact duplicates."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def _pillow_pixel_limit(max_pixels: int | None) -> Iterator[None]:
    """Pillow's pixel limit set to `max_pixels`, with its DecompressionBombWarning raised as an error.

    Pillow's limit is a process-wide setting: a lock serialises the images opened this way.
    """
    with _LIMIT_LOCK, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        old = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = old


def _bomb_reason(path: Path, max_pixels: int) -> str:
    """The user-facing reason for a refused image, with its declared size (header only, no decode)."""
    Image.MAX_IMAGE_PIXELS = None  # the caller holds the limit lock; reading the header is safe
    with Image.open(path) as img:
        w, h = img.size
    return (f"refused as a decompression bomb: {w}x{h} = {w * h / 1e6:.1f} MP exceeds the limit of "
            f"{max_pixels / 1e6:.1f} MP")


def open_image(path: Path, max_pixels: int) -> tuple[Image.Image, CameraPrior]:
    """Open, check and fully decode one image; apply its EXIF orientation.

    Returns the upright Pillow image (mode RGB or RGBA) and its EXIF priors (size after rotation).
    Raises ImageRejected with a user-facing reason: not an image, unsupported format, more pixels
    than `max_pixels` (a decompression bomb: Pillow's limit is set to it and its warning is turned
    into an error), or truncated/corrupt data.
    """
    with _pillow_pixel_limit(max_pixels):
        try:
            img = Image.open(path)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise ImageRejected(_bomb_reason(path, max_pixels)) from e
        except Image.UnidentifiedImageError as e:
            raise ImageRejected("not an image (unrecognised file contents)") from e
        except _DECODE_ERRORS as e:
            raise ImageRejected(f"unreadable ({e})") from e
        if img.format not in _FORMATS:
            raise ImageRejected(f"unsupported image format {img.format} (use JPEG, PNG or HEIC)")
        try:
            img.load()
            upright = ImageOps.exif_transpose(img)
        except _DECODE_ERRORS as e:
            raise ImageRejected(f"truncated or corrupt image data ({e})") from e
    has_alpha = upright.mode in ("RGBA", "LA", "PA") or "transparency" in upright.info
    upright = upright.convert("RGBA" if has_alpha else "RGB")
    prior = read_camera_prior(img, upright.width, upright.height, image_sharpness(upright))
    return upright, prior


def save_clean_copy(src: Path, image: Image.Image, dest_stem: Path, jpeg_quality: int = 95) -> Path:
    """Store the upright original next to its siblings; returns the written path.

    The source bytes are copied as they are when they already decode to `image` (JPEG or PNG, no
    orientation change, 8-bit RGB/RGBA): no re-compression. Otherwise (HEIC, rotated, other modes)
    the image is re-encoded as JPEG (no alpha) or PNG (alpha).
    """
    with Image.open(src) as raw:
        fmt, same = raw.format, raw.size == image.size and raw.mode == image.mode
        orientation = raw.getexif().get(0x0112, 1)
    if same and orientation in (1, None) and fmt in ("JPEG", "PNG"):
        out = dest_stem.with_suffix(".png" if fmt == "PNG" else ".jpg")
        shutil.copyfile(src, out)
        return out
    if image.mode == "RGBA":
        out = dest_stem.with_suffix(".png")
        image.save(out)
    else:
        out = dest_stem.with_suffix(".jpg")
        image.save(out, quality=jpeg_quality)
    return out


def working_copy(src: Path, dest: Path, max_side: int, jpeg_quality: int = 95
                 ) -> tuple[tuple[int, int], tuple[int, int]]:
    """Write an RGB JPEG of `src` downscaled (never upscaled) to `max_side`, for feature extraction.

    Alpha is composited onto black. Returns ((width, height) of `src`, (width, height) of the copy)
    in pixels; pixel coordinates map between them by the per-axis size ratio (centres at +0.5).
    """
    with Image.open(src) as img:
        img.load()
        original = img.size
        scale = min(1.0, max_side / max(img.size)) if max_side > 0 else 1.0
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        if img.mode == "RGBA":
            img = Image.alpha_composite(Image.new("RGBA", img.size, (0, 0, 0, 255)), img)
        rgb = img.convert("RGB")
        if size != rgb.size:
            rgb = rgb.resize(size, Image.Resampling.LANCZOS)
        rgb.save(dest, quality=jpeg_quality)
        return original, size
