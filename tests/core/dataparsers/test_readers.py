"""core.dataparsers.readers and the COLMAP model functions of core.dataparsers.colmap_adapter: transforms.json and
COLMAP models, real files, real pycolmap."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pycolmap
import pytest
from PIL import Image
from scipy.spatial.transform import Rotation

from core.dataparsers.colmap_adapter import (
    camera_to_intrinsics,
    capture_to_reconstruction,
    model_format,
    read_reconstruction,
    registered_views,
    write_reconstruction,
)
from core.dataparsers.readers import (
    load_capture,
    read_colmap_capture,
    read_transforms_json,
    write_capture,
    write_transforms_json,
)
from core.errors import UserInputError
from core.functional.cameras import Intrinsics
from core.scene.capture import Capture, FrameInfo

DIST = dict(k1=0.05, k2=-0.08, p1=-0.001, p2=0.0002)


def _random_c2w(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c2w = np.tile(np.eye(4), (n, 1, 1))
    c2w[:, :3, :3] = Rotation.random(n, random_state=seed).as_matrix()
    c2w[:, :3, 3] = rng.normal(0, 3, (n, 3))
    return c2w


def _capture(n: int = 4, channels: int = 3, per_frame: bool = False, masks: bool = False) -> Capture:
    rng = np.random.default_rng(1)
    sizes = [(24 + 4 * i, 16 + 2 * i) if per_frame else (24, 16) for i in range(n)]
    imgs = [rng.integers(0, 256, (h, w, channels), dtype=np.uint8) for w, h in sizes]
    intr = [Intrinsics(30.0 + i * per_frame, 31.5, w / 2 + 0.25, h / 2 - 0.5, w, h, **DIST) for i, (w, h) in
            enumerate(sizes)]
    m = [rng.random((h, w)) > 0.3 if i % 2 == 0 else None for i, (w, h) in enumerate(sizes)] if masks else None
    return Capture(imgs, intr, _random_c2w(n), [f"frame_{i:02d}.png" for i in range(n)], masks=m,
                   frame=FrameInfo("metres", (50.82, -0.13, 10.0), "ENU metres"), sequential=True)


def _assert_same_capture(a: Capture, b: Capture, images: bool = True) -> None:
    assert a.names == b.names
    assert np.abs(a.c2w - b.c2w).max() < 1e-9
    for ka, kb in zip(a.intrinsics, b.intrinsics, strict=True):
        assert np.abs(ka.params() - kb.params()).max() < 1e-9 and (ka.width, ka.height) == (kb.width, kb.height)
    if images:
        for ia, ib in zip(a.images, b.images, strict=True):
            assert np.array_equal(ia, ib)


def _focus_point(origins: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """Least-squares point closest to all lines (origin, direction); independent of direction sign."""
    a, b = np.zeros((3, 3)), np.zeros(3)
    for o, d in zip(origins, dirs / np.linalg.norm(dirs, axis=1, keepdims=True), strict=True):
        p = np.eye(3) - np.outer(d, d)
        a += p
        b += p @ o
    return np.linalg.solve(a, b)


# --- the real fox capture (instant-ngp transforms.json with distortion) --------------------------------------

def test_fox_loads_all_present_frames_and_cameras_look_inward(fox_dir):
    cap = load_capture(fox_dir, max_side=96)
    meta = json.loads((fox_dir / "transforms.json").read_text())
    present = sorted(p.name for p in (fox_dir / "images").iterdir())
    assert len(cap) == len(present) == 50 and sorted(cap.names) == present
    assert len(meta["frames"]) > 50  # frames whose images were pruned are skipped
    k = cap.intrinsics[0]
    assert cap.images[0].shape == (96, 54, 3) and (k.width, k.height) == (54, 96)
    assert k.fx == pytest.approx(meta["fl_x"] * 54 / 1080) and k.cy == pytest.approx(meta["cy"] * 96 / 1920)
    assert (k.k1, k.k2, k.p1, k.p2) == (meta["k1"], meta["k2"], meta["p1"], meta["p2"])
    # OpenGL -> OpenCV: +z (forward) of every camera must point at the common point the axes meet.
    origins, fwd = cap.c2w[:, :3, 3], cap.c2w[:, :3, 2]
    focus = _focus_point(origins, fwd)
    to_focus = focus - origins
    to_focus /= np.linalg.norm(to_focus, axis=1, keepdims=True)
    cos = (fwd * to_focus).sum(1)
    assert cos.mean() > 0.95 and cos.min() > 0.8
    # Rotations stay proper and the image "down" axis points roughly opposite the mean camera "up".
    assert np.allclose(np.linalg.det(cap.c2w[:, :3, :3]), 1.0)
    gl = np.asarray(meta["frames"][0]["transform_matrix"])
    assert np.allclose(cap.c2w[0][:3, 1], -gl[:3, 1]) and np.allclose(cap.c2w[0][:3, 0], gl[:3, 0])


def test_fox_missing_images_are_errors_when_asked(fox_dir):
    with pytest.raises(UserInputError, match="0005") as e:
        read_transforms_json(fox_dir / "transforms.json", max_side=32, skip_missing=False)
    assert e.value.code == "image_missing"


# --- transforms.json round trips and flavours -----------------------------------------------------------------

@pytest.mark.parametrize("per_frame", [False, True])
def test_transforms_round_trip(tmp_path, per_frame):
    cap = _capture(per_frame=per_frame, masks=True, channels=4)
    path = write_capture(cap, tmp_path)
    meta = json.loads(path.read_text())
    assert ("fl_x" in meta) != per_frame and ("fl_x" in meta["frames"][0]) == per_frame
    assert meta["camera_model"] == "OPENCV" and meta["nerfserve"]["frame"]["units"] == "metres"
    back = read_transforms_json(tmp_path)
    _assert_same_capture(cap, back)
    assert back.frame == cap.frame and back.sequential
    assert back.has_alpha and back.masks is not None
    for ma, mb in zip(cap.masks, back.masks, strict=True):
        assert (ma is None and mb is None) or np.array_equal(ma, mb)


def test_transforms_are_opengl_on_disk(tmp_path):
    cap = _capture(n=2)
    write_transforms_json(cap, tmp_path / "transforms.json")
    m = np.asarray(json.loads((tmp_path / "transforms.json").read_text())["frames"][1]["transform_matrix"])
    assert np.allclose(m[:3, 0], cap.c2w[1, :3, 0]) and np.allclose(m[:3, 3], cap.c2w[1, :3, 3])
    assert np.allclose(m[:3, 1:3], -cap.c2w[1, :3, 1:3])


def test_blender_style_camera_angle_and_extensionless_paths(tmp_path):
    (tmp_path / "train").mkdir()
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[5:15, 5:25] = (200, 100, 50, 255)
    Image.fromarray(rgba).save(tmp_path / "train" / "r_0.png")
    meta = {"camera_angle_x": 0.8, "frames": [{"file_path": "./train/r_0", "transform_matrix": np.eye(4).tolist(),
                                              "rotation": 0.0}]}
    (tmp_path / "transforms_train.json").write_text(json.dumps(meta))
    cap = read_transforms_json(tmp_path / "transforms_train.json")
    k = cap.intrinsics[0]
    assert k.fx == pytest.approx(0.5 * 30 / np.tan(0.4)) and k.fy == k.fx
    assert (k.cx, k.cy, k.width, k.height) == (15.0, 10.0, 30, 20)
    assert cap.images[0].shape == (20, 30, 4) and np.array_equal(cap.images[0], rgba)
    assert cap.names == ["r_0.png"]
    assert np.allclose(cap.c2w[0], np.diag([1, -1, -1, 1.0]))


def test_nerfstudio_per_frame_intrinsics_and_applied_transform(tmp_path):
    (tmp_path / "images").mkdir()
    c2w_gl = _random_c2w(2, seed=5)
    frames = []
    for i, (w, h) in enumerate([(32, 24), (24, 32)]):
        Image.fromarray(np.full((h, w, 3), 60 * i, np.uint8)).save(tmp_path / "images" / f"f{i}.jpg")
        frames.append({"file_path": f"images/f{i}.jpg", "transform_matrix": c2w_gl[i].tolist(), "fl_x": 40.0 + i,
                       "fl_y": 41.0, "cx": w / 2, "cy": h / 2, "w": w, "h": h, "k1": 0.01 * i})
    meta = {"camera_model": "OPENCV", "frames": frames, "applied_transform": np.eye(4)[:3].tolist()}
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    cap = load_capture(tmp_path / "transforms.json")
    assert [k.width for k in cap.intrinsics] == [32, 24] and cap.intrinsics[1].fx == 41.0
    assert cap.intrinsics[1].k1 == 0.01 and "applied_transform" in cap.frame.description
    assert np.allclose(cap.c2w[:, :3, 1], -c2w_gl[:, :3, 1])


def test_fisheye_and_missing_focal_are_user_errors(tmp_path):
    (tmp_path / "images").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "images" / "a.png")
    frame = {"file_path": "images/a.png", "transform_matrix": np.eye(4).tolist()}
    for extra, code in [({"camera_model": "OPENCV_FISHEYE", "fl_x": 5.0}, "unsupported_camera_model"),
                        ({}, "missing_intrinsics"), ({"fl_x": "wide"}, "transforms_invalid")]:
        (tmp_path / "transforms.json").write_text(json.dumps({**extra, "frames": [frame]}))
        with pytest.raises(UserInputError) as e:
            read_transforms_json(tmp_path)
        assert e.value.code == code and "transforms.json" in e.value.message


def test_unreadable_image_and_bad_json_name_the_file(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "broken.jpg").write_bytes(b"not a jpeg")
    frame = {"file_path": "images/broken.jpg", "transform_matrix": np.eye(4).tolist()}
    (tmp_path / "transforms.json").write_text(json.dumps({"fl_x": 10.0, "frames": [frame]}))
    with pytest.raises(UserInputError, match="broken.jpg") as e:
        read_transforms_json(tmp_path)
    assert e.value.code == "image_unreadable"
    (tmp_path / "transforms.json").write_text("{not json")
    with pytest.raises(UserInputError, match="transforms.json") as e:
        read_transforms_json(tmp_path)
    assert e.value.code == "transforms_invalid"
    (tmp_path / "transforms.json").write_text(json.dumps({"fl_x": 10.0, "frames": [
        {"file_path": "images/nothere.png", "transform_matrix": np.eye(4).tolist()}]}))
    with pytest.raises(UserInputError, match="nothere.png"):
        read_transforms_json(tmp_path)


def _exif_rotated_jpeg(path: Path, stored_wh=(40, 20)) -> None:
    """A JPEG stored landscape with EXIF orientation 6 (display rotated 90 degrees clockwise)."""
    img = np.zeros((stored_wh[1], stored_wh[0], 3), np.uint8)
    img[:, : stored_wh[0] // 4] = 255  # white band on the stored left edge
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(img).save(path, exif=exif, quality=95)


def test_exif_orientation_is_applied_unless_poses_ignored_it(tmp_path):
    (tmp_path / "images").mkdir()
    _exif_rotated_jpeg(tmp_path / "images" / "p.jpg")
    frame = {"file_path": "images/p.jpg", "transform_matrix": np.eye(4).tolist()}
    for (w, h), shape in [((20, 40), (40, 20, 3)), ((40, 20), (20, 40, 3))]:
        (tmp_path / "transforms.json").write_text(json.dumps({"fl_x": 30.0, "w": w, "h": h, "frames": [frame]}))
        cap = read_transforms_json(tmp_path)
        assert cap.images[0].shape == shape
    # Rotated 90 degrees clockwise for display: the stored left band ends up along the top.
    (tmp_path / "transforms.json").write_text(json.dumps({"fl_x": 30.0, "frames": [frame]}))
    img = read_transforms_json(tmp_path).images[0]
    assert img[:5].mean() > 200 and img[-5:].mean() < 50


def test_max_side_and_mismatched_sizes(tmp_path):
    cap = _capture(n=2)
    write_capture(cap, tmp_path)
    small = read_transforms_json(tmp_path, max_side=12)
    assert small.images[0].shape == (8, 12, 3)
    assert small.intrinsics[0].fx == pytest.approx(cap.intrinsics[0].fx / 2)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "images" / cap.names[1])
    with pytest.raises(UserInputError, match=cap.names[1]) as e:
        read_transforms_json(tmp_path)
    assert e.value.code == "image_size_mismatch"


# --- COLMAP models --------------------------------------------------------------------------------------------

def _model_with_points() -> tuple[Capture, pycolmap.Reconstruction]:
    """A capture's model plus 5 points seen by images 1 and 2 (image 3 has no 2D points)."""
    cap = _capture(n=3, per_frame=True)
    rec = capture_to_reconstruction(cap)
    rng = np.random.default_rng(4)
    xys = rng.uniform(0, 16, (5, 2))
    for image_id, offset in ((1, 0.0), (2, 1.0)):
        rec.image(image_id).points2D = pycolmap.Point2DList([pycolmap.Point2D(xy + offset) for xy in xys])
    for i in range(5):
        track = pycolmap.Track()
        track.add_element(1, i)
        track.add_element(2, i)
        pid = rec.add_point3D(rng.normal(size=3), track, rng.integers(0, 256, 3).astype(np.uint8))
        rec.point3D(pid).error = float(rng.random())
    return cap, rec


def _points(rec: pycolmap.Reconstruction) -> dict:
    """{point id: (xyz, rgb, error, track as sorted (image id, point2D idx))}."""
    return {pid: (p.xyz.tolist(), p.color.tolist(), p.error,
                  sorted((e.image_id, e.point2D_idx) for e in p.track.elements)) for pid, p in rec.points3D.items()}


def _points2d(rec: pycolmap.Reconstruction) -> dict:
    """{image name: [(x, y, point3D id or -1)]}."""
    return {im.name: [(*p.xy.tolist(), p.point3D_id if p.has_point3D() else -1) for p in im.points2D]
            for im in rec.images.values()}


@pytest.mark.parametrize("binary", [True, False])
def test_colmap_model_round_trip(tmp_path, binary):
    """Cameras, poses, 2D and 3D points come back as written, in both formats."""
    cap, rec = _model_with_points()
    write_reconstruction(rec, tmp_path, binary=binary)
    assert model_format(tmp_path) == ("bin" if binary else "txt")
    back = read_reconstruction(tmp_path)
    views = registered_views(back)
    assert [v.name for v in views] == cap.names and [v.camera_id for v in views] == [1, 2, 3]
    assert np.abs(np.stack([v.c2w for v in views]) - cap.c2w).max() < 1e-9
    for v, k in zip(views, cap.intrinsics, strict=True):
        assert np.allclose(v.intrinsics.params(), k.params(), atol=0, rtol=1e-15)
        assert (v.intrinsics.width, v.intrinsics.height) == (k.width, k.height)
        assert back.camera(v.camera_id).model.name == "OPENCV"
    assert _points(back) == _points(rec) and len(_points(back)) == 5
    assert _points2d(back) == _points2d(rec) and _points2d(back)[cap.names[2]] == []


def test_colmap_3x_models_without_rigs_and_frames_read(tmp_path):
    """A model as COLMAP before 3.12 wrote it (cameras, images, points3D only) still reads; .bin is preferred."""
    cap, rec = _model_with_points()
    write_reconstruction(rec, tmp_path / "full", binary=True)
    old = tmp_path / "old"
    old.mkdir()
    for name in ("cameras.bin", "images.bin", "points3D.bin"):
        shutil.copy(tmp_path / "full" / name, old / name)
    assert model_format(old) == "bin"
    back = read_reconstruction(old)
    assert back.num_reg_images() == 3 and back.num_points3D() == 5
    assert np.abs(np.stack([v.c2w for v in registered_views(back)]) - cap.c2w).max() < 1e-9
    (old / "images.bin").unlink()
    assert model_format(old) is None
    write_reconstruction(rec, tmp_path / "txt", binary=False)
    (tmp_path / "txt" / "points3D.txt").unlink()
    assert model_format(tmp_path / "txt") is None


def test_colmap_camera_models():
    p = np.array([100.0, 50.0, 40.0, 0.1])

    def camera(model: str, params: np.ndarray) -> pycolmap.Camera:
        return pycolmap.Camera(model=model, width=80, height=100, params=params)

    assert camera_to_intrinsics(camera("SIMPLE_RADIAL", p)) == Intrinsics(100.0, 100.0, 50.0, 40.0, 80, 100, k1=0.1)
    assert camera_to_intrinsics(camera("SIMPLE_PINHOLE", p[:3])).fy == 100.0
    radial = camera_to_intrinsics(camera("RADIAL", np.r_[p, -0.2]))
    assert (radial.k1, radial.k2, radial.p1) == (0.1, -0.2, 0.0)
    opencv = camera_to_intrinsics(camera("OPENCV", np.arange(1.0, 9.0)))
    assert opencv.params().tolist() == list(np.arange(1.0, 9.0))
    with pytest.raises(UserInputError, match="FULL_OPENCV") as e:
        camera_to_intrinsics(camera("FULL_OPENCV", np.zeros(12)))
    assert "OPENCV" in e.value.hint and e.value.code == "unsupported_camera_model"


def test_image_names_with_spaces_and_empty_model(tmp_path):
    """Binary models keep names with spaces; a text model may have no 2D or 3D points at all."""
    k = Intrinsics(9.0, 9.0, 5.0, 4.0, 10, 8)
    cap = Capture([np.zeros((8, 10, 3), np.uint8)], [k], np.eye(4)[None], ["a b.png"])
    write_reconstruction(capture_to_reconstruction(cap), tmp_path / "bin", binary=True)
    back = read_reconstruction(tmp_path / "bin")
    assert [v.name for v in registered_views(back)] == ["a b.png"] and back.num_points3D() == 0
    plain = Capture(cap.images, [k], cap.c2w, ["a.png"])
    write_reconstruction(capture_to_reconstruction(plain), tmp_path / "txt", binary=False)
    back = read_reconstruction(tmp_path / "txt")
    (view,) = registered_views(back)
    assert view.name == "a.png" and view.intrinsics == k and np.allclose(view.c2w, np.eye(4))
    assert back.image(1).num_points2D() == 0 and back.num_points3D() == 0


def test_corrupt_or_missing_model_is_a_user_error(tmp_path):
    with pytest.raises(UserInputError) as e:
        read_reconstruction(tmp_path)
    assert e.value.code == "colmap_model_missing"
    write_reconstruction(_model_with_points()[1], tmp_path / "cut", binary=True)
    data = (tmp_path / "cut" / "images.bin").read_bytes()
    (tmp_path / "cut" / "images.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserInputError, match="unreadable") as e:
        read_reconstruction(tmp_path / "cut")
    assert e.value.code == "colmap_model_corrupt"


def test_tampered_counts_fail_without_exhausting_memory(tmp_path):
    """A points3D.bin claiming a 2^31-long track (16 GiB) is refused, not read into memory."""
    write_reconstruction(_model_with_points()[1], tmp_path, binary=True)
    data = bytearray((tmp_path / "points3D.bin").read_bytes())
    # num_points u64, then point 1: id u64, xyz 3 x f64, rgb 3 x u8, error f64, track length u64.
    offset = 8 + 8 + 24 + 3 + 8
    assert int.from_bytes(data[offset:offset + 8], "little") == 2
    data[offset:offset + 8] = (2**31).to_bytes(8, "little")
    (tmp_path / "points3D.bin").write_bytes(bytes(data))
    with pytest.raises(UserInputError) as e:
        read_reconstruction(tmp_path)
    assert e.value.code == "colmap_model_corrupt"


# --- COLMAP captures and load_capture ---------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["sparse/0", "colmap/sparse/0", "."])
def test_load_capture_finds_colmap_models(tmp_path, layout):
    cap = _capture(n=3, per_frame=True)
    write_capture(cap, tmp_path / "src")
    root = tmp_path / "cap"
    shutil.copytree(tmp_path / "src" / "images", root / "images")
    write_reconstruction(capture_to_reconstruction(cap), root / layout, binary=layout != "sparse/0")
    back = load_capture(root)
    _assert_same_capture(cap, back)
    assert back.frame.description.startswith("COLMAP")
    direct = read_colmap_capture(root / layout, root / "images", max_side=12)
    assert max(direct.images[2].shape[:2]) == 12


def test_capture_to_colmap_shares_equal_cameras():
    rec = capture_to_reconstruction(_capture(n=4))
    assert rec.num_cameras() == 1 and rec.camera(1).model.name == "OPENCV" and rec.num_reg_images() == 4
    rec = capture_to_reconstruction(_capture(n=4, per_frame=True))
    assert rec.num_cameras() == 4
    no_distortion = Intrinsics(30.0, 30.0, 12.0, 8.0, 24, 16)
    cap = Capture([np.zeros((16, 24, 3), np.uint8)], [no_distortion], np.eye(4)[None], ["a.png"])
    assert capture_to_reconstruction(cap).camera(1).model.name == "PINHOLE"


def test_load_capture_says_what_it_looked_for(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(UserInputError, match="sparse/0") as e:
        load_capture(tmp_path)
    assert e.value.code == "capture_not_found" and "transforms.json" in e.value.message
    with pytest.raises(UserInputError):
        load_capture(tmp_path / "nowhere")
