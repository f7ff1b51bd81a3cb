"""MP4 video with PyAV: H.264, yuv420p (plays in every browser), even frame sizes."""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import numpy as np

from core.atomic import atomic_write


def even_frame(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H', W', 3) uint8 with H', W' even (the last row/column repeated if needed);
    yuv420p subsamples chroma 2x2, so H.264 in yuv420p needs even sizes."""
    h, w = image.shape[:2]
    return np.pad(image, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def encode_mp4(path: Path, frames: Iterable[np.ndarray], fps: int = 24, crf: int = 18) -> int:
    """Encode (H, W, 3) uint8 sRGB frames (all one size) into an H.264 yuv420p MP4 at `path`.

    Returns the number of frames written.
    """
    import av  # PyAV only where a video is written: GPU workers without it train and export everything else

    n = 0
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = None
        for frame in frames:
            frame = even_frame(np.ascontiguousarray(frame[..., :3], dtype=np.uint8))
            if stream is None:
                stream = container.add_stream("libx264", rate=Fraction(fps))
                stream.width, stream.height = frame.shape[1], frame.shape[0]
                stream.pix_fmt = "yuv420p"
                stream.options = {"crf": str(crf), "preset": "medium"}
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            n += 1
        if stream is None:
            raise ValueError(f"{Path(path).name}: no frames to encode")
        container.mux(stream.encode(None))
    return n


def write_mp4(path: Path, frames: Iterable[np.ndarray], fps: int = 24, crf: int = 18) -> int:
    """`encode_mp4` into a temporary file renamed to `path` once complete. Returns the frame count."""
    count = []
    atomic_write(Path(path), lambda tmp: count.append(encode_mp4(tmp, frames, fps, crf)))
    return count[0]
