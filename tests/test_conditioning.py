"""Image conditioning: random training masks, the bound-network wrapper, the super-resolution upsampler and the
cascade, the GLIDE-style inpainting model, and RePaint resampling."""
import numpy as np
import pytest
import torch
from PIL import Image

import genlab.api as api
from genlab.cli import main
from genlab.config import load_config
from genlab.diffusion import Denoiser, Schedule
from genlab.diffusion import conditioning as imc
from genlab.diffusion.samplers import PerSampleNoise, ddpm
from genlab.diffusion.tasks import Inpaint, repaint

SMALL = ["model.width=8", "model.channel_mults=[1,2]", "model.num_res_blocks=1", "model.attn_resolutions=[]",
         "model.num_heads=1", "diffusion.timesteps=100", "train.batch_size=16", "train.time_budget=null",
         "train.max_steps=2", "train.warmup_steps=1", "train.val_every=0", "sample.steps=3", "sample.n=4"]


def test_random_masks_cover_every_kind_and_are_deterministic():
    u = torch.rand(4000, 6, generator=torch.Generator().manual_seed(0))
    m = imc.random_masks(u, 8)
    assert m.shape == (4000, 1, 8, 8) and m.dtype == torch.bool
    assert torch.equal(m, imc.random_masks(u, 8))
    known = m.float().mean((1, 2, 3))
    assert 0.08 < (known == 0).float().mean() < 0.17 and 0.08 < (known == 1).float().mean() < 0.17
    assert 0.2 < (known == 0.5).float().mean() < 0.4        # the half images (and a few rectangles)
    inp = imc.mask_input(torch.ones(2, 3, 8, 8), m[:2])
    assert inp.shape == (2, 4, 8, 8) and set(inp[:, 3].unique().tolist()) <= {-1.0, 1.0}
    assert torch.equal(inp[:, :3] != 0, m[:2].expand(2, 3, 8, 8))


def test_lowres_input_and_the_bound_network():
    lr = torch.rand(2, 3, 4, 4) * 2 - 1
    inp = imc.lowres_input(lr, 8, torch.ones(2), torch.randn(2, 3, 4, 4), torch.zeros(2))
    assert inp.shape == (2, 4, 8, 8) and torch.allclose(inp[:, :3], torch.nn.functional.interpolate(
        lr, size=(8, 8), mode="bicubic", align_corners=False)) and inp[:, 3].eq(0).all()
    seen = []

    def net(x, t, y=None):
        seen.append(x.shape)
        return x[:, :1]

    bound = imc.WithImage(net, torch.zeros(2, 2, 8, 8))
    assert bound(torch.ones(4, 1, 8, 8), 3).shape == (4, 1, 8, 8) and seen[-1] == (4, 3, 8, 8)   # CFG's 2x batch
    with pytest.raises(ValueError, match="not a multiple"):
        bound(torch.ones(3, 1, 8, 8), 3)


def test_repaint_resampling_counts_evaluations_keeps_known_pixels_and_reduces_to_ddpm():
    from conftest import random_unet

    net = random_unet()
    sched = Schedule.create("cosine", 100)
    known = torch.rand(2, 1, 8, 8) * 2 - 1
    mask = torch.zeros(2, 1, 8, 8, dtype=torch.bool)
    mask[:, :, :4] = True
    calls = []

    def den(x, t):
        calls.append(1)
        return Inpaint(Denoiser(net, sched, "v"), sched, known, mask)(x, t)

    x_T = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        a = repaint(den, x_T, sched, 10, resample=1, generator=PerSampleNoise([0, 1]))
        b = ddpm(den, x_T, sched, 10, generator=PerSampleNoise([0, 1]))
        assert torch.allclose(a, b)
        calls.clear()
        c = repaint(den, x_T, sched, 10, resample=3, generator=PerSampleNoise([0, 1]))
    assert len(calls) == 9 * 3 + 1 and torch.allclose(c[mask], known[mask], atol=1e-5)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cond")
    assert main(["train", "--config", "shapes_upsampler", *SMALL, "model.lowres_size=16", "--name", "up",
                 "--runs-dir", str(root), "--no-progress"]) == 0
    assert main(["train", "--config", "shapes_text", *SMALL, "model.attn_resolutions=[8]", "model.text_width=8",
                 "model.text_layers=1", "diffusion.cond_drop=0.2", "--name", "base", "--runs-dir", str(root),
                 "--no-progress"]) == 0
    assert main(["train", "--config", "digits_inpaint", *SMALL, "--name", "inp", "--runs-dir", str(root),
                 "--no-progress"]) == 0
    assert main(["train", "--config", "digits_ddpm", *SMALL, "--name", "dig", "--runs-dir", str(root),
                 "--no-progress"]) == 0
    return root


def test_upsampler_and_cascade(runs, capsys):
    lr = torch.rand(3, 3, 16, 16) * 2 - 1
    x, nfe, levels = api.upsample(runs / "up", lr, seed=0, lowres_t=0.1)
    assert x.shape == (3, 3, 32, 32) and nfe == 3 and levels == 256
    again, _, _ = api.upsample(runs / "up", lr, seed=0, lowres_t=0.1)
    assert torch.equal(x, again)
    out = runs / "casc.png"
    assert main(["sample", "--ckpt", str(runs / "base"), "--prompt", "a red circle", "--upsampler",
                 str(runs / "up"), "--n", "2", "--out", str(out)]) == 0
    assert "(6 network evaluations per sample)" in capsys.readouterr().out      # 3 base + 3 upsampler
    assert Image.open(out).size[1] >= 32
    cases = [(["--ckpt", str(runs / "up")], "is an upsampler"),
             (["--ckpt", str(runs / "base"), "--upsampler", str(runs / "base")], "is not an upsampler"),
             (["--ckpt", str(runs / "dig"), "--upsampler", str(runs / "up")], "takes 3x16x16 images, but the base "
                                                                              "model makes 1x8x8"),
             (["--ckpt", str(runs / "dig"), "--lowres-t", "0.1"], "--lowres-t sets the upsampler")]
    for args, msg in cases:
        assert main(["sample", *args, "--n", "2", "--out", str(runs / "e.png")]) == 2
        assert msg in capsys.readouterr().err, args
    with pytest.raises(ValueError, match="the upsampler takes 3x16x16 images, but the base model makes 3x15x16"):
        api.upsample(runs / "up", torch.zeros(3, 3, 15, 16))
    _, method, model, _ = api.load_run(runs / "up")
    with pytest.raises(ValueError, match=r"low-resolution images of shape \(2, 3, 16, 16\); got \(3, 3, 16, 16\)"):
        method.sample(model, 2, lowres=lr)
    with pytest.raises(ValueError, match="it needs low-resolution images"):
        method.sample(model, 2)


def test_glide_inpainting_model_keeps_known_pixels_and_samples_whole_images(runs):
    cfg, method, model, _ = api.load_run(runs / "inp")
    assert model.in_channels == 3 and model.out_channels == 1
    known = torch.rand(2, 1, 8, 8) * 2 - 1
    mask = torch.ones(2, 1, 8, 8, dtype=torch.bool)
    mask[:, :, 4:] = False
    x, nfe = method.sample(model, 2, known=known, known_mask=mask, seed=0)
    assert nfe == 3 and torch.equal(x[mask], known[mask].clamp(-1, 1))
    whole, _ = method.sample(model, 2, seed=0)
    assert whole.shape == (2, 1, 8, 8)
    with pytest.raises(ValueError, match="resample .RePaint. applies to inpainting by replacement"):
        method.sample(model, 2, known=known, known_mask=mask, sampler="ddpm", resample=2)
    with pytest.raises(ValueError, match="the likelihood bound of an image-conditioned model"):
        method.log_likelihood(model, known)


def test_inpaint_command_with_repaint_and_the_glide_model(runs, capsys):
    digit = api.load_data(load_config("digits_ddpm"), "test").x[0, 0].numpy().astype(np.float64)
    Image.fromarray(np.round(digit / 16 * 255).astype(np.uint8), "L").save(runs / "in.png")
    m = np.zeros((8, 8), np.uint8)
    m[4:] = 255
    Image.fromarray(m, "L").save(runs / "mask.png")
    common = ["--image", str(runs / "in.png"), "--mask", str(runs / "mask.png"), "--n", "2", "--out",
              str(runs / "i.png")]
    assert main(["inpaint", "--ckpt", str(runs / "dig"), *common, "--sampler", "ddpm", "--steps", "4",
                 "--resample", "3"]) == 0
    assert "(10 network evaluations per sample)" in capsys.readouterr().out     # 3 x 3 + 1
    assert main(["inpaint", "--ckpt", str(runs / "inp"), *common]) == 0
    assert "(3 network evaluations per sample)" in capsys.readouterr().out
    assert main(["inpaint", "--ckpt", str(runs / "dig"), *common, "--resample", "0", "--sampler", "ddpm"]) == 2
    assert "resample=0 must be an integer in 1..1000" in capsys.readouterr().err


def test_bad_image_conditioning_configs(tmp_path, capsys):
    cases = [(["--config", "digits_ddpm", "model.image_cond=lowres"], "needs model.lowres_size"),
             (["--config", "digits_ddpm", "model.image_cond=lowres", "model.lowres_size=8"],
              "model.lowres_size=8 must be smaller than the image side 8"),
             (["--config", "digits_pixelcnn", "model.image_cond=mask"], "implemented for method=diffusion"),
             (["--config", "digits_ddpm", "model.image_cond=blur"], "model.image_cond='blur' is not allowed")]
    for args, msg in cases:
        assert main(["train", *args, *SMALL, "--name", "bad", "--runs-dir", str(tmp_path), "--no-progress"]) == 2
        assert msg in capsys.readouterr().err, args
