"""A Gated PixelCNN without a blind spot (van den Oord et al. 2016, "Conditional Image Generation with PixelCNN
Decoders"), built with the shift trick of PixelCNN++ (Salimans et al. 2017) instead of masked convolutions.

Order: raster over pixels, then channels within a pixel; sub-pixel (c, i, j) is number (i * W + j) * C + c, and
the logits there depend only on earlier sub-pixels (and on the class label).

- Vertical stack: starts from ``down_shift(x)`` and only uses convolutions that see rows <= the current row
  (kernel (k//2+1, k), padded on top and on both sides). Its features at row i therefore see input rows < i.
- Horizontal stack: starts from ``right_shift(x)`` and only uses (1, k//2+1) convolutions that see columns <= the
  current one, so it sees the pixels to the left in the current row; a 1x1 link from the vertical stack at the
  same position adds everything above. Together: every earlier pixel, no blind spot.
- Channels within a pixel: both stacks see all C channels of earlier pixels only. The current pixel's channels
  < c reach channel c's logits through channel-masked 1x1 convolutions from x into the output head (see
  :class:`ChannelMasked1x1`). For C = 1 there are none.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .text import Conditioned


def down_shift(x: torch.Tensor) -> torch.Tensor:
    """Move every row one down (zeros enter at the top): row i then holds input row i - 1 (PixelCNN++)."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1, :]


def right_shift(x: torch.Tensor) -> torch.Tensor:
    """Move every column one right (zeros enter at the left): column j then holds input column j - 1."""
    return F.pad(x, (1, 0, 0, 0))[:, :, :, :-1]


def gate(t: torch.Tensor) -> torch.Tensor:
    """Gated activation tanh(a) * sigmoid(b) (van den Oord et al. 2016, eq. 2); t holds a and b along dim 1."""
    a, b = t.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


class VerticalConv(nn.Conv2d):
    """A k-wide convolution over the current row and the k//2 rows above it (never rows below)."""

    def __init__(self, cin: int, cout: int, k: int):
        super().__init__(cin, cout, (k // 2 + 1, k))
        self.pad = (k // 2, k // 2, k // 2, 0)  # left, right, top, bottom

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, self.pad))


class HorizontalConv(nn.Conv2d):
    """A one-row convolution over the current column and the k//2 columns to its left (never to the right)."""

    def __init__(self, cin: int, cout: int, k: int):
        super().__init__(cin, cout, (1, k // 2 + 1))
        self.pad = (k // 2, 0, 0, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, self.pad))


class ChannelMasked1x1(nn.Module):
    """1x1 convolution from the C channels of the current pixel to C groups of ``per`` outputs, in which group c
    sees input channels < c only (a strictly lower-triangular mask, as the "A" masks of PixelCNN, van den Oord
    et al. 2016, sec. 2.2, restricted to one pixel). Group 0 sees nothing."""

    def __init__(self, channels: int, per: int):
        super().__init__()
        bound = channels ** -0.5  # nn.Conv2d's default init range for fan-in C
        self.weight = nn.Parameter(torch.empty(channels * per, channels).uniform_(-bound, bound))
        group = torch.arange(channels).repeat_interleave(per)
        self.register_buffer("mask", (torch.arange(channels)[None, :] < group[:, None]).float(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, (self.weight * self.mask)[:, :, None, None])


class GatedLayer(nn.Module):
    """One gated layer of both stacks (van den Oord et al. 2016, fig. 2), with a class bias on both gates:

        v_pre = conv_v(v) + b_v(y);           v = v + gate(v_pre)
        h_pre = conv_h(h) + link(v_pre) + b_h(y);  g = gate(h_pre);  h = h + res(g);  skip = skip_conv(g)

    The last layer (last=True) has no ``res``: its h would feed nothing but the skip, already taken.
    """

    def __init__(self, width: int, kernel_size: int, dropout: float = 0.0, num_classes: int = 0,
                 last: bool = False):
        super().__init__()
        self.conv_v = VerticalConv(width, 2 * width, kernel_size)
        self.conv_h = HorizontalConv(width, 2 * width, kernel_size)
        self.link = nn.Conv2d(2 * width, 2 * width, 1)
        self.res = None if last else nn.Conv2d(width, width, 1)
        self.skip = nn.Conv2d(width, width, 1)
        self.drop = nn.Dropout(dropout)
        self.cond = nn.Embedding(num_classes + 1, 4 * width) if num_classes > 0 else None
        if self.cond is not None:
            nn.init.normal_(self.cond.weight, std=0.1)

    def forward(self, v: torch.Tensor, h: torch.Tensor, y: Optional[torch.Tensor]):
        v_pre = self.conv_v(v)
        h_pre = self.conv_h(h) + self.link(v_pre)  # v_pre at row i sees rows < i only: safe to add here
        if self.cond is not None:
            b_v, b_h = self.cond(y)[:, :, None, None].chunk(2, dim=1)
            v_pre, h_pre = v_pre + b_v, h_pre + b_h
        v = v + self.drop(gate(v_pre))
        g = self.drop(gate(h_pre))
        return v, h if self.res is None else h + self.res(g), self.skip(g)


class GatedPixelCNN(Conditioned, nn.Module):
    """``GatedPixelCNN(x, y=None) -> logits (N, C, L, H, W)``: a categorical over the L levels of every sub-pixel,
    each conditioned on the earlier sub-pixels of x (N, C, H, W in [-1, 1]) only.

    width: channels of both stacks; layers: gated layers; kernel_size: k (odd), the receptive field grows by k//2
    rows / columns per layer. num_classes > 0 adds, in every gated layer, a class bias from an embedding with
    num_classes + 1 rows, the last one the "null" class used when y is None (classifier-free guidance).

    Output head (on the summed skip connections): relu -> 1x1 -> relu -> 1x1, with one hidden group of ``width``
    units and one group of L logits per channel (grouped convolution). Channel c's group gets, from the current
    pixel's channels < c, a masked term into its hidden units (non-linear) and one into its logits (linear; lets
    channel c's distribution shift with the earlier channels' values, like the linear mean coupling of
    PixelCNN++, Salimans et al. 2017, eq. 3).
    """

    def __init__(self, in_channels: int = 1, image_size: int = 8, levels: int = 17, width: int = 64,
                 layers: int = 8, kernel_size: int = 5, dropout: float = 0.0, num_classes: int = 0):
        super().__init__()
        if kernel_size < 3 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and >= 3, got {kernel_size}")
        self.in_channels, self.image_size, self.levels, self.num_classes = in_channels, image_size, levels, num_classes
        c = in_channels
        self.in_v = VerticalConv(c, width, kernel_size)
        self.in_h = HorizontalConv(c, width, kernel_size)
        self.in_link = nn.Conv2d(width, width, 1)
        self.layers = nn.ModuleList(GatedLayer(width, kernel_size, dropout, num_classes, last=i == layers - 1)
                                    for i in range(layers))
        self.head_hidden = nn.Conv2d(width, c * width, 1)
        self.head_out = nn.Conv2d(c * width, c * levels, 1, groups=c)
        self.chan_hidden = ChannelMasked1x1(c, width) if c > 1 else None
        self.chan_out = ChannelMasked1x1(c, levels) if c > 1 else None

    def forward(self, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        n, c, hh, ww = x.shape
        if self.num_classes > 0 and y is None:
            y = torch.full((n,), self.num_classes, device=x.device, dtype=torch.long)
        v = self.in_v(down_shift(x))  # rows < i
        h = self.in_h(right_shift(x)) + self.in_link(v)  # + columns < j of row i
        skip = 0
        for layer in self.layers:
            v, h, s = layer(v, h, y)
            skip = skip + s
        hidden = self.head_hidden(F.relu(skip))
        if self.chan_hidden is not None:
            hidden = hidden + self.chan_hidden(x)
        logits = self.head_out(F.relu(hidden))
        if self.chan_out is not None:
            logits = logits + self.chan_out(x)
        return logits.view(n, c, self.levels, hh, ww)
