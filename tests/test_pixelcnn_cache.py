"""The gated PixelCNN's sampling cache (Ramachandran et al. 2017): step-by-step logits equal the full forward's at
every sub-pixel, the sampler draws the same images with and without it, and it is faster."""
import time

import pytest
import torch

from genlab.config import load_config
from genlab.methods import get_method
from genlab.methods.categorical import from_levels
from genlab.nn.pixelcnn import GatedPixelCNN

from conftest import randomize


def as_sequence(logits):
    """(N, C, L, H, W) -> (N, D, L) in the autoregressive order (i * W + j) * C + c."""
    n, c, L, h, w = logits.shape
    return logits.permute(0, 3, 4, 1, 2).reshape(n, h * w * c, L)


def stepped(m, v, y):
    """Logits (N, D, L) of every sub-pixel from the cache, fed the true previous levels of v (N, C, H, W)."""
    seq = v.permute(0, 2, 3, 1).reshape(len(v), -1)
    cache = m.new_cache(len(v), "cpu")
    out = torch.stack([m.step(cache, seq[:, p - 1] if p else None, y) for p in range(seq.shape[1])], dim=1)
    with pytest.raises(IndexError):
        m.step(cache, seq[:, -1], y)
    return out


@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("num_classes,y", [(0, None), (3, [1, 2]), (3, None)])
def test_cached_logits_equal_the_full_forward(dtype, atol, c, k, num_classes, y):
    """At every sub-pixel, for C = 1 and 3, kernels 3 and 5, without classes, with labels and with the null class
    (y=None); 7x7 with 3 layers: the receptive field crosses the image and its padding on every side."""
    size, levels = 7, 17
    m = randomize(GatedPixelCNN(c, size, levels, width=16, layers=3, kernel_size=k, num_classes=num_classes))
    m = m.to(dtype)
    y = None if y is None else torch.tensor(y)
    v = torch.randint(0, levels, (2, c, size, size), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = as_sequence(m(v.to(dtype) / (levels - 1) * 2 - 1, y))
    assert full.std() > 0.5                                     # logits far from uniform
    got = stepped(m, v, y)
    assert got.dtype == dtype
    assert torch.allclose(got, full, rtol=0, atol=atol), (got - full).abs().max()


def test_the_trunk_runs_once_per_pixel_and_the_vertical_stack_once_per_row(monkeypatch):
    c, size = 3, 5
    m = randomize(GatedPixelCNN(c, size, 5, width=8, layers=2, kernel_size=3))
    calls = {"vertical_row": 0, "horizontal_pixel": 0}
    for name in calls:
        def counted(*a, _f=getattr(m, name), _name=name):
            calls[_name] += 1
            return _f(*a)
        monkeypatch.setattr(m, name, counted)
    v = torch.randint(0, 5, (1, c, size, size))
    stepped(m, v, None)
    assert calls == {"vertical_row": size, "horizontal_pixel": size * size}


def _ar(c, size=6, levels=9, class_cond=False, k=3, width=16, seed=0):
    over = ["method=autoregressive", "ar.backbone=pixelcnn", f"ar.width={width}", "ar.layers=3", f"ar.kernel_size={k}",
            f"model.class_cond={str(class_cond).lower()}", "train.max_steps=1"]
    method = get_method(load_config(None, over))
    return method, randomize(method.build_model((c, size, size), 4 if class_cond else 0, levels=levels), seed=seed)


@pytest.mark.parametrize("c,class_cond,k,extra", [
    (1, False, 3, {}),
    (3, False, 5, {}),
    (1, True, 3, {}),
    (3, True, 3, {"guidance": 2.5}),                # a guided pair: the labels' cache and the null class's
    (1, False, 5, {"temperature": 0.7, "top_k": 3}),
    (3, False, 3, {"known": True}),                 # inpainting: kept sub-pixels enter the cache as drawn ones
])
def test_samples_identical_with_and_without_cache(c, class_cond, k, extra):
    method, model = _ar(c, class_cond=class_cond, k=k)
    n = 4
    y = torch.tensor([0, 1, 2, 3]) if class_cond else None
    if extra.pop("known", False):
        g = torch.Generator().manual_seed(5)
        extra["known"] = from_levels(torch.randint(0, 9, (n, c, 6, 6), generator=g), 9)
        extra["known_mask"] = torch.rand(n, c, 6, 6, generator=g) < 0.5
    a, nfe_a = method.sample(model, n, y=y, seed=7, **extra)
    b, nfe_b = method.sample(model, n, y=y, seed=7, use_cache=False, **extra)
    assert torch.equal(a, b) and nfe_a == nfe_b
    assert len(torch.unique(a.view(n, -1), dim=0)) == n          # distinct images: the check means something
    if "known" in extra:
        assert torch.equal(a[extra["known_mask"]], extra["known"][extra["known_mask"]])


def test_cache_is_faster_on_16x16():
    """A loose but real ratio (one thread, time.perf_counter, 16x16, width 32, 3 layers, kernel 5)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        method, model = _ar(1, size=16, levels=256, k=5, width=32)
        method.sample(model, 2, seed=0)                                                  # warm-up
        seconds = {}
        for use_cache in (True, False):
            t0 = time.perf_counter()
            method.sample(model, 2, seed=0, use_cache=use_cache)
            seconds[use_cache] = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
    assert seconds[False] > 3 * seconds[True], seconds
