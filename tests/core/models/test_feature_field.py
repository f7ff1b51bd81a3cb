"""The feature-field model: field, model wiring, patch rays, patch training, rendering, save/load, exports."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from core.engine.evaluation import composite_image
from core.engine.train import train
from core.engine.train_feature import block_centres
from core.errors import UserInputError
from core.fields.compose import ComposedField
from core.fields.feature import FeatureField
from core.fields.neural_renderer import NeuralRenderer
from core.functional.metrics import psnr
from core.functional.rays import rays_from_pixels
from core.models.build import build_feature_model, build_field
from core.models.config import TrainConfig
from core.models.feature import lowres_centres
from core.models.radiance import field_config
from core.scene.capture import compute_normalization
from core.scene.feature import FeatureScene
from core.scene.load import load_scene

# A tiny model: seconds per dozen steps on one CPU core.
TINY = dict(model="feature_field", device="cpu", grid_levels=6, grid_log2_size=14, grid_base_res=8,
            grid_max_res=128, hidden=32, march_steps=48, grid_resolution=16, feature_dim=8, upsample=4,
            patch_size=16, batch_rays=128, checkpoint_every=1000, holdout_every=8)


def tiny(**overrides) -> TrainConfig:
    return TrainConfig(**{**TINY, **overrides})


@pytest.fixture(scope="module")
def small_capture():
    from core.dataparsers.synthetic import SyntheticConfig, render_synthetic

    return render_synthetic(SyntheticConfig(views=10, size=48, supersample=1))


def test_feature_field_outputs_density_and_raw_features():
    cfg = tiny(feature_dim=12)
    field = FeatureField(field_config(cfg, 0), 12, contracted=False)
    pts = torch.rand(20, 3) * 2 - 1
    dirs = torch.nn.functional.normalize(torch.randn(20, 3), dim=-1)
    out = field(pts, dirs, torch.full((20,), -1))
    assert out.density.shape == (20,) and (out.density >= 0).all()
    assert out.features.shape == (20, 12) and out.features.dtype == torch.float32
    assert field.cfg.out_activation == "none" and field.feature_dim == 12
    (out.features.sum() + out.density.sum()).backward()
    assert field.encoding.params.grad.abs().sum() > 0


def test_build_field_composition_splits_bounded_and_contracted():
    plain = build_field(tiny(), contracted=False, n_images=0, device="cpu")
    assert isinstance(plain, FeatureField) and not plain.contracted
    composed = build_field(tiny(composition=True), contracted=False, n_images=0, device="cpu")
    assert isinstance(composed, ComposedField)
    assert not composed.foreground.contracted and composed.background.contracted
    nerf = build_field(tiny(model="nerf", composition=True), contracted=False, n_images=0, device="cpu")
    assert nerf.foreground.cfg.out_features == 3        # the NeRF model composes RGB fields alike
    model = build_feature_model(tiny(composition=True), contracted=False, n_images=0, device=torch.device("cpu"))
    assert model.contracted                              # a composed model is sampled as unbounded


def test_lowres_ray_is_the_centre_of_its_pixel_block():
    u, v = lowres_centres(torch.tensor([8]), torch.tensor([4]), n_u=3, n_v=2, s=4)
    assert u.shape == (1, 2, 3)
    # Low-res pixel (1, 1) covers output pixels u 12..15, v 8..11: centre at 14.0, 10.0 in continuous
    # coordinates, i.e. integer-pixel coordinate 13.5, 9.5 (core.functional.cameras adds the +0.5).
    assert float(u[0, 1, 1]) == 13.5 and float(v[0, 1, 1]) == 9.5


def test_lowres_target_is_the_image_where_the_ray_passes():
    """The low-res loss compares each ray with the image at its own position (bilinear at the block centre),
    not with the block mean: a sharp edge inside a block stays sharp in the target."""
    ramp = torch.arange(8.0).view(1, 1, 1, 8).expand(1, 1, 8, 8)          # value = column index u
    for s in (2, 4, 8):
        target = block_centres(ramp, s)
        u, _ = lowres_centres(torch.tensor([0]), torch.tensor([0]), 8 // s, 8 // s, s)
        assert torch.allclose(target[0, 0], u[0])                       # the ray's own u coordinate
    edge = torch.zeros(1, 1, 4, 4)
    edge[..., 3:] = 1.0                                                  # an edge in the block's last column
    assert float(block_centres(edge, 4)) == 0.0                          # the block mean would say 0.25
    assert float(block_centres(torch.arange(9.0).view(1, 1, 3, 3), 3)) == 4.0   # odd s: the centre pixel


def test_patch_render_matches_the_whole_frame(small_capture, monkeypatch):
    """The training path (patches with a margin) and the rendering path (whole frame, tiled renderer)
    produce the same pixels, so what is trained is what is rendered."""
    torch.manual_seed(0)
    cap = small_capture.capture
    cfg = tiny()
    norm = compute_normalization(cap.c2w)
    model = build_feature_model(cfg, False, len(cap), torch.device("cpu")).eval()
    scene = FeatureScene(model=model, normalization=norm, intrinsics=cap.intrinsics, c2w=cap.c2w, names=cap.names,
                         frame=cap.frame, train_indices=list(range(len(cap))), test_indices=[], config=cfg)
    with torch.no_grad():
        for p in model.renderer.parameters():       # a non-trivial renderer
            p.add_(torch.randn_like(p) * 0.3)
    whole = scene.render(cap.c2w[3], cap.intrinsics[3], background=(0.0, 0.0, 0.0))
    c2w_f = torch.from_numpy(norm.c2w_to_field(cap.c2w[3:4])).float()
    params = torch.from_numpy(cap.intrinsics[3].params()).float()[None]
    with torch.no_grad():
        out, _ = model.patches(c2w_f, params, torch.tensor([-1]), torch.tensor([16]), torch.tensor([8]), 16,
                               margin=4, training=False)
    patch = out.image[0, :3].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(patch, whole.rgb[8:24, 16:32], atol=2e-4)
    with torch.no_grad():
        no_margin, _ = model.patches(c2w_f, params, torch.tensor([-1]), torch.tensor([16]), torch.tensor([8]), 16,
                                     margin=0, training=False)
    edge = (no_margin.image[0, :3].permute(1, 2, 0).numpy() - whole.rgb[8:24, 16:32])[0]
    assert np.abs(edge).max() > 1e-3                 # without a margin the patch border differs
    # Per-pixel features are looked up for the patch and the ring its outputs read only (the renderer's
    # pixel_radius); the rest of the margin gets zeros: the patch is what it is with features everywhere.
    args = (c2w_f, params, torch.tensor([-1]), torch.tensor([16]), torch.tensor([8]), 16)
    with torch.no_grad():
        model.field.encoding.params.normal_(0.0, 1.0)   # features large enough to matter (they start ~1e-4)
        ring_only = model.patches(*args, margin=1, training=False)[0].image
        monkeypatch.setattr(NeuralRenderer, "pixel_radius", property(lambda self: 10 ** 6))
        everywhere = model.patches(*args, margin=1, training=False)[0].image
    torch.testing.assert_close(ring_only, everywhere)


def test_margin_loss_supervises_the_margin_rays_first_skip(small_capture):
    """The margin rays around a patch are rendered as the renderer's context; with margin_loss their
    first-skip colour is supervised too (the stream's patches include the margin), while the full-resolution
    loss stays on the patch: changing only the margin's pixels changes the loss, and only through the low-res
    term. Without it the stream's patches are the patches."""
    from core.engine.loop import prepare
    from core.engine.train_feature import PATCH_MARGIN, patch_training
    from core.models.build import build_model

    cfg = tiny(steps=1, margin_loss=True)
    data = prepare(small_capture.capture, cfg)
    model = build_model(cfg, data.normalization.mode == "unbounded", len(data.train_indices), data.device)
    stream, step, layout = patch_training(model, data, cfg)
    ms = PATCH_MARGIN * cfg.upsample
    with stream:
        batch = next(iter(stream))
    size = layout["patch_size"]
    assert batch.colors.shape[1:3] == (size + 2 * ms, size + 2 * ms)
    torch.manual_seed(0)
    base = step(batch)
    changed = batch.colors.clone()
    changed[:, :ms] = 1.0 - changed[:, :ms]                         # the top margin band only
    torch.manual_seed(0)
    other = step(type(batch)(batch.image_index, batch.u0, batch.v0, changed))
    assert abs(other.loss.item() - base.loss.item()) > 1e-4         # the margin is supervised
    assert float(other.mse) == pytest.approx(float(base.mse), abs=1e-7)  # but not at full resolution
    plain_stream, plain_step, plain = patch_training(model, data, tiny(steps=1))
    with plain_stream:
        plain_batch = next(iter(plain_stream))
    assert plain_batch.colors.shape[1:3] == (plain["patch_size"], plain["patch_size"])
    assert torch.isfinite(plain_step(plain_batch).loss)


def test_margin_rays_are_context_without_gradients(small_capture):
    """Without margin_loss a training step renders the margin rays without gradients: the same render, but
    only the patch's own rays reach the field."""
    torch.manual_seed(0)
    cap = small_capture.capture
    model = build_feature_model(tiny(skip_kernel=1), False, len(cap), torch.device("cpu"))   # a ray's own skip
    with torch.no_grad():
        model.field.encoding.params.normal_(0.0, 0.5)
        for p in model.renderer.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    c2w_f = torch.from_numpy(compute_normalization(cap.c2w).c2w_to_field(cap.c2w[2:4])).float()
    params = torch.from_numpy(np.stack([cap.intrinsics[i].params() for i in (2, 3)])).float()
    args = (c2w_f, params, torch.tensor([2, 3]), torch.tensor([16, 0]), torch.tensor([8, 20]), 16, 1, False)

    def grads(margin_grad: bool, part: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        model.zero_grad()
        rendered, out = model.patches(*args, margin_grad=margin_grad)
        loss = rendered.low_res[:, :, 0].sum() if part == "margin" else rendered.image.sum()
        loss.backward()
        return rendered.image.detach(), out.depth.detach(), model.field.encoding.params.grad.clone()

    image, depth, g_margin = grads(True, "margin")
    image_nm, depth_nm, g_margin_nm = grads(False, "margin")
    torch.testing.assert_close(image_nm, image)
    torch.testing.assert_close(depth_nm, depth)                   # per-ray outputs back in grid order
    assert g_margin.abs().sum() > 0 and g_margin_nm.abs().sum() == 0
    _, _, g_patch_nm = grads(False, "patch")
    assert g_patch_nm.abs().sum() > 0


@pytest.mark.parametrize("overrides, margin_grad", [({}, False), ({"margin_loss": True}, True),
                                                     ({"composition": True}, True)])
def test_training_step_grads_the_margin_only_where_a_loss_needs_it(small_capture, monkeypatch, overrides,
                                                                     margin_grad):
    """The margin rays keep their gradients with margin_loss (their first skip is supervised) and with
    composition (the foreground-opacity loss was balanced with them); otherwise they are context only."""
    from core.engine.loop import prepare
    from core.engine.train_feature import patch_training
    from core.models.build import build_model

    cfg = tiny(steps=1, **overrides)
    data = prepare(small_capture.capture, cfg)
    model = build_model(cfg, data.normalization.mode == "unbounded", len(data.train_indices), data.device)
    seen, patches = [], model.patches
    monkeypatch.setattr(model, "patches", lambda *a, **k: seen.append(k["margin_grad"]) or patches(*a, **k))
    stream, step, _ = patch_training(model, data, cfg)
    with stream:
        assert torch.isfinite(step(next(iter(stream))).loss)
    assert seen == [margin_grad]


def test_patch_rays_are_the_frames_rays(small_capture):
    cap = small_capture.capture
    c2w = torch.from_numpy(cap.c2w[:1]).float()
    params = torch.from_numpy(cap.intrinsics[0].params()).float()[None]
    u, v = lowres_centres(torch.tensor([0]), torch.tensor([0]), 12, 12, 4)
    rays = rays_from_pixels(c2w.expand(144, -1, -1), params.expand(144, -1), u.reshape(-1), v.reshape(-1))
    # The mean direction of a 4 x 4 block of full-resolution rays is the low-res ray (to ~1e-4, perspective;
    # half a pixel off would be ~1e-2 here).
    vv, uu = torch.meshgrid(torch.arange(48), torch.arange(48), indexing="ij")
    full = rays_from_pixels(c2w.expand(48 * 48, -1, -1), params.expand(48 * 48, -1), uu.reshape(-1), vv.reshape(-1))
    block = full.directions.view(12, 4, 12, 4, 3).mean((1, 3)).reshape(-1, 3)
    block = torch.nn.functional.normalize(block, dim=-1)
    assert torch.allclose(block, rays.directions, atol=1e-3)


def test_few_step_training_learns_and_resumes(small_capture, tmp_path):
    """Patch training through core.engine.train.train: the rendered training views gain >= 3 dB over the untrained
    model in 80 steps; checkpoints resume; renders have the asked size, and exact depth changes only depth."""
    cap = small_capture.capture
    ckpt = tmp_path / "ckpt"

    def mean_psnr(scene) -> float:
        return float(np.mean([psnr(scene.render(cap.c2w[i], cap.intrinsics[i]).rgb, composite_image(cap.images[i]))
                              for i in scene.train_indices[:3]]))

    untrained = mean_psnr(train(cap, tiny(steps=0), evaluate_holdout=False))
    first = train(cap, tiny(steps=80, batch_rays=256, checkpoint_every=40), checkpoint_dir=ckpt,
                  evaluate_holdout=False)
    assert isinstance(first, FeatureScene)
    assert mean_psnr(first) > untrained + 3.0, (mean_psnr(first), untrained)
    assert first.metrics["patch_size"] == 16 and first.metrics["patches_per_batch"] >= 2
    assert sorted(p.name for p in ckpt.iterdir())[-1] == "ckpt_00000080.pt"
    resumed = train(cap, tiny(steps=84, batch_rays=256, checkpoint_every=40), checkpoint_dir=ckpt,
                    evaluate_holdout=False)
    assert resumed.metrics["resumed_from"] == 80
    r = resumed.render(cap.c2w[1], cap.intrinsics[1], width=40, height=30)
    assert r.rgb.shape == (30, 40, 3) and r.depth.shape == (30, 40) and r.opacity.shape == (30, 40)
    assert np.isfinite(r.rgb).all() and np.isfinite(r.depth).all()
    exact = resumed.render(cap.c2w[1], cap.intrinsics[1], width=40, height=30, exact_depth=True)
    np.testing.assert_array_equal(exact.rgb, r.rgb)    # only the depth source changes


def test_save_load_and_density_parts(small_capture, tmp_path):
    cap = small_capture.capture
    scene = train(cap, tiny(steps=4, composition=True), evaluate_holdout=False,
                  foreground_box=(np.array([-0.6, -0.6, 0.05]), np.array([0.6, 0.6, 0.7])))
    assert scene.normalization.mode == "unbounded"
    scene.save(tmp_path / "scene")
    loaded = load_scene(tmp_path / "scene", device="cpu")
    assert isinstance(loaded, FeatureScene)                  # the saved config picks the scene class
    a = scene.render(cap.c2w[0], cap.intrinsics[0])
    b = loaded.render(cap.c2w[0], cap.intrinsics[0])
    np.testing.assert_allclose(a.rgb, b.rgb, atol=1e-6)
    pts = np.array([[0.0, 0.0, 0.3], [0.0, 0.0, -0.05], [1.5, 0.0, 0.3]])
    fg = loaded.query_density(pts, part="foreground")
    bg = loaded.query_density(pts, part="background")
    assert fg[0] > 0 and fg[1] == 0 and fg[2] == 0
    assert bg[0] == 0 and bg[1] > 0
    np.testing.assert_allclose(loaded.query_density(pts), fg + bg, rtol=1e-6)
    single = train(cap, tiny(steps=1), evaluate_holdout=False)
    with pytest.raises(UserInputError) as err:
        single.query_density(pts, part="foreground")
    assert err.value.code == "mesh_part_needs_composition"
    # A scene whose saved weights do not fit the model its config builds (saved by another version: here a
    # first-skip correction of another kernel size) fails to load with an error that says so.
    weights = torch.load(tmp_path / "scene" / "scene.pt", weights_only=True)
    first = weights["renderer.to_rgb.0.weight"]
    other = 3 if first.shape[-1] == 1 else 1
    weights["renderer.to_rgb.0.weight"] = first.new_zeros(*first.shape[:2], other, other)
    torch.save(weights, tmp_path / "scene" / "scene.pt")
    with pytest.raises(UserInputError) as err:
        load_scene(tmp_path / "scene", device="cpu")
    assert err.value.code == "scene_incompatible" and "Train it again" in err.value.hint


def test_nerf_with_composition_and_foreground_mesh_export(small_capture, tmp_path):
    """Composition is not only the feature field's: a composed NeRF trains through the same entry point, and
    the exporter writes a foreground-only mesh (cropped to the box) for it; a single field refuses."""
    from core.export.config import ExportConfig
    from core.export.pipeline import export_all

    cap = small_capture.capture
    box = (np.array([-0.6, -0.6, 0.05]), np.array([0.6, 0.6, 0.7]))
    scene = train(cap, tiny(model="nerf", steps=30, composition=True, batch_rays=256), evaluate_holdout=False,
                  foreground_box=box, support_plane=False)
    assert isinstance(scene.model.field, ComposedField) and scene.metrics["foreground_region"]["plane"] is None
    cfg = ExportConfig(what=("mesh",), mesh_resolution=32, mesh_part="foreground", fusion_max_side=32,
                       mesh_cull_unseen=False, mesh_cull_frusta=False)
    manifest = export_all(scene, tmp_path / "out", cfg)
    mesh_files = [f for f in manifest["files"] if f["path"].endswith(".ply")]
    assert mesh_files and all("foreground" in f["path"] for f in mesh_files)
    import trimesh

    mesh = trimesh.load(tmp_path / "out" / mesh_files[0]["path"])
    assert len(mesh.vertices) > 0
    assert (mesh.vertices >= box[0] - 1e-6).all() and (mesh.vertices <= box[1] + 1e-6).all()
    single = train(cap, tiny(model="nerf", steps=1), evaluate_holdout=False)
    with pytest.raises(UserInputError) as err:
        export_all(single, tmp_path / "single", cfg)
    assert err.value.code == "mesh_part_needs_composition"


def test_rejects_images_smaller_than_the_upsampling(small_capture):
    cap = small_capture.capture.resized(max_side=6)
    with pytest.raises(UserInputError) as err:
        train(cap, tiny(steps=1, upsample=8), evaluate_holdout=False)
    assert err.value.code == "images_too_small"


# ---- slow: real training runs ---------------------------------------------------------------------

MESH_CFG = dict(model="feature_field", device="cpu", grid_levels=12, grid_log2_size=17, grid_max_res=512,
                march_steps=128, grid_resolution=32, batch_rays=1024, feature_dim=16, upsample=4, patch_size=16,
                checkpoint_every=10 ** 9)


def foreground_mesh(scene, resolution: int = 128):
    """The foreground part's density mesh at the whole scene's iso-level (core.export.density_mesh)."""
    from core.export.density_mesh import density_mesh, surface_level
    from core.export.grid import scene_occupancy
    from core.export.renders import render_scene_cameras
    from core.scene.composition import PartScene

    views = render_scene_cameras(scene, scene.train_indices[::3], max_side=96)
    level = surface_level(scene, views)
    occupancy = scene_occupancy(scene.occupancy_world())
    mesh, info = density_mesh(PartScene(scene, "foreground"), views, resolution, occupancy, level=level)
    return mesh, level


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("model", ["nerf", "feature_field"])
def test_composition_foreground_mesh_holds_the_objects_not_the_ground(synthetic_small, model):
    """With composition on, the foreground mesh's Chamfer distance to the objects-only mesh is
    <= 2% of the scene diagonal, and the background field carries the ground."""
    from fixtures.quality import mesh_chamfer

    from core.scene.composition import density_of_part

    syn = synthetic_small
    # The feature field learns geometry from 24 x 24 rays a view (96 px at upsample 4): it needs more steps
    # than the NeRF before the support plane is fitted (at 30% of them) on a surface rather than on fog.
    steps = {"nerf": 500, "feature_field": 1500}[model]
    scene = train(syn.capture, TrainConfig(**{**MESH_CFG, "model": model}, steps=steps, composition=True))
    region = scene.metrics["foreground_region"]
    print("region", region, "psnr", scene.metrics.get("psnr_holdout"))
    assert region["plane"] is not None                         # the ground was found and cut off
    mesh, _ = foreground_mesh(scene)
    diag = syn.scene_bbox_diagonal
    to_objects = mesh_chamfer(mesh, syn.objects_mesh)
    to_everything = mesh_chamfer(mesh, syn.mesh)
    print(f"foreground mesh: Chamfer to objects {to_objects / diag:.4f}, to objects + ground "
          f"{to_everything / diag:.4f} of the diagonal; {len(mesh.faces)} faces")
    assert to_objects <= 0.02 * diag
    assert to_everything > to_objects                           # the ground is not in it
    # The ground (top face z = 0, away from the objects) is in the background field only: seen from above
    # through z = 0.1 .. -0.15, the background alone is opaque there and the foreground has no density.
    rng = np.random.default_rng(0)
    ground = np.c_[rng.uniform(-1.1, 1.1, (4000, 2)), np.full(4000, -0.01)]
    ground = ground[np.abs(ground).max(1) > 0.8]
    zs = np.arange(-0.15, 0.1, 0.01)
    column = np.repeat(ground, len(zs), 0)
    column[:, 2] = np.tile(zs, len(ground))
    optical = density_of_part(scene, column, "background").reshape(len(ground), -1).sum(1) * 0.01
    opacity = 1.0 - np.exp(-optical * scene.normalization.scale)          # density is per field-frame unit
    print(f"background opacity over the ground: median {np.median(opacity):.3f}")
    assert np.median(opacity) > 0.8
    assert np.median(density_of_part(scene, ground, "foreground")) == 0


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("model", ["nerf", "feature_field"])
def test_fox_short_run_renders_views_and_a_foreground_mesh_without_its_support(fox_dir, tmp_path, model):
    """The real fox capture (known poses), CPU: novel views come from the model (the neural
    renderer for the feature field) and the foreground mesh holds the fox, not what it stands on.

    The issue says "without the table"; the capture is a mounted fox head on a papered wall, so the support is
    the wall: the dominant plane the cameras see from one side, which the composed field cuts off its
    foreground (core.scene.composition.fit_support_plane). Shown: the plane faces the cameras, the mesh lies on their
    side of it, and the wall's sheet is gone (few vertices in a thin slab in front of the plane, where an uncut
    wall would put most of them). The 'fast' preset at 240 px, 1500 steps (about 8 minutes of training each)."""
    from PIL import Image

    from core.dataparsers.readers import read_transforms_json

    cap = read_transforms_json(fox_dir, max_side=240)
    cfg = TrainConfig.preset("fast", model=model, device="cpu", steps=1500, composition=True,
                             checkpoint_every=10 ** 9)
    scene = train(cap, cfg)
    print("fox metrics", {k: v for k, v in scene.metrics.items() if k != "psnr_per_view"})
    i = scene.test_indices[0]
    view = scene.render(cap.c2w[i], cap.intrinsics[i])
    assert view.rgb.shape == (*cap.images[i].shape[:2], 3)
    assert psnr(view.rgb, composite_image(cap.images[i])) > 15.0
    Image.fromarray((view.rgb * 255).round().astype(np.uint8)).save(tmp_path / f"fox_{model}.png")
    print("rendered frame:", tmp_path / f"fox_{model}.png")
    region = scene.metrics["foreground_region"]
    assert region["plane"] is not None
    n, d = np.asarray(region["plane"][:3]), region["plane"][3]
    assert (cap.c2w[:, :3, 3] @ n > d).all()                   # every camera sees it from the kept side
    mesh, _ = foreground_mesh(scene)
    assert len(mesh.faces) > 1000
    diag = np.linalg.norm(np.subtract(region["box_max"], region["box_min"]))
    heights = mesh.vertices @ n - d
    voxel = diag / 128                                         # foreground_mesh's grid
    in_slab = float(np.mean(heights < 0.02 * diag))
    print(f"fox mesh: {len(mesh.faces)} faces, {in_slab:.1%} of its vertices within 2% of the diagonal in front "
          f"of the support plane")
    assert heights.min() >= -voxel
    assert in_slab < 0.2


def feature_bench():
    """benchmarks/feature_bench.py as a module (the benchmarks folder put on sys.path once)."""
    import importlib
    import sys

    folder = str(Path(__file__).resolve().parents[3] / "benchmarks")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return importlib.import_module("feature_bench")


@pytest.mark.slow
@pytest.mark.timeout(5400)
def test_feature_field_against_nerf_at_the_same_budget():
    """Side by side on the synthetic capture (benchmarks/feature_bench.py with its defaults: 40 views
    at 200 px, the budget the time the NeRF takes for 4000 steps here; NERFSERVE_FEATURE_NERF_STEPS changes the
    steps, NERFSERVE_FEATURE_BUDGET gives seconds instead): PSNR within 1.5 dB, >= 8x faster full-resolution
    frames, and the orbit warp error (both computed here) at most 1.5x the NeRF's."""
    import os

    bench = feature_bench()
    seconds, steps = os.environ.get("NERFSERVE_FEATURE_BUDGET"), os.environ.get("NERFSERVE_FEATURE_NERF_STEPS")
    budget = ["--budget", seconds] if seconds else ["--nerf-steps", steps] if steps else []
    figures = bench.compare(bench.parse_args(["--device", "cpu", *budget]))
    print({k: figures[k] for k in ("psnr_gap_db", "render_speedup", "warp_ratio")})
    assert figures["nerf"]["orbit"]["pairs"] == 59 and figures["feature_field"]["orbit"]["pairs"] == 59
    assert figures["feature_field"]["train_seconds"] <= figures["feature_field"]["budget_s"] * 1.05
    assert figures["psnr_gap_db"] <= 1.5
    assert figures["render_speedup"] >= 8
    assert figures["warp_ratio"] <= 1.5


def test_feature_bench_budget_is_the_nerfs_steps_unless_seconds_are_given():
    """benchmarks/feature_bench.py: by default the synthetic capture's own size and a budget of the NeRF's
    NERF_STEPS; --budget gives seconds instead; both at once, or a budget of nothing, are refused."""
    from core.dataparsers.synthetic import SyntheticConfig

    bench = feature_bench()
    parse_args = bench.parse_args

    args = parse_args(["--device", "cpu"])
    assert (args.nerf_steps, args.budget) == (bench.NERF_STEPS, None)
    assert (args.views, args.size) == (SyntheticConfig().views, SyntheticConfig().size)
    args = parse_args(["--device", "cpu", "--budget", "240"])
    assert (args.nerf_steps, args.budget) == (None, 240.0)
    for bad in (["--budget", "240", "--nerf-steps", "100"], ["--budget", "0"], ["--nerf-steps", "0"]):
        with pytest.raises(SystemExit):
            parse_args(["--device", "cpu", *bad])
    for budget, steps in ((None, None), (10.0, 100)):
        with pytest.raises(ValueError, match="exactly one"):
            bench.train_within(None, TrainConfig(), budget, steps)


def test_feature_field_options_reach_the_train_config_from_the_cli_and_the_api():
    """nerfserve train --model feature_field --upsample/--feature-dim/--composition/--margin-loss and the API's
    options (a JobSpec, through core.jobspec.train_config) give the same TrainConfig fields; bad values refused."""
    from pydantic import ValidationError

    from cli import build_parser
    from cli.engine import train_config_from_args
    from core.jobspec import JobSpec, train_config

    args = build_parser().parse_args(["train", "data", "--out", "run", "--model", "feature_field", "--upsample", "2",
                                      "--feature-dim", "8", "--composition", "on", "--margin-loss", "on"])
    cli = train_config_from_args(args)
    spec = JobSpec(model="feature_field", upsample=2, feature_dim=8, composition="on", margin_loss="on")
    api = train_config(JobSpec.from_store(spec.to_store(), device="cpu"))
    for cfg in (cli, api):
        assert (cfg.model, cfg.upsample, cfg.feature_dim, cfg.composition, cfg.margin_loss) == \
            ("feature_field", 2, 8, True, True)
    assert not train_config(JobSpec()).margin_loss
    with pytest.raises(ValidationError):
        JobSpec(margin_loss="yes")
