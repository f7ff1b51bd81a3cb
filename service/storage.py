"""The data directory: one folder per job, atomic writes (temp file + rename), safe paths.

Layout under NERFSERVE_DATA_DIR:
    nerfserve.db           SQLite database (default)
    jobs/<job id>/         core.pipeline.JobDirs (inputs/, sfm/, checkpoints/, outputs/, ...) + log.txt
    uploads/<upload id>/   resumable upload parts (part-000001, ...)
    staging/<random>/      a multipart upload being received; renamed into jobs/<id>/inputs when valid
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from core.atomic import atomic_write_bytes
from core.errors import UserInputError
from core.pipeline import JobDirs

CHUNK = 1024 * 1024


class Storage:
    """Paths under one root directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def ensure(self) -> None:
        for d in ("jobs", "uploads", "staging"):
            (self.root / d).mkdir(parents=True, exist_ok=True)

    def job_dirs(self, job_id: str) -> JobDirs:
        return JobDirs(self.root / "jobs" / job_id)

    def log_path(self, job_id: str) -> Path:
        return self.root / "jobs" / job_id / "log.txt"

    def upload_dir(self, upload_id: str) -> Path:
        return self.root / "uploads" / upload_id

    def new_staging_dir(self) -> Path:
        d = self.root / "staging" / uuid.uuid4().hex
        d.mkdir(parents=True)
        return d

    def remove_job(self, job_id: str) -> None:
        remove_tree(self.root / "jobs" / job_id)

    def clean_staging(self, older_than_s: float = 24 * 3600) -> int:
        """Remove abandoned staging folders (a crash mid-upload); returns how many."""
        n = 0
        now = time.time()
        for d in (self.root / "staging").glob("*"):
            if now - d.stat().st_mtime > older_than_s:
                remove_tree(d)
                n += 1
        return n

    def check_writable(self) -> None:
        """Raise OSError unless a file can be written and renamed under the root."""
        p = self.root / ".readyz"
        atomic_write_bytes(p, b"ok")
        p.unlink()


def remove_tree(path: Path) -> None:
    """Delete a folder: rename it aside first (atomic), then remove it."""
    if not path.exists():
        return
    trash = path.with_name(f".deleted-{path.name}-{uuid.uuid4().hex[:8]}")
    try:
        os.replace(path, trash)
    except OSError:
        trash = path
    shutil.rmtree(trash, ignore_errors=True)


def atomic_write_chunks(path: Path, chunks: Iterable[bytes], limit: int | None = None) -> tuple[int, str]:
    """Write chunks to a temp file beside `path`, then rename. Returns (bytes, sha256 hex).

    limit: raise UserInputError("too_large") once more than `limit` bytes arrive (nothing is left behind).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    h, n = hashlib.sha256(), 0
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                n += len(chunk)
                if limit is not None and n > limit:
                    raise UserInputError("too_large", f"{path.name}: more than {limit} bytes",
                                         "send smaller parts")
                h.update(chunk)
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return n, h.hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def safe_relative(rel: str) -> PurePosixPath:
    """A relative path with no '..', no absolute part, no backslashes or NULs; else UserInputError."""
    bad = (not rel or "\\" in rel or "\x00" in rel or rel.startswith("/")
           or any(part in ("..", "") or ":" in part for part in rel.split("/")))
    if bad:
        raise UserInputError("unsafe_path", f"path {rel!r} is not a plain relative path inside the job",
                             "use a path exactly as listed in the artifacts manifest")
    return PurePosixPath(rel)


def resolve_inside(base: Path, rel: str) -> Path:
    """base/rel, refusing anything that escapes base (also through symlinks)."""
    p = (base / safe_relative(rel)).resolve()
    if not p.is_relative_to(base.resolve()):
        raise UserInputError("unsafe_path", f"path {rel!r} leaves the job's folder",
                             "use a path exactly as listed in the artifacts manifest")
    return p


def safe_filename(name: str) -> str:
    """The base name of an uploaded file, stripped of any directory part and odd characters."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1].strip()
    keep = "".join(c if (c.isalnum() or c in "._- ") else "_" for c in base).strip(" .")
    return keep[:200] or "upload"
