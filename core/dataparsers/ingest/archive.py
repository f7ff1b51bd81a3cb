"""Safe zip extraction: no absolute paths, no `..`, no links; capped member count, size and compression ratio.

The caps are checked twice: on the sizes the archive declares (before anything is written) and on the bytes
actually written while streaming each member out. On any refusal, what was extracted so far is removed.
"""

from __future__ import annotations

import shutil
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from core.errors import UserInputError

_CHUNK = 1 << 20
_JUNK_PREFIXES = ("__MACOSX/",)
_BOMB_HINT = ("Zip the images as they are (JPEG and PNG barely compress), or upload the images directly; "
              "archives that expand far beyond their size are refused as zip bombs.")


@dataclass(frozen=True)
class ZipLimits:
    """Caps on what one uploaded zip may expand to.

    max_ratio: a member may expand to at most max_ratio x its compressed size + ratio_allowance_bytes.
    """

    max_members: int = 10_000
    max_uncompressed_bytes: int = 20 * 1024**3
    max_ratio: float = 200.0
    ratio_allowance_bytes: int = 1 << 20

    def member_cap(self, info: zipfile.ZipInfo) -> int:
        """The most bytes `info` may expand to under the ratio cap."""
        return int(self.max_ratio * info.compress_size) + self.ratio_allowance_bytes


def _unsafe(name: str) -> bool:
    """True for member names that could write outside the destination."""
    posix = name.replace("\\", "/")
    if posix.startswith("/") or (len(posix) > 1 and posix[1] == ":"):
        return True
    return ".." in PurePosixPath(posix).parts


def _is_link(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def _size(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


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
                    f"expands to {_size(declared)}, more than the limit of {_size(limits.max_uncompressed_bytes)}.",
                    "Upload fewer or smaller images.")
    for i in infos:
        if i.file_size > limits.member_cap(i):
            raise _ratio_error(zip_path, i, i.file_size, limits)


def _ratio_error(zip_path: Path, info: zipfile.ZipInfo, size: int, limits: ZipLimits,
                 partial: bool = False) -> UserInputError:
    ratio = size / max(info.compress_size, 1)
    return _fail(zip_path, "zip_ratio_too_high",
                 f"member {info.filename} expands to {'more than ' if partial else ''}{_size(size)} from "
                 f"{info.compress_size / 1e3:.1f} kB ({ratio:.0f}:1), over the compression ratio limit of "
                 f"{limits.max_ratio:.0f}:1.", _BOMB_HINT)


def _copy_capped(src: BinaryIO, out: BinaryIO, info: zipfile.ZipInfo, total: int, limits: ZipLimits,
                 zip_path: Path) -> int:
    """Copy one member in chunks; return the new running total. Raises as soon as the bytes written pass the
    member's ratio cap or the archive's total cap, whatever the archive declared."""
    member_cap, written = limits.member_cap(info), 0
    while chunk := src.read(_CHUNK):
        written += len(chunk)
        if written > member_cap:
            raise _ratio_error(zip_path, info, written, limits, partial=True)
        if total + written > limits.max_uncompressed_bytes:
            raise _fail(zip_path, "zip_too_large", f"expands past the limit of "
                        f"{_size(limits.max_uncompressed_bytes)} (its declared sizes are wrong).",
                        "Upload fewer or smaller images.")
        out.write(chunk)
    return total + written


class _Undo:
    """What one extraction created (the destination folder or, in an existing one, files and folders)."""

    def __init__(self, dest: Path) -> None:
        top = None
        for p in (dest, *dest.parents):
            if p.exists():
                break
            top = p
        self.top = top  # the outermost folder this extraction creates, if any
        self.paths: list[Path] = []

    def mkdirs(self, folder: Path) -> None:
        if self.top is None:
            new = [p for p in (folder, *folder.parents) if not p.exists()]
            self.paths += new[-1:]
        folder.mkdir(parents=True, exist_ok=True)

    def file(self, path: Path) -> Path:
        if self.top is None:
            self.paths.append(path)
        return path

    def run(self) -> None:
        if self.top is not None:
            shutil.rmtree(self.top, ignore_errors=True)
            return
        for p in reversed(self.paths):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


def safe_extract_zip(zip_path: Path, dest: Path, limits: ZipLimits | None = None) -> list[Path]:
    """Extract `zip_path` into `dest`, refusing unsafe members; return the extracted file paths.

    Raises UserInputError (codes zip_invalid, zip_unsafe_path, zip_too_many_members, zip_too_large,
    zip_ratio_too_high) before writing anything for bad names or declared sizes; the size and ratio caps are
    also enforced on the bytes written, so a zip that lies about its sizes stops there, and everything this
    call extracted (the `dest` folder, when it made it) is removed. macOS resource forks are skipped.
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
        undo = _Undo(dest)
        try:
            undo.mkdirs(dest)
            written, total = [], 0
            for info in infos:
                name = info.filename.replace("\\", "/")
                if name.startswith(_JUNK_PREFIXES):
                    continue
                target = dest.joinpath(*PurePosixPath(name).parts)
                try:
                    undo.mkdirs(target.parent)
                    with zf.open(info) as src, open(undo.file(target), "wb") as out:
                        total = _copy_capped(src, out, info, total, limits, zip_path)
                except (zipfile.BadZipFile, OSError, EOFError) as e:
                    raise _fail(zip_path, "zip_invalid", f"member {info.filename} could not be read ({e}).",
                                "Re-create the archive with a standard zip tool.") from e
                written.append(target)
        except BaseException:
            undo.run()
            raise
    return written
