"""Shared test fixtures: GPU skipping, the shared real captures, and a small synthetic capture."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("NERFSERVE_SHARED_DATA", REPO.parent / "shared" / "data"))


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # pragma: no cover
        has_cuda = False
    if has_cuda:
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA; none on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


def shared_capture(name: str) -> Path:
    """Path to ../shared/data/NAME, or skip the test with the reason."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real capture {name!r} not found at {path} (it lives in ../shared/data, never in the repo)")
    return path


@pytest.fixture(scope="session")
def fox_dir() -> Path:
    return shared_capture("fox")


@pytest.fixture(scope="session")
def brighton_dir() -> Path:
    return shared_capture("brighton_beach")


@pytest.fixture(scope="session")
def synthetic_small():
    """A small in-memory synthetic capture with ground truth (24 views, 96 px)."""
    from core.dataparsers.synthetic import SyntheticConfig, render_synthetic

    return render_synthetic(SyntheticConfig(views=24, size=96))
