"""Depth maps users can compute with: float32 z-depth (.npy), 16-bit PNG with a stated scale, a colour
preview, the confidence (opacity) map and the rendered image, per camera.

Layout under the export folder (NAME = the camera's name without its extension):
    depth/NAME.npy          float32 (H, W) expected z-depth, input-frame units, NaN where opacity < threshold
    depth/NAME.png          uint16, depth = value * scale (scale per view in depth/meta.json); 0 = no depth
    depth_median/NAME.*     the same for the median depth (where transmittance crosses 0.5)
    depth_vis/NAME.png      turbo preview with a legend strip; range also in depth/meta.json
    confidence/NAME.png     uint8 opacity * 255
    rgb/NAME.png            the rendered image on white
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from core.export.colormap import depth_preview, robust_range
from core.export.files import write_json_atomic, write_npy_atomic, write_png_atomic
from core.export.manifest import Artifact
from core.export.renders import ViewRender
from core.scene.capture import FrameInfo

PNG_MAX = 65535


def masked_depth(depth: np.ndarray, opacity: np.ndarray, threshold: float) -> np.ndarray:
    """(H, W) float32 z-depth with NaN where opacity < threshold or the depth is not finite/positive."""
    out = np.asarray(depth, dtype=np.float32).copy()
    out[~(np.asarray(opacity) >= threshold) | ~np.isfinite(out) | (out <= 0)] = np.nan
    return out


def encode_depth_png(depth: np.ndarray) -> tuple[np.ndarray, float]:
    """(H, W) float z-depth with NaN -> ((H, W) uint16, scale) with depth = value * scale.

    The scale maps the largest depth to 65535, so the quantisation error is at most scale / 2.
    Value 0 marks NaN (valid depths encode to at least 1).
    """
    finite = np.isfinite(depth)
    top = float(depth[finite].max()) if finite.any() else 1.0
    scale = top / PNG_MAX if top > 0 else 1.0
    values = np.zeros(depth.shape, dtype=np.uint16)
    values[finite] = np.clip(np.round(depth[finite] / scale), 1, PNG_MAX).astype(np.uint16)
    return values, scale


def decode_depth_png(values: np.ndarray, scale: float) -> np.ndarray:
    """(H, W) uint16 + scale -> (H, W) float32 z-depth, NaN where the value is 0."""
    out = values.astype(np.float32) * np.float32(scale)
    out[values == 0] = np.nan
    return out


def stem(name: str) -> str:
    """File stem for a camera name ("images/r_001.png" -> "r_001")."""
    return Path(name).stem


def _camera_meta(view: ViewRender) -> dict:
    return {"width": view.intrinsics.width, "height": view.intrinsics.height,
            "intrinsics": view.intrinsics.to_dict(), "c2w": view.c2w.tolist()}


def write_depth_pair(out_dir: Path, subdir: str, name: str, depth: np.ndarray, units: str, statistic: str
                     ) -> tuple[list[Artifact], float]:
    """Write subdir/NAME.npy and subdir/NAME.png for one masked depth map (H, W) float32.

    Returns the artifacts and the PNG scale.
    """
    npy = write_npy_atomic(out_dir / subdir / f"{name}.npy", depth.astype(np.float32))
    values, scale = encode_depth_png(depth)
    png = write_png_atomic(out_dir / subdir / f"{name}.png", values)
    extra = {"statistic": statistic, "depth_type": "z"}
    return [Artifact(npy, "depth", "npy", "camera", units, extra),
            Artifact(png, "depth_png", "png16", "camera", units, {**extra, "scale": scale})], scale


def write_view_maps(out_dir: Path, view: ViewRender, frame: FrameInfo, opacity_threshold: float,
                    median: bool = True, rgb: bool = True) -> tuple[list[Artifact], dict]:
    """Write every per-pixel map of one rendered camera. Returns (artifacts, this view's meta entry)."""
    out_dir = Path(out_dir)
    name, units = stem(view.name), frame.units
    depth = masked_depth(view.depth, view.opacity, opacity_threshold)
    arts, scale = write_depth_pair(out_dir, "depth", name, depth, units, "expected")
    meta = {**_camera_meta(view), "scale": scale}
    if median:
        dm = masked_depth(view.depth_median, view.opacity, opacity_threshold)
        more, meta["median_scale"] = write_depth_pair(out_dir, "depth_median", name, dm, units, "median")
        arts += more
    lo, hi = robust_range(depth)
    meta["vis_range"] = [lo, hi]
    vis = write_png_atomic(out_dir / "depth_vis" / f"{name}.png", depth_preview(depth, lo, hi, units))
    arts.append(Artifact(vis, "depth_vis", "png", "image", units, {"range": [lo, hi]}))
    conf = np.round(np.clip(view.opacity, 0, 1) * 255).astype(np.uint8)
    arts.append(Artifact(write_png_atomic(out_dir / "confidence" / f"{name}.png", conf), "confidence", "png",
                         "image", "opacity/255"))
    if rgb:
        img = np.round(np.clip(view.rgb, 0, 1) * 255).astype(np.uint8)
        arts.append(Artifact(write_png_atomic(out_dir / "rgb" / f"{name}.png", img), "view", "png", "image",
                             "srgb8", {"camera": view.name}))
    return arts, meta


def write_depth_meta(out_dir: Path, views: dict[str, dict], frame: FrameInfo, opacity_threshold: float
                     ) -> Artifact:
    """Write (or extend) depth/meta.json: encoding, units, frame, and per view its scale, range and camera."""
    path = Path(out_dir) / "depth" / "meta.json"
    old = json.loads(path.read_text()).get("views", {}) if path.exists() else {}
    meta = {
        "depth_type": "z-depth along the camera's forward (+z, OpenCV) axis, not distance along the ray",
        "units": frame.units, "frame": frame.to_dict(), "opacity_threshold": opacity_threshold,
        "npy": "float32 (H, W), NaN where opacity < opacity_threshold",
        "png": {"dtype": "uint16", "formula": "depth = png_value * scale", "invalid_value": 0,
                "scale_key": "views[NAME].scale (depth/), views[NAME].median_scale (depth_median/)"},
        "vis": "depth_vis/NAME.png: turbo colours, blue = vis_range[0], red = vis_range[1]",
        "views": {**old, **views},
    }
    return Artifact(write_json_atomic(path, meta), "meta", "json", "none", frame.units)
