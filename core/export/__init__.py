"""Exports of a trained scene: depth maps, meshes (marching cubes, TSDF), point clouds, novel views,
video, and the manifest that lists them. Everything is in the capture's input frame and units."""

from core.export.config import ExportConfig
from core.export.pipeline import export_all
from core.export.views import render_poses

__all__ = ["ExportConfig", "export_all", "render_poses"]
