"""A UNet for denoising diffusion (Ronneberger et al. 2015, as adapted by DDPM, Ho et al. 2020, appendix B, and
improved DDPM / ADM, Dhariwal & Nichol 2021): residual blocks with group norm and a scale-shift time embedding,
optional self-attention at chosen resolutions, a class embedding with a "null" class for classifier-free guidance,
and text conditioning as in GLIDE (Nichol et al. 2022): a caption encoder's pooled state is added to the time
embedding and its token states are appended to the keys and values of every attention layer.

Padding rule: a side that is not divisible by 2 ** (len(channel_mults) - 1) (the total downsampling) is padded
with zeros, evenly on both sides (the extra pixel, if odd, at the end), to the next multiple, and the output is
cropped back. So 8x8, 32x32 and 64x64 run as they are with up to 4 levels, and 28x28 runs as is with 3 levels
(28 -> 14 -> 7) and is padded to 32x32 with 4.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .text import Conditioned


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps (Vaswani et al. 2017, sec. 3.5; DDPM appendix B)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def norm_groups(ch: int) -> int:
    """Largest group count <= 32 dividing ch with at least 4 channels per group (GroupNorm, Wu & He 2018)."""
    g = 32
    while g > 1 and (ch % g or ch // g < 4):
        g //= 2
    return g


class ResBlock(nn.Module):
    """GN-SiLU-conv, scale-shift by the embedding (improved DDPM / ADM "AdaGN"), GN-SiLU-dropout-conv, residual."""

    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(norm_groups(cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)
        self.norm2 = nn.GroupNorm(norm_groups(cout), cout)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.drop(F.silu(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head self-attention over the pixels of a feature map (Vaswani et al. 2017), pre-norm, residual.
    q, k, v are laid out (batch, heads, pixels, head_dim) contiguously so PyTorch can use its fused kernel.
    With ``ctx_dim``, the caption's token states (projected) are appended to the keys and values (GLIDE), so
    every pixel also attends to the words; padding tokens are masked out."""

    def __init__(self, ch: int, num_heads: int = 4, ctx_dim: int = 0):
        super().__init__()
        while ch % num_heads:
            num_heads -= 1
        self.heads = num_heads
        self.norm = nn.GroupNorm(norm_groups(ch), ch)
        self.qkv = nn.Linear(ch, 3 * ch)
        self.proj = nn.Linear(ch, ch)
        self.ctx_kv = nn.Linear(ctx_dim, 2 * ch) if ctx_dim else None
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, ctx=None) -> torch.Tensor:
        """ctx: (token states (b, L, ctx_dim), padding (b, L) bool) of a caption, or None."""
        b, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # b, hw, c
        q, k, v = self.qkv(tokens).reshape(b, h * w, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        mask = None
        if self.ctx_kv is not None and ctx is not None:
            states, pad = ctx
            ck, cv = self.ctx_kv(states).reshape(b, -1, 2, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
            k, v = torch.cat([k, ck], dim=2), torch.cat([v, cv], dim=2)
            mask = torch.cat([torch.ones(b, h * w, dtype=torch.bool, device=x.device), ~pad], 1)[:, None, None]
        out = F.scaled_dot_product_attention(q.contiguous(), k.contiguous(), v.contiguous(), attn_mask=mask)
        out = self.proj(out.transpose(1, 2).reshape(b, h * w, c))
        return x + out.transpose(1, 2).reshape(b, c, h, w)


class UNet(Conditioned, nn.Module):
    """``UNet(x_t, t, y=None) -> prediction`` of the same shape as x_t (``out_channels`` channels).

    width: channels at full resolution; level i has width * channel_mults[i] channels and runs at
    image_size / 2**i. attn_resolutions: the (padded) side lengths at which self-attention is used.
    num_classes > 0 adds a class embedding with num_classes + 1 rows, the last one the "null" class used
    when y is None (or y == num_classes) for classifier-free guidance (Ho & Salimans 2022).
    text_encoder (a :class:`~genlab.nn.text.TextEncoder`): y is then caption tokens (N, L) instead of labels, and
    the empty caption is the null condition. ``in_channels`` may exceed ``out_channels`` when the input carries
    conditioning images (a low-resolution image, an inpainting mask) concatenated to x_t.
    """

    def __init__(self, in_channels: int = 1, image_size: int = 8, width: int = 32,
                 channel_mults: Sequence[int] = (1, 2), num_res_blocks: int = 2,
                 attn_resolutions: Sequence[int] = (4,), num_heads: int = 4, dropout: float = 0.0,
                 num_classes: int = 0, out_channels: Optional[int] = None, text_encoder: Optional[nn.Module] = None):
        super().__init__()
        if num_classes and text_encoder is not None:
            raise ValueError("a UNet is conditioned on class labels or on captions, not both")
        self.in_channels, self.image_size, self.num_classes = in_channels, image_size, num_classes
        self.out_channels = out_channels or in_channels
        self.text = text_encoder
        ctx = text_encoder.width if text_encoder is not None else 0
        self.factor = 2 ** (len(channel_mults) - 1)
        self.padded = math.ceil(image_size / self.factor) * self.factor
        emb_dim = 4 * width
        self.time_mlp = nn.Sequential(nn.Linear(width, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.width = width
        self.class_emb = nn.Embedding(num_classes + 1, emb_dim) if num_classes > 0 else None
        self.text_pool = nn.Linear(ctx, emb_dim) if ctx else None

        self.conv_in = nn.Conv2d(in_channels, width, 3, padding=1)
        chans = [width * m for m in channel_mults]
        self.down = nn.ModuleList()
        skips = [width]
        ch, res = width, self.padded
        for level, cout in enumerate(chans):
            for _ in range(num_res_blocks):
                blocks = nn.ModuleList([ResBlock(ch, cout, emb_dim, dropout)])
                if res in attn_resolutions:
                    blocks.append(Attention(cout, num_heads, ctx))
                self.down.append(blocks)
                ch = cout
                skips.append(ch)
            if level < len(chans) - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(ch, ch, 3, stride=2, padding=1)]))
                skips.append(ch)
                res //= 2
        self.mid = nn.ModuleList([ResBlock(ch, ch, emb_dim, dropout), Attention(ch, num_heads, ctx),
                                  ResBlock(ch, ch, emb_dim, dropout)])
        self.up = nn.ModuleList()
        for level, cout in reversed(list(enumerate(chans))):
            for _ in range(num_res_blocks + 1):
                blocks = nn.ModuleList([ResBlock(ch + skips.pop(), cout, emb_dim, dropout)])
                if res in attn_resolutions:
                    blocks.append(Attention(cout, num_heads, ctx))
                self.up.append(blocks)
                ch = cout
            if level > 0:
                self.up.append(nn.ModuleList([nn.Upsample(scale_factor=2, mode="nearest"),
                                              nn.Conv2d(ch, ch, 3, padding=1)]))
                res *= 2
        self.norm_out = nn.GroupNorm(norm_groups(ch), ch)
        self.conv_out = nn.Conv2d(ch, self.out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def embed(self, t: torch.Tensor, y: Optional[torch.Tensor], n: int):
        """(embedding (n, emb_dim), caption context for the attention layers or None)."""
        emb = timestep_embedding(t.expand(n) if t.dim() == 0 else t, self.width)
        emb = self.time_mlp(emb.to(self.time_mlp[0].weight.dtype))
        if self.text is not None:
            if y is None:
                y = self.text.tokenizer.null(n).to(emb.device)
            states, pooled, pad = self.text(y)
            return emb + self.text_pool(pooled), (states, pad)
        if self.class_emb is not None:
            if y is None:
                y = torch.full((n,), self.num_classes, device=emb.device, dtype=torch.long)
            emb = emb + self.class_emb(y)
        return emb, None

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        h0, w0 = x.shape[-2:]
        ph, pw = (-h0) % self.factor, (-w0) % self.factor
        if ph or pw:
            x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        emb, ctx = self.embed(torch.as_tensor(t, device=x.device), y, x.shape[0])

        def run(m, h):
            if isinstance(m, ResBlock):
                return m(h, emb)
            return m(h, ctx) if isinstance(m, Attention) else m(h)

        h = self.conv_in(x)
        hs = [h]
        for blocks in self.down:
            for m in blocks:
                h = run(m, h)
            hs.append(h)
        for m in self.mid:
            h = run(m, h)
        for blocks in self.up:
            if isinstance(blocks[0], ResBlock):
                h = torch.cat([h, hs.pop()], dim=1)
            for m in blocks:
                h = run(m, h)
        out = self.conv_out(F.silu(self.norm_out(h)))
        if ph or pw:
            out = out[..., ph // 2: ph // 2 + h0, pw // 2: pw // 2 + w0]
        return out
