"""Input encodings: the multiresolution hash grid (torch, triton and tcnn backends), spherical harmonics, Fourier
features.

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
import os
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


def init_table(cfg: HashGridConfig, seed: int) -> torch.Tensor:
    """The flat table every backend starts from: (total_entries * F,) float32, U(-1e-4, 1e-4) from `seed`."""
    _, _, sizes, offsets = level_layout(cfg)
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand((offsets[-1] + sizes[-1]) * cfg.features_per_level, generator=gen) * 2 - 1) * 1e-4


def register_layout(module: nn.Module, cfg: HashGridConfig, index_dtype: torch.dtype) -> int:
    """Register the level layout as non-persistent buffers of `module`: scales (L,) float32, and resolutions,
    sizes, offsets (L,) of `index_dtype`. Returns the number of dense levels (hashed ones follow them)."""
    scales, resolutions, sizes, offsets = level_layout(cfg)
    module.register_buffer("scales", torch.tensor(scales, dtype=torch.float32), persistent=False)
    for name, values in (("resolutions", resolutions), ("sizes", sizes), ("offsets", offsets)):
        module.register_buffer(name, torch.tensor(values, dtype=index_dtype), persistent=False)
    hashed = [res ** 3 > size for res, size in zip(resolutions, sizes, strict=True)]
    n_dense = hashed.index(True) if True in hashed else len(hashed)
    assert all(hashed[n_dense:]), "hashed levels must follow the dense ones"
    assert all(sizes[i] & (sizes[i] - 1) == 0 for i in range(n_dense, len(sizes))), "hashed tables are 2^k"
    return n_dense


class HashGridTorch(nn.Module):
    """Pure PyTorch multiresolution hash encoding (CPU and CUDA).

    forward(x): x (S, 3) float32 in [0, 1]^3 (values outside are clamped) -> (S, L*F) float32.
    Parameters: `params` (total_entries * F,) float32, tiny-cuda-nn's flat layout, init U(-1e-4, 1e-4).
    """

    def __init__(self, cfg: HashGridConfig, seed: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.params = nn.Parameter(init_table(cfg, seed))
        self.n_dense = register_layout(self, cfg, torch.int64)

    @property
    def n_output_dims(self) -> int:
        return self.cfg.n_output_dims

    def corner_indices_and_weights(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (S, 3) in [0,1] -> flat table entries (L, 8, S) int32 and trilinear weights (L, 8, S) float32.

        Level-major, so the lookups of one level (one table, often cache-sized) come together, and
        corner-major within a level. Corner c = (cx, cy, cz) is bit 0, 1, 2 of c. Every operation works on
        whole (L', S) planes, one per axis and side, combined two axes at a time (x with y, then with z):
        the CPU vectorises planes, not the tiny trailing dimensions of a broadcast. Levels are dense up to
        some level and hashed after it (resolution grows). Arithmetic is int32: the hash's uint32 products
        wrap exactly like tcnn's, and hashed tables are powers of two, so `& (T - 1)` equals `% T` on the
        wrapped bits. A dense index is below twice its table (x + y r + z r^2 <= r + r^2 + r^3 < 2 r^3), so
        one conditional subtraction is its modulo.
        """
        x = x.float().clamp(0.0, 1.0)
        pos = x.T[None] * self.scales[:, None, None] + 0.5                     # (L, 3, S)
        grid_f = torch.floor(pos)
        frac = pos - grid_f
        grid = grid_f.int()
        nd = self.n_dense
        parts = []
        if nd > 0:
            g, res = grid[:nd], self.resolutions[:nd].int()[:, None]
            terms = [(g[:, 0], g[:, 0] + 1)]
            for stride in (res, res * res):
                a = g[:, len(terms)] * stride
                terms.append((a, a + stride))
            dense = _corners(terms, torch.add)
            size = self.sizes[:nd].int()[:, None, None]                     # (Ld, 1, 1)
            parts.append(torch.where(dense >= size, dense - size, dense))
        if nd < self.cfg.n_levels:
            g, terms = grid[nd:], []
            for k in range(3):
                a = g[:, k] * _PRIMES_I32[k]
                terms.append((a, a + _PRIMES_I32[k]))
            hashed = _corners(terms, torch.bitwise_xor)
            hashed &= self.sizes[nd:].int()[:, None, None] - 1
            parts.append(hashed)
        index = torch.cat(parts, 0) if len(parts) > 1 else parts[0]
        index += self.offsets.int()[:, None, None]
        w = _corners([(1 - frac[:, k], frac[:, k]) for k in range(3)], torch.mul)
        return index, w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        index, w = self.corner_indices_and_weights(x)
        out = _InterpolateTable.apply(self.params, index, w, self.cfg.features_per_level)   # (L, S, F)
        return out.permute(1, 0, 2).reshape(x.shape[0], self.cfg.n_output_dims)      # (S, L F), S may be 0


def _corners(terms, combine) -> torch.Tensor:
    """terms: per axis (x, y, z) the pair (side 0, side 1) of (L', S) planes; combine: the binary op that
    joins axes (+ for dense indices, xor for hashes, * for weights). Returns (L', 8, S): corner c is
    combine(combine(x[c & 1], y[c >> 1 & 1]), z[c >> 2 & 1])."""
    (x0, x1), (y0, y1), (z0, z1) = terms
    xy = [combine(x0, y0), combine(x1, y0), combine(x0, y1), combine(x1, y1)]
    return torch.stack([combine(p, z) for z in (z0, z1) for p in xy], 1)


class _InterpolateTable(torch.autograd.Function):
    """out[l, s] = sum_c w[l, c, s] * table[index[l, c, s]] (index, w: (L, 8, S)) -> (L, S, F); backward
    scatters with index_add_.

    (The built-in embedding backward is ~4x slower on CPU.) Gradients flow to the table only:
    positions are inputs, not parameters, in every use here.
    """

    @staticmethod
    def forward(ctx, params: torch.Tensor, index: torch.Tensor, w: torch.Tensor, f: int) -> torch.Tensor:
        table = params.view(-1, f)
        flat = index.reshape(-1)
        feats = table.index_select(0, flat).view(*index.shape, f)             # (L, 8, S, F)
        w = w.to(feats.dtype)
        out = feats[:, 0] * w[:, 0, :, None]
        for c in range(1, 8):
            out.addcmul_(feats[:, c], w[:, c, :, None])
        ctx.save_for_backward(flat, w)
        ctx.f, ctx.n = f, params.shape[0]
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        flat, w = ctx.saved_tensors
        contrib = w[..., None].to(grad_out.dtype) * grad_out[:, None]                  # (L, 8, S, F)
        grad = torch.zeros(ctx.n // ctx.f, ctx.f, dtype=contrib.dtype, device=contrib.device)
        grad.index_add_(0, flat.long(), contrib.view(-1, ctx.f))  # int64: index_add_ is ~10x slower with int32
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


def triton_available() -> bool:
    """Whether triton imports. Called only when a CUDA device or the triton backend is asked for, so the torch
    path never imports it."""
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """Hash grid backend name: auto | torch | triton | tcnn -> the one to build on `device`.

    'auto' -> 'tcnn' when tinycudann imports and the device is CUDA, else 'triton' when triton imports and the
    device is CUDA, else 'torch'. 'triton' on a CPU device runs Triton's interpreter (slow; for tests) and
    needs TRITON_INTERPRET=1 set before the kernels are first imported.
    """
    dev = torch.device(device)
    if backend == "auto":
        if dev.type == "cuda" and tcnn_available():
            return "tcnn"
        return "triton" if dev.type == "cuda" and triton_available() else "torch"
    if backend == "tcnn" and not (dev.type == "cuda" and tcnn_available()):
        raise ValueError("hash grid backend 'tcnn' needs CUDA and the tinycudann package "
                         "(see pyproject.toml [gpu]); use backend 'torch' or 'auto'")
    if backend == "triton":
        if not triton_available():
            raise ValueError("hash grid backend 'triton' needs the triton package; use backend 'torch' or 'auto'")
        if dev.type != "cuda" and not (dev.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"):
            raise ValueError(f"hash grid backend 'triton' needs a CUDA device, got {dev}; on a CPU it runs only "
                             "under Triton's interpreter (TRITON_INTERPRET=1); use backend 'torch' or 'auto'")
    if backend not in ("torch", "triton", "tcnn"):
        raise ValueError(f"unknown hash grid backend {backend!r}: use auto, torch, triton or tcnn")
    return backend


def make_hash_grid(cfg: HashGridConfig, backend: str = "auto", device: str | torch.device = "cpu",
                   seed: int = 0) -> nn.Module:
    """The hash grid for `backend` (see resolve_backend); every backend maps (S, 3) in [0, 1] to (S, L*F) and
    shares the parameter layout. The triton module is imported only when chosen."""
    chosen = resolve_backend(backend, device)
    if chosen == "triton":
        from core.fields.hashgrid_triton import HashGridTriton

        return HashGridTriton(cfg, seed=seed)
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
