"""The posed capture (what the engine trains on) and the scene normalisation into field space."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
from PIL import Image

from core.errors import UserInputError
from core.functional.cameras import Intrinsics

SceneMode = Literal["bounded", "unbounded"]


@dataclass
class FrameInfo:
    """What the capture's world ("input") frame is.

    units: "metres" when geo-registered (or known metric), else "arbitrary".
    geo_origin: (latitude_deg, longitude_deg, altitude_m) of the local east-north-up origin, or None.
    description: human-readable, e.g. "COLMAP frame, arbitrary scale" or "ENU metres".
    """

    units: str = "arbitrary"
    geo_origin: tuple[float, float, float] | None = None
    description: str = "input frame"

    def to_dict(self) -> dict:
        return {"units": self.units, "geo_origin": list(self.geo_origin) if self.geo_origin else None,
                "description": self.description}

    @staticmethod
    def from_dict(d: dict) -> FrameInfo:
        go = d.get("geo_origin")
        return FrameInfo(d.get("units", "arbitrary"), tuple(go) if go else None,
                         d.get("description", "input frame"))


@dataclass
class Capture:
    """Posed images in the input frame.

    images: list of N arrays (H_i, W_i, 3 or 4) uint8 sRGB; a 4th channel is alpha.
    intrinsics: list of N Intrinsics, each matching its image's size.
    c2w: (N, 4, 4) float64 camera-to-world, OpenCV camera axes, input frame.
    names: N image file names (unique).
    masks: None, or N entries of (H_i, W_i) bool (True = pixel is used) or None.
    frame: what the input frame is (units, geo origin).
    sequential: True for video frames (affects matching, not training).
    """

    images: list[np.ndarray]
    intrinsics: list[Intrinsics]
    c2w: np.ndarray
    names: list[str]
    masks: list[np.ndarray | None] | None = None
    frame: FrameInfo = field(default_factory=FrameInfo)
    sequential: bool = False

    def __post_init__(self) -> None:
        n = len(self.images)
        self.c2w = np.asarray(self.c2w, dtype=np.float64)
        if len(self.intrinsics) != n or self.c2w.shape != (n, 4, 4) or len(self.names) != n:
            raise ValueError(f"capture: {n} images but {len(self.intrinsics)} intrinsics, "
                             f"c2w {self.c2w.shape}, {len(self.names)} names")
        for img, k, name in zip(self.images, self.intrinsics, self.names, strict=True):
            if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] not in (3, 4):
                raise ValueError(f"image {name}: expected (H, W, 3|4) uint8, got {img.shape} {img.dtype}")
            if (img.shape[1], img.shape[0]) != (k.width, k.height):
                raise ValueError(f"image {name}: size {img.shape[1]}x{img.shape[0]} does not match "
                                 f"intrinsics {k.width}x{k.height}")
        if self.masks is not None:
            if len(self.masks) != n:
                raise ValueError(f"capture: {n} images but {len(self.masks)} masks")
            for m, img, name in zip(self.masks, self.images, self.names, strict=True):
                if m is not None and (m.dtype != np.bool_ or m.shape != img.shape[:2]):
                    raise UserInputError("mask_size_mismatch",
                                         f"the mask of {name} is {m.shape[1]}x{m.shape[0]} ({m.dtype}) but the "
                                         f"image is {img.shape[1]}x{img.shape[0]}.",
                                         "Give each image a black-and-white mask of the same size.")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def has_alpha(self) -> bool:
        return any(img.shape[2] == 4 for img in self.images)

    def holdout_split(self, every: int = 8) -> tuple[list[int], list[int]]:
        """LLFF convention: every `every`-th image (0, 8, 16, ...) is held out. every<=0: none."""
        idx = list(range(len(self)))
        if every <= 0 or len(self) < 2:
            return idx, []
        test = idx[::every]
        return [i for i in idx if i not in test], test

    def subset(self, indices: list[int]) -> Capture:
        return replace(self, images=[self.images[i] for i in indices],
                       intrinsics=[self.intrinsics[i] for i in indices], c2w=self.c2w[indices],
                       names=[self.names[i] for i in indices],
                       masks=None if self.masks is None else [self.masks[i] for i in indices])

    def resized(self, max_side: int | None = None, factor: float | None = None) -> Capture:
        """Downscale every image (never upscale) to a max side or by a factor; intrinsics follow."""
        imgs, intrs, masks = [], [], []
        for i, (img, k) in enumerate(zip(self.images, self.intrinsics, strict=True)):
            h, w = img.shape[:2]
            s = 1.0
            if factor is not None:
                s = min(s, float(factor))
            if max_side is not None:
                s = min(s, max_side / max(h, w))
            nw, nh = max(1, round(w * s)), max(1, round(h * s))
            if (nw, nh) != (w, h):
                img = np.asarray(Image.fromarray(img).resize((nw, nh), Image.Resampling.LANCZOS))
            imgs.append(img)
            intrs.append(k.scaled(nw, nh))
            m = None if self.masks is None else self.masks[i]
            if m is not None and m.shape != (nh, nw):
                m = np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize((nw, nh))) > 127
            masks.append(m)
        return replace(self, images=imgs, intrinsics=intrs, masks=None if self.masks is None else masks)


@dataclass(frozen=True)
class SceneNormalization:
    """Maps the input frame into field space: x_field = (x_world - center) * scale.

    bounded: the region of interest fills the box [-1, 1]^3 (the field's unit box).
    unbounded: the region of interest fills the unit ball/box; space beyond is contracted
        (see core.functional.contraction) into the box [-2, 2]^3.
    Distances scale by `scale`: d_world = d_field / scale. The map keeps axes (no rotation),
    so depth maps and meshes go back to the input frame with `to_world`.
    """

    center: tuple[float, float, float]
    scale: float
    mode: SceneMode

    def to_field(self, points_world: np.ndarray) -> np.ndarray:
        """points_world: (..., 3) input frame -> (..., 3) field frame."""
        return (np.asarray(points_world, dtype=np.float64) - np.asarray(self.center)) * self.scale

    def to_world(self, points_field: np.ndarray) -> np.ndarray:
        """points_field: (..., 3) field frame -> (..., 3) input frame."""
        return np.asarray(points_field, dtype=np.float64) / self.scale + np.asarray(self.center)

    def c2w_to_field(self, c2w: np.ndarray) -> np.ndarray:
        """c2w: (..., 4, 4) input frame -> (..., 4, 4) field frame (rotation unchanged)."""
        out = np.array(c2w, dtype=np.float64, copy=True)
        out[..., :3, 3] = self.to_field(out[..., :3, 3])
        return out

    @property
    def field_extent(self) -> float:
        """Half-size of the cube the field encodes: 1 (bounded) or 2 (contracted)."""
        return 1.0 if self.mode == "bounded" else 2.0

    def to_dict(self) -> dict:
        return {"center": list(self.center), "scale": self.scale, "mode": self.mode}

    @staticmethod
    def from_dict(d: dict) -> SceneNormalization:
        return SceneNormalization(tuple(d["center"]), float(d["scale"]), d["mode"])


def _focus_point(c2w: np.ndarray) -> np.ndarray:
    """Least-squares point nearest to all optical axes. c2w: (N, 4, 4). Returns (3,)."""
    origins, fwd = c2w[:, :3, 3], c2w[:, :3, 2]
    a = np.zeros((3, 3))
    b = np.zeros(3)
    for o, d in zip(origins, fwd, strict=True):
        p = np.eye(3) - np.outer(d, d)
        a += p
        b += p @ o
    return np.linalg.lstsq(a, b, rcond=None)[0]


def choose_scene_mode(c2w: np.ndarray) -> tuple[SceneMode, np.ndarray]:
    """Guess bounded vs unbounded from the camera layout; also return the focus point (3,).

    Bounded ("object"): the cameras' optical axes converge on a point that lies in front of
    nearly every camera, and the cameras sit on a shell around it (an orbit). Anything else
    (forward-facing walks, nadir UAV surveys, a phone walk-around with a room behind) is unbounded.
    """
    origins, fwd = c2w[:, :3, 3], c2w[:, :3, 2]
    focus = _focus_point(c2w)
    to_focus = focus[None] - origins
    dist = np.linalg.norm(to_focus, axis=1)
    cos = (to_focus * fwd).sum(1) / np.maximum(dist, 1e-9)
    looks_in = bool(np.mean(cos > np.cos(np.deg2rad(25))) > 0.9)
    # "All around": the unit vectors from the focus to the cameras do not all point one way
    # (their mean is short), e.g. an orbit, not a forward-facing walk or a nadir survey.
    dirs = -to_focus / np.maximum(dist, 1e-9)[:, None]
    around = bool(np.linalg.norm(dirs.mean(0)) < 0.75)
    mode: SceneMode = "bounded" if (looks_in and around) else "unbounded"
    return mode, focus


def half_fov(intrinsics: list[Intrinsics]) -> float:
    """The smallest half field of view (radians) over the cameras, across width and height."""
    return float(min(np.arctan(min(k.width / (2 * k.fx), k.height / (2 * k.fy))) for k in intrinsics))


def compute_normalization(c2w: np.ndarray, mode: SceneMode | Literal["auto"] = "auto",
                          roi_center: np.ndarray | None = None, roi_radius: float | None = None,
                          fov_half: float = 0.45) -> SceneNormalization:
    """Scene normalisation from the cameras (and an optional region of interest).

    c2w: (N, 4, 4) float64, input frame.
    roi_center: (3,) input frame, roi_radius: input-frame units. By default the ROI is centred on
    the point the cameras look at. Bounded: its radius is what a camera at the median distance sees
    around that point (distance * tan(fov_half) * 1.15, fov_half the smallest half field of view in
    radians); cameras usually lie outside the box. Unbounded: the ROI contains every camera.
    """
    auto_mode, focus = choose_scene_mode(c2w)
    mode = auto_mode if mode == "auto" else mode
    origins = c2w[:, :3, 3]
    center = np.asarray(roi_center, dtype=np.float64) if roi_center is not None else focus
    if not np.all(np.isfinite(center)) or np.linalg.norm(center - origins.mean(0)) > 10 * (
            np.linalg.norm(origins - origins.mean(0), axis=1).max() + 1e-9):
        center = origins.mean(0)
    cam_dist = np.linalg.norm(origins - center[None], axis=1)
    if roi_radius is None:
        med = float(np.median(cam_dist)) if len(cam_dist) else 1.0
        if mode == "bounded":
            roi_radius = med * float(np.tan(fov_half)) * 1.15
        else:
            roi_radius = max(float(cam_dist.max()) * 1.05, med)
    roi_radius = max(float(roi_radius), 1e-6)
    return SceneNormalization(tuple(float(c) for c in center), 1.0 / roi_radius, mode)
