"""A decoder-only causal transformer over the sub-pixels of an image (Vaswani et al. 2017; GPT, Radford et al.
2018/2019; laid out like nanoGPT), with a key/value cache for sampling one sub-pixel at a time.

Sequence: the D = C * H * W sub-pixels in raster order, then channels within a pixel, i.e. sub-pixel (c, i, j) is
position p = (i * W + j) * C + c. The input at position p is the embedding of the level of sub-pixel p - 1 (a
learned start token at p = 0) plus a learned embedding of p; the output at p is the L logits of sub-pixel p.
Causal self-attention makes the output at p depend on the levels of sub-pixels < p only.

Class conditioning (num_classes > 0): an embedding with num_classes + 1 rows, the last one the "null" class used
when y is None (classifier-free guidance, Ho & Salimans 2022), added to the input of every position.
Text conditioning (``text_encoder``, GLIDE-style as in the UNet): y is caption tokens; the encoder's pooled state
is added to every position's input and each block cross-attends from every position to the token states (the
caption is given whole, so this keeps the model causal in the pixels). The sampling cache holds the caption's
states, computed once.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .text import Conditioned


@dataclass
class KVCache:
    """Keys and values of every layer, preallocated as (n, heads, D, head_dim), filled for positions < ``pos``."""
    k: List[torch.Tensor]
    v: List[torch.Tensor]
    pos: int = 0
    ctx: Optional[tuple] = None      # a text model's (pooled bias, token states, padding), set at position 0


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where position p attends to positions <= p (Vaswani et al. 2017, sec. 3.2)."""

    def __init__(self, width: int, heads: int, dropout: float = 0.0):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.resid_drop = nn.Dropout(dropout)

    def qkv_heads(self, x: torch.Tensor):
        """(n, t, width) -> q, k, v each (n, heads, t, head_dim)."""
        n, t, _ = x.shape
        return self.qkv(x).view(n, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4)

    def merge(self, y: torch.Tensor) -> torch.Tensor:
        n, _, t, _ = y.shape
        return self.resid_drop(self.proj(y.transpose(1, 2).reshape(n, t, -1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv_heads(x)
        # no dropout on the attention probabilities: on CPUs drawing that (n, heads, D, D) mask cost a quarter
        # of a training step; dropout stays on the embeddings and the residual branches
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.merge(y)

    def step(self, x: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, p: int) -> torch.Tensor:
        """x (n, 1, width) at position p: store its key and value at p, attend over positions 0..p."""
        q, k, v = self.qkv_heads(x)
        k_cache[:, :, p:p + 1] = k
        v_cache[:, :, p:p + 1] = v
        return self.merge(F.scaled_dot_product_attention(q, k_cache[:, :, :p + 1], v_cache[:, :, :p + 1]))


class CrossAttention(nn.Module):
    """Every position attends to a caption's token states (padding masked out)."""

    def __init__(self, width: int, heads: int, ctx_dim: int, dropout: float = 0.0):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(ctx_dim, 2 * width)
        self.proj = nn.Linear(width, width)
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, states: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        n, t, w = x.shape
        q = self.q(x).view(n, t, self.heads, -1).transpose(1, 2)
        k, v = self.kv(states).view(n, states.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=~pad[:, None, None, :])
        return self.resid_drop(self.proj(y.transpose(1, 2).reshape(n, t, w)))


class Block(nn.Module):
    """Pre-LN transformer block (GPT-2): x + attn(ln(x)), [x + cross_attn(ln(x), caption)], then x + mlp(ln(x))
    with a 4x GELU MLP."""

    def __init__(self, width: int, heads: int, dropout: float = 0.0, ctx_dim: int = 0):
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads, dropout)
        self.ln_x = nn.LayerNorm(width) if ctx_dim else None
        self.xattn = CrossAttention(width, heads, ctx_dim, dropout) if ctx_dim else None
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width),
                                 nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, ctx=None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        if self.xattn is not None:
            x = x + self.xattn(self.ln_x(x), *ctx)
        return x + self.mlp(self.ln2(x))

    def step(self, x: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, p: int, ctx=None) -> torch.Tensor:
        x = x + self.attn.step(self.ln1(x), k_cache, v_cache, p)
        if self.xattn is not None:
            x = x + self.xattn(self.ln_x(x), *ctx)
        return x + self.mlp(self.ln2(x))


class PixelTransformer(Conditioned, nn.Module):
    """``PixelTransformer(x, y=None) -> logits (N, C, L, H, W)`` for x (N, C, H, W) in [-1, 1] (rounded to the L
    levels); and, for sampling, ``new_cache(n, device)`` + ``step(cache, prev_level, y)`` -> the (n, L) logits of
    the next sub-pixel, equal to the full forward's at that position."""

    def __init__(self, in_channels: int = 1, image_size: int = 8, levels: int = 17, width: int = 128,
                 layers: int = 4, heads: int = 4, dropout: float = 0.0, num_classes: int = 0,
                 text_encoder: Optional[nn.Module] = None):
        super().__init__()
        if num_classes and text_encoder is not None:
            raise ValueError("a transformer is conditioned on class labels or on captions, not both")
        self.in_channels, self.image_size, self.levels, self.num_classes = in_channels, image_size, levels, num_classes
        self.seq_len = in_channels * image_size * image_size
        self.width, self.heads = width, heads
        self.tok_emb = nn.Embedding(levels, width)
        self.start = nn.Parameter(torch.zeros(width))
        self.pos_emb = nn.Parameter(torch.zeros(self.seq_len, width))
        self.class_emb = nn.Embedding(num_classes + 1, width) if num_classes > 0 else None
        self.drop = nn.Dropout(dropout)
        ctx = text_encoder.width if text_encoder is not None else 0
        self.blocks = nn.ModuleList(Block(width, heads, dropout, ctx) for _ in range(layers))
        self.ln_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, levels)

        # GPT-2 init: N(0, 0.02), residual projections scaled by 1/sqrt(2 * layers)
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif "ln" not in name and not name.startswith("text."):
                std = 0.02 / math.sqrt(2 * layers) if name.endswith(("attn.proj.weight", "mlp.2.weight")) else 0.02
                nn.init.normal_(p, std=std)
        # after the init loop: the text encoder keeps its own initialization
        self.text = text_encoder
        self.text_pool = nn.Linear(ctx, width) if ctx else None

    def caption(self, y: Optional[torch.Tensor], n: int, device):
        """(pooled bias (n, width), token states, padding) of caption tokens y (the empty caption when None)."""
        if y is None:
            y = self.text.tokenizer.null(n)
        states, pooled, pad = self.text(y.to(device))
        return self.text_pool(pooled), states, pad

    def to_levels(self, x: torch.Tensor) -> torch.Tensor:
        """Model-space floats in [-1, 1] to integer levels 0..L-1."""
        return torch.round((x + 1) / 2 * (self.levels - 1)).clamp(0, self.levels - 1).long()

    def class_bias(self, y: Optional[torch.Tensor], n: int, device) -> torch.Tensor:
        """(n, width) class embedding, of the null class when y is None (only when num_classes > 0)."""
        if y is None:
            y = torch.full((n,), self.num_classes, device=device, dtype=torch.long)
        return self.class_emb(y)

    def forward(self, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        n, c, hh, ww = x.shape
        seq = self.to_levels(x).permute(0, 2, 3, 1).reshape(n, self.seq_len)  # position (i*W + j)*C + c
        tok = torch.cat([self.start.expand(n, 1, -1), self.tok_emb(seq[:, :-1])], dim=1)  # shifted right by one
        h = tok + self.pos_emb
        ctx = None
        if self.class_emb is not None:
            h = h + self.class_bias(y, n, x.device)[:, None]
        elif self.text is not None:
            bias, states, pad = self.caption(y, n, x.device)
            h, ctx = h + bias[:, None], (states, pad)
        h = self.drop(h)
        for block in self.blocks:
            h = block(h, ctx)
        logits = self.head(self.ln_f(h))  # n, D, L
        return logits.view(n, hh, ww, c, self.levels).permute(0, 3, 4, 1, 2)

    def new_cache(self, n: int, device=None) -> KVCache:
        """An empty key/value cache for n sequences (the parameters' dtype)."""
        dtype = self.pos_emb.dtype
        shape = (n, self.heads, self.seq_len, self.width // self.heads)
        return KVCache(k=[torch.zeros(shape, device=device, dtype=dtype) for _ in self.blocks],
                       v=[torch.zeros(shape, device=device, dtype=dtype) for _ in self.blocks])

    @torch.no_grad()
    def step(self, cache: KVCache, prev_level: Optional[torch.Tensor] = None,
             y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Logits (n, L) of the sub-pixel at position ``cache.pos``, given the level (n,) of the one before it
        (ignored, may be None, at position 0); appends to the cache. Sampling only: runs without autograd."""
        p = cache.pos
        if p >= self.seq_len:
            raise IndexError(f"cache is full ({self.seq_len} positions)")
        n, device = cache.k[0].shape[0], cache.k[0].device
        tok = self.start.expand(n, -1) if p == 0 else self.tok_emb(prev_level.to(device))
        h = tok + self.pos_emb[p]
        ctx = None
        if self.class_emb is not None:
            h = h + self.class_bias(y, n, device)
        elif self.text is not None:
            if cache.ctx is None:       # the caption's states, once per sequence
                cache.ctx = self.caption(y, n, device)
            h, ctx = h + cache.ctx[0], cache.ctx[1:]
        h = self.drop(h)[:, None]
        for block, k, v in zip(self.blocks, cache.k, cache.v):
            h = block.step(h, k, v, p, ctx)
        cache.pos = p + 1
        return self.head(self.ln_f(h))[:, 0]
