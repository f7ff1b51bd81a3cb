"""The Triton hash grid against HashGridTorch: values, parameter gradients, layout, edge cases, backend choice.

Without CUDA the kernels run in Triton's CPU interpreter, which must be switched on before `@triton.jit`
decorates them, i.e. before core.fields.hashgrid_triton is imported. With CUDA the same tests run the compiled
kernels on the GPU.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

pytest.importorskip("triton", reason="triton is not installed")

from core.fields import encoding  # noqa: E402
from core.fields.encoding import HashGridConfig, HashGridTorch, make_hash_grid, resolve_backend  # noqa: E402
from core.fields.hashgrid_triton import HashGridTriton  # noqa: E402
from core.fields.nerf import FieldConfig, HashNerfField  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Levels 0-2 dense (level 1 needs the dense modulo: 7^3 = 343 < 7 + 7*7 + 7^3), levels 3-5 hashed.
MIXED_F2 = HashGridConfig(n_levels=6, features_per_level=2, log2_hashmap_size=12, base_resolution=4,
                          max_resolution=64)
MIXED_F4 = HashGridConfig(n_levels=4, features_per_level=4, log2_hashmap_size=10, base_resolution=3,
                          max_resolution=40)
ODD_F3 = HashGridConfig(n_levels=3, features_per_level=3, log2_hashmap_size=9, base_resolution=5, max_resolution=30)


def pair(cfg: HashGridConfig, seed: int) -> tuple[HashGridTorch, HashGridTriton]:
    """A torch and a triton grid with the same table, U(-1, 1) so that features are O(1) and tolerances bite."""
    ref = HashGridTorch(cfg).to(DEVICE)
    fused = HashGridTriton(cfg).to(DEVICE)
    with torch.no_grad():
        ref.params.uniform_(-1, 1, generator=torch.Generator(DEVICE).manual_seed(seed))
        fused.params.copy_(ref.params)
    return ref, fused


def points(n: int, seed: int) -> torch.Tensor:
    """n random points in [0, 1]^3, then the cube's corners, face points on exactly 0 and 1, and points outside
    [0, 1] that both backends clamp."""
    gen = torch.Generator().manual_seed(seed)
    corners = torch.tensor([[(c >> k) & 1 for k in range(3)] for c in range(8)], dtype=torch.float32)
    faces = torch.rand(64, 3, generator=gen)
    faces[torch.arange(64), torch.randint(0, 3, (64,), generator=gen)] = torch.randint(0, 2, (64,),
                                                                                      generator=gen).float()
    outside = torch.rand(64, 3, generator=gen) * 3 - 1
    return torch.cat([torch.rand(n, 3, generator=gen), corners, faces, outside]).to(DEVICE)


@pytest.mark.parametrize("cfg", [MIXED_F2, MIXED_F4, ODD_F3], ids=["F2", "F4", "F3"])
def test_values_and_table_gradients_match_torch(cfg):
    seed = int(torch.randint(0, 2 ** 31 - 1, ()))
    ref, fused = pair(cfg, seed)
    x = points(1500, seed)
    want, got = ref(x), fused(x)
    assert got.shape == (len(x), cfg.n_output_dims) and got.dtype == torch.float32 and got.is_contiguous()
    assert want.abs().max() > 0.1
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=lambda m: f"{m}\nseed {seed}")

    upstream = torch.randn(want.shape, generator=torch.Generator().manual_seed(seed + 1)).to(DEVICE)
    (want * upstream).sum().backward()
    (got * upstream).sum().backward()
    scale = float(ref.params.grad.abs().max())
    assert scale > 1.0
    torch.testing.assert_close(fused.params.grad, ref.params.grad, rtol=1e-5, atol=1e-6 * scale,
                               msg=lambda m: f"{m}\nseed {seed}")


def test_noncontiguous_float64_input_and_positions_get_no_gradient():
    ref, fused = pair(MIXED_F2, 7)
    x = points(300, 7).double().T.contiguous().T.requires_grad_(True)
    assert not x.is_contiguous()
    out = fused(x)
    torch.testing.assert_close(out, ref(x.detach().float()), rtol=1e-5, atol=1e-5)
    out.sum().backward()
    assert x.grad is None and fused.params.grad is not None


def test_empty_batch():
    _, fused = pair(MIXED_F4, 3)
    out = fused(torch.zeros(0, 3, device=DEVICE))
    assert out.shape == (0, MIXED_F4.n_output_dims)
    out.sum().backward()
    assert fused.params.grad is not None and not fused.params.grad.any()


def test_same_init_and_state_dicts_load_across_backends():
    torch_grid, triton_grid = HashGridTorch(MIXED_F2, seed=5), HashGridTriton(MIXED_F2, seed=5)
    assert torch.equal(torch_grid.params, triton_grid.params)
    assert not torch.equal(HashGridTriton(MIXED_F2, seed=6).params, triton_grid.params)
    assert triton_grid.n_output_dims == MIXED_F2.n_output_dims
    other = HashGridTriton(MIXED_F2, seed=9)
    other.load_state_dict(torch_grid.state_dict())
    assert torch.equal(other.params, torch_grid.params)


def test_half_table_matches_torch_on_fp16_rounded_params():
    ref, fused = pair(MIXED_F2, 11)
    fused.half_table = True
    with torch.no_grad():
        ref.params.copy_(ref.params.half().float())
    x = points(500, 11)
    torch.testing.assert_close(fused(x), ref(x), rtol=1e-5, atol=1e-5)
    g = torch.randn(len(x), MIXED_F2.n_output_dims, device=DEVICE)
    (fused(x) * g).sum().backward()
    (ref(x) * g).sum().backward()
    assert fused.params.grad.dtype == torch.float32
    torch.testing.assert_close(fused.params.grad, ref.params.grad, rtol=1e-5, atol=1e-5)


def test_make_hash_grid_builds_the_triton_backend_for_a_field():
    assert isinstance(make_hash_grid(MIXED_F2, "triton", DEVICE), HashGridTriton)
    field = HashNerfField(FieldConfig(grid=MIXED_F2, backend="triton"), contracted=False, device=DEVICE).to(DEVICE)
    assert field.backend == "triton"
    density = field.density(torch.rand(64, 3, device=DEVICE) * 2 - 1)
    assert density.shape == (64,) and torch.isfinite(density).all()


def test_backend_resolution(monkeypatch):
    monkeypatch.setattr(encoding, "tcnn_available", lambda: False)
    monkeypatch.setattr(encoding, "triton_available", lambda: True)
    assert resolve_backend("auto", "cpu") == "torch"
    assert resolve_backend("auto", "cuda") == "triton"
    assert resolve_backend("triton", "cuda") == "triton"
    assert resolve_backend("torch", "cuda") == "torch"
    monkeypatch.setattr(encoding, "tcnn_available", lambda: True)
    assert resolve_backend("auto", "cuda") == "tcnn"
    monkeypatch.setattr(encoding, "tcnn_available", lambda: False)
    monkeypatch.setattr(encoding, "triton_available", lambda: False)
    assert resolve_backend("auto", "cuda") == "torch"
    with pytest.raises(ValueError, match="needs the triton package"):
        resolve_backend("triton", "cuda")
    monkeypatch.setattr(encoding, "triton_available", lambda: True)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve_backend("triton", "cpu") == "triton"
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        resolve_backend("triton", "cpu")
    with pytest.raises(ValueError, match="unknown"):
        resolve_backend("fast", "cpu")
