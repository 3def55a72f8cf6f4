"""Masked (absorbing-state) discrete diffusion: the bound checked exactly on a tiny model (against the enumerated
likelihood and against any-order AR's estimator), the Monte Carlo likelihood, both samplers, inpainting and the
config errors."""
import itertools
import math

import pytest
import torch

from genlab import api
from genlab.config import ConfigError, load_config
from genlab.methods import get_method
from genlab.methods.any_order import raster, unraster
from genlab.methods.categorical import LN2, from_levels, to_levels
from genlab.methods.masked_diffusion import masked_nats, maskgit_schedule, nelbo_bits
from genlab.rng import StepRNG

D, L = 4, 3           # a 1 x 2 x 2 image of 3 levels


class TableNet(torch.nn.Module):
    """A fake AnyOrderNet: logits (N, C, L, H, W) looked up in a random table keyed on the masked state (each
    sub-pixel masked or its level), so every conditional depends on the revealed values and on nothing else."""

    def __init__(self, seed=0):
        super().__init__()
        self.in_channels, self.image_size, self.levels, self.num_classes, self.dims = 1, 2, L, 0, D
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("table", torch.randn((L + 1) ** D, D, L, generator=g, dtype=torch.float64) * 1.5)

    def forward(self, x, mask, t, y=None):
        rev = raster(mask.bool())
        assert torch.equal(t.long().cpu(), rev.sum(1).cpu())         # the time input is the revealed count
        code = torch.where(rev, raster(to_levels(x, L)) + 1, 0)
        key = (code * (L + 1) ** torch.arange(D)).sum(1)
        return unraster(self.table[key], 1, 2).permute(0, 1, 4, 2, 3)   # (N, D, L) -> (N, 1, L, 2, 2)


def _method(*over):
    return get_method(load_config(None, ["method=masked_diffusion", "train.max_steps=1", *over]))


def _all_images():
    v = torch.tensor(list(itertools.product(range(L), repeat=D)))
    return from_levels(unraster(v, 1, 2), L).double()


def exact_nll_bits(net, x):
    """-log2 p(x) / D of the order mixture p(x) = (1/D!) sum_sigma prod_i p(x_sigma(i) | x_sigma(<i))."""
    lv = raster(to_levels(x, L))
    per_order = []
    for order in itertools.permutations(range(D)):
        rev = torch.zeros(len(x), D, dtype=torch.bool)
        lp = torch.zeros(len(x), dtype=torch.float64)
        for i, p in enumerate(order):
            logits = net(x, unraster(rev, 1, 2), torch.full((len(x),), i), None)
            logp = torch.log_softmax(logits, dim=2).permute(0, 3, 4, 1, 2).reshape(len(x), D, L)
            lp += logp[:, p].gather(1, lv[:, p:p + 1]).squeeze(1)
            rev[:, p] = True
        per_order.append(lp)
    logp = torch.logsumexp(torch.stack(per_order), 0) - math.log(math.factorial(D))
    return -logp / (D * LN2)


def exact_bound_bits(net, x):
    """The bound's expectation, schedule-free: sum_{m=1..D} (1/m) E_{|masked|=m}[masked cross-entropies]."""
    total = torch.zeros(len(x), dtype=torch.float64)
    for m in range(1, D + 1):
        sets = list(itertools.combinations(range(D), m))
        for s in sets:
            masked = torch.zeros(len(x), D, dtype=torch.bool)
            masked[:, list(s)] = True
            total += masked_nats(net, x, None, unraster(masked, 1, 2)) / (m * len(sets))
    return total / (D * LN2)


@pytest.fixture(scope="module")
def tiny_case():
    net = TableNet()
    x = _all_images()
    return net, x, exact_nll_bits(net, x), exact_bound_bits(net, x)


def test_tiny_exact_likelihood_and_bound(tiny_case):
    net, x, nll, bound = tiny_case
    p = torch.exp(-nll * D * LN2)
    assert abs(float(p.sum()) - 1.0) < 1e-9                          # the order mixture is a distribution
    assert bool((bound >= nll - 1e-12).all())                        # (a) an upper bound on every image
    assert float((bound - nll).mean()) > 1e-3                        # and not trivially equal
    # (b) the same expectation as any-order AR's estimator (ARDM), averaged over every (t, order)
    ao = get_method(load_config(None, ["method=any_order", "train.max_steps=1"]))
    est = torch.zeros(len(x), dtype=torch.float64)
    orders = list(itertools.permutations(range(D)))
    for o in orders:
        keys = torch.empty(D, dtype=torch.float64)
        keys[list(o)] = torch.arange(D, dtype=torch.float64)
        for t in range(D):
            est += ao._estimate(net, x, None, torch.full((len(x),), t), keys.expand(len(x), D)).double()
    torch.testing.assert_close(est / (len(orders) * D), bound, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_monte_carlo_likelihood_matches_the_exact_bound(tiny_case, schedule):
    """(c) the one-draw estimate is unbiased for the bound whatever the schedule; draws average them."""
    net, x, _, bound = tiny_case
    method = _method(f"masked.schedule={schedule}")
    pick = [0, 17, 40, 80]
    reps = 20000
    one = method.log_likelihood(net, x[pick].repeat_interleave(reps, 0), draws=1, seed=1).double().view(4, reps)
    se = one.std(1) / math.sqrt(reps)
    assert bool(((one.mean(1) - bound[pick]).abs() <= 4 * se).all()), (one.mean(1), bound[pick], se)
    avg = method.log_likelihood(net, x[pick].repeat_interleave(40, 0), draws=50, seed=2).double()
    assert avg.shape == (160,)                                        # each row the mean of its own 50 draws
    avg = avg.view(4, 40).mean(1)
    assert bool(((avg - bound[pick]).abs() <= 4 * one.std(1) / math.sqrt(2000)).all()), (avg, bound[pick])


def test_loss_is_the_nelbo_drawn_from_the_step_rng():
    net = TableNet()
    x = _all_images()[:8]
    method = _method("masked.t_min=0.01")
    a = method.loss(net, {"x": x}, StepRNG(5, 8))
    rng = StepRNG(5, 8)
    t = 0.01 + 0.99 * rng.rand()
    u = rng.rand(D)
    torch.testing.assert_close(a, nelbo_bits(net, x, None, t, u, "linear").mean())
    assert torch.equal(a, method.loss(net, {"x": x}, StepRNG(5, 8)))     # a function of (seed, step) alone
    # the linear schedule's weight is 1/t: only masked sub-pixels count
    t = torch.full((8,), 0.5, dtype=torch.float64)
    u = torch.tensor([[0.1, 0.9, 0.2, 0.8]]).expand(8, D)
    masked = unraster(torch.tensor([[True, False, True, False]]).expand(8, D), 1, 2)
    torch.testing.assert_close(nelbo_bits(net, x, None, t, u, "linear"),
                               2 * masked_nats(net, x, None, masked) / (D * LN2))


def test_class_conditional_loss_and_likelihood():
    method = _method("model.width=8", "model.channel_mults=[1]", "model.num_res_blocks=1",
                     "model.attn_resolutions=[]", "model.num_heads=1", "model.class_cond=true",
                     "masked.cond_drop=0.5", "masked.schedule=cosine")
    net = method.build_model((1, 4, 4), 3, levels=5)
    x = from_levels(torch.randint(0, 5, (6, 1, 4, 4)), 5)
    loss = method.loss(net, {"x": x, "y": torch.arange(6) % 3}, StepRNG(0, 6))
    loss.backward()
    assert math.isfinite(float(loss.detach())) and net.unet.conv_out.weight.grad is not None
    assert method.log_likelihood(net, x, torch.arange(6) % 3, draws=2).shape == (6,)


def test_maskgit_schedule_is_the_cosine_counts():
    for d, s in [(64, 12), (64, 8), (784, 12), (10, 3)]:
        assert maskgit_schedule(d, s) == [math.floor(d * math.cos(math.pi / 2 * (i + 1) / s)) for i in range(s)]
    for d, s in [(64, 64), (4, 4), (5, 3), (7, 1), (3, 9)]:
        counts = [d] + maskgit_schedule(d, s)
        assert counts[-1] == 0 and len(counts) == s + 1
        done = counts.index(0)
        assert done <= s and all(a > b for a, b in zip(counts[:done], counts[1:done + 1]))   # >= 1 fewer per step
        cos = [math.floor(d * math.cos(math.pi / 2 * (i + 1) / s)) for i in range(s)]
        assert all(c <= f for c, f in zip(counts[1:], cos))
    assert maskgit_schedule(64, 64)[0] == 63 and maskgit_schedule(64, 64)[1] == 62   # the cosine count stalls


# ------------------------------------------------------------------------------------------------ a tiny run

@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("masked")
    over = ["model.width=8", "model.channel_mults=[1,2]", "model.num_res_blocks=1", "model.attn_resolutions=[]",
            "model.num_heads=1", "train.batch_size=16", "train.time_budget=null", "train.max_steps=3",
            "train.warmup_steps=1", "train.val_every=0", "train.ckpt_every=0", "train.log_every=1", "sample.n=4"]
    res = api.train("digits_masked", over, name="md", runs_root=root, progress=False)
    assert res.state.step == 3
    return res.run_dir


@pytest.mark.parametrize("opts,nfe", [({"sampler": "ancestral", "k": 8}, 8), ({"k": 12}, 6),
                                      ({"sampler": "maskgit", "steps": 5}, 5), ({"sampler": "maskgit", "steps": 3}, 3)])
def test_samplers_nfe_and_per_seed_reproducibility(run, opts, nfe):
    x, used, _ = api.sample(run, n=4, seed=0, progress=False, **opts)
    method = api.load_run(run).method
    assert used == nfe == method.nfe(method.options(**opts), (1, 8, 8))
    assert method.nfe(method.options(), (1, 8, 8)) == 64                         # the recipe: ancestral, k = 1
    assert method.nfe(method.options(sampler="maskgit"), (1, 8, 8)) == 12        # its maskgit steps
    assert x.shape == (4, 1, 8, 8) and x.std() > 0
    one, _, _ = api.sample(run, n=1, seed=2, progress=False, **opts)
    assert torch.equal(one[0], x[2])                                  # sample i is seed + i, whatever the batch


def test_maskgit_masks_the_cosine_counts_and_inpainting_keeps_known(run, tmp_path):
    loaded = api.load_run(run)
    method, model = loaded.method, loaded.model
    masked = []
    method.sample(model, 2, sampler="maskgit", steps=6, choice_temperature=0.0,
                  callback=lambda info: masked.append(int((~info["known"][0]).sum())))
    assert masked == maskgit_schedule(64, 6)
    known = from_levels(torch.randint(0, 17, (3, 1, 8, 8)), 17)
    mask = torch.zeros(3, 1, 8, 8, dtype=torch.bool)
    mask[..., :4] = True                                              # left half known: 32 of 64 pixels
    few = torch.ones_like(mask)
    few[..., 0, :4] = False                                           # 4 unknown pixels: at most 4 steps
    for opts, m, nfe in [({"sampler": "ancestral", "k": 8}, mask, 4), ({"sampler": "maskgit", "steps": 5}, mask, 5),
                         ({"sampler": "maskgit", "steps": 10}, few, 4), ({"k": 3}, few, 2)]:
        x, used = method.sample(model, 3, known=known, known_mask=m, **opts)
        assert torch.equal(x[m], known[m]) and used == nfe, opts
        assert x.std() > 0
    _, nfe, path = api.sample(run, n=2, process=True, out=tmp_path / "p.png", sampler="maskgit", steps=4,
                              progress=False)
    assert nfe == 4 and path.exists()
    assert method.sampling_label(method.options(sampler="maskgit")) == "maskgit-12"
    assert method.sampling_label(method.options(k=4)) == "ancestral k=4"


def test_config_and_option_errors_are_clear(run):
    with pytest.raises(ConfigError, match="masked.schedule='foo' is not allowed; choose one of linear, cosine"):
        load_config("digits_masked", ["masked.schedule=foo"])
    with pytest.raises(ConfigError, match="sample.sampler='ddim' is not allowed; choose one of ancestral, maskgit"):
        load_config("digits_masked", ["sample.sampler=ddim"])
    with pytest.raises(ConfigError, match="sample.k=0 must be an integer"):
        load_config("digits_masked", ["sample.k=0"])
    with pytest.raises(ConfigError, match="masked.t_min"):
        load_config("digits_masked", ["masked.t_min=0"])
    with pytest.raises(ValueError, match="sampler='ddim' is not allowed; choose one of ancestral, maskgit"):
        api.sample(run, n=2, sampler="ddim", progress=False)
    with pytest.raises(ValueError, match="k .*integer in 1..64"):
        api.sample(run, n=2, k=65, progress=False)
    with pytest.raises(ValueError, match="steps .*integer in 1..64"):
        api.sample(run, n=2, sampler="maskgit", steps=65, progress=False)
    with pytest.raises(ValueError, match="--eta does not apply to masked_diffusion"):
        api.sample(run, n=2, eta=0.5, progress=False)
