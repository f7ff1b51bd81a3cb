"""core/functional/metrics.py against known answers and against scikit-image."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh
from fixtures.quality import chamfer_distance, sample_mesh_points
from scipy.ndimage import gaussian_filter
from skimage.metrics import structural_similarity

from core.functional.metrics import depth_abs_rel, depth_rmse, psnr, ssim


def _natural_image(seed: int, shape=(64, 80, 3)) -> np.ndarray:
    """Smooth structure plus fine detail, in [0, 1]."""
    rng = np.random.default_rng(seed)
    coarse = gaussian_filter(rng.random(shape), sigma=(4, 4, 0))
    fine = gaussian_filter(rng.random(shape), sigma=(0.7, 0.7, 0))
    img = 0.7 * (coarse - coarse.min()) / np.ptp(coarse) + 0.3 * fine
    return np.clip(img, 0, 1)


def test_psnr_of_known_mse():
    gt = np.full((8, 8, 3), 0.5)
    assert psnr(gt + 0.1, gt) == pytest.approx(20.0)  # MSE 0.01
    assert psnr(gt + 0.01, gt) == pytest.approx(40.0)  # MSE 1e-4
    assert psnr(gt, gt) == float("inf")


def test_psnr_mask_counts_only_selected_pixels():
    gt = np.zeros((4, 4, 3))
    pred = gt.copy()
    pred[:2] = 1.0  # wrong everywhere in the top half
    mask = np.zeros((4, 4), bool)
    mask[2:] = True
    assert psnr(pred, gt, mask) == float("inf")
    mask[1, 0] = True  # 1 wrong pixel of 9: MSE = 1/9
    assert psnr(pred, gt, mask) == pytest.approx(-10 * np.log10(1 / 9))
    assert psnr(pred, gt) == pytest.approx(-10 * np.log10(0.5))


@pytest.mark.parametrize("noise", [0.02, 0.1, 0.3])
def test_ssim_is_the_nerf_evaluation_setting(noise):
    """The Gaussian 11 px window of NeRF papers, not skimage's default 7 px uniform one; more noise, lower SSIM."""
    gt = _natural_image(0)
    pred = np.clip(gt + noise * np.random.default_rng(1).normal(size=gt.shape), 0, 1)
    ours = ssim(pred, gt)
    gaussian = structural_similarity(pred, gt, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                     data_range=1.0, channel_axis=-1)
    uniform = structural_similarity(pred, gt, data_range=1.0, channel_axis=-1)
    assert ours == pytest.approx(gaussian, abs=1e-9)
    assert abs(ours - uniform) > 1e-4
    assert ours < 0.99  # the noise is seen
    less = np.clip(gt + noise / 2 * np.random.default_rng(1).normal(size=gt.shape), 0, 1)
    assert ssim(less, gt) > ours


def test_ssim_identity_grey_and_structure():
    a, b = _natural_image(2), _natural_image(3)
    assert ssim(a, a) == pytest.approx(1.0)
    assert ssim(a[..., 0], a[..., 0]) == pytest.approx(1.0)
    assert ssim(a, b) < 0.5  # unrelated images
    with pytest.raises(ValueError):
        ssim(a[:8, :8], a[:8, :8])


def test_depth_errors_ignore_nans_and_mask():
    gt = np.array([[1.0, 2.0], [4.0, np.nan]])
    pred = np.array([[1.1, 1.8], [np.nan, 5.0]])
    assert depth_abs_rel(pred, gt) == pytest.approx((0.1 / 1 + 0.2 / 2) / 2)
    assert depth_rmse(pred, gt) == pytest.approx(np.sqrt((0.01 + 0.04) / 2))
    mask = np.array([[False, True], [True, True]])
    assert depth_rmse(pred, gt, mask) == pytest.approx(0.2)
    with pytest.raises(ValueError):
        depth_rmse(pred, gt, np.zeros((2, 2), bool))


def test_chamfer_of_a_shifted_grid():
    g = np.arange(10, dtype=float)
    a = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)  # spacing 1
    shift = np.array([0.1, -0.2, 0.2])  # |shift| = 0.3 < half the spacing
    sym, ab, ba = chamfer_distance(a, a + shift)
    assert ab == pytest.approx(0.3) and ba == pytest.approx(0.3) and sym == pytest.approx(0.3)


def test_chamfer_is_asymmetric_with_an_outlier():
    a = np.zeros((4, 3))
    b = np.array([[0, 0, 0], [3.0, 4.0, 0]])  # one point 5 away from a
    sym, ab, ba = chamfer_distance(a, b)
    assert ab == pytest.approx(0.0) and ba == pytest.approx(2.5) and sym == pytest.approx(1.25)


def test_sample_mesh_points_lie_on_the_surface_and_are_seeded():
    box = trimesh.creation.box(extents=(1.0, 2.0, 4.0))
    pts = sample_mesh_points(box, 4000, seed=3)
    assert pts.shape == (4000, 3) and pts.dtype == np.float64
    on_face = np.isclose(np.abs(pts), [0.5, 1.0, 2.0]).any(axis=1)
    assert on_face.all()
    # Area-weighted: the two 1x2 faces hold 4 of the 28 units of area.
    on_small = np.isclose(np.abs(pts[:, 2]), 2.0).mean()
    assert abs(on_small - 4 / 28) < 0.02
    assert np.array_equal(pts, sample_mesh_points(box, 4000, seed=3))
    assert not np.array_equal(pts, sample_mesh_points(box, 4000, seed=4))
