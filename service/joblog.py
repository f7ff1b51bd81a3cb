"""Per-job log: an append-only text file, one line per event, read incrementally by line number."""

from __future__ import annotations

import os
import time
from pathlib import Path


def append_log(path: Path, message: str) -> None:
    """Append one line (an O_APPEND write of the whole line, so concurrent writers do not interleave).

    Nothing is written when the job's folder does not exist (never made yet, or the job was deleted).
    """
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    line = f"{stamp} {message.replace(chr(10), ' ')}\n".encode()
    if not path.parent.is_dir():
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def read_log(path: Path, since: int = 0, limit: int = 1000) -> tuple[list[str], int]:
    """Lines [since, since + limit) and the number to pass as `since` next time."""
    if not path.is_file():
        return [], since
    lines = path.read_text(errors="replace").splitlines()
    page = lines[since:since + limit]
    return page, since + len(page)
