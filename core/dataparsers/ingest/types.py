"""Ingest configuration and result (the result is also stored as `ingest_report.json`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from core.dataparsers.ingest.archive import ZipLimits
from core.dataparsers.ingest.exif import CameraPrior

REPORT_NAME = "ingest_report.json"


@dataclass
class IngestConfig:
    """How uploads become clean images. Every default works.

    max_side: longest side of the stored images (the training resolution); None keeps each
        original's full resolution. SfM makes its own smaller working copy (core.dataparsers.sfm.SfmConfig).
    max_pixels: images with more pixels are refused as decompression bombs.
    video_target_frames: frames taken from each video (the sharpest of each of that many windows).
    video_min_sharpness_ratio: a video frame sharper than this x the median of the kept frames is kept.
    min_images: fewer usable images than this is an error.
    """

    max_side: int | None = None
    max_pixels: int = 120_000_000
    max_zip_members: int = 10_000
    max_uncompressed_bytes: int = 20 * 1024**3
    video_target_frames: int = 150
    video_min_sharpness_ratio: float = 0.3
    min_images: int = 3
    jpeg_quality: int = 95

    @property
    def zip_limits(self) -> ZipLimits:
        return ZipLimits(self.max_zip_members, self.max_uncompressed_bytes)


@dataclass
class IngestResult:
    """Clean, upright images ready for pose estimation (or a capture with known poses).

    work_dir: the ingest folder; clean images are in work_dir/images.
    image_paths: the stored images, in capture order (file name order; time order for video frames).
    priors: {image name: EXIF camera prior and GPS}.
    rejected: (input file, reason) for every input that could not be used.
    duplicates: (dropped input file, image name kept instead) for exact byte-for-byte copies.
    sequential: True when every image is a frame of one video (sequential matching applies).
    known_poses: a transforms.json (written by ingest into work_dir/known, OpenGL axes, images
        beside it) when the upload carried poses (a transforms.json or a COLMAP model): pose
        estimation is then skipped.
    """

    work_dir: Path
    image_paths: list[Path] = field(default_factory=list)
    priors: dict[str, CameraPrior] = field(default_factory=dict)
    rejected: list[tuple[str, str]] = field(default_factory=list)
    duplicates: list[tuple[str, str]] = field(default_factory=list)
    sequential: bool = False
    known_poses: Path | None = None

    @property
    def image_dir(self) -> Path:
        return self.work_dir / "images"

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.image_paths]

    @property
    def gps_count(self) -> int:
        return sum(1 for p in self.priors.values() if p.gps is not None)

    def _rel(self, path: Path) -> str:
        return Path(path).relative_to(self.work_dir).as_posix()

    def to_dict(self) -> dict:
        """JSON-ready; paths relative to work_dir."""
        return {"images": [self._rel(p) for p in self.image_paths],
                "priors": {k: v.to_dict() for k, v in self.priors.items()},
                "rejected": [list(r) for r in self.rejected],
                "duplicates": [list(d) for d in self.duplicates],
                "sequential": self.sequential,
                "known_poses": self._rel(self.known_poses) if self.known_poses else None}

    def save(self) -> Path:
        path = self.work_dir / REPORT_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2), encoding="utf-8")
        return path

    @staticmethod
    def load(work_dir: Path) -> IngestResult:
        """Read `work_dir/ingest_report.json` (paths in it are relative to `work_dir`)."""
        work_dir = Path(work_dir)
        d = json.loads((work_dir / REPORT_NAME).read_text(encoding="utf-8"))
        priors = {}
        for name, p in d.get("priors", {}).items():
            gps = p.get("gps")
            priors[name] = CameraPrior(**{**p, "gps": tuple(gps) if gps else None})
        known = d.get("known_poses")
        return IngestResult(work_dir=work_dir, image_paths=[work_dir / p for p in d.get("images", [])],
                            priors=priors, rejected=[tuple(r) for r in d.get("rejected", [])],
                            duplicates=[tuple(x) for x in d.get("duplicates", [])],
                            sequential=bool(d.get("sequential", False)),
                            known_poses=work_dir / known if known else None)
