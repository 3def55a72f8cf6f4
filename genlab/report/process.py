"""The picture of a generation process, for every method: sample a few images while recording each step, then
draw diffusion's x_t and x0_hat rows, or the canvas of the discrete methods filling in."""
from __future__ import annotations

import torch


def process_picture(method, model, n: int, path, *, y=None, seed: int = 0, **opts):
    """Sample n images while recording the process, and draw it: diffusion rows of x_t and x0_hat over the
    steps; discrete methods the canvas after evenly spaced steps, not-yet-generated pixels in blue.
    Returns (samples, evaluations per sample)."""
    from .images import process_strip, reveal_strip

    frames = []

    def record(info: dict) -> None:
        frames.append({key: v.detach().clone().cpu() if torch.is_tensor(v) else v for key, v in info.items()})

    x, nfe = method.sample(model, n, y=y, seed=seed, batch_size=n, callback=record, **opts)
    if not frames:
        raise ValueError("nothing was generated (every pixel was already known), so there is no process to draw")
    if "x_t" in frames[0]:
        process_strip([f["x_t"].clamp(-1, 1).cpu() for f in frames], [f["x0_hat"].cpu() for f in frames], path)
    else:
        start = {"x": torch.zeros_like(frames[0]["x"]), "known": torch.zeros_like(frames[0]["known"])}
        reveal_strip([start] + frames, path)
    return x, nfe
