"""Text conditioning: a word tokenizer and a small transformer text encoder trained with the generator.

GLIDE (Nichol et al. 2022, sec. 2.1 / appendix) conditions a diffusion UNet on a caption by encoding its tokens with
a transformer, adding a projection of the final (pooled) token state to the time embedding, and appending the
projected token states to the keys and values of every attention layer. :class:`TextEncoder` is that encoder;
the UNet (``genlab.nn.unet``) does the rest.

Tokens: a caption is lower-cased and split into words ``[a-z0-9]+``; ids are 0 = padding, 1 = the start token
(always present, so an empty caption is a valid input: the "null" condition of classifier-free guidance),
then the vocabulary words. Words outside the vocabulary are an error that names them, never silently dropped.
"""
from __future__ import annotations

import difflib
import re
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .captions import CaptionError, check_str as _check_str  # re-exported: genlab.nn.text.CaptionError

PAD, BOS = 0, 1
_WORD = re.compile(r"[a-z0-9]+")


class Conditioned:
    """Mixin of the backbones that take a condition y: class labels when ``num_classes > 0`` (the null class is
    ``num_classes``), or caption tokens when ``self.text`` is a text encoder (the null condition is the empty
    caption). Used by classifier-free guidance and condition dropout. (No class-level defaults: a class
    attribute ``text`` would hide the submodule nn.Module keeps in ``_modules``.)"""

    @property
    def conditional(self) -> bool:
        """Whether the network takes a condition y (labels or caption tokens)."""
        return bool(self.num_classes) or getattr(self, "text", None) is not None

    def null_like(self, y: torch.Tensor) -> torch.Tensor:
        """The null condition in the form of y: the null class, or the empty caption's tokens."""
        text = getattr(self, "text", None)
        if text is not None:
            return text.tokenizer.null(y.shape[0]).to(y.device)
        return torch.full_like(y, self.num_classes)


def split_words(caption: str) -> list[str]:
    """Lower-case words of a caption (punctuation is dropped)."""
    return _WORD.findall(caption.lower())


class Tokenizer:
    """Word-level tokenizer with a fixed vocabulary and length (start token + at most ``max_len - 1`` words)."""

    def __init__(self, words: Sequence[str], max_len: int):
        words = list(words)
        if len(set(words)) != len(words) or not all(_WORD.fullmatch(w or "") for w in words):
            raise ValueError("tokenizer words must be distinct lower-case words [a-z0-9]+")
        if max_len < 2:
            raise ValueError(f"max_len must be >= 2 (start token + one word), got {max_len}")
        self.words, self.max_len = words, int(max_len)
        self.ids = {w: i + 2 for i, w in enumerate(words)}

    @property
    def vocab_size(self) -> int:
        return len(self.words) + 2

    @classmethod
    def from_captions(cls, captions: Sequence[str], max_len: Optional[int] = None) -> "Tokenizer":
        """The vocabulary of a list of training captions; ``max_len`` defaults to the longest caption + 1."""
        if not captions:
            raise CaptionError("cannot build a vocabulary: the dataset has no captions")
        split = [split_words(_check_str(c)) for c in captions]
        words = sorted({w for s in split for w in s})
        longest = max(len(s) for s in split) + 1
        if max_len is not None and max_len < longest:
            raise CaptionError(f"a training caption has {longest - 1} words but text_max_len is {max_len}")
        return cls(words, max_len or longest)

    def to_dict(self) -> dict:
        return {"words": self.words, "max_len": self.max_len}

    @classmethod
    def from_dict(cls, d: dict) -> "Tokenizer":
        return cls(d["words"], d["max_len"])

    def encode(self, captions: Sequence[str]) -> torch.Tensor:
        """Token ids (N, max_len), int64: start token, word ids, then padding."""
        if isinstance(captions, str):
            captions = [captions]
        out = torch.full((len(captions), self.max_len), PAD, dtype=torch.long)
        out[:, 0] = BOS
        for i, c in enumerate(captions):
            words = split_words(_check_str(c))
            unknown = [w for w in words if w not in self.ids]
            if unknown:
                w = unknown[0]
                close = difflib.get_close_matches(w, self.words, n=3)
                hint = f" (did you mean {', '.join(close)}?)" if close else ""
                raise CaptionError(f"unknown word {w!r} in caption {c!r}{hint}; the model knows {len(self.words)} "
                                   f"words: {', '.join(self.words[:40])}{' ...' if len(self.words) > 40 else ''}")
            if len(words) > self.max_len - 1:
                raise CaptionError(f"caption {c!r} has {len(words)} words; this model reads at most "
                                   f"{self.max_len - 1}")
            out[i, 1:1 + len(words)] = torch.tensor([self.ids[w] for w in words], dtype=torch.long)
        return out

    def decode(self, tokens: torch.Tensor) -> list[str]:
        return [" ".join(self.words[int(t) - 2] for t in row if int(t) > BOS) for row in tokens]

    def null(self, n: int = 1) -> torch.Tensor:
        """Tokens of the empty caption (the null condition), (n, max_len)."""
        return self.encode([""] * n)


class _Block(nn.Module):
    """Pre-norm transformer encoder block (bidirectional attention over the non-padding tokens)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        n, t, w = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(n, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :])
        x = x + self.proj(y.transpose(1, 2).reshape(n, t, w))
        return x + self.mlp(self.ln2(x))


class TextEncoder(nn.Module):
    """``TextEncoder(tokens) -> (states (N, L, width), pooled (N, width), pad (N, L) bool)``.

    Token + learned position embeddings, ``layers`` transformer blocks, a final layer norm; ``pooled`` is the
    state of the start token (which attends to every word), like GLIDE's use of the last token state.
    """

    def __init__(self, tokenizer: Tokenizer, width: int = 128, layers: int = 2, heads: int = 4):
        super().__init__()
        if width % heads:
            raise ValueError(f"text width {width} is not divisible by {heads} heads")
        self.tokenizer, self.width = tokenizer, width
        self.tok = nn.Embedding(tokenizer.vocab_size, width)
        self.pos = nn.Parameter(torch.randn(tokenizer.max_len, width) * 0.02)
        self.blocks = nn.ModuleList([_Block(width, heads) for _ in range(layers)])
        self.ln = nn.LayerNorm(width)

    def forward(self, tokens: torch.Tensor):
        if tokens.dim() != 2 or tokens.shape[1] != self.tokenizer.max_len or tokens.dtype != torch.long:
            raise CaptionError(f"caption tokens must be int64 (N, {self.tokenizer.max_len}), got {tokens.dtype} "
                               f"{tuple(tokens.shape)}")
        keep = tokens != PAD
        x = self.tok(tokens) + self.pos
        for b in self.blocks:
            x = b(x, keep)
        x = self.ln(x)
        return x, x[:, 0], ~keep


def build_text_encoder(model_cfg, vocab: Optional[dict]) -> nn.Module:
    """The text encoder a ``model`` config asks for: ``learned`` (this module's TextEncoder, with the run's
    vocabulary) or ``minilm`` (the frozen pretrained sentence encoder, :mod:`genlab.nn.minilm`)."""
    if model_cfg.text_encoder == "minilm":
        from .minilm import FrozenMiniLM

        return FrozenMiniLM(max_len=model_cfg.text_max_len or 24)
    if not vocab:
        raise ValueError("a text-conditional model needs its vocabulary (built from the training captions)")
    return TextEncoder(Tokenizer.from_dict(vocab), model_cfg.text_width, model_cfg.text_layers, model_cfg.num_heads)
