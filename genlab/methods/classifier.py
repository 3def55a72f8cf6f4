"""A noise-aware classifier as a method, trained by the same loop, for classifier guidance (Dhariwal & Nichol
2021, sec. 4.1): the loss is the cross-entropy of p(y | x_t, t) on images noised with the diffusion schedule of
the ``diffusion`` section, which must match the generator it guides (checked when guiding)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import Config
from ..diffusion import Schedule
from ..diffusion.process import q_sample
from ..rng import StepRNG
from .base import Method, register
from .categorical import square_shape, unwrap


@register
class ClassifierMethod(Method):
    """Not a generator: ``genlab sample`` refuses it, ``--classifier`` loads it to guide a diffusion model."""
    name = "classifier"
    family = "classifier"
    label = "noise-aware classifier"
    draws_samples = False
    needs_labels = True
    guides = "diffusion"       # the method it guides (its schedule must match)

    def __init__(self, cfg: Config):
        d = cfg.diffusion
        self.cfg = cfg
        self.schedule = Schedule.from_config(d)

    def build_model(self, shape: tuple, num_classes: int = 0, levels: int = 256) -> torch.nn.Module:
        from ..nn.classifier import NoisyClassifier

        if num_classes < 2:
            raise ValueError("method=classifier needs labelled data (digits, MNIST, or a folder with "
                             "data.labels=true)")
        m = self.cfg.model
        c, h = square_shape(shape)
        return NoisyClassifier(in_channels=c, image_size=h, num_classes=num_classes, width=m.width,
                               channel_mults=tuple(m.channel_mults), num_res_blocks=m.num_res_blocks,
                               dropout=m.dropout)

    def loss(self, model, batch: dict, rng: StepRNG) -> torch.Tensor:
        """Cross-entropy of the labels from x_t at a uniform random timestep (t = 0 is nearly clean)."""
        x0, y = batch["x"], batch["y"]
        t = rng.randint(self.schedule.T)
        eps = rng.randn(*x0.shape[1:])
        x_t = q_sample(x0, self.schedule.alphas_cumprod.to(x0.device)[t], eps)
        return F.cross_entropy(model(x_t, t).float(), y)

    @torch.no_grad()
    def accuracy(self, model, x: torch.Tensor, y: torch.Tensor, t: int) -> float:
        """Accuracy on x noised to timestep t (fixed noise seed)."""
        g = torch.Generator().manual_seed(t)
        tt = torch.full((len(x),), t, dtype=torch.long, device=x.device)
        x_t = q_sample(x, self.schedule.alphas_cumprod.to(x.device)[tt],
                       torch.randn(x.shape, generator=g).to(x.device))
        return float((unwrap(model)(x_t, tt).argmax(1) == y).float().mean())

    def sample_batch(self, *a, **k):
        raise ValueError("this checkpoint is a noise-aware classifier (method=classifier): it guides a diffusion "
                         "model (genlab sample --ckpt GENERATOR --classifier THIS --classifier-scale S) but draws "
                         "no samples itself")

    def log_likelihood(self, *a, **k):
        raise ValueError("a classifier (method=classifier) has no image likelihood")
