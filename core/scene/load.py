"""Loading a saved scene as the class its model needs."""

from __future__ import annotations

import json
from pathlib import Path

from core.scene.feature import FeatureScene
from core.scene.trained import TrainedScene


def load_scene(directory: Path, device: str = "auto") -> TrainedScene:
    """The scene saved in `directory` (scene.json + scene.pt): a FeatureScene for a feature-field model,
    else a TrainedScene. device: "auto", "cpu", "cuda" or "cuda:N"."""
    meta = json.loads((Path(directory) / "scene.json").read_text())
    cls = FeatureScene if meta.get("config", {}).get("model") == "feature_field" else TrainedScene
    return cls.load(directory, device=device)
