"""A synthetic "turntable" capture with exact ground truth: images, z-depth, poses and meshes.

Scene (world up = +z, units arbitrary): a sphere, a box, a cylinder and a cone stand on a square
tiled slab 2.4 units across whose top face is z = 0; the objects lie within about +-0.7 of the origin.
Every surface has its own procedural texture (tiles, bricks, marble, stripes, dots, wood; all
modulated by multi-octave value noise) computed from the 3D hit point in the object's own frame, so
it is view-consistent, and is shaded Lambertian from a fixed directional light plus ambient (view
independent, so a radiance field can fit it exactly).

Rendering is analytic ray casting (exact intersections with the primitives, float64), with
`supersample` x `supersample` rays per pixel averaged for colour and the pixel-centre ray for depth.
The ground-truth meshes are fine tessellations of the same primitives (within ~1e-4 of the surfaces).
Images are RGBA with straight (not premultiplied) alpha: alpha is the fraction of a pixel's rays that
hit something (255 inside objects), and pixels that see nothing are alpha 0 with RGB `BACKGROUND_GREY`.
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import trimesh

from core.dataparsers.readers import write_capture
from core.functional.cameras import Intrinsics, pixel_directions_camera
from core.scene.capture import Capture, FrameInfo

BACKGROUND_GREY = 128
# 45.2 degrees: focal = 1.2 x image side, the focal length COLMAP assumes for images without EXIF. With it
# SfM starts from the right focal (as it would from a phone photo's EXIF) instead of self-calibrating on a
# scene dominated by one plane, which is ill-conditioned and can converge to a wrong reconstruction.
DEFAULT_FOV_DEG = float(np.degrees(2 * np.arctan(1 / 2.4)))
WORLD_UP = (0.0, 0.0, 1.0)
LIGHT_DIR = np.array([0.45, -0.35, 0.82]) / np.linalg.norm([0.45, -0.35, 0.82])  # towards the light
AMBIENT = 0.4
_EPS = 1e-9


@dataclass
class SyntheticConfig:
    """views: images on the orbit; size: square image side in pixels; seed: camera jitter and textures.

    radius: camera distance to the look-at point; fov_deg: horizontal (= vertical) field of view;
    elevation_min/max_deg: the orbit's elevation follows a sinusoid (two periods) between these;
    look_jitter: standard deviation of the look-at point around `look_at`, in scene units.
    """

    views: int = 40
    size: int = 200
    seed: int = 0
    supersample: int = 2
    radius: float = 3.2
    fov_deg: float = DEFAULT_FOV_DEG
    elevation_min_deg: float = 15.0
    elevation_max_deg: float = 55.0
    look_at: tuple[float, float, float] = (0.0, 0.0, 0.1)
    look_jitter: float = 0.03


@dataclass(frozen=True)
class Shape:
    """An analytic primitive in the scene.

    kind: "box" (centre, half extents), "sphere" (centre, radius = size[0]), "cylinder" or "cone"
        (centre of the base disc, radius = size[0], height = size[2], axis +z; the cone's apex is up).
    center: (3,) world position; size: (3,) as above; yaw: rotation about +z in radians.
    texture: a key of `_TEXTURES`; seed: the texture's noise seed.
    """

    kind: str
    center: tuple[float, float, float]
    size: tuple[float, float, float]
    yaw: float = 0.0
    texture: str = "tiles"
    seed: int = 0


@dataclass
class SyntheticScene:
    """What `render_synthetic` returns.

    capture: RGBA images, pinhole Intrinsics, c2w (N, 4, 4) float64 OpenCV axes, names r_000.png...
    depth: N arrays (H, W) float32 z-depth in scene units, NaN where the pixel-centre ray misses.
    mesh: objects + ground slab (GT surface, world frame, vertex colours = albedo).
    objects_mesh: the objects only. scene_bbox_diagonal: diagonal of `mesh`'s bounding box.
    shapes: the analytic primitives, for `render_views`.
    """

    capture: Capture
    depth: list[np.ndarray]
    mesh: trimesh.Trimesh
    objects_mesh: trimesh.Trimesh
    scene_bbox_diagonal: float
    shapes: tuple[Shape, ...]
    config: SyntheticConfig = field(default_factory=SyntheticConfig)


def turntable_shapes(seed: int = 0) -> tuple[Shape, ...]:
    """The scene's primitives: the ground slab first, then the objects."""
    s = 1000 * seed
    return (
        Shape("box", (0.0, 0.0, -0.05), (1.2, 1.2, 0.05), 0.0, "floor", s + 1),
        Shape("sphere", (0.38, 0.30, 0.30), (0.30, 0.30, 0.30), 0.0, "marble", s + 2),
        Shape("box", (-0.35, 0.32, 0.25), (0.20, 0.16, 0.25), np.deg2rad(25.0), "bricks", s + 3),
        Shape("cylinder", (-0.30, -0.38, 0.0), (0.18, 0.18, 0.55), np.deg2rad(10.0), "stripes", s + 4),
        Shape("cone", (0.38, -0.36, 0.0), (0.22, 0.22, 0.60), 0.0, "dots", s + 5),
    )


# --- procedural noise ---------------------------------------------------------------------------------

@functools.lru_cache(maxsize=64)
def _noise_tables(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    perm = rng.permutation(256)
    return np.concatenate([perm, perm]).astype(np.int64), rng.random(512).astype(np.float32)


def value_noise(p: np.ndarray, seed: int) -> np.ndarray:
    """Smooth lattice value noise. p: (M, 3) float, lattice units. Returns (M,) float32 in [0, 1]."""
    perm, vals = _noise_tables(seed)
    p = np.asarray(p, dtype=np.float32)
    i = np.floor(p)
    f = p - i
    u = f * f * (3 - 2 * f)
    ix, iy, iz = (i.astype(np.int64) & 255).T
    a, b = perm[ix] + iy, perm[ix + 1] + iy
    out = None
    for dy, row in ((0, (a, b)), (1, (a + 1, b + 1))):
        for dz in (0, 1):
            c0, c1 = vals[perm[perm[row[0]] + iz + dz]], vals[perm[perm[row[1]] + iz + dz]]
            lerp_x = c0 + (c1 - c0) * u[:, 0]
            wy = u[:, 1] if dy else 1 - u[:, 1]
            wz = u[:, 2] if dz else 1 - u[:, 2]
            term = lerp_x * wy * wz
            out = term if out is None else out + term
    return out


def fbm(p: np.ndarray, seed: int, octaves: int = 4, gain: float = 0.5) -> np.ndarray:
    """Fractal sum of `octaves` value-noise octaves (frequency doubling). p: (M, 3). Returns (M,) in
    [0, 1], contrast-stretched so that its spread is comparable to a single octave's."""
    total, amp, norm = np.zeros(len(p), np.float32), 1.0, 0.0
    for o in range(octaves):
        total += amp * value_noise(p * (2.0 ** o) + 17.31 * o, seed + o)
        norm += amp
        amp *= gain
    return np.clip(0.5 + 1.6 * (total / norm - 0.5), 0.0, 1.0)


def _cell_hash(cells: np.ndarray, seed: int) -> np.ndarray:
    """cells: (M, K) int lattice cells (K = 2 or 3). Returns (M,) float32 in [0, 1), one per cell."""
    perm, vals = _noise_tables(seed)
    h = np.zeros(len(cells), np.int64)
    for k in range(cells.shape[1]):
        h = perm[(h + (cells[:, k] & 255)) & 511]
    return vals[h]


def _mix(c0, c1, t: np.ndarray) -> np.ndarray:
    """Blend two RGB colours (3,) by t (M,) -> (M, 3)."""
    c0, c1 = np.asarray(c0, np.float32), np.asarray(c1, np.float32)
    return c0[None] + (c1 - c0)[None] * t[:, None]


def _palette(colours, pick: np.ndarray) -> np.ndarray:
    """colours: K RGB triples; pick: (M,) in [0, 1) -> (M, 3) float32."""
    pal = np.asarray(colours, np.float32)
    return pal[np.minimum((pick * len(pal)).astype(np.int64), len(pal) - 1)]


def _grain(p: np.ndarray, seed: int, scale: float, strength: float) -> np.ndarray:
    """(M, 1) multiplicative grain factor around 1 from 2-octave fbm at `scale` cycles per unit."""
    return (1.0 + strength * (fbm(p * scale, seed, octaves=2) - 0.5))[:, None]


def _face_uv(p: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Planar coordinates on box faces: the two local axes perpendicular to the normal. (M, 2)."""
    axis = np.argmax(np.abs(n), axis=1)
    uv = np.where(axis[:, None] == 0, p[:, [1, 2]], np.where(axis[:, None] == 1, p[:, [0, 2]], p[:, [0, 1]]))
    return uv + 3.7 * axis[:, None]  # different faces do not repeat each other


def _split(mask: np.ndarray, p: np.ndarray, n: np.ndarray, seed: int, if_true, if_false) -> np.ndarray:
    """Evaluate texture `if_true` where mask, `if_false` elsewhere (each only on its own points)."""
    out = np.empty((len(p), 3), np.float32)
    for sel, tex in ((mask, if_true), (~mask, if_false)):
        if sel.any():
            out[sel] = tex(p[sel], n[sel], seed)
    return out


# --- textures: (p_local (M, 3), n_local (M, 3), seed) -> albedo (M, 3) float32 in [0, 1] -------------------

def _tex_tiles(p: np.ndarray, n: np.ndarray, seed: int) -> np.ndarray:
    """Glazed tiles with grout lines, each tile its own colour and mottling."""
    tile = 0.3
    cells = np.floor(p[:, :2] / tile).astype(np.int64)
    local = p[:, :2] / tile - cells
    edge = np.minimum(local, 1 - local).min(axis=1) * tile
    pick = _cell_hash(cells, seed)
    tiles = _palette([(0.74, 0.38, 0.24), (0.84, 0.74, 0.55), (0.34, 0.42, 0.50), (0.52, 0.56, 0.30),
                      (0.62, 0.30, 0.36)], pick)
    mottle = fbm(p * 7.0 + pick[:, None] * 31.0, seed + 1)
    tiles = tiles * (0.6 + 0.8 * mottle)[:, None] * _grain(p, seed + 2, 20.0, 0.35)
    grout = np.float32(0.86) * (0.9 + 0.2 * mottle)[:, None]
    return np.where((edge < 0.012)[:, None], grout, tiles)


def _tex_wood(p: np.ndarray, n: np.ndarray, seed: int) -> np.ndarray:
    """Wood grain: warped rings in browns."""
    rings = np.sin(40.0 * (p[:, 0] + p[:, 1]) + 9.0 * fbm(p * 3.0, seed + 4)) * 0.5 + 0.5
    return _mix((0.45, 0.27, 0.12), (0.70, 0.50, 0.28), rings) * _grain(p, seed + 5, 20.0, 0.3)


def _tex_floor(p: np.ndarray, n: np.ndarray, seed: int) -> np.ndarray:
    """The ground slab: tiles on top, wood on the sides and bottom."""
    return _split(n[:, 2] > 0.5, p, n, seed, _tex_tiles, _tex_wood)


def _tex_marble(p: np.ndarray, n: np.ndarray, seed: int) -> np.ndarray:
    """Veined blue-white marble with gold flecks."""
    veins = 0.5 + 0.5 * np.sin(14.0 * p[:, 2] + 6.0 * p[:, 0] + 10.0 * fbm(p * 4.0, seed))
    col = _mix((0.12, 0.22, 0.58), (0.92, 0.90, 0.84), veins ** 0.7)
    col = col * _grain(p, seed + 1, 16.0, 0.5)
    fleck = fbm(p * 18.0, seed + 2, octaves=2) > 0.78
    return np.where(fleck[:, None], np.asarray((0.95, 0.72, 0.20), np.float32), col)


def _tex_brick_wall(p: np.ndarray, n: np.ndarray, seed: int) -> np.ndarray:
    """Running-bond bricks with mortar, per-brick colour and grime."""
    uv = _face_uv(p, n)
    bw, bh = 0.11, 0.055
    row = np.floor(uv[:, 1] / bh)
    u_off = uv[:, 0] / bw + 0.5 * (row % 2)
    cells = np.stack([np.floor(u_off), row], axis=1).astype(np.int64)
    lu, lv = u_off - np.floor(u_off), uv[:, 1] / bh - row
    mortar = (np.minimum(lu, 1 - lu) * bw < 0.007) | (np.minimum(lv, 1 - lv) * bh < 0.007)
    pick = _cell_hash(cells, seed)
    brick = _palette([(0.62, 0.20, 0.14), (0.72, 0.32, 0.18), (0.50, 0.18, 0.16), (0.78, 0.45, 0.30)], pick)
    grime = fbm(p * 9.0 + pick[:, None] * 13.0, seed + 1)
    brick = brick * (0.7 + 0.6 * grime)[:, None]
    return np.where(mortar[:, None], np.float32(0.78) * (0.85 + 0.3 * grime)[:, None], brick)


def _tex_checker(p: np.ndarray, n: np.ndarray, seed: int) -> np.ndarray:
    """Noisy black-and-yellow checkerboard."""
    uv = _face_uv(p, n)
    checker = (np.floor(uv[:, 0] / 0.08) + np.floor(uv[:, 1] / 0.08)) % 2
    return _mix((0.15, 0.15, 0.18), (0.90, 0.85, 0.40), checker) * _grain(p, seed + 3, 16.0, 0.6)


def _tex_bricks(p: np.ndarray, n: np.ndarray, seed: int) -> np.ndarray:
    """Bricks on the sides, a checkerboard on top and bottom."""
    return _split(np.abs(n[:, 2]) > 0.5, p, n, seed, _tex_checker, _tex_brick_wall)


def _tex_patchwork(p: np.ndarray, n: np.ndarray, seed: int) -> np.ndarray:
    """Angle-by-height patchwork in greens and yellows (cylinder side)."""
    theta = np.arctan2(p[:, 1], p[:, 0])
    cell = np.stack([np.floor(theta * 16 / np.pi), np.floor(p[:, 2] / 0.07)], axis=1).astype(np.int64)
    pick = _cell_hash(cell, seed)
    side = _palette([(0.10, 0.45, 0.22), (0.85, 0.80, 0.20), (0.20, 0.65, 0.55), (0.95, 0.95, 0.85)], pick)
    return side * (0.65 + 0.7 * fbm(p * 10.0, seed + 1))[:, None]


def _tex_rings(p: np.ndarray, n: np.ndarray, seed: int) -> np.ndarray:
    """Wobbly concentric rings (cylinder caps)."""
    rings = 0.5 + 0.5 * np.sin(90.0 * np.hypot(p[:, 0], p[:, 1]) + 4.0 * fbm(p * 5.0, seed + 2))
    return _mix((0.30, 0.10, 0.35), (0.95, 0.60, 0.70), rings) * _grain(p, seed + 3, 16.0, 0.4)


def _tex_stripes(p: np.ndarray, n: np.ndarray, seed: int) -> np.ndarray:
    """Patchwork on the cylinder's side, rings on its caps."""
    return _split(np.abs(n[:, 2]) > 0.99, p, n, seed, _tex_rings, _tex_patchwork)


def _tex_dots(p: np.ndarray, n: np.ndarray, seed: int) -> np.ndarray:
    """Orange mottled base with jittered dots of varying size and colour (3D polka)."""
    q = p / 0.06
    cells = np.floor(q).astype(np.int64)
    h1, h2, h3 = (_cell_hash(cells, seed + k) for k in range(3))
    centre = 0.5 + 0.25 * (np.stack([h1, h2, h3], axis=1) - 0.5)
    dot = np.linalg.norm(q - cells - centre, axis=1) < 0.18 + 0.2 * h3
    base = _mix((0.85, 0.45, 0.10), (0.98, 0.80, 0.45), fbm(p * 8.0, seed + 3)) * _grain(p, seed + 4, 20.0, 0.4)
    dots = _palette([(0.25, 0.10, 0.45), (0.05, 0.30, 0.55), (0.90, 0.95, 0.95)], h1)
    return np.where(dot[:, None], dots, base)


_TEXTURES = {"floor": _tex_floor, "marble": _tex_marble, "bricks": _tex_bricks, "stripes": _tex_stripes,
             "dots": _tex_dots}


# --- analytic ray-primitive intersection ------------------------------------------------------------------
# _hit_<kind>(o (M, 3), d (M, 3) unit, size (3,)), all in the shape's local frame -> (t (M,) float64 distance
# along d, inf on a miss; normal (M, 3) local frame, outward). Rays must start outside the shape.

def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise dot product of (M, 3) arrays -> (M,) (einsum: much faster than (a * b).sum(1))."""
    return np.einsum("ij,ij->i", a, b)


def _first_positive(*candidates: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Nearest valid positive hit among (t (M,), valid (M,) bool) pairs -> (t with inf = miss, argmin)."""
    ts = np.stack([np.where(valid & (t > _EPS), t, np.inf) for t, valid in candidates])
    k = np.argmin(ts, axis=0)
    return ts[k, np.arange(ts.shape[1])], k


def _hit_box(o: np.ndarray, d: np.ndarray, half: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / d
        t1, t2 = (-half - o) * inv, (half - o) * inv
    tlo, thi = np.fmin(t1, t2), np.fmax(t1, t2)
    tmin = np.fmax(np.fmax(tlo[:, 0], tlo[:, 1]), tlo[:, 2])
    tmax = np.fmin(np.fmin(thi[:, 0], thi[:, 1]), thi[:, 2])
    hit = (tmax >= tmin) & (tmin > _EPS)
    axis = np.where(tlo[:, 0] == tmin, 0, np.where(tlo[:, 1] == tmin, 1, 2))
    n = np.zeros_like(o)
    n[np.arange(len(o)), axis] = -np.sign(d[np.arange(len(o)), axis])
    return np.where(hit, tmin, np.inf), n


def _hit_sphere(o: np.ndarray, d: np.ndarray, size: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r = size[0]
    b = _dot(o, d)
    disc = b * b - (_dot(o, o) - r * r)
    t, _ = _first_positive((-b - np.sqrt(np.maximum(disc, 0)), disc >= 0))
    p = o + np.where(np.isfinite(t), t, 0)[:, None] * d
    return t, p / r


def _quadratic_roots(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Roots of a t^2 + 2 b t + c = 0 -> (t0, t1, real) (NaN-free; check `real`)."""
    disc = b * b - a * c
    real = (disc >= 0) & (np.abs(a) > 1e-12)
    sq = np.sqrt(np.maximum(disc, 0))
    a_safe = np.where(np.abs(a) > 1e-12, a, 1.0)
    return (-b - sq) / a_safe, (-b + sq) / a_safe, real


def _cap(o: np.ndarray, d: np.ndarray, z: float, r: float) -> tuple[np.ndarray, np.ndarray]:
    """Hit of the disc of radius r at height z (local frame) -> (t, valid)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (z - o[:, 2]) / d[:, 2]
    x, y = o[:, 0] + t * d[:, 0], o[:, 1] + t * d[:, 1]
    return t, np.isfinite(t) & (x * x + y * y <= r * r)


def _hit_cylinder(o: np.ndarray, d: np.ndarray, size: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r, h = size[0], size[2]
    a = d[:, 0] ** 2 + d[:, 1] ** 2
    b = o[:, 0] * d[:, 0] + o[:, 1] * d[:, 1]
    c = o[:, 0] ** 2 + o[:, 1] ** 2 - r * r
    t0, t1, real = _quadratic_roots(a, b, c)
    in_h = [real & (o[:, 2] + t * d[:, 2] >= 0) & (o[:, 2] + t * d[:, 2] <= h) for t in (t0, t1)]
    t, k = _first_positive((t0, in_h[0]), (t1, in_h[1]), _cap(o, d, 0.0, r), _cap(o, d, h, r))
    p = o + np.where(np.isfinite(t), t, 0)[:, None] * d
    n = np.stack([p[:, 0] / r, p[:, 1] / r, np.zeros(len(p))], axis=1)
    n[k == 2] = (0, 0, -1)
    n[k == 3] = (0, 0, 1)
    return t, n


def _hit_cone(o: np.ndarray, d: np.ndarray, size: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r, h = size[0], size[2]
    k2 = (r / h) ** 2
    w0 = h - o[:, 2]  # height below the apex
    a = d[:, 0] ** 2 + d[:, 1] ** 2 - k2 * d[:, 2] ** 2
    b = o[:, 0] * d[:, 0] + o[:, 1] * d[:, 1] + k2 * w0 * d[:, 2]
    c = o[:, 0] ** 2 + o[:, 1] ** 2 - k2 * w0 * w0
    t0, t1, real = _quadratic_roots(a, b, c)
    in_h = [real & (o[:, 2] + t * d[:, 2] >= 0) & (o[:, 2] + t * d[:, 2] <= h) for t in (t0, t1)]
    t, k = _first_positive((t0, in_h[0]), (t1, in_h[1]), _cap(o, d, 0.0, r))
    p = o + np.where(np.isfinite(t), t, 0)[:, None] * d
    n = np.stack([p[:, 0], p[:, 1], k2 * (h - p[:, 2])], axis=1)
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
    n[k == 2] = (0, 0, -1)
    return t, n


_HITS = {"box": _hit_box, "sphere": _hit_sphere, "cylinder": _hit_cylinder, "cone": _hit_cone}


def _rot_z(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


def _local_origin(shape: Shape) -> np.ndarray:
    """Where the shape's local frame origin is in world: the box/sphere centre, the base centre else."""
    return np.asarray(shape.center, dtype=np.float64)


def _bounding_radius(shape: Shape) -> tuple[np.ndarray, float]:
    """A world-space bounding sphere (centre (3,), radius) of the shape."""
    sx, _, sz = shape.size
    if shape.kind == "box":
        return _local_origin(shape), float(np.linalg.norm(shape.size))
    if shape.kind == "sphere":
        return _local_origin(shape), float(sx)
    return _local_origin(shape) + (0, 0, sz / 2), float(np.hypot(sx, sz / 2))


def cast_rays(shapes: tuple[Shape, ...], origins: np.ndarray, dirs: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest hit of each ray with the scene.

    origins: (R, 3) float64 world frame, or (3,) for rays sharing one origin (a pinhole camera; faster).
    dirs: (R, 3) float64 world frame, unit length.
    Returns t (R,) float64 distance along the ray (inf on miss), normals (R, 3) float64 world frame,
    shape index (R,) int64 (-1 on miss).
    """
    single = origins.ndim == 1
    n_rays = len(dirs)
    t_best = np.full(n_rays, np.inf)
    normals = np.zeros((n_rays, 3))
    which = np.full(n_rays, -1, dtype=np.int64)
    for si, shape in enumerate(shapes):
        centre, radius = _bounding_radius(shape)
        oc = origins - centre
        b = dirs @ oc if single else _dot(oc, dirs)
        disc = b * b - ((oc @ oc if single else _dot(oc, oc)) - radius * radius)
        cand = np.nonzero((disc >= 0) & (-b + np.sqrt(np.maximum(disc, 0)) > 0)
                          & (-b - np.sqrt(np.maximum(disc, 0)) < t_best))[0]
        if len(cand) == 0:
            continue
        rot = _rot_z(shape.yaw)
        d_l = dirs[cand] @ rot
        o_l = np.broadcast_to(((origins if single else origins[cand]) - _local_origin(shape)) @ rot, d_l.shape)
        t, n_l = _HITS[shape.kind](o_l, d_l, np.asarray(shape.size, dtype=np.float64))
        closer = t < t_best[cand]
        idx = cand[closer]
        t_best[idx] = t[closer]
        normals[idx] = n_l[closer] @ rot.T
        which[idx] = si
    return t_best, normals, which


def shade(shapes: tuple[Shape, ...], points: np.ndarray, normals: np.ndarray, which: np.ndarray) -> np.ndarray:
    """Lambertian colour of hit points. points, normals: (M, 3) world; which: (M,) shape index >= 0.
    Returns (M, 3) float32 sRGB in [0, 1]."""
    albedo = np.zeros((len(points), 3), np.float32)
    for si, shape in enumerate(shapes):
        sel = which == si
        if not sel.any():
            continue
        rot = _rot_z(shape.yaw)
        p_l = (points[sel] - _local_origin(shape)) @ rot
        n_l = normals[sel] @ rot
        albedo[sel] = _TEXTURES[shape.texture](p_l, n_l, shape.seed)
    lambert = np.clip(normals @ LIGHT_DIR, 0, None).astype(np.float32)
    return np.clip(albedo, 0, 1) * (AMBIENT + (1 - AMBIENT) * lambert)[:, None]


# --- cameras and rendering -------------------------------------------------------------------------------

def look_at_c2w(eye: np.ndarray, target: np.ndarray, up: np.ndarray = np.array(WORLD_UP)) -> np.ndarray:
    """(4, 4) float64 camera-to-world, OpenCV axes [Right, Down, Forward], camera at `eye` (3,)
    looking at `target` (3,), with world `up` (3,) appearing up in the image."""
    fwd = np.asarray(target, float) - np.asarray(eye, float)
    fwd /= np.linalg.norm(fwd)
    right = np.cross(fwd, up)
    right /= np.linalg.norm(right)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, np.cross(fwd, right), fwd, eye
    return c2w


def orbit_poses(config: SyntheticConfig) -> np.ndarray:
    """(N, 4, 4) float64 c2w on the config's orbit: even azimuths, elevation a 2-period sinusoid."""
    rng = np.random.default_rng(config.seed)
    az = 2 * np.pi * (np.arange(config.views) / config.views) + rng.uniform(0, 2 * np.pi)
    lo, hi = np.deg2rad(config.elevation_min_deg), np.deg2rad(config.elevation_max_deg)
    el = 0.5 * (lo + hi) + 0.5 * (hi - lo) * np.sin(2 * (az - az[0]))
    poses = []
    for a, e in zip(az, el, strict=True):
        target = np.asarray(config.look_at) + rng.normal(0, config.look_jitter, 3)
        eye = target + config.radius * np.array([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)])
        poses.append(look_at_c2w(eye, target))
    return np.stack(poses)


def pinhole(size: int, fov_deg: float) -> Intrinsics:
    """Square pinhole camera of `size` px with horizontal/vertical field of view `fov_deg`."""
    f = 0.5 * size / np.tan(np.deg2rad(fov_deg) / 2)
    return Intrinsics(f, f, size / 2, size / 2, size, size)


def _pixel_rays(c2w: np.ndarray, intr: Intrinsics, offsets: list[tuple[float, float]]
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World rays through each pixel centre + offset (pixels), row-major, offsets innermost.

    Returns the origin (3,), unit dirs (R, 3) float64 world, z_scale (R,) (camera z of the unit dir).
    """
    v, u = np.meshgrid(np.arange(intr.height), np.arange(intr.width), indexing="ij")
    off = np.asarray(offsets, dtype=np.float64)
    uu = (u.reshape(-1, 1) + off[None, :, 0]).reshape(-1)
    vv = (v.reshape(-1, 1) + off[None, :, 1]).reshape(-1)
    params = torch.from_numpy(intr.params()).expand(len(uu), 8)
    d_cam = pixel_directions_camera(torch.from_numpy(uu), torch.from_numpy(vv), params).numpy()
    d_cam /= np.linalg.norm(d_cam, axis=1, keepdims=True)
    dirs = d_cam @ c2w[:3, :3].T
    return c2w[:3, 3].copy(), dirs, d_cam[:, 2]


def render_view(shapes: tuple[Shape, ...], c2w: np.ndarray, intr: Intrinsics, supersample: int = 2
                ) -> tuple[np.ndarray, np.ndarray]:
    """One view. c2w: (4, 4) float64 OpenCV axes, world frame. Returns rgba (H, W, 4) uint8 (straight
    alpha) and z-depth (H, W) float32 (scene units, NaN on miss) from the pixel-centre ray."""
    ss = max(1, int(supersample))
    grid = (np.arange(ss) + 0.5) / ss - 0.5
    offsets = [(du, dv) for dv in grid for du in grid]
    h, w = intr.height, intr.width
    o, d, _ = _pixel_rays(c2w, intr, offsets)
    t, n, which = cast_rays(shapes, o, d)
    hit = which >= 0
    colour = np.zeros((len(t), 3), np.float32)
    colour[hit] = shade(shapes, o + t[hit, None] * d[hit], n[hit], which[hit])
    colour = colour.reshape(h * w, ss * ss, 3)
    hits = hit.reshape(h * w, ss * ss).sum(1)
    rgb = colour.sum(1) / np.maximum(hits, 1)[:, None]
    rgb = np.where(hits[:, None] > 0, rgb * 255.0, BACKGROUND_GREY)
    alpha = hits * (255.0 / (ss * ss))
    rgba = np.concatenate([rgb, alpha[:, None]], axis=1).round().clip(0, 255).astype(np.uint8)
    o_c, d_c, z_scale = _pixel_rays(c2w, intr, [(0.0, 0.0)])
    t_c, _, _ = cast_rays(shapes, o_c, d_c)
    depth = np.where(np.isfinite(t_c), t_c * z_scale, np.nan).astype(np.float32)
    return rgba.reshape(h, w, 4), depth.reshape(h, w)


def render_views(shapes: tuple[Shape, ...] | SyntheticScene, c2w: np.ndarray,
                 intrinsics: Intrinsics | list[Intrinsics], supersample: int = 2
                 ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Ground-truth renders at any poses.

    shapes: a SyntheticScene, its `.shapes`, or `turntable_shapes(seed)` (the analytic primitives; the
    meshes are only their tessellation). c2w: (N, 4, 4) or (4, 4) float64 OpenCV axes, world frame.
    intrinsics: one Intrinsics for all views, or N (distortion honoured).
    Returns N rgba (H, W, 4) uint8 images and N z-depth (H, W) float32 maps (NaN on miss).
    """
    if isinstance(shapes, SyntheticScene):
        shapes = shapes.shapes
    if not all(isinstance(s, Shape) for s in shapes):
        raise TypeError("render_views needs the scene's analytic shapes (SyntheticScene.shapes), not meshes")
    c2w = np.asarray(c2w, dtype=np.float64).reshape(-1, 4, 4)
    intrs = intrinsics if isinstance(intrinsics, list) else [intrinsics] * len(c2w)
    rgba, depth = [], []
    for pose, intr in zip(c2w, intrs, strict=True):
        img, dep = render_view(shapes, pose, intr, supersample)
        rgba.append(img)
        depth.append(dep)
    return rgba, depth


# --- ground-truth meshes ---------------------------------------------------------------------------------

def shape_mesh(shape: Shape) -> trimesh.Trimesh:
    """Fine tessellation of one primitive (within ~1e-4 of the analytic surface), world frame, with
    vertex colours set to the texture's albedo."""
    sx, _, sz = shape.size
    if shape.kind == "box":
        mesh = trimesh.creation.box(extents=2 * np.asarray(shape.size))
    elif shape.kind == "sphere":
        mesh = trimesh.creation.icosphere(subdivisions=5, radius=sx)
    elif shape.kind == "cylinder":
        mesh = trimesh.creation.cylinder(radius=sx, height=sz, sections=256)
        mesh.apply_translation((0, 0, sz / 2))
    elif shape.kind == "cone":
        mesh = trimesh.creation.cone(radius=sx, height=sz, sections=256)
    else:
        raise ValueError(f"unknown shape kind {shape.kind!r}")
    albedo = _TEXTURES[shape.texture](np.asarray(mesh.vertices), np.asarray(mesh.vertex_normals), shape.seed)
    mesh.visual.vertex_colors = np.concatenate(
        [(np.clip(albedo, 0, 1) * 255).round().astype(np.uint8), np.full((len(albedo), 1), 255, np.uint8)], 1)
    transform = np.eye(4)
    transform[:3, :3] = _rot_z(shape.yaw)
    transform[:3, 3] = _local_origin(shape)
    mesh.apply_transform(transform)
    return mesh


def scene_meshes(shapes: tuple[Shape, ...]) -> tuple[trimesh.Trimesh, trimesh.Trimesh]:
    """(full mesh: ground + objects, objects-only mesh), world frame. shapes[0] is the ground."""
    parts = [shape_mesh(s) for s in shapes]
    return trimesh.util.concatenate(parts), trimesh.util.concatenate(parts[1:])


# --- the capture -----------------------------------------------------------------------------------------

def render_synthetic(config: SyntheticConfig | None = None) -> SyntheticScene:
    """Render the turntable capture in memory (see the module docstring)."""
    config = config or SyntheticConfig()
    shapes = turntable_shapes(config.seed)
    c2w = orbit_poses(config)
    intr = pinhole(config.size, config.fov_deg)
    images, depth = render_views(shapes, c2w, intr, config.supersample)
    capture = Capture(images, [intr] * len(images), c2w, [f"r_{i:03d}.png" for i in range(len(images))],
                      frame=FrameInfo("arbitrary", None, "synthetic turntable, world up +z, ground top z=0"))
    mesh, objects = scene_meshes(shapes)
    diag = float(np.linalg.norm(mesh.bounds[1] - mesh.bounds[0]))
    return SyntheticScene(capture, depth, mesh, objects, diag, shapes, config)


def write_synthetic(config: SyntheticConfig | None, out_dir: str | Path) -> Path:
    """Render and write the capture into `out_dir`; returns `out_dir`.

    Writes images/r_XXX.png (RGBA), transforms.json (OpenGL axes, via core.dataparsers.readers), depth/r_XXX.npy
    (float32 z-depth, NaN on miss), gt_mesh.ply (ground + objects), gt_objects.ply and meta.json.
    `core.dataparsers.readers.load_capture(out_dir)` reads it back.
    """
    config = config or SyntheticConfig()
    out = Path(out_dir)
    start = time.perf_counter()
    scene = render_synthetic(config)
    write_capture(scene.capture, out)
    (out / "depth").mkdir(exist_ok=True)
    for name, dep in zip(scene.capture.names, scene.depth, strict=True):
        np.save(out / "depth" / (Path(name).stem + ".npy"), dep)
    scene.mesh.export(out / "gt_mesh.ply")
    scene.objects_mesh.export(out / "gt_objects.ply")
    meta = {"config": asdict(config), "scene_bbox_diagonal": scene.scene_bbox_diagonal,
            "world_up": list(WORLD_UP), "depth": "z-depth along the camera's forward axis, NaN on miss",
            "shapes": [asdict(s) for s in scene.shapes], "render_seconds": time.perf_counter() - start}
    (out / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return out


def synth_main(out_dir: str | Path, views: int = 40, size: int = 200, seed: int = 0) -> Path:
    """CLI entry (`nerfserve synth OUT_DIR --views 40 --size 200`): write the capture, return its folder."""
    return write_synthetic(SyntheticConfig(views=views, size=size, seed=seed), out_dir)
