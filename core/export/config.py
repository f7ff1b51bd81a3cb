"""Export settings: one flat dataclass whose defaults work for a typical capture."""

from __future__ import annotations

from dataclasses import dataclass, fields

from core.errors import UserInputError

WHAT = ("depth", "mesh", "tsdf", "pointcloud", "views", "video")
MESH_METHODS = ("density", "tsdf")
MESH_PARTS = ("all", "foreground")
# The mesh method "mesh" in `what` uses unless mesh_method says otherwise: the more accurate one on the synthetic
# capture and the analytic stand-in (Chamfer to the true surface, tests/core/export/test_export_real.py).
DEFAULT_MESH_METHOD = "density"
MESH_RESOLUTION_RANGE = (16, 1024)       # marching-cubes samples on the long side (the job spec's range too)


@dataclass
class ExportConfig:
    """What to export and how.

    what: any of WHAT. "mesh" writes a mesh by `mesh_method`; "tsdf" always writes the TSDF mesh.
    opacity_threshold: depth is NaN (and no point is made) where opacity is below this.
    depth_max_side: render depth maps of the capture's cameras at most this many pixels on the long
        side (None: their full size). depth_views: "all", "train" or "test" cameras.
    fusion_max_side: size of the internal renders used for TSDF fusion, the mesh level, vertex colours
        and the point cloud.
    mesh_resolution: marching-cubes samples along the longest side of the occupied box (512 fits in a
        few GB: the grid is processed in chunks). mesh_level: iso-level override (density per field unit).
    mesh_min_component_ratio: keep connected components with at least this fraction of the largest
        one's faces. mesh_face_budget: decimate to at most this many faces (None: keep all).
    mesh_part: "all" (the whole scene) or "foreground" (models trained with composition: the foreground
        field's density at the whole scene's iso-level, cropped to its box and above the support plane).
    mesh_cull_frusta: drop faces outside every training camera's frustum. mesh_cull_unseen: drop faces
        no rendered training camera sees as its surface (depth test, tolerance mesh_visibility_voxels
        voxels + 2% of the depth).
    tsdf_truncation_voxels: TSDF truncation distance in voxels.
    pointcloud_voxel: downsampling voxel in input-frame units (None: the mesh box diagonal / 1000).
    path: "orbit", "spiral", "interp" or a camera-path JSON file; n_frames, fps: the flythrough.
    view_max_side: long side of novel views (None: the capture camera's size).
    chunk: rays per render call batch.
    """

    what: tuple[str, ...] = ("depth", "mesh", "pointcloud", "views", "video")
    opacity_threshold: float = 0.5
    depth_max_side: int | None = None
    depth_views: str = "all"
    depth_median: bool = True
    fusion_max_side: int = 256
    mesh_method: str = DEFAULT_MESH_METHOD
    mesh_resolution: int = 256
    mesh_level: float | None = None
    mesh_min_component_ratio: float = 0.05
    mesh_face_budget: int | None = None
    mesh_part: str = "all"
    mesh_cull_frusta: bool = True
    mesh_cull_unseen: bool = True
    mesh_visibility_voxels: float = 3.0
    tsdf_truncation_voxels: float = 4.0
    pointcloud_voxel: float | None = None
    path: str = "orbit"
    n_frames: int = 60
    fps: int = 24
    view_max_side: int | None = 720
    chunk: int = 65536

    def __post_init__(self) -> None:
        if isinstance(self.what, str):
            self.what = tuple(w.strip() for w in self.what.split(",") if w.strip())
        self.what = tuple(self.what)
        bad = [w for w in self.what if w not in WHAT]
        if bad:
            raise UserInputError("export_unknown_what", f"unknown export {', '.join(bad)!s}.",
                                 f"Choose from {', '.join(WHAT)}.")
        if self.mesh_method not in MESH_METHODS:
            raise UserInputError("export_unknown_mesh_method", f"unknown mesh method {self.mesh_method!r}.",
                                 f"Choose {' or '.join(MESH_METHODS)}.")
        if self.mesh_part not in MESH_PARTS:
            raise UserInputError("export_unknown_mesh_part", f"unknown mesh part {self.mesh_part!r}.",
                                 f"Choose {' or '.join(MESH_PARTS)}.")
        if self.depth_views not in ("all", "train", "test"):
            raise UserInputError("export_bad_depth_views", f"depth_views {self.depth_views!r} is not known.",
                                 "Choose all, train or test.")
        lo, hi = MESH_RESOLUTION_RANGE
        if not lo <= self.mesh_resolution <= hi:
            raise UserInputError("export_bad_resolution", f"mesh resolution {self.mesh_resolution} is out of range.",
                                 f"Use {lo} to {hi} (256 is typical, 512 for detail).")

    def to_dict(self) -> dict:
        """Plain JSON-ready values (tuples as lists)."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}

    def mesh_methods(self) -> list[str]:
        """The mesh methods `what` asks for, each once: "density" and/or "tsdf"."""
        out = [self.mesh_method] if "mesh" in self.what else []
        if "tsdf" in self.what and "tsdf" not in out:
            out.append("tsdf")
        return out
