"""Safe zip extraction: no absolute paths, no `..`, no links, capped member count and size."""

from __future__ import annotations

import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from core.errors import UserInputError

_CHUNK = 1 << 20
_JUNK_PREFIXES = ("__MACOSX/",)


@dataclass(frozen=True)
class ZipLimits:
    """Caps on what one uploaded zip may expand to."""

    max_members: int = 10_000
    max_uncompressed_bytes: int = 20 * 1024**3


def _unsafe(name: str) -> bool:
    """True for member names that could write outside the destination."""
    posix = name.replace("\\", "/")
    if posix.startswith("/") or (len(posix) > 1 and posix[1] == ":"):
        return True
    return ".." in PurePosixPath(posix).parts


def _is_link(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def _fail(zip_path: Path, code: str, message: str, hint: str) -> UserInputError:
    return UserInputError(code, f"{zip_path.name}: {message}", hint)


def check_members(zip_path: Path, infos: list[zipfile.ZipInfo], limits: ZipLimits) -> None:
    bad = [i.filename for i in infos if _unsafe(i.filename) or _is_link(i)]
    if bad:
        raise _fail(zip_path, "zip_unsafe_path",
                    f"refusing members with absolute paths, '..' or links: {', '.join(bad[:5])}"
                    + (f" (+{len(bad) - 5} more)" if len(bad) > 5 else ""),
                    "Zip the image folder itself (e.g. `zip -r photos.zip photos/`), without '..' or links.")
    if len(infos) > limits.max_members:
        raise _fail(zip_path, "zip_too_many_members",
                    f"{len(infos)} members, more than the limit of {limits.max_members}.",
                    "Upload fewer images, or split the capture into several jobs.")
    declared = sum(i.file_size for i in infos)
    if declared > limits.max_uncompressed_bytes:
        raise _fail(zip_path, "zip_too_large",
                    f"expands to {declared / 1e9:.2f} GB, more than the limit of "
                    f"{limits.max_uncompressed_bytes / 1e9:.2f} GB.",
                    "Upload fewer or smaller images.")


def _copy_capped(src: BinaryIO, out: BinaryIO, total: int, cap: int, zip_path: Path) -> int:
    """Copy src to out in chunks; returns the new running total; raises when it passes `cap` bytes."""
    while chunk := src.read(_CHUNK):
        total += len(chunk)
        if total > cap:
            raise _fail(zip_path, "zip_too_large", f"expands past the limit of {cap / 1e9:.2f} GB (its "
                        "declared sizes are wrong).", "Upload fewer or smaller images.")
        out.write(chunk)
    return total


def safe_extract_zip(zip_path: Path, dest: Path, limits: ZipLimits | None = None) -> list[Path]:
    """Extract `zip_path` into `dest`, refusing unsafe members; return the extracted file paths.

    Raises UserInputError (codes zip_invalid, zip_unsafe_path, zip_too_many_members, zip_too_large)
    before writing anything for bad names or declared sizes; the byte cap is also enforced while
    extracting, so a zip that lies about its sizes stops there. macOS resource forks are skipped.
    """
    limits = limits or ZipLimits()
    zip_path, dest = Path(zip_path), Path(dest)
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as e:
        raise _fail(zip_path, "zip_invalid", f"not a readable zip archive ({e}).",
                    "Re-create the archive with a standard zip tool.") from e
    with zf:
        infos = [i for i in zf.infolist() if not i.is_dir()]
        check_members(zip_path, infos, limits)
        dest.mkdir(parents=True, exist_ok=True)
        written, total = [], 0
        for info in infos:
            name = info.filename.replace("\\", "/")
            if name.startswith(_JUNK_PREFIXES):
                continue
            target = dest.joinpath(*PurePosixPath(name).parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with zf.open(info) as src, open(target, "wb") as out:
                    total = _copy_capped(src, out, total, limits.max_uncompressed_bytes, zip_path)
            except (zipfile.BadZipFile, OSError, EOFError) as e:
                raise _fail(zip_path, "zip_invalid", f"member {info.filename} could not be read ({e}).",
                            "Re-create the archive with a standard zip tool.") from e
            written.append(target)
    return written
