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

Sampling cache (Ramachandran et al. 2017, "Fast Generation for Convolutional Autoregressive Models",
arXiv:1704.06001): ``new_cache(n, device)`` + ``step(cache, prev_level, y)`` give the logits of one sub-pixel at a
time, equal to the full forward's there, computing only what the new sub-pixel changes:

- the vertical stack once per row: row i of every layer needs only rows i - k//2..i of that layer's input, kept
  in a window of k//2 + 1 rows per layer (x rows < i are all known when row i starts);
- the horizontal stack once per pixel: (i, j) of every layer needs only columns j - k//2..j of that layer's
  input in row i, kept per layer for the current row; the 1x1 links, gates, residuals and skips are per pixel;
- the head once per pixel, except the channel-masked 1x1 terms: those are the only ones that change between the
  C sub-pixels of a pixel, so the trunk runs H * W times, not C * H * W.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

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


def row_matrix(conv: nn.Conv2d) -> tuple:
    """A one-row convolution (weight (out, in, 1, kw)) as (matrix (out, kw * in), bias) over a window laid out
    (columns, channels) and flattened: one ``F.linear`` computes its output at one position."""
    w = conv.weight.detach()
    return w[:, :, 0].permute(0, 2, 1).reshape(w.shape[0], -1), conv.bias.detach()


def pointwise(*convs: nn.Conv2d) -> tuple:
    """1x1 convolutions (stacked along their outputs) as (matrix (out, in), bias) for ``F.linear``."""
    return (torch.cat([c.weight.detach()[:, :, 0, 0] for c in convs]),
            torch.cat([c.bias.detach() for c in convs]))


def per_channel(m: Optional[ChannelMasked1x1], channels: int) -> List[Optional[torch.Tensor]]:
    """The masked weight of a :class:`ChannelMasked1x1` cut into its C groups of rows; None for group 0 (all
    zero) and for every group when there is no such layer (C = 1)."""
    if m is None:
        return [None] * channels
    return [None] + list((m.weight * m.mask).detach().chunk(channels)[1:])


@dataclass
class StepWeights:
    """The weights of :meth:`GatedPixelCNN.step` as matrices, made once per cache. Per layer: ``conv_h`` over the
    (k//2 + 1 columns, width) window, ``res_skip`` the res and skip 1x1s stacked (skip alone in the last layer).
    Per channel c of the head: ``head_out[c]`` its group of the grouped 1x1; ``chan_hidden[c]`` / ``chan_out[c]``
    its rows of the channel-masked 1x1s (mask applied; None for c = 0, whose rows are all zero)."""
    in_h: tuple
    conv_h: List[tuple]
    res_skip: List[tuple]
    head_hidden: tuple
    head_out: List[tuple]
    chan_hidden: List[Optional[torch.Tensor]]
    chan_out: List[Optional[torch.Tensor]]


@dataclass
class PixelCNNCache:
    """What :meth:`GatedPixelCNN.step` keeps between sub-pixels (P = k//2, W the image side, n the batch).

    x: the sub-pixels drawn so far in model space, channel-last with zero padding, (n, P + 1 + W, P + 1 + W + P, C):
       x[:, P + 1 + i, P + 1 + j] is pixel (i, j); the P + 1 zero rows on top and columns on the left are the
       padding of down_shift / right_shift followed by the convolutions'.
    v: per layer, the last P + 1 rows of that layer's vertical-stack input, padded by P columns on both sides,
       (n, width, P + 1, W + 2P).
    h: per layer, the current row of that layer's horizontal-stack input after P zero columns, (n, P + W, width).
    link, in_link: the current row's vertical-to-horizontal terms (n, W, 2 width) per layer and (n, W, width).
    hidden: the head's hidden units from the trunk at the current pixel (n, C * width).
    b_v, b_h: per layer, the class biases of both stacks (set at position 0; None without classes).
    """
    weights: StepWeights
    x: torch.Tensor
    v: List[torch.Tensor]
    h: List[torch.Tensor]
    link: List[Optional[torch.Tensor]] = field(default_factory=list)
    in_link: Optional[torch.Tensor] = None
    hidden: Optional[torch.Tensor] = None
    b_v: Optional[List[torch.Tensor]] = None
    b_h: Optional[List[torch.Tensor]] = None
    pos: int = 0


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
        self.width, self.pad = width, kernel_size // 2
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

    # ------------------------------------------------------------------ sampling cache (Ramachandran et al. 2017)
    @torch.no_grad()
    def new_cache(self, n: int, device=None) -> PixelCNNCache:
        """An empty sampling cache for n images (the parameters' dtype; the weights as they are now)."""
        dtype, device = self.in_v.weight.dtype, device or self.in_v.weight.device
        p, s, w, c = self.pad, self.image_size, self.width, self.in_channels
        zeros = lambda *shape: torch.zeros(shape, device=device, dtype=dtype)  # noqa: E731
        return PixelCNNCache(weights=self.step_weights(), x=zeros(n, p + 1 + s, p + 1 + s + p, c),
                             v=[zeros(n, w, p + 1, s + 2 * p) for _ in self.layers],
                             h=[zeros(n, p + s, w) for _ in self.layers], link=[None] * len(self.layers))

    def step_weights(self) -> StepWeights:
        """The weights as :class:`StepWeights` (detached copies in matrix form)."""
        c, L = self.in_channels, self.levels
        out_w, out_b = pointwise(self.head_out)                          # grouped: (C * L, width)
        return StepWeights(
            in_h=row_matrix(self.in_h),
            conv_h=[row_matrix(layer.conv_h) for layer in self.layers],
            res_skip=[pointwise(*([layer.skip] if layer.res is None else [layer.res, layer.skip]))
                      for layer in self.layers],
            head_hidden=pointwise(self.head_hidden),
            head_out=[(out_w[k * L:(k + 1) * L], out_b[k * L:(k + 1) * L]) for k in range(c)],
            chan_hidden=per_channel(self.chan_hidden, c), chan_out=per_channel(self.chan_out, c))

    @torch.no_grad()
    def step(self, cache: PixelCNNCache, prev_level: Optional[torch.Tensor] = None,
             y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Logits (n, L) of the sub-pixel at position ``cache.pos``, given the level (n,) of the one before it
        (ignored, may be None, at position 0), equal to ``forward``'s there. y (the null class when None) is read
        at position 0 only. Sampling only: no autograd, no dropout (eval mode)."""
        p, c, s = cache.pos, self.in_channels, self.image_size
        if p >= c * s * s:
            raise IndexError(f"cache is full ({c * s * s} positions)")
        if p > 0:
            self.write(cache, p - 1, prev_level)
        elif self.num_classes > 0:
            self.class_biases(cache, y)
        ch, (i, j) = p % c, divmod(p // c, s)
        if ch == 0:                     # a new pixel: the trunk runs once for its C sub-pixels
            if j == 0:
                self.vertical_row(cache, i)
            self.horizontal_pixel(cache, i, j)
        cache.pos = p + 1
        return self.head_logits(cache, ch, i, j)

    def write(self, cache: PixelCNNCache, q: int, level: torch.Tensor) -> None:
        """Store the level of sub-pixel q in model space (as ``from_levels``, in the cache's dtype)."""
        x, p = cache.x, self.pad
        ch, (i, j) = q % self.in_channels, divmod(q // self.in_channels, self.image_size)
        x[:, p + 1 + i, p + 1 + j, ch] = level.to(x.device, x.dtype) / (self.levels - 1) * 2 - 1

    def class_biases(self, cache: PixelCNNCache, y: Optional[torch.Tensor]) -> None:
        """Every layer's class biases b_v (n, 2 width, 1, 1) and b_h (n, 2 width), of the null class if y is None."""
        n, device = cache.x.shape[0], cache.x.device
        y = torch.full((n,), self.num_classes, dtype=torch.long, device=device) if y is None else y.to(device)
        bias = [layer.cond(y).chunk(2, dim=1) for layer in self.layers]
        cache.b_v, cache.b_h = [b[:, :, None, None] for b, _ in bias], [b for _, b in bias]

    def vertical_row(self, cache: PixelCNNCache, i: int) -> None:
        """Row i of the vertical stack in every layer (it sees x rows < i, all known), and the row's links."""
        p = self.pad
        window = cache.x[:, i:i + p + 1, 1:].permute(0, 3, 1, 2)           # x rows i-p-1..i-1, padded
        v = F.conv2d(window, self.in_v.weight, self.in_v.bias)            # (n, width, 1, W)
        cache.in_link = self.in_link(v)[:, :, 0].transpose(1, 2)
        for k, layer in enumerate(self.layers):
            cache.v[k] = torch.cat([cache.v[k][:, :, 1:], F.pad(v, (p, p))], dim=2)   # rows i-p..i of v
            v_pre = F.conv2d(cache.v[k], layer.conv_v.weight, layer.conv_v.bias)
            cache.link[k] = layer.link(v_pre)[:, :, 0].transpose(1, 2)   # (n, W, 2 width)
            if k + 1 < len(self.layers):                                  # the last layer's v feeds nothing
                v = v + gate(v_pre if cache.b_v is None else v_pre + cache.b_v[k])

    def horizontal_pixel(self, cache: PixelCNNCache, i: int, j: int) -> None:
        """The horizontal stack and skips at pixel (i, j) from the cached windows; sets ``cache.hidden``."""
        p, n, wts = self.pad, cache.x.shape[0], cache.weights
        window = cache.x[:, p + 1 + i, j:j + p + 1].reshape(n, -1)          # x row i, columns j-p-1..j-1
        h = F.linear(window, *wts.in_h) + cache.in_link[:, j]
        skip = 0
        for k, layer in enumerate(self.layers):
            buf = cache.h[k]
            buf[:, p + j] = h
            h_pre = F.linear(buf[:, j:j + p + 1].reshape(n, -1), *wts.conv_h[k]) + cache.link[k][:, j]
            if cache.b_h is not None:
                h_pre = h_pre + cache.b_h[k]
            out = F.linear(gate(h_pre), *wts.res_skip[k])
            if layer.res is None:
                skip = skip + out
            else:
                h, skip = h + out[:, :self.width], skip + out[:, self.width:]
        cache.hidden = F.linear(F.relu(skip), *wts.head_hidden)

    def head_logits(self, cache: PixelCNNCache, ch: int, i: int, j: int) -> torch.Tensor:
        """Channel ch's logits at pixel (i, j): its group of the head, plus the channel-masked terms from the
        pixel's channels < ch (the only part that differs between the C sub-pixels of a pixel)."""
        wts, w = cache.weights, self.width
        hidden = cache.hidden[:, ch * w:(ch + 1) * w]
        if ch == 0:
            return F.linear(F.relu(hidden), *wts.head_out[0])
        here = cache.x[:, self.pad + 1 + i, self.pad + 1 + j]               # (n, C); channels >= ch are masked
        hidden = hidden + F.linear(here, wts.chan_hidden[ch])
        return F.linear(F.relu(hidden), *wts.head_out[ch]) + F.linear(here, wts.chan_out[ch])
