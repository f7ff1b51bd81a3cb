"""Writing meshes as PLY, OBJ and GLB, in the input frame, with vertex colours.

The coordinates are written as they are (input frame, its units): a GLB viewer that assumes y-up may
show a z-up capture lying on its side, but the numbers stay those of the user's poses.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import trimesh

from core.atomic import atomic_write_bytes
from core.export.manifest import Artifact
from core.scene.capture import FrameInfo

MESH_FORMATS = ("ply", "obj", "glb")


def coloured_mesh(mesh: trimesh.Trimesh, colours: np.ndarray | None) -> trimesh.Trimesh:
    """A copy of `mesh` with vertex colours (V, 3) uint8 (opaque), or without colours if None."""
    out = trimesh.Trimesh(np.asarray(mesh.vertices), np.asarray(mesh.faces), process=False)
    if colours is not None:
        rgba = np.concatenate([colours, np.full((len(colours), 1), 255, np.uint8)], axis=1)
        out.visual = trimesh.visual.ColorVisuals(out, vertex_colors=rgba)
    return out


def write_mesh(out_dir: Path, stem: str, mesh: trimesh.Trimesh, frame: FrameInfo,
               formats: tuple[str, ...] = MESH_FORMATS, extra: dict | None = None) -> list[Artifact]:
    """Write mesh/STEM.{ply,obj,glb} atomically; returns one Artifact per file."""
    arts = []
    for fmt in formats:
        data = mesh.export(file_type=fmt)
        data = data.encode() if isinstance(data, str) else data
        path = atomic_write_bytes(Path(out_dir) / "mesh" / f"{stem}.{fmt}", data)
        arts.append(Artifact(path, "mesh", fmt, "input", frame.units,
                             {"vertices": len(mesh.vertices), "faces": len(mesh.faces), **(extra or {})}))
    return arts
