"""The export manifest: every file written, with kind, format, frame, units, size and sha256.

`out_dir/manifest.json` is what the service reads to list and verify artifacts:

    {"version": 1, "frame": {units, geo_origin, description}, "files": [
        {"path": "depth/r_000.npy", "kind": "depth", "format": "npy", "frame": "camera",
         "units": "metres", "bytes": 65664, "sha256": "..."} , ...], ...extra}

`frame` of an entry says where its numbers live: "input" (3D geometry in the capture's input frame),
"camera" (per-pixel maps of one camera whose values are in input-frame units), "image" (pictures),
or "none" (metadata).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from core.export.files import write_json_atomic
from core.scene.capture import FrameInfo

MANIFEST_NAME = "manifest.json"
KINDS = ("depth", "depth_png", "depth_vis", "confidence", "mesh", "pointcloud", "view", "video", "meta")


@dataclass(frozen=True)
class Artifact:
    """One written file. path: absolute (or relative to the export root); extra: kind-specific fields."""

    path: Path
    kind: str
    format: str
    frame: str = "none"
    units: str | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown artifact kind {self.kind!r}; expected one of {KINDS}")


def file_sha256(path: Path, block: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def manifest_entry(out_dir: Path, artifact: Artifact) -> dict:
    """The manifest row for one artifact (the file must exist)."""
    path = Path(artifact.path)
    full = path if path.is_absolute() else Path(out_dir) / path
    rel = full.resolve().relative_to(Path(out_dir).resolve()).as_posix()
    return {"path": rel, "kind": artifact.kind, "format": artifact.format, "frame": artifact.frame,
            "units": artifact.units, "bytes": full.stat().st_size, "sha256": file_sha256(full),
            **artifact.extra}


def write_manifest(out_dir: Path, artifacts: list[Artifact], frame: FrameInfo, extra: dict | None = None
                   ) -> dict:
    """Write out_dir/manifest.json (atomically) listing `artifacts`; later duplicates of a path win.

    Returns the manifest as a dict.
    """
    rows: dict[str, dict] = {}
    for a in artifacts:
        row = manifest_entry(out_dir, a)
        rows[row["path"]] = row
    manifest = {"version": 1, "frame": frame.to_dict(), **(extra or {}),
                "files": sorted(rows.values(), key=lambda r: r["path"])}
    write_json_atomic(Path(out_dir) / MANIFEST_NAME, manifest)
    return manifest


def load_manifest(out_dir: Path) -> dict:
    """Read out_dir/manifest.json."""
    return json.loads((Path(out_dir) / MANIFEST_NAME).read_text())


def verify_manifest(out_dir: Path) -> list[str]:
    """Check every listed file exists with the listed size and sha256.

    Returns a list of problems (empty when everything matches), one line per bad file.
    """
    problems = []
    root = Path(out_dir).resolve()
    for row in load_manifest(out_dir)["files"]:
        full = (root / row["path"]).resolve()
        if root not in full.parents:
            problems.append(f"{row['path']}: path escapes the export folder")
        elif not full.is_file():
            problems.append(f"{row['path']}: missing")
        elif full.stat().st_size != row["bytes"]:
            problems.append(f"{row['path']}: {full.stat().st_size} bytes, manifest says {row['bytes']}")
        elif file_sha256(full) != row["sha256"]:
            problems.append(f"{row['path']}: sha256 differs from the manifest")
    return problems
