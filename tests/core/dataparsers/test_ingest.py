"""Capture ingest: safe zips, image hygiene, EXIF priors, video frames, known poses, geo helpers.

All fast (no SfM). Every bad input is checked for a message that names the file and the cause.
"""

from __future__ import annotations

import struct
import zipfile
import zlib
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image, ImageFilter

from core.dataparsers.geo import compare_poses, fit_sim3, geodetic_to_enu, rotation_angle_deg
from core.dataparsers.ingest import IngestConfig, IngestResult, ZipLimits, ingest, safe_extract_zip
from core.dataparsers.ingest.images import HEIC_SUPPORTED
from core.errors import UserInputError


def _texture(seed: int, size: tuple[int, int] = (96, 64)) -> Image.Image:
    """A random RGB texture (W, H) = size: distinct bytes per seed."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
    return Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)


def _photos(folder: Path, n: int, fmt: str = "JPEG", start: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + n):
        p = folder / f"img_{i:03d}.{'jpg' if fmt == 'JPEG' else fmt.lower()}"
        _texture(i).save(p, fmt)
        paths.append(p)
    return paths


def _png_bomb(path: Path, side: int = 30000) -> None:
    """A valid 1-bit PNG of side x side zero pixels (900 MP) in a few hundred kB."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    row = b"\x00" * (1 + (side + 7) // 8)
    comp = zlib.compressobj(9)
    body = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b""))


# --- zips ------------------------------------------------------------------------------------------

def test_zip_with_parent_path_is_refused(tmp_path):
    z = tmp_path / "upload.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("photos/a.jpg", b"x")
        zf.writestr("../evil", b"owned")
    with pytest.raises(UserInputError) as e:
        ingest([z], tmp_path / "work")
    assert e.value.code == "zip_unsafe_path"
    assert "../evil" in e.value.message and "upload.zip" in e.value.message
    assert not (tmp_path / "evil").exists() and not (tmp_path / "work" / "evil").exists()


def test_zip_with_absolute_path_is_refused(tmp_path):
    z = tmp_path / "abs.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("/etc/passwd_copy", b"x")
    with pytest.raises(UserInputError) as e:
        safe_extract_zip(z, tmp_path / "out")
    assert e.value.code == "zip_unsafe_path" and "/etc/passwd_copy" in e.value.message


def test_zip_caps_members_and_size(tmp_path):
    z = tmp_path / "many.zip"
    with zipfile.ZipFile(z, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for i in range(5):
            zf.writestr(f"f{i}.bin", b"\x00" * 100_000)
    with pytest.raises(UserInputError) as e:
        safe_extract_zip(z, tmp_path / "a", ZipLimits(max_members=4))
    assert e.value.code == "zip_too_many_members" and "5 members" in e.value.message
    with pytest.raises(UserInputError) as e:
        safe_extract_zip(z, tmp_path / "b", ZipLimits(max_uncompressed_bytes=300_000))
    assert e.value.code == "zip_too_large"
    files = safe_extract_zip(z, tmp_path / "c", ZipLimits(max_members=5, max_uncompressed_bytes=500_000))
    assert sorted(p.name for p in files) == [f"f{i}.bin" for i in range(5)]


def test_zip_of_photos_is_ingested(tmp_path):
    _photos(tmp_path / "src" / "sub", 4)
    z = tmp_path / "photos.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for p in sorted((tmp_path / "src").rglob("*.jpg")):
            zf.write(p, p.relative_to(tmp_path / "src").as_posix())
        zf.writestr("__MACOSX/sub/._img_000.jpg", b"resource fork")
    result = ingest([z], tmp_path / "work")
    assert result.names == [f"img_{i:03d}.jpg" for i in range(4)]
    assert result.rejected == [] and all(p.is_file() for p in result.image_paths)
    assert not (tmp_path / "work" / "unpacked").exists()


# --- image hygiene ---------------------------------------------------------------------------------

def test_decompression_bomb_png_is_refused(tmp_path):
    folder = tmp_path / "in"
    _photos(folder, 3)
    _png_bomb(folder / "bomb.png")
    assert (folder / "bomb.png").stat().st_size < 2_000_000
    result = ingest([folder], tmp_path / "work")
    reasons = dict(result.rejected)
    assert "decompression bomb" in reasons["in/bomb.png"] and "30000x30000" in reasons["in/bomb.png"]
    assert len(result.image_paths) == 3
    # The limit is configurable, and Pillow's global limit is restored afterwards.
    before = Image.MAX_IMAGE_PIXELS
    _texture(0, (40, 40)).save(folder / "small.png")
    result = ingest([folder], tmp_path / "work2", IngestConfig(max_pixels=5000, min_images=1))
    assert result.names == ["small.png"]
    assert "96x64 = 0.0 MP exceeds the limit of 0.0 MP" in dict(result.rejected)["in/img_000.jpg"]
    assert before == Image.MAX_IMAGE_PIXELS


def test_truncated_jpeg_is_listed_and_skipped(tmp_path):
    folder = tmp_path / "in"
    good = _photos(folder, 4)
    data = good[0].read_bytes()
    (folder / "broken.jpg").write_bytes(data[: len(data) // 2])
    result = ingest([folder], tmp_path / "work")
    assert "broken.jpg" not in result.names and len(result.image_paths) == 4
    (name, reason), = result.rejected
    assert name == "in/broken.jpg" and "truncated" in reason
    saved = IngestResult.load(tmp_path / "work")
    assert saved.rejected == [("in/broken.jpg", reason)] and saved.names == result.names


def test_non_image_files_are_rejected_by_name(tmp_path):
    folder = tmp_path / "in"
    _photos(folder, 3)
    (folder / "notes.txt").write_text("shopping list")
    (folder / "fake.jpg").write_text("not a jpeg at all")
    result = ingest([folder], tmp_path / "work")
    reasons = dict(result.rejected)
    assert "not a supported image" in reasons["in/notes.txt"]
    assert "not an image" in reasons["in/fake.jpg"]
    with pytest.raises(UserInputError) as e:
        ingest([folder / "notes.txt", folder / "fake.jpg"], tmp_path / "work2")
    assert e.value.code == "too_few_images"
    assert "notes.txt" in e.value.message and "fake.jpg" in e.value.message and e.value.hint


def test_single_image_fails_with_a_clear_message(tmp_path):
    (p,) = _photos(tmp_path / "in", 1)
    with pytest.raises(UserInputError) as e:
        ingest([p], tmp_path / "work")
    assert e.value.code == "too_few_images" and "1 usable image" in e.value.message
    assert "at least 3" in e.value.message


def test_ten_copies_of_one_image_are_deduplicated(tmp_path):
    (src,) = _photos(tmp_path / "one", 1)
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(10):
        (folder / f"copy_{i}.jpg").write_bytes(src.read_bytes())
    with pytest.raises(UserInputError) as e:
        ingest([folder], tmp_path / "work")
    assert e.value.code == "too_few_images"
    assert "9 exact duplicate" in e.value.message and "copy_1.jpg" in e.value.message
    _photos(folder, 3, start=10)
    result = ingest([folder], tmp_path / "work")
    assert len(result.image_paths) == 4 and len(result.duplicates) == 9
    assert {kept for _, kept in result.duplicates} == {"copy_0.jpg"}


def _exif_jpeg(path: Path, size=(120, 80), orientation: int = 1, gps: bool = True) -> None:
    img = _texture(7, size)
    exif = Image.Exif()
    exif[0x010F] = "PhoneCo\x00"
    exif[0x0110] = "Model X "
    exif[0x0112] = orientation
    sub = exif.get_ifd(0x8769)
    sub[0x920A] = 4.25
    sub[0xA405] = 26
    if gps:
        g = exif.get_ifd(0x8825)
        g[1], g[2] = "S", (33.0, 52.0, 4.2)
        g[3], g[4] = "W", (70.0, 30.0, 0.0)
        g[5], g[6] = b"\x00", 123.5
    img.save(path, "JPEG", exif=exif)


def test_exif_orientation_and_camera_priors(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    _exif_jpeg(folder / "rotated.jpg", orientation=6)
    _exif_jpeg(folder / "upright.jpg", orientation=1)
    _exif_jpeg(folder / "nogps.jpg", gps=False)
    result = ingest([folder], tmp_path / "work")
    rot = result.priors["rotated.jpg"]
    with Image.open(result.image_dir / "rotated.jpg") as im:
        assert im.size == (80, 120)  # orientation 6: rotated 90 degrees, stored upright
        assert im.getexif().get(0x0112, 1) == 1
    assert (rot.width, rot.height) == (80, 120)
    up = result.priors["upright.jpg"]
    assert (up.make, up.model, up.focal_mm, up.focal_35mm) == ("PhoneCo", "Model X", 4.25, 26.0)
    assert up.focal_px == pytest.approx(26 / 36 * 120)
    lat, lon, alt = up.gps
    assert lat == pytest.approx(-(33 + 52 / 60 + 4.2 / 3600)) and lon == pytest.approx(-70.5)
    assert alt == pytest.approx(123.5)
    assert result.priors["nogps.jpg"].gps is None and result.gps_count == 2
    # The upright JPEG is stored byte for byte (no re-compression).
    assert (result.image_dir / "upright.jpg").read_bytes() == (folder / "upright.jpg").read_bytes()
    # Rotated and upright images come from one device but differ in size: different camera keys.
    assert rot.camera_key() != up.camera_key() == result.priors["nogps.jpg"].camera_key()


def test_max_side_downscales_stored_images_and_focal_prior(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        _exif_jpeg(folder / f"p{i}.jpg", size=(400, 300 + i))
    result = ingest([folder], tmp_path / "work", IngestConfig(max_side=200))
    prior = result.priors["p0.jpg"]
    with Image.open(result.image_paths[0]) as im:
        assert im.size == (200, 150) == (prior.width, prior.height)
    assert prior.focal_px == pytest.approx(26 / 36 * 200)


@pytest.mark.skipif(not HEIC_SUPPORTED, reason="pillow-heif is not installed")
def test_heic_is_converted(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        _texture(i, (64, 48)).save(folder / f"iphone_{i}.heic", "HEIF")
    result = ingest([folder], tmp_path / "work")
    assert result.names == ["iphone_0.jpg", "iphone_1.jpg", "iphone_2.jpg"]
    with Image.open(result.image_paths[0]) as im:
        assert im.format == "JPEG" and im.size == (64, 48)


# --- video -----------------------------------------------------------------------------------------

def _write_video(path: Path, frames: list[np.ndarray], fps: int = 10) -> None:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt = "yuv420p"
        stream.options = {"qscale": "2"}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def test_video_frames_sharpest_per_window_and_sequential(tmp_path):
    base = np.asarray(_texture(3, (320, 240)))
    frames, blurred = [], set()
    for i in range(40):
        shifted = np.roll(base, 3 * i, axis=1)
        img = Image.fromarray(shifted)
        if i % 4 != 1:  # in each window of 4 frames only frame 1 is sharp
            img = img.filter(ImageFilter.GaussianBlur(2.0))
            blurred.add(i)
        frames.append(np.asarray(img))
    # A whole window of heavy blur (frames 32-35) must be dropped as motion blur.
    for i in range(32, 36):
        frames[i] = np.asarray(Image.fromarray(frames[i]).filter(ImageFilter.GaussianBlur(6.0)))
    video = tmp_path / "walk.mp4"
    _write_video(video, frames)
    result = ingest([video], tmp_path / "work", IngestConfig(video_target_frames=10))
    assert result.sequential
    assert result.names == [f"walk_{k:05d}.jpg" for k in range(10) if k != 8]
    assert any("walk_00008.jpg" in name and "blur" in why for name, why in result.rejected)
    # The kept frame of window k is the sharp one, 4k+1: compare with the source frame.
    for k, path in zip([k for k in range(10) if k != 8], result.image_paths, strict=True):
        got = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
        errs = [np.abs(got - frames[j].astype(np.float32)).mean() for j in range(4 * k, 4 * k + 4)]
        assert int(np.argmin(errs)) == 1
    assert result.priors[result.names[0]].sharpness > 0


def test_unreadable_video_is_rejected(tmp_path):
    folder = tmp_path / "in"
    _photos(folder, 3)
    (folder / "clip.mov").write_bytes(b"\x00" * 1000)
    result = ingest([folder], tmp_path / "work")
    assert "not a readable video" in dict(result.rejected)["in/clip.mov"]
    assert not result.sequential


# --- known poses -----------------------------------------------------------------------------------

def test_known_poses_skip_sfm(tmp_path):
    from core.dataparsers.readers import load_capture, write_capture
    from core.functional.cameras import Intrinsics
    from core.scene.capture import Capture

    c2w = np.tile(np.eye(4), (4, 1, 1))
    c2w[:, :3, 3] = np.arange(12, dtype=np.float64).reshape(4, 3)
    images = [np.asarray(_texture(i, (48, 32))) for i in range(4)]
    capture = Capture(images, [Intrinsics(40, 40, 24, 16, 48, 32)] * 4, c2w, [f"v{i}.png" for i in range(4)])
    write_capture(capture, tmp_path / "upload")
    result = ingest([tmp_path / "upload"], tmp_path / "work")
    assert result.known_poses is not None and result.known_poses.name == "transforms.json"
    back = load_capture(result.known_poses)
    np.testing.assert_allclose(back.c2w, capture.c2w, atol=1e-9)
    assert back.names == capture.names
    assert IngestResult.load(tmp_path / "work").known_poses == result.known_poses


# --- geo -------------------------------------------------------------------------------------------

def test_enu_distances_and_directions():
    origin = (46.84, -91.99, 200.0)
    pts = geodetic_to_enu(np.array([origin, (46.841, -91.99, 200.0), (46.84, -91.989, 210.0)]), origin)
    np.testing.assert_allclose(pts[0], 0.0, atol=1e-6)
    assert pts[1][1] == pytest.approx(111.16, rel=2e-3)  # 0.001 deg of latitude
    assert abs(pts[1][0]) < 1e-3 and pts[1][1] > 0  # due north
    # 0.001 deg of longitude at 46.84 N is 111.32 km * cos(lat) / 1000 = 76.2 m east; 10 m up.
    assert pts[2][0] == pytest.approx(76.2, rel=2e-3) and pts[2][2] == pytest.approx(10.0, abs=1e-3)


def test_fit_sim3_recovers_transform_and_pose_errors():
    rng = np.random.default_rng(0)
    src = rng.normal(size=(20, 3))
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    rot = q * np.sign(np.linalg.det(q))
    dst = 2.5 * src @ rot.T + np.array([1.0, -2.0, 3.0])
    sim = fit_sim3(src, dst)
    assert sim.scale == pytest.approx(2.5) and np.allclose(sim.rotation, rot)
    c2w = np.tile(np.eye(4), (20, 1, 1))
    c2w[:, :3, 3] = src
    c2w[:, :3, :3] = [np.linalg.qr(rng.normal(size=(3, 3)))[0] * s for s in (1, -1) * 10]
    c2w[:, :3, :3] *= np.sign(np.linalg.det(c2w[:, :3, :3]))[:, None, None]
    cmp = compare_poses(c2w, sim.apply_c2w(c2w))
    assert cmp.median_rotation_deg < 1e-4 and cmp.median_position_fraction < 1e-9
    tilted = sim.apply_c2w(c2w)
    tilted[0, :3, :3] = tilted[0, :3, :3] @ np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]])
    assert compare_poses(c2w, tilted).rotation_error_deg[0] == pytest.approx(90.0)
    assert rotation_angle_deg(np.eye(3), rot.T @ rot) == pytest.approx(0.0, abs=1e-4)
