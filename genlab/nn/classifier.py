"""A noise-aware image classifier for classifier guidance (Dhariwal & Nichol 2021, sec. 4.1: the UNet's
downsampling half with the time embedding, then pooling to class logits): ``NoisyClassifier(x_t, t) -> (N, K)``."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .unet import ResBlock, norm_groups, timestep_embedding


class NoisyClassifier(nn.Module):
    def __init__(self, in_channels: int = 1, image_size: int = 8, num_classes: int = 10, width: int = 32,
                 channel_mults: Sequence[int] = (1, 2), num_res_blocks: int = 1, dropout: float = 0.0):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
        self.in_channels, self.image_size, self.num_classes, self.width = in_channels, image_size, num_classes, width
        self.factor = 2 ** (len(channel_mults) - 1)
        emb_dim = 4 * width
        self.time_mlp = nn.Sequential(nn.Linear(width, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.conv_in = nn.Conv2d(in_channels, width, 3, padding=1)
        blocks, ch = [], width
        for level, m in enumerate(channel_mults):
            for _ in range(num_res_blocks):
                blocks.append(ResBlock(ch, width * m, emb_dim, dropout))
                ch = width * m
            if level < len(channel_mults) - 1:
                blocks.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.GroupNorm(norm_groups(ch), ch)
        self.head = nn.Linear(ch, num_classes)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device)
        t = t.expand(x.shape[0]) if t.dim() == 0 else t
        emb = self.time_mlp(timestep_embedding(t, self.width).to(self.time_mlp[0].weight.dtype))
        pad = (-x.shape[-1]) % self.factor
        if pad:
            x = F.pad(x, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))
        h = self.conv_in(x)
        for m in self.blocks:
            h = m(h, emb) if isinstance(m, ResBlock) else m(h)
        return self.head(F.silu(self.norm(h)).mean(dim=(2, 3)))
