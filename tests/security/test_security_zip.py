"""Zip bombs: refused on the declared sizes before anything is written, and on the bytes written while
extracting; a refusal leaves nothing extracted on disk."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from core.dataparsers.ingest import IngestConfig, ZipLimits, archive, ingest, safe_extract_zip
from core.errors import UserInputError
from tests.security.conftest import assert_refused
from tests.service.helpers import png_bytes

MB = 1_000_000


def bomb(size: int = 50 * MB, extra: int = 2) -> bytes:
    """A small zip: a few real images and one member of `size` zero bytes (about 1000:1)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for i in range(extra):
            zf.writestr(f"images/r_{i:03d}.png", png_bytes(i))
        zf.writestr("images/zeros.png", bytes(size))
    return buf.getvalue()


def many(n: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(n):
            zf.writestr(f"images/{i:04d}.png", png_bytes(i, 4))
    return buf.getvalue()


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


def test_a_zip_bomb_is_refused_on_its_declared_ratio_before_anything_is_written(tmp_path):
    z = tmp_path / "bomb.zip"
    z.write_bytes(bomb())
    assert z.stat().st_size < 200_000
    dest = tmp_path / "unpacked" / "000_bomb"
    with pytest.raises(UserInputError) as e:
        safe_extract_zip(z, dest, ZipLimits(max_uncompressed_bytes=10**12))
    assert e.value.code == "zip_ratio_too_high"
    assert "bomb.zip: member images/zeros.png expands to 50.0 MB" in e.value.message
    assert "over the compression ratio limit of 200:1" in e.value.message and "zip bomb" in e.value.hint
    assert not (tmp_path / "unpacked").exists()


def test_a_zip_bomb_past_the_listing_check_stops_mid_stream_and_is_removed(tmp_path, monkeypatch):
    """Were the declared sizes to slip past the listing check, the bytes written are capped and removed."""
    monkeypatch.setattr(archive, "check_members", lambda *a: None)
    z = tmp_path / "bomb.zip"
    z.write_bytes(bomb())
    dest = tmp_path / "unpacked" / "000_bomb"
    at_refusal: list[dict[str, int]] = []
    undo = archive._Undo.run

    def run(self):
        at_refusal.append({p: (dest / p).stat().st_size for p in files_under(dest) if (dest / p).is_file()})
        undo(self)

    monkeypatch.setattr(archive._Undo, "run", run)
    with pytest.raises(UserInputError) as e:
        safe_extract_zip(z, dest, ZipLimits(max_uncompressed_bytes=10**12, max_ratio=50))
    assert e.value.code == "zip_ratio_too_high"
    assert "member images/zeros.png expands to more than" in e.value.message and "limit of 50:1" in e.value.message
    assert not (tmp_path / "unpacked").exists()
    partial = at_refusal[-1]["images/zeros.png"]  # it was being written when the cap hit
    assert 0 < partial <= 50 * z.stat().st_size + (1 << 20)

    with pytest.raises(UserInputError) as e:  # the running total cap, on bytes written
        safe_extract_zip(z, dest, ZipLimits(max_uncompressed_bytes=5 * MB, max_ratio=10**6))
    assert e.value.code == "zip_too_large" and "expands past the limit of 5.0 MB" in e.value.message
    assert not (tmp_path / "unpacked").exists()


def test_a_refusal_in_an_existing_folder_removes_only_what_it_extracted(tmp_path, monkeypatch):
    monkeypatch.setattr(archive, "check_members", lambda *a: None)
    z = tmp_path / "bomb.zip"
    z.write_bytes(bomb())
    dest = tmp_path / "mine"
    (dest / "images").mkdir(parents=True)
    (dest / "keep.txt").write_text("mine")
    with pytest.raises(UserInputError):
        safe_extract_zip(z, dest, ZipLimits(max_uncompressed_bytes=5 * MB, max_ratio=10**6))
    assert files_under(dest) == ["images", "keep.txt"]


def test_too_many_members_are_refused_before_anything_is_written(tmp_path):
    z = tmp_path / "many.zip"
    z.write_bytes(many(30))
    with pytest.raises(UserInputError) as e:
        safe_extract_zip(z, tmp_path / "out", ZipLimits(max_members=20))
    assert e.value.code == "zip_too_many_members" and "30 members, more than the limit of 20" in e.value.message
    assert not (tmp_path / "out").exists()


def test_the_ingest_stage_leaves_no_unpacked_folder_after_a_bomb(tmp_path):
    z = tmp_path / "bomb.zip"
    z.write_bytes(bomb())
    work = tmp_path / "work"
    with pytest.raises(UserInputError) as e:
        ingest([z], work, IngestConfig())
    assert e.value.code == "zip_ratio_too_high"
    assert not (work / "unpacked").exists() and files_under(work) == ["images"]


def test_small_compressible_members_and_real_images_are_still_extracted(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("transforms.json", b'{"frames": []}' + b" " * 500_000)  # ~1000:1, under the allowance
        zf.writestr("images/a.png", png_bytes(1))
    z = tmp_path / "ok.zip"
    z.write_bytes(buf.getvalue())
    out = safe_extract_zip(z, tmp_path / "out")
    assert sorted(p.name for p in out) == ["a.png", "transforms.json"]


@pytest.mark.parametrize(("settings", "status", "code", "words"), [
    ({"max_unpacked_bytes": 10**12}, 413, "zip_ratio_too_high", ["bomb.zip", "images/zeros.png", "200:1"]),
    ({"max_zip_ratio": 10_000}, 413, "zip_too_large", ["bomb.zip", "expands to 50.0 MB", "limit of 10.0 MB"]),
])
def test_the_api_refuses_a_bomb_at_submission_and_keeps_nothing(make_api, settings, status, code, words):
    api = make_api(**{"max_unpacked_bytes": 10 * MB, **settings})
    r = api.post([("bomb.zip", bomb())])
    assert_refused(r, status, code, *words)
    assert api.rows() == 0 and api.left_on_disk() == []


def test_the_api_refuses_too_many_members_at_submission(make_api):
    api = make_api(max_zip_members=20)
    r = api.post([("many.zip", many(30))])
    assert_refused(r, 413, "zip_too_many_members", "many.zip", "30 members", "limit of 20")
    assert api.rows() == 0 and api.left_on_disk() == []
