"""The torch hash grid against a brute-force transcription of Instant-NGP / tiny-cuda-nn maths."""

from __future__ import annotations

import math

import pytest
import torch

from core.fields.encoding import (
    PRIMES,
    HashGridConfig,
    HashGridTorch,
    fourier_encode,
    level_layout,
    resolve_backend,
    sh_encode,
    tcnn_available,
)


def brute_force_encoding(enc: HashGridTorch, x: torch.Tensor) -> torch.Tensor:
    """One point, one level, one corner at a time, in float64 Python arithmetic."""
    cfg = enc.cfg
    scales, res, sizes, offs = level_layout(cfg)
    table = enc.params.detach().double().view(-1, cfg.features_per_level)
    out = torch.zeros(len(x), cfg.n_levels, cfg.features_per_level, dtype=torch.float64)
    for s in range(len(x)):
        for lvl in range(cfg.n_levels):
            p = [float(x[s, k]) * scales[lvl] + 0.5 for k in range(3)]
            g = [math.floor(v) for v in p]
            fr = [v - gi for v, gi in zip(p, g, strict=True)]
            for corner in range(8):
                bit = [(corner >> k) & 1 for k in range(3)]
                v = [g[k] + bit[k] for k in range(3)]
                w = math.prod(fr[k] if bit[k] else 1 - fr[k] for k in range(3))
                if res[lvl] ** 3 > sizes[lvl]:
                    h = 0
                    for k in range(3):
                        h ^= (v[k] * PRIMES[k]) & 0xFFFFFFFF
                    i = h % sizes[lvl]
                else:
                    i = (v[0] + v[1] * res[lvl] + v[2] * res[lvl] ** 2) % sizes[lvl]
                out[s, lvl] += w * table[offs[lvl] + i]
    return out.reshape(len(x), -1)


def test_layout_matches_tcnn_rules():
    cfg = HashGridConfig(n_levels=16, log2_hashmap_size=19, base_resolution=16, max_resolution=2048)
    scales, res, sizes, offs = level_layout(cfg)
    assert res[0] == 16 and sizes[0] == 16 ** 3                   # dense, already a multiple of 8
    assert abs(scales[-1] - (2048 - 1)) < 1e-3                    # s_L-1 = N_max - 1
    assert all(s <= 2 ** 19 and s % 8 == 0 for s in sizes)
    assert offs[1] == sizes[0] and offs[-1] == sum(sizes[:-1])
    assert abs(cfg.per_level_scale - math.exp(math.log(2048 / 16) / 15)) < 1e-12


def test_torch_hash_grid_equals_reference():
    torch.manual_seed(0)
    enc = HashGridTorch(HashGridConfig(n_levels=8, log2_hashmap_size=12, base_resolution=4, max_resolution=64))
    with torch.no_grad():
        enc.params.uniform_(-1, 1)   # large values so a wrong index cannot hide in the 1e-4 init
    x = torch.rand(64, 3)
    ref = brute_force_encoding(enc, x)
    assert torch.allclose(enc(x).double(), ref, atol=1e-5), (enc(x).double() - ref).abs().max()


def test_no_points_give_an_empty_encoding():
    """A render chunk whose rays all miss the occupied cells has no samples: (0, 3) in, (0, L F) out, and the
    field and the model pass it through (a 200 px benchmark frame once failed on this)."""
    from core.fields.nerf import FieldConfig, HashNerfField

    cfg = HashGridConfig(n_levels=6, log2_hashmap_size=10, base_resolution=4, max_resolution=50)
    enc = HashGridTorch(cfg)
    x = torch.zeros(0, 3, requires_grad=True)
    out = enc(x)
    assert out.shape == (0, 12)
    out.sum().backward()
    field = HashNerfField(FieldConfig(grid=cfg, backend="torch"), contracted=False)
    res = field(torch.zeros(0, 3), torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
    assert res.density.shape == (0,) and res.features.shape == (0, 3)


def test_custom_backward_matches_autograd():
    torch.manual_seed(1)
    enc = HashGridTorch(HashGridConfig(n_levels=6, log2_hashmap_size=10, base_resolution=4, max_resolution=50))
    x = torch.rand(500, 3)
    idx, w = enc.corner_indices_and_weights(x)
    p = enc.params.detach().clone().requires_grad_()
    ref = (torch.nn.functional.embedding(idx.reshape(-1).long(), p.view(-1, 2)).view(*idx.shape, 2)
           * w[..., None]).sum(1)                                                     # (L, S, F)
    g = torch.randn_like(ref)
    (ref * g).sum().backward()
    (enc(x).view(500, 6, 2).permute(1, 0, 2) * g).sum().backward()
    assert torch.allclose(enc.params.grad, p.grad, atol=1e-6)
    assert enc.params.grad.abs().sum() > 0


def test_backend_choice():
    assert resolve_backend("auto", "cpu") == "torch"
    with pytest.raises(ValueError, match="tinycudann"):
        resolve_backend("tcnn", "cpu")
    with pytest.raises(ValueError, match="unknown"):
        resolve_backend("fast", "cpu")


def test_sh_basis_is_orthonormal_on_the_sphere():
    torch.manual_seed(0)
    d = torch.nn.functional.normalize(torch.randn(400_000, 3), dim=-1)
    y = sh_encode(d, 4)
    gram = (y.T @ y) * (4 * math.pi / len(d))
    assert torch.allclose(gram, torch.eye(16), atol=0.03)


def test_fourier_shape():
    assert fourier_encode(torch.zeros(5, 3), 4).shape == (5, 3 * 9)


@pytest.mark.gpu
@pytest.mark.skipif(not tcnn_available(), reason="tinycudann not importable")
def test_tcnn_and_torch_backends_agree():
    from core.fields.encoding import HashGridTcnn

    cfg = HashGridConfig(n_levels=16, log2_hashmap_size=19, base_resolution=16, max_resolution=2048)
    t = HashGridTorch(cfg).cuda()
    c = HashGridTcnn(cfg).cuda()
    with torch.no_grad():
        t.params.uniform_(-1, 1)
        c.params.copy_(t.params.to(c.params.dtype))
    x = torch.rand(10_000, 3, device="cuda")
    assert torch.allclose(c(x), t(x), atol=1e-3)


@pytest.mark.gpu
def test_torch_hash_grid_on_cuda_matches_cpu():
    cfg = HashGridConfig(n_levels=8, log2_hashmap_size=14, base_resolution=8, max_resolution=256)
    cpu = HashGridTorch(cfg)
    gpu = HashGridTorch(cfg).cuda()
    gpu.load_state_dict(cpu.state_dict())
    x = torch.rand(4096, 3)
    assert torch.allclose(gpu(x.cuda()).cpu(), cpu(x), atol=1e-5)
    cpu(x).sum().backward()
    gpu(x.cuda()).sum().backward()
    assert torch.allclose(gpu.params.grad.cpu(), cpu.params.grad, atol=1e-4)
