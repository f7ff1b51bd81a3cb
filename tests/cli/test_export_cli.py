"""`nerfserve export` on a (barely) trained scene: the CLI loads RUN_DIR/scene and writes RUN_DIR/outputs."""

from __future__ import annotations

import av
import pytest

from cli import main
from core.dataparsers.synthetic import SyntheticConfig, render_synthetic
from core.engine.train import train
from core.export.manifest import load_manifest, verify_manifest
from core.models.config import TrainConfig


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    syn = render_synthetic(SyntheticConfig(views=6, size=24, supersample=1))
    config = TrainConfig.preset("fast", steps=2, batch_rays=256, march_steps=64, device="cpu", eval_views=1)
    scene = train(syn.capture, config)
    run = tmp_path_factory.mktemp("run")
    scene.save(run / "scene")
    return run


def test_cli_exports_a_trained_run(run_dir, capsys):
    code = main(["export", str(run_dir), "--outputs", "depth,mesh,tsdf,pointcloud,views,video", "--mesh-resolution",
                 "24", "--frames", "3", "--view-max-side", "16", "--fusion-max-side", "24", "--path", "interp"])
    assert code == 0
    out = run_dir / "outputs"
    assert "manifest" in capsys.readouterr().out
    manifest = load_manifest(out)
    kinds = {f["kind"] for f in manifest["files"]}
    assert {"depth", "depth_png", "depth_vis", "confidence", "view", "video", "meta", "pointcloud"} <= kinds
    assert len(list((out / "depth").glob("*.npy"))) == 6
    with av.open(str(out / "video" / "interp.mp4")) as c:
        assert sum(1 for _ in c.decode(video=0)) == 3
    assert verify_manifest(out) == []


def test_cli_says_when_the_folder_holds_no_trained_scene(tmp_path, capsys):
    assert main(["export", str(tmp_path), "--outputs", "depth"]) == 2
    assert "run_not_trained" in capsys.readouterr().err
