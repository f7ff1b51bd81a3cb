"""Input encodings: the multiresolution hash grid (two backends), spherical harmonics, Fourier features.

The torch hash grid reproduces tiny-cuda-nn's `HashGrid` encoding exactly (same parameter layout,
so one backend's parameters load into the other):
- level l has scale s_l = base_resolution * b^l - 1 with b = per_level_scale, and resolution
  r_l = ceil(s_l) + 1; a point x in [0, 1]^3 lands at p = x * s_l + 0.5;
- the table of level l holds min(T, next_multiple_of_8(r_l^3)) entries (T = 2^log2_hashmap_size);
- a grid vertex indexes the table densely (x + y r + z r^2) while r^3 fits in the table, else by the
  spatial hash of Instant-NGP, (x * 1) xor (y * 2654435761) xor (z * 805459861) in uint32 arithmetic;
  either index is taken modulo the level's table size;
- features are trilinearly interpolated and concatenated level-major: out[:, l * F + f].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

PRIMES = (1, 2654435761, 805459861)
# The same primes as int32 bit patterns: int32 multiplication wraps like uint32 in the low 32 bits.
_PRIMES_I32 = tuple(p - (1 << 32) if p >= (1 << 31) else p for p in PRIMES)


@dataclass(frozen=True)
class HashGridConfig:
    n_levels: int = 16
    features_per_level: int = 2
    log2_hashmap_size: int = 19
    base_resolution: int = 16
    max_resolution: int = 2048

    @property
    def per_level_scale(self) -> float:
        if self.n_levels <= 1:
            return 1.0
        return math.exp((math.log(self.max_resolution) - math.log(self.base_resolution)) / (self.n_levels - 1))

    @property
    def n_output_dims(self) -> int:
        return self.n_levels * self.features_per_level

    def tcnn_config(self) -> dict:
        return {"otype": "HashGrid", "n_levels": self.n_levels, "n_features_per_level": self.features_per_level,
                "log2_hashmap_size": self.log2_hashmap_size, "base_resolution": self.base_resolution,
                "per_level_scale": self.per_level_scale, "interpolation": "Linear"}


def level_layout(cfg: HashGridConfig) -> tuple[list[float], list[int], list[int], list[int]]:
    """Per level: scale s_l, resolution r_l, table size (entries), offset (entries) into the flat table."""
    scales, resolutions, sizes, offsets = [], [], [], []
    offset = 0
    max_entries = 2 ** cfg.log2_hashmap_size
    for level in range(cfg.n_levels):
        scale = math.exp2(level * math.log2(cfg.per_level_scale)) * cfg.base_resolution - 1.0
        res = int(math.ceil(scale)) + 1
        dense = res ** 3
        entries = min(max_entries, (dense + 7) // 8 * 8)
        scales.append(scale)
        resolutions.append(res)
        sizes.append(entries)
        offsets.append(offset)
        offset += entries
    return scales, resolutions, sizes, offsets


class HashGridTorch(nn.Module):
    """Pure PyTorch multiresolution hash encoding (CPU and CUDA).

    forward(x): x (S, 3) float32 in [0, 1]^3 (values outside are clamped) -> (S, L*F) float32.
    Parameters: `params` (total_entries * F,) float32, tiny-cuda-nn's flat layout, init U(-1e-4, 1e-4).
    """

    def __init__(self, cfg: HashGridConfig, seed: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        scales, resolutions, sizes, offsets = level_layout(cfg)
        total = offsets[-1] + sizes[-1]
        gen = torch.Generator().manual_seed(seed)
        self.params = nn.Parameter((torch.rand(total * cfg.features_per_level, generator=gen) * 2 - 1) * 1e-4)
        self.register_buffer("scales", torch.tensor(scales, dtype=torch.float32), persistent=False)
        self.register_buffer("resolutions", torch.tensor(resolutions, dtype=torch.int64), persistent=False)
        self.register_buffer("sizes", torch.tensor(sizes, dtype=torch.int64), persistent=False)
        self.register_buffer("offsets", torch.tensor(offsets, dtype=torch.int64), persistent=False)
        hashed = [res ** 3 > size for res, size in zip(resolutions, sizes, strict=True)]
        self.n_dense = hashed.index(True) if True in hashed else len(hashed)
        assert all(hashed[self.n_dense:]), "hashed levels must follow the dense ones"
        assert all(sizes[i] & (sizes[i] - 1) == 0 for i in range(self.n_dense, len(sizes))), "hashed tables are 2^k"

    @property
    def n_output_dims(self) -> int:
        return self.cfg.n_output_dims

    def corner_indices_and_weights(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (S, 3) in [0,1] -> flat table entries (S, L, 8) int32 and trilinear weights (S, L, 8) float32.

        Corner c = (cx, cy, cz) is bit 0, 1, 2 of c. Index terms are built per axis for the two
        neighbouring vertices, (S, L, 2) each, then combined by broadcasting (8x less integer work than
        expanding corners first). Levels are dense up to some level and hashed after it (resolution
        grows), so each part computes only its own kind of index. Arithmetic is int32: the hash's
        uint32 products wrap exactly like tcnn's, and tables (<= 2^31 entries) are powers of two when
        hashed, so `& (T - 1)` equals `% T` on the wrapped bits.
        """
        x = x.float().clamp(0.0, 1.0)
        pos = x[:, None, :] * self.scales[None, :, None] + 0.5              # (S, L, 3)
        grid_f = torch.floor(pos)
        frac = pos - grid_f
        grid = grid_f.int()
        nd = self.n_dense
        parts = []
        if nd > 0:
            g = grid[:, :nd]
            res = self.resolutions[:nd].int()[None, :, None]
            gx, gy, gz = (torch.stack([g[..., k], g[..., k] + 1], -1) for k in range(3))   # (S, Ld, 2)
            gy, gz = gy * res, gz * res * res
            dense = gx[..., None, None, :] + gy[..., None, :, None] + gz[..., :, None, None]
            dense = dense % self.sizes[:nd].int()[None, :, None, None, None]
            parts.append(dense.reshape(*dense.shape[:2], 8))
        if nd < self.cfg.n_levels:
            g = grid[:, nd:]
            hx, hy, hz = (torch.stack([g[..., k], g[..., k] + 1], -1) * _PRIMES_I32[k] for k in range(3))
            hashed = hx[..., None, None, :] ^ hy[..., None, :, None] ^ hz[..., :, None, None]
            hashed = hashed & (self.sizes[nd:].int()[None, :, None, None, None] - 1)
            parts.append(hashed.reshape(*hashed.shape[:2], 8))
        index = torch.cat(parts, 1) if len(parts) > 1 else parts[0]
        index = index + self.offsets.int()[None, :, None]
        wx = torch.stack([1 - frac[..., 0], frac[..., 0]], -1)
        wy = torch.stack([1 - frac[..., 1], frac[..., 1]], -1)
        wz = torch.stack([1 - frac[..., 2], frac[..., 2]], -1)
        w = (wz[..., :, None, None] * wy[..., None, :, None] * wx[..., None, None, :]).reshape(*index.shape)
        return index, w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        index, w = self.corner_indices_and_weights(x)
        out = _InterpolateTable.apply(self.params, index, w, self.cfg.features_per_level)   # (S, L, F)
        return out.reshape(x.shape[0], -1)


class _InterpolateTable(torch.autograd.Function):
    """out[s, l] = sum_c w[s, l, c] * table[index[s, l, c]]; backward scatters with index_add_.

    (The built-in embedding backward is ~4x slower on CPU.) Gradients flow to the table only:
    positions are inputs, not parameters, in every use here.
    """

    @staticmethod
    def forward(ctx, params: torch.Tensor, index: torch.Tensor, w: torch.Tensor, f: int) -> torch.Tensor:
        table = params.view(-1, f)
        flat = index.reshape(-1)
        feats = table.index_select(0, flat).view(*index.shape, f)         # (S, L, 8, F)
        flat = flat.long()                                                # index_add_ is fastest with int64
        ctx.save_for_backward(flat, w)
        ctx.f, ctx.n = f, params.shape[0]
        return (feats * w[..., None]).sum(2)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        flat, w = ctx.saved_tensors
        contrib = (w[..., None] * grad_out[:, :, None, :]).reshape(-1, ctx.f)   # (S*L*8, F)
        grad = torch.zeros(ctx.n // ctx.f, ctx.f, dtype=contrib.dtype, device=contrib.device)
        grad.index_add_(0, flat, contrib.to(grad.dtype))
        return grad.view(-1), None, None, None


class HashGridTcnn(nn.Module):
    """tiny-cuda-nn backend (CUDA only), written against tinycudann's documented Python API:
    `tcnn.Encoding(n_input_dims, encoding_config, dtype=...)`, inputs in [0,1], output (S, L*F).
    Its `params` use the same flat layout as HashGridTorch, so `load_from_torch` copies them."""

    def __init__(self, cfg: HashGridConfig, seed: int = 0) -> None:
        super().__init__()
        import tinycudann as tcnn

        self.cfg = cfg
        self.encoding = tcnn.Encoding(3, cfg.tcnn_config(), seed=seed, dtype=torch.float32)

    @property
    def n_output_dims(self) -> int:
        return self.cfg.n_output_dims

    @property
    def params(self) -> nn.Parameter:
        return self.encoding.params

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoding(x.float().clamp(0.0, 1.0)).float()


def tcnn_available() -> bool:
    try:
        import tinycudann  # noqa: F401
    except Exception:
        return False
    return torch.cuda.is_available()


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """'auto' -> 'tcnn' when tinycudann imports and the device is CUDA, else 'torch'."""
    dev = torch.device(device)
    if backend == "auto":
        return "tcnn" if dev.type == "cuda" and tcnn_available() else "torch"
    if backend == "tcnn" and not (dev.type == "cuda" and tcnn_available()):
        raise ValueError("hash grid backend 'tcnn' needs CUDA and the tinycudann package "
                         "(see pyproject.toml [gpu]); use backend 'torch' or 'auto'")
    if backend not in ("torch", "tcnn"):
        raise ValueError(f"unknown hash grid backend {backend!r}: use auto, torch or tcnn")
    return backend


def make_hash_grid(cfg: HashGridConfig, backend: str = "auto", device: str | torch.device = "cpu",
                   seed: int = 0) -> nn.Module:
    chosen = resolve_backend(backend, device)
    cls = HashGridTcnn if chosen == "tcnn" else HashGridTorch
    return cls(cfg, seed=seed)


def sh_encode(directions: torch.Tensor, degree: int = 4) -> torch.Tensor:
    """Real spherical harmonics of unit directions. directions: (S, 3) -> (S, degree^2) float32.

    Degrees 1..4 (1, 4, 9 or 16 coefficients), the basis instant-ngp and tiny-cuda-nn use.
    """
    x, y, z = directions.float().unbind(-1)
    out = [torch.full_like(x, 0.28209479177387814)]
    if degree > 1:
        out += [-0.48860251190291987 * y, 0.48860251190291987 * z, -0.48860251190291987 * x]
    if degree > 2:
        xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
        out += [1.0925484305920792 * xy, -1.0925484305920792 * yz, 0.94617469575755997 * zz - 0.31539156525251999,
                -1.0925484305920792 * xz, 0.54627421529603959 * (xx - yy)]
    if degree > 3:
        out += [0.59004358992664352 * y * (-3.0 * xx + yy), 2.8906114426405538 * xy * z,
                0.45704579946446572 * y * (1.0 - 5.0 * zz), 0.3731763325901154 * z * (5.0 * zz - 3.0),
                0.45704579946446572 * x * (1.0 - 5.0 * zz), 1.4453057213202769 * z * (xx - yy),
                0.59004358992664352 * x * (-xx + 3.0 * yy)]
    return torch.stack(out, dim=-1)


def fourier_encode(x: torch.Tensor, n_freqs: int, include_input: bool = True) -> torch.Tensor:
    """NeRF positional encoding. x: (S, C) -> (S, C * (2 n_freqs + include_input)) float32."""
    freqs = (2.0 ** torch.arange(n_freqs, device=x.device, dtype=torch.float32)) * np.pi
    xb = x[..., None, :] * freqs[:, None]                                   # (S, n_freqs, C)
    enc = torch.cat([torch.sin(xb), torch.cos(xb)], dim=-2).reshape(x.shape[0], -1)
    return torch.cat([x, enc], dim=-1) if include_input else enc
