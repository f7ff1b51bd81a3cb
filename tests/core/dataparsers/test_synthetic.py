"""core/dataparsers/synthetic.py: the turntable capture's ground truth is exact and its images are usable."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
import trimesh

from core.dataparsers.readers import load_capture
from core.dataparsers.synthetic import (
    BACKGROUND_GREY,
    SyntheticConfig,
    render_synthetic,
    render_views,
    synth_main,
    turntable_shapes,
)
from core.functional.cameras import Intrinsics
from core.functional.rays import camera_rays


@pytest.fixture(scope="module")
def scene_and_seconds():
    start = time.perf_counter()
    scene = render_synthetic(SyntheticConfig(views=40, size=128))
    return scene, time.perf_counter() - start


@pytest.fixture(scope="module")
def scene(scene_and_seconds):
    return scene_and_seconds[0]


def test_generation_40_views_128px(scene_and_seconds, capsys):
    scene, seconds = scene_and_seconds
    with capsys.disabled():
        print(f"\n[synthetic] 40 views x 128 px rendered in {seconds:.2f} s")
    cap = scene.capture
    assert len(cap) == 40 and len(scene.depth) == 40 and cap.names[0] == "r_000.png"
    assert all(img.shape == (128, 128, 4) and img.dtype == np.uint8 for img in cap.images)
    assert all(d.shape == (128, 128) and d.dtype == np.float32 for d in scene.depth)
    assert seconds < 120  # a loose bound for a loaded 2-core machine; the target is a few seconds


def _pixel_rays(cap, i: int, pixels: np.ndarray):
    """World rays (origins, dirs, z_scale) of selected pixels (K, 2) [u, v], via core.functional.rays (float32)."""
    k = cap.intrinsics[i]
    rays = camera_rays(torch.from_numpy(cap.c2w[i]).float(), torch.from_numpy(k.params()).float(), k.width,
                       k.height)
    idx = pixels[:, 1] * k.width + pixels[:, 0]
    return (rays.origins[idx].double().numpy(), rays.directions[idx].double().numpy(),
            rays.z_scale[idx].double().numpy())


def test_depth_is_ray_hit_distance_times_z_scale(scene):
    """Independent check: cast the pixel rays against the GT mesh with trimesh."""
    rng = np.random.default_rng(0)
    intersector = trimesh.ray.ray_triangle.RayMeshIntersector(scene.mesh)
    checked = 0
    for i in (0, 13, 27):
        pixels = rng.integers(0, 128, (100, 2))
        o, d, z_scale = _pixel_rays(scene.capture, i, pixels)
        locs, ray_idx, _ = intersector.intersects_location(o, d, multiple_hits=False)
        t_mesh = np.full(len(o), np.inf)
        t_mesh[ray_idx] = np.linalg.norm(locs - o[ray_idx], axis=1)
        depth = scene.depth[i][pixels[:, 1], pixels[:, 0]]
        hit = np.isfinite(depth)
        assert np.array_equal(hit, np.isfinite(t_mesh))  # hits and misses agree
        err = np.abs(depth[hit] - t_mesh[hit] * z_scale[hit])
        assert np.median(err) < 2e-4 and err.max() < 3e-3
        checked += hit.sum()
    assert checked > 120


def test_back_projected_depth_lies_on_the_mesh(scene):
    cap = scene.capture
    points = []
    for i in (3, 21, 38):
        k, depth = cap.intrinsics[i], scene.depth[i]
        v, u = np.nonzero(np.isfinite(depth))
        z = depth[v, u].astype(np.float64)
        cam = np.stack([(u + 0.5 - k.cx) / k.fx * z, (v + 0.5 - k.cy) / k.fy * z, z], 1)
        points.append(cam @ cap.c2w[i][:3, :3].T + cap.c2w[i][:3, 3])
    pts = np.concatenate(points)
    pts = pts[np.random.default_rng(0).choice(len(pts), 500, replace=False)]
    _, dist, _ = trimesh.proximity.closest_point(scene.mesh, pts)
    assert np.quantile(dist, 0.99) < 1e-3 and dist.max() < 3e-3
    on_ground = np.abs(pts[:, 2]) < 1e-3
    assert 0.3 < on_ground.mean() < 0.95  # the ground and the objects both seen


def test_images_are_textured_not_flat(scene):
    for img in scene.capture.images[::8]:
        rgb = img[..., :3].astype(np.float64)
        inside = img[..., 3] == 255
        assert inside.mean() > 0.3 and (img[..., 3] == 0).any()  # objects + ground, some empty background
        assert rgb[inside].std(axis=0).min() > 25  # colourful, not flat
        grey = rgb.mean(-1)
        gx, gy = np.diff(grey, axis=1)[:-1, :], np.diff(grey, axis=0)[:, :-1]
        inner = inside[1:, 1:] & inside[:-1, 1:] & inside[1:, :-1]
        energy = np.sqrt(gx ** 2 + gy ** 2)[inner]
        assert energy.mean() > 8  # plenty of fine detail for SIFT
        assert np.median(energy) > 3  # and not only along a few edges


def test_background_is_transparent_grey_and_has_no_depth(scene):
    img, depth = scene.capture.images[5], scene.depth[5]
    empty = img[..., 3] == 0
    assert empty.any() and np.all(img[empty][:, :3] == BACKGROUND_GREY)
    assert np.all(np.isnan(depth[empty]))
    assert np.all(np.isfinite(depth[img[..., 3] == 255]))


def test_colour_is_view_consistent(scene):
    """A surface point seen by two cameras has nearly the same colour (Lambertian, 3D textures)."""
    cap = scene.capture
    a, b = 0, 2
    ka, kb = cap.intrinsics[a], cap.intrinsics[b]
    v, u = np.nonzero(cap.images[a][..., 3] == 255)
    z = scene.depth[a][v, u].astype(np.float64)
    world = np.stack([(u + 0.5 - ka.cx) / ka.fx * z, (v + 0.5 - ka.cy) / ka.fy * z, z], 1)
    world = world @ cap.c2w[a][:3, :3].T + cap.c2w[a][:3, 3]
    in_b = (world - cap.c2w[b][:3, 3]) @ cap.c2w[b][:3, :3]
    ub, vb = in_b[:, 0] / in_b[:, 2] * kb.fx + kb.cx, in_b[:, 1] / in_b[:, 2] * kb.fy + kb.cy
    ui, vi = np.floor(ub).astype(int), np.floor(vb).astype(int)
    ok = (ui >= 0) & (ui < 128) & (vi >= 0) & (vi < 128)
    ui, vi, u, v, zb = ui[ok], vi[ok], u[ok], v[ok], in_b[ok, 2]
    visible = np.abs(scene.depth[b][vi, ui] - zb) < 0.01 * zb
    near_centre = (np.abs(ub[ok] - ui - 0.5) < 0.2) & (np.abs(vb[ok] - vi - 0.5) < 0.2)
    sel = visible & near_centre
    diff = np.abs(cap.images[a][v[sel], u[sel], :3].astype(int) - cap.images[b][vi[sel], ui[sel], :3].astype(int))
    assert sel.sum() > 200
    assert np.median(diff) < 12
    # Pixels matched at random would differ far more: the comparison can fail.
    shuffled = np.abs(cap.images[a][v[sel], u[sel], :3].astype(int)
                      - np.random.default_rng(0).permutation(cap.images[b][vi[sel], ui[sel], :3]).astype(int))
    assert np.median(shuffled) > 2 * np.median(diff) + 10


def test_cameras_orbit_and_look_at_the_objects(scene):
    cfg, c2w = scene.config, scene.capture.c2w
    centres = c2w[:, :3, 3]
    to_target = np.asarray(cfg.look_at) - centres
    dist = np.linalg.norm(to_target, axis=1)
    assert np.all(np.abs(dist - cfg.radius) < 0.2)
    assert np.all((to_target / dist[:, None] * c2w[:, :3, 2]).sum(1) > 0.99)
    elevation = np.degrees(np.arcsin(-c2w[:, 2, 2]))  # forward points down by the elevation angle
    assert elevation.min() > 13 and elevation.max() < 57 and np.ptp(elevation) > 30
    assert np.all(c2w[:, 2, 1] < 0)  # image "down" points down in the world (+z up)
    azimuth = np.unwrap(np.arctan2(centres[:, 1], centres[:, 0]))
    assert abs(abs(azimuth[-1] - azimuth[0]) - 2 * np.pi * 39 / 40) < 0.1  # one full turn


def test_scene_layout_and_meshes(scene):
    lo, hi = scene.objects_mesh.bounds
    assert np.all(np.abs(lo[:2]) < 0.75) and np.all(np.abs(hi[:2]) < 0.75) and lo[2] >= -1e-9
    full_lo, full_hi = scene.mesh.bounds
    assert np.allclose(full_hi[:2] - full_lo[:2], 2.4)
    assert scene.scene_bbox_diagonal == pytest.approx(np.linalg.norm(full_hi - full_lo))
    assert len(scene.mesh.faces) > len(scene.objects_mesh.faces) > 1000


def test_render_views_reproduces_and_handles_distortion(scene):
    cap = scene.capture
    rgba, depth = render_views(scene.shapes, cap.c2w[[4]], cap.intrinsics[4])
    assert np.array_equal(rgba[0], cap.images[4]) and np.array_equal(depth[0], scene.depth[4], equal_nan=True)
    k = cap.intrinsics[4]
    warped = Intrinsics(k.fx, k.fy, k.cx, k.cy, k.width, k.height, k1=-0.2)
    rgba_d, depth_d = render_views(turntable_shapes(0), cap.c2w[4], [warped])
    # Barrel distortion pulls the periphery inward: rays through edge pixels point further out, so the
    # images differ except near the centre, where distortion vanishes.
    assert not np.array_equal(rgba_d[0], cap.images[4])
    assert np.allclose(depth_d[0][60:68, 60:68], scene.depth[4][60:68, 60:68], atol=0.02)


def test_write_and_load_back(tmp_path):
    out = synth_main(tmp_path / "synth", views=5, size=48, seed=3)
    for rel in ("transforms.json", "gt_mesh.ply", "gt_objects.ply", "meta.json", "images/r_004.png",
                "depth/r_004.npy"):
        assert (out / rel).is_file(), rel
    scene = render_synthetic(SyntheticConfig(views=5, size=48, seed=3))
    cap = load_capture(out)
    assert cap.names == scene.capture.names and cap.has_alpha
    assert np.abs(cap.c2w - scene.capture.c2w).max() < 1e-9
    assert cap.intrinsics == scene.capture.intrinsics
    assert all(np.array_equal(x, y) for x, y in zip(cap.images, scene.capture.images, strict=True))
    assert np.array_equal(np.load(out / "depth" / "r_002.npy"), scene.depth[2], equal_nan=True)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["config"]["views"] == 5 and meta["world_up"] == [0.0, 0.0, 1.0]
    assert meta["scene_bbox_diagonal"] == pytest.approx(scene.scene_bbox_diagonal)
    mesh = trimesh.load(out / "gt_mesh.ply")
    assert np.allclose(mesh.bounds, scene.mesh.bounds)
