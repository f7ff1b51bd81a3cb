"""The hash grid alone, per backend: seconds per forward and per forward + backward; prints one JSON document.

    python benchmarks/hashgrid_bench.py [--points 100000] [--device cpu|cuda|auto] [--repeats 5]

Points are ray-like (1000 rays x 100 samples over half the unit cube), the grid is the benchmarks' usual one
(12 levels, 2^17 entries, resolution 16..512). The torch backend is always timed; on CUDA the triton backend too
when triton imports, and the tcnn one when tinycudann does. Figures are keyed by backend.
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch
from render_bench import machine, timed

from core.fields.encoding import HashGridConfig, make_hash_grid, tcnn_available, triton_available

GRID = HashGridConfig(n_levels=12, features_per_level=2, log2_hashmap_size=17, base_resolution=16, max_resolution=512)


def seconds(fn, device: str, repeats: int) -> float:
    """Median seconds of fn() over `repeats` runs (render_bench.timed) after a warm-up."""
    fn()
    return statistics.median([timed(fn, device)[1] for _ in range(repeats)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=int, default=100_000)
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    gen = torch.Generator().manual_seed(0)
    rays = max(1, args.points // 100)
    origins = torch.rand(rays, 1, 3, generator=gen)
    dirs = torch.nn.functional.normalize(torch.randn(rays, 1, 3, generator=gen), dim=-1)
    x = (origins + dirs * torch.linspace(0, 0.5, 100)[None, :, None]).reshape(-1, 3).clamp(0, 1).to(device)
    backends = ["torch"]
    if device == "cuda":
        backends += (["triton"] if triton_available() else []) + (["tcnn"] if tcnn_available() else [])
    figures = {}
    for backend in backends:
        grid = make_hash_grid(GRID, backend, device).to(device)

        def forward_backward(grid=grid) -> None:
            grid(x).sum().backward()

        with torch.no_grad():
            fwd = seconds(lambda grid=grid: grid(x), device, args.repeats)
        both = seconds(forward_backward, device, args.repeats)
        figures[backend] = {"forward_s": fwd, "forward_backward_s": both,
                            "forward_points_per_s": len(x) / fwd, "train_points_per_s": len(x) / both}
    config = {"points": len(x), "grid": GRID.__dict__, "repeats": args.repeats}
    print(json.dumps({"machine": machine(device), "config": config, "figures": figures}, indent=2))


if __name__ == "__main__":
    main()
