"""core.dataparsers.readers and core.dataparsers.colmap_model: transforms.json and COLMAP models, real files, real
pycolmap."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pycolmap
import pytest
from PIL import Image
from scipy.spatial.transform import Rotation

from core.dataparsers.colmap_model import (
    ColmapCamera,
    ColmapImage,
    ColmapModel,
    camera_to_intrinsics,
    qvec_to_rotmat,
    read_colmap_model,
    rotmat_to_qvec,
    write_colmap_model,
)
from core.dataparsers.readers import (
    capture_to_colmap_model,
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

def test_quaternion_round_trip():
    for rot in Rotation.random(200, random_state=3).as_matrix():
        q = rotmat_to_qvec(rot)
        assert q[0] >= 0 and np.allclose(qvec_to_rotmat(q), rot, atol=1e-12)
    xyzw = Rotation.from_matrix(rot).as_quat()
    assert np.allclose(np.abs(rotmat_to_qvec(rot)), np.abs(np.r_[xyzw[3], xyzw[:3]]))


def _model_with_points() -> ColmapModel:
    model = capture_to_colmap_model(_capture(n=3, per_frame=True))
    rng = np.random.default_rng(4)
    p = 5
    tracks = [np.array([[1, i], [2, i]]) for i in range(p)]
    model.point_ids, model.xyz = np.arange(1, p + 1), rng.normal(size=(p, 3))
    model.rgb, model.error = rng.integers(0, 256, (p, 3)), rng.random(p)
    model.track_length, model.tracks = np.full(p, 2), tracks
    xys = rng.uniform(0, 16, (p, 2))
    model.points2d = {1: (xys, np.arange(1, p + 1)), 2: (xys + 1, np.arange(1, p + 1)),
                      3: (np.zeros((0, 2)), np.zeros(0, np.int64))}
    return model


def _assert_same_model(a: ColmapModel, b: ColmapModel) -> None:
    assert a.cameras.keys() == b.cameras.keys() and a.images.keys() == b.images.keys()
    for i, cam in a.cameras.items():
        assert cam.model == b.cameras[i].model and (cam.width, cam.height) == (b.cameras[i].width, b.cameras[i].height)
        assert np.allclose(cam.params, b.cameras[i].params, atol=0, rtol=1e-15)
    for i, im in a.images.items():
        assert (im.name, im.camera_id) == (b.images[i].name, b.images[i].camera_id)
        assert np.array_equal(im.qvec, b.images[i].qvec) and np.array_equal(im.tvec, b.images[i].tvec)
        assert np.array_equal(a.points2d[i][0], b.points2d[i][0]) and np.array_equal(a.points2d[i][1],
                                                                                       b.points2d[i][1])
    for field in ("point_ids", "xyz", "rgb", "error", "track_length"):
        assert np.array_equal(getattr(a, field), getattr(b, field)), field
    assert all(np.array_equal(x, y) for x, y in zip(a.tracks, b.tracks, strict=True))


@pytest.mark.parametrize("binary", [True, False])
def test_colmap_model_round_trip(tmp_path, binary):
    model = _model_with_points()
    write_colmap_model(model, tmp_path, binary=binary)
    assert (tmp_path / ("images.bin" if binary else "images.txt")).is_file()
    _assert_same_model(model, read_colmap_model(tmp_path))


@pytest.mark.parametrize("binary", [True, False])
def test_pycolmap_reads_what_we_write(tmp_path, binary):
    cap = _capture(n=3, per_frame=True)
    model = _model_with_points()
    write_colmap_model(model, tmp_path, binary=binary)
    rec = pycolmap.Reconstruction(str(tmp_path))
    assert rec.num_reg_images() == 3 and rec.num_points3D() == 5
    for image in rec.images.values():
        i = cap.names.index(image.name)
        w2c = np.eye(4)
        w2c[:3] = image.cam_from_world().matrix()
        assert np.abs(np.linalg.inv(w2c) - cap.c2w[i]).max() < 1e-9
        cam = rec.cameras[image.camera_id]
        assert cam.model.name == "OPENCV" and np.allclose(cam.params, cap.intrinsics[i].params())
    assert rec.points3D[2].track.length() == 2


@pytest.mark.parametrize("binary", [True, False])
def test_we_read_what_pycolmap_writes(tmp_path, binary):
    model = _model_with_points()
    write_colmap_model(model, tmp_path / "ours", binary=True)
    rec = pycolmap.Reconstruction(str(tmp_path / "ours"))
    out = tmp_path / "theirs"
    out.mkdir()
    rec.write_binary(str(out)) if binary else rec.write_text(str(out))
    back = read_colmap_model(out)
    assert back.images.keys() == model.images.keys()
    for i, im in model.images.items():
        assert back.images[i].name == im.name
        assert np.allclose(qvec_to_rotmat(back.images[i].qvec), qvec_to_rotmat(im.qvec), atol=1e-12)
        assert np.allclose(back.images[i].tvec, im.tvec, atol=1e-12)
    order = np.argsort(back.point_ids)
    assert np.allclose(back.xyz[order], model.xyz) and np.array_equal(back.rgb[order], model.rgb)
    assert np.array_equal(back.track_length, np.full(5, 2))


def test_colmap_camera_models():
    p = np.array([100.0, 50.0, 40.0, 0.1])
    assert camera_to_intrinsics(ColmapCamera("SIMPLE_RADIAL", 80, 100, p)) == Intrinsics(
        100.0, 100.0, 50.0, 40.0, 80, 100, k1=0.1)
    assert camera_to_intrinsics(ColmapCamera("SIMPLE_PINHOLE", 80, 100, p[:3])).fy == 100.0
    radial = camera_to_intrinsics(ColmapCamera("RADIAL", 80, 100, np.r_[p, -0.2]))
    assert (radial.k1, radial.k2, radial.p1) == (0.1, -0.2, 0.0)
    opencv = camera_to_intrinsics(ColmapCamera("OPENCV", 80, 100, np.arange(1.0, 9.0)))
    assert opencv.params().tolist() == list(np.arange(1.0, 9.0))
    with pytest.raises(UserInputError, match="FULL_OPENCV") as e:
        camera_to_intrinsics(ColmapCamera("FULL_OPENCV", 80, 100, np.zeros(12)))
    assert "OPENCV" in e.value.hint and e.value.code == "unsupported_camera_model"


def test_images_txt_with_no_points_and_empty_model(tmp_path):
    model = ColmapModel(cameras={3: ColmapCamera("PINHOLE", 10, 8, np.array([9.0, 9.0, 5.0, 4.0]))},
                        images={7: ColmapImage("a b.png", 3, np.array([1.0, 0, 0, 0]), np.zeros(3))})
    write_colmap_model(model, tmp_path, binary=False)
    back = read_colmap_model(tmp_path)
    assert back.images[7].name == "a b.png" and len(back.points2d[7][1]) == 0 and len(back.xyz) == 0


def test_corrupt_or_missing_model_is_a_user_error(tmp_path):
    with pytest.raises(UserInputError) as e:
        read_colmap_model(tmp_path)
    assert e.value.code == "colmap_model_missing"
    write_colmap_model(_model_with_points(), tmp_path, binary=True)
    data = (tmp_path / "images.bin").read_bytes()
    (tmp_path / "images.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserInputError, match="images|end of file") as e:
        read_colmap_model(tmp_path)
    assert e.value.code == "colmap_model_corrupt"


# --- COLMAP captures and load_capture ---------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["sparse/0", "colmap/sparse/0", "."])
def test_load_capture_finds_colmap_models(tmp_path, layout):
    cap = _capture(n=3, per_frame=True)
    write_capture(cap, tmp_path / "src")
    root = tmp_path / "cap"
    shutil.copytree(tmp_path / "src" / "images", root / "images")
    write_colmap_model(capture_to_colmap_model(cap), root / layout, binary=layout != "sparse/0")
    back = load_capture(root)
    _assert_same_capture(cap, back)
    assert back.frame.description.startswith("COLMAP")
    direct = read_colmap_capture(root / layout, root / "images", max_side=12)
    assert max(direct.images[2].shape[:2]) == 12


def test_capture_to_colmap_shares_equal_cameras():
    model = capture_to_colmap_model(_capture(n=4))
    assert len(model.cameras) == 1 and model.cameras[1].model == "OPENCV" and len(model.images) == 4
    model = capture_to_colmap_model(_capture(n=4, per_frame=True))
    assert len(model.cameras) == 4


def test_load_capture_says_what_it_looked_for(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(UserInputError, match="sparse/0") as e:
        load_capture(tmp_path)
    assert e.value.code == "capture_not_found" and "transforms.json" in e.value.message
    with pytest.raises(UserInputError):
        load_capture(tmp_path / "nowhere")
