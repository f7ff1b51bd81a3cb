"""Meshes on the analytic stand-in: marching cubes and TSDF against the true surface, in the input
frame; level rule, cleaning, colours, decimation, files; and the point cloud."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
import trimesh
from fixtures.analytic import AnalyticScene, similarity_matrix
from fixtures.quality import mesh_chamfer
from scipy.spatial.transform import Rotation

from core.export.density_mesh import density_mesh, mesh_box, surface_level
from core.export.grid import VoxelGrid, grid_over_box, scene_occupancy
from core.export.marching import marching_cubes_chunked
from core.export.mesh_clean import (
    cluster_decimate,
    cull_outside_frusta,
    cull_unseen,
    decimate,
    keep_large_components,
)
from core.export.mesh_colour import vertex_colours
from core.export.mesh_write import coloured_mesh, write_mesh
from core.export.pointcloud import backprojected_points, voxel_downsample, write_pointcloud
from core.export.renders import render_scene_cameras
from core.export.tsdf import measured_cells, tsdf_mesh

RES = 112
# A similarity far from the identity: meshes must come out in this frame, not the canonical/field one.
SIM = similarity_matrix(3.0, Rotation.from_euler("zyx", [30, -20, 10], degrees=True).as_matrix(), [10, -5, 2])


@pytest.fixture(scope="module")
def scene() -> AnalyticScene:
    return AnalyticScene(n_views=20, size=56, similarity=SIM, floater=True)


@pytest.fixture(scope="module")
def views(scene):
    return render_scene_cameras(scene, scene.train_indices, max_side=56)


@pytest.fixture(scope="module")
def occupancy(scene):
    return scene_occupancy(scene.occupancy_world())


@pytest.fixture(scope="module")
def density(scene, views, occupancy):
    return density_mesh(scene, views, RES, occupancy)


@pytest.fixture(scope="module")
def gt(scene):
    return scene.gt_mesh()


def test_chamfer_can_fail(gt, scene):
    shifted = gt.copy().apply_translation([0.05 * scene.bbox_diagonal(), 0, 0])
    assert mesh_chamfer(shifted, gt) > 0.02 * scene.bbox_diagonal()
    assert mesh_chamfer(gt, gt) < 0.005 * scene.bbox_diagonal()  # the sampling's noise floor


def test_density_mesh_lies_on_the_true_surface_in_the_input_frame(density, gt, scene):
    mesh, info = density
    assert mesh_chamfer(mesh, gt) <= 0.01 * scene.bbox_diagonal()
    assert np.allclose(mesh.bounds, gt.bounds, atol=0.02 * scene.bbox_diagonal())
    assert mesh.is_watertight and mesh.volume > 0          # closed, faces wound outward
    assert info["level_rule"].startswith("median density")


def test_level_comes_from_the_density_not_a_constant(scene, views):
    # VolSDF density: at the rendered surface (0.33 beta inside) it is ~0.64 / beta.
    level = surface_level(scene, views)
    assert 0.4 / scene.beta < level < 0.9 / scene.beta
    softer = AnalyticScene(n_views=6, size=40, similarity=SIM, beta=2 * scene.beta)
    level_soft = surface_level(softer, render_scene_cameras(softer, [1, 2, 3], 40))
    assert level_soft == pytest.approx(level / 2, rel=0.2)


def test_tsdf_mesh_lies_on_the_true_surface(scene, views, occupancy, gt):
    grid = grid_over_box(*mesh_box(scene), RES)
    mesh, info = tsdf_mesh(grid, views, occupancy=occupancy)
    assert mesh_chamfer(keep_large_components(mesh, 0.05), gt) <= 0.015 * scene.bbox_diagonal()
    assert info["truncation"] == pytest.approx(4 * grid.voxel)


def test_cleaning_drops_the_floater_and_what_no_camera_sees(density, scene):
    mesh, _ = density
    assert len(mesh.split(only_watertight=False)) == 3      # sphere, box, floater
    clean = keep_large_components(mesh, 0.05)
    assert len(clean.split(only_watertight=False)) == 2
    # A box right behind camera 0: only that camera is used for culling, and it cannot see it.
    eye, fwd = scene.c2w[0, :3, 3], scene.c2w[0, :3, 2]
    behind = trimesh.creation.box([0.3, 0.3, 0.3]).apply_translation(eye - 1.0 * fwd)
    both = trimesh.util.concatenate([clean, behind])
    culled = cull_outside_frusta(both, scene.c2w[:1], scene.intrinsics[:1])
    assert len(both.faces) == len(clean.faces) + 12 and len(culled.faces) == len(clean.faces)
    assert not np.any(np.linalg.norm(culled.vertices - (eye - fwd), axis=1) < 0.3)


def test_faces_no_camera_sees_are_culled(density, views, scene):
    clean = keep_large_components(density[0], 0.05)
    # A small box hidden inside the sphere: inside every frustum, but never the visible surface.
    centre = scene.sim[:3, :3] @ np.array([-0.35, 0.0, 0.0]) + scene.sim[:3, 3]
    hidden = trimesh.creation.box([0.1, 0.1, 0.1]).apply_translation(centre)
    both = trimesh.util.concatenate([clean, hidden])
    kept = cull_unseen(both, views, 0.5, abs_tol=3 * density[1]["voxel"])
    assert not np.any(np.linalg.norm(kept.triangles_center - centre, axis=1) < 0.1)
    assert len(kept.faces) >= 0.97 * len(clean.faces)


def test_tsdf_drops_faces_between_unmeasured_voxels():
    observed = np.ones((4, 4, 4), dtype=bool)
    observed[3, 3, 3] = False
    cells = measured_cells(observed)
    assert cells.shape == (3, 3, 3) and not cells[2, 2, 2] and cells.sum() == 26


def test_vertex_colours_are_the_surface_colour(density, views, scene):
    mesh = keep_large_components(density[0], 0.05)
    cols = vertex_colours(np.asarray(mesh.vertices), views, abs_tol=2 * density[1]["voxel"])
    truth = scene._colour_canonical(torch.from_numpy(scene.to_canonical(mesh.vertices))).numpy()
    assert np.mean(np.abs(cols / 255.0 - truth)) < 0.06
    # Given photos, colours come from them (here: the renders inverted).
    photos = [np.round((1 - v.rgb) * 255).astype(np.uint8) for v in views]
    inv = vertex_colours(np.asarray(mesh.vertices), views, photos, abs_tol=2 * density[1]["voxel"])
    assert np.mean(np.abs(inv / 255.0 - (1 - truth))) < 0.06


def test_mesh_files_reload_with_the_same_vertices(density, tmp_path, scene):
    mesh = keep_large_components(density[0], 0.05)
    cols = np.tile(np.array([[200, 30, 60]], np.uint8), (len(mesh.vertices), 1))
    arts = write_mesh(tmp_path, "m", coloured_mesh(mesh, cols), scene.frame)
    assert [a.format for a in arts] == ["ply", "obj", "glb"] and all(a.frame == "input" for a in arts)
    for fmt in ("ply", "obj", "glb"):
        loaded = trimesh.load(tmp_path / "mesh" / f"m.{fmt}")
        if isinstance(loaded, trimesh.Scene):
            loaded = loaded.to_mesh()
        assert len(loaded.vertices) == len(mesh.vertices), fmt
        assert np.allclose(loaded.vertices.mean(0), mesh.vertices.mean(0), atol=1e-4)
        assert np.all(loaded.visual.vertex_colors[:, :3] == [200, 30, 60]), fmt
    # A valid glTF 2.0 binary: magic, version, JSON chunk with the colour attribute.
    blob = (tmp_path / "mesh" / "m.glb").read_bytes()
    magic, version, length = struct.unpack("<4sII", blob[:12])
    assert magic == b"glTF" and version == 2 and length == len(blob)
    chunk_len, chunk_type = struct.unpack("<II", blob[12:20])
    gltf = json.loads(blob[20:20 + chunk_len])
    assert chunk_type == 0x4E4F534A and gltf["asset"]["version"] == "2.0"
    assert "COLOR_0" in gltf["meshes"][0]["primitives"][0]["attributes"]


def test_decimation_meets_the_budget_and_keeps_the_shape():
    sphere = trimesh.creation.icosphere(5)  # 20480 faces
    small = cluster_decimate(sphere, 2000)
    assert 500 <= len(small.faces) <= 2000
    assert mesh_chamfer(small, sphere) < 0.02 * 2 * np.sqrt(3)
    assert len(decimate(sphere, 3000).faces) <= 3000
    assert decimate(sphere, None) is sphere


def test_chunked_marching_cubes_matches_one_chunk():
    grid = VoxelGrid(np.array([-1.0, -1.0, -1.0]), 2 / 39, (40, 40, 40))

    def sample(lo, hi):
        p = grid.points(lo, hi)
        return (0.6 - np.linalg.norm(p, axis=1)).reshape(tuple(h - l for l, h in zip(lo, hi, strict=True)))

    whole = marching_cubes_chunked(grid, sample, 0.0, chunk=100)
    pieces = marching_cubes_chunked(grid, sample, 0.0, chunk=7)
    assert len(pieces.vertices) == len(whole.vertices) and pieces.is_watertight
    assert pieces.volume == pytest.approx(4 / 3 * np.pi * 0.6 ** 3, rel=0.02)


def test_point_cloud_on_the_surface_coloured_and_downsampled(views, scene, tmp_path):
    pts, cols = backprojected_points(views, 0.5)
    sdf = scene.sdf_canonical(torch.from_numpy(scene.to_canonical(pts))).abs().numpy()
    assert np.percentile(sdf, 90) < 2 * scene.beta and cols.shape == pts.shape
    voxel = 0.05 * scene.sim_scale
    down, dcols = voxel_downsample(pts, cols, voxel)
    assert len(down) < len(pts) / 2
    keys = np.floor(down / voxel)
    assert len(np.unique(keys, axis=0)) >= 0.9 * len(down)   # about one point per voxel
    art = write_pointcloud(tmp_path, down, dcols, scene.frame)
    cloud = trimesh.load(art.path)
    assert len(cloud.vertices) == len(down) and np.allclose(cloud.vertices, down)
    assert cloud.colors.shape == (len(down), 4)
