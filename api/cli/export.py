"""CLI: export (depth, meshes, point clouds, views, video)."""

from __future__ import annotations

import argparse


def add_parsers(sub: argparse._SubParsersAction) -> None:
    return None
