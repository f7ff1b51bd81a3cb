"""Novel views: render any list of poses to PNG frames (and depth), and build the flythrough path."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from core.errors import Cancelled
from core.export.depth import write_depth_meta, write_view_maps
from core.export.files import write_json_atomic, write_png_atomic
from core.export.manifest import Artifact
from core.export.paths import (
    CameraPath,
    interpolate_path,
    nearest_neighbour_order,
    orbit_path,
    read_camera_path,
    spiral_path,
)
from core.export.renders import fit_size, render_camera
from core.export.scene_api import SceneLike
from core.functional.cameras import Intrinsics
from core.progress import ProgressEvent, ProgressFn, StopFn, never_stop, no_progress

PATH_KINDS = ("orbit", "spiral", "interp")


def pinhole_like(intrinsics: Intrinsics, max_side: int | None) -> Intrinsics:
    """The camera without lens distortion, scaled so its long side is at most max_side."""
    w, h = fit_size(intrinsics, max_side)
    return replace(intrinsics, k1=0.0, k2=0.0, p1=0.0, p2=0.0).scaled(w, h)


def scene_path(scene: SceneLike, spec: str, n_frames: int, max_side: int | None) -> CameraPath:
    """The camera path `spec` ("orbit", "spiral", "interp" or a JSON file) for the scene.

    Generated paths use the first training camera's intrinsics (undistorted, capped to max_side) and
    circle the region of interest's centre (the point the capture's cameras look at).
    """
    cams = scene.c2w[scene.train_indices or list(range(len(scene.c2w)))]
    intr = pinhole_like(scene.intrinsics[(scene.train_indices or [0])[0]], max_side)
    centre = np.asarray(scene.normalization.center, dtype=np.float64)
    if spec == "orbit":
        c2w = orbit_path(cams, centre, n_frames)
    elif spec == "spiral":
        c2w = spiral_path(cams, centre, n_frames)
    elif spec == "interp":
        c2w = interpolate_path(cams[nearest_neighbour_order(cams[:, :3, 3])], n_frames)
    else:
        return read_camera_path(Path(spec))
    return CameraPath(c2w, [intr] * len(c2w))


def frame_name(i: int) -> str:
    return f"frame_{i:05d}"


def render_path(scene: SceneLike, path: CameraPath, out_dir: Path, what: tuple[str, ...] = ("rgb",),
                opacity_threshold: float = 0.5, chunk: int = 65536, progress: ProgressFn = no_progress,
                should_stop: StopFn = never_stop) -> list[Artifact]:
    """Render every pose of `path` to views/frame_NNNNN.png (and depth/ maps if "depth" in what).

    Also writes views/cameras.json (c2w input frame, OpenCV axes, and intrinsics per frame).
    """
    out_dir = Path(out_dir)
    arts: list[Artifact] = []
    depth_meta: dict[str, dict] = {}
    for i, (c2w, intr) in enumerate(zip(path.c2w, path.intrinsics, strict=True)):
        if should_stop():
            raise Cancelled("export cancelled while rendering views")
        view = render_camera(scene, frame_name(i), c2w, intr, None, chunk)
        if "rgb" in what:
            img = np.round(np.clip(view.rgb, 0, 1) * 255).astype(np.uint8)
            arts.append(Artifact(write_png_atomic(out_dir / "views" / f"{view.name}.png", img), "view", "png",
                                 "image", "srgb8"))
        if "depth" in what:
            more, depth_meta[view.name] = write_view_maps(out_dir, view, scene.frame, opacity_threshold, rgb=False)
            arts += more
        progress(ProgressEvent("exporting", (i + 1) / len(path), f"view {i + 1}/{len(path)}",
                               {"what": "views", "done": i + 1, "total": len(path)}))
    if depth_meta:
        arts.append(write_depth_meta(out_dir, depth_meta, scene.frame, opacity_threshold))
    cameras = {"convention": "opencv", "frame": scene.frame.to_dict(), "c2w": [m.tolist() for m in path.c2w],
               "intrinsics": [k.to_dict() for k in path.intrinsics],
               "names": [frame_name(i) for i in range(len(path))]}
    arts.append(Artifact(write_json_atomic(out_dir / "views" / "cameras.json", cameras), "meta", "json", "input",
                         scene.frame.units))
    return arts


def render_poses(scene: SceneLike, c2w_list: np.ndarray, intrinsics: Intrinsics | list[Intrinsics],
                 out_dir: Path, what: tuple[str, ...] = ("rgb", "depth"), opacity_threshold: float = 0.5,
                 chunk: int = 65536) -> list[Path]:
    """Render poses c2w_list (K, 4, 4) float64 (input frame, OpenCV axes) at `intrinsics` (one for all, or
    K; their width/height set the resolution, which may be as large as 4032x3024: rendering is chunked).

    Writes views/frame_NNNNN.png (what has "rgb") and depth/, depth_median/, depth_vis/, confidence/ maps
    (what has "depth"); returns the written paths.
    """
    c2w_list = np.asarray(c2w_list, dtype=np.float64).reshape(-1, 4, 4)
    intrs = list(intrinsics) if isinstance(intrinsics, list) else [intrinsics] * len(c2w_list)
    arts = render_path(scene, CameraPath(c2w_list, intrs), Path(out_dir), what, opacity_threshold, chunk)
    return [a.path for a in arts]
