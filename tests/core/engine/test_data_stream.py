"""PixelStore and the batch streams (core.engine.data): coverage, colours, masks, seeds, checkpoints, threads."""

from __future__ import annotations

import gc
import io
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from core.engine.data import PatchStream, PixelStore, RayBatchStream, SelectiveConfig
from core.engine.data.pixels import unit_colors
from core.engine.data.stream import feistel_permute, permutation_walk
from core.errors import UserInputError
from core.functional.cameras import Intrinsics
from core.scene.capture import Capture


def _images(sizes=((23, 37), (16, 20)), alpha=(), seed=0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 4 if i in alpha else 3), dtype=np.uint8)
            for i, (h, w) in enumerate(sizes)]


def _masks(images: list[np.ndarray]) -> list[np.ndarray | None]:
    """First image: a disc; second: no mask (all valid); third and on: left half."""
    out: list[np.ndarray | None] = []
    for i, img in enumerate(images):
        h, w = img.shape[:2]
        yy, xx = np.mgrid[:h, :w]
        if i == 0:
            out.append((yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (min(h, w) / 2.5) ** 2)
        elif i == 1:
            out.append(None)
        else:
            out.append(xx < w // 2)
    return out


def _valid_flat(images, masks) -> set[int]:
    flat, start = set(), 0
    for img, m in zip(images, masks, strict=True):
        n = img.shape[0] * img.shape[1]
        local = np.arange(n) if m is None else np.flatnonzero(m)
        flat.update((local + start).tolist())
        start += n
    return flat


def _take(stream, n: int, feedback=None) -> list:
    out = []
    for _ in range(n):
        b = next(stream)
        if feedback is not None:
            stream.update_errors(b, feedback(b))
        out.append(b)
    return out


def _flats(batches) -> torch.Tensor:
    return torch.cat([b.flat for b in batches])


def _our_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "nerfserve-batch-prefetch"]


def test_feistel_walk_is_a_permutation_per_epoch():
    for n in (1, 2, 3, 17, 1000, 4099):
        y = feistel_permute(torch.arange(n), n, (1, 2, 3, 4))
        assert torch.equal(torch.sort(y).values, torch.arange(n)), n
    walk = permutation_walk(0, 3 * 500, 500, stream_seed=9)
    epochs = walk.view(3, 500)
    for e in epochs:
        assert torch.equal(torch.sort(e).values, torch.arange(500))
    assert not torch.equal(epochs[0], epochs[1])                     # a fresh order each epoch
    assert abs(np.corrcoef(np.arange(500), epochs[0].numpy())[0, 1]) < 0.2   # and a shuffled one


def test_store_layout_locate_and_memory():
    images = _images()
    store = PixelStore.from_images(images)
    assert store.channels == 3 and store.colors.dtype == torch.uint8 and not store.pinned
    assert store.num_pixels == 23 * 37 + 16 * 20 and store.valid is None
    assert store.nbytes < store.num_pixels * 3 + 512                 # colour only, per pixel
    flat = torch.arange(store.num_pixels)
    i, u, v = store.locate(flat)
    assert torch.equal(store.flat_index(i, u, v), flat)
    for k in (0, 851, 852, store.num_pixels - 1):
        img = images[int(i[k])]
        assert (u[k] < img.shape[1]) and (v[k] < img.shape[0])
        assert torch.equal(store.colors[k], torch.from_numpy(img[int(v[k]), int(u[k])]))
    assert torch.equal(store.image(1), torch.from_numpy(images[1]))


def test_store_alpha_and_masks_cost():
    images = _images(alpha=(1,))
    store = PixelStore.from_images(images)
    assert store.channels == 4
    assert bool((store.image(0)[..., 3] == 255).all())
    assert torch.equal(store.image(1), torch.from_numpy(images[1]))
    masked = PixelStore.from_images(images, _masks(images))
    assert masked.valid.dtype == torch.int32
    assert masked.nbytes - store.nbytes >= 4 * masked.num_valid


@pytest.mark.parametrize("masked", [False, True])
def test_tile_pixels_enumerate_each_tile(masked):
    images = _images(sizes=((23, 37), (16, 20), (33, 17)))
    masks = _masks(images) if masked else None
    store = PixelStore.from_images(images, masks, tile=8)
    counts = store.tile_pixel_counts()
    assert len(counts) == store.num_tiles == 3 * 5 + 2 * 3 + 5 * 3
    t = torch.repeat_interleave(torch.arange(store.num_tiles), counts)
    k = torch.cat([torch.arange(int(c)) for c in counts])
    flat = store.tile_pixel(t, k)
    assert sorted(flat.tolist()) == sorted(_valid_flat(images, masks or [None] * 3))
    assert torch.equal(store.tile_of(*store.locate(flat)), t)


def test_uniform_covers_every_pixel_once_per_epoch_and_colours_match():
    images = _images()
    store = PixelStore.from_images(images)
    n = store.num_pixels                                              # 1171, not a multiple of 100
    with RayBatchStream(store, batch_size=100, seed=3) as stream:
        batches = _take(stream, 24)
    assert all(b.flat.shape == (100,) and b.colors.shape == (100, 3) for b in batches)
    flat = _flats(batches)
    assert torch.equal(torch.sort(flat[:n]).values, torch.arange(n))
    assert torch.equal(torch.sort(flat[n:2 * n]).values, torch.arange(n))
    assert not torch.equal(flat[:n], flat[n:2 * n])
    for b in batches[:3] + batches[-2:]:
        assert b.colors.dtype == torch.float32
        for k in range(0, 100, 7):
            img = images[int(b.image_index[k])]
            expect = torch.from_numpy(img[int(b.v[k]), int(b.u[k])]).float() / 255
            assert torch.allclose(b.colors[k], expect)
        assert torch.equal(store.flat_index(b.image_index, b.u, b.v), b.flat)


@pytest.mark.parametrize("mode", ["uniform", "selective"])
def test_masks_are_respected(mode):
    images = _images(sizes=((23, 37), (16, 20), (30, 21)))
    masks = _masks(images)
    store = PixelStore.from_images(images, masks)
    valid = _valid_flat(images, masks)
    assert store.num_valid == len(valid) < store.num_pixels
    with RayBatchStream(store, 128, seed=1, mode=mode) as stream:
        flat = _flats(_take(stream, 40, feedback=lambda b: b.colors.mean(1)))
    assert set(flat.tolist()) <= valid
    if mode == "uniform":
        assert torch.equal(torch.sort(flat[:len(valid)]).values, torch.tensor(sorted(valid)))


def test_same_seed_same_sequence_other_seed_other_and_prefetch_depth_irrelevant():
    store = PixelStore.from_images(_images())
    def run(seed, prefetch=2):
        with RayBatchStream(store, 64, seed=seed, prefetch=prefetch) as s:
            return _flats(_take(s, 30))
    a = run(5)
    assert torch.equal(a, run(5)) and torch.equal(a, run(5, prefetch=4))
    assert not torch.equal(a, run(6))


def _target_loss(store, target):
    """Per-ray loss: high on one tile, low elsewhere, varying with the pixel's colour."""
    return lambda b: torch.where(store.tile_of(b.image_index, b.u, b.v) == target, 1.0, 0.01) * (
        0.5 + b.colors[:, 0])


def test_selective_draws_high_loss_tile_more_often_and_still_covers_all():
    store = PixelStore.from_images(_images(sizes=((48, 64), (48, 64))), tile=16)   # 24 tiles of 256 px
    target = 13
    shares = {}
    for mode in ("uniform", "selective"):
        with RayBatchStream(store, 256, seed=0, mode=mode) as stream:
            batches = _take(stream, 48, feedback=_target_loss(store, target))
        late = torch.cat([store.tile_of(b.image_index, b.u, b.v) for b in batches[10:]])
        shares[mode] = float((late == target).float().mean())
        # 48 batches: the uniform half (128 a batch) alone walks all 6144 pixels.
        assert torch.equal(_flats(batches).unique(), torch.arange(store.num_pixels))
    assert shares["uniform"] < 0.15                                    # 1/24 of the pixels
    assert shares["selective"] > 0.3


def test_selective_visits_every_tile_first():
    store = PixelStore.from_images(_images(sizes=((48, 64), (48, 64))), tile=16)
    config = SelectiveConfig(fraction=1.0)
    with RayBatchStream(store, 24, seed=2, mode="selective", selective=config) as stream:
        batches = _take(stream, 6, feedback=lambda b: torch.full_like(b.colors[:, 0], 0.05))
    tiles = torch.cat([store.tile_of(b.image_index, b.u, b.v) for b in batches])
    assert len(tiles.unique()) == store.num_tiles                      # unvisited tiles weigh most


def test_selective_is_deterministic_whatever_the_thread_timing():
    store = PixelStore.from_images(_images(sizes=((48, 64), (32, 40))), tile=16)
    feedback = _target_loss(store, 3)
    def run(pause):
        with RayBatchStream(store, 96, seed=4, mode="selective") as s:
            out = []
            for _ in range(15):
                b = next(s)
                time.sleep(pause)
                s.update_errors(b, feedback(b))
                out.append(b.flat)
            return torch.cat(out)
    assert torch.equal(run(0.0), run(0.01))


@pytest.mark.parametrize("mode", ["uniform", "selective"])
def test_state_dict_round_trip_continues_the_identical_sequence(mode):
    store = PixelStore.from_images(_images(sizes=((48, 64), (32, 40))), tile=16)
    feedback = _target_loss(store, 5)
    with RayBatchStream(store, 100, seed=7, mode=mode) as a:
        _take(a, 9, feedback)
        buf = io.BytesIO()
        torch.save(a.state_dict(), buf)
        expected = _take(a, 8, feedback)
    with RayBatchStream(store, 100, seed=7, mode=mode) as fresh:
        reference = _take(fresh, 17, feedback)[9:]
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    n_uniform = 100 if mode == "uniform" else 50
    assert state["batches"] == 9 and state["epoch"] * store.num_valid + state["position"] == 9 * n_uniform
    with RayBatchStream(store, 100, seed=7, mode=mode) as b:
        next(b)                                                        # a running stream can be rewound
        b.load_state_dict(state)
        resumed = _take(b, 8, feedback)
    for x, y, z in zip(expected, resumed, reference, strict=True):
        assert torch.equal(x.flat, y.flat) and torch.equal(x.flat, z.flat)
        assert torch.equal(x.colors, y.colors)
    with pytest.raises(ValueError, match="seed"):
        RayBatchStream(store, 100, seed=8, mode=mode).load_state_dict(state)


def test_update_errors_checks_length_and_is_a_noop_in_uniform_mode():
    store = PixelStore.from_images(_images())
    with RayBatchStream(store, 32, mode="selective") as s:
        b = next(s)
        with pytest.raises(ValueError, match="entries"):
            s.update_errors(b, torch.ones(31))
    with RayBatchStream(store, 32) as s:
        b = next(s)
        s.update_errors(b, torch.ones(32))
        assert s.tile_loss is None


def test_patches_match_image_crops():
    images = _images(sizes=((23, 37), (16, 20), (30, 21)))
    masks = _masks(images)
    store = PixelStore.from_images(images, masks)
    size = 8
    with PatchStream(store, size, patches_per_batch=16, seed=1) as stream:
        batches = _take(stream, 10)
        state = stream.state_dict()
        after = next(stream)
    with PatchStream(store, size, patches_per_batch=16, seed=1) as resumed:
        resumed.load_state_dict(state)
        assert torch.equal(next(resumed).colors, after.colors)
    for b in batches:
        assert b.colors.shape == (16, size, size, 3)
        for k in range(16):
            img = images[int(b.image_index[k])]
            u0, v0 = int(b.u0[k]), int(b.v0[k])
            assert 0 <= u0 <= img.shape[1] - size and 0 <= v0 <= img.shape[0] - size
            crop = torch.from_numpy(img[v0:v0 + size, u0:u0 + size]).float() / 255
            assert torch.equal(b.colors[k], crop)
    with pytest.raises(ValueError, match="smaller"):
        PatchStream(store, 17, 4)


def test_threads_stop_on_close_exit_and_garbage_collection():
    store = PixelStore.from_images(_images())
    before = len(_our_threads())
    s = RayBatchStream(store, 16)
    assert s.thread is None                                            # starts lazily
    next(s)
    thread = s.thread
    assert thread.is_alive()
    s.close()
    assert not thread.is_alive() and s.thread is None
    with PatchStream(store, 4, 8) as p:
        next(p)
        thread = p.thread
    assert not thread.is_alive()
    s = RayBatchStream(store, 16, mode="selective")
    next(s)
    thread = s.thread
    del s
    gc.collect()
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert len(_our_threads()) == before


def test_capture_masks_errors_name_the_image():
    images = _images()
    intr = [Intrinsics(30.0, 30.0, img.shape[1] / 2, img.shape[0] / 2, img.shape[1], img.shape[0])
            for img in images]
    with pytest.raises(UserInputError) as err:       # the capture itself refuses a mask of the wrong size
        Capture(images, intr, np.stack([np.eye(4)] * 2), ["a.jpg", "b.jpg"], masks=[np.ones((5, 5), bool), None])
    assert err.value.code == "mask_size_mismatch" and "a.jpg" in err.value.message
    capture = Capture(images, intr, np.stack([np.eye(4)] * 2), ["a.jpg", "b.jpg"])
    capture.masks = [np.zeros(images[0].shape[:2], bool), np.zeros(images[1].shape[:2], bool)]
    with pytest.raises(UserInputError) as err:
        PixelStore.from_capture(capture)
    assert err.value.code == "no_valid_pixels"
    capture.masks = [None, None]
    assert PixelStore.from_capture(capture).valid is None


def test_real_capture_colours(fox_dir):
    paths = sorted((fox_dir / "images").glob("*.jpg"))[:2]
    images = [np.asarray(Image.open(p).convert("RGB").reduce(4)) for p in paths]
    store = PixelStore.from_images(images, names=[p.name for p in paths])
    with RayBatchStream(store, 4096, seed=0) as s:
        b = next(s)
    got = (b.colors * 255).round().to(torch.uint8).numpy()
    expect = np.stack([images[i][v, u] for i, u, v in zip(b.image_index.tolist(), b.u.tolist(),
                                                             b.v.tolist(), strict=True)])
    assert np.array_equal(got, expect)


def _divide_like_cuda(monkeypatch) -> None:
    """Make float tensor / Python number compute as CUDA does: times the float32 reciprocal of the number
    (aten's div_true_kernel_cuda with a CPU scalar), which is not always the correctly rounded quotient."""
    real = {name: getattr(torch.Tensor, name) for name in ("div", "div_", "__truediv__")}

    def patched(name):
        def div(self, other, *args, **kwargs):
            if isinstance(other, int | float) and self.dtype == torch.float32 and not args and not kwargs:
                inv = float(np.float32(1.0) / np.float32(other))
                return self.mul_(inv) if name == "div_" else self.mul(inv)
            return real[name](self, other, *args, **kwargs)
        return div

    for name in real:
        monkeypatch.setattr(torch.Tensor, name, patched(name))


def test_colours_are_the_host_quotient_whatever_the_device_arithmetic(monkeypatch):
    """uint8 -> float is a table lookup: bit for bit value / 255 as the CPU divides, even where the device
    divides differently. Under CUDA's division, emulated here on the CPU, `colors.float().div_(255)` gave
    other bits for 126 of the 256 values, and the CUDA stream's colours differed from the CPU stream's."""
    values = torch.arange(256).to(torch.uint8)
    exact = torch.from_numpy(np.arange(256, dtype=np.float32) / np.float32(255))
    assert torch.equal(unit_colors(values), exact)
    assert torch.equal(unit_colors(values.view(16, 16)), exact.view(16, 16))
    _divide_like_cuda(monkeypatch)
    cuda_like = values.float().div_(255.0)
    assert int((cuda_like != exact).sum()) == 126                      # what the device arithmetic gives
    assert torch.equal(unit_colors(values), exact)
    images = _images(sizes=((48, 64), (32, 40)), alpha=(1,))
    store = PixelStore.from_images(images, _masks(images))
    host = store.colors.numpy().astype(np.float32) / np.float32(255)   # numpy: the correctly rounded quotient
    with RayBatchStream(store, 200, seed=1, mode="selective") as rays:
        for b in _take(rays, 6, feedback=_target_loss(store, 2)):
            assert torch.equal(b.colors, torch.from_numpy(host[b.flat.numpy()]))
    with PatchStream(store, 8, 32, seed=1) as patches:
        b = next(patches)
        flat = store.flat_index(b.image_index[:, None, None], b.u0[:, None, None] + torch.arange(8),
                                b.v0[:, None, None] + torch.arange(8)[:, None])
        assert torch.equal(b.colors, torch.from_numpy(host[flat.numpy()]))
    with pytest.raises(ValueError, match="uint8"):
        unit_colors(values.float())


@pytest.mark.gpu
def test_cuda_path_matches_cpu():
    images = _images(sizes=((48, 64), (32, 40)), alpha=(1,))
    masks = _masks(images)
    cpu_store = PixelStore.from_images(images, masks, device="cpu")
    gpu_store = PixelStore.from_images(images, masks, device="cuda")
    assert gpu_store.pinned and not cpu_store.pinned
    feedback = _target_loss(cpu_store, 2)
    big = torch.randn(2048, 2048, device="cuda")
    with RayBatchStream(cpu_store, 200, "cpu", seed=1, mode="selective") as c, \
            RayBatchStream(gpu_store, 200, "cuda", seed=1, mode="selective") as g:
        for _ in range(12):
            bc, bg = next(c), next(g)
            big = big @ big / 2048                                     # compute on the main stream
            assert bg.colors.is_cuda and bg.flat.is_cuda
            for name in ("flat", "image_index", "u", "v", "colors"):
                assert torch.equal(getattr(bc, name), getattr(bg, name).cpu()), name
            c.update_errors(bc, feedback(bc))
            g.update_errors(bg, feedback(bg).cuda())
        torch.testing.assert_close(g.state_dict()["tile_loss"], c.state_dict()["tile_loss"], equal_nan=True)
    with PatchStream(cpu_store, 8, 32, "cpu") as c, PatchStream(gpu_store, 8, 32, "cuda") as g:
        for _ in range(4):
            assert torch.equal(next(c).colors, next(g).colors.cpu())
