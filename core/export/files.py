"""Writing export files atomically (via core.atomic: temp file + rename), so a reader (the service, a
resumed job) never sees a half-written artifact."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from core.atomic import atomic_write_bytes


def _builtin(value: object) -> object:
    """JSON fallback for numpy scalars/arrays and paths."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def write_json_atomic(path: Path, obj: object) -> Path:
    """Write `obj` as indented UTF-8 JSON (numpy values as plain numbers), atomically."""
    return atomic_write_bytes(Path(path), (json.dumps(obj, indent=2, default=_builtin) + "\n").encode())


def write_png_atomic(path: Path, image: np.ndarray) -> Path:
    """Write a PNG atomically.

    image: (H, W) uint8 or uint16 (grey), or (H, W, 3|4) uint8 (RGB/RGBA).
    """
    image = np.ascontiguousarray(image)
    if image.dtype not in (np.uint8, np.uint16) or (image.dtype == np.uint16 and image.ndim != 2):
        raise ValueError(f"PNG needs uint8 (grey/RGB/RGBA) or single-channel uint16, got {image.dtype} "
                         f"{image.shape}")
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=4)
    return atomic_write_bytes(Path(path), buf.getvalue())


def write_npy_atomic(path: Path, array: np.ndarray) -> Path:
    """Write one array as .npy atomically (no pickling)."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    return atomic_write_bytes(Path(path), buf.getvalue())
