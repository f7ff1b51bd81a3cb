"""Novel views and video: render_poses at any size, MP4 (H.264, yuv420p) decodes with PyAV."""

from __future__ import annotations

import json

import av
import numpy as np
from fixtures.analytic import AnalyticScene
from PIL import Image

from core.export.paths import orbit_path
from core.export.video import even_frame, write_mp4
from core.export.views import render_poses
from core.functional.cameras import Intrinsics


def decode(path):
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        info = (stream.codec_context.name, stream.codec_context.pix_fmt, stream.width, stream.height)
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    return info, frames


def test_mp4_is_h264_yuv420p_with_every_frame(tmp_path):
    h, w = 47, 65   # odd on purpose: yuv420p needs even sizes
    ramp = np.linspace(0, 255, w)[None, :, None]
    frames = [np.broadcast_to((ramp * (i + 1) / 9) % 256, (h, w, 3)).astype(np.uint8) for i in range(9)]
    assert write_mp4(tmp_path / "v.mp4", frames, fps=12) == 9
    info, decoded = decode(tmp_path / "v.mp4")
    assert info == ("h264", "yuv420p", 66, 48)
    assert len(decoded) == 9
    err = [np.abs(d[:h, :w].astype(float) - f).mean() for d, f in zip(decoded, frames, strict=True)]
    assert max(err) < 6
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]   # no temporary left behind


def test_even_frame_pads_by_repeating_the_edge():
    img = np.arange(3 * 5 * 3, dtype=np.uint8).reshape(3, 5, 3)
    out = even_frame(img)
    assert out.shape == (4, 6, 3) and np.array_equal(out[:3, :5], img) and np.array_equal(out[3, :5], img[2])


def test_render_poses_writes_frames_and_depth_at_the_asked_size(tmp_path):
    scene = AnalyticScene(n_views=6, size=32)
    poses = orbit_path(scene.c2w, np.zeros(3), 3)
    intr = Intrinsics(40.0, 40.0, 22.5, 16.5, 45, 33)
    paths = render_poses(scene, poses, intr, tmp_path, what=("rgb", "depth"))
    names = {p.relative_to(tmp_path).as_posix() for p in paths}
    assert {"views/frame_00000.png", "views/frame_00002.png", "depth/frame_00001.npy",
            "depth/frame_00001.png", "depth_vis/frame_00000.png", "views/cameras.json"} <= names
    assert Image.open(tmp_path / "views" / "frame_00001.png").size == (45, 33)
    depth = np.load(tmp_path / "depth" / "frame_00001.npy")
    assert depth.shape == (33, 45) and np.isfinite(depth).sum() > 50
    cams = json.loads((tmp_path / "views" / "cameras.json").read_text())
    assert np.allclose(cams["c2w"], poses) and cams["intrinsics"][0]["width"] == 45
    meta = json.loads((tmp_path / "depth" / "meta.json").read_text())
    assert set(meta["views"]) == {"frame_00000", "frame_00001", "frame_00002"}
    # The same poses at another resolution, chunked finely, with one intrinsics per pose.
    big = intr.scaled(90, 66)
    render_poses(scene, poses[:1], [big], tmp_path / "big", what=("rgb",), chunk=512)
    img = np.asarray(Image.open(tmp_path / "big" / "views" / "frame_00000.png")).astype(float)
    small = np.asarray(Image.open(tmp_path / "views" / "frame_00000.png")).astype(float)
    assert img.shape == (66, 90, 3)
    assert np.abs(img.reshape(33, 2, 45, 2, 3).mean((1, 3)) - small).mean() < 8
