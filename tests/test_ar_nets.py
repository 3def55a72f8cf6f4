"""The raster-autoregressive backbones: causality in the order (i * W + j) * C + c (gradients for the PixelCNN,
perturbations for the transformer, whose input is discrete), no blind spot, KV-cache = full forward, classes."""
import pytest
import torch

from genlab.nn.pixelcnn import GatedPixelCNN
from genlab.nn.transformer import PixelTransformer

from conftest import randomize


def make(backbone, c, size, levels, num_classes=0, layers=2, **kw):
    if backbone == "pixelcnn":
        return GatedPixelCNN(in_channels=c, image_size=size, levels=levels, width=16, layers=layers,
                             kernel_size=kw.get("kernel_size", 3), num_classes=num_classes)
    return PixelTransformer(in_channels=c, image_size=size, levels=levels, width=16, layers=layers, heads=2,
                            num_classes=num_classes)


def order(c, size):
    """Position of every sub-pixel (C, H, W) in the autoregressive order."""
    pix = torch.arange(size * size).view(1, size, size)
    return pix * c + torch.arange(c).view(c, 1, 1)


def model_space(v, levels):
    return v.double() / (levels - 1) * 2 - 1


def as_sequence(logits):
    """(N, C, L, H, W) -> (N, D, L) in the autoregressive order."""
    n, c, L, h, w = logits.shape
    return logits.permute(0, 3, 4, 1, 2).reshape(n, h * w * c, L)


@pytest.mark.parametrize("backbone", ["pixelcnn", "transformer"])
@pytest.mark.parametrize("c,levels", [(1, 4), (3, 17)])
def test_shapes_and_attributes(backbone, c, levels):
    m = make(backbone, c, 6, levels, num_classes=2)
    out = m(torch.rand(2, c, 6, 6) * 2 - 1, torch.tensor([0, 1]))
    assert out.shape == (2, c, levels, 6, 6)
    assert (m.in_channels, m.image_size, m.levels, m.num_classes) == (c, 6, levels, 2)
    if backbone == "transformer":
        assert m.seq_len == c * 36


@pytest.mark.parametrize("c", [1, 3])
def test_pixelcnn_causal_without_blind_spot(c):
    """d logits(c, i, j) / dx is exactly zero at and after (c, i, j) and nonzero at every earlier sub-pixel
    (5x5, kernel 3, 5 layers: the receptive field covers the whole past)."""
    size = 5
    m = randomize(make("pixelcnn", c, size, 5, num_classes=2, layers=5).double())
    x = (torch.rand(1, c, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2 - 1)
    x.requires_grad_()
    out = m(x, torch.tensor([1]))
    pos = order(c, size)
    for ch in range(c):
        for i in range(size):
            for j in range(size):
                (g,) = torch.autograd.grad(out[0, ch, :, i, j].sum(), x, retain_graph=True)
                earlier = pos < pos[ch, i, j]
                assert (g[0][~earlier] == 0).all(), (ch, i, j)
                assert (g[0][earlier] != 0).all(), (ch, i, j)


@pytest.mark.parametrize("c", [1, 3])
def test_transformer_causal_by_perturbation(c):
    """Changing the level of sub-pixel q leaves the logits at positions <= q unchanged and changes those at q + 1."""
    size, levels = 4, 5
    m = randomize(make("transformer", c, size, levels, num_classes=2).double())
    d = c * size * size
    v = torch.randint(0, levels, (1, c, size, size), generator=torch.Generator().manual_seed(2))
    batch = v.repeat(d + 1, 1, 1, 1)  # row 0: v; row q + 1: v with sub-pixel q changed
    pos = order(c, size)
    for q in range(d):
        ch, i, j = [int(t) for t in (pos == q).nonzero()[0]]
        batch[q + 1, ch, i, j] = (v[0, ch, i, j] + 1) % levels
    with torch.no_grad():
        out = as_sequence(m(model_space(batch, levels), torch.full((d + 1,), 1)))
    for q in range(d):
        assert torch.allclose(out[q + 1, :q + 1], out[0, :q + 1], rtol=0, atol=1e-12), q
        if q + 1 < d:
            assert (out[q + 1, q + 1] - out[0, q + 1]).abs().max() > 1e-6, q


@pytest.mark.parametrize("num_classes,y", [(0, None), (3, None), (3, [1, 2])])
def test_transformer_cache_matches_forward(num_classes, y):
    """Step-by-step decoding with the KV cache, fed the true previous levels, gives the full forward's logits."""
    c, size, levels = 3, 4, 17
    m = randomize(make("transformer", c, size, levels, num_classes=num_classes))
    y = None if y is None else torch.tensor(y)
    v = torch.randint(0, levels, (2, c, size, size), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = as_sequence(m(model_space(v, levels).float(), y))
    seq = v.permute(0, 2, 3, 1).reshape(2, -1)
    cache = m.new_cache(2, "cpu")
    assert cache.k[0].shape == (2, 2, m.seq_len, 8)
    for p in range(m.seq_len):
        logits = m.step(cache, seq[:, p - 1] if p else None, y)
        assert logits.shape == (2, levels)
        assert torch.allclose(logits, full[:, p], rtol=0, atol=1e-5), p
    assert cache.pos == m.seq_len
    with pytest.raises(IndexError):
        m.step(cache, seq[:, -1], y)


@pytest.mark.parametrize("backbone", ["pixelcnn", "transformer"])
def test_class_label_and_null_class(backbone):
    m = randomize(make(backbone, 3, 4, 5, num_classes=3).double())
    x = torch.rand(2, 3, 4, 4, dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        assert torch.equal(m(x), m(x, torch.full((2,), 3)))  # y=None is the null class (index num_classes)
        assert not torch.allclose(m(x, torch.tensor([0, 0])), m(x, torch.tensor([1, 1])))


@pytest.mark.parametrize("backbone", ["pixelcnn", "transformer"])
def test_gradients_reach_every_parameter(backbone):
    m = randomize(make(backbone, 3, 4, 5, num_classes=2)).train()
    m(torch.rand(2, 3, 4, 4) * 2 - 1, torch.tensor([0, 2])).square().sum().backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing
