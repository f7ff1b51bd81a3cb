"""Batches of pixels (and of image patches) streamed from host RAM to the training device.

Pipeline, per batch j (one background thread does the host and copy work, in order):
1. plan: which pixels. Uniform draws walk a fresh pseudo-random permutation of the valid pixels per
   epoch (`permutation_walk`, O(1) memory: a keyed Feistel bijection, keys from a torch.Generator
   seeded from (seed, epoch)); error-guided draws come from core.engine.data.selective.
2. gather: `index_select(out=)` of their uint8 colours into staging slot j % prefetch (pinned on CUDA).
3. copy: on CUDA, `non_blocking` host-to-device copies on a side stream, then the device-side
   finishing (flat index -> image, u, v; uint8 -> float by table, `unit_colors`) on that stream; an
   event marks the end.
The consumer's stream waits on that event and `record_stream`s the batch's tensors, so compute on
batch j overlaps the gather and copy of the following ones. A staging slot is refilled only after
its previous copy's event. On CPU the same path runs (no pinning, no streams; the thread still
overlaps the gather with compute). Only batches live on the device, so a capture larger than VRAM
trains.

Reproducibility: batch j is a function of the seed, j and, in selective mode, of the losses passed to
`update_errors`: every next() call hands the worker the losses received since the previous call, and
the worker folds them in before drawing. The thread's timing never changes a batch.
Nor does the device: every draw is made on the host with CPU generators, and colours become floats
through a table computed on the host (`unit_colors`), not by arithmetic on the device.
"""

from __future__ import annotations

import threading
import weakref
from collections import deque
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Any, Literal, Protocol

import torch

from core.engine.data.pixels import PixelStore, unit_colors
from core.engine.data.selective import SelectiveConfig, TileSampler

Mode = Literal["uniform", "selective"]

_MASK64 = (1 << 64) - 1
_FEISTEL_ROUNDS = 4
# Salts that keep the random streams of one seed independent.
_SALT_UNIFORM, _SALT_SELECTIVE, _SALT_PATCH = 0x5EED_0001, 0x5EED_0002, 0x5EED_0003


@dataclass
class PixelBatch:
    """B pixels on the device. flat, image_index, u (column), v (row): (B,) int64.
    colors: (B, C) float32 in [0, 1], sRGB (C = 4 includes alpha)."""

    flat: torch.Tensor
    image_index: torch.Tensor
    u: torch.Tensor
    v: torch.Tensor
    colors: torch.Tensor


@dataclass
class PatchBatch:
    """K patches of P x P pixels on the device. image_index, u0, v0 (top-left corner): (K,) int64.
    colors: (K, P, P, C) float32 in [0, 1], sRGB; colors[k, dy, dx] is pixel (u0 + dx, v0 + dy)."""

    image_index: torch.Tensor
    u0: torch.Tensor
    v0: torch.Tensor
    colors: torch.Tensor


def mix_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (splitmix64 steps), so nearby inputs give unrelated seeds."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = ((h ^ (int(p) & _MASK64)) * 0xBF58476D1CE4E5B9) & _MASK64
        h = ((h ^ (h >> 31)) * 0x94D049BB133111EB) & _MASK64
        h ^= h >> 29
    return h & ((1 << 63) - 1)


@lru_cache(maxsize=64)
def epoch_keys(stream_seed: int, epoch: int) -> tuple[int, ...]:
    """Round keys (each < 2**31) of one epoch's permutation, from a torch.Generator."""
    g = torch.Generator().manual_seed(mix_seed(stream_seed, epoch))
    return tuple(torch.randint(0, 2**31, (_FEISTEL_ROUNDS,), generator=g).tolist())


def _feistel_round(right: torch.Tensor, key: int, mask: int) -> torch.Tensor:
    """Keyed 32-bit hash (murmur3 finaliser) of right (int64, < 2**31); products stay below 2**63."""
    x = (right ^ key).mul_(0x85EBCA6B).bitwise_and_(0xFFFFFFFF)
    x.bitwise_xor_(x.bitwise_right_shift(13)).mul_(0xC2B2AE35).bitwise_and_(0xFFFFFFFF)
    return x.bitwise_xor_(x.bitwise_right_shift(16)).bitwise_and_(mask)


def feistel_permute(x: torch.Tensor, n: int, keys: tuple[int, ...]) -> torch.Tensor:
    """A keyed bijection of [0, n) onto itself, applied elementwise.

    x: (B,) int64 in [0, n). Balanced Feistel network on the smallest even number of bits covering n
    (one round per key), with cycle walking (re-encrypt until the value lands below n), so it stays
    a bijection of [0, n). Returns (B,) int64 in [0, n).
    """
    half = max(1, ((n - 1).bit_length() + 1) // 2)
    mask = (1 << half) - 1

    def encrypt(y: torch.Tensor) -> torch.Tensor:
        left, right = y.bitwise_right_shift(half), y.bitwise_and(mask)
        for key in keys:
            left, right = right, left.bitwise_xor_(_feistel_round(right, key, mask))
        return left.bitwise_left_shift_(half).bitwise_or_(right)

    y = encrypt(x)
    out_of_range = (y >= n).nonzero().squeeze(1)
    while len(out_of_range):
        y[out_of_range] = encrypt(y[out_of_range])
        out_of_range = out_of_range[y[out_of_range] >= n]
    return y


def permutation_walk(start: int, count: int, n: int, stream_seed: int) -> torch.Tensor:
    """Entries start .. start+count-1 of the endless sequence perm_0, perm_1, ... of permutations of [0, n).

    Entry p is entry p % n of epoch p // n's permutation (keys: `epoch_keys(stream_seed, epoch)`).
    Returns (count,) int64 in [0, n): every value once per epoch.
    """
    parts = []
    while count > 0:
        epoch, index = divmod(start, n)
        take = min(count, n - index)
        x = torch.arange(index, index + take, dtype=torch.int64)
        parts.append(feistel_permute(x, n, epoch_keys(stream_seed, epoch)))
        start, count = start + take, count - take
    return torch.cat(parts) if parts else torch.empty(0, dtype=torch.int64)


def copy_to_host(*tensors: torch.Tensor) -> tuple[list[torch.Tensor], torch.cuda.Event | None]:
    """Start copying device tensors to the host without blocking the caller.

    On CUDA: pinned buffers, `non_blocking` copies on the current stream, and the event to
    synchronise on before reading them. On CPU: private clones and no event.
    """
    if not tensors[0].is_cuda:
        return [t.detach().clone() for t in tensors], None
    out = []
    for t in tensors:
        host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        host.copy_(t.detach(), non_blocking=True)
        out.append(host)
    event = torch.cuda.Event()
    event.record(torch.cuda.current_stream(tensors[0].device))
    return out, event


class Planner(Protocol):
    """What a stream tells the prefetcher: staging layout, host fill, device finish."""

    def staging(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """Name -> (shape, dtype) of each host staging buffer (one set per slot)."""
        ...

    def fill(self, j: int, payload: Any, staging: dict[str, torch.Tensor]) -> Any:
        """Host, worker thread: write batch j into the staging buffers; return a record to keep."""
        ...

    def finish(self, dev: dict[str, torch.Tensor]) -> Any:
        """Device, worker thread (side stream on CUDA): turn the copied buffers into the batch."""
        ...


class Prefetcher:
    """One background thread that fills staging slots and copies them to the device, in order.

    submit(j, payload) asks for batch j; take(j) returns it once ready, ordered after its copy on
    the caller's current stream. `depth` staging slots (>= 2) rotate: batch j uses slot j % depth.
    """

    def __init__(self, planner: Planner, device: torch.device, depth: int = 2) -> None:
        if depth < 2:
            raise ValueError(f"prefetch depth must be >= 2, got {depth}")
        self._planner, self._device, self._depth = planner, device, depth
        self._cuda = device.type == "cuda"
        spec = planner.staging()
        self._slots = [{k: torch.empty(shape, dtype=dt, pin_memory=self._cuda) for k, (shape, dt) in spec.items()}
                       for _ in range(depth)]
        self._slot_events: list[torch.cuda.Event | None] = [None] * depth
        self._copy_stream = torch.cuda.Stream(device) if self._cuda else None
        self._cond = threading.Condition()
        self._requests: deque[tuple[int, Any]] = deque()
        self._ready: dict[int, tuple[Any, Any, Any]] = {}
        self._busy = False
        self._closed = False
        self._error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="nerfserve-batch-prefetch", daemon=True)
        self.thread.start()

    def submit(self, j: int, payload: Any) -> None:
        with self._cond:
            self._requests.append((j, payload))
            self._cond.notify_all()

    def take(self, j: int) -> tuple[Any, Any]:
        """(batch, record) of batch j; blocks until the worker has produced it."""
        with self._cond:
            while j not in self._ready and self._error is None and not self._closed:
                self._cond.wait()
            if self._error is not None:
                raise RuntimeError("the batch prefetch thread failed") from self._error
            if self._closed:
                raise RuntimeError("the stream is closed")
            batch, event, record = self._ready.pop(j)
        if event is not None:
            current = torch.cuda.current_stream(self._device)
            current.wait_event(event)
            for f in fields(batch):
                getattr(batch, f.name).record_stream(current)
        return batch, record

    def drain(self) -> dict[int, Any]:
        """Wait until every submitted batch is produced; return their records (j -> record)."""
        with self._cond:
            while (self._requests or self._busy) and self._error is None and not self._closed:
                self._cond.wait()
            if self._error is not None:
                raise RuntimeError("the batch prefetch thread failed") from self._error
            return {j: item[2] for j, item in self._ready.items()}

    def close(self) -> None:
        """Stop the thread (after the batch in hand) and wait for it; idempotent."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self.thread is not threading.current_thread():
            self.thread.join()
        for event in self._slot_events:
            if event is not None:
                event.synchronize()
        self._ready.clear()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._requests and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                j, payload = self._requests.popleft()
                self._busy = True
            try:
                item = self._produce(j, payload)
            except BaseException as exc:  # surfaced to the consumer by take()/drain()
                with self._cond:
                    self._error, self._busy = exc, False
                    self._cond.notify_all()
                return
            with self._cond:
                self._ready[j] = item
                self._busy = False
                self._cond.notify_all()

    def _produce(self, j: int, payload: Any) -> tuple[Any, Any, Any]:
        slot = j % self._depth
        staging = self._slots[slot]
        if self._slot_events[slot] is not None:
            self._slot_events[slot].synchronize()      # its previous copy has left the buffer
        record = self._planner.fill(j, payload, staging)
        if not self._cuda:
            return self._planner.finish({k: v.clone() for k, v in staging.items()}), None, record
        with torch.cuda.device(self._device), torch.cuda.stream(self._copy_stream):
            dev = {k: v.to(self._device, non_blocking=True) for k, v in staging.items()}
            batch = self._planner.finish(dev)
            event = torch.cuda.Event()
            event.record(self._copy_stream)
        self._slot_events[slot] = event
        return batch, event, record


class _Stream:
    """Iterator over prefetched batches; subclasses provide the planner and the state extras.

    The thread starts at the first next(); close() (or leaving a `with` block, or garbage
    collection) stops it.
    """

    def __init__(self, planner: Planner, device: str | torch.device, prefetch: int) -> None:
        self._planner = planner
        self._device = torch.device(device)
        if self._device.type == "cuda" and self._device.index is None:
            self._device = torch.device("cuda", torch.cuda.current_device())
        self._depth = prefetch
        self._next = 0                                # batches handed out so far
        self._replay: dict[int, Any] = {}             # records of batches in flight at a checkpoint
        self._prefetcher: Prefetcher | None = None
        self._finalizer: weakref.finalize | None = None

    @property
    def batches_served(self) -> int:
        return self._next

    @property
    def thread(self) -> threading.Thread | None:
        """The background thread while the stream runs, else None."""
        return None if self._prefetcher is None else self._prefetcher.thread

    def _payload(self, j: int) -> Any:
        return self._replay.pop(j, None)

    def __iter__(self) -> _Stream:
        return self

    def __next__(self) -> Any:
        if self._prefetcher is None:
            self._prefetcher = Prefetcher(self._planner, self._device, self._depth)
            self._finalizer = weakref.finalize(self, self._prefetcher.close)
            for j in range(self._next, self._next + self._depth):
                self._prefetcher.submit(j, self._payload(j))
        self._prefetcher.submit(self._next + self._depth, self._payload(self._next + self._depth))
        batch, _ = self._prefetcher.take(self._next)
        self._next += 1
        return batch

    def close(self) -> None:
        if self._prefetcher is not None:
            self._finalizer.detach()
            self._prefetcher.close()
            self._prefetcher = None

    def __enter__(self) -> _Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _in_flight(self) -> dict[int, Any]:
        """Records of the batches planned but not yet handed out (j -> record)."""
        drained = {} if self._prefetcher is None else self._prefetcher.drain()
        records = {**self._replay, **drained}
        return {j: r for j, r in records.items() if j >= self._next and r is not None}

    def _restart(self, batches: int, replay: dict[int, Any]) -> None:
        self.close()
        self._next = int(batches)
        self._replay = dict(replay)


def _check_state(state: dict, expected: dict) -> None:
    for key, value in expected.items():
        if state.get(key) != value:
            raise ValueError(f"stream state is for {key}={state.get(key)!r}, this stream has {value!r}")


class _PixelPlanner:
    """Plans pixel batches: uniform (permutation walk) then error-guided entries (host side)."""

    def __init__(self, store: PixelStore, batch_size: int, seed: int, sampler: TileSampler | None) -> None:
        self.store, self.batch_size, self.seed, self.sampler = store, batch_size, seed, sampler
        self.n_selective = 0 if sampler is None else round(sampler.config.fraction * batch_size)
        self.n_uniform = batch_size - self.n_selective

    def staging(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        return {"flat": ((self.batch_size,), torch.int64),
                "colors": ((self.batch_size, self.store.channels), torch.uint8)}

    def fill(self, j: int, payload: Any, staging: dict[str, torch.Tensor]) -> torch.Tensor | None:
        replay, updates = payload
        flat = staging["flat"]
        walk = permutation_walk(j * self.n_uniform, self.n_uniform, self.store.num_valid,
                                mix_seed(self.seed, _SALT_UNIFORM))
        flat[:self.n_uniform] = self.store.valid_flat(walk)
        record = None
        if self.sampler is not None:
            for tiles, loss, event in updates:
                if event is not None:
                    event.synchronize()
                self.sampler.fold(tiles, loss)
            if replay is None:
                g = torch.Generator().manual_seed(mix_seed(self.seed, _SALT_SELECTIVE, j))
                replay = self.sampler.draw(self.n_selective, g)
            flat[self.n_uniform:] = record = replay
        torch.index_select(self.store.colors, 0, flat, out=staging["colors"])
        return record

    def finish(self, dev: dict[str, torch.Tensor]) -> PixelBatch:
        flat = dev["flat"]
        image_index, u, v = self.store.locate(flat)
        return PixelBatch(flat, image_index, u, v, unit_colors(dev["colors"]))


class RayBatchStream(_Stream):
    """Endless batches of `batch_size` pixels of a PixelStore, on `device`.

    mode "uniform": each epoch walks a fresh permutation of every valid pixel; a batch crossing the
    end of an epoch continues in the next, so every batch is full. mode "selective": a fraction
    (SelectiveConfig.fraction) of each batch comes from tiles drawn by running loss (feed it with
    `update_errors`), the rest walks the uniform permutation, which still covers every pixel.
    prefetch: staging slots / batches planned ahead (>= 2).
    """

    def __init__(self, store: PixelStore, batch_size: int, device: str | torch.device = "cpu", seed: int = 0,
                 mode: Mode = "uniform", selective: SelectiveConfig | None = None, prefetch: int = 2) -> None:
        if mode not in ("uniform", "selective"):
            raise ValueError(f"mode must be 'uniform' or 'selective', got {mode!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        sampler = TileSampler(store, selective or SelectiveConfig()) if mode == "selective" else None
        super().__init__(_PixelPlanner(store, batch_size, seed, sampler), device, prefetch)
        self.store, self.batch_size, self.seed, self.mode = store, batch_size, seed, mode
        self._sampler = sampler
        self._unsent: list[tuple[torch.Tensor, torch.Tensor, torch.cuda.Event | None]] = []
        store.tables(self._device)                    # copy the small tables to the device now

    @property
    def epoch(self) -> int:
        """Epoch of the uniform permutation walk at the next batch."""
        return self._next * self._planner.n_uniform // self.store.num_valid

    @property
    def tile_loss(self) -> torch.Tensor | None:
        """(T,) float32 running loss per tile (NaN = unvisited) as of the latest planned batch; a copy."""
        if self._sampler is None:
            return None
        self._in_flight()
        return self._sampler.tile_loss.clone()

    def _payload(self, j: int) -> tuple[torch.Tensor | None, list]:
        updates, self._unsent = self._unsent, []
        return super()._payload(j), updates

    def update_errors(self, batch: PixelBatch, per_ray_loss: torch.Tensor) -> None:
        """Feed the per-ray loss of a batch back to the tile sampler (no-op in uniform mode).

        batch: a PixelBatch from this stream. per_ray_loss: (B,) float, on the batch's device.
        Does not synchronise the device: the copy to the host is waited for by the worker thread.
        """
        if self._sampler is None:
            return
        loss = per_ray_loss.detach().reshape(-1)
        if loss.shape[0] != batch.flat.shape[0]:
            raise ValueError(f"per_ray_loss has {loss.shape[0]} entries for a batch of {batch.flat.shape[0]}")
        tiles = self.store.tile_of(batch.image_index, batch.u, batch.v)
        (tiles_host, loss_host), event = copy_to_host(tiles, loss.float())
        self._unsent.append((tiles_host, loss_host, event))

    def state_dict(self) -> dict:
        """Everything needed to continue the identical sequence (plain tensors, ints and lists)."""
        position = self._next * self._planner.n_uniform
        state = {"kind": "rays", "mode": self.mode, "seed": self.seed, "batch_size": self.batch_size,
                 "num_valid": self.store.num_valid, "batches": self._next,
                 "epoch": position // self.store.num_valid, "position": position % self.store.num_valid,
                 "in_flight": self._in_flight(), "tile_loss": None, "unsent": []}
        if self._sampler is not None:
            state["tile_loss"] = self._sampler.tile_loss.clone()
            for tiles, loss, event in self._unsent:
                if event is not None:
                    event.synchronize()
                state["unsent"].append([tiles.clone(), loss.clone()])
        return state

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state_dict()` of a stream over the same store with the same settings."""
        _check_state(state, {"kind": "rays", "mode": self.mode, "seed": self.seed,
                             "batch_size": self.batch_size, "num_valid": self.store.num_valid})
        self._restart(state["batches"], state["in_flight"])
        if self._sampler is not None:
            self._sampler.tile_loss = state["tile_loss"].clone()
            self._unsent = [(tiles, loss, None) for tiles, loss in state["unsent"]]


class _PatchPlanner:
    """Plans patch batches: centres walk a permutation of the valid pixels; corners clamp inside."""

    def __init__(self, store: PixelStore, patch_size: int, count: int, seed: int) -> None:
        self.store, self.size, self.count, self.seed = store, patch_size, count, seed
        offs = torch.arange(patch_size, dtype=torch.int64)
        self.dy, self.dx = offs[None, :, None], offs[None, None, :]

    def staging(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        return {"meta": ((3, self.count), torch.int64),
                "colors": ((self.count * self.size * self.size, self.store.channels), torch.uint8)}

    def fill(self, j: int, payload: Any, staging: dict[str, torch.Tensor]) -> None:
        walk = permutation_walk(j * self.count, self.count, self.store.num_valid, mix_seed(self.seed, _SALT_PATCH))
        centres = self.store.valid_flat(walk)
        image_index, u, v = self.store.locate(centres)
        half = self.size // 2
        u0 = torch.minimum((u - half).clamp(min=0), self.store.widths[image_index] - self.size)
        v0 = torch.minimum((v - half).clamp(min=0), self.store.heights[image_index] - self.size)
        meta = staging["meta"]
        meta[0], meta[1], meta[2] = image_index, u0, v0
        flat = self.store.flat_index(image_index[:, None, None], u0[:, None, None] + self.dx,
                                     v0[:, None, None] + self.dy)
        torch.index_select(self.store.colors, 0, flat.reshape(-1), out=staging["colors"])

    def finish(self, dev: dict[str, torch.Tensor]) -> PatchBatch:
        colors = unit_colors(dev["colors"].view(self.count, self.size, self.size, -1))
        meta = dev["meta"]
        return PatchBatch(meta[0], meta[1], meta[2], colors)


class PatchStream(_Stream):
    """Endless batches of `patches_per_batch` image patches of patch_size x patch_size pixels.

    Patch centres walk a per-epoch permutation of the valid pixels (every valid pixel is a centre
    once per epoch); the corner is clamped so the patch lies inside its image. With masks the centre
    is valid, but a patch may include masked pixels near its edge. Every image must be at least
    patch_size on each side.
    """

    def __init__(self, store: PixelStore, patch_size: int, patches_per_batch: int,
                 device: str | torch.device = "cpu", seed: int = 0, prefetch: int = 2) -> None:
        small = [i for i in range(store.num_images)
                 if min(int(store.widths[i]), int(store.heights[i])) < patch_size]
        if patch_size < 1 or patches_per_batch < 1 or small:
            raise ValueError(f"patch_size {patch_size} / patches_per_batch {patches_per_batch} invalid "
                             f"(images smaller than a patch: {small[:5]})")
        super().__init__(_PatchPlanner(store, patch_size, patches_per_batch, seed), device, prefetch)
        self.store, self.patch_size, self.patches_per_batch, self.seed = store, patch_size, patches_per_batch, seed

    def state_dict(self) -> dict:
        return {"kind": "patches", "seed": self.seed, "patch_size": self.patch_size,
                "patches_per_batch": self.patches_per_batch, "num_valid": self.store.num_valid,
                "batches": self._next}

    def load_state_dict(self, state: dict) -> None:
        _check_state(state, {"kind": "patches", "seed": self.seed, "patch_size": self.patch_size,
                             "patches_per_batch": self.patches_per_batch, "num_valid": self.store.num_valid})
        self._restart(state["batches"], {})
