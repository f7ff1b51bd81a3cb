"""Pose estimation with real pycolmap on the CPU: synthetic ground truth, bad captures, real captures.

Default suite: a synthetic orbit (poses Sim3-compared with the truth), unrelated image sets mixed,
textureless images, cancellation, known poses, the CLI. Slow: fox and brighton_beach (../shared/data).
"""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pycolmap
import pytest
from PIL import Image
from scipy.spatial.transform import Rotation

from core.dataparsers import colmap_adapter
from core.dataparsers.colmap_adapter import (
    camera_to_intrinsics,
    capture_to_reconstruction,
    read_reconstruction,
    registered_views,
    rescale_to_image_sizes,
    transform_reconstruction,
)
from core.dataparsers.geo import Sim3, compare_poses, geodetic_to_enu
from core.dataparsers.ingest import IngestConfig, ingest
from core.dataparsers.readers import load_capture, read_transforms_json, write_capture
from core.dataparsers.sfm import SfmConfig, diagnose, estimate_poses, georegister
from core.dataparsers.synthetic import (
    SyntheticConfig,
    orbit_poses,
    pinhole,
    render_synthetic,
    render_views,
    turntable_shapes,
)
from core.errors import Cancelled, UserInputError
from core.functional.cameras import project_points


def _write_images(capture, folder: Path, names: list[str] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for img, name in zip(capture.images, names or capture.names, strict=True):
        Image.fromarray(img).save(folder / name)
    return folder


def _arc(seed: int, first: int, count: int, size: int = 256, views: int = 36) -> list[np.ndarray]:
    """`count` consecutive views (10 degrees apart) of a 36-view orbit of the turntable `seed`."""
    cfg = SyntheticConfig(views=views, size=size, seed=seed, supersample=1)
    c2w = orbit_poses(cfg)[first:first + count]
    return render_views(turntable_shapes(seed), c2w, pinhole(size, cfg.fov_deg), 1)[0]


@pytest.fixture(scope="module")
def orbit():
    """30 views at 256 px of the synthetic turntable (true poses and intrinsics)."""
    return render_synthetic(SyntheticConfig(views=30, size=256, seed=0, supersample=1)).capture


@pytest.fixture(scope="module")
def orbit_result(orbit, tmp_path_factory):
    """SfM on the orbit's images, uploaded with a truncated JPEG and a text file."""
    root = tmp_path_factory.mktemp("orbit")
    folder = _write_images(orbit, root / "upload")
    Image.open(folder / orbit.names[0]).convert("RGB").save(folder / "zz_truncated.jpg")
    data = (folder / "zz_truncated.jpg").read_bytes()
    (folder / "zz_truncated.jpg").write_bytes(data[: len(data) // 3])
    (folder / "notes.txt").write_text("these are my photos")
    events = []
    ingested = ingest([folder], root / "ingest")
    result = estimate_poses(ingested, root / "out", progress=events.append)
    return root, result, events


def test_synthetic_orbit_registers_with_accurate_poses(orbit, orbit_result):
    root, result, _ = orbit_result
    assert sorted(result.capture.names) == sorted(orbit.names)  # every image registers
    idx = [orbit.names.index(n) for n in result.capture.names]
    cmp = compare_poses(result.capture.c2w, orbit.c2w[idx])
    assert cmp.median_rotation_deg < 1.0, cmp.rotation_error_deg
    assert cmp.median_position_fraction < 0.01, cmp.position_error / cmp.extent
    k, k_true = result.capture.intrinsics[0], orbit.intrinsics[0]
    assert (k.width, k.height) == (256, 256) and k.fx == pytest.approx(k_true.fx, rel=0.02)


def test_synthetic_outputs_report_and_progress(orbit, orbit_result):
    root, result, events = orbit_result
    out = root / "out"
    report = json.loads((out / "sfm_report.json").read_text())
    assert report["status"] == "ok" and report["registered"] == report["images"] == 30
    assert report["unregistered"] == [] and report["matcher"] == "exhaustive"
    assert 0 < report["mean_reprojection_error_px"] < 1.5
    assert report["points3d"] > 300 and report["mean_track_length"] > 2.5
    assert {"working_copies", "features", "matching", "mapping", "total"} <= set(report["timings_s"])
    assert report["frame"]["units"] == "arbitrary" and "arbitrary scale" in report["frame"]["description"]
    rejected = dict(map(tuple, report["rejected_inputs"]))
    assert "truncated" in rejected["upload/zz_truncated.jpg"] and "upload/notes.txt" in rejected
    # transforms.json and the COLMAP model describe the same cameras as the returned capture.
    back = load_capture(out)
    assert back.names == result.capture.names
    np.testing.assert_allclose(back.c2w, result.capture.c2w, atol=1e-9)
    assert back.images[0].shape == (256, 256, 4)
    rec = read_reconstruction(out / "colmap" / "sparse" / "0")
    assert rec.num_reg_images() == 30 and rec.num_points3D() == report["points3d"]
    assert all((cam.width, cam.height) == (256, 256) for cam in rec.cameras.values())
    views = registered_views(rec)
    assert [v.name for v in views] == back.names
    np.testing.assert_allclose(np.stack([v.c2w for v in views]), back.c2w, atol=1e-9)
    assert not (out / "colmap" / "database.db").exists()
    # Progress: features i/N, matching, registered k/N, in order, ending at 1.
    steps = [e.metrics.get("step") for e in events]
    assert steps.index("features") < steps.index("matching") < steps.index("mapping")
    assert any(e.message == "features 30/30" for e in events)
    assert any(e.metrics.get("registered") == 30 for e in events)
    fractions = [e.fraction for e in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert all(e.stage == "poses" for e in events)


def test_unrelated_image_sets_keep_the_larger_model(tmp_path, capsys):
    """14 views of one scene and 6 of another (other textures), through the CLI: the 14 register and
    the job goes on; the 6 are listed as unregistered, from an unrelated scene."""
    from cli import main

    folder = tmp_path / "mixed"
    folder.mkdir()
    for i, img in enumerate(_arc(seed=0, first=0, count=14)):
        Image.fromarray(img).save(folder / f"scene_{i:02d}.png")
    for i, img in enumerate(_arc(seed=5, first=0, count=6)):
        Image.fromarray(img).save(folder / f"other_{i}.png")
    assert main(["poses", str(folder), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "registered 14/20 images" in printed and "not registered: other_0.png" in printed
    report = json.loads((tmp_path / "out" / "sfm_report.json").read_text())
    assert load_capture(tmp_path / "out").names == [f"scene_{i:02d}.png" for i in range(14)]
    assert report["status"] == "ok" and report["registered"] == 14 and report["images"] == 20
    left = {u["name"]: u["reason"] for u in report["unregistered"]}
    assert set(left) == {f"other_{i}.png" for i in range(6)}
    assert all("unrelated scene" in why for why in left.values())
    assert report["likely_causes"] == ["unrelated"] and report["models"][0] == 14


def test_video_frames_use_sequential_matching(tmp_path):
    """12 consecutive views 7.5 degrees apart as an MP4: frames are tagged sequential and all register.

    At 10 degrees the last frame's links (82 and 27 inliers) left its registration to chance: CI once
    registered 11 of 12, and so did one of six runs here. At 7.5 degrees they are 154 and 95 (six of six)."""
    import av

    frames = _arc(seed=0, first=0, count=12, views=48)
    truth = orbit_poses(SyntheticConfig(views=48, seed=0))[:12]
    video = tmp_path / "orbit.mp4"
    with av.open(str(video), "w") as out:
        stream = out.add_stream("mpeg4", rate=5)
        stream.width = stream.height = 256
        stream.pix_fmt = "yuv420p"
        stream.options = {"qscale": "2"}
        for img in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(img[..., :3].copy(), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    ingested = ingest([video], tmp_path / "ingest", IngestConfig(video_target_frames=12))
    assert ingested.sequential and len(ingested.names) == 12
    result = estimate_poses(ingested, tmp_path / "out")
    assert result.report["matcher"] == "sequential" and result.report["registered"] == 12
    assert result.capture.sequential and load_capture(tmp_path / "out").sequential
    cmp = compare_poses(result.capture.c2w, truth)
    # A 82.5-degree arc of compressed 256 px frames: 0.55-1.01 degrees over six runs (COLMAP's threads vary it).
    assert cmp.median_rotation_deg < 1.5 and cmp.median_position_fraction < 0.01


def test_textureless_images_fail_with_cause_and_fix(tmp_path):
    folder = tmp_path / "walls"
    folder.mkdir()
    for i in range(5):
        ramp = np.linspace(90 + 5 * i, 160, 160, dtype=np.float32)[None, :, None]
        Image.fromarray(np.broadcast_to(ramp, (120, 160, 3)).astype(np.uint8)).save(folder / f"wall_{i}.png")
    with pytest.raises(UserInputError) as e:
        estimate_poses(ingest([folder], tmp_path / "ingest"), tmp_path / "out")
    assert e.value.code == "sfm_no_model"
    assert "textureless" in e.value.message and "wall_0.png" in e.value.message
    assert "texture" in e.value.hint
    report = json.loads((tmp_path / "out" / "sfm_report.json").read_text())
    assert report["status"] == "failed" and report["error"]["code"] == "sfm_no_model"


def test_cancellation_stops_pose_estimation(orbit, tmp_path):
    folder = _write_images(orbit.subset(list(range(8))), tmp_path / "few")
    seen = []

    def progress(event) -> None:
        seen.append(event.metrics.get("step"))

    with pytest.raises(Cancelled):
        estimate_poses(ingest([folder], tmp_path / "ingest"), tmp_path / "out", progress=progress,
                       should_stop=lambda: "features" in seen)
    assert "mapping" not in seen and not (tmp_path / "out" / "transforms.json").exists()


def test_known_poses_skip_sfm_and_write_the_same_outputs(orbit, tmp_path):
    write_capture(orbit.subset([0, 1, 2, 3]), tmp_path / "upload")
    result = estimate_poses(tmp_path / "upload", tmp_path / "out")
    assert result.report["mode"] == "known_poses" and result.report["registered"] == 4
    np.testing.assert_allclose(result.capture.c2w, orbit.c2w[:4], atol=1e-9)
    views = registered_views(read_reconstruction(tmp_path / "out" / "colmap" / "sparse" / "0"))
    assert [v.name for v in views] == orbit.names[:4]
    np.testing.assert_allclose(np.stack([v.c2w for v in views]), orbit.c2w[:4], atol=1e-9)
    assert read_transforms_json(tmp_path / "out").names == orbit.names[:4]


def test_diagnose_names_each_cause():
    names = [f"i{k}" for k in range(8)]
    stats = colmap_adapter.DatabaseStats(
        keypoints={n: 40 if n == "i4" else 2000 for n in names},
        pairs=[("i0", "i1", 200), ("i1", "i2", 200), ("i2", "i3", 150), ("i6", "i7", 300)])
    sharp = {n: 100.0 for n in names} | {"i5": 5.0}
    causes, reasons = diagnose(names, {"i0", "i1", "i2", "i3"}, stats, sharp, "sequential")
    assert "textureless" in reasons["i4"] and "blur" in reasons["i5"]
    assert "unrelated" in reasons["i6"] and "unrelated" in reasons["i7"]
    assert causes == ["textureless", "blur", "unrelated", "matcher"]
    causes, reasons = diagnose(["a", "b", "c"], {"a", "b"}, colmap_adapter.DatabaseStats(
        {"a": 900, "b": 900, "c": 900}, [("a", "b", 100)]), {}, "exhaustive")
    assert causes == ["overlap"] and "overlap" in reasons["c"]


def test_working_copy_cameras_scale_to_the_stored_images():
    """A point observed in a 450x800 working copy lands on the same spot of the 1080x1920 original."""
    rec = pycolmap.Reconstruction()
    cam = pycolmap.Camera(model="SIMPLE_RADIAL", width=450, height=800, params=[576.5, 225.0, 400.0, 0.02],
                          camera_id=1)
    rec.add_camera_with_trivial_rig(cam)
    pts_cam = np.array([[0.3, -0.5, 2.0], [-0.2, 0.7, 3.0]])
    xy_work = project_points(pts_cam, camera_to_intrinsics(cam))
    rec.add_image_with_trivial_frame(pycolmap.Image(name="a.jpg", keypoints=xy_work, camera_id=1, image_id=1),
                                     pycolmap.Rigid3d())
    scaled = rescale_to_image_sizes(rec, {"a.jpg": (1080, 1920)})
    intr = camera_to_intrinsics(scaled.camera(1))
    assert scaled.camera(1).model.name == "OPENCV" and rec.camera(1).width == 450  # a copy
    assert (intr.width, intr.height) == (1080, 1920) and intr.fx == pytest.approx(576.5 * 2.4)
    xy_stored = np.stack([p.xy for p in scaled.image(1).points2D])
    np.testing.assert_allclose(xy_stored, project_points(pts_cam, intr), atol=1e-9)
    np.testing.assert_allclose(xy_stored, xy_work * 2.4, atol=1e-9)


def test_similarity_transform_moves_cameras_and_points(orbit):
    """transform_reconstruction maps camera centres and points by the Sim3, rotations by its rotation; georegister
    finds that Sim3 from GPS positions of the camera centres and returns the model in ENU metres."""
    cap = orbit.subset(list(range(6)))
    rec = capture_to_reconstruction(cap)
    track = pycolmap.Track()
    xyz = np.array([0.2, -0.1, 0.3])
    pid = rec.add_point3D(xyz, track)
    sim = Sim3(3.5, Rotation.from_euler("xyz", [20, -40, 75], degrees=True).as_matrix(), np.array([5.0, -2.0, 1.0]))
    moved = transform_reconstruction(rec, sim)
    np.testing.assert_allclose(np.stack([v.c2w for v in registered_views(moved)]), sim.apply_c2w(cap.c2w),
                               atol=1e-9)
    np.testing.assert_allclose(moved.point3D(pid).xyz, sim.apply_points(xyz), atol=1e-12)
    np.testing.assert_allclose(np.stack([v.c2w for v in registered_views(rec)]), cap.c2w, atol=1e-9)  # a copy
    enu = {n: sim.apply_points(cap.c2w[i, :3, 3]) for i, n in enumerate(cap.names)}
    aligned, frame, block = georegister(rec, ((50.8, -0.1, 0.0), enu))
    assert block["used"] and block["residual_max_m"] < 1e-6 and frame.units == "metres"
    assert block["scale_colmap_to_metres"] == pytest.approx(3.5)
    np.testing.assert_allclose(np.stack([v.c2w for v in registered_views(aligned)]), sim.apply_c2w(cap.c2w),
                               atol=1e-6)
    same, frame, block = georegister(rec, None)
    assert same is rec and frame.units == "arbitrary" and not block["used"]


def test_cli_poses_single_image_fails_clearly(tmp_path, capsys):
    from cli import main

    Image.fromarray(np.full((32, 32, 3), 100, np.uint8)).save(tmp_path / "only.png")
    assert main(["poses", str(tmp_path / "only.png"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "too_few_images" in err and "1 usable image" in err and "hint:" in err


# --- real captures (slow) ---------------------------------------------------------------------------

@pytest.mark.slow
def test_fox_registers_and_matches_reference_poses(fox_dir, tmp_path):
    """fox at 800 px: all 50 images register; Sim3-aligned to transforms.json within 2 deg / 2 %."""
    ingested = ingest([fox_dir / "images"], tmp_path / "ingest")
    result = estimate_poses(ingested, tmp_path / "out", SfmConfig(max_image_size=800))
    assert result.report["registered"] == 50, result.report["unregistered"]
    ref = read_transforms_json(fox_dir / "transforms.json")
    idx = [ref.names.index(n) for n in result.capture.names]
    cmp = compare_poses(result.capture.c2w, ref.c2w[idx])
    assert cmp.median_rotation_deg < 2.0 and cmp.median_position_fraction < 0.02
    k = result.capture.intrinsics[0]
    assert (k.width, k.height) == (1080, 1920) and k.fx == pytest.approx(ref.intrinsics[0].fx, rel=0.05)
    print(json.dumps({"fox_timings_s": result.report["timings_s"], "rot_deg": cmp.median_rotation_deg,
                      "pos_frac": cmp.median_position_fraction}))


@pytest.mark.slow
def test_brighton_beach_is_metric_enu(brighton_dir, tmp_path):
    """18 DJI images with GPS: all register; the frame is ENU metres; camera distances match GPS.

    Every pair of camera centres matches its GPS distance within 5% (the issue's rule), the median
    within 2%. Images alone leave DJI_0030 (the first photo after a turn) 0.9 m off, a 14 m pair at 5.5%;
    the GPS-prior bundle adjustment (SfmConfig.gps_prior) fixes that at no cost in reprojection error.
    """
    ingested = ingest([brighton_dir], tmp_path / "ingest")
    result = estimate_poses(ingested, tmp_path / "out")
    report = result.report
    assert report["registered"] == 18 and report["matcher"] == "spatial"
    assert report["frame"]["units"] == "metres" and report["geo_registration"]["used"]
    assert report["geo_registration"]["residual_rms_m"] < 1.0
    origin = tuple(report["frame"]["geo_origin"])
    assert result.capture.frame.geo_origin == pytest.approx(origin)
    gps = geodetic_to_enu(np.array([ingested.priors[n].gps for n in result.capture.names]), origin)
    centres = result.capture.c2w[:, :3, 3]
    rel = []
    for i, j in itertools.combinations(range(len(centres)), 2):
        d_gps = np.linalg.norm(gps[i] - gps[j])
        err = abs(np.linalg.norm(centres[i] - centres[j]) - d_gps)
        assert err <= 0.05 * d_gps, (result.capture.names[i], result.capture.names[j], err, d_gps)
        rel.append(err / d_gps)
    assert np.median(rel) < 0.02
    assert report["mean_reprojection_error_px"] < 1.0
    # A nadir survey: every camera looks down (its forward axis points to -z in ENU).
    assert np.all(result.capture.c2w[:, 2, 2] < -0.9)
    print(json.dumps({"brighton_timings_s": report["timings_s"], "max_pair_rel": float(max(rel)),
                      "median_pair_rel": float(np.median(rel)),
                      "mean_reprojection_error_px": report["mean_reprojection_error_px"]}))
    shutil.rmtree(tmp_path / "ingest")
