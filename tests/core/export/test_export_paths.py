"""Camera paths: look-at, orbit, spiral, SLERP + spline interpolation, and path-file readers."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fixtures.analytic import orbit_cameras
from scipy.spatial.transform import Rotation

from core.errors import UserInputError
from core.export.paths import (
    OPENGL_TO_OPENCV,
    estimate_up,
    interpolate_path,
    look_at,
    nearest_neighbour_order,
    orbit_path,
    read_camera_path,
    spiral_path,
)

UP = np.array([0.0, 0.0, 1.0])


def assert_rigid(c2w):
    rot = c2w[..., :3, :3]
    assert np.allclose(np.swapaxes(rot, -1, -2) @ rot, np.eye(3), atol=1e-9)
    assert np.allclose(np.linalg.det(rot), 1.0)


def looks_at(c2w, target):
    to_target = target - c2w[:, :3, 3]
    to_target /= np.linalg.norm(to_target, axis=1, keepdims=True)
    return np.einsum("ij,ij->i", c2w[:, :3, 2], to_target)


def test_look_at_is_opencv():
    c2w = look_at([0, -5, 0], [0, 0, 0], UP)     # looking north (+y) with z up
    assert_rigid(c2w)
    assert np.allclose(c2w[:3, 2], [0, 1, 0])    # forward
    assert np.allclose(c2w[:3, 0], [1, 0, 0])    # right = east
    assert np.allclose(c2w[:3, 1], [0, 0, -1])   # down
    assert_rigid(look_at([0, 0, 5], [0, 0, 0], UP))  # straight down the up axis still works


def test_orbit_circles_the_centre_at_the_cameras_distance():
    cams, _ = orbit_cameras(30, 32, radius=3.0)
    centre = np.array([0.0, 0.0, 0.0])
    path = orbit_path(cams, centre, 24)
    assert path.shape == (24, 4, 4)
    assert_rigid(path)
    assert np.all(looks_at(path, centre) > 0.9999)
    assert np.allclose(estimate_up(cams), UP, atol=0.2)
    up = estimate_up(cams)
    flat = path[:, :3, 3] - np.outer(path[:, :3, 3] @ up, up)
    radius = np.linalg.norm(flat, axis=1)
    assert np.ptp(radius) < 1e-9 and np.ptp(path[:, :3, 3] @ up) < 1e-9     # a level circle about `up`
    steps = np.linalg.norm(np.diff(path[:, :3, 3], axis=0), axis=1)
    assert np.ptp(steps) < 1e-9                                          # evenly spaced
    azimuth = lambda p: np.arctan2(p[1], p[0])  # noqa: E731
    assert azimuth(path[0, :3, 3]) == pytest.approx(azimuth(cams[0, :3, 3]), abs=0.05)


def test_spiral_looks_at_the_focus_around_the_mean_camera():
    eyes = np.array([[x, y, 0.0] for x in (-1, 0, 1) for y in (-0.5, 0.5)])
    cams = np.stack([look_at(e + [0, -5, 0], [0, 0, 0], UP) for e in eyes])
    path = spiral_path(cams, np.zeros(3), 40)
    assert path.shape == (40, 4, 4) and np.all(looks_at(path, np.zeros(3)) > 0.9999)
    offset = path[:, :3, 3] - cams[:, :3, 3].mean(0)
    assert np.abs(offset[:, 0]).max() == pytest.approx(1.0, rel=0.05)   # the 90th-percentile x radius
    assert np.abs(offset).max() < 1.5


def test_interpolation_passes_through_keys_with_slerp_and_a_smooth_spline():
    r0 = Rotation.from_euler("z", 0, degrees=True).as_matrix()
    r1 = Rotation.from_euler("z", 90, degrees=True).as_matrix()
    keys = np.tile(np.eye(4), (2, 1, 1))
    keys[0, :3, :3], keys[1, :3, :3] = r0, r1
    keys[1, :3, 3] = [2.0, 0, 0]
    path = interpolate_path(keys, 5)
    assert np.allclose(path[0], keys[0]) and np.allclose(path[-1], keys[1])
    assert np.allclose(path[2, :3, :3], Rotation.from_euler("z", 45, degrees=True).as_matrix())  # SLERP
    assert np.allclose(path[:, :3, 3], np.outer(np.linspace(0, 1, 5), [2.0, 0, 0]))
    cams, _ = orbit_cameras(12, 32)
    order = nearest_neighbour_order(cams[:, :3, 3])
    assert sorted(order) == list(range(12)) and order[0] == 0
    smooth = interpolate_path(cams[order], 200)
    assert_rigid(smooth)
    for k in (0, 199):
        assert np.allclose(smooth[k], cams[order][0 if k == 0 else -1])
    # Smooth: no jump between consecutive frames much larger than the typical step.
    steps = np.linalg.norm(np.diff(smooth[:, :3, 3], axis=0), axis=1)
    assert steps.max() < 4 * np.median(steps)


def test_nerfstudio_camera_path_is_converted_from_opengl(tmp_path):
    c2w_cv = look_at([1.0, -4.0, 2.0], [0, 0, 0], UP)
    c2w_gl = c2w_cv @ OPENGL_TO_OPENCV   # what nerfstudio stores (the flip is its own inverse)
    doc = {"render_height": 480, "render_width": 640, "camera_type": "perspective",
           "camera_path": [{"camera_to_world": c2w_gl.reshape(-1).tolist(), "fov": 60.0, "aspect": 4 / 3},
                           {"camera_to_world": np.eye(4).reshape(-1).tolist(), "fov": 60.0, "aspect": 4 / 3}]}
    (tmp_path / "path.json").write_text(json.dumps(doc))
    path = read_camera_path(tmp_path / "path.json")
    assert np.allclose(path.c2w[0], c2w_cv)
    assert np.allclose(path.c2w[1], np.diag([1.0, -1.0, -1.0, 1.0]))
    k = path.intrinsics[0]
    assert (k.width, k.height) == (640, 480)
    assert k.fy == pytest.approx(240 / np.tan(np.deg2rad(30))) and k.fx == k.fy and k.cx == 320


def test_plain_pose_list_with_shared_intrinsics(tmp_path):
    poses = [look_at([3, 0, 1], [0, 0, 0], UP), look_at([0, 3, 1], [0, 0, 0], UP)]
    intr = {"fx": 100, "fy": 100, "cx": 32, "cy": 24, "width": 64, "height": 48}
    (tmp_path / "p.json").write_text(json.dumps({"c2w": [p.tolist() for p in poses], "intrinsics": intr}))
    path = read_camera_path(tmp_path / "p.json")
    assert len(path) == 2 and np.allclose(path.c2w, poses) and path.intrinsics[1].width == 64
    gl = {"convention": "opengl", "c2w": [(p @ OPENGL_TO_OPENCV).reshape(-1).tolist() for p in poses],
          "intrinsics": [intr, intr]}
    (tmp_path / "gl.json").write_text(json.dumps(gl))
    assert np.allclose(read_camera_path(tmp_path / "gl.json").c2w, poses)


@pytest.mark.parametrize("content, words", [
    ("not json", "cannot be read"),
    (json.dumps({"frames": []}), "neither"),
    (json.dumps({"c2w": [[1, 2, 3]], "intrinsics": {}}), "16"),
    (json.dumps({"c2w": [(2 * np.eye(4)).tolist()], "intrinsics": {}}), "rigid"),
    (json.dumps({"c2w": [np.eye(4).tolist()], "intrinsics": [{}, {}]}), "intrinsics"),
    (json.dumps({"camera_path": [{"camera_to_world": np.eye(4).reshape(-1).tolist(), "fov": 0}]}), "fov"),
])
def test_bad_path_files_say_which_file_and_what_to_do(tmp_path, content, words):
    f = tmp_path / "mypath.json"
    f.write_text(content)
    with pytest.raises(UserInputError) as err:
        read_camera_path(f)
    assert err.value.code == "camera_path_invalid"
    assert "mypath.json" in err.value.message and words in err.value.message and err.value.hint
