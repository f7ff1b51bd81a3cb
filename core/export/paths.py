"""Camera paths for novel views: orbit, spiral, interpolation through the capture, and path files.

Every pose is a (4, 4) float64 camera-to-world in the input frame with OpenCV axes [Right, Down,
Forward]. Files in OpenGL axes (nerfstudio camera paths) are converted here, at the reader.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.interpolate import CubicSpline
from scipy.spatial.transform import Rotation, Slerp

from core.errors import UserInputError
from core.functional.cameras import Intrinsics

OPENGL_TO_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])  # right-multiply a c2w: flips the y and z camera axes


@dataclass
class CameraPath:
    """c2w: (K, 4, 4) float64 input frame, OpenCV axes; intrinsics: K entries (one per frame)."""

    c2w: np.ndarray
    intrinsics: list[Intrinsics]

    def __len__(self) -> int:
        return len(self.c2w)


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray) -> np.ndarray:
    """(4, 4) float64 c2w of a camera at `eye` looking at `target` with world `up` pointing up in the image.

    eye, target, up: (3,) input frame. OpenCV axes: z = forward, x = z cross up (right),
    y = z cross x (down).
    """
    eye, target, up = (np.asarray(a, dtype=np.float64) for a in (eye, target, up))
    z = target - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, up)
    if np.linalg.norm(x) < 1e-9:  # looking straight along `up`: pick any right vector
        x = np.cross(z, np.array([1.0, 0.0, 0.0]) if abs(z[0]) < 0.9 else np.array([0.0, 1.0, 0.0]))
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = x, y, z, eye
    return c2w


def estimate_up(c2w: np.ndarray) -> np.ndarray:
    """(3,) unit world-up estimated as the mean of the cameras' up axes (-y in OpenCV). c2w: (N, 4, 4)."""
    up = -np.asarray(c2w)[:, :3, 1].mean(0)
    n = np.linalg.norm(up)
    return up / n if n > 1e-9 else np.array([0.0, 0.0, 1.0])


def orbit_path(c2w: np.ndarray, center: np.ndarray, n_frames: int) -> np.ndarray:
    """A full circle around `center` (3,) at the cameras' median distance and mean height.

    c2w: (N, 4, 4) the capture's cameras (input frame). Starts at the first camera's azimuth.
    Returns (n_frames, 4, 4) float64, each looking at `center`.
    """
    up = estimate_up(c2w)
    rel = c2w[:, :3, 3] - center
    height = float(np.mean(rel @ up))
    flat = rel - np.outer(rel @ up, up)
    radius = float(np.median(np.linalg.norm(flat, axis=1)))
    e1 = flat[0] / max(np.linalg.norm(flat[0]), 1e-12)
    e2 = np.cross(up, e1)
    angles = np.linspace(0, 2 * np.pi, n_frames, endpoint=False)
    eyes = center + height * up + radius * (np.outer(np.cos(angles), e1) + np.outer(np.sin(angles), e2))
    return np.stack([look_at(e, center, up) for e in eyes])


def spiral_path(c2w: np.ndarray, focus: np.ndarray, n_frames: int, rotations: float = 2.0) -> np.ndarray:
    """An LLFF-style spiral around the mean camera, looking at `focus` (3,); for forward-facing captures.

    The spiral's radii are the 90th percentile of the cameras' offsets from their mean, in the mean
    camera's axes. c2w: (N, 4, 4). Returns (n_frames, 4, 4) float64.
    """
    up = estimate_up(c2w)
    mean_eye = c2w[:, :3, 3].mean(0)
    avg = look_at(mean_eye, focus, up)
    offsets = (c2w[:, :3, 3] - mean_eye) @ avg[:3, :3]  # in the mean camera's axes
    radii = np.maximum(np.percentile(np.abs(offsets), 90, axis=0), 1e-3 * np.linalg.norm(focus - mean_eye))
    theta = np.linspace(0, 2 * np.pi * rotations, n_frames, endpoint=False)
    local = np.stack([np.cos(theta) * radii[0], -np.sin(theta) * radii[1], np.sin(theta / 2) * radii[2]], 1)
    eyes = mean_eye + local @ avg[:3, :3].T
    return np.stack([look_at(e, focus, up) for e in eyes])


def nearest_neighbour_order(positions: np.ndarray) -> list[int]:
    """A greedy tour through (N, 3) positions starting at index 0 (so interpolation does not zig-zag)."""
    left = list(range(1, len(positions)))
    order = [0]
    while left:
        d = np.linalg.norm(positions[left] - positions[order[-1]], axis=1)
        order.append(left.pop(int(np.argmin(d))))
    return order


def interpolate_path(keyframes: np.ndarray, n_frames: int) -> np.ndarray:
    """A smooth path through keyframe poses (K, 4, 4), in the given order.

    Positions follow a cubic spline and rotations SLERP, both parametrised by the cumulative distance
    between keyframes, so the speed is even. The first and last frames are the first and last keys.
    Returns (n_frames, 4, 4) float64.
    """
    keyframes = np.asarray(keyframes, dtype=np.float64)
    if len(keyframes) == 1:
        return np.repeat(keyframes, n_frames, axis=0)
    pos = keyframes[:, :3, 3]
    seg = np.linalg.norm(np.diff(pos, axis=0), axis=1)
    seg = np.maximum(seg, 1e-6 * max(seg.max(), 1e-12) + 1e-12)  # coincident keys: keep times increasing
    times = np.concatenate([[0.0], np.cumsum(seg)])
    t = np.linspace(0.0, times[-1], n_frames)
    out = np.tile(np.eye(4), (n_frames, 1, 1))
    out[:, :3, 3] = CubicSpline(times, pos, bc_type="natural")(t) if len(keyframes) > 2 else (
        np.stack([np.interp(t, times, pos[:, j]) for j in range(3)], 1))
    out[:, :3, :3] = Slerp(times, Rotation.from_matrix(keyframes[:, :3, :3]))(t).as_matrix()
    return out


def _bad_path(path: Path, what: str) -> UserInputError:
    return UserInputError("camera_path_invalid", f"camera path {path.name}: {what}.",
                          "Give a nerfstudio camera-path JSON (camera_path entries with camera_to_world, fov, "
                          "aspect; render_width/height) or {\"c2w\": [4x4, ...], \"intrinsics\": {fx, fy, cx, "
                          "cy, width, height}} with OpenCV axes (or \"convention\": \"opengl\").")


def _as_pose(values, path: Path, i: int) -> np.ndarray:
    m = np.asarray(values, dtype=np.float64)
    if m.size == 16:
        m = m.reshape(4, 4)
    elif m.size == 12:
        m = np.vstack([m.reshape(3, 4), [0, 0, 0, 1]])
    else:
        raise _bad_path(path, f"pose {i} has {m.size} numbers, expected 16 (4x4 row-major) or 12")
    rot = m[:3, :3]
    if not np.all(np.isfinite(m)) or np.abs(rot.T @ rot - np.eye(3)).max() > 1e-3 or np.linalg.det(rot) < 0:
        raise _bad_path(path, f"pose {i} is not a rigid camera-to-world (rotation must be orthonormal, det +1)")
    return m


def _nerfstudio(data: dict, path: Path) -> CameraPath:
    entries = data["camera_path"]
    if not isinstance(entries, list) or not entries:
        raise _bad_path(path, "camera_path is empty")
    height = int(data.get("render_height", 0))
    poses, intrs = [], []
    for i, e in enumerate(entries):
        try:
            fov, aspect = float(e["fov"]), float(e.get("aspect", 0) or 0)
            pose = _as_pose(e["camera_to_world"], path, i) @ OPENGL_TO_OPENCV
        except (KeyError, TypeError, ValueError) as err:
            raise _bad_path(path, f"camera_path[{i}] lacks camera_to_world/fov ({err})") from err
        h = height or 720
        w = int(data.get("render_width", 0)) or round(h * (aspect or 16 / 9))
        if not 0 < fov < 180:
            raise _bad_path(path, f"camera_path[{i}].fov {fov} is not a vertical field of view in degrees")
        fy = 0.5 * h / np.tan(np.deg2rad(fov) / 2)
        poses.append(pose)
        intrs.append(Intrinsics(fy, fy, w / 2, h / 2, w, h))
    return CameraPath(np.stack(poses), intrs)


def _plain(data: dict, path: Path) -> CameraPath:
    convention = data.get("convention", "opencv")
    if convention not in ("opencv", "opengl"):
        raise _bad_path(path, f"convention {convention!r} is neither 'opencv' nor 'opengl'")
    poses = np.stack([_as_pose(m, path, i) for i, m in enumerate(data["c2w"])])
    if convention == "opengl":
        poses = poses @ OPENGL_TO_OPENCV
    raw = data.get("intrinsics")
    raw = [raw] * len(poses) if isinstance(raw, dict) else raw
    if not isinstance(raw, list) or len(raw) != len(poses):
        raise _bad_path(path, "intrinsics must be one object or a list with one object per pose")
    try:
        intrs = [Intrinsics.from_dict(r) for r in raw]
    except TypeError as err:
        raise _bad_path(path, f"intrinsics need fx, fy, cx, cy, width, height ({err})") from err
    return CameraPath(poses, intrs)


def read_camera_path(path: Path) -> CameraPath:
    """Read a camera path file: nerfstudio's format ("camera_path") or ours ("c2w" + "intrinsics").

    nerfstudio: camera_to_world is 16 floats, row-major, OpenGL axes; fov is vertical, in degrees;
    size from render_width/render_height (or render_height and aspect; 720 px high when neither is given).
    Its poses are taken to be in the input frame.
    Ours: "c2w" a list of 4x4 (or 16 floats) in OpenCV axes unless "convention": "opengl".
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise _bad_path(path, f"cannot be read as JSON ({err})") from err
    if not isinstance(data, dict) or ("camera_path" not in data and "c2w" not in data):
        raise _bad_path(path, "has neither a camera_path nor a c2w list")
    return _nerfstudio(data, path) if "camera_path" in data else _plain(data, path)
