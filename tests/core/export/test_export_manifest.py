"""export_all end to end on the analytic stand-in: every file in the manifest, verified, progress,
cancellation, config errors and the CLI's error paths."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import av
import numpy as np
import pytest
from fixtures.analytic import AnalyticScene

from cli import main as cli_main
from core.errors import Cancelled, UserInputError
from core.export.config import ExportConfig
from core.export.manifest import KINDS, load_manifest, verify_manifest
from core.export.pipeline import export_all
from core.export.video import write_mp4

EVERYTHING = ("depth", "mesh", "tsdf", "pointcloud", "views", "video")


@pytest.fixture(scope="module")
def scene() -> AnalyticScene:
    return AnalyticScene(n_views=12, size=40, units="metres")


@pytest.fixture(scope="module")
def export(scene, tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    events = []
    config = ExportConfig(what=EVERYTHING, mesh_resolution=64, n_frames=5, view_max_side=48, fps=10)
    manifest = export_all(scene, out, config, progress=events.append)
    return out, manifest, events


def test_manifest_lists_every_file_with_size_and_hash(export):
    out, manifest, _ = export
    assert manifest == load_manifest(out)
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} - {"manifest.json"}
    listed = {f["path"] for f in manifest["files"]}
    assert listed == on_disk
    for f in manifest["files"]:
        data = (out / f["path"]).read_bytes()
        assert f["bytes"] == len(data) and f["sha256"] == hashlib.sha256(data).hexdigest()
        assert f["kind"] in KINDS and f["format"] and f["frame"] in ("input", "camera", "image", "none")
    assert verify_manifest(out) == []
    assert manifest["frame"]["units"] == "metres"
    assert not [p for p in out.rglob(".*")]   # no temporaries


def test_every_export_is_there(export, scene):
    out, manifest, _ = export
    kinds = {}
    for f in manifest["files"]:
        kinds.setdefault(f["kind"], []).append(f)
    n = len(scene.names)
    assert len([f for f in kinds["depth"] if f["path"].startswith("depth/")]) == n
    assert len([f for f in kinds["depth"] if f["path"].startswith("depth_median/")]) == n
    assert len(kinds["depth_png"]) == 2 * n and len(kinds["depth_vis"]) == n and len(kinds["confidence"]) == n
    assert {f["path"] for f in kinds["mesh"]} == {f"mesh/mesh_{m}.{x}" for m in ("density", "tsdf")
                                                  for x in ("ply", "obj", "glb")}
    assert all(f["units"] == "metres" and f["frame"] == "input" for f in kinds["mesh"] + kinds["pointcloud"])
    assert len([f for f in kinds["view"] if f["path"].startswith("views/")]) == 5
    (video,) = kinds["video"]
    with av.open(str(out / video["path"])) as c:
        assert sum(1 for _ in c.decode(video=0)) == 5 == video["frames"]
    assert manifest["meshes"]["density"]["level"] > 0 and manifest["config"]["what"] == list(EVERYTHING)


def test_verify_catches_tampering(export, tmp_path):
    import shutil

    out, _, _ = export
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    target = copy / "depth" / "v_001.npy"
    arr = np.load(target)
    arr[np.isfinite(arr)] += 1
    np.save(target, arr)
    (copy / "mesh" / "mesh_tsdf.obj").unlink()
    problems = verify_manifest(copy)
    assert any("v_001.npy" in p for p in problems) and any("mesh_tsdf.obj: missing" in p for p in problems)


def test_progress_is_monotone_and_ends_at_one(export):
    _, _, events = export
    fractions = [e.fraction for e in events]
    assert all(e.stage == "exporting" for e in events)
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)


def test_should_stop_cancels(scene, tmp_path):
    calls = []

    def stop():
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(Cancelled):
        export_all(scene, tmp_path, ExportConfig(what=("depth",)), should_stop=stop)
    assert not (tmp_path / "manifest.json").exists()


def test_a_failed_video_leaves_no_file(tmp_path):
    def frames():
        yield np.zeros((16, 16, 3), np.uint8)
        raise RuntimeError("renderer died")

    with pytest.raises(RuntimeError):
        write_mp4(tmp_path / "v.mp4", frames())
    assert list(tmp_path.iterdir()) == []


def test_config_rejects_what_it_does_not_know():
    assert ExportConfig(what="depth, mesh").what == ("depth", "mesh")
    with pytest.raises(UserInputError) as err:
        ExportConfig(what=("depth", "meshes"))
    assert err.value.code == "export_unknown_what" and "meshes" in err.value.message
    with pytest.raises(UserInputError):
        ExportConfig(mesh_method="poisson")
    assert ExportConfig(what=("mesh", "tsdf"), mesh_method="tsdf").mesh_methods() == ["tsdf"]
    assert ExportConfig(what=("mesh", "tsdf"), mesh_method="density").mesh_methods() == ["density", "tsdf"]


def test_cli_errors_are_actionable(tmp_path, capsys):
    assert cli_main(["export", str(tmp_path), "--outputs", "depth,bogus"]) == 2
    assert "bogus" in capsys.readouterr().err
    assert cli_main(["export", str(tmp_path / "nope"), "--outputs", "depth"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli_main(["export", str(tmp_path), "--path", str(tmp_path / "missing.json")]) == 2
    err = capsys.readouterr().err
    assert "camera_path_missing" in err and "missing.json" in err


def test_manifest_json_is_plain_json(export):
    out, _, _ = export
    doc = json.loads((out / "manifest.json").read_text())
    assert doc["version"] == 1 and isinstance(doc["files"], list)


def test_a_relative_output_folder_works(scene, tmp_path, monkeypatch):
    """`nerfserve export run --out outputs` from the run's parent: paths are recorded once, not twice."""
    monkeypatch.chdir(tmp_path)
    manifest = export_all(scene, Path("rel") / "outputs", ExportConfig(what=("depth",), depth_max_side=16))
    assert manifest["files"] and all((tmp_path / "rel" / "outputs" / f["path"]).is_file() for f in manifest["files"])
