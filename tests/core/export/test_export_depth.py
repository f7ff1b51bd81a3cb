"""Depth exports on the analytic stand-in scene: z-depth in input-frame units, PNG scale, previews."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from fixtures.analytic import AnalyticScene, similarity_matrix
from PIL import Image
from scipy.spatial.transform import Rotation

from core.export.colormap import turbo
from core.export.depth import decode_depth_png, encode_depth_png, write_depth_meta, write_view_maps
from core.export.renders import render_camera
from core.functional.metrics import depth_abs_rel
from core.functional.projection import backproject_depth
from core.scene.capture import FrameInfo

SCALE = 2.5  # input-frame units per canonical unit: depths must come out in input-frame units


@pytest.fixture(scope="module")
def scene() -> AnalyticScene:
    sim = similarity_matrix(SCALE, Rotation.from_euler("xyz", [20, -35, 60], degrees=True).as_matrix(),
                            [4.0, -1.0, 7.5])
    return AnalyticScene(n_views=8, size=64, similarity=sim, units="metres")


@pytest.fixture(scope="module")
def exported(scene, tmp_path_factory):
    out = tmp_path_factory.mktemp("depth")
    view = render_camera(scene, scene.names[1], scene.c2w[1], scene.intrinsics[1])
    arts, meta = write_view_maps(out, view, scene.frame, opacity_threshold=0.5)
    write_depth_meta(out, {"v_001": meta}, scene.frame, 0.5)
    return out, view, arts


def test_depth_is_z_depth_in_input_frame_units(scene, exported):
    out, view, _ = exported
    depth = np.load(out / "depth" / "v_001.npy")
    assert depth.dtype == np.float32 and depth.shape == (64, 64)
    assert np.all(np.isnan(depth[view.opacity < 0.5])) and np.all(np.isfinite(depth[view.opacity >= 0.5]))
    gt = scene.gt_depth(scene.c2w[1], scene.intrinsics[1])
    assert depth_abs_rel(depth, gt) < 0.01
    assert 1.5 * SCALE < np.nanmedian(depth) < 3.3 * SCALE  # cameras ~2.4 canonical units away


def test_backprojected_depth_lands_on_the_surface_only_as_z_depth(scene, exported):
    out, view, _ = exported
    depth = np.load(out / "depth" / "v_001.npy")
    ok = (view.opacity > 0.99) & np.isfinite(scene.gt_depth(scene.c2w[1], scene.intrinsics[1]))

    def p90_sdf(d):  # 90th percentile of |signed distance| of the back-projected pixels (canonical units)
        pts = backproject_depth(d, view.c2w, view.intrinsics)[ok]
        return float(np.percentile(scene.sdf_canonical(torch.from_numpy(scene.to_canonical(pts))).abs(), 90))

    assert p90_sdf(depth) < 0.01
    # Read as distance along the ray instead, the off-axis pixels miss the surface.
    v, u = np.mgrid[0:64, 0:64] + 0.5
    k = view.intrinsics
    ray_len = np.sqrt(((u - k.cx) / k.fx) ** 2 + ((v - k.cy) / k.fy) ** 2 + 1)
    assert p90_sdf(depth / ray_len) > 3 * p90_sdf(depth)


def test_png_decodes_to_the_npy_within_the_quantisation_step(exported):
    out, _, _ = exported
    meta = json.loads((out / "depth" / "meta.json").read_text())
    assert meta["units"] == "metres" and meta["png"]["formula"] == "depth = png_value * scale"
    for sub, key in (("depth", "scale"), ("depth_median", "median_scale")):
        scale = meta["views"]["v_001"][key]
        png = np.asarray(Image.open(out / sub / "v_001.png"))
        assert png.dtype == np.uint16 or png.dtype == np.int32  # PIL reads I;16 as uint16
        npy = np.load(out / sub / "v_001.npy")
        decoded = decode_depth_png(png.astype(np.uint16), scale)
        assert np.array_equal(np.isnan(decoded), np.isnan(npy))
        assert np.nanmax(np.abs(decoded - npy)) <= 0.5 * scale + 1e-6 * np.nanmax(npy)


def test_encode_depth_png_error_bound_and_invalid_marker():
    rng = np.random.default_rng(0)
    d = rng.uniform(0.01, 80.0, (50, 70)).astype(np.float32)
    d[::7, ::5] = np.nan
    values, scale = encode_depth_png(d)
    assert values.dtype == np.uint16 and values.max() == 65535 and np.all(values[np.isnan(d)] == 0)
    assert np.all(values[np.isfinite(d)] >= 1)
    back = decode_depth_png(values, scale)
    assert np.nanmax(np.abs(back - d)) <= 0.5 * scale + 1e-6 * np.nanmax(d)


def test_median_depth_confidence_and_rgb(scene, exported):
    out, view, _ = exported
    med = np.load(out / "depth_median" / "v_001.npy")
    exp = np.load(out / "depth" / "v_001.npy")
    assert depth_abs_rel(med, exp) < 0.01 and not np.array_equal(np.nan_to_num(med), np.nan_to_num(exp))
    conf = np.asarray(Image.open(out / "confidence" / "v_001.png"))
    assert conf.dtype == np.uint8 and np.abs(conf / 255.0 - view.opacity).max() <= 0.5 / 255 + 1e-6
    rgb = np.asarray(Image.open(out / "rgb" / "v_001.png"))
    assert rgb.shape == (64, 64, 3) and np.abs(rgb / 255.0 - view.rgb).max() <= 0.5 / 255 + 1e-6


def test_preview_has_legend_and_maps_near_to_blue_far_to_red(exported):
    out, view, arts = exported
    vis = np.asarray(Image.open(out / "depth_vis" / "v_001.png"))
    assert vis.shape[0] > 64 and vis.shape[1] == 64          # the legend strip is below the map
    meta = json.loads((out / "depth" / "meta.json").read_text())
    lo, hi = meta["views"]["v_001"]["vis_range"]
    depth = np.load(out / "depth" / "v_001.npy")
    near = np.unravel_index(np.nanargmin(depth), depth.shape)
    far = np.unravel_index(np.nanargmax(depth), depth.shape)
    assert vis[near][2] > vis[near][0] and vis[far][0] > vis[far][2]
    assert lo < hi and lo >= np.nanmin(depth) and hi <= np.nanmax(depth)
    assert np.all(vis[:64][np.isnan(depth)] == 0)
    assert {a.kind for a in arts} == {"depth", "depth_png", "depth_vis", "confidence", "view"}


def test_turbo_endpoints():
    c = turbo(np.array([0.0, 0.5, 1.0]))
    assert c.dtype == np.uint8 and c[0, 2] > c[0, 0] and c[2, 0] > c[2, 2] and c[1, 1] > 200


def test_depth_units_follow_the_frame(tmp_path):
    scene = AnalyticScene(n_views=2, size=16)
    view = render_camera(scene, "a.png", scene.c2w[0], scene.intrinsics[0])
    arts, _ = write_view_maps(tmp_path, view, FrameInfo(units="arbitrary"), 0.5, median=False)
    assert {a.units for a in arts if a.kind == "depth"} == {"arbitrary"}
    assert not (tmp_path / "depth_median").exists() and (tmp_path / "depth" / "a.npy").exists()
