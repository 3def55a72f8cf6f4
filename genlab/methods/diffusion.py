"""Denoising diffusion (DDPM family) as a method: the training loss, a denoiser for samplers, and sampling.

Training follows DDPM algorithm 1 (Ho et al. 2020) with the target chosen among eps (DDPM eq. 14), x0 and v
(Salimans & Ho 2022), and an optional min-SNR-gamma weighting (Hang et al. 2023, eq. 8-10) that balances
timesteps. Sampling goes through the samplers of :mod:`genlab.diffusion.samplers` with per-sample seeds.

Conditions: class labels or captions (``y``, dropped to the null condition with probability
``diffusion.cond_drop`` for classifier-free guidance), and conditioning images concatenated to x_t
(:mod:`genlab.diffusion.conditioning`): a low-resolution image (upsampler) or a mask and masked image (GLIDE
inpainting model).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from ..config import Config, ConfigError, choice, num
from ..diffusion import CountingDenoiser, Denoiser, PerSampleNoise, Schedule, get_sampler
from ..diffusion import conditioning as imc
from ..diffusion.samplers import SAMPLERS, SPACINGS, sampler_options
from ..diffusion.process import q_sample, target
from ..nn import UNet
from ..rng import StepRNG
from .base import Method, register, unwrap
from .categorical import known_pixels, square_shape, training_condition


def snr_weight(snr: torch.Tensor, prediction: str, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma weights (Hang et al. 2023, sec. 3.4): the x0-space weight min(SNR, gamma), expressed for the
    network's own target. Since ||eps - eps_hat||^2 = SNR ||x0 - x0_hat||^2 and ||v - v_hat||^2 =
    (SNR + 1) ||x0 - x0_hat||^2, the weights are min(SNR, gamma) / SNR (eps), min(SNR, gamma) (x0) and
    min(SNR, gamma) / (SNR + 1) (v)."""
    clipped = snr.clamp(max=gamma)
    if prediction == "eps":
        return clipped / snr
    if prediction == "x0":
        return clipped
    return clipped / (snr + 1)


@dataclass
class DiffusionOptions:
    sampler: str = choice("ddim", tuple(SAMPLERS), help="reverse-process sampler")
    steps: int = num(50, 1, 100_000, help="sampling steps (heun: noise levels, 2 * steps - 1 evaluations)")
    eta: float = num(0.0, 0.0, 1.0, help="DDIM noise: 0 deterministic, 1 DDPM-like")
    spacing: str = choice("trailing", SPACINGS, help="timesteps of ddpm, ddim, dpmpp-2m")
    variance: str = choice("small", ("small", "large"), help="ddpm posterior variance: beta tilde or beta")
    guidance: float = num(1.0, 0.0, 1000.0, help="classifier-free guidance scale (1: none, 0: unconditional)")
    classifier_scale: float = num(1.0, 0.0, 1e6, help="classifier guidance scale (with --classifier)")
    clip_scale: float = num(1.0, 0.0, 1e6, help="CLIP guidance scale (with --clip and --prompt)")
    resample: int = num(1, 1, 1000, help="RePaint resampling per step (inpainting, ddpm sampler)")
    lowres_t: float = num(0.1, 0.0, 1.0, help="upsampler: noise level of the low-res image, fraction of T")


@register
class DiffusionMethod(Method):
    name = "diffusion"
    family = "diffusion"
    label = "diffusion"
    Options = DiffusionOptions
    inputs = ("known", "known_mask", "lowres", "classifier", "clip", "clip_tokens")
    likelihood = "bound"
    likelihood_draws = None          # None: all T terms of the bound
    conditions = ("class", "text", "image")

    @classmethod
    def check_config(cls, cfg: Config) -> None:
        super().check_config(cfg)
        steps = cfg.sample.steps
        if steps is not None and steps > cfg.diffusion.timesteps:
            raise ConfigError(f"sample.steps={steps} exceeds diffusion.timesteps={cfg.diffusion.timesteps}")

    def nfe(self, opts, shape: tuple) -> int:
        per = 2 * opts.steps - 1 if opts.sampler == "heun" else opts.steps
        return per * opts.resample * (2 if opts.guidance != 1.0 else 1)

    def sampling_label(self, opts) -> str:
        return f"{opts.sampler}-{opts.steps}"

    def __init__(self, cfg: Config):
        d = cfg.diffusion
        self.cfg = cfg
        self.schedule = Schedule.from_config(d)
        self.alphas_cumprod = self.schedule.alphas_cumprod
        self.snr = self.schedule.snr
        self.prediction = d.prediction

    # ------------------------------------------------------------------ model
    def build_model(self, shape: tuple[int, int, int], num_classes: int = 0, levels: int = 256,
                    vocab: Optional[dict] = None) -> torch.nn.Module:
        """vocab: the tokenizer of a text-conditional model (``Tokenizer.to_dict()``, saved with the run)."""
        from ..nn.text import build_text_encoder

        m = self.cfg.model
        c, h = square_shape(shape)
        self.levels = levels
        if m.image_cond == "lowres" and not 2 <= m.lowres_size < h:
            raise ValueError(f"model.lowres_size={m.lowres_size} must be smaller than the image side {h}")
        text = build_text_encoder(m, vocab) if m.text_cond else None
        return UNet(in_channels=c + imc.extra_channels(m.image_cond, c), out_channels=c, image_size=h,
                    width=m.width, channel_mults=tuple(m.channel_mults), num_res_blocks=m.num_res_blocks,
                    attn_resolutions=tuple(m.attn_resolutions), num_heads=m.num_heads, dropout=m.dropout,
                    num_classes=num_classes if m.class_cond else 0, text_encoder=text)

    def condition(self, model, batch: dict, drop: torch.Tensor) -> Optional[torch.Tensor]:
        """The network's y for a training batch: labels or caption tokens, each replaced by the null condition
        when its uniform ``drop`` is below ``diffusion.cond_drop``; None for an unconditional model."""
        return training_condition(model, batch, drop, self.cfg.diffusion.cond_drop)

    def image_condition(self, x0: torch.Tensor, rng: StepRNG) -> Optional[torch.Tensor]:
        """Extra input channels for a training batch: the noise-augmented low-res image (upsampler) or a random
        mask with the masked image (inpainting model); None without image conditioning."""
        m, d = self.cfg.model, self.cfg.diffusion
        if m.image_cond == "lowres":
            lr = imc.downsample(x0, m.lowres_size)
            ab, level = imc.augmentation(self.alphas_cumprod, rng.rand() * d.lowres_aug)
            noise = rng.randn(*lr.shape[1:])
            return imc.lowres_input(lr, x0.shape[-1], ab, noise, level)
        if m.image_cond == "mask":
            return imc.mask_input(x0, imc.random_masks(rng.rand(6), x0.shape[-1]))
        return None

    # ------------------------------------------------------------------ training
    def loss(self, model, batch: dict, rng: StepRNG) -> torch.Tensor:
        """Mean over the batch of the (weighted) squared error of the network's target (DDPM eq. 14)."""
        x0 = batch["x"]
        n = x0.shape[0]
        t = rng.randint(self.schedule.T)
        eps = rng.randn(*x0.shape[1:])
        drop = rng.rand()
        ab = self.alphas_cumprod.to(x0.device)[t]
        x_t = q_sample(x0, ab, eps)
        y = self.condition(model, batch, drop)
        extra = self.image_condition(x0, rng)
        if extra is not None:
            x_t = torch.cat([x_t, extra], dim=1)
        out = model(x_t, t, y) if y is not None else model(x_t, t)
        err = F.mse_loss(out.float(), target(self.prediction, x0, eps, ab), reduction="none").reshape(n, -1).mean(1)
        if self.cfg.diffusion.loss_weight == "min_snr":
            err = err * snr_weight(self.snr.to(x0.device)[t], self.prediction, self.cfg.diffusion.min_snr_gamma)
        return err.mean()

    # ------------------------------------------------------------------ likelihood
    @torch.no_grad()
    def log_likelihood(self, model, x: torch.Tensor, y: Optional[torch.Tensor] = None, *,
                       draws: Optional[int] = None, t_samples: Optional[int] = None, seed: int = 0,
                       variance: str = "small", levels: Optional[int] = None, **_) -> torch.Tensor:
        """The variational bound in bits/dim of each image (N,) on the dataset's levels (DDPM eq. 5 with a
        discretized Gaussian decoder; :func:`genlab.diffusion.likelihood.vlb_bpd`): all T terms (T network
        evaluations per image), or an unbiased estimate from ``draws`` (alias ``t_samples``) random timesteps
        per image."""
        from ..diffusion.likelihood import vlb_bpd

        t_samples = draws if t_samples is None else t_samples
        net = unwrap(model)
        if self.cfg.model.image_cond != "none":
            raise ValueError(f"the likelihood bound of an image-conditioned model (model.image_cond="
                             f"{self.cfg.model.image_cond}) needs its conditioning images; it is not computed")
        was_training = net.training
        net.eval()
        levels = levels or getattr(self, "levels", None)
        if levels is None:
            raise ValueError("the diffusion bound needs the dataset's number of levels")
        g = torch.Generator(device=x.device if x.device.type == "cuda" else "cpu").manual_seed(seed)
        den = self.denoiser(net, y if net.conditional else None)
        out = vlb_bpd(den, self.schedule, x, levels, variance=variance, t_samples=t_samples, generator=g)
        net.train(was_training)
        return out["bpd"]

    # ------------------------------------------------------------------ sampling
    def denoiser(self, model, y: Optional[torch.Tensor] = None, guidance: Optional[float] = None,
                 classifier=None, classifier_scale: float = 0.0, clip_model=None, clip_tokens=None,
                 clip_scale: float = 0.0):
        """The model as a denoiser callable; with labels, ``guidance`` s wraps it in classifier-free guidance
        (1: the plain conditional model) and ``classifier`` (a noise-aware ``classifier(x_t, t) -> logits``) with
        ``classifier_scale`` in classifier guidance (0: none); ``clip_model`` (a noise-aware CLIP) with the
        samples' ``clip_tokens`` and ``clip_scale`` in CLIP guidance. y: labels, or caption tokens for a text
        model."""
        from ..diffusion.guidance import ClassifierFreeGuidance, ClassifierGuidance, ClipGuidance

        clip = self.cfg.diffusion.clip_sample
        outer = classifier is not None or clip_model is not None     # a gradient guide clips after its shift
        net = unwrap(model)
        if ((guidance is not None and guidance != 1.0) or classifier is not None) and y is None:
            raise ValueError("guidance needs a condition: give a prompt (--prompt) for a text-conditional model, "
                             "labels (--class / --labels) for a class-conditional one")
        if guidance is not None and guidance != 1.0:
            if not net.conditional:
                raise ValueError("classifier-free guidance needs a class- or text-conditional model "
                                 "(model.class_cond or model.text_cond, trained with diffusion.cond_drop > 0)")
            den = ClassifierFreeGuidance(model, self.schedule, self.prediction, y, net.null_like(y[:1]), guidance,
                                         clip=clip and not outer)
        else:
            den = Denoiser(model, self.schedule, self.prediction, y=y if net.conditional else None,
                           clip=clip and not outer)
        if classifier is not None:
            den = ClassifierGuidance(den, classifier, self.schedule, y, classifier_scale,
                                     clip=clip and clip_model is None)
        if clip_model is not None:
            if clip_tokens is None:
                raise ValueError("CLIP guidance steers towards a caption: give a prompt (--prompt \"...\")")
            den = ClipGuidance(den, clip_model, self.schedule, clip_tokens, clip_scale, clip_x0=clip)
        return den

    def prepare_inputs(self, model, n: int, opts, inputs: dict) -> dict:
        """Inpainting images and masks, low-resolution images, RePaint: checked once for all n samples."""
        net = unwrap(model)
        shape = (net.out_channels, net.image_size, net.image_size)
        if not 1 <= opts.steps <= self.schedule.T:
            raise ValueError(f"steps must be in 1..{self.schedule.T} (diffusion.timesteps), got {opts.steps}")
        known, known_mask = known_pixels(inputs, n, shape)
        if opts.resample > 1 and (known is None or opts.sampler != "ddpm" or self.cfg.model.image_cond == "mask"):
            raise ValueError("resample (RePaint) applies to inpainting by replacement with the ddpm sampler")
        lowres = self._lowres(inputs, n, shape)
        tokens = inputs.get("clip_tokens")
        if (inputs.get("clip") is None) != (tokens is None):
            raise ValueError("CLIP guidance needs both the CLIP model (clip) and each sample's caption tokens "
                             "(clip_tokens)")
        if tokens is not None and len(tokens) != n:
            raise ValueError(f"clip_tokens has {len(tokens)} rows for {n} samples: one caption per sample")
        out = {"known": known, "known_mask": known_mask, "lowres": lowres, "classifier": inputs.get("classifier"),
               "clip": inputs.get("clip"), "clip_tokens": tokens}
        return {k: v for k, v in out.items() if v is not None}

    def sample_batch(self, model, seeds: range, opts, *, y=None, device=None, callback=None, known=None,
                     known_mask=None, lowres=None, classifier=None, clip=None, clip_tokens=None):
        """One batch through the chosen sampler, with guidance, inpainting or an upsampler's low-res image."""
        m = self.cfg.model
        fn = get_sampler(opts.sampler)
        kw = sampler_options(opts.sampler, spacing=opts.spacing, eta=opts.eta, variance=opts.variance)
        net = unwrap(model)
        shape = (net.out_channels, net.image_size, net.image_size)
        b = len(seeds)
        noise = PerSampleNoise(seeds)
        x_T = noise.randn((b, *shape), device)
        net_b = model
        if m.image_cond == "lowres":
            z = noise.randn((b, *lowres.shape[1:]), device)
            ab, lev = imc.augmentation(self.alphas_cumprod, torch.full((b,), float(opts.lowres_t), device=device))
            net_b = imc.WithImage(model, imc.lowres_input(lowres.to(device), shape[-1], ab, z, lev))
        elif m.image_cond == "mask":
            if known is None:   # nothing known: the model draws whole images
                cond = imc.mask_input(torch.zeros((b, *shape)), torch.zeros((b, 1, *shape[1:]), dtype=torch.bool))
            else:
                cond = imc.mask_input(known, known_mask)
            net_b = imc.WithImage(model, cond.to(device))
        guide = {"guidance": opts.guidance} if opts.guidance != 1.0 else {}
        if classifier is not None:
            guide.update(classifier=classifier, classifier_scale=opts.classifier_scale)
        if clip is not None:
            guide.update(clip_model=clip, clip_tokens=clip_tokens.to(device), clip_scale=opts.clip_scale)
        den = self.denoiser(net_b, y, **guide)
        if known is not None and m.image_cond != "mask":
            from ..diffusion.tasks import Inpaint

            den = Inpaint(den, self.schedule, known.to(device), known_mask.to(device))
        den = CountingDenoiser(den)
        if opts.resample > 1:
            from ..diffusion.tasks import repaint

            x = repaint(den, x_T, self.schedule, opts.steps, resample=opts.resample, generator=noise,
                        callback=callback, **kw)
        else:
            x = fn(den, x_T, self.schedule, opts.steps, generator=noise, callback=callback, **kw)
        x = x.clamp(-1, 1)
        if known is not None:        # the known pixels exactly (the last x0_hat already holds them)
            x = torch.where(known_mask.to(x.device), known.to(x.device, x.dtype), x)
        return x, den.nfe

    def _lowres(self, opts: dict, n: int, shape: tuple) -> Optional[torch.Tensor]:
        """The low-resolution images an upsampler is conditioned on, checked; None for other models."""
        m = self.cfg.model
        lowres = opts.get("lowres")
        if m.image_cond != "lowres":
            if lowres is not None:
                raise ValueError("lowres images apply to upsamplers (model.image_cond=lowres) only")
            return None
        if lowres is None:
            raise ValueError("this model is an upsampler: it needs low-resolution images (lowres=, or "
                             "genlab sample --ckpt BASE --upsampler THIS)")
        want = (n, shape[0], m.lowres_size, m.lowres_size)
        if not isinstance(lowres, torch.Tensor) or tuple(lowres.shape) != want:
            got = tuple(lowres.shape) if isinstance(lowres, torch.Tensor) else type(lowres).__name__
            raise ValueError(f"the upsampler takes low-resolution images of shape {want}; got {got}")
        return lowres.float()

