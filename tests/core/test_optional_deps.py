"""GPU workers may lack PyAV and pycolmap: training, evaluation, exports other than video, and reading a
transforms.json capture must import and run without them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = """
import sys
sys.modules["av"] = None          # import av -> ImportError
sys.modules["pycolmap"] = None
import core.engine.train, core.engine.evaluation, core.export.pipeline, core.scene.load
from core.dataparsers.readers import load_capture, write_capture
from core.dataparsers.synthetic import SyntheticConfig, render_synthetic
cap = render_synthetic(SyntheticConfig(views=4, size=16, supersample=1)).capture
write_capture(cap, sys.argv[1])
assert len(load_capture(sys.argv[1])) == 4
try:
    import core.dataparsers.colmap_adapter
except ImportError:
    print("ok")
"""


def test_training_and_transforms_json_need_neither_pyav_nor_pycolmap(tmp_path):
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "cap")], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ok"
