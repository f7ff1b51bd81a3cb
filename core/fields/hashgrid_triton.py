"""Fused Triton kernels for the multiresolution hash encoding, the same maths as `HashGridTorch`.

One program encodes a block of points at every level: it reads each point once, computes the 8 corner indices
and trilinear weights per level in registers (nothing of size (L, 8, S) is ever stored) and writes whole output
rows. The backward recomputes indices and weights instead of saving them (recomputing is cheaper than reading
them back) and scatters into an fp32 gradient table with atomic adds. Index arithmetic is int32 and wraps like
tiny-cuda-nn's uint32 hash; see `HashGridTorch.corner_indices_and_weights` for why that is exact.

Importing this module needs triton. On a CPU, set TRITON_INTERPRET=1 before importing it: `@triton.jit`
chooses the interpreter when the decorator runs, not when a kernel is launched.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import nn
from triton.compiler.errors import CompilationError

from core.fields.encoding import _PRIMES_I32, HashGridConfig, init_table, register_layout

_PRIME_Y = tl.constexpr(_PRIMES_I32[1])
_PRIME_Z = tl.constexpr(_PRIMES_I32[2])

# Points per program and warps. Compiled: one point per thread keeps 8 gathers per level in flight per thread.
# Interpreted: every program is a Python loop over numpy ops, so fewer, larger blocks run much faster.
# No fused multiply-add: x * scale + 0.5 then rounds like HashGridTorch's, so points land in the same cells.
_BLOCK, _WARPS = 128, 4
_BLOCK_INTERPRETED = 1024
_OPTIONS = {"enable_fp_fusion": False}
# Filled once if this Triton fails to compile the paired (vector) reduction; the scalar atomics are used then.
_PAIRED_UNSUPPORTED: set[bool] = set()


def interpreting() -> bool:
    """True when triton kernels run in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# Whether the kernels below are interpreted: decided once, when their decorators run.
_INTERPRETED = interpreting()


@triton.jit
def _corner(gx, gy, gz, wx0, wx1, wy0, wy1, wz0, wz1, res, size, offset, C: tl.constexpr, HASHED: tl.constexpr):
    """Corner C (bits 0, 1, 2 = x, y, z side) of the cells at integer vertices (gx, gy, gz), all (BLOCK,) int32:
    its flat table entry (int64) and trilinear weight (fp32), combined in HashGridTorch's order."""
    bx: tl.constexpr = C & 1
    by: tl.constexpr = (C >> 1) & 1
    bz: tl.constexpr = (C >> 2) & 1
    vx = gx + bx
    vy = gy + by
    vz = gz + bz
    if HASHED:
        idx = (vx ^ (vy * _PRIME_Y) ^ (vz * _PRIME_Z)) & (size - 1)
    else:
        idx = vx + vy * res + vz * (res * res)
        idx = tl.where(idx >= size, idx - size, idx)
    wx = wx1 if bx else wx0
    wy = wy1 if by else wy0
    wz = wz1 if bz else wz0
    return (idx + offset).to(tl.int64), (wx * wy) * wz


@triton.jit
def _level_cell(px, py, pz, scales_ptr, res_ptr, sizes_ptr, offsets_ptr, LEVEL: tl.constexpr):
    """Points (BLOCK,) fp32 in [0, 1] -> the level's cell origin (int32), the 1 - frac and frac weights per axis,
    and the level's resolution, table size and offset (int32 scalars)."""
    scale = tl.load(scales_ptr + LEVEL)
    res = tl.load(res_ptr + LEVEL)
    size = tl.load(sizes_ptr + LEVEL)
    offset = tl.load(offsets_ptr + LEVEL)
    qx = px * scale + 0.5
    qy = py * scale + 0.5
    qz = pz * scale + 0.5
    fx = tl.floor(qx)
    fy = tl.floor(qy)
    fz = tl.floor(qz)
    tx = qx - fx
    ty = qy - fy
    tz = qz - fz
    return (fx.to(tl.int32), fy.to(tl.int32), fz.to(tl.int32), 1.0 - tx, tx, 1.0 - ty, ty, 1.0 - tz, tz,
            res, size, offset)


@triton.jit
def _load_points(x_ptr, rows, live):
    """Rows (BLOCK,) int64 of x (S, 3) fp32 -> three (BLOCK,) fp32 coordinates, clamped to [0, 1]."""
    px = tl.load(x_ptr + rows * 3 + 0, mask=live, other=0.0)
    py = tl.load(x_ptr + rows * 3 + 1, mask=live, other=0.0)
    pz = tl.load(x_ptr + rows * 3 + 2, mask=live, other=0.0)
    px = tl.minimum(tl.maximum(px, 0.0), 1.0)
    py = tl.minimum(tl.maximum(py, 0.0), 1.0)
    pz = tl.minimum(tl.maximum(pz, 0.0), 1.0)
    return px, py, pz


@triton.jit
def _unpack_pair(v, HALF: tl.constexpr):
    """Two adjacent table features loaded as one integer (int64 for fp32, int32 for fp16; little-endian, so
    the first feature is the low half) -> two fp32 (BLOCK,) vectors."""
    if HALF:
        lo = v.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
        hi = (v >> 16).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    else:
        lo = v.to(tl.int32).to(tl.float32, bitcast=True)
        hi = (v >> 32).to(tl.int32).to(tl.float32, bitcast=True)
    return lo, hi


@triton.jit
def _red_add_pair(ptr, a, b):
    """grad[ptr] += a, grad[ptr + 1] += b as one 8-byte vector reduction (sm_90+; ptr 8-byte aligned):
    half the atomic operations of two scalar ones. Compiled kernels only (inline PTX)."""
    tl.inline_asm_elementwise("red.global.gpu.relaxed.add.v2.f32 [$1], {$2, $3};\n\tmov.b32 $0, 0;",
                              "=r,l,f,f", [ptr.to(tl.int64), a, b], dtype=tl.int32, is_pure=False,
                              pack=1)


@triton.jit
def _hash_grid_fwd(x_ptr, table_ptr, out_ptr, scales_ptr, res_ptr, sizes_ptr, offsets_ptr, n_points,
                   N_LEVELS: tl.constexpr, N_DENSE: tl.constexpr, F: tl.constexpr, PAIRED: tl.constexpr,
                   HALF: tl.constexpr, BLOCK: tl.constexpr):
    """x (S, 3) fp32 -> out (S, N_LEVELS * F) fp32, out[s, l F + f]. table: (entries * F,) fp32 or fp16 (HALF);
    with PAIRED (F even) the same memory as (entries * F / 2,) int64 or int32, one load per feature pair.

    Everything is a (BLOCK,) vector, one feature (pair) at a time: (BLOCK, F) tiles would make the compiler
    move every index and weight through shared memory to broadcast them. The index maths repeated per feature
    is computed once (common subexpressions).
    """
    rows = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = rows < n_points
    px, py, pz = _load_points(x_ptr, rows, live)
    out_row = out_ptr + rows * (N_LEVELS * F)
    for level in tl.static_range(N_LEVELS):
        gx, gy, gz, wx0, wx1, wy0, wy1, wz0, wz1, res, size, offset = _level_cell(
            px, py, pz, scales_ptr, res_ptr, sizes_ptr, offsets_ptr, level)
        if PAIRED:
            for p in tl.static_range(F // 2):
                acc0 = tl.zeros((BLOCK,), dtype=tl.float32)
                acc1 = tl.zeros((BLOCK,), dtype=tl.float32)
                for c in tl.static_range(8):
                    idx, w = _corner(gx, gy, gz, wx0, wx1, wy0, wy1, wz0, wz1, res, size, offset, c,
                                     level >= N_DENSE)
                    lo, hi = _unpack_pair(tl.load(table_ptr + idx * (F // 2) + p, mask=live, other=0), HALF)
                    acc0 += lo * w
                    acc1 += hi * w
                tl.store(out_row + level * F + 2 * p, acc0, mask=live)
                tl.store(out_row + level * F + 2 * p + 1, acc1, mask=live)
        else:
            for f in tl.static_range(F):
                acc = tl.zeros((BLOCK,), dtype=tl.float32)
                for c in tl.static_range(8):
                    idx, w = _corner(gx, gy, gz, wx0, wx1, wy0, wy1, wz0, wz1, res, size, offset, c,
                                     level >= N_DENSE)
                    acc += tl.load(table_ptr + idx * F + f, mask=live, other=0.0).to(tl.float32) * w
                tl.store(out_row + level * F + f, acc, mask=live)


@triton.jit
def _hash_grid_bwd(x_ptr, grad_out_ptr, grad_table_ptr, scales_ptr, res_ptr, sizes_ptr, offsets_ptr, n_points,
                   N_LEVELS: tl.constexpr, N_DENSE: tl.constexpr, F: tl.constexpr, PAIRED: tl.constexpr,
                   BLOCK: tl.constexpr):
    """x (S, 3) fp32, grad_out (S, N_LEVELS * F) any float -> grad_table (entries * F,) fp32 += w * grad_out.
    PAIRED (F even, sm_90+, compiled): one vector reduction per feature pair instead of two atomics."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = rows < n_points
    px, py, pz = _load_points(x_ptr, rows, live)
    grad_row = grad_out_ptr + rows * (N_LEVELS * F)
    for level in tl.static_range(N_LEVELS):
        gx, gy, gz, wx0, wx1, wy0, wy1, wz0, wz1, res, size, offset = _level_cell(
            px, py, pz, scales_ptr, res_ptr, sizes_ptr, offsets_ptr, level)
        if PAIRED:
            # Rows past the end load g = 0 and x = 0 (a valid cell): their reductions add zeros, so need no mask.
            for p in tl.static_range(F // 2):
                g0 = tl.load(grad_row + level * F + 2 * p, mask=live, other=0.0).to(tl.float32)
                g1 = tl.load(grad_row + level * F + 2 * p + 1, mask=live, other=0.0).to(tl.float32)
                for c in tl.static_range(8):
                    idx, w = _corner(gx, gy, gz, wx0, wx1, wy0, wy1, wz0, wz1, res, size, offset, c,
                                     level >= N_DENSE)
                    _red_add_pair(grad_table_ptr + idx * F + 2 * p, g0 * w, g1 * w)
        else:
            for f in tl.static_range(F):
                g = tl.load(grad_row + level * F + f, mask=live, other=0.0).to(tl.float32)
                for c in tl.static_range(8):
                    idx, w = _corner(gx, gy, gz, wx0, wx1, wy0, wy1, wz0, wz1, res, size, offset, c,
                                     level >= N_DENSE)
                    tl.atomic_add(grad_table_ptr + idx * F + f, g * w, mask=live, sem="relaxed")


def _launch_shape(n_points: int) -> tuple[tuple[int], int, int]:
    block = _BLOCK_INTERPRETED if _INTERPRETED else _BLOCK
    return (triton.cdiv(n_points, block),), block, _WARPS


def _aligned(t: torch.Tensor, nbytes: int) -> torch.Tensor:
    """t, copied if its data is not `nbytes`-aligned (paired loads and reductions move 2 features at once)."""
    return t if t.data_ptr() % nbytes == 0 else t.clone()


def _paired_atomics(device: torch.device, f: int) -> bool:
    """Vector fp32 reductions exist from sm_90 (Hopper) on, in compiled kernels only."""
    return (f % 2 == 0 and device.type == "cuda" and not _INTERPRETED
            and torch.cuda.get_device_capability(device) >= (9, 0))


class _HashGridFunction(torch.autograd.Function):
    """out = encode(x, params) with the fused kernels. Gradients flow to `params` only (fp32), not to positions,
    as in HashGridTorch."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, params: torch.Tensor, layout: tuple[torch.Tensor, ...], n_dense: int,
                f: int, half_table: bool) -> torch.Tensor:
        n_levels = layout[0].shape[0]
        out = torch.empty(x.shape[0], n_levels * f, dtype=torch.float32, device=x.device)
        ctx.save_for_backward(x)
        ctx.meta = (layout, n_dense, f, params.shape[0], params.dtype)
        if x.shape[0] == 0:
            return out
        table = params.detach().to(torch.float16 if half_table else torch.float32).contiguous()
        paired = f % 2 == 0
        if paired:
            table = _aligned(table, 2 * table.element_size()).view(torch.int32 if half_table else torch.int64)
        grid, block, warps = _launch_shape(x.shape[0])
        _hash_grid_fwd[grid](x, table, out, *layout, x.shape[0], N_LEVELS=n_levels, N_DENSE=n_dense, F=f,
                             PAIRED=paired, HALF=half_table, BLOCK=block, num_warps=warps, **_OPTIONS)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (x,) = ctx.saved_tensors
        layout, n_dense, f, n_params, dtype = ctx.meta
        if not ctx.needs_input_grad[1]:
            return None, None, None, None, None, None
        grad = torch.zeros(n_params, dtype=torch.float32, device=x.device)
        if x.shape[0] > 0:
            grid, block, warps = _launch_shape(x.shape[0])
            args = (x, grad_out.contiguous(), grad, *layout, x.shape[0])
            kw = dict(N_LEVELS=layout[0].shape[0], N_DENSE=n_dense, F=f, BLOCK=block, num_warps=warps, **_OPTIONS)
            paired = _paired_atomics(x.device, f) and not _PAIRED_UNSUPPORTED
            try:
                _hash_grid_bwd[grid](*args, PAIRED=paired, **kw)
            except CompilationError:
                if not paired:
                    raise
                # This Triton cannot emit the vector reduction (its inline-asm operand rules vary by version):
                # nothing was launched, so the scalar atomics start from the same zeroed gradient.
                _PAIRED_UNSUPPORTED.add(True)
                _hash_grid_bwd[grid](*args, PAIRED=False, **kw)
        return None, grad.to(dtype), None, None, None, None


class HashGridTriton(nn.Module):
    """Multiresolution hash encoding with fused Triton kernels (CUDA, or CPU under TRITON_INTERPRET=1).

    forward(x): x (S, 3) float in [0, 1]^3 (values outside are clamped) -> (S, L*F) float32, contiguous.
    Parameters: `params` (total_entries * F,) float32, the same flat layout and init as HashGridTorch, so state
    dicts load across backends. `half_table = True` reads the table as fp16 in the forward (half the gather
    bytes; params and their gradient stay fp32); off by default, since it rounds every feature.
    """

    def __init__(self, cfg: HashGridConfig, seed: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.half_table = False
        self.params = nn.Parameter(init_table(cfg, seed))
        self.n_dense = register_layout(self, cfg, torch.int32)
        assert self.params.numel() // cfg.features_per_level < 2 ** 31, "entry indices are int32"

    @property
    def n_output_dims(self) -> int:
        return self.cfg.n_output_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != 3:
            raise ValueError(f"positions must be (S, 3), got {tuple(x.shape)}")
        if self.params.device.type != "cuda" and not _INTERPRETED:
            raise ValueError("the triton hash grid runs on CUDA, or on a CPU only when TRITON_INTERPRET=1 was set "
                             "before core.fields.hashgrid_triton was first imported")
        x = x.detach().to(device=self.params.device, dtype=torch.float32).contiguous()
        layout = (self.scales, self.resolutions, self.sizes, self.offsets)
        return _HashGridFunction.apply(x, self.params, layout, self.n_dense, self.cfg.features_per_level,
                                       self.half_table)
