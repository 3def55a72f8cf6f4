"""Conditioning images concatenated to x_t: a low-resolution image (super-resolution) and a mask with the masked
image (GLIDE-style inpainting). Pure functions build the extra input channels; :class:`WithImage` binds them to a
network so it is again a plain ``net(x_t, t, y)`` for :class:`~genlab.diffusion.denoiser.Denoiser`, guidance
and every sampler.

- Super-resolution (cascaded diffusion, Ho et al. 2022, "Cascaded Diffusion Models", sec. 3 and 4.2; SR3, Saharia
  et al. 2021): the low-resolution image z is noised to level s ("conditioning augmentation", CDM sec. 3.2:
  z_s = sqrt(alpha_bar_s) z + sqrt(1 - alpha_bar_s) eps'), upsampled bicubically to the output size, and given
  with the level s / T as one constant channel, so at sampling a small s makes the upsampler robust to a base
  model's artifacts.
- Inpainting model (GLIDE, Nichol et al. 2022, sec. 3.4): four (or two for grayscale) extra channels, the known
  image (zero where unknown) and the mask (+1 known, -1 unknown); trained on random masks.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def extra_channels(kind: str, channels: int) -> int:
    """Input channels the conditioning adds to a C-channel image."""
    return {"none": 0, "lowres": channels + 1, "mask": channels + 1}[kind]


def downsample(x: torch.Tensor, size: int) -> torch.Tensor:
    """Area (box-filter) downsampling to size x size: what a camera or a cheap resize does."""
    return F.interpolate(x, size=(size, size), mode="area")


def upsample_bicubic(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bicubic upsampling to size x size, clamped to [-1, 1]: the baseline the upsampler must beat."""
    return F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)


def lowres_input(lowres: torch.Tensor, size: int, ab_s: torch.Tensor, noise: torch.Tensor,
                 level: torch.Tensor) -> torch.Tensor:
    """Extra channels of the upsampler: the noise-augmented low-res image, upsampled, and its level s/T.

    lowres (N, C, h, w) in [-1, 1]; ab_s (N,) alpha_bar of the augmentation level (1: none); noise like lowres;
    level (N,) s / T in [0, 1]."""
    ab = ab_s.view(-1, 1, 1, 1).to(lowres.device, lowres.dtype)
    noisy = ab.sqrt() * lowres + (1 - ab).sqrt() * noise
    up = F.interpolate(noisy, size=(size, size), mode="bicubic", align_corners=False)
    return torch.cat([up, level.view(-1, 1, 1, 1).to(up.device, up.dtype).expand(-1, 1, size, size)], dim=1)


def mask_input(known: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Extra channels of the inpainting model: the known image (0 where unknown) and the mask (+1 known, -1 not).

    known (N, C, H, W); mask bool (N, 1 or C, H, W), True = known (a pixel counts as known if all channels are)."""
    m = mask.all(dim=1, keepdim=True) if mask.shape[1] > 1 else mask
    return torch.cat([known * m, m.to(known.dtype) * 2 - 1], dim=1)


def random_masks(u: torch.Tensor, size: int) -> torch.Tensor:
    """Training masks (N, 1, size, size), True = known, from uniforms u (N, 6): a random rectangle of 1/4 to
    3/4 of each side is unknown (half of the time), or one of the four half images (a quarter), or the whole image
    (an eighth: the unconditional case) or nothing (an eighth: reconstruction)."""
    n = u.shape[0]
    ii = torch.arange(size, device=u.device).view(1, size, 1)
    jj = torch.arange(size, device=u.device).view(1, 1, size)
    hh = (size * (0.25 + 0.5 * u[:, 0])).round().clamp(1, size)
    ww = (size * (0.25 + 0.5 * u[:, 1])).round().clamp(1, size)
    top = ((size - hh + 1) * u[:, 2]).floor().clamp(max=size - 1)
    left = ((size - ww + 1) * u[:, 3]).floor().clamp(max=size - 1)
    rect = ((ii >= top.view(-1, 1, 1)) & (ii < (top + hh).view(-1, 1, 1))
            & (jj >= left.view(-1, 1, 1)) & (jj < (left + ww).view(-1, 1, 1)))
    side = (u[:, 5] * 4).long().clamp(max=3).view(-1, 1, 1)
    half = size // 2
    halves = torch.where(side == 0, ii < half, torch.where(side == 1, ii >= half,
                         torch.where(side == 2, jj < half, jj >= half)))
    kind = u[:, 4].view(-1, 1, 1)
    unknown = torch.where(kind < 0.5, rect, torch.where(kind < 0.75, halves,
                          torch.where(kind < 0.875, torch.ones_like(rect), torch.zeros_like(rect))))
    return (~unknown).view(n, 1, size, size)


class WithImage(torch.nn.Module):
    """``net`` with extra input channels bound: ``WithImage(net, extra)(x_t, t, y) = net(cat(x_t, extra), t, y)``.

    When the batch is a multiple of ``extra``'s (classifier-free guidance runs conditional and unconditional
    halves in one batch), ``extra`` is repeated to match."""

    def __init__(self, net, extra: torch.Tensor):
        super().__init__()
        self.net, self.extra = net, extra

    def forward(self, x: torch.Tensor, t, y=None) -> torch.Tensor:
        e = self.extra.to(x.device, x.dtype)
        if x.shape[0] != e.shape[0]:
            reps = x.shape[0] // e.shape[0]
            if reps * e.shape[0] != x.shape[0]:
                raise ValueError(f"batch {x.shape[0]} is not a multiple of the conditioning images' {e.shape[0]}")
            e = e.repeat(reps, 1, 1, 1)
        inp = torch.cat([x, e], dim=1)
        return self.net(inp, t, y) if y is not None else self.net(inp, t)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("net"), name)


def augmentation(alphas_cumprod: torch.Tensor, frac: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Conditioning-augmentation levels given as fractions of T (N,): the timestep floor(frac T) - 1 (-1: no
    noise) as (alpha_bar (N,), 1 where no noise; level (N,) = (timestep + 1) / T, the value of the level
    channel). The one mapping used by training (random fractions) and sampling (``sample.lowres_t``)."""
    T = len(alphas_cumprod)
    idx = (frac * T).floor().long() - 1
    ab = alphas_cumprod.to(frac.device)[idx.clamp(min=0)]
    return torch.where(idx >= 0, ab, torch.ones_like(ab)), (idx + 1).float() / T
