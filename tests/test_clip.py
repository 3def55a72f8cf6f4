"""CLIP guidance (GLIDE sec. 2.4): a noise-aware CLIP trained by the loop on noised shapes, its guidance wrapper
(scale 0 is the plain denoiser; the shift follows the similarity's gradient), and the checks that a CLIP of
another schedule, vocabulary or image size is a clear error."""
import types

import pytest
import torch

import genlab.api as api
from genlab.cli import main
from genlab.diffusion import Schedule
from genlab.diffusion.denoiser import Denoiser
from genlab.diffusion.guidance import ClipGuidance
from genlab.nn.clip import NoisyCLIP
from genlab.nn.text import Tokenizer

from conftest import randomize

CAPS = ["a red circle in the top left", "a big blue box", "green cross center"]
TINY_CLIP = ["data.image_size=16", "model.width=8", "model.channel_mults=[1,2]", "model.num_heads=2",
             "model.text_width=16", "model.text_layers=1", "clip.embed_dim=8", "diffusion.timesteps=100",
             "train.batch_size=16", "train.time_budget=null", "train.max_steps=4", "train.warmup_steps=1",
             "train.val_every=0", "train.num_threads=1"]
TINY_GEN = ["data.name=shapes", "data.image_size=16", "model.width=8", "model.channel_mults=[1,2]",
            "model.num_res_blocks=1", "model.attn_resolutions=[8]", "model.num_heads=2", "model.text_cond=true",
            "model.text_width=16", "model.text_layers=1", "diffusion.timesteps=100", "train.batch_size=16",
            "train.time_budget=null", "train.max_steps=2", "train.warmup_steps=1", "train.val_every=0",
            "train.num_threads=1", "sample.steps=3", "sample.n=4"]


def tiny_clip():
    torch.manual_seed(0)
    tok = Tokenizer.from_captions(CAPS)
    net = NoisyCLIP(tok, in_channels=3, image_size=8, embed_dim=8, width=8, channel_mults=(1, 2), text_width=16,
                    text_layers=1, heads=2)
    return randomize(net, std=0.3), tok


@pytest.fixture
def parts():
    sched = Schedule.create("cosine", 100)
    clip, tok = tiny_clip()
    net = randomize(torch.nn.Conv2d(3, 3, 3, padding=1))

    def eps_net(x, t, *a):
        return net(x)

    den = Denoiser(eps_net, sched, "eps", clip=False)
    return sched, clip, tok, den


def test_clip_guidance_at_scale_zero_is_the_plain_denoiser(parts):
    sched, clip, tok, den = parts
    x, t = torch.randn(3, 3, 8, 8), torch.tensor(40)
    with torch.no_grad():
        g = ClipGuidance(den, clip, sched, tok.encode(CAPS), 0.0, clip_x0=False)(x, t)
        p = den(x, t)
    assert all(torch.equal(a, b) for a, b in zip(g, p))


def test_clip_guidance_shifts_eps_along_the_similarity_gradient(parts):
    sched, clip, tok, den = parts
    x, t, s = torch.randn(3, 3, 8, 8), torch.tensor(40), 2.5
    tokens = tok.encode(CAPS)
    with torch.no_grad():
        x0, eps = ClipGuidance(den, clip, sched, tokens, s, clip_x0=False)(x, t)
        _, eps0 = den(x, t)
    xr = x.clone().requires_grad_(True)
    tt = t.expand(3)
    sim = (clip.encode_image(xr, tt) * clip.encode_text(tokens)).sum()
    (grad,) = torch.autograd.grad(sim, xr)
    ab = sched.alpha_bar_at(tt).view(-1, 1, 1, 1).float()
    assert torch.allclose(eps, eps0 - s * (1 - ab).sqrt() * grad, atol=1e-5)
    assert not torch.allclose(eps, eps0)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("clip")
    assert main(["train", "--config", "shapes_clip", *TINY_CLIP, "--name", "clip", "--runs-dir", str(root),
                 "--no-progress"]) == 0
    assert main(["train", "--config", "shapes_text", *TINY_GEN, "--name", "gen", "--runs-dir", str(root),
                 "--no-progress"]) == 0
    return root


def test_clip_trains_and_guides_a_text_model_from_the_command_line(runs, capsys):
    run = api.load_run(runs / "clip")
    assert run.config.method == "clip" and run.state["step"] == 4
    from genlab.data import load_dataset, to_model

    ds = load_dataset("shapes", "test", image_size=16)
    acc = run.method.retrieval_accuracy(run.model, to_model(ds.x[:16], 256), ds.captions[:16], t=10)
    assert 0.0 <= acc <= 1.0
    out = runs / "guided.png"
    assert main(["sample", "--ckpt", str(runs / "gen"), "--clip", str(runs / "clip"), "--clip-scale", "5",
                 "--prompt", "a red circle", "--n", "4", "--steps", "3", "--out", str(out)]) == 0
    assert out.exists() and "wrote" in capsys.readouterr().out
    a, _, _ = api.sample(runs / "gen", n=2, steps=3, prompt="a red circle", clip=runs / "clip", clip_scale=0.0,
                         progress=False)
    b, _, _ = api.sample(runs / "gen", n=2, steps=3, prompt="a red circle", progress=False)
    assert torch.equal(a, b), "CLIP guidance at scale 0 leaves the samples as they were"
    c, _, _ = api.sample(runs / "gen", n=2, steps=3, prompt="a red circle", clip=runs / "clip", clip_scale=50.0,
                         progress=False)
    assert not torch.equal(b, c)


def test_clip_errors(runs, tmp_path, capsys):
    gen = api.load_run(runs / "gen")
    with pytest.raises(ValueError, match="another noise schedule.*diffusion.timesteps 100 vs 50"):
        api.load_clip(runs / "clip", api.resolve_config("shapes_text", TINY_GEN + ["diffusion.timesteps=50"]),
                      generator=gen.model)
    other = types.SimpleNamespace(out_channels=3, image_size=16,
                                  text=types.SimpleNamespace(tokenizer=Tokenizer(["red", "square"], 4)))
    with pytest.raises(ValueError, match="another caption vocabulary.*only the CLIP knows"):
        api.load_clip(runs / "clip", gen.config, generator=other)
    with pytest.raises(ValueError, match="sees 3x16x16 images and the generator draws 1x8x8"):
        api.load_clip(runs / "clip", gen.config, generator=types.SimpleNamespace(out_channels=1, image_size=8))
    with pytest.raises(ValueError, match="not a noise-aware CLIP"):
        api.load_clip(runs / "gen", gen.config)
    with pytest.raises(ValueError, match="give --prompt"):
        api.sample(runs / "gen", n=2, steps=3, clip=runs / "clip", progress=False)
    with pytest.raises(ValueError, match="--clip-scale needs --clip"):
        api.sample(runs / "gen", n=2, steps=3, prompt="a red circle", clip_scale=3.0, progress=False)
    assert main(["sample", "--ckpt", str(runs / "clip"), "--n", "2", "--out", str(tmp_path / "x.png")]) == 2
    assert "guides a diffusion model" in capsys.readouterr().err
