"""Guidance as denoiser wrappers: each takes what a :class:`~genlab.diffusion.denoiser.Denoiser` takes and is
itself a denoiser ``(x_t, t) -> (x0_hat, eps_hat)``, so every sampler gets guidance for free (as in k-diffusion).

- :class:`ClassifierFreeGuidance` (Ho & Salimans 2022, eq. 6): eps = eps(x_t, null) + s (eps(x_t, y) -
  eps(x_t, null)); s = 1 is the plain conditional model, s = 0 the unconditional one, s > 1 trades diversity for
  fidelity to the condition. (The paper's w is s - 1.)
- :class:`ClassifierGuidance` (Dhariwal & Nichol 2021, sec. 4.2, eq. 14): eps = eps(x_t) - s sqrt(1 - alpha_bar_t)
  grad_x log p_phi(y | x_t, t) with a noise-aware classifier; s = 0 is the plain denoiser.
- :class:`ClipGuidance` (GLIDE, Nichol et al. 2022, sec. 2.4): the same shift with the classifier's log-probability
  replaced by a noise-aware CLIP's image-caption similarity f(x_t, t) . g(c), so the mean moves by
  s Sigma grad_x (f(x_t, t) . g(c)); s = 0 is the plain denoiser.

Both combine unclipped predictions and clip x0_hat afterwards (then eps_hat is recomputed from it), so a guided
prediction stays consistent with x_t.
"""
from __future__ import annotations

from typing import Callable

import torch

from .denoiser import Denoiser
from .process import eps_from_x0, x0_from_eps
from .schedules import Schedule


def _alpha_bar(schedule: Schedule, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return schedule.alpha_bar_at(t.cpu()).to(like.dtype).to(like.device)


class ClassifierFreeGuidance:
    """Guided denoiser from one network trained with condition dropout (labels replaced by ``null`` at random).
    ``y``: labels (N,) with ``null`` the null class, or caption tokens (N, L) with ``null`` the empty caption's
    tokens (a tensor broadcastable to y).

    Each call evaluates the network twice per sample (conditional and unconditional, in one batch), except at
    scale 1 (conditional only) and 0 (unconditional only); ``evals_per_call`` says which."""

    def __init__(self, net, schedule: Schedule, prediction: str, y: torch.Tensor, null: int, scale: float,
                 clip: bool = True):
        if y is None:
            raise ValueError("classifier-free guidance needs labels y")
        self.schedule, self.prediction, self.clip, self.scale = schedule, prediction, clip, float(scale)
        y_null = null.to(y.device).expand_as(y) if isinstance(null, torch.Tensor) else torch.full_like(y, null)
        self.cond = Denoiser(net, schedule, prediction, y=y, clip=False)
        self.uncond = Denoiser(net, schedule, prediction, y=y_null, clip=False)
        self.both = Denoiser(net, schedule, prediction, y=torch.cat([y, y_null]), clip=False)
        self.evals_per_call = 1 if self.scale in (0.0, 1.0) else 2

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.scale == 1.0:
            x0, eps = self.cond(x_t, t)
        elif self.scale == 0.0:
            x0, eps = self.uncond(x_t, t)
        else:
            t = torch.as_tensor(t, device=x_t.device).expand(x_t.shape[0])
            x0_2, eps_2 = self.both(torch.cat([x_t, x_t]), torch.cat([t, t]))
            (x0_c, x0_u), (eps_c, eps_u) = x0_2.chunk(2), eps_2.chunk(2)
            x0 = x0_u + self.scale * (x0_c - x0_u)        # the same combination in x0 and eps: weights sum to
            eps = eps_u + self.scale * (eps_c - eps_u)    # 1, so the pair stays consistent with x_t
        if self.clip:
            t = torch.as_tensor(t, device=x_t.device).expand(x_t.shape[0])
            x0 = x0.clamp(-1, 1)
            eps = eps_from_x0(x_t, x0, _alpha_bar(self.schedule, t, x_t))
        return x0, eps


class ClassifierGuidance:
    """Shift a denoiser's eps_hat along the gradient of a noise-aware classifier's log p(y | x_t, t).

    ``classifier(x_t, t) -> logits (N, K)``; ``denoiser`` should not clip (clipping happens here, after the
    shift). One extra classifier forward and backward per call; ``evals_per_call`` counts the generator only."""

    def __init__(self, denoiser: Callable, classifier: Callable, schedule: Schedule, y: torch.Tensor, scale: float,
                 clip: bool = True):
        self.denoiser, self.classifier, self.schedule = denoiser, classifier, schedule
        self.y, self.scale, self.clip = y, float(scale), clip
        self.evals_per_call = getattr(denoiser, "evals_per_call", 1)

    def grad_log_prob(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """grad_x log p(y | x_t, t), summed over the batch (each sample's gradient is its own)."""
        with torch.enable_grad():
            x = x_t.detach().requires_grad_(True)
            logits = self.classifier(x, t)
            logp = torch.log_softmax(logits if logits.dtype == torch.float64 else logits.float(), dim=-1)
            sel = logp.gather(1, self.y.view(-1, 1).to(logp.device)).sum()
            return torch.autograd.grad(sel, x)[0].to(x_t.dtype)

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x0, eps = self.denoiser(x_t, t)
        t = torch.as_tensor(t, device=x_t.device).expand(x_t.shape[0])
        ab = _alpha_bar(self.schedule, t, x_t)
        if self.scale != 0.0:
            g = self.grad_log_prob(x_t, t)
            eps = eps - self.scale * (1 - ab).sqrt().view(-1, *[1] * (x_t.dim() - 1)) * g
            x0 = x0_from_eps(x_t, eps, ab)
        if self.clip:
            x0 = x0.clamp(-1, 1)
            eps = eps_from_x0(x_t, x0, ab)
        return x0, eps


class ClipGuidance(ClassifierGuidance):
    """Shift a denoiser's eps_hat along the gradient of a noise-aware CLIP's similarity between x_t and captions.

    ``clip``: a :class:`~genlab.nn.clip.NoisyCLIP`; ``tokens``: caption tokens (N, L) in the CLIP's own
    vocabulary, one per sample (their embeddings are computed once). One CLIP image-encoder forward and backward
    per call."""

    def __init__(self, denoiser: Callable, clip, schedule: Schedule, tokens: torch.Tensor, scale: float,
                 clip_x0: bool = True):
        super().__init__(denoiser, None, schedule, None, scale, clip=clip_x0)
        self.model = clip
        with torch.no_grad():
            self.text = clip.encode_text(tokens)

    def grad_log_prob(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """grad_x of f(x_t, t) . g(c), each sample's with its own caption."""
        with torch.enable_grad():
            x = x_t.detach().requires_grad_(True)
            sim = (self.model.encode_image(x, t) * self.text.to(x.device)).sum()
            return torch.autograd.grad(sim, x)[0].to(x_t.dtype)


def guided_logits(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance for autoregressive logits: log-probabilities combined as
    log p_u + s (log p_c - log p_u) (the categorical analogue of eq. 6; renormalized by the softmax that follows)."""
    lc, lu = torch.log_softmax(cond.float(), -1), torch.log_softmax(uncond.float(), -1)
    return lu + scale * (lc - lu)
