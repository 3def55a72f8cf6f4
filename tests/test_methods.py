"""The discrete methods (raster AR, any-order AR, one-shot) checked against brute force on tiny cases."""
import itertools
import math

import pytest
import torch

from genlab.config import load_config
from genlab.methods import get_method
from genlab.methods.any_order import raster, unraster
from genlab.methods.categorical import from_levels, sample_from
from genlab.rng import StepRNG


def _all_binary(d=4):
    """All 2^d binary images of shape (1, 2, 2) in model space."""
    v = torch.tensor(list(itertools.product([0, 1], repeat=d)))           # raster order = (0,0),(0,1),(1,0),(1,1)
    return from_levels(v.view(-1, 1, 2, 2), 2)


def _randomize(model, seed=0, scale=0.5):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
    return model.double().eval()


def _ar(backbone, shape=(1, 2, 2), levels=2, **over):
    ov = ["method=autoregressive", f"ar.backbone={backbone}", "ar.width=8", "ar.layers=3", "ar.kernel_size=3",
          "ar.heads=2", "train.max_steps=1"] + [f"{k}={v}" for k, v in over.items()]
    m = get_method(load_config(None, ov))
    return m, _randomize(m.build_model(shape, 0, levels=levels))


@pytest.mark.parametrize("backbone", ["pixelcnn", "transformer"])
def test_ar_2x2_binary_probabilities_sum_to_one_and_match_brute_force(backbone):
    method, model = _ar(backbone)
    x = _all_binary().double()
    bpd = method.log_likelihood(model, x)
    p = torch.exp(-bpd.double() * 4 * math.log(2))
    assert abs(float(p.sum()) - 1.0) < 1e-9
    assert float(p.max()) > 1.5 / 16          # the randomized model is far from uniform: the test means something
    # brute force: p(x) = prod_i p(x_i | x_<i), each conditional from a network run on the prefix alone
    # (every later pixel zeroed), so the one-pass likelihood must not use any pixel at or after i
    brute = torch.ones(16, dtype=torch.float64)
    lv = torch.round((x + 1) / 2).long()
    for i in range(4):
        r, c = divmod(i, 2)
        prefix = x.clone().view(16, 4)
        prefix[:, i:] = -1.0
        probs = torch.softmax(model(prefix.view(16, 1, 2, 2)).double(), dim=2)[:, 0, :, r, c]
        brute *= probs.gather(1, lv.view(16, 4)[:, i:i + 1]).squeeze(1)
    torch.testing.assert_close(p, brute, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("backbone", ["pixelcnn", "transformer"])
def test_ar_sampling_frequencies_match_the_model(backbone):
    method, model = _ar(backbone)
    model = model.float()
    x = _all_binary()
    p = torch.exp(-method.log_likelihood(model, x).double() * 4 * math.log(2))
    s, nfe = method.sample(model, 3000, seed=0, batch_size=3000)
    assert nfe == 4
    idx = (torch.round((s.view(-1, 4) + 1) / 2).long() * torch.tensor([8, 4, 2, 1])).sum(1)
    freq = torch.bincount(idx, minlength=16).double() / len(s)
    se = (p * (1 - p) / len(s)).sqrt()
    assert bool(((freq - p).abs() <= 5 * se + 1e-3).all()), (freq, p)


def test_transformer_samples_identical_with_and_without_cache():
    method, model = _ar("transformer", shape=(1, 3, 3), levels=5)
    model = model.float()
    a, _ = method.sample(model, 6, seed=3)
    b, _ = method.sample(model, 6, seed=3, use_cache=False)
    assert torch.equal(a, b)


def test_top_k_1_is_greedy_and_temperature_sharpens():
    method, model = _ar("pixelcnn", shape=(1, 3, 3), levels=5)
    model = model.float()
    a, _ = method.sample(model, 5, seed=0, top_k=1)
    assert all(torch.equal(a[0], a[i]) for i in range(5))   # greedy decoding ignores the noise
    _, model2 = _ar("pixelcnn")
    model2 = model2.float()
    hot, _ = method.sample(model2, 2000, seed=0, temperature=2.0, batch_size=2000)
    cold, _ = method.sample(model2, 2000, seed=0, temperature=0.3, batch_size=2000)
    distinct = lambda s: len(torch.unique(s.view(len(s), -1), dim=0))  # noqa: E731
    assert distinct(cold) < distinct(hot)
    with pytest.raises(ValueError, match="temperature"):
        method.sample(model2, 2, temperature=0.0)


def test_sample_from_inverse_cdf():
    logits = torch.log(torch.tensor([[0.1, 0.2, 0.7]])).expand(5, 3)
    u = torch.tensor([0.05, 0.15, 0.29, 0.31, 0.99])
    assert sample_from(logits, u).tolist() == [0, 1, 1, 2, 2]


def _any_order(shape=(1, 2, 2), levels=2):
    ov = ["method=any_order", "model.width=8", "model.channel_mults=[1]", "model.num_res_blocks=1",
          "model.attn_resolutions=[]", "model.num_heads=1", "train.max_steps=1"]
    m = get_method(load_config(None, ov))
    net = m.build_model(shape, 0, levels=levels)
    with torch.no_grad():                      # the zero-initialized output layer would make every answer uniform
        torch.nn.init.normal_(net.unet.conv_out.weight, std=0.5)
    return m, _randomize(net, scale=0.2)


def test_any_order_fixed_order_probabilities_sum_to_one():
    method, model = _any_order()
    x = _all_binary().double()
    for order in ([0, 1, 2, 3], [3, 1, 0, 2]):
        p = torch.exp(-method.order_log_likelihood(model, x, order).double() * 4 * math.log(2))
        assert abs(float(p.sum()) - 1.0) < 1e-9


def test_any_order_estimator_is_unbiased_for_the_order_average():
    """ARDM's one-draw estimate averaged over every (t, order) equals the mean over all 24 orders of the exact
    per-order bits/dim."""
    method, model = _any_order()
    x = _all_binary().double()[[0, 5, 9, 15]]
    orders = list(itertools.permutations(range(4)))
    exact = torch.stack([method.order_log_likelihood(model, x, o) for o in orders]).double().mean(0)
    est = torch.zeros(len(x), dtype=torch.float64)
    for o in orders:
        keys = torch.empty(4, dtype=torch.float64)
        keys[list(o)] = torch.arange(4, dtype=torch.float64)    # sorting the keys gives the order o
        for t in range(4):
            est += method._estimate(model, x, None, torch.full((len(x),), t), keys.expand(len(x), 4)).double()
    est /= len(orders) * 4
    torch.testing.assert_close(est, exact, rtol=1e-9, atol=1e-12)


def test_any_order_k1_raster_sampling_matches_the_raster_likelihood():
    method, model = _any_order()
    model = model.float()
    p = torch.exp(-method.order_log_likelihood(model, _all_binary(), [0, 1, 2, 3]).double() * 4 * math.log(2))
    s, nfe = method.sample(model, 3000, seed=0, batch_size=3000, k=1, order="raster")
    assert nfe == 4
    idx = (torch.round((s.view(-1, 4) + 1) / 2).long() * torch.tensor([8, 4, 2, 1])).sum(1)
    freq = torch.bincount(idx, minlength=16).double() / len(s)
    se = (p * (1 - p) / len(s)).sqrt()
    assert bool(((freq - p).abs() <= 5 * se + 1e-3).all()), (freq, p)


@pytest.mark.parametrize("k,steps", [(1, 36), (4, 9), (5, 8), (16, 3), (36, 1)])
def test_any_order_k_pixels_per_step_and_inpainting(k, steps):
    method, model = _any_order(shape=(1, 6, 6), levels=5)
    model = model.float()
    x, nfe = method.sample(model, 3, seed=0, k=k)
    assert nfe == steps and x.shape == (3, 1, 6, 6)
    known = from_levels(torch.randint(0, 5, (3, 1, 6, 6)), 5)
    mask = torch.zeros(3, 1, 6, 6, dtype=torch.bool)
    mask[:, :, :3] = True                                         # top half known: 18 of 36 pixels
    y, nfe = method.sample(model, 3, seed=0, k=k, known=known, known_mask=mask)
    assert torch.equal(y[mask], known[mask])
    assert nfe == math.ceil(18 / k)


def test_any_order_bad_k_and_bad_orders():
    method, model = _any_order()
    for k in (0, 5, 2.5):
        with pytest.raises(ValueError, match="k .*1..4"):
            method.sample(model, 2, k=k)
    with pytest.raises(ValueError, match="permutation"):
        method.sample(model, 2, order=[0, 1, 2])                 # does not cover the image
    with pytest.raises(ValueError, match="permutation"):
        method.sample(model, 2, order=[0, 1, 1, 2])
    with pytest.raises(ValueError, match="random, raster"):
        method.sample(model, 2, order="spiral")
    with pytest.raises(ValueError, match="does not apply"):
        method.sample(model, 2, sampler="ddim")


def test_raster_helpers_round_trip():
    t = torch.arange(2 * 3 * 4 * 4).view(2, 3, 4, 4)
    r = raster(t)
    assert r[0, :3].tolist() == [0, 16, 32]                        # channels of pixel (0, 0) first
    assert torch.equal(unraster(r, 3, 4), t)


def test_oneshot_is_the_product_of_marginals():
    method = get_method(load_config(None, ["method=oneshot", "train.max_steps=1"]))
    model = method.build_model((1, 2, 2), 0, levels=2)
    marg = torch.tensor([0.2, 0.9, 0.5, 0.7])                      # p(pixel = 1)
    with torch.no_grad():
        model.logits[0, 0, 1] = torch.logit(marg).view(2, 2)
    x = _all_binary()
    p = torch.exp(-method.log_likelihood(model, x).double() * 4 * math.log(2))
    v = torch.round((x.view(16, 4) + 1) / 2).double()
    brute = (v * marg + (1 - v) * (1 - marg)).prod(1)
    torch.testing.assert_close(p, brute, rtol=1e-5, atol=1e-7)
    mean = method.mean_image(model)
    torch.testing.assert_close(mean.view(4), marg * 2 - 1, rtol=1e-5, atol=1e-6)
    s, nfe = method.sample(model, 4000, seed=0)
    assert nfe == 1
    torch.testing.assert_close(((s.view(-1, 4) + 1) / 2).mean(0), marg, atol=0.03, rtol=0)


def test_oneshot_training_learns_the_marginals():
    from genlab.api import load_data

    cfg = load_config("digits_oneshot", ["train.max_steps=1"])
    method = get_method(cfg)
    ds = load_data(cfg, "train")
    model = method.build_model(ds.shape, 0, levels=ds.levels)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    b = ds.batch(torch.arange(len(ds)))
    for step in range(300):
        opt.zero_grad()
        loss = method.loss(model, b, StepRNG(step, len(ds)))
        loss.backward()
        opt.step()
    mean = method.mean_image(model)[0]
    torch.testing.assert_close(mean, b["x"].mean(0), atol=0.03, rtol=0)   # the blurry average


@pytest.mark.parametrize("backbone", ["pixelcnn", "transformer"])
def test_raster_ar_keeps_known_pixels(backbone):
    method, model = _ar(backbone, shape=(1, 4, 4), levels=5)
    model = model.float()
    known = from_levels(torch.randint(0, 5, (3, 1, 4, 4)), 5)
    mask = torch.rand(3, 1, 4, 4) < 0.5
    x, _ = method.sample(model, 3, seed=1, known=known, known_mask=mask)
    assert torch.equal(x[mask], known[mask])
    with pytest.raises(ValueError, match="both known"):
        method.sample(model, 3, known=known)


@pytest.mark.parametrize("backbone", ["pixelcnn", "transformer"])
def test_ar_with_channels_sums_to_one_and_samples_match(backbone):
    """Two channels per pixel (2x2x2, all 256 binary images): the within-pixel channel order is part of the
    chain rule too."""
    method, model = _ar(backbone, shape=(2, 2, 2), levels=2)
    v = torch.tensor(list(itertools.product([0, 1], repeat=8)))          # raster index: pixel, then channel
    x = from_levels(unraster(v, 2, 2), 2)
    p = torch.exp(-method.log_likelihood(model, x.double()).double() * 8 * math.log(2))
    assert abs(float(p.sum()) - 1.0) < 1e-9 and float(p.max()) > 1.5 / 256
    model = model.float()
    s, nfe = method.sample(model, 4000, seed=0, batch_size=4000)
    assert nfe == 8
    code = (raster(torch.round((s + 1) / 2).long()) * (2 ** torch.arange(7, -1, -1))).sum(1)
    freq = torch.bincount(code, minlength=256).double() / len(s)
    se = (p * (1 - p) / len(s)).sqrt()
    assert bool(((freq - p).abs() <= 5 * se + 2e-3).all()), (freq - p).abs().max()


def test_any_order_with_channels_sums_to_one():
    method, model = _any_order(shape=(2, 2, 2), levels=2)      # 8 sub-pixels, 256 images
    v = torch.tensor(list(itertools.product([0, 1], repeat=8)))
    x = from_levels(unraster(v, 2, 2), 2).double()
    for order in (list(range(8)), [5, 0, 7, 2, 1, 6, 3, 4]):
        p = torch.exp(-method.order_log_likelihood(model, x, order).double() * 8 * math.log(2))
        assert abs(float(p.sum()) - 1.0) < 1e-9


@pytest.mark.parametrize("which", ["pixelcnn", "transformer", "any_order", "oneshot"])
def test_a_sample_does_not_depend_on_its_batch(which):
    if which == "any_order":
        method, model = _any_order(shape=(1, 3, 3), levels=5)
        opts = dict(k=2)
    elif which == "oneshot":
        method = get_method(load_config(None, ["method=oneshot", "train.max_steps=1"]))
        model, opts = _randomize(method.build_model((1, 3, 3), 0, levels=5)), {}
    else:
        method, model = _ar(which, shape=(1, 3, 3), levels=5)
        opts = {}
    model = model.float()
    x, _ = method.sample(model, 5, seed=10, batch_size=5, **opts)
    y, _ = method.sample(model, 5, seed=10, batch_size=2, **opts)
    one, _ = method.sample(model, 1, seed=13, **opts)
    assert torch.equal(x, y) and torch.equal(x[3:4], one)
