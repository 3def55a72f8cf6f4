"""Pictures from image tensors, with only numpy, Pillow and torch: sample grids, strips of the generation
process, pixels not generated yet painted in. A utility module (the bottom layer): the evaluation code
(``genlab.eval``) and the report (``genlab.report.images``, which re-exports these names) both draw with it."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image

__all__ = ["UNKNOWN_RGB", "auto_scale", "grid", "mark_unknown", "process_strip", "reveal_strip", "save_grid",
           "to_uint8"]


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Images in [-1, 1], N x C x H x W -> uint8 N x H x W x C (display levels 0..255)."""
    x = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def grid(x: torch.Tensor, nrow: Optional[int] = None, pad: int = 1, scale: int = 1,
         pad_value: int = 255) -> Image.Image:
    """Tile N images (in [-1, 1]) into one picture, nrow per row (default: square), upscaled by ``scale``
    with nearest-neighbour so small pixels stay crisp."""
    imgs = to_uint8(x)
    n, h, w, c = imgs.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / nrow)
    canvas = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), pad_value, dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, nrow)
        canvas[pad + r * (h + pad): pad + r * (h + pad) + h, pad + q * (w + pad): pad + q * (w + pad) + w] = imgs[i]
    img = Image.fromarray(canvas[..., 0] if c == 1 else canvas, mode="L" if c == 1 else "RGB")
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    return img


def auto_scale(side: int, target: int = 48) -> int:
    """Upscale factor that shows a side of ``side`` pixels at about ``target`` pixels."""
    return max(1, round(target / side))


def save_grid(x: torch.Tensor, path, nrow: Optional[int] = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid(x, nrow=nrow, scale=auto_scale(x.shape[-1])).save(path)
    return path


def process_strip(frames_xt: Sequence[torch.Tensor], frames_x0: Sequence[torch.Tensor], path,
                  max_cols: int = 12) -> Path:
    """A picture of the generation process: for each of a few samples, one row of x_t over the steps and
    one row of x0_hat (the model's current guess of the clean image) under it."""
    k = len(frames_xt)
    cols = np.unique(np.linspace(0, k - 1, min(max_cols, k)).round().astype(int))
    n = frames_xt[0].shape[0]
    rows = []
    for i in range(n):
        rows.append(torch.stack([frames_xt[c][i] for c in cols]))
        rows.append(torch.stack([frames_x0[c][i] for c in cols]))
    allx = torch.cat(rows)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid(allx, nrow=len(cols), scale=auto_scale(allx.shape[-1])).save(path)
    return path


UNKNOWN_RGB = (0.25, 0.45, 0.85)  # colour of not-yet-generated pixels in reveal strips


def mark_unknown(x: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] as RGB with every pixel that is not fully known painted in ``UNKNOWN_RGB``."""
    rgb = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
    unknown = ~known.all(dim=1, keepdim=True)
    paint = torch.tensor(UNKNOWN_RGB, dtype=rgb.dtype).view(1, 3, 1, 1) * 2 - 1
    return torch.where(unknown, paint.to(rgb.device), rgb)


def reveal_strip(frames: Sequence[dict], path, max_cols: int = 12) -> Path:
    """A picture of discrete (autoregressive) generation: one row per sample, the canvas after evenly spaced
    steps, pixels not generated yet shown in blue. ``frames``: dicts with ``x`` and ``known`` (N, C, H, W)."""
    k = len(frames)
    cols = np.unique(np.linspace(0, k - 1, min(max_cols, k)).round().astype(int))
    n = frames[0]["x"].shape[0]
    shown = [mark_unknown(frames[c]["x"].cpu(), frames[c]["known"].cpu()) for c in cols]
    allx = torch.stack([shown[j][i] for i in range(n) for j in range(len(cols))])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid(allx, nrow=len(cols), scale=auto_scale(allx.shape[-1])).save(path)
    return path
