"""Frames from a video (MP4/MOV via PyAV): a target count, the sharpest frame of each window."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np

from core.dataparsers.ingest.sharpness import SHARPNESS_SIDE, laplacian_variance
from core.progress import ProgressEvent, ProgressFn, no_progress

VIDEO_SUFFIXES = {".mp4", ".mov", ".m4v"}


class VideoRejected(Exception):
    """A video that cannot be used; str(e) says why, for the user."""


@dataclass
class VideoFrames:
    """Frames kept from one video, in time order.

    paths: the written JPEG frames. sharpness: Laplacian variance of each kept frame (512 px).
    total_frames: frames in the video. dropped_blurry: names of window-best frames dropped as blurry.
    """

    paths: list[Path] = field(default_factory=list)
    sharpness: list[float] = field(default_factory=list)
    total_frames: int = 0
    dropped_blurry: list[str] = field(default_factory=list)


def _count_frames(path: Path) -> int:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if stream.frames > 0:
            return int(stream.frames)
        return sum(1 for p in container.demux(stream) if p.size > 0)


def _frame_sharpness(frame: av.VideoFrame) -> float:
    scale = min(1.0, SHARPNESS_SIDE / max(frame.width, frame.height))
    w, h = max(3, round(frame.width * scale)), max(3, round(frame.height * scale))
    return laplacian_variance(frame.reformat(width=w, height=h, format="gray").to_ndarray())


def _save(frame: av.VideoFrame, path: Path, jpeg_quality: int) -> None:
    img = frame.to_image()
    rotation = int(getattr(frame, "rotation", 0) or 0)
    if rotation % 360:
        img = img.rotate(rotation, expand=True)  # display-matrix angle, counter-clockwise
    img.save(path, quality=jpeg_quality)


def extract_frames(video_path: Path, out_dir: Path, target_frames: int = 150,
                   min_sharpness_ratio: float = 0.3, jpeg_quality: int = 95, prefix: str | None = None,
                   progress: ProgressFn = no_progress) -> VideoFrames:
    """Split the video into `target_frames` equal windows and keep the sharpest frame of each.

    Frames are written to out_dir/<prefix>_<window:05d>.jpg (prefix: the video's file stem by
    default) at full resolution, upright.
    A kept frame whose sharpness is below `min_sharpness_ratio` x the median of the kept frames is
    dropped as motion-blurred. Raises VideoRejected if the file has no decodable video stream.
    """
    video_path, out_dir = Path(video_path), Path(out_dir)
    prefix = prefix or video_path.stem
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        total = _count_frames(video_path)
        if total == 0:
            raise VideoRejected("the video has no frames")
        windows = max(1, min(target_frames, total))
        result = VideoFrames(total_frames=total)
        best: tuple[float, av.VideoFrame] | None = None
        current = 0

        def flush() -> None:
            if best is None:
                return
            path = out_dir / f"{prefix}_{current:05d}.jpg"
            _save(best[1], path, jpeg_quality)
            result.paths.append(path)
            result.sharpness.append(best[0])

        with av.open(str(video_path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for i, frame in enumerate(container.decode(stream)):
                window = min(windows - 1, i * windows // total)
                if window != current:
                    flush()
                    best, current = None, window
                    progress(ProgressEvent("ingest", min(1.0, i / total), f"video frames {i}/{total}",
                                           {"step": "video", "done": i, "total": total}))
                s = _frame_sharpness(frame)
                if best is None or s > best[0]:
                    best = (s, frame)
            flush()
    except (av.error.FFmpegError, IndexError, OSError) as e:
        raise VideoRejected(f"not a readable video ({e})") from e
    if not result.paths:
        raise VideoRejected("no frame could be decoded")
    return _drop_blurry(result, min_sharpness_ratio)


def _drop_blurry(frames: VideoFrames, min_ratio: float) -> VideoFrames:
    threshold = min_ratio * float(np.median(frames.sharpness))
    keep = [i for i, s in enumerate(frames.sharpness) if s >= threshold]
    for i in sorted(set(range(len(frames.paths))) - set(keep)):
        frames.dropped_blurry.append(frames.paths[i].name)
        frames.paths[i].unlink(missing_ok=True)
    frames.paths = [frames.paths[i] for i in keep]
    frames.sharpness = [frames.sharpness[i] for i in keep]
    return frames
