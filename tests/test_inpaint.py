"""Inpainting keeps the known pixels (diffusion with every sampler, any-order and raster AR), and bad masks or
images give clear errors."""
import numpy as np
import pytest
import torch
from PIL import Image

import genlab.api as api
from genlab.cli import main
from genlab.config import load_config
from genlab.diffusion import Denoiser, Schedule
from genlab.diffusion.tasks import Inpaint
from genlab.methods import get_method


def test_inpaint_wrapper_replaces_x0_in_the_known_region():
    from conftest import random_unet

    net = random_unet()
    sched = Schedule.create("cosine", 50)
    known = torch.rand(3, 1, 8, 8) * 2 - 1
    mask = torch.rand(3, 1, 8, 8) < 0.5
    den = Inpaint(Denoiser(net, sched, "v"), sched, known, mask)
    x_t, t = torch.randn(3, 1, 8, 8), torch.tensor(20)
    x0, eps = den(x_t, t)
    assert torch.equal(x0[mask], known[mask])
    ab = sched.alphas_cumprod[20]
    torch.testing.assert_close(x_t, ab.sqrt() * x0 + (1 - ab).sqrt() * eps, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sampler,steps", [("ddim", 5), ("ddpm", 5), ("dpmpp-2m", 5), ("heun", 3)])
def test_diffusion_inpainting_keeps_known_pixels_with_every_sampler(sampler, steps):
    cfg = load_config(None, ["model.width=8", "model.channel_mults=[1]", "model.num_res_blocks=1",
                             "model.attn_resolutions=[]", "model.num_heads=1", "diffusion.timesteps=50",
                             "train.max_steps=1"])
    method = get_method(cfg)
    torch.manual_seed(0)
    model = method.build_model((1, 8, 8), 0, levels=17).eval()
    known = torch.randint(0, 17, (4, 1, 8, 8)).float() / 8 - 1
    mask = torch.zeros(4, 1, 8, 8, dtype=torch.bool)
    mask[..., :, :4] = True
    x, _ = method.sample(model, 4, sampler=sampler, steps=steps, known=known, known_mask=mask, batch_size=3)
    assert torch.equal(x[mask], known[mask])
    with pytest.raises(ValueError, match="known and known_mask must have shape"):
        method.sample(model, 4, sampler=sampler, steps=steps, known=known[:2], known_mask=mask[:2])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from conftest import TINY

    root = tmp_path_factory.mktemp("inpaint")
    assert main(["train", *TINY, "train.max_steps=4", "--name", "dif", "--runs-dir", str(root), "--no-progress"]) == 0
    assert main(["train", "--config", "digits_any_order", "model.width=8", "model.num_res_blocks=1",
                 "model.num_heads=1", "train.max_steps=4", "train.time_budget=null", "train.batch_size=16",
                 "--name", "ao", "--runs-dir", str(root), "--no-progress"]) == 0
    assert main(["train", "--config", "digits_oneshot", "train.max_steps=2", "train.time_budget=null",
                 "--name", "one", "--runs-dir", str(root), "--no-progress"]) == 0
    digit = api.load_data(load_config("digits_ddpm"), "test").x[0, 0].numpy().astype(np.float64)
    Image.fromarray(np.round(digit / 16 * 255).astype(np.uint8), "L").save(root / "in.png")
    m = np.zeros((8, 8), np.uint8)
    m[:, 4:] = 255
    Image.fromarray(m, "L").save(root / "mask.png")
    Image.fromarray(np.zeros((8, 8), np.uint8), "L").save(root / "black.png")
    Image.fromarray(np.zeros((10, 10), np.uint8), "L").save(root / "big.png")
    return root


@pytest.mark.parametrize("run,args", [("dif", ["--steps", "4"]), ("ao", ["--k", "4"])])
def test_inpaint_command(files, run, args, capsys):
    out = files / f"{run}.png"
    assert main(["inpaint", "--ckpt", str(files / run), "--image", str(files / "in.png"), "--mask",
                 str(files / "mask.png"), "--n", "3", *args, "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out and Image.open(out).size[0] > Image.open(out).size[1]
    x, _, _ = api.inpaint(files / run, files / "in.png", files / "mask.png", n=2,
                          **({"steps": 4} if run == "dif" else {"k": 4}))
    levels = torch.round((x + 1) * 8)
    digit = torch.from_numpy(np.asarray(Image.open(files / "in.png"), dtype=np.float64) / 255 * 16).round()
    assert torch.equal(levels[:, 0, :, :4], digit[:, :4].expand(2, 8, 4).float())


def test_inpaint_errors(files, capsys):
    d = str(files / "dif")
    cases = [(["--ckpt", d, "--mask", str(files / "big.png")], "is 10x10 pixels but the model makes 8x8"),
             (["--ckpt", d, "--mask", str(files / "black.png")], "no white pixel"),
             (["--ckpt", str(files / "one"), "--mask", str(files / "mask.png")], "oneshot models cannot inpaint")]
    for args, msg in cases:
        assert main(["inpaint", "--image", str(files / "in.png"), *args, "--out", str(files / "x.png")]) == 2
        assert msg in capsys.readouterr().err, args
    assert main(["inpaint", "--ckpt", d, "--image", str(files / "big.png"), "--mask", str(files / "mask.png")]) == 2
    assert "is 10x10 pixels" in capsys.readouterr().err
