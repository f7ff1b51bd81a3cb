"""Which files make a COLMAP model folder (no pycolmap needed: readers of transforms.json run without it)."""

from __future__ import annotations

from pathlib import Path

MODEL_FILES = ("cameras", "images", "points3D")


def model_format(model_dir: str | Path) -> str | None:
    """"bin" or "txt" if `model_dir` holds a complete model in that format (bin preferred, as COLMAP reads it),
    else None. Only cameras, images and points3D are required; rigs and frames are optional."""
    d = Path(model_dir)
    for ext in ("bin", "txt"):
        if all((d / f"{n}.{ext}").is_file() for n in MODEL_FILES):
            return ext
    return None
