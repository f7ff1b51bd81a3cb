"""Error-guided sampling: a running loss per image tile, and draws of pixels in proportion to it.

Each tile (core.engine.data.pixels: `tile` x `tile` pixels of one image) keeps one float32, the running
(exponential moving average) per-ray loss of the pixels drawn from it. A tile never visited holds NaN
and weighs `initial_loss`, high, so every tile gets visited; a visited tile's loss never falls below
`min_loss`, so none drops out. A tile is drawn with probability proportional to its loss times its
number of samplable pixels (its mean loss per pixel), then a pixel uniformly inside it (border tiles
are cut by the image edge; masked-out pixels are never drawn).

Everything here runs on the host with explicit torch.Generators, so a draw is a function of the seed
and the losses folded in so far: the same on every device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from core.engine.data.pixels import PixelStore


@dataclass
class SelectiveConfig:
    """fraction: share of each batch drawn from tiles by loss (the rest uniformly).
    ema: weight of a batch's mean loss in a tile's running loss (first visit: replaces the NaN).
    initial_loss: weight of a never-visited tile (per-ray losses on [0, 1] colours are below 1).
    min_loss: floor of a visited tile's weight.
    """

    fraction: float = 0.5
    ema: float = 0.1
    initial_loss: float = 1.0
    min_loss: float = 1e-4

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction <= 1.0 or not 0.0 < self.ema <= 1.0:
            raise ValueError(f"need 0 <= fraction <= 1 and 0 < ema <= 1, got {self.fraction}, {self.ema}")
        if self.initial_loss <= 0 or self.min_loss <= 0:
            raise ValueError("initial_loss and min_loss must be > 0")


def fold_tile_losses(tile_loss: torch.Tensor, tiles: torch.Tensor, loss: torch.Tensor, ema: float) -> None:
    """Fold one batch of per-ray losses into the running per-tile loss, in place.

    tile_loss: (T,) float32, NaN = never visited. tiles: (B,) int64 tile of each ray. loss: (B,) float32.
    """
    n = tile_loss.shape[0]
    counts = torch.bincount(tiles, minlength=n)
    touched = counts.nonzero().squeeze(1)
    mean = torch.bincount(tiles, weights=loss.float(), minlength=n)[touched] / counts[touched]
    old = tile_loss[touched]
    tile_loss[touched] = torch.where(torch.isnan(old), mean, old + ema * (mean - old))


def tile_weights(tile_loss: torch.Tensor, counts: torch.Tensor, config: SelectiveConfig) -> torch.Tensor:
    """(T,) float64 draw weights: loss (initial_loss if unvisited, floored at min_loss) x pixel count.

    tile_loss: (T,) float32. counts: (T,) int32/int64 samplable pixels per tile.
    """
    loss = torch.where(torch.isnan(tile_loss), config.initial_loss, tile_loss.clamp(min=config.min_loss))
    return loss.double() * counts


def draw_from_tiles(store: PixelStore, weights: torch.Tensor, counts: torch.Tensor, n: int,
                    generator: torch.Generator) -> torch.Tensor:
    """Draw n pixels: tiles with probability proportional to weights, then a uniform pixel inside.

    weights: (T,) float64 >= 0, not all 0. counts: (T,) int32/int64 pixels per tile. Inverse-CDF sampling
    (what torch.multinomial with replacement does, without its 2**24-category limit).
    Returns (n,) int64 flat pixel indices, host.
    """
    cdf = torch.cumsum(weights, 0)
    total = cdf[-1]
    # r < total strictly, so searchsorted(right=True) only lands on tiles of positive weight.
    r = torch.minimum(torch.rand(n, generator=generator, dtype=torch.float64) * total,
                      torch.nextafter(total, total.new_zeros(())))
    t = torch.searchsorted(cdf, r, right=True)
    k = (torch.rand(n, generator=generator, dtype=torch.float64) * counts[t]).long()
    return store.tile_pixel(t, torch.minimum(k, counts[t] - 1))


class TileSampler:
    """The per-tile running loss of one store, and the draws it guides (host side)."""

    def __init__(self, store: PixelStore, config: SelectiveConfig) -> None:
        self.store = store
        self.config = config
        self.counts = store.tile_pixel_counts().to(torch.int32)                  # (T,) pixels per tile
        self.tile_loss = torch.full((store.num_tiles,), float("nan"), dtype=torch.float32)

    def fold(self, tiles: torch.Tensor, loss: torch.Tensor) -> None:
        """tiles: (B,) int64, loss: (B,) float32, both host."""
        fold_tile_losses(self.tile_loss, tiles, loss, self.config.ema)

    def draw(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """(n,) int64 flat pixel indices drawn by tile loss (host)."""
        return draw_from_tiles(self.store, tile_weights(self.tile_loss, self.counts, self.config),
                               self.counts, n, generator)
