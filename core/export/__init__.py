"""Exports of a trained scene: depth maps, meshes (marching cubes, TSDF), point clouds, novel views,
video, and the manifest that lists them. Everything is in the capture's input frame and units.

Entry points: `core.export.pipeline.export_all`, `core.export.views.render_poses`, `core.export.config.ExportConfig`
(this package imports nothing itself, so the config can be read without torch).
"""
