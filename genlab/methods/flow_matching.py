"""Flow matching / rectified flow as a method: a velocity field trained by regression, sampled by an ODE solver.

Path (Lipman et al. 2023, "Flow Matching for Generative Modeling", the OT path with sigma_min = 0; Liu et al.
2022, "Flow Straight and Fast", rectified flow): x_t = (1 - t) x0 + t eps with t in [0, 1], t = 0 the data and
t = 1 Gaussian noise. The conditional velocity is d x_t / dt = eps - x0, and the network v(x_t, t) regresses it
(mean squared error), so at the optimum v(x, t) = E[eps - x0 | x_t = x], whose ODE dx/dt = v carries N(0, I) at
t = 1 to the data distribution at t = 0. Training times are uniform or logit-normal (Esser et al. 2024, "Scaling
Rectified Flow Transformers", SD3, sec. 3.1: t = sigmoid(m + s n), n ~ N(0, 1)).

Sampling integrates the ODE from t = 1 to 0 with the Euler, Heun or midpoint samplers of
:mod:`genlab.diffusion.samplers` (``FLOW_SAMPLERS``), through the same denoiser interface as diffusion: the
velocity becomes the pair x0_hat = x_t - t v, eps_hat = x_t + (1 - t) v. Classifier-free guidance (Ho & Salimans
2022) combines velocities, v_u + s (v_c - v_u), from one network trained with condition dropout
(``flow.cond_drop``). Conditions: class labels or captions (the same UNet as diffusion, with ``y``).

Likelihood: the instantaneous change of variables (Chen et al. 2018, "Neural ODEs"; Grathwohl et al. 2019,
FFJORD), log p_0(x_0) = log N(x_1; 0, I) + int_0^1 div v(x_t, t) dt, integrated along the ODE from the
dequantized data with a fixed-step Heun solver, the divergence from Hutchinson's trace estimator with
Rademacher probes; see :func:`ode_log_density` and :meth:`FlowMatchingMethod.log_likelihood`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from ..config import choice, num, opt
from ..diffusion import CountingDenoiser, PerSampleNoise
from ..diffusion.likelihood import _check_on_grid
from ..diffusion.samplers import FLOW_SAMPLERS, FlowPath
from ..nn import UNet
from ..rng import StepRNG
from .base import Method, register, unwrap
from .categorical import LN2, square_shape, training_condition

TIME_SAMPLINGS = ("uniform", "logit_normal")

# The UNet's sinusoidal time embedding (DDPM appendix B) has frequencies from 1 down to 1 / 10000 per unit of
# its input, made for integer DDPM timesteps 0..999: fed t in [0, 1], even its fastest sinusoid would turn by
# under one radian over the whole path and every time would look nearly alike. So the network sees t * 1000.
TIME_SCALE = 1000.0


@dataclass
class FlowConfig:
    """The ``flow`` config section (method ``flow_matching``)."""
    time_sampling: str = choice("uniform", TIME_SAMPLINGS,
                                help="training times: uniform, or logit-normal t = sigmoid(m + s n) (SD3)")
    logit_mean: float = num(0.0, -10.0, 10.0, help="logit_normal: location m")
    logit_std: float = num(1.0, 0.0, 10.0, lo_open=True, help="logit_normal: scale s")
    cond_drop: float = num(0.0, 0.0, 1.0, hi_open=True,
                           help="probability of replacing the condition by the null one (classifier-free guidance)")
    likelihood_steps: int = num(32, 1, 100_000, help="Heun steps of the likelihood's ODE integral")
    # No clipping by default: the ODE is the model's flow, the one whose likelihood is reported; clipping x0_hat
    # changes the velocity (mostly near t = 1, where x0_hat is a blurry guess) and rectified-flow / SD3 samplers do
    # not clip. The final samples are clamped to [-1, 1] either way.
    clip_sample: bool = opt(False, help="clip x0_hat to [-1, 1] while sampling (the velocity is recomputed)")


@dataclass
class FlowOptions:
    sampler: str = choice("euler", tuple(FLOW_SAMPLERS), help="ODE solver from t = 1 (noise) to t = 0")
    steps: int = num(50, 1, 100_000, help="solver steps (heun: 2 * steps - 1 evaluations, midpoint: 2 * steps)")
    guidance: float = num(1.0, 0.0, 1000.0, help="classifier-free guidance scale (1: none, 0: unconditional)")


# ------------------------------------------------------------------------------------------------ pure functions

def flow_path(x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, velocity target) of the straight path: x_t = (1 - t) x0 + t eps and v = eps - x0; t (N,)."""
    tt = t.view(-1, *[1] * (x0.dim() - 1)).to(x0.dtype)
    return (1 - tt) * x0 + tt * eps, eps - x0


def sample_times(cfg: FlowConfig, rng: StepRNG) -> torch.Tensor:
    """Training times (N,) in [0, 1]: uniform, or logit-normal sigmoid(m + s n) (Esser et al. 2024, sec. 3.1)."""
    if cfg.time_sampling == "logit_normal":
        return torch.sigmoid(cfg.logit_mean + cfg.logit_std * rng.randn())
    return rng.rand()


def rademacher(shape, generator: Optional[torch.Generator], device, dtype) -> torch.Tensor:
    """Random signs +-1 (the probes of Hutchinson's estimator: lower variance than Gaussian ones)."""
    return (torch.randint(0, 2, tuple(shape), generator=generator) * 2 - 1).to(device=device, dtype=dtype)


def _velocity_and_divergence(velocity: Callable, x: torch.Tensor, t: float, probes: list):
    """v(x, t) and Hutchinson's estimate of div v = tr(dv/dx): the mean over probes z of z^T (dv/dx) z, each
    from one vector-Jacobian product (torch.autograd.grad) of a single forward pass."""
    x = x.detach().requires_grad_(True)
    v = velocity(x, torch.full((x.shape[0],), t, device=x.device, dtype=x.dtype))
    div = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
    if v.requires_grad:
        for k, z in enumerate(probes):
            (zj,) = torch.autograd.grad(v, x, z, retain_graph=k + 1 < len(probes), allow_unused=True)
            if zj is not None:
                div = div + (zj * z).flatten(1).sum(1)
    return v.detach(), div.detach() / len(probes)


def ode_log_density(velocity: Callable, x: torch.Tensor, steps: int = 32, *, draws: int = 1,
                    generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """log p_0(x) in nats per row (N,) of a flow with velocity ``velocity(x, t) -> v`` (t (N,) in [0, 1]) whose
    t = 1 end is N(0, I): the instantaneous change of variables (Chen et al. 2018, eq. 4; Grathwohl et al. 2019,
    FFJORD, eq. 4),

        log p_0(x_0) = log N(x_1; 0, I) + int_0^1 div v(x_t, t) dt,    dx_t / dt = v(x_t, t),

    solved jointly for x_t and the integral from t = 0 to 1 with ``steps`` fixed Heun (RK2) steps, the
    divergence from Hutchinson's estimator with ``draws`` Rademacher probes per step (the same probes for both
    stages of a step; drawn from ``generator`` on the CPU). Continuous: no dequantization here. The result is an
    unbiased estimate of the discretized ODE's log-density (exact for a velocity whose Jacobian is diagonal)."""
    if steps < 1 or draws < 1:
        raise ValueError(f"steps and draws must be >= 1, got {steps} and {draws}")
    with torch.enable_grad():
        h = 1.0 / steps
        integral = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
        x = x.detach()
        for i in range(steps):
            t, s = i * h, (i + 1) * h
            probes = [rademacher(x.shape, generator, x.device, x.dtype) for _ in range(draws)]
            v1, d1 = _velocity_and_divergence(velocity, x, t, probes)
            v2, d2 = _velocity_and_divergence(velocity, x + h * v1, s, probes)
            x = x + h * (v1 + v2) / 2
            integral = integral + h * (d1 + d2) / 2
    d = x[0].numel()
    log_prior = -0.5 * (x.flatten(1) ** 2).sum(1) - 0.5 * d * math.log(2 * math.pi)
    return log_prior + integral


# ------------------------------------------------------------------------------------------------ the denoiser

class FlowDenoiser:
    """A velocity network as a denoiser ``(x_t, t) -> (x0_hat, eps_hat)`` for the flow samplers, t in [0, 1]:
    x0_hat = x_t - t v and eps_hat = x_t + (1 - t) v (so that x_t = (1 - t) x0_hat + t eps_hat and
    v = eps_hat - x0_hat). With a condition ``y`` and ``scale`` != 1, classifier-free guidance on the velocity,
    v = v_u + s (v_c - v_u), both halves in one batch (s = 0: the unconditional model alone). ``clip``: x0_hat
    clipped to [-1, 1], the velocity recomputed from it, v = (x_t - x0_hat) / t."""

    def __init__(self, net, y: Optional[torch.Tensor] = None, y_null: Optional[torch.Tensor] = None,
                 scale: float = 1.0, clip: bool = False):
        self.net, self.y, self.y_null, self.scale, self.clip = net, y, y_null, float(scale), clip
        if self.scale != 1.0 and (y is None or y_null is None):
            raise ValueError("classifier-free guidance needs a condition y and the null condition")
        self.evals_per_call = 2 if self.scale not in (0.0, 1.0) else 1

    def velocity(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """v(x, t), t (N,) in [0, 1] (the network sees t * 1000, see TIME_SCALE)."""
        t = torch.as_tensor(t, device=x.device).expand(x.shape[0])
        ts = t * TIME_SCALE
        if self.y is None:
            out = self.net(x, ts)
        elif self.scale == 1.0:
            out = self.net(x, ts, self.y)
        elif self.scale == 0.0:
            out = self.net(x, ts, self.y_null)
        else:
            v_c, v_u = self.net(torch.cat([x, x]), torch.cat([ts, ts]), torch.cat([self.y, self.y_null])).chunk(2)
            out = v_u + self.scale * (v_c - v_u)
        return out.to(x.dtype)       # e.g. bf16 network outputs under autocast

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.as_tensor(t, device=x_t.device, dtype=x_t.dtype).expand(x_t.shape[0])
        v = self.velocity(x_t, t)
        tt = t.view(-1, *[1] * (x_t.dim() - 1))
        x0 = x_t - tt * v
        if self.clip:
            x0c = x0.clamp(-1, 1)
            v = v + (x0 - x0c) / tt.clamp_min(1e-12)       # = (x_t - x0c) / t, exact where nothing is clipped
            x0 = x0c
        return x0, x_t + (1 - tt) * v


# ------------------------------------------------------------------------------------------------ the method

@register
class FlowMatchingMethod(Method):
    name = "flow_matching"
    family = "flow matching"
    label = "flow matching"
    section = "flow"
    Section = FlowConfig
    Options = FlowOptions
    inputs = ()
    likelihood = "estimate"
    likelihood_draws = 1             # Rademacher probes per ODE step
    conditions = ("class", "text")

    def nfe(self, opts, shape: tuple) -> int:
        per = {"euler": opts.steps, "heun": 2 * opts.steps - 1, "midpoint": 2 * opts.steps}[opts.sampler]
        # guidance runs the network on both conditions, except at 0 (the unconditional model alone)
        return per * (2 if opts.guidance not in (0.0, 1.0) else 1)

    def sampling_label(self, opts) -> str:
        return f"{opts.sampler}-{opts.steps}"

    # ------------------------------------------------------------------ model
    def build_model(self, shape: tuple[int, int, int], num_classes: int = 0, levels: int = 256,
                    vocab: Optional[dict] = None) -> torch.nn.Module:
        """The UNet of ``cfg.model`` predicting the velocity; vocab: a text-conditional model's tokenizer."""
        from ..nn.text import build_text_encoder

        m = self.cfg.model
        c, h = square_shape(shape)
        self.levels = levels
        text = build_text_encoder(m, vocab) if m.text_cond else None
        return UNet(in_channels=c, out_channels=c, image_size=h, width=m.width,
                    channel_mults=tuple(m.channel_mults), num_res_blocks=m.num_res_blocks,
                    attn_resolutions=tuple(m.attn_resolutions), num_heads=m.num_heads, dropout=m.dropout,
                    num_classes=num_classes if m.class_cond else 0, text_encoder=text)

    # ------------------------------------------------------------------ training
    def loss(self, model, batch: dict, rng: StepRNG) -> torch.Tensor:
        """Mean over the batch of ||v(x_t, t) - (eps - x0)||^2 / D (conditional flow matching, Lipman et al.
        2023, eq. 23 with sigma_min = 0; rectified flow, Liu et al. 2022, eq. 1)."""
        x0 = batch["x"]
        n = x0.shape[0]
        f = self.cfg.flow
        t = sample_times(f, rng).to(x0.dtype)
        eps = rng.randn(*x0.shape[1:]).to(x0.dtype)
        drop = rng.rand()
        x_t, target = flow_path(x0, eps, t)
        y = training_condition(model, batch, drop, f.cond_drop)
        ts = t * TIME_SCALE
        out = model(x_t, ts, y) if y is not None else model(x_t, ts)
        return F.mse_loss(out.float(), target.float(), reduction="none").reshape(n, -1).mean(1).mean()

    # ------------------------------------------------------------------ likelihood
    @torch.no_grad()
    def log_likelihood(self, model, x: torch.Tensor, y: Optional[torch.Tensor] = None, *,
                       draws: Optional[int] = None, seed: int = 0, steps: Optional[int] = None,
                       levels: Optional[int] = None, **_) -> torch.Tensor:
        """Bits/dim of each image (N,) on the dataset's levels, by uniform dequantization and the change of
        variables: x_0 = x + u with u uniform in its level's bin (width w = 2 / (levels - 1) in model space), then
        log p_0(x_0) by :func:`ode_log_density` (``flow.likelihood_steps`` Heun steps, ``draws`` Rademacher probes
        per step), and bits/dim = -(log p_0(x_0) + D log w) / (D ln 2). Since log P(x) = log E_u[p_0(x + u) w^D]
        >= E_u[log p_0(x + u)] + D log w, this is a stochastic (one dequantization draw) estimate of an upper
        bound on the model's discrete negative log-likelihood: an estimate, up to the ODE solver's error.
        Costs 2 * steps network evaluations (forward and backward) per image."""
        net = unwrap(model)
        levels = levels or getattr(self, "levels", None)
        if levels is None or levels < 2:
            raise ValueError("the flow likelihood needs the dataset's number of levels (>= 2)")
        steps = steps or self.cfg.flow.likelihood_steps
        draws = self.likelihood_draws if draws is None else draws
        _check_on_grid(x, levels)          # the diffusion bound's check: x on the dataset's levels
        was_training = net.training
        net.eval()
        g = torch.Generator().manual_seed(seed)
        w = 2.0 / (levels - 1)
        u = torch.rand(x.shape, generator=g, dtype=x.dtype).to(x.device)
        den = FlowDenoiser(net, y if net.conditional else None)
        try:
            logp = ode_log_density(den.velocity, x + (u - 0.5) * w, steps, draws=draws, generator=g)
        finally:
            net.train(was_training)
        d = x[0].numel()
        return (-(logp.double() + d * math.log(w)) / (d * LN2)).float()

    # ------------------------------------------------------------------ sampling
    def denoiser(self, model, y: Optional[torch.Tensor] = None, guidance: float = 1.0) -> FlowDenoiser:
        """The model as a denoiser for the flow samplers, with classifier-free guidance at scale ``guidance``
        (1: the plain conditional model). y: labels, or caption tokens for a text model."""
        net = unwrap(model)
        clip = self.cfg.flow.clip_sample
        if guidance != 1.0:
            if y is None:
                raise ValueError("guidance needs a condition: give a prompt (--prompt) for a text-conditional "
                                 "model, labels (--class / --labels) for a class-conditional one")
            if not net.conditional:
                raise ValueError("classifier-free guidance needs a class- or text-conditional model "
                                 "(model.class_cond or model.text_cond, trained with flow.cond_drop > 0)")
            return FlowDenoiser(model, y, net.null_like(y), guidance, clip=clip)
        return FlowDenoiser(model, y if net.conditional else None, clip=clip)

    def sample_batch(self, model, seeds: range, opts, *, y=None, device=None, callback=None):
        """One batch: noise x_1 from the per-sample seeds, integrated to t = 0 by the chosen ODE solver."""
        net = unwrap(model)
        shape = (net.out_channels, net.image_size, net.image_size)
        noise = PerSampleNoise(seeds)
        x1 = noise.randn((len(seeds), *shape), device)
        den = CountingDenoiser(self.denoiser(model, y, opts.guidance))
        x = FLOW_SAMPLERS[opts.sampler](den, x1, FlowPath(), opts.steps, generator=noise, callback=callback)
        return x.clamp(-1, 1), den.nfe
