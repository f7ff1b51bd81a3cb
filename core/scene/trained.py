"""TrainedScene: a trained model plus everything needed to render it in the capture's own frame."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from core.atomic import atomic_write, atomic_write_json
from core.errors import UserInputError
from core.functional.cameras import Intrinsics
from core.functional.rays import rays_from_pixels
from core.models.build import build_model
from core.models.config import TrainConfig
from core.models.radiance import RadianceModel
from core.scene.capture import FrameInfo, SceneNormalization


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but CUDA is not available; use --device cpu or auto")
    return torch.device(device)


@dataclass
class RenderResult:
    """rgb (H,W,3) float32 [0,1] composited on the background; depth (H,W) float32 expected z-depth in
    input-frame units (normalised by opacity); depth_median (H,W) float32 z-depth; opacity (H,W) [0,1]."""

    rgb: np.ndarray
    depth: np.ndarray
    depth_median: np.ndarray
    opacity: np.ndarray


@dataclass
class TrainedScene:
    model: RadianceModel
    normalization: SceneNormalization
    intrinsics: list[Intrinsics]
    c2w: np.ndarray                     # (N, 4, 4) float64, input frame, every capture image
    names: list[str]
    frame: FrameInfo
    train_indices: list[int]
    test_indices: list[int]
    config: TrainConfig
    metrics: dict = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    # ---- rendering -------------------------------------------------------------------------------
    @torch.no_grad()
    def render(self, c2w: np.ndarray, intrinsics: Intrinsics, width: int | None = None,
               height: int | None = None, chunk: int = 65536, background=(1.0, 1.0, 1.0),
               image_index: int = -1, exact_depth: bool = False) -> RenderResult:
        """Render one view. c2w: (4, 4) input frame, OpenCV axes. Rays are built chunk by chunk, so a
        4032x3024 frame needs memory for one chunk of rays plus the output images only. A ray a pixel, so
        the depth is always exact (exact_depth is there for the FeatureScene's interface)."""
        self.model.eval()
        width = width or intrinsics.width
        height = height or intrinsics.height
        if (width, height) != (intrinsics.width, intrinsics.height):
            intrinsics = intrinsics.scaled(width, height)
        dev = self.device
        c2w_f = torch.from_numpy(self.normalization.c2w_to_field(np.asarray(c2w))).float().to(dev)
        params = torch.from_numpy(intrinsics.params()).float().to(dev)
        bg = torch.tensor(background, dtype=torch.float32, device=dev)
        n = width * height
        rgb = np.empty((n, 3), np.float32)
        depth, median, opacity = (np.empty(n, np.float32) for _ in range(3))
        inv_scale = 1.0 / self.normalization.scale
        for start in range(0, n, chunk):
            flat = torch.arange(start, min(n, start + chunk), device=dev)
            m = flat.shape[0]
            rays = rays_from_pixels(c2w_f[None].expand(m, -1, -1), params[None].expand(m, -1),
                                    flat % width, flat // width,
                                    torch.full((m,), image_index, dtype=torch.long, device=dev))
            out = self.model(rays, bg, training=False)
            sl = slice(start, start + m)
            rgb[sl] = out.features[:, :3].clamp(0, 1).float().cpu().numpy()
            depth[sl] = (out.depth * rays.z_scale * inv_scale).float().cpu().numpy()
            median[sl] = (out.depth_median * rays.z_scale * inv_scale).float().cpu().numpy()
            opacity[sl] = out.opacity.float().cpu().numpy()
        shape = (height, width)
        return RenderResult(rgb.reshape(*shape, 3), depth.reshape(shape), median.reshape(shape),
                            opacity.reshape(shape))

    @torch.no_grad()
    def query_density(self, points_world: np.ndarray, chunk: int = 1 << 18) -> np.ndarray:
        """points_world: (N, 3) input frame -> (N,) float32 density per field-frame unit length.

        Outside the field's domain (bounded box) the density is 0."""
        self.model.eval()
        pts = torch.from_numpy(self.normalization.to_field(np.asarray(points_world).reshape(-1, 3))).float()
        out = np.zeros(len(pts), np.float32)
        for start in range(0, len(pts), chunk):
            p = pts[start:start + chunk].to(self.device)
            d = self.model.field.density(p).float()
            if not self.model.contracted:
                d = torch.where((p.abs() <= 1).all(-1), d, torch.zeros_like(d))
            out[start:start + len(p)] = d.cpu().numpy()
        return out

    def occupancy_world(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The occupancy grid's occupied cells inside the unit region, as (Rx, Ry, Rz) bool indexed [x, y, z],
        with the input-frame bounds (min (3,), max (3,)) of that grid. Without a grid: all True."""
        grid = self.model.grid
        if grid is None:
            occ = np.ones((64, 64, 64), bool)
        else:
            r = grid.resolution
            occ = grid.occupied.view(r, r, r).permute(2, 1, 0).cpu().numpy()   # [z,y,x] -> [x,y,z]
            if self.model.contracted:       # the unit cube is the central half of the contracted grid
                occ = occ[r // 4: r - r // 4, r // 4: r - r // 4, r // 4: r - r // 4]
        lo = self.normalization.to_world(-np.ones(3))
        hi = self.normalization.to_world(np.ones(3))
        return occ, lo, hi

    def occupied_bbox_world(self) -> tuple[np.ndarray, np.ndarray]:
        """Input-frame bounds (min (3,), max (3,)) of the occupied cells (the whole region if none)."""
        occ, lo, hi = self.occupancy_world()
        idx = np.argwhere(occ)
        if len(idx) == 0:
            return lo, hi
        cell = (hi - lo) / np.array(occ.shape)
        return lo + idx.min(0) * cell, lo + (idx.max(0) + 1) * cell

    # ---- persistence -----------------------------------------------------------------------------
    def meta(self) -> dict:
        return {"config": self.config.to_dict(), "normalization": self.normalization.to_dict(),
                "intrinsics": [k.to_dict() for k in self.intrinsics], "c2w": self.c2w.tolist(),
                "names": self.names, "frame": self.frame.to_dict(), "train_indices": self.train_indices,
                "test_indices": self.test_indices, "metrics": self.metrics}

    def save(self, directory: Path) -> None:
        """Writes scene.pt (model weights and occupancy grid) and scene.json (everything else), atomically."""
        directory = Path(directory)
        atomic_write(directory / "scene.pt", lambda p: torch.save(self.model.state_dict(), p))
        atomic_write_json(directory / "scene.json", self.meta())

    @classmethod
    def from_meta(cls, meta: dict, model: RadianceModel, device: torch.device) -> TrainedScene:
        return cls(model=model, normalization=SceneNormalization.from_dict(meta["normalization"]),
                   intrinsics=[Intrinsics.from_dict(k) for k in meta["intrinsics"]],
                   c2w=np.asarray(meta["c2w"], dtype=np.float64), names=list(meta["names"]),
                   frame=FrameInfo.from_dict(meta["frame"]), train_indices=list(meta["train_indices"]),
                   test_indices=list(meta["test_indices"]), config=TrainConfig.from_dict(meta["config"]),
                   metrics=dict(meta.get("metrics", {})), device=device)

    @classmethod
    def load(cls, directory: Path, device: str = "auto") -> TrainedScene:
        """The scene saved in `directory`, as this class (`core.scene.load.load_scene` picks the class)."""
        directory = Path(directory)
        meta = json.loads((directory / "scene.json").read_text())
        dev = resolve_device(device)
        try:
            cfg = TrainConfig.from_dict(meta["config"])
        except ValueError as e:
            raise _incompatible(directory, str(e)) from None
        contracted = meta["normalization"]["mode"] == "unbounded"
        model = build_model(cfg, contracted, len(meta["train_indices"]), dev)
        weights = torch.load(directory / "scene.pt", map_location=dev, weights_only=True)
        try:
            model.load_state_dict(weights)
        except RuntimeError as e:                      # missing, unexpected or differently shaped weights
            raise _incompatible(directory, str(e).splitlines()[0]) from None
        return cls.from_meta(meta, model, dev)


def _incompatible(directory: Path, detail: str) -> UserInputError:
    """The error for a scene this version of the model code cannot load (saved by another version)."""
    return UserInputError("scene_incompatible", f"the scene in {directory} was saved by a version of nerfserve "
                          f"whose model differs from this one ({detail}).",
                          "Train it again with this version (the capture and options are in its scene.json).")
