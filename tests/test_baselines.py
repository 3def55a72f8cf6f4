"""The classic baselines beside diffusion and autoregression: GAN, VAE and normalizing flow. Their math against
closed forms and brute force on tiny cases; each trains, samples, and resumes bit-identically after SIGKILL;
each runs in `genlab compare --quick`."""
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import genlab.api as api
from genlab.config import ConfigError, load_config
from genlab.methods import gan as G
from genlab.methods import normalizing_flow as NF
from genlab.methods import vae as V
from genlab.nn.dcgan import GAN, level_channels, start_size
from genlab.nn.realnvp import MultiScaleFlow, squeeze, unsqueeze
from genlab.nn.vae import ConvVAE
from genlab.runs import load_run
from genlab.train import checkpoint as ck

from conftest import randomize, run_child

SMALL = {"gan": ["model.width=8", "gan.z_dim=8"],
         "vae": ["model.width=8", "vae.z_dim=4"],
         "normalizing_flow": ["nflow.steps=2", "nflow.width=8"]}
FAST = ["train.batch_size=16", "train.time_budget=null", "train.warmup_steps=2", "train.log_every=2",
        "train.num_threads=1", "sample.n=4"]


def recipe(method):
    return {"gan": "digits_gan", "vae": "digits_vae", "normalizing_flow": "digits_nflow"}[method]


# ------------------------------------------------------------------------------------------------ GAN math

def test_gan_losses_closed_forms():
    zero = torch.zeros(3)
    assert torch.allclose(G.d_loss("ns", zero, zero), torch.full((3,), 2 * math.log(2)))
    assert torch.allclose(G.g_loss("ns", zero), torch.full((3,), math.log(2)))
    d_real, d_fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.5])
    assert torch.allclose(G.d_loss("hinge", d_real, d_fake), torch.tensor([0.0, 2.0]))
    assert torch.allclose(G.g_loss("hinge", d_fake), -d_fake)
    # the non-saturating loss is -log sigmoid(d): its gradient does not vanish when D rejects the fakes
    d = torch.tensor([-8.0], requires_grad=True)
    G.g_loss("ns", d).sum().backward()
    assert d.grad.abs().item() > 0.99


def test_r1_penalty_is_the_squared_input_gradient():
    """For D(x) = w . x + (x . x) / 2 the input gradient is w + x: R1 is ||w + x||^2 per image."""
    w = torch.randn(1, 1, 4, 4)

    def disc(x, y):
        return (w * x).flatten(1).sum(1) + 0.5 * x.pow(2).flatten(1).sum(1)

    x = torch.randn(5, 1, 4, 4)
    assert torch.allclose(G.r1_penalty(disc, x, None), (w + x).flatten(1).pow(2).sum(1), atol=1e-5)


@pytest.mark.parametrize("size,levels", [(8, [4, 8]), (28, [7, 14, 28]), (32, [4, 8, 16, 32]), (16, [4, 8, 16])])
def test_dcgan_shapes(size, levels):
    assert start_size(size) == levels[0]
    assert len(level_channels(size, 8)) == len(levels)
    net = GAN(3, size, z_dim=8, width=8, d_width=8, num_classes=10, spectral_norm=True).eval()
    x = net(torch.randn(2, 8), torch.tensor([1, 2]))
    assert x.shape == (2, 3, size, size) and x.abs().max() <= 1
    assert net.discriminator(x, torch.tensor([1, 2])).shape == (2,)


# ------------------------------------------------------------------------------------------------ VAE math

@pytest.mark.parametrize("levels", [2, 17, 256])
def test_discretized_logistic_sums_to_one_over_the_levels(levels):
    grid = torch.linspace(-1, 1, levels).view(-1, 1)
    mean = torch.tensor([[-1.2, -0.3, 0.0, 0.7, 1.0]])
    log_scale = torch.tensor([[-6.0, -2.0, 0.0, -4.5, 1.0]])
    logp = V.discretized_logistic_logp(grid.expand(-1, 5), mean.expand(levels, -1), log_scale.expand(levels, -1),
                                       levels)
    assert torch.allclose(logp.exp().sum(0), torch.ones(5), atol=2e-3)


def test_gaussian_kl_matches_torch_distributions():
    mean, logvar = torch.randn(4, 3), torch.randn(4, 3)
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(mean, (0.5 * logvar).exp()),
                                            torch.distributions.Normal(0.0, 1.0)).sum(1)
    assert torch.allclose(V.gaussian_kl(mean, logvar), ref, atol=1e-5)


def tiny_vae(decoder):
    """A 1-d latent, a decoder far from its init, an encoder near the prior (so that 5000 importance draws
    cover the posterior)."""
    torch.manual_seed(0)
    net = ConvVAE(1, 2, 2, z_dim=1, width=4, decoder=decoder)
    randomize(net.decoder, std=0.5)
    return randomize(net.encoder, std=0.1) and net.eval()


@pytest.mark.parametrize("decoder", ["categorical", "logistic"])
def test_vae_bounds_against_brute_force_likelihood(decoder):
    """2x2 binary images and a 1-d latent: p(x) = int p(x | z) N(z) dz by quadrature. Over the 16 images it sums
    to 1; the ELBO and L_k lie below log p(x), L_k rises with k and L_5000 is within 0.03 nats of it."""
    net = tiny_vae(decoder)
    levels = torch.tensor([[(k >> b) & 1 for b in range(4)] for k in range(16)], dtype=torch.float32)
    x = (levels * 2 - 1).view(16, 1, 2, 2)
    z = torch.linspace(-10, 10, 8001).view(-1, 1)
    with torch.no_grad():
        logp_xz = torch.stack([V.decoder_logp(net, x[i:i + 1].expand(len(z), -1, -1, -1), z) for i in range(16)])
        log_prior = -0.5 * (z.squeeze(1) ** 2 + math.log(2 * math.pi))
        log_px = torch.logsumexp(logp_xz + log_prior, dim=1) + math.log(20 / 8000)
        assert log_px.exp().sum().item() == pytest.approx(1.0, abs=1e-3)
        g = torch.Generator().manual_seed(0)
        elbo = torch.stack([V.elbo_nats(net, x, torch.randn(16, 1, generator=g)) for _ in range(200)]).mean(0)
        g1 = torch.Generator().manual_seed(1)
        l10 = torch.stack([V.iwae_nats(net, x, 10, g1) for _ in range(200)]).mean(0)     # E[L_10]
        l5000 = V.iwae_nats(net, x, 5000, torch.Generator().manual_seed(2))
    assert (elbo <= log_px + 0.02).all() and (l10 <= log_px + 0.02).all()
    assert l10.mean() >= elbo.mean() - 1e-3 and l5000.mean() >= l10.mean() - 1e-3
    assert torch.allclose(l5000, log_px, atol=0.03)
    # log_likelihood: bits/dim of the same bounds
    method = V.VAEMethod(load_config("digits_vae"))
    bpd = method.log_likelihood(net, x, draws=5000, seed=2)
    assert torch.allclose(bpd, -l5000 / (4 * math.log(2)), atol=1e-4)


# ------------------------------------------------------------------------------------------------ flow math

def test_squeeze_is_invertible_and_moves_2x2_blocks_to_channels():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    s = squeeze(x)
    assert s.shape == (2, 12, 2, 2) and torch.equal(unsqueeze(s), x)
    assert s[0, :4, 0, 0].tolist() == [x[0, 0, 0, 0], x[0, 0, 0, 1], x[0, 0, 1, 0], x[0, 0, 1, 1]]


def random_flow(size=4, scales=2):
    torch.manual_seed(0)
    return randomize(MultiScaleFlow(1, size, scales=scales, steps=2, width=4), std=0.3).double()


def test_flow_inverse_and_log_determinant_against_the_full_jacobian():
    flow = random_flow()
    y = torch.randn(1, 1, 4, 4, dtype=torch.float64)
    zs, logdet = flow(y)
    assert torch.allclose(flow.inverse(zs), y, atol=1e-9)

    def f(v):
        return torch.cat([z.flatten() for z in flow(v.view(1, 1, 4, 4))[0]])

    jac = torch.autograd.functional.jacobian(f, y.flatten())
    assert torch.allclose(logdet, torch.linalg.slogdet(jac)[1], atol=1e-8)
    assert [tuple(z.shape[1:]) for z in zs] == flow.latent_shapes() == [(2, 2, 2), (8, 1, 1)]


def test_logit_transform_log_determinant():
    v = torch.rand(3, 5, dtype=torch.float64)
    y, logdet = NF.logit_transform(v, 0.05)
    d = torch.autograd.functional.jacobian(lambda u: NF.logit_transform(u.view(1, 5), 0.05)[0].flatten(), v[0])
    assert logdet[0].item() == pytest.approx(torch.linalg.slogdet(d)[1].item(), abs=1e-9)
    assert torch.allclose(NF.inverse_logit_transform(y, 0.05), v)


@pytest.mark.parametrize("dequantization", ["uniform", "variational"])
def test_dequantization_bound_against_brute_force(dequantization):
    """2x2 images with 2 levels (16 of them): P(k) = int over the cell of k of p(v) dv by Monte Carlo. The
    probabilities sum to at most 1, and the bound, averaged over draws of u, is below log P(k)."""
    cfg = load_config("digits_nflow", ["nflow.scales=1", "nflow.steps=2", "nflow.width=4",
                                      f"nflow.dequantization={dequantization}"])
    torch.manual_seed(0)
    net = randomize(NF.FlowModel(1, 2, 2, cfg.nflow), std=0.2).double()
    k = torch.tensor([[(i >> b) & 1 for b in range(4)] for i in range(16)], dtype=torch.float64).view(16, 1, 2, 2)
    x = k * 2 - 1
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        u = torch.rand((4000, 1, 2, 2), generator=g, dtype=torch.float64)
        log_p = []
        for i in range(16):
            yv, ld = NF.logit_transform((k[i] + u) / 2, net.alpha)
            log_p.append(torch.logsumexp(net.flow.log_prob(yv) + ld, 0) - math.log(4000) - 4 * math.log(2))
        log_pk = torch.stack(log_p)
        assert log_pk.exp().sum().item() <= 1.0 + 1e-2
        noise = torch.randn if dequantization == "variational" else torch.rand
        bound = torch.stack([net.bound_nats(x, noise((16, 1, 2, 2), generator=g, dtype=torch.float64))
                             for _ in range(300)]).mean(0)
    assert (bound <= log_pk + 0.02).all()


# ------------------------------------------------------------------------------------------------ train, sample, resume

@pytest.mark.parametrize("method", ["gan", "vae", "normalizing_flow"])
def test_trains_samples_and_evaluates(method, tmp_path):
    res = api.train(recipe(method), SMALL[method] + FAST + ["train.max_steps=6"], name="r", runs_root=tmp_path,
                    progress=False)
    assert res.state.step == 6
    run = load_run(tmp_path / "r")
    x, nfe, _ = api.sample(tmp_path / "r", n=6, batch_size=6, progress=False)
    assert x.shape == (6, 1, 8, 8) and nfe == 1
    x2, _, _ = api.sample(tmp_path / "r", n=6, batch_size=4, progress=False)
    assert torch.equal(x, x2), "sample i depends on its seed alone, not on the batching"
    assert set(np.unique(x.numpy() * 8 + 8)) <= set(range(17))     # on the 17 levels of digits
    recs = [r for r in res.history if "loss" in r]
    assert recs and all(math.isfinite(r["loss"]) for r in recs)
    if method == "gan":
        assert {"g_loss", "d_real", "d_fake"} <= set(recs[0]) and not any("val_loss" in r for r in res.history)
        assert run.method.likelihood == "none"
    else:
        assert any("val_loss" in r for r in res.history) and run.method.likelihood == "bound"


def test_gan_hinge_with_spectral_norm_and_classes(tmp_path):
    api.train("digits_gan", SMALL["gan"] + FAST + ["train.max_steps=4", "gan.loss=hinge", "gan.spectral_norm=true",
                                                   "gan.r1_gamma=0", "model.class_cond=true"],
              name="h", runs_root=tmp_path, progress=False)
    run = load_run(tmp_path / "h")
    assert any("parametrizations" in k for k in run.model.state_dict())
    x, _, _ = api.sample(tmp_path / "h", n=4, labels=[3], progress=False)
    assert x.shape == (4, 1, 8, 8)


def test_vae_sampled_decoding_and_reconstructions(tmp_path):
    api.train("digits_vae", SMALL["vae"] + FAST + ["train.max_steps=3", "vae.decoder=categorical"], name="c",
              runs_root=tmp_path, progress=False)
    run = load_run(tmp_path / "c")
    a, _, _ = api.sample(tmp_path / "c", n=4, decode="sample", progress=False)
    b, _, _ = api.sample(tmp_path / "c", n=4, decode="mean", progress=False)
    assert a.shape == b.shape == (4, 1, 8, 8) and not torch.equal(a, b)
    from genlab.runs import load_data

    pics = run.method.extra_pictures(run.model, load_data(run.config, "test").head(8))
    assert pics["reconstructions"].shape == (16, 1, 8, 8)


def test_config_errors():
    with pytest.raises(ConfigError, match="unconditional"):
        load_config("digits_nflow", ["model.class_cond=true"])
    with pytest.raises(ConfigError, match="gan.loss"):
        load_config("digits_gan", ["gan.loss=wasserstein"])
    with pytest.raises(ConfigError, match="vae.decoder"):
        load_config("digits_vae", ["vae.decoder=gaussian"])


@pytest.mark.parametrize("method", ["gan", "vae", "normalizing_flow"])
def test_sigkill_then_resume_is_bit_identical(method, tmp_path, forkserver):
    argv = ["train", "--config", recipe(method), *SMALL[method], *FAST, "train.max_steps=12", "train.ckpt_every=3",
            "train.val_every=6", "--runs-dir", str(tmp_path), "--no-progress"]
    code, out = run_child(forkserver, argv + ["--name", "ref"], tmp_path / "ref.log")
    assert code == 0, out
    code, out = run_child(forkserver, argv + ["--name", "k"], tmp_path / "k.log", fault="kill@step.7")
    assert code == -9, out
    code, out = run_child(forkserver, argv + ["--name", "k", "--resume"], tmp_path / "k2.log")
    assert code == 0 and "resumed from" in out, out
    a, b = ck.resolve_checkpoint(tmp_path / "ref"), ck.resolve_checkpoint(tmp_path / "k")
    assert a.name == b.name == "step_0000012"
    for f in ("model", "ema", "optimizer"):
        ta, tb = load_file(str(a / f"{f}.safetensors")), load_file(str(b / f"{f}.safetensors"))
        assert ta.keys() == tb.keys()
        for key in ta:
            assert torch.equal(ta[key], tb[key]), f"{f}.{key} differs after the kill and resume"
