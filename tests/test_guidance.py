"""Guidance wrappers: classifier-free guidance reduces to the plain denoiser at scale 1 (and to the unconditional
one at 0), classifier guidance to the plain denoiser at scale 0; both follow their formulas otherwise."""
import pytest
import torch

from genlab.cli import main
from genlab.config import load_config
from genlab.diffusion import CountingDenoiser, Denoiser, Schedule
from genlab.diffusion.guidance import ClassifierFreeGuidance, ClassifierGuidance, guided_logits
from genlab.methods import get_method


@pytest.fixture(scope="module")
def setup():
    from conftest import random_unet

    net = random_unet((1, 2), num_classes=10).double()      # random output layer: the outputs depend on y
    sched = Schedule.create("cosine", 100)
    x = torch.randn(6, 1, 8, 8, dtype=torch.float64)
    t = torch.tensor(40)
    y = torch.tensor([0, 1, 2, 3, 4, 7])
    return net, sched, x, t, y


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_cfg_scale_one_is_the_conditional_denoiser_and_zero_the_unconditional(setup, prediction):
    net, sched, x, t, y = setup
    for clip in (False, True):
        plain = Denoiser(net, sched, prediction, y=y, clip=clip)(x, t)
        guided = ClassifierFreeGuidance(net, sched, prediction, y, 10, 1.0, clip=clip)(x, t)
        assert all(torch.equal(a, b) for a, b in zip(plain, guided))
        uncond = Denoiser(net, sched, prediction, y=torch.full_like(y, 10), clip=clip)(x, t)
        zero = ClassifierFreeGuidance(net, sched, prediction, y, 10, 0.0, clip=clip)(x, t)
        assert all(torch.equal(a, b) for a, b in zip(uncond, zero))


def test_cfg_follows_its_formula_and_counts_two_evaluations(setup):
    net, sched, x, t, y = setup
    c = Denoiser(net, sched, "eps", y=y, clip=False)(x, t)
    u = Denoiser(net, sched, "eps", y=torch.full_like(y, 10), clip=False)(x, t)
    g = ClassifierFreeGuidance(net, sched, "eps", y, 10, 3.0, clip=False)
    x0, eps = g(x, t)
    torch.testing.assert_close(eps, u[1] + 3.0 * (c[1] - u[1]))
    ab = sched.alphas_cumprod[40].double()
    torch.testing.assert_close(x, ab.sqrt() * x0 + (1 - ab).sqrt() * eps)       # still consistent with x_t
    counted = CountingDenoiser(g)
    counted(x, t), counted(x, t)
    assert counted.nfe == 4


def test_classifier_guidance_scale_zero_is_plain_and_otherwise_shifts_eps(setup):
    net, sched, x, t, y = setup
    w = torch.randn(10, 64, dtype=torch.float64)
    classifier = lambda x_t, t_: x_t.flatten(1) @ w.T  # noqa: E731  (a linear "noise-aware" classifier)
    base = Denoiser(net, sched, "v", y=y, clip=False)
    plain = Denoiser(net, sched, "v", y=y, clip=True)(x, t)
    zero = ClassifierGuidance(base, classifier, sched, y, 0.0, clip=True)(x, t)
    assert all(torch.equal(a, b) for a, b in zip(plain, zero))
    x0, eps = ClassifierGuidance(base, classifier, sched, y, 2.0, clip=False)(x, t)
    logp_grad = (w[y] - torch.softmax(x.flatten(1) @ w.T, 1) @ w).view_as(x)        # d/dx log softmax_y(Wx)
    ab = sched.alphas_cumprod[40].double()
    torch.testing.assert_close(eps, base(x, t)[1] - 2.0 * (1 - ab).sqrt() * logp_grad)


def test_guided_logits():
    c, u = torch.randn(4, 17), torch.randn(4, 17)
    torch.testing.assert_close(torch.softmax(guided_logits(c, u, 1.0), -1), torch.softmax(c, -1))
    torch.testing.assert_close(torch.softmax(guided_logits(c, u, 0.0), -1), torch.softmax(u, -1))


def test_ar_guidance_scale_one_is_plain_sampling_and_doubles_evaluations():
    cfg = load_config(None, ["method=autoregressive", "ar.backbone=transformer", "ar.width=8", "ar.layers=2",
                             "ar.heads=2", "model.class_cond=true", "train.max_steps=1"])
    method = get_method(cfg)
    torch.manual_seed(0)
    model = method.build_model((1, 3, 3), 10, levels=5).eval()
    y = torch.tensor([1, 2, 3])
    a, nfe_a = method.sample(model, 3, y=y, seed=0)
    b, _ = method.sample(model, 3, y=y, seed=0, guidance=1.0)
    c, nfe_c = method.sample(model, 3, y=y, seed=0, guidance=3.0)
    d, _ = method.sample(model, 3, y=y, seed=0, guidance=3.0, use_cache=False)
    assert torch.equal(a, b) and torch.equal(c, d) and nfe_a == 9 and nfe_c == 18


def test_class_and_guidance_from_the_command_line(tmp_path, capsys):
    from conftest import TINY

    assert main(["train", *TINY, "train.max_steps=6", "model.class_cond=true", "diffusion.cond_drop=0.2",
                 "--name", "cond", "--runs-dir", str(tmp_path), "--no-progress"]) == 0
    run = str(tmp_path / "cond")
    assert main(["sample", "--ckpt", run, "--n", "4", "--class", "7", "--guidance", "3", "--steps", "3",
                 "--out", str(tmp_path / "g.png")]) == 0
    assert "(6 network evaluations per sample)" in capsys.readouterr().out       # 3 steps x 2 (CFG)
    assert main(["sample", "--ckpt", run, "--n", "2", "--class", "12", "--out", str(tmp_path / "x.png")]) == 2
    assert "labels must be in 0..9" in capsys.readouterr().err
    assert main(["train", *TINY, "train.max_steps=2", "--name", "unc", "--runs-dir", str(tmp_path),
                 "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["sample", "--ckpt", str(tmp_path / "unc"), "--n", "2", "--guidance", "3",
                 "--out", str(tmp_path / "y.png")]) == 2
    assert "guidance needs" in capsys.readouterr().err


def test_noise_aware_classifier_guides_from_the_command_line(tmp_path, capsys):
    from conftest import TINY

    runs = str(tmp_path)
    assert main(["train", *TINY, "method=classifier", "train.max_steps=20", "--name", "clf", "--runs-dir", runs,
                 "--no-progress"]) == 0
    assert main(["train", *TINY, "train.max_steps=4", "--name", "gen", "--runs-dir", runs, "--no-progress"]) == 0
    capsys.readouterr()
    gen, clf = str(tmp_path / "gen"), str(tmp_path / "clf")
    assert main(["sample", "--ckpt", gen, "--classifier", clf, "--classifier-scale", "2", "--class", "3",
                 "--n", "4", "--steps", "3", "--out", str(tmp_path / "g.png")]) == 0
    assert "(3 network evaluations per sample)" in capsys.readouterr().out
    a, _, _ = __import__("genlab").sample(gen, n=3, steps=3, labels=[3], classifier=clf, classifier_scale=0.0,
                                          progress=False)
    b, _, _ = __import__("genlab").sample(gen, n=3, steps=3, progress=False)
    assert torch.equal(a, b)                                      # scale 0: exactly the unguided samples
    for args, msg in [(["--classifier", gen], "not a noise-aware classifier"),
                      (["--classifier-scale", "2"], "needs --classifier"),
                      (["--ckpt", clf], "draws no samples")]:
        ckpt = [] if "--ckpt" in args else ["--ckpt", gen]
        assert main(["sample", *ckpt, *args, "--n", "2", "--out", str(tmp_path / "x.png")]) == 2, args
        assert msg in capsys.readouterr().err, args
    assert main(["train", *TINY, "method=classifier", "diffusion.timesteps=50", "train.max_steps=2", "--name",
                 "clf50", "--runs-dir", runs, "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["sample", "--ckpt", gen, "--classifier", str(tmp_path / "clf50"), "--n", "2",
                 "--out", str(tmp_path / "x.png")]) == 2
    assert "another noise schedule" in capsys.readouterr().err
