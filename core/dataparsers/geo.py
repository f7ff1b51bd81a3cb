"""GPS to local east-north-up (ENU) metres, and similarity (Sim3) alignment of point sets and poses.

WGS84 ellipsoid throughout. ENU axes: x east, y north, z up, in metres, about a stated origin
(latitude_deg, longitude_deg, altitude_m). Poses are 4x4 camera-to-world (OpenCV camera axes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

WGS84_A = 6378137.0                     # semi-major axis, metres
WGS84_F = 1.0 / 298.257223563           # flattening
WGS84_E2 = WGS84_F * (2.0 - WGS84_F)    # first eccentricity squared


def geodetic_to_ecef(lla: np.ndarray) -> np.ndarray:
    """lla: (N, 3) float64 [latitude_deg, longitude_deg, altitude_m] (WGS84).

    Returns (N, 3) float64 earth-centred earth-fixed coordinates, metres.
    """
    lla = np.atleast_2d(np.asarray(lla, dtype=np.float64))
    lat, lon, alt = np.deg2rad(lla[:, 0]), np.deg2rad(lla[:, 1]), lla[:, 2]
    n = WGS84_A / np.sqrt(1.0 - WGS84_E2 * np.sin(lat) ** 2)
    x = (n + alt) * np.cos(lat) * np.cos(lon)
    y = (n + alt) * np.cos(lat) * np.sin(lon)
    z = (n * (1.0 - WGS84_E2) + alt) * np.sin(lat)
    return np.stack([x, y, z], axis=-1)


def enu_rotation(lat_deg: float, lon_deg: float) -> np.ndarray:
    """(3, 3) float64 rotation taking ECEF offsets to ENU at (lat, lon): rows are east, north, up."""
    lat, lon = np.deg2rad(lat_deg), np.deg2rad(lon_deg)
    return np.array([
        [-np.sin(lon), np.cos(lon), 0.0],
        [-np.sin(lat) * np.cos(lon), -np.sin(lat) * np.sin(lon), np.cos(lat)],
        [np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)],
    ])


def geodetic_to_enu(lla: np.ndarray, origin: tuple[float, float, float]) -> np.ndarray:
    """lla: (N, 3) [lat_deg, lon_deg, alt_m]; origin: (lat_deg, lon_deg, alt_m).

    Returns (N, 3) float64 ENU metres (east, north, up) relative to the origin.
    """
    o = np.asarray(origin, dtype=np.float64)
    d = geodetic_to_ecef(lla) - geodetic_to_ecef(o[None])
    return d @ enu_rotation(o[0], o[1]).T


def enu_origin(lla: np.ndarray) -> tuple[float, float, float]:
    """A stable ENU origin for a set of GPS fixes: the mean latitude/longitude, minimum altitude.

    lla: (N, 3) [lat_deg, lon_deg, alt_m]. The minimum altitude puts the cameras at z >= 0.
    """
    lla = np.atleast_2d(np.asarray(lla, dtype=np.float64))
    return float(lla[:, 0].mean()), float(lla[:, 1].mean()), float(lla[:, 2].min())


@dataclass(frozen=True)
class Sim3:
    """x_new = scale * rotation @ x_old + translation.

    rotation: (3, 3) float64 proper rotation. translation: (3,) float64, new-frame units.
    """

    scale: float
    rotation: np.ndarray
    translation: np.ndarray

    @staticmethod
    def identity() -> Sim3:
        return Sim3(1.0, np.eye(3), np.zeros(3))

    def apply_points(self, points: np.ndarray) -> np.ndarray:
        """points: (..., 3) old frame -> (..., 3) new frame."""
        return self.scale * np.asarray(points, dtype=np.float64) @ self.rotation.T + self.translation

    def apply_c2w(self, c2w: np.ndarray) -> np.ndarray:
        """c2w: (..., 4, 4) float64 camera-to-world in the old frame -> same in the new frame.

        The camera rotation is left-multiplied by `rotation`; the centre is mapped as a point.
        The scale does not enter the rotation block, so the result stays a rigid pose.
        """
        out = np.array(c2w, dtype=np.float64, copy=True)
        out[..., :3, :3] = self.rotation @ out[..., :3, :3]
        out[..., :3, 3] = self.apply_points(out[..., :3, 3])
        return out

    def matrix(self) -> np.ndarray:
        """(4, 4) float64 homogeneous matrix of the transform."""
        m = np.eye(4)
        m[:3, :3] = self.scale * self.rotation
        m[:3, 3] = self.translation
        return m

    def to_dict(self) -> dict:
        return {"scale": self.scale, "rotation": self.rotation.tolist(),
                "translation": self.translation.tolist()}


def fit_sim3(src: np.ndarray, dst: np.ndarray, with_scale: bool = True) -> Sim3:
    """Least-squares similarity mapping src onto dst (Umeyama 1991).

    src, dst: (N, 3) float64 corresponding points, N >= 3 and not all collinear.
    with_scale: False fits a rigid transform (scale 1).
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 3 or len(src) < 3:
        raise ValueError(f"fit_sim3 needs two (N>=3, 3) arrays, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    cov = xd.T @ xs / len(src)
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[2] = -1.0
    rot = u @ np.diag(d) @ vt
    var_s = (xs ** 2).sum() / len(src)
    scale = float((sig * d).sum() / var_s) if with_scale and var_s > 0 else 1.0
    return Sim3(scale, rot, mu_d - scale * rot @ mu_s)


def fit_sim3_robust(src: np.ndarray, dst: np.ndarray, iterations: int = 3, trim: float = 3.0
                    ) -> tuple[Sim3, np.ndarray]:
    """`fit_sim3`, refitted after dropping points whose residual exceeds `trim` x the median residual.

    src, dst: (N, 3) float64. Returns the transform and an (N,) bool inlier mask.
    """
    inliers = np.ones(len(src), dtype=bool)
    sim = fit_sim3(src, dst)
    for _ in range(iterations):
        res = np.linalg.norm(sim.apply_points(src) - dst, axis=1)
        new = res <= max(trim * float(np.median(res)), 1e-9)
        if new.sum() < 3 or np.array_equal(new, inliers):
            break
        inliers = new
        sim = fit_sim3(src[inliers], dst[inliers])
    return sim, inliers


def rotation_angle_deg(rot_a: np.ndarray, rot_b: np.ndarray) -> np.ndarray:
    """Angle of rot_a^T rot_b in degrees. rot_a, rot_b: (..., 3, 3). Returns (...,) float64."""
    rel = np.einsum("...ji,...jk->...ik", rot_a, rot_b)
    cos = (np.trace(rel, axis1=-2, axis2=-1) - 1.0) / 2.0
    return np.rad2deg(np.arccos(np.clip(cos, -1.0, 1.0)))


@dataclass(frozen=True)
class PoseComparison:
    """Estimated poses Sim3-aligned onto reference poses.

    rotation_error_deg, position_error: (N,) float64; positions in reference-frame units.
    extent: the reference scene extent (max distance of a camera centre from their mean).
    """

    sim3: Sim3
    rotation_error_deg: np.ndarray
    position_error: np.ndarray
    extent: float

    @property
    def median_rotation_deg(self) -> float:
        return float(np.median(self.rotation_error_deg))

    @property
    def median_position_fraction(self) -> float:
        """Median position error as a fraction of the reference scene extent."""
        return float(np.median(self.position_error) / max(self.extent, 1e-12))


def compare_poses(c2w_est: np.ndarray, c2w_ref: np.ndarray) -> PoseComparison:
    """Align estimated camera centres onto reference ones (Sim3), then measure pose errors.

    c2w_est: (N, 4, 4) float64 in the estimate's frame; c2w_ref: (N, 4, 4) float64, same cameras
    in the same order, reference frame. Both OpenCV camera axes.
    """
    sim = fit_sim3(c2w_est[:, :3, 3], c2w_ref[:, :3, 3])
    aligned = sim.apply_c2w(c2w_est)
    rot_err = rotation_angle_deg(aligned[:, :3, :3], c2w_ref[:, :3, :3])
    pos_err = np.linalg.norm(aligned[:, :3, 3] - c2w_ref[:, :3, 3], axis=1)
    centres = c2w_ref[:, :3, 3]
    extent = float(np.linalg.norm(centres - centres.mean(0), axis=1).max())
    return PoseComparison(sim, rot_err, pos_err, extent)
