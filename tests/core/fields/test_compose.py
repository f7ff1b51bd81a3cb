"""The composition operator (GIRAFFE): sigma = sum sigma_i, f = sum sigma_i f_i / sigma; and ComposedField."""

from __future__ import annotations

import numpy as np
import torch

from core.fields.base import FieldOutput
from core.fields.compose import ComposedField, compose, compose_outputs, region_mask
from core.fields.encoding import HashGridConfig
from core.fields.nerf import FieldConfig, HashNerfField


def test_one_field_is_the_identity():
    sigma = torch.rand(50) * 10
    sigma[:5] = 0.0
    feats = torch.randn(50, 16)
    total, f = compose([sigma], [feats])
    assert torch.equal(total, sigma) and torch.equal(f, feats)
    out = compose_outputs([FieldOutput(sigma, feats)])
    assert torch.equal(out.density, sigma) and torch.equal(out.features, feats)


def test_two_fields_with_zero_density_in_one():
    sigma_a = torch.tensor([0.5, 3.0, 100.0, 1e-3])
    f_a, f_b = torch.randn(4, 8), torch.randn(4, 8)
    total, f = compose([sigma_a, torch.zeros(4)], [f_a, f_b])
    assert torch.allclose(total, sigma_a)
    assert torch.allclose(f, f_a, atol=1e-5)            # the empty field contributes nothing
    total, f = compose([torch.zeros(4), sigma_a], [f_a, f_b])
    assert torch.allclose(f, f_b, atol=1e-5)


def test_density_weighted_mean_matches_the_formula():
    sigmas = [torch.rand(30) * 5 + 0.1 for _ in range(3)]
    feats = [torch.randn(30, 4) for _ in range(3)]
    total, f = compose(sigmas, feats)
    expected = sum(s[:, None] * x for s, x in zip(sigmas, feats, strict=True)) / sum(sigmas)[:, None]
    assert torch.allclose(total, sum(sigmas))
    assert torch.allclose(f, expected, atol=1e-5)


def test_gradients_flow_to_both_fields():
    sa = torch.tensor([1.0, 2.0, 0.5], requires_grad=True)
    sb = torch.tensor([0.3, 4.0, 0.5], requires_grad=True)
    fa = torch.randn(3, 5, requires_grad=True)
    fb = torch.randn(3, 5, requires_grad=True)
    total, f = compose([sa, sb], [fa, fb])
    (total.sum() + (f * torch.randn(3, 5)).sum()).backward()
    for g in (sa.grad, sb.grad, fa.grad, fb.grad):
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    # d f / d f_a = sigma_a / sigma for each point (a linear map, so check with a unit upstream gradient).
    fa.grad = None
    _, f = compose([sa.detach(), sb.detach()], [fa, fb.detach()])
    f.sum().backward()
    assert torch.allclose(fa.grad[:, 0], (sa / (sa + sb)).detach(), atol=1e-6)


def test_no_nan_where_every_density_is_zero():
    sa = torch.zeros(6, requires_grad=True)
    sb = torch.zeros(6, requires_grad=True)
    fa = torch.randn(6, 3, requires_grad=True)
    fb = torch.randn(6, 3, requires_grad=True)
    total, f = compose([sa, sb], [fa, fb])
    assert torch.equal(total, torch.zeros(6))
    assert torch.allclose(f, 0.5 * (fa + fb))            # the plain mean where sigma = 0
    (f.sum() + total.sum()).backward()
    for g in (sa.grad, sb.grad, fa.grad, fb.grad):
        assert torch.isfinite(g).all()


def test_region_mask_box_and_plane():
    pts = torch.tensor([[0.0, 0.0, 0.5], [0.0, 0.0, -0.5], [2.0, 0.0, 0.5], [0.9, -0.9, 0.01]])
    lo, hi = -torch.ones(3), torch.ones(3)
    no_plane = torch.zeros(4)
    assert region_mask(pts, lo, hi, no_plane).tolist() == [True, True, False, True]
    above = torch.tensor([0.0, 0.0, 1.0, 0.0])             # keep z >= 0
    assert region_mask(pts, lo, hi, above).tolist() == [True, False, False, True]


def _small_field(contracted: bool, seed: int) -> HashNerfField:
    grid = HashGridConfig(n_levels=4, features_per_level=2, log2_hashmap_size=12, base_resolution=4,
                          max_resolution=32)
    return HashNerfField(FieldConfig(grid=grid, hidden=16, out_features=5, out_activation="none"),
                         contracted, seed=seed)


def test_composed_field_splits_space_and_keeps_the_field_contract():
    torch.manual_seed(0)
    fg, bg = _small_field(False, 0), _small_field(True, 1)
    field = ComposedField(fg, bg)
    field.set_region([-0.5, -0.5, 0.0], [0.5, 0.5, 0.5])
    pts = torch.tensor([[0.1, 0.1, 0.25], [0.1, 0.1, -0.25], [3.0, 0.0, 0.0]])
    dirs = torch.nn.functional.normalize(torch.randn(3, 3), dim=-1)
    out = field(pts, dirs, torch.full((3,), -1))
    assert out.density.shape == (3,) and out.features.shape == (3, 5)
    fg_d, bg_d = field.density_parts(pts)
    assert fg_d[0] > 0 and bg_d[0] == 0                    # inside the region: foreground only
    assert fg_d[1] == 0 and bg_d[1] > 0 and bg_d[2] > 0     # outside: background only
    assert torch.allclose(out.density, fg_d + bg_d)
    assert torch.allclose(field.density(pts, part="foreground"), fg_d)
    # The foreground sees its box as [-1, 1]^3: the box centre maps to the field's origin.
    centre = torch.tensor([[0.0, 0.0, 0.25]])
    assert torch.allclose(field.density(centre, part="foreground"), fg.density(torch.zeros(1, 3)))
    # Features of a foreground point are the foreground field's own (the background is 0 there).
    own = fg(field.to_box(pts[:1]), dirs[:1], torch.full((1,), -1)).features
    assert torch.allclose(out.features[:1], own, atol=1e-5)
    # Gradients reach both fields through one loss.
    (out.features.sum() + out.density.sum()).backward()
    assert fg.encoding.params.grad.abs().sum() > 0 and bg.encoding.params.grad.abs().sum() > 0


def test_region_is_saved_with_the_state_dict():
    field = ComposedField(_small_field(False, 0), _small_field(True, 1))
    field.set_region([-0.2, -0.3, 0.0], [0.4, 0.5, 0.6], [0.0, 0.0, 1.0, 0.1])
    other = ComposedField(_small_field(False, 0), _small_field(True, 1))
    other.load_state_dict(field.state_dict())
    assert torch.equal(other.box_min, torch.tensor([-0.2, -0.3, 0.0]))
    assert torch.equal(other.plane, torch.tensor([0.0, 0.0, 1.0, 0.1]))


def test_foreground_sparsity_starts_with_the_plane_and_acts_on_the_foreground_only():
    """Training renders of a composed model carry the foreground's opacity once a support plane is cut (the
    penalty is 0 before), then weight x its mean, and its gradient reaches the foreground field only."""
    from core.functional.rays import RayBundle
    from core.functional.sampling import SamplerConfig
    from core.models.losses import foreground_sparsity
    from core.models.radiance import RadianceModel

    torch.manual_seed(0)
    model = RadianceModel(ComposedField(_small_field(False, 0), _small_field(True, 1)), True,
                          SamplerConfig(kind="hierarchical", n_coarse=32, n_fine=16))
    model.field.set_region([-0.5, -0.5, -0.5], [0.5, 0.5, 0.5])
    # Rays down the z axis through the box (x, y in the box) and beside it (x = 2).
    origins = torch.tensor([[0.1, 0.0, 3.0], [-0.2, 0.2, 3.0], [2.0, 0.0, 3.0]])
    rays = RayBundle(origins, torch.tensor([[0.0, 0.0, -1.0]]).expand(3, 3), torch.ones(3), torch.full((3,), -1))
    out = model(rays, None, training=True)
    assert out.foreground_opacity is None and foreground_sparsity(out, 0.01) == 0.0      # no plane yet
    model.field.set_region([-0.5, -0.5, -0.5], [0.5, 0.5, 0.5], [0.0, 0.0, 1.0, 0.0])
    out = model(rays, None, training=True)
    assert out.foreground_opacity.shape == (3,) and out.foreground_opacity[2] == 0
    assert (out.foreground_opacity <= out.opacity + 1e-6).all() and out.foreground_opacity[:2].sum() > 0
    assert model(rays, None, training=False).foreground_opacity is None
    loss = foreground_sparsity(out, 0.01)
    assert torch.isclose(loss, 0.01 * out.foreground_opacity.mean())
    loss.backward()
    assert model.field.foreground.encoding.params.grad.abs().sum() > 0
    assert model.field.background.encoding.params.grad is None or \
        model.field.background.encoding.params.grad.abs().sum() == 0


def _camera_ring(n: int, radius: float, height: float, arc_deg: float = 360.0) -> np.ndarray:
    """(n, 3) camera centres on a horizontal arc (degrees from +x) around the z axis at `height`."""
    a = np.deg2rad(np.linspace(-arc_deg / 2, arc_deg / 2, n, endpoint=arc_deg < 360))
    return np.c_[radius * np.cos(a), radius * np.sin(a), np.full(n, height)]


def test_support_plane_is_the_plane_the_cameras_see_from_one_side():
    from core.scene.composition import fit_support_plane

    rng = np.random.default_rng(0)
    ground = np.c_[rng.uniform(-1, 1, (3000, 2)), rng.normal(0.2, 0.004, 3000)]        # the plane z = 0.2
    sphere = rng.normal(size=(1500, 3))
    sphere = sphere / np.linalg.norm(sphere, axis=1, keepdims=True) * 0.3 + [0.3, 0.2, 0.5]
    # A vertical panel the cameras circle (they see both of its faces): not a support.
    panel = np.c_[rng.uniform(-1, 1, 2000), rng.normal(0.9, 0.004, 2000), rng.uniform(0.2, 1.0, 2000)]
    ring = _camera_ring(16, 3.0, 1.5)
    plane = fit_support_plane(np.concatenate([ground, sphere, panel]), ring, tol=0.02)
    assert plane is not None
    assert np.allclose(plane[:3], [0, 0, 1], atol=0.02)
    assert 0.2 + 0.01 <= plane[3] <= 0.2 + 0.03          # just above the ground's own surface
    assert (sphere @ plane[:3] >= plane[3]).mean() > 0.9  # the object stays above it
    # Without the ground, the panel is the largest plane, but cameras on both sides of it rule it out.
    assert fit_support_plane(np.concatenate([sphere, panel]), ring, tol=0.02) is None
    # Only the object (no dominant plane): none. No cameras: nothing to tell a support by.
    assert fit_support_plane(sphere, ring, tol=0.02) is None
    assert fit_support_plane(ground, np.zeros((0, 3)), tol=0.02) is None
    # A mounted head: the wall x = -0.5 behind the sphere, the cameras on an arc in front of it. The wall is
    # cut, just in front of its surface, and the sphere stays on the cameras' side.
    wall = np.c_[rng.normal(-0.5, 0.004, 3000), rng.uniform(-1, 1, (3000, 2))]
    front = _camera_ring(12, 3.0, 0.5, arc_deg=150)
    plane = fit_support_plane(np.concatenate([wall, sphere]), front, tol=0.02)
    assert plane is not None and np.allclose(plane[:3], [1, 0, 0], atol=0.02)
    assert -0.5 + 0.01 <= plane[3] <= -0.5 + 0.03 and (sphere @ plane[:3] >= plane[3]).mean() > 0.9
    # A flat part of the subject (a tilted plaque through it, every camera on one side) with more points than
    # a noisy wall: what lies behind the plaque (the whole wall) rules it out; the wall is the support.
    noisy_wall = np.c_[rng.normal(-0.5, 0.02, 3000), rng.uniform(-1, 1, (3000, 2))]
    uv = rng.uniform(-0.4, 0.4, (2500, 2))
    plaque = np.c_[-0.5 * uv[:, 1], uv[:, 0], uv[:, 1]]                     # the plane x + 0.5 z = 0
    found = fit_support_plane(np.concatenate([noisy_wall, plaque]), front, tol=0.02)
    assert found is not None and np.allclose(found[:3], [1, 0, 0], atol=0.05)
    # Any frame: the same scene rotated (cameras too) gives the same plane, rotated.
    c, s = np.cos(np.deg2rad(20)), np.sin(np.deg2rad(20))
    rot = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    tilted = fit_support_plane(np.concatenate([wall, sphere]) @ rot.T, front @ rot.T, tol=0.02)
    assert np.allclose(tilted[:3], rot @ [1, 0, 0], atol=0.02) and abs(tilted[3] - plane[3]) < 0.01


def test_a_thick_wall_is_found_at_the_coarser_tolerance_and_a_thin_one_keeps_the_fine_cut():
    """support_plane_of_points: a wall whose points spread over a band (sd 0.03) too deep for the fine
    tolerance (0.02: under 15% of the points within it) is found at the coarse one (0.04), cut in front of
    the band; a thin wall is found at the fine tolerance, with the tight cut."""
    from core.scene.composition import fit_support_plane, support_plane_of_points

    rng = np.random.default_rng(1)
    sphere = rng.normal(size=(2200, 3))
    sphere = sphere / np.linalg.norm(sphere, axis=1, keepdims=True) * 0.3 + [0.0, 0.2, 0.5]
    front = _camera_ring(12, 3.0, 0.5, arc_deg=150)
    thick = np.c_[rng.normal(-0.5, 0.03, 800), rng.uniform(-1, 1, (800, 2))]
    points = np.concatenate([thick, sphere])
    assert fit_support_plane(points, front, tol=0.02) is None
    plane = support_plane_of_points(points, front, [0.02, 0.04])
    assert plane is not None and np.allclose(plane[:3], [1, 0, 0], atol=0.05)
    assert (thick @ plane[:3] < plane[3]).mean() > 0.9 and (sphere @ plane[:3] >= plane[3]).mean() > 0.9
    thin = np.c_[rng.normal(-0.5, 0.004, 800), rng.uniform(-1, 1, (800, 2))]
    plane = support_plane_of_points(np.concatenate([thin, sphere]), front, [0.02, 0.04])
    assert plane is not None and -0.5 + 0.01 <= plane[3] <= -0.5 + 0.03


def test_foreground_sparsity_weight_is_the_models_unless_given():
    """The weight after the cut defaults per model (the feature field's fuzzier support needs more; README), and
    an explicit value wins; a saved config with a weight loads unchanged."""
    from core.models.config import FOREGROUND_SPARSITY, TrainConfig

    assert TrainConfig(model="nerf").foreground_sparsity_weight == FOREGROUND_SPARSITY["nerf"] == 0.01
    assert TrainConfig(model="feature_field").foreground_sparsity_weight == FOREGROUND_SPARSITY["feature_field"]
    assert FOREGROUND_SPARSITY["feature_field"] > FOREGROUND_SPARSITY["nerf"]
    assert TrainConfig(model="feature_field", foreground_sparsity=0.0).foreground_sparsity_weight == 0.0
    old = TrainConfig.from_dict({**TrainConfig().to_dict(), "foreground_sparsity": 0.02})
    assert old.foreground_sparsity_weight == 0.02
