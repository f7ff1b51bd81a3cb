"""export_all: every requested export of a trained scene, then the manifest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import trimesh

from core.errors import Cancelled
from core.export.config import ExportConfig
from core.export.density_mesh import density_mesh, mesh_box, surface_level
from core.export.depth import write_depth_meta, write_view_maps
from core.export.grid import Occupancy, grid_over_box, scene_occupancy
from core.export.manifest import Artifact, write_manifest
from core.export.mesh_clean import cull_outside_frusta, cull_unseen, decimate, keep_large_components
from core.export.mesh_colour import vertex_colours
from core.export.mesh_write import coloured_mesh, write_mesh
from core.export.pointcloud import backprojected_points, in_box, voxel_downsample, write_pointcloud
from core.export.renders import ViewRender, fit_size, render_camera, render_scene_cameras
from core.export.scene_api import SceneLike
from core.export.tsdf import tsdf_mesh
from core.export.video import write_mp4
from core.export.views import render_path, scene_path
from core.progress import ProgressEvent, ProgressFn, StopFn, never_stop, no_progress
from core.scene.capture import Capture
from core.scene.composition import PartScene, crop_to_foreground


def _stage_reporter(progress: ProgressFn, stages: list[str]):
    """report(stage, fraction_within_stage, message): one overall 0..1 fraction over equal-weight stages."""

    def report(stage: str, fraction: float, message: str = "") -> None:
        i = stages.index(stage)
        progress(ProgressEvent("exporting", (i + min(max(fraction, 0.0), 1.0)) / len(stages),
                               message or stage, {"what": stage}))

    return report


def capture_images_for(views: list[ViewRender], capture: Capture | None) -> list[np.ndarray] | None:
    """The capture's photo for each view (matched by name), or None if no capture or a name is missing."""
    if capture is None:
        return None
    by_name = dict(zip(capture.names, capture.images, strict=True))
    if not all(v.name in by_name for v in views):
        return None
    return [by_name[v.name] for v in views]


def depth_indices(scene: SceneLike, which: str) -> list[int]:
    """The capture cameras whose depth maps to export: "all", "train" or "test"."""
    if which == "train":
        return list(scene.train_indices)
    if which == "test":
        return list(scene.test_indices)
    return list(range(len(scene.c2w)))


def export_depth(scene: SceneLike, out_dir: Path, config: ExportConfig, report, should_stop: StopFn,
                 keep: dict[int, ViewRender]) -> list[Artifact]:
    """Depth (expected + median), preview, confidence and rendered image of the capture's cameras.

    Renders that are also at the fusion size are stored in `keep` (camera index -> ViewRender), so the
    meshes and point cloud reuse them instead of rendering the same cameras again.
    """
    arts: list[Artifact] = []
    metas: dict[str, dict] = {}
    indices = depth_indices(scene, config.depth_views)
    for n, i in enumerate(indices):
        if should_stop():
            raise Cancelled("export cancelled while writing depth maps")
        view = render_camera(scene, scene.names[i], scene.c2w[i], scene.intrinsics[i], config.depth_max_side,
                             config.chunk)
        more, metas[Path(view.name).stem] = write_view_maps(out_dir, view, scene.frame, config.opacity_threshold,
                                                            config.depth_median)
        arts += more
        if fit_size(scene.intrinsics[i], config.fusion_max_side) == view.rgb.shape[1::-1]:
            keep[i] = view
        report("depth", (n + 1) / len(indices), f"depth map {n + 1}/{len(indices)}")
    arts.append(write_depth_meta(out_dir, metas, scene.frame, config.opacity_threshold))
    return arts


def build_mesh(scene: SceneLike, method: str, views: list[ViewRender], images: list[np.ndarray] | None,
               occupancy: Occupancy | None, config: ExportConfig, should_stop: StopFn = never_stop
               ) -> tuple[trimesh.Trimesh, dict]:
    """Extract (by "density" or "tsdf"), clean, decimate and colour one mesh, input frame.

    Returns the coloured mesh and a dict describing how it was made.
    """
    if method == "density":
        part, level = scene, config.mesh_level
        if config.mesh_part != "all":
            part, level = PartScene(scene, config.mesh_part), level or surface_level(scene, views)
        mesh, info = density_mesh(part, views, config.mesh_resolution, occupancy, level, should_stop=should_stop)
    else:
        grid = grid_over_box(*mesh_box(scene), config.mesh_resolution)
        mesh, info = tsdf_mesh(grid, views, config.opacity_threshold, config.tsdf_truncation_voxels, occupancy,
                               should_stop=should_stop)
    if config.mesh_part == "foreground":
        mesh = crop_to_foreground(mesh, scene)
    if config.mesh_cull_frusta:
        cams = scene.train_indices or list(range(len(scene.c2w)))
        mesh = cull_outside_frusta(mesh, scene.c2w[cams], [scene.intrinsics[i] for i in cams])
    if config.mesh_cull_unseen:
        mesh = cull_unseen(mesh, views, config.opacity_threshold, config.mesh_visibility_voxels * info["voxel"])
    mesh = keep_large_components(mesh, config.mesh_min_component_ratio)
    mesh = decimate(mesh, config.mesh_face_budget)
    colours = vertex_colours(np.asarray(mesh.vertices), views, images, config.opacity_threshold,
                             abs_tol=2 * info["voxel"]) if len(mesh.vertices) else None
    return coloured_mesh(mesh, colours), {"method": method, **info}


def export_pointcloud(scene: SceneLike, out_dir: Path, views: list[ViewRender], images, config: ExportConfig
                      ) -> Artifact:
    """Back-projected confident depth of the capture's cameras, inside the mesh box, voxel-downsampled."""
    lo, hi = mesh_box(scene)
    voxel = config.pointcloud_voxel or float(np.linalg.norm(hi - lo)) / 1000
    pts, cols = backprojected_points(views, config.opacity_threshold, images)
    keep = in_box(pts, lo, hi)
    pts, cols = voxel_downsample(pts[keep], cols[keep], voxel)
    art = write_pointcloud(out_dir, pts, cols, scene.frame)
    return Artifact(art.path, art.kind, art.format, art.frame, art.units, {**art.extra, "voxel": voxel})


def export_views(scene: SceneLike, out_dir: Path, config: ExportConfig, report, should_stop: StopFn
                 ) -> list[Artifact]:
    """Flythrough frames along config.path (views/), and the MP4 (video/) when asked for."""
    path = scene_path(scene, config.path, config.n_frames, config.view_max_side)

    def sub(ev: ProgressEvent) -> None:
        report("views", ev.fraction, ev.message)

    arts = render_path(scene, path, out_dir, ("rgb",), config.opacity_threshold, config.chunk, sub, should_stop)
    if "video" in config.what:
        from PIL import Image

        frames = [a.path for a in arts if a.kind == "view"]
        name = Path(config.path).stem if config.path not in ("orbit", "spiral", "interp") else config.path
        video = Path(out_dir) / "video" / f"{name}.mp4"
        count = write_mp4(video, (np.asarray(Image.open(f).convert("RGB")) for f in frames), config.fps)
        arts.append(Artifact(video, "video", "mp4", "image", "srgb8",
                             {"frames": count, "fps": config.fps, "codec": "h264", "pix_fmt": "yuv420p"}))
    return arts


def export_all(scene: SceneLike, out_dir: Path, config: ExportConfig | None = None,
               progress: ProgressFn = no_progress, should_stop: StopFn = never_stop,
               capture: Capture | None = None) -> dict:
    """Write every export in config.what under out_dir, then out_dir/manifest.json; returns the manifest.

    scene: a TrainedScene (or anything with its interface, see core.export.scene_api).
    capture: optional, the posed photos: vertex colours then come from the photos, not the renders.
    Raises core.errors.Cancelled when should_stop() turns True (checked between views and chunks).
    """
    config = config or ExportConfig()
    out_dir = Path(out_dir).resolve()      # artifacts are recorded by path: a relative one would resolve twice
    out_dir.mkdir(parents=True, exist_ok=True)
    methods = config.mesh_methods()
    want_views = "views" in config.what or "video" in config.what
    stages = [s for s, on in (("depth", "depth" in config.what), ("fusion", bool(methods) or
              "pointcloud" in config.what), *((f"mesh:{m}", True) for m in methods),
              ("pointcloud", "pointcloud" in config.what), ("views", want_views)) if on]
    report = _stage_reporter(progress, stages or ["none"])
    arts: list[Artifact] = []
    mesh_info: dict[str, dict] = {}
    rendered: dict[int, ViewRender] = {}
    if "depth" in config.what:
        arts += export_depth(scene, out_dir, config, report, should_stop, rendered)
    if "fusion" in stages:
        cams = scene.train_indices or list(range(len(scene.c2w)))
        missing = [i for i in cams if i not in rendered]
        rendered.update(zip(missing, render_scene_cameras(scene, missing, config.fusion_max_side, config.chunk,
                                                          should_stop), strict=True))
        views = [rendered[i] for i in cams]
        images = capture_images_for(views, capture)
        report("fusion", 1.0, f"rendered {len(views)} cameras for fusion")
        occupancy = scene_occupancy(scene.occupancy_world())
        for method in methods:
            mesh, mesh_info[method] = build_mesh(scene, method, views, images, occupancy, config, should_stop)
            name = f"mesh_{method}" if config.mesh_part == "all" else f"mesh_{method}_{config.mesh_part}"
            arts += write_mesh(out_dir, name, mesh, scene.frame, extra={"method": method, "part": config.mesh_part})
            report(f"mesh:{method}", 1.0, f"{method} mesh: {len(mesh.faces)} faces")
        if "pointcloud" in config.what:
            arts.append(export_pointcloud(scene, out_dir, views, images, config))
            report("pointcloud", 1.0)
    if want_views:
        arts += export_views(scene, out_dir, config, report, should_stop)
    extra = {"config": config.to_dict(), "meshes": mesh_info,
             "scene": {"names": list(scene.names), "train_indices": list(scene.train_indices),
                       "test_indices": list(scene.test_indices), "metrics": dict(scene.metrics),
                       "normalization": scene.normalization.to_dict()}}
    return write_manifest(out_dir, arts, scene.frame, extra)
