"""Every pixel of a capture in host RAM as uint8 colour, and the map flat index <-> (image, u, v).

Pixels are numbered by one flat index: image after image, each image row-major, so pixel (u, v)
(column, row) of image i is `offsets[i] + v * widths[i] + u`.

Memory, bytes per pixel:
- C (3 or 4): the uint8 colour, always; C is 4 when any image has alpha (the others get 255).
- with masks only: 4 (int32; 8 as int64 from 2**31 pixels on) per *valid* pixel, the compact
  index of the pixels that may be sampled. Without masks nothing else is stored per pixel.
Per image and per tile (tiles of `tile` x `tile` pixels, the last row/column of an image cut by its
border) there are a few int64 each; per-tile loss state lives with the sampler (core.engine.data.selective).

With masks the valid index is ordered tile by tile (image by image, tiles row-major, pixels
row-major inside a tile), so the valid pixels of tile t are `valid[tile_starts[t]:tile_starts[t + 1]]`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import torch

from core.errors import UserInputError
from core.scene.capture import Capture


def tile_layout(widths: torch.Tensor, heights: torch.Tensor, tile: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tiles per image row, and where each image's tiles start in the global tile numbering.

    widths, heights: (N,) int64 image sizes in pixels. tile: tile side in pixels.
    Returns tiles_x (N,) int64 (tiles per row of tiles) and tile_offsets (N+1,) int64 (tile t
    belongs to image i when tile_offsets[i] <= t < tile_offsets[i + 1]; tiles row-major).
    """
    tiles_x = (widths + tile - 1) // tile
    tiles_y = (heights + tile - 1) // tile
    tile_offsets = torch.zeros(len(widths) + 1, dtype=torch.int64)
    tile_offsets[1:] = torch.cumsum(tiles_x * tiles_y, 0)
    return tiles_x, tile_offsets


def tile_major_pixels(mask: np.ndarray, tile: int) -> tuple[np.ndarray, np.ndarray]:
    """The True pixels of one mask in tile order, and how many fall in each tile.

    mask: (H, W) bool, True = pixel may be sampled.
    Returns local (M,) int64, row-major pixel indices v * W + u within the image, ordered tile by
    tile (tiles row-major, pixels row-major inside a tile); counts (tiles_y * tiles_x,) int64.
    """
    h, w = mask.shape
    ty, tx = -(-h // tile), -(-w // tile)
    padded = np.zeros((ty * tile, tx * tile), dtype=bool)
    padded[:h, :w] = mask
    by_tile = padded.reshape(ty, tile, tx, tile).transpose(0, 2, 1, 3)   # (ty, tx, tile, tile)
    pos = np.flatnonzero(by_tile)
    tile_id, inner = np.divmod(pos, tile * tile)
    v = (tile_id // tx) * tile + inner // tile
    u = (tile_id % tx) * tile + inner % tile
    counts = by_tile.reshape(ty * tx, tile * tile).sum(1).astype(np.int64)
    return (v * w + u).astype(np.int64), counts


# uint8 -> [0, 1] float32, by true division on the host. Arithmetic on the device may round differently: CUDA
# divides by a scalar as a multiplication by its float32 reciprocal, which is one ulp off x / 255 for 126 of
# the 256 values, so a CUDA batch's colours differed from the CPU's. Looked up instead, they are the same bits.
_UNIT_LUT = torch.arange(256, dtype=torch.float32) / 255.0
_unit_luts: dict[torch.device, torch.Tensor] = {torch.device("cpu"): _UNIT_LUT}
_unit_lock = threading.Lock()


def unit_colors(colors: torch.Tensor) -> torch.Tensor:
    """uint8 colours -> float32 in [0, 1], bit-identical on every device (value / 255.0 as the CPU divides).

    colors: (...) uint8 on any device. Returns (...) float32 on the same device: a gather from a 256-entry
    table computed on the host (copied once per device), never device arithmetic.
    """
    if colors.dtype != torch.uint8:
        raise ValueError(f"colors must be uint8, got {colors.dtype}")
    device = colors.device
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    lut = _unit_luts.get(device)
    if lut is None:
        with _unit_lock:
            lut = _unit_luts.get(device)
            if lut is None:
                lut = _UNIT_LUT.to(device)
                if device.type == "cuda":      # read from other streams (the prefetch copy streams)
                    torch.cuda.current_stream(device).synchronize()
                _unit_luts[device] = lut
    return lut[colors.long()]


def pack_colors(images: list[np.ndarray], channels: int, pin: bool) -> torch.Tensor:
    """Concatenate images' pixels row-major into one (P, channels) uint8 tensor.

    images: N arrays (H_i, W_i, 3 or 4) uint8 sRGB. channels: 3 or 4 (RGB images get alpha 255).
    pin: allocate the buffer in page-locked memory (only meaningful with CUDA).
    """
    total = sum(img.shape[0] * img.shape[1] for img in images)
    colors = torch.empty((total, channels), dtype=torch.uint8, pin_memory=pin)
    dst = colors.numpy()                                   # a view: fills the (pinned) buffer in place
    start = 0
    for img in images:
        n, c = img.shape[0] * img.shape[1], min(img.shape[2], channels)
        dst[start:start + n, :c] = img[..., :c].reshape(n, c)
        dst[start:start + n, c:] = 255
        start += n
    return colors


def check_masks(masks: list[np.ndarray | None] | None, images: list[np.ndarray], names: list[str]
                ) -> list[np.ndarray | None] | None:
    """Masks as (H_i, W_i) bool or None per image; None overall when no image has one.

    Raises UserInputError naming the image when a mask's size differs from its image's.
    """
    if masks is None or all(m is None for m in masks):
        return None
    out: list[np.ndarray | None] = []
    for m, img, name in zip(masks, images, names, strict=True):
        if m is not None and m.shape[:2] != img.shape[:2]:
            raise UserInputError(
                "mask_size_mismatch",
                f"the mask of image {name} is {m.shape[1]}x{m.shape[0]} pixels but the image is "
                f"{img.shape[1]}x{img.shape[0]}.",
                "Upload a mask with exactly the size of its image (white = use, black = ignore).")
        out.append(None if m is None else np.asarray(m, dtype=bool))
    return out


def valid_tile_index(masks: list[np.ndarray | None], images: list[np.ndarray], offsets: torch.Tensor,
                     tile: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The compact index of maskable pixels, tile-ordered, and where each tile's run starts in it.

    masks: N entries (H_i, W_i) bool or None (None = every pixel valid). offsets: (N+1,) int64.
    Returns valid (V,) `dtype` flat pixel indices and tile_starts (T+1,) int64.
    """
    parts, counts = [], []
    for i, (m, img) in enumerate(zip(masks, images, strict=True)):
        full = np.ones(img.shape[:2], dtype=bool) if m is None else m
        local, c = tile_major_pixels(full, tile)
        parts.append(torch.from_numpy(local + int(offsets[i])).to(dtype))
        counts.append(torch.from_numpy(c))
    tile_starts = torch.zeros(sum(len(c) for c in counts) + 1, dtype=torch.int64)
    tile_starts[1:] = torch.cumsum(torch.cat(counts), 0)
    return torch.cat(parts), tile_starts


@dataclass(frozen=True)
class IndexTables:
    """The store's small per-image tables on one device (all int64).

    offsets (N+1,), widths (N,), heights (N,), tiles_x (N,), tile_offsets (N+1,).
    """

    offsets: torch.Tensor
    widths: torch.Tensor
    heights: torch.Tensor
    tiles_x: torch.Tensor
    tile_offsets: torch.Tensor

    def to(self, device: torch.device) -> IndexTables:
        return IndexTables(*(t.to(device) for t in (self.offsets, self.widths, self.heights,
                                                     self.tiles_x, self.tile_offsets)))


class PixelStore:
    """All pixels of a capture in host memory (see the module docstring for the layout and cost).

    colors: (P, C) uint8, pinned when built for a CUDA device.
    offsets: (N+1,) int64; widths, heights: (N,) int64 (host; `tables(device)` caches device copies).
    valid: None without masks, else (V,) int32/int64 flat indices of the pixels that may be sampled,
        tile-ordered; tile_starts: None, or (T+1,) int64 start of each tile's run in `valid`.
    tile: tile side in pixels for error-guided sampling (core.engine.data.selective).
    """

    def __init__(self, colors: torch.Tensor, widths: torch.Tensor, heights: torch.Tensor,
                 valid: torch.Tensor | None = None, tile_starts: torch.Tensor | None = None,
                 tile: int = 16) -> None:
        if colors.dtype != torch.uint8 or colors.ndim != 2 or colors.shape[1] not in (3, 4):
            raise ValueError(f"colors must be (P, 3|4) uint8, got {tuple(colors.shape)} {colors.dtype}")
        if tile < 1:
            raise ValueError(f"tile must be >= 1, got {tile}")
        self.colors = colors
        self.widths = widths.to(torch.int64)
        self.heights = heights.to(torch.int64)
        self.offsets = torch.zeros(len(widths) + 1, dtype=torch.int64)
        self.offsets[1:] = torch.cumsum(self.widths * self.heights, 0)
        if int(self.offsets[-1]) != colors.shape[0]:
            raise ValueError(f"{colors.shape[0]} colours for {int(self.offsets[-1])} pixels")
        self.valid = valid
        self.tile = int(tile)
        self.tiles_x, self.tile_offsets = tile_layout(self.widths, self.heights, self.tile)
        self.tile_starts = tile_starts
        if (valid is None) != (tile_starts is None):
            raise ValueError("valid and tile_starts come together")
        if tile_starts is not None and len(tile_starts) != self.num_tiles + 1:
            raise ValueError(f"tile_starts has {len(tile_starts)} entries for {self.num_tiles} tiles")
        self._host = IndexTables(self.offsets, self.widths, self.heights, self.tiles_x, self.tile_offsets)
        self._tables: dict[torch.device, IndexTables] = {torch.device("cpu"): self._host}
        self._lock = threading.Lock()

    @staticmethod
    def from_images(images: list[np.ndarray], masks: list[np.ndarray | None] | None = None,
                    device: str | torch.device = "cpu", tile: int = 16, names: list[str] | None = None,
                    pin: bool | None = None) -> PixelStore:
        """Build the store from N images (H_i, W_i, 3|4) uint8 and optional (H_i, W_i) bool masks.

        device: where training runs; the colour buffer is pinned when it is CUDA (override: pin).
        names: image file names, for error messages. Raises UserInputError for unusable masks.
        """
        names = names or [f"#{i}" for i in range(len(images))]
        for img, name in zip(images, names, strict=True):
            if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] not in (3, 4):
                raise ValueError(f"image {name}: expected (H, W, 3|4) uint8, got {img.shape} {img.dtype}")
        pin = torch.device(device).type == "cuda" if pin is None else pin
        channels = 4 if any(img.shape[2] == 4 for img in images) else 3
        colors = pack_colors(images, channels, pin)
        widths = torch.tensor([img.shape[1] for img in images], dtype=torch.int64)
        heights = torch.tensor([img.shape[0] for img in images], dtype=torch.int64)
        masks = check_masks(masks, images, names)
        valid = tile_starts = None
        if masks is not None:
            offsets = torch.zeros(len(images) + 1, dtype=torch.int64)
            offsets[1:] = torch.cumsum(widths * heights, 0)
            dtype = torch.int32 if colors.shape[0] < 2**31 else torch.int64
            valid, tile_starts = valid_tile_index(masks, images, offsets, tile, dtype)
            if len(valid) == 0:
                raise UserInputError("no_valid_pixels", "the masks exclude every pixel of every image.",
                                     "Masks are white where the pixel is used; check they are not inverted.")
        return PixelStore(colors, widths, heights, valid, tile_starts, tile)

    @staticmethod
    def from_capture(capture: Capture, device: str | torch.device = "cpu", tile: int = 16,
                     pin: bool | None = None) -> PixelStore:
        """Build the store from a Capture's images and masks (see from_images)."""
        return PixelStore.from_images(capture.images, capture.masks, device, tile, capture.names, pin)

    @property
    def num_images(self) -> int:
        return len(self.widths)

    @property
    def num_pixels(self) -> int:
        return self.colors.shape[0]

    @property
    def num_valid(self) -> int:
        """Pixels that may be sampled: all of them without masks."""
        return self.num_pixels if self.valid is None else len(self.valid)

    @property
    def num_tiles(self) -> int:
        return int(self.tile_offsets[-1])

    @property
    def channels(self) -> int:
        return self.colors.shape[1]

    @property
    def pinned(self) -> bool:
        return self.colors.is_pinned()

    @property
    def nbytes(self) -> int:
        """Host bytes held: colours, the valid index (masks only) and the small tables."""
        tensors = [self.colors, self.offsets, self.widths, self.heights, self.tiles_x, self.tile_offsets]
        tensors += [t for t in (self.valid, self.tile_starts) if t is not None]
        return sum(t.numel() * t.element_size() for t in tensors)

    def image(self, i: int) -> torch.Tensor:
        """(H_i, W_i, C) uint8 view of image i's colours (host)."""
        h, w = int(self.heights[i]), int(self.widths[i])
        return self.colors[int(self.offsets[i]):int(self.offsets[i + 1])].view(h, w, self.channels)

    def tables(self, device: torch.device | str) -> IndexTables:
        """The per-image tables on `device`, copied there once and cached."""
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        with self._lock:
            if device not in self._tables:
                self._tables[device] = self._host.to(device)
                if device.type == "cuda":     # other streams (the prefetch copy stream) read them
                    torch.cuda.current_stream(device).synchronize()
            return self._tables[device]

    def locate(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Image and pixel of flat indices, computed on flat's device.

        flat: (B,) int64 flat pixel indices. Returns image_index, u (column), v (row), each (B,) int64.
        """
        t = self.tables(flat.device)
        image_index = torch.searchsorted(t.offsets[1:], flat, right=True)
        local = flat - t.offsets[image_index]
        w = t.widths[image_index]
        return image_index, local % w, local // w

    def flat_index(self, image_index: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Inverse of `locate`. image_index, u, v: (...) int64 on one device. Returns (...) int64."""
        t = self.tables(image_index.device)
        return t.offsets[image_index] + v * t.widths[image_index] + u

    def tile_of(self, image_index: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Global tile number of pixels. image_index, u, v: (B,) int64. Returns (B,) int64."""
        t = self.tables(image_index.device)
        return t.tile_offsets[image_index] + (v // self.tile) * t.tiles_x[image_index] + u // self.tile

    def valid_flat(self, k: torch.Tensor) -> torch.Tensor:
        """Flat index of the k-th valid pixel. k: (B,) int64 in [0, num_valid), host. Returns (B,) int64."""
        return k if self.valid is None else self.valid[k].long()

    def tile_pixel_counts(self) -> torch.Tensor:
        """(T,) int64: how many samplable pixels each tile holds (border tiles are cut; masks apply)."""
        if self.tile_starts is not None:
            return self.tile_starts.diff()
        counts = []
        for w, h in zip(self.widths.tolist(), self.heights.tolist(), strict=True):
            cols = torch.full((-(-w // self.tile),), self.tile, dtype=torch.int64)
            rows = torch.full((-(-h // self.tile),), self.tile, dtype=torch.int64)
            cols[-1], rows[-1] = w - (len(cols) - 1) * self.tile, h - (len(rows) - 1) * self.tile
            counts.append(torch.outer(rows, cols).reshape(-1))
        return torch.cat(counts)

    def tile_pixel(self, t: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Flat index of the k-th samplable pixel of tile t (row-major inside the tile), host.

        t: (B,) int64 global tile numbers; k: (B,) int64 in [0, tile_pixel_counts()[t]). Returns (B,) int64.
        """
        if self.tile_starts is not None:
            return self.valid[self.tile_starts[t] + k].long()
        i = torch.searchsorted(self.tile_offsets[1:], t, right=True)
        local = t - self.tile_offsets[i]
        x0 = (local % self.tiles_x[i]) * self.tile
        y0 = (local // self.tiles_x[i]) * self.tile
        tile_w = torch.clamp(self.widths[i] - x0, max=self.tile)
        return self.flat_index(i, x0 + k % tile_w, y0 + k // tile_w)
