"""Flow matching / rectified flow: the likelihood's change of variables and the ODE samplers checked on the exact
velocity field of Gaussian data, the loss's target, and a tiny trained model through the API."""
import math

import pytest
import torch

from genlab.config import ConfigError, load_config
from genlab.diffusion.samplers import FLOW_SAMPLERS, SAMPLERS, FlowPath
from genlab.methods import get_method
from genlab.methods.flow_matching import FlowDenoiser, ode_log_density
from genlab.rng import StepRNG

S = 0.5       # data x0 ~ N(0, S^2 I); then x_t ~ N(0, ((1 - t)^2 S^2 + t^2) I)


def gaussian_velocity(x, t, s=S):
    """The exact marginal velocity E[eps - x0 | x_t = x] of the straight path for x0 ~ N(0, s^2 I)."""
    tt = t.view(-1, *[1] * (x.dim() - 1)).to(x.dtype)
    return x * (tt - (1 - tt) * s ** 2) / ((1 - tt) ** 2 * s ** 2 + tt ** 2)


def gaussian_denoiser(x, t):
    """The same field as the (x0_hat, eps_hat) pair the samplers consume."""
    v = gaussian_velocity(x, t)
    tt = t.view(-1, *[1] * (x.dim() - 1)).to(x.dtype)
    return x - tt * v, x + (1 - tt) * v


def test_change_of_variables_matches_the_gaussian_log_density():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 1, 2, 2, generator=g, dtype=torch.float64) * S * 1.5
    d = 4
    exact = -0.5 * (x.flatten(1) ** 2).sum(1) / S ** 2 - d * math.log(S) - 0.5 * d * math.log(2 * math.pi)
    lp = ode_log_density(gaussian_velocity, x, 32, generator=torch.Generator().manual_seed(1))
    assert lp.shape == (32,)
    torch.testing.assert_close(lp, exact, atol=2e-2, rtol=1e-3)     # Heun: the error shrinks as 1 / steps^2
    err16 = (ode_log_density(gaussian_velocity, x, 16) - exact).abs().max()
    err64 = (ode_log_density(gaussian_velocity, x, 64) - exact).abs().max()
    assert err64 < err16 / 10
    # Hutchinson's estimator with several probes on a non-diagonal Jacobian: unbiased, so close on average
    a = torch.tensor([[0.0, 1.0, 0, 0], [-1.0, 0, 0, 0], [0, 0, -0.5, 0.3], [0, 0, 0.2, 0.1]], dtype=torch.float64)
    lin = lambda x, t: (x.flatten(1) @ a.T).view_as(x)                  # noqa: E731  trace(A) = -0.4
    x1 = torch.zeros(2000, 4, dtype=torch.float64)
    est = ode_log_density(lin, x1, 1, draws=2, generator=torch.Generator().manual_seed(2))
    assert abs(float(est.mean()) - (-0.4 - 2 * math.log(2 * math.pi))) < 0.03


@pytest.mark.parametrize("name", list(FLOW_SAMPLERS))
def test_samplers_carry_noise_to_the_data_variance(name):
    fn = FLOW_SAMPLERS[name]
    x1 = torch.randn(4000, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    steps = 40
    seen = []
    x0 = fn(gaussian_denoiser, x1, FlowPath(), steps, callback=lambda info: seen.append(info))
    assert abs(float(x0.std()) - S) < 0.02
    assert [f["i"] for f in seen] == list(range(steps)) and seen[-1]["t"] == 0.0
    assert torch.equal(seen[-1]["x_t"], x0) and set(seen[0]) == {"i", "t", "x_t", "x0_hat"}


def test_second_order_samplers_converge_faster_than_euler():
    x1 = torch.ones(1, 1, 1, 1, dtype=torch.float64)      # the field is linear: x_0 = c x_1, exactly c = S

    def err(name, steps):
        return abs(float(FLOW_SAMPLERS[name](gaussian_denoiser, x1, FlowPath(), steps)) - S)

    for name in FLOW_SAMPLERS:
        assert err(name, 40) < err(name, 10) < err(name, 3)
    assert err("heun", 20) < err("euler", 20) / 10 and err("midpoint", 20) < err("euler", 20) / 100
    # one Euler step from t to s is DDIM with alpha = 1 - t, sigma = t: x_s = (1 - s) x0_hat + s eps_hat
    x = torch.randn(3, 1, 2, 2, dtype=torch.float64)
    x0, eps = gaussian_denoiser(x, torch.full((3,), 1.0, dtype=torch.float64))
    seen = []
    FLOW_SAMPLERS["euler"](gaussian_denoiser, x, FlowPath(), 4, callback=seen.append)   # t = 1, 0.75, ...
    torch.testing.assert_close(seen[0]["x_t"], 0.25 * x0 + 0.75 * eps)
    assert seen[0]["t"] == 0.75
    assert not set(FLOW_SAMPLERS.values()) & set(SAMPLERS.values())


def _method(*over):
    return get_method(load_config("digits_flow", ["train.max_steps=1", *over]))


class ExactVelocity(torch.nn.Module):
    """A fake network that knows the batch's x0 and returns eps - x0 = (x_t - x0) / t exactly."""
    num_classes = 0

    def __init__(self, x0):
        super().__init__()
        self.x0 = x0

    def forward(self, x_t, t, y=None):
        tt = (t / 1000.0).view(-1, 1, 1, 1).to(x_t.dtype)      # the network is fed t * 1000
        return (x_t - self.x0) / tt


@pytest.mark.parametrize("sampling", ["uniform", "logit_normal"])
def test_loss_is_zero_for_the_exact_velocity(sampling):
    method = _method(f"flow.time_sampling={sampling}")
    x0 = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1
    loss = method.loss(ExactVelocity(x0), {"x": x0}, StepRNG(3, 64))
    assert float(loss) < 1e-12
    assert float(method.loss(ExactVelocity(x0 * 0.9), {"x": x0}, StepRNG(3, 64))) > 1e-3


def test_clipping_keeps_the_pair_consistent():
    net = lambda x, t, y=None: torch.full_like(x, -3.0)       # noqa: E731  x0_hat = x + 3 t: clipped at 1
    x = torch.zeros(2, 1, 2, 2)
    t = torch.tensor([0.5, 0.1])
    x0, eps = FlowDenoiser(net, clip=True)(x, t)
    assert float(x0.max()) <= 1.0
    tt = t.view(-1, 1, 1, 1)
    torch.testing.assert_close((1 - tt) * x0 + tt * eps, x)


def test_bits_per_dim_of_a_zero_velocity_is_the_dequantized_standard_normal():
    """With v = 0 the flow is the identity, so log p_0 = log N(x + u; 0, I): the bits/dim conversion alone."""
    method = _method()
    model = method.build_model((1, 8, 8), 0, levels=17)            # the UNet's output layer starts at zero
    assert method.levels == 17
    x = torch.linspace(-1, 1, 17)[torch.randint(17, (8, 1, 8, 8), generator=torch.Generator().manual_seed(0))]
    bpd = method.log_likelihood(model, x, steps=2)
    w, d = 2 / 16, 64
    nats = 0.5 * (x.flatten(1) ** 2 + w ** 2 / 12).sum(1) + 0.5 * d * math.log(2 * math.pi) - d * math.log(w)
    torch.testing.assert_close(bpd, (nats / (d * math.log(2))).float(), atol=0.03, rtol=0)
    with pytest.raises(ValueError, match="grid of 17 levels"):
        method.log_likelihood(model, x + 0.01)


@pytest.fixture(scope="module")
def flow_run(tmp_path_factory):
    """A tiny class-conditional flow-matching run trained 3 steps with condition dropout (guidance applies)."""
    import genlab.api as api
    from conftest import TINY

    root = tmp_path_factory.mktemp("flowrun")
    api.train("digits_flow", TINY + ["train.max_steps=3", "model.class_cond=true", "flow.cond_drop=0.2",
                                     "flow.time_sampling=logit_normal", "flow.likelihood_steps=4"],
              name="f", runs_root=root, progress=False)
    return root / "f"


@pytest.mark.parametrize("sampler", list(FLOW_SAMPLERS))
def test_sample_each_sampler_reproducible_per_seed(flow_run, sampler):
    import genlab.api as api

    run = api.load_run(flow_run)
    x, nfe, _ = api.sample(flow_run, n=4, sampler=sampler, steps=3, seed=20, batch_size=3, progress=False)
    assert x.shape == (4, 1, 8, 8) and float(x.abs().max()) <= 1.0
    assert nfe == run.method.nfe(run.method.options(sampler=sampler, steps=3), (1, 8, 8))
    assert nfe == {"euler": 3, "heun": 5, "midpoint": 6}[sampler]
    one, _, _ = api.sample(flow_run, n=1, sampler=sampler, steps=3, seed=22, progress=False)
    assert torch.equal(x[2:3], one)
    assert run.method.sampling_label(run.method.options(sampler=sampler, steps=3)) == f"{sampler}-3"


def test_guidance_process_and_likelihood(flow_run, tmp_path):
    import genlab.api as api
    from genlab.eval.likelihood import bits_per_dim

    run = api.load_run(flow_run)
    plain, n1, _ = api.sample(flow_run, n=3, labels=[7], steps=2, progress=False)
    guided, n2, _ = api.sample(flow_run, n=3, labels=[7], steps=2, guidance=3.0, progress=False)
    assert n1 == 2 and n2 == 4 == run.method.nfe(run.method.options(steps=2, guidance=3.0), (1, 8, 8))
    assert not torch.equal(plain, guided)
    _, _, path = api.sample(flow_run, n=2, steps=3, process=True, out=tmp_path / "p.png", progress=False)
    assert path.exists()
    from genlab.cli import main

    assert main(["sample", "--ckpt", str(flow_run), "--n", "2", "--sampler", "midpoint", "--steps", "2",
                 "--out", str(tmp_path / "g.png")]) == 0 and (tmp_path / "g.png").exists()
    assert run.method.likelihood == "estimate" and run.method.levels == 17
    data = api.load_data(run.config, "test")
    b = data.batch(torch.arange(6))
    bpd = run.method.log_likelihood(run.model, b["x"], b["y"], seed=1)
    assert bpd.shape == (6,) and bool(torch.isfinite(bpd).all()) and bool((bpd > 0).all())
    torch.testing.assert_close(bpd, run.method.log_likelihood(run.model, b["x"], b["y"], seed=1))
    res = bits_per_dim(run.method, run.model, _Head(data, 4), draws=2)
    assert math.isfinite(res["bpd"]) and res["bpd"] > 0 and res["n"] == 4


class _Head:
    """The first n images of a dataset (what bits_per_dim reads: len and batch)."""

    def __init__(self, ds, n):
        self.ds, self.n = ds, n

    def __len__(self):
        return self.n

    def batch(self, idx):
        return self.ds.batch(idx)


def test_config_and_option_errors_are_clear(flow_run):
    import genlab.api as api

    with pytest.raises(ConfigError, match="flow.time_sampling='foo' is not allowed; choose one of uniform, logit_normal"):
        load_config("digits_flow", ["flow.time_sampling=foo"])
    with pytest.raises(ConfigError, match="sample.sampler='ddim' is not allowed; choose one of euler, heun, midpoint"):
        load_config("digits_flow", ["sample.sampler=ddim"])
    with pytest.raises(ValueError, match="choose one of euler, heun, midpoint"):
        api.sample(flow_run, n=1, sampler="ddim", progress=False)
    with pytest.raises(ValueError, match="does not apply to flow_matching"):
        api.sample(flow_run, n=1, eta=0.5, progress=False)
    with pytest.raises(ConfigError, match="not flow_matching"):
        load_config("digits_flow", ["model.image_cond=mask"])
