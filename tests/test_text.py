"""Text conditioning: tokenizer errors, the encoder's padding mask, the UNet's caption attention, classifier-free
guidance with the empty caption, and --prompt end to end on the captioned shapes."""
import pytest
import torch
from PIL import Image

import genlab.api as api
from genlab.cli import main
from genlab.diffusion import Denoiser, Schedule
from genlab.diffusion.guidance import ClassifierFreeGuidance
from genlab.nn import UNet
from genlab.nn.text import BOS, PAD, CaptionError, TextEncoder, Tokenizer

CAPS = ["a red circle in the top left", "a big blue box", "Green cross, center!"]
# shapes at 16x16 with a tiny text UNet
TINY_TEXT = ["data.name=shapes", "data.image_size=16", "model.width=8", "model.channel_mults=[1,2]",
             "model.num_res_blocks=1", "model.attn_resolutions=[8]", "model.num_heads=2", "model.text_cond=true",
             "model.text_width=16", "model.text_layers=1", "diffusion.timesteps=100", "diffusion.cond_drop=0.2",
             "train.batch_size=16", "train.time_budget=null", "train.max_steps=3", "train.warmup_steps=1",
             "train.val_every=0", "sample.steps=3", "sample.n=4", "sample.sampler=ddim"]


def test_tokenizer_vocabulary_encoding_and_errors():
    tok = Tokenizer.from_captions(CAPS)
    assert tok.max_len == 8 and "circle" in tok.words and "green" in tok.words   # 7 words + start token
    ids = tok.encode(CAPS)
    assert ids.shape == (3, 8) and ids.dtype == torch.long and (ids[:, 0] == BOS).all()
    assert tok.decode(ids)[2] == "green cross center"
    assert ids[1, 5:].eq(PAD).all()                             # 4 words then padding
    assert torch.equal(tok.null(2), tok.encode(["", ""])) and tok.null(1)[0, 1:].eq(PAD).all()
    assert Tokenizer.from_dict(tok.to_dict()).encode(CAPS).equal(ids)
    with pytest.raises(CaptionError, match=r"unknown word 'purple' in caption 'a purple circle'"):
        tok.encode(["a purple circle"])
    with pytest.raises(CaptionError, match="did you mean circle"):
        tok.encode(["a circel"])
    with pytest.raises(CaptionError, match="has 8 words; this model reads at most 7"):
        tok.encode(["a red circle in the top left a"])
    with pytest.raises(CaptionError, match="captions must be strings, got int"):
        tok.encode([3])
    with pytest.raises(CaptionError, match="a training caption has 7 words but text_max_len is 4"):
        Tokenizer.from_captions(CAPS, max_len=4)


def test_encoder_ignores_padding_and_rejects_bad_token_shapes():
    torch.manual_seed(0)
    tok = Tokenizer.from_captions(CAPS)
    enc = TextEncoder(tok, width=16, layers=2, heads=2).eval()
    ids = tok.encode(CAPS)
    states, pooled, pad = enc(ids)
    assert states.shape == (3, 8, 16) and pooled.shape == (3, 16) and torch.equal(pad, ids == PAD)
    with torch.no_grad():                       # the padding embedding cannot reach the words
        enc.tok.weight[PAD] += 5.0
    states2, pooled2, _ = enc(ids)
    assert torch.allclose(pooled, pooled2, atol=1e-6) and torch.allclose(states[~pad], states2[~pad], atol=1e-6)
    with pytest.raises(CaptionError, match=r"caption tokens must be int64 \(N, 8\)"):
        enc(ids[:, :5])


def _text_unet():
    torch.manual_seed(0)
    tok = Tokenizer.from_captions(CAPS)
    net = UNet(in_channels=3, image_size=8, width=8, channel_mults=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
               num_heads=2, text_encoder=TextEncoder(tok, width=16, layers=1, heads=2)).eval()
    for p in net.parameters():                  # zero-initialised output layers would hide the caption
        if p.dim() > 1:
            torch.nn.init.normal_(p, std=0.2)
    return net, tok


def test_unet_attends_to_the_caption_and_the_empty_caption_is_the_null_condition():
    net, tok = _text_unet()
    x, t = torch.randn(3, 3, 8, 8), torch.tensor([5, 50, 90])
    a = net(x, t, tok.encode(CAPS))
    b = net(x, t, tok.encode([CAPS[1], CAPS[0], CAPS[2]]))
    assert a.shape == x.shape and not torch.allclose(a[0], b[0]) and torch.allclose(a[2], b[2], atol=1e-6)
    assert torch.allclose(net(x, t), net(x, t, tok.null(3)), atol=1e-6)
    assert torch.equal(net.null_like(tok.encode(CAPS)), tok.null(3)) and net.conditional


@pytest.mark.parametrize("clip", [False, True])
def test_text_cfg_reduces_to_the_plain_denoiser_at_scales_one_and_zero(clip):
    net, tok = _text_unet()
    sched = Schedule.create("cosine", 100)
    x, t, y = torch.randn(3, 3, 8, 8), torch.tensor(40), tok.encode(CAPS)
    with torch.no_grad():
        for scale, cond in ((1.0, y), (0.0, tok.null(3))):
            g = ClassifierFreeGuidance(net, sched, "v", y, net.null_like(y[:1]), scale, clip=clip)(x, t)
            p = Denoiser(net, sched, "v", y=cond, clip=clip)(x, t)
            assert all(torch.allclose(u, v, atol=1e-5) for u, v in zip(g, p))
        g = ClassifierFreeGuidance(net, sched, "v", y, net.null_like(y[:1]), 3.0, clip=False)(x, t)
        c = Denoiser(net, sched, "v", y=y, clip=False)(x, t)
        u = Denoiser(net, sched, "v", y=tok.null(3), clip=False)(x, t)
        assert torch.allclose(g[0], u[0] + 3 * (c[0] - u[0]), atol=1e-5)


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    assert main(["train", "--config", "shapes_text", *TINY_TEXT, "--name", "txt", "--runs-dir", str(root),
                 "--no-progress"]) == 0
    return root


def test_prompt_from_the_command_line(text_run, capsys):
    run, out = str(text_run / "txt"), text_run / "x.png"
    assert main(["sample", "--ckpt", run, "--prompt", "a red circle in the top left", "--guidance", "3",
                 "--n", "2", "--out", str(out)]) == 0
    assert "(6 network evaluations per sample)" in capsys.readouterr().out         # 3 steps x 2 (CFG)
    assert Image.open(out).size[0] > 16
    two = text_run / "two.png"
    assert main(["sample", "--ckpt", run, "--prompt", "a red circle in the top left", "--prompt",
                 "a large blue square in the bottom right", "--n", "6", "--out", str(two)]) == 0
    w, h = Image.open(two).size
    assert w > h                                                               # 2 rows of 3
    assert main(["sample", "--ckpt", run, "--prompt", "a red circle", "--n", "3", "--nrow", "1", "--out",
                 str(two)]) == 0
    w, h = Image.open(two).size
    assert h > 2 * w                                                           # one image per row
    x, _, _ = api.sample(run, n=4, prompt=["a red circle", "a blue square"], steps=2, progress=False)
    assert x.shape == (4, 3, 16, 16)


@pytest.mark.parametrize("args,msg", [
    (["--prompt", "a purple circle"], "unknown word 'purple'"),
    (["--prompt", "a red circle", "--class", "2"], "this model is text-conditional"),
    (["--guidance", "3"], "guidance needs a condition"),
    (["--prompt", "a", "--prompt", "b", "--prompt", "c", "--n", "2"], "3 prompts for 2 samples"),
])
def test_prompt_errors(text_run, capsys, args, msg):
    assert main(["sample", "--ckpt", str(text_run / "txt"), "--out", str(text_run / "e.png"), *args]) == 2
    assert msg in capsys.readouterr().err


def test_prompt_on_a_model_without_text_and_text_without_captions(tmp_path, capsys):
    from conftest import TINY

    assert main(["train", *TINY, "train.max_steps=1", "--name", "d", "--runs-dir", str(tmp_path),
                 "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["sample", "--ckpt", str(tmp_path / "d"), "--prompt", "a seven", "--out", str(tmp_path / "x.png")]) == 2
    assert "--prompt needs a text-conditional model" in capsys.readouterr().err
    assert main(["train", *TINY, "model.text_cond=true", "train.max_steps=1", "--name", "e", "--runs-dir",
                 str(tmp_path), "--no-progress"]) == 2
    assert "model.text_cond=true needs captions, but data 'digits' has none" in capsys.readouterr().err
    assert main(["train", *TINY, "model.text_cond=true", "model.class_cond=true", "--name", "f", "--runs-dir",
                 str(tmp_path), "--no-progress"]) == 2
    assert "exclusive" in capsys.readouterr().err


def test_text_transformer_cache_matches_the_full_forward_and_reads_the_caption():
    from genlab.nn.transformer import PixelTransformer

    torch.manual_seed(0)
    tok = Tokenizer.from_captions(CAPS)
    net = PixelTransformer(in_channels=3, image_size=3, levels=5, width=16, layers=2, heads=2,
                           text_encoder=TextEncoder(tok, width=8, layers=1, heads=2)).eval()
    x = torch.randint(0, 5, (3, 3, 3, 3)).float() / 2 - 1
    y = tok.encode(CAPS)
    with torch.no_grad():
        full = net(x, y)                                                 # (N, C, L, H, W)
        other = net(x, tok.encode([CAPS[1], CAPS[0], CAPS[2]]))
        assert not torch.allclose(full[0], other[0]) and torch.allclose(full[2], other[2], atol=1e-6)
        seq = net.to_levels(x).permute(0, 2, 3, 1).reshape(3, -1)
        cache, prev = net.new_cache(3), None
        for p in range(27):
            c, pix = p % 3, p // 3
            step = net.step(cache, prev, y)
            assert torch.allclose(step, full[:, c, :, pix // 3, pix % 3], atol=1e-5), p
            prev = seq[:, p]
        assert torch.allclose(net(x), net(x, tok.null(3)), atol=1e-6)


def test_text_conditional_transformer_end_to_end(tmp_path, capsys):
    args = ["--config", "digits_transformer", "data.name=shapes", "model.text_cond=true", "model.text_width=8",
            "model.text_layers=1", "model.num_heads=2", "ar.width=16", "ar.layers=1", "ar.heads=2",
            "diffusion.cond_drop=0.2", "train.batch_size=8", "train.time_budget=null", "train.max_steps=2",
            "train.val_every=0", "train.sample_every=0", "sample.n=2"]
    assert main(["train", *args, "--name", "art", "--runs-dir", str(tmp_path), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["sample", "--ckpt", str(tmp_path / "art"), "--prompt", "a red circle", "--guidance", "2", "--n", "2",
                 "--out", str(tmp_path / "a.png")]) == 0
    assert "(1536 network evaluations per sample)" in capsys.readouterr().out    # 768 sub-pixels x 2 (CFG)
    assert main(["train", *args, "ar.backbone=pixelcnn", "--name", "bad", "--runs-dir", str(tmp_path),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err       # every method that takes captions is named (the registry's list)
    assert "model.text_cond is implemented for method=diffusion and for method=autoregressive with " \
           "ar.backbone=transformer" in err and ", not autoregressive with ar.backbone=pixelcnn" in err
