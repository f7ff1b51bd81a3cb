"""core.functional.cameras, core.functional.rays and core.scene.capture: projection conventions, rays, captures,
normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.functional.cameras import (
    Intrinsics,
    distort,
    pixel_directions_camera,
    project_points,
    stack_params,
    undistort,
)
from core.functional.rays import camera_rays, rays_from_pixels
from core.scene.capture import (
    Capture,
    FrameInfo,
    SceneNormalization,
    choose_scene_mode,
    compute_normalization,
    half_fov,
)

# The fox capture's phone lens (transforms.json), a realistic amount of distortion.
FOX_DIST = dict(k1=0.0578421, k2=-0.0805099, p1=-0.000980296, p2=0.00015575)


def _look_at(eye, target) -> np.ndarray:
    """(4, 4) c2w, OpenCV axes, world up +z."""
    fwd = np.asarray(target, float) - np.asarray(eye, float)
    fwd /= np.linalg.norm(fwd)
    right = np.cross(fwd, [0, 0, 1.0])
    right /= np.linalg.norm(right)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, np.cross(fwd, right), fwd, eye
    return c2w


def _orbit(n: int = 24, radius: float = 3.0, centre=(0.2, -0.1, 0.3)) -> np.ndarray:
    az = np.linspace(0, 2 * np.pi, n, endpoint=False)
    el = np.deg2rad(30 + 15 * np.sin(2 * az))
    eyes = np.asarray(centre) + radius * np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az),
                                                   np.sin(el)], 1)
    return np.stack([_look_at(e, centre) for e in eyes])


def _capture(n: int = 3, size=(16, 12), channels: int = 3, masks: bool = False) -> Capture:
    rng = np.random.default_rng(0)
    w, h = size
    imgs = [rng.integers(0, 256, (h, w, channels), dtype=np.uint8) for _ in range(n)]
    intr = [Intrinsics(20.0, 21.0, w / 2, h / 2, w, h)] * n
    m = [rng.random((h, w)) > 0.5 for _ in range(n)] if masks else None
    return Capture(imgs, intr, _orbit(n), [f"im{i}.png" for i in range(n)], masks=m)


# --- cameras -------------------------------------------------------------------------------------------

def test_distort_undistort_round_trip_fox_lens():
    x, y = torch.meshgrid(torch.linspace(-0.45, 0.45, 41), torch.linspace(-0.8, 0.8, 41), indexing="ij")
    x, y = x.reshape(-1), y.reshape(-1)
    dist = torch.tensor([[FOX_DIST[k] for k in ("k1", "k2", "p1", "p2")]]).expand(len(x), 4)
    xd, yd = distort(x, y, dist)
    assert (xd - x).abs().max() > 1e-3  # the lens really distorts
    xu, yu = undistort(xd, yd, dist)
    assert torch.allclose(xu, x, atol=2e-6) and torch.allclose(yu, y, atol=2e-6)


@pytest.mark.parametrize("dist", [{}, FOX_DIST])
def test_pixel_ray_projects_back_to_pixel_centre(dist):
    intr = Intrinsics(1375.5, 1374.5, 554.6, 965.3, 1080, 1920, **dist)
    u = torch.tensor([0, 17, 540, 1079, 1079, 0])
    v = torch.tensor([0, 1900, 960, 0, 1919, 1919])
    params = stack_params([intr] * len(u))
    d = pixel_directions_camera(u, v, params).double().numpy()
    assert np.allclose(d[:, 2], 1.0)
    uv = project_points(d * 2.5, intr)  # any depth along the ray
    assert np.abs(uv - np.stack([u.numpy() + 0.5, v.numpy() + 0.5], 1)).max() < 2e-3


def test_principal_point_pixel_looks_straight_ahead():
    intr = Intrinsics(100.0, 100.0, 32.5, 24.5, 64, 48)  # pixel (32, 24) has its centre at (32.5, 24.5)
    d = pixel_directions_camera(torch.tensor([32]), torch.tensor([24]), stack_params([intr]))
    assert torch.allclose(d, torch.tensor([[0.0, 0.0, 1.0]]))


def test_scaled_intrinsics_keep_projection_consistent():
    intr = Intrinsics(500.0, 510.0, 321.0, 239.0, 640, 480, **FOX_DIST)
    half = intr.scaled(320, 240)
    pts = np.random.default_rng(1).uniform([-1, -1, 2], [1, 1, 5], (50, 3))
    assert np.allclose(project_points(pts, half), project_points(pts, intr) * 0.5)
    assert (half.k1, half.p2) == (intr.k1, intr.p2)


def test_intrinsics_dict_round_trip_and_params():
    intr = Intrinsics(1.0, 2.0, 3.0, 4.0, 5, 6, 0.1, 0.2, 0.3, 0.4)
    assert Intrinsics.from_dict(intr.to_dict()) == intr
    assert intr.params().tolist() == [1, 2, 3, 4, 0.1, 0.2, 0.3, 0.4]
    assert intr.has_distortion and not Intrinsics(1, 1, 1, 1, 2, 2).has_distortion
    assert np.allclose(intr.matrix(), [[1, 0, 3], [0, 2, 4], [0, 0, 1]])
    packed = stack_params([intr, intr])
    assert packed.shape == (2, 8) and packed.dtype == torch.float32


# --- rays ------------------------------------------------------------------------------------------------

def test_camera_rays_row_major_unit_and_z_scale():
    intr = Intrinsics(30.0, 32.0, 8.0, 6.0, 16, 12)
    c2w = _orbit(5)[3]
    rays = camera_rays(torch.from_numpy(c2w).float(), torch.from_numpy(intr.params()).float(), 16, 12, 7)
    assert len(rays) == 16 * 12 and bool((rays.image_index == 7).all())
    d = rays.directions.double().numpy()
    assert np.allclose(np.linalg.norm(d, axis=1), 1, atol=1e-6)
    # z_scale is the camera-forward component of the unit direction.
    assert np.allclose(d @ c2w[:3, 2], rays.z_scale.double().numpy(), atol=1e-6)
    assert np.allclose(rays.origins.double().numpy(), c2w[:3, 3], atol=1e-6)
    # Ray k = v * W + u goes through the centre of pixel (u, v).
    pts_world = rays.origins.double().numpy() + 2.0 * d
    pts_cam = (pts_world - c2w[:3, 3]) @ c2w[:3, :3]
    uv = project_points(pts_cam, intr)
    vv, uu = np.divmod(np.arange(16 * 12), 16)
    assert np.allclose(uv, np.stack([uu + 0.5, vv + 0.5], 1), atol=1e-4)


def test_z_depth_along_ray_is_distance_times_z_scale():
    intr = Intrinsics(40.0, 40.0, 10.0, 10.0, 20, 20, **FOX_DIST)
    c2w = torch.from_numpy(_orbit(4)[1]).float()
    u, v = torch.tensor([0, 5, 19]), torch.tensor([19, 5, 0])
    b = rays_from_pixels(c2w[None].expand(3, 4, 4), stack_params([intr] * 3), u, v)
    assert bool((b.image_index == -1).all())
    depth = torch.tensor([1.0, 2.5, 4.0])
    pts = b.origins + (depth / b.z_scale)[:, None] * b.directions
    z_cam = ((pts - c2w[:3, 3]) @ c2w[:3, :3])[:, 2]
    assert torch.allclose(z_cam, depth, atol=1e-5)
    assert len(b.slice(1, 3)) == 2 and torch.equal(b.slice(1, 3).z_scale, b.z_scale[1:3])


# --- capture -----------------------------------------------------------------------------------------------

def test_capture_validates_shapes_and_dtypes():
    cap = _capture()
    with pytest.raises(ValueError, match="does not match"):
        Capture(cap.images, [cap.intrinsics[0].scaled(8, 6)] * 3, cap.c2w, cap.names)
    with pytest.raises(ValueError, match="uint8"):
        Capture([im.astype(np.uint16) for im in cap.images], cap.intrinsics, cap.c2w, cap.names)
    with pytest.raises(ValueError, match="3 images"):
        Capture(cap.images, cap.intrinsics, cap.c2w[:2], cap.names)
    assert cap.c2w.dtype == np.float64 and not cap.has_alpha and _capture(channels=4).has_alpha


def test_holdout_split_and_subset():
    cap = _capture(n=17, masks=True)
    train, test = cap.holdout_split(8)
    assert test == [0, 8, 16] and sorted(train + test) == list(range(17))
    assert cap.holdout_split(0) == (list(range(17)), [])
    sub = cap.subset(test)
    assert sub.names == ["im0.png", "im8.png", "im16.png"]
    assert np.array_equal(sub.c2w[1], cap.c2w[8]) and np.array_equal(sub.masks[2], cap.masks[16])


def test_resized_scales_images_intrinsics_and_masks():
    cap = _capture(n=2, size=(40, 30), channels=4, masks=True)
    small = cap.resized(max_side=20)
    assert small.images[0].shape == (15, 20, 4)
    k0, k1 = cap.intrinsics[0], small.intrinsics[0]
    assert (k1.width, k1.height) == (20, 15) and np.isclose(k1.fx, k0.fx / 2) and np.isclose(k1.cy, k0.cy / 2)
    assert small.masks[0].shape == (15, 20) and small.masks[0].dtype == bool
    assert cap.resized(max_side=100).images[0].shape == (30, 40, 4)  # never upscales
    assert cap.resized(factor=0.5).images[1].shape == (15, 20, 4)


def test_frame_info_round_trip():
    fi = FrameInfo("metres", (50.8, -0.1, 12.0), "ENU metres")
    assert FrameInfo.from_dict(fi.to_dict()) == fi
    assert FrameInfo.from_dict(FrameInfo().to_dict()) == FrameInfo()


def test_scene_normalization_round_trip():
    norm = SceneNormalization((1.0, -2.0, 0.5), 0.25, "bounded")
    pts = np.random.default_rng(2).normal(size=(10, 3))
    assert np.allclose(norm.to_world(norm.to_field(pts)), pts)
    c2w = norm.c2w_to_field(_orbit(3))
    assert np.allclose(c2w[:, :3, :3], _orbit(3)[:, :3, :3])
    assert np.allclose(c2w[:, :3, 3], norm.to_field(_orbit(3)[:, :3, 3]))
    assert SceneNormalization.from_dict(norm.to_dict()) == norm
    assert norm.field_extent == 1.0 and SceneNormalization((0, 0, 0), 1, "unbounded").field_extent == 2.0


def test_orbit_is_bounded_and_centred_on_the_look_at_point():
    centre = np.array([0.2, -0.1, 0.3])
    c2w = _orbit(24, 3.0, centre)
    mode, focus = choose_scene_mode(c2w)
    assert mode == "bounded" and np.allclose(focus, centre, atol=1e-6)
    norm = compute_normalization(c2w)
    assert norm.mode == "bounded" and np.allclose(norm.center, centre, atol=1e-6)
    dist = np.linalg.norm(norm.to_field(c2w[:, :3, 3]), axis=1)
    assert np.ptp(dist) < 1e-6 and dist[0] > 1.0  # one sphere, outside the unit box's inscribed sphere
    # ROI radius: what a camera at the median distance sees around the focus (docstring formula).
    narrow = compute_normalization(c2w, fov_half=0.3)
    assert narrow.scale == pytest.approx(1 / (3.0 * np.tan(0.3) * 1.15))
    assert compute_normalization(c2w, roi_radius=0.5).scale == pytest.approx(2.0)


def test_forward_facing_walk_is_unbounded_and_contains_cameras():
    eyes = np.stack([np.linspace(-1, 1, 10), np.zeros(10), np.zeros(10)], 1)
    c2w = np.stack([_look_at(e, e + [0, 5.0, 0]) for e in eyes])
    norm = compute_normalization(c2w)
    assert norm.mode == "unbounded"
    assert np.linalg.norm(norm.to_field(c2w[:, :3, 3]), axis=1).max() <= 1.0


def test_half_fov_is_the_narrowest_half_angle():
    wide = Intrinsics(50.0, 50.0, 50.0, 40.0, 100, 80)  # half angles atan(1) across, atan(0.8) down
    tele = Intrinsics(200.0, 200.0, 50.0, 40.0, 100, 80)
    assert half_fov([wide]) == pytest.approx(np.arctan(0.8))
    assert half_fov([wide, tele]) == pytest.approx(np.arctan(40 / 200))
