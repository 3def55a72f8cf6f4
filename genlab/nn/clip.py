"""A small noise-aware contrastive image-text model for CLIP guidance (GLIDE, Nichol et al. 2022, sec. 2.4: a CLIP
whose image encoder is trained on noised images x_t, so that its gradient is meaningful along the whole sampling
path).

Image tower: the downsampling half of the UNet with the time embedding (:class:`~genlab.nn.classifier.
NoisyClassifier`), its head giving an ``embed_dim`` vector; text tower: the small transformer of
:mod:`genlab.nn.text` (its start-token state) and a linear projection. Both embeddings are L2-normalized; the
image-caption score is their cosine similarity, and training logits are it times a learned temperature
exp(logit_scale), initialized to 1 / 0.07 and capped at 100 (Radford et al. 2021, "Learning Transferable Visual
Models From Natural Language Supervision", sec. 2.5).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .classifier import NoisyClassifier
from .text import TextEncoder, Tokenizer

MAX_LOGIT_SCALE = math.log(100.0)


class NoisyCLIP(nn.Module):
    def __init__(self, tokenizer: Tokenizer, *, in_channels: int, image_size: int, embed_dim: int = 64,
                 width: int = 32, channel_mults: Sequence[int] = (1, 2), num_res_blocks: int = 1,
                 text_width: int = 96, text_layers: int = 2, heads: int = 4):
        super().__init__()
        self.in_channels, self.image_size, self.embed_dim, self.num_classes = in_channels, image_size, embed_dim, 0
        self.image = NoisyClassifier(in_channels, image_size, embed_dim, width, channel_mults, num_res_blocks)
        self.text = TextEncoder(tokenizer, text_width, text_layers, heads)
        self.text_proj = nn.Linear(text_width, embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def encode_image(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Unit-norm embeddings (N, embed_dim) of noised images at timesteps t."""
        return F.normalize(self.image(x_t, t).float(), dim=-1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Unit-norm embeddings (N, embed_dim) of caption tokens."""
        return F.normalize(self.text_proj(self.text(tokens)[1]).float(), dim=-1)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, tokens: torch.Tensor):
        """(image embeddings, caption embeddings, logit scale): the logits are scale * images @ captions.T."""
        return self.encode_image(x_t, t), self.encode_text(tokens), self.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()
