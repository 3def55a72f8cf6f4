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

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from ..config import Config
from ..diffusion import CountingDenoiser, Denoiser, PerSampleNoise, Schedule, get_sampler
from ..diffusion import conditioning as imc
from ..diffusion.samplers import sampler_options
from ..diffusion.process import q_sample, target
from ..nn import UNet
from ..rng import StepRNG
from .categorical import check_sample_options, known_pixels, square_shape, training_condition


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


class DiffusionMethod:
    name = "diffusion"
    sample_options = ("sampler", "steps", "eta", "spacing", "variance", "guidance", "classifier",
                      "classifier_scale", "known", "known_mask", "resample", "lowres", "lowres_t")

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
                       t_samples: Optional[int] = None, seed: int = 0, variance: str = "small",
                       levels: Optional[int] = None, **_) -> torch.Tensor:
        """The variational bound in bits/dim of each image (N,) on the dataset's levels (DDPM eq. 5 with a
        discretized Gaussian decoder; :func:`genlab.diffusion.likelihood.vlb_bpd`): all T terms (T network
        evaluations per image), or an unbiased estimate from ``t_samples`` random timesteps per image."""
        from ..diffusion.likelihood import vlb_bpd

        net = _unwrap(model)
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
                 classifier=None, classifier_scale: float = 0.0):
        """The model as a denoiser callable; with labels, ``guidance`` s wraps it in classifier-free guidance
        (1: the plain conditional model) and ``classifier`` (a noise-aware ``classifier(x_t, t) -> logits``) with
        ``classifier_scale`` in classifier guidance (0: none). y: labels, or caption tokens for a text model."""
        from ..diffusion.guidance import ClassifierFreeGuidance, ClassifierGuidance

        clip = self.cfg.diffusion.clip_sample
        net = _unwrap(model)
        if (guidance is not None or classifier is not None) and y is None:
            raise ValueError("guidance needs a condition: give a prompt (--prompt) for a text-conditional model, "
                             "labels (--class / --labels) for a class-conditional one")
        if guidance is not None and guidance != 1.0:
            if not net.conditional:
                raise ValueError("classifier-free guidance needs a class- or text-conditional model "
                                 "(model.class_cond or model.text_cond, trained with diffusion.cond_drop > 0)")
            den = ClassifierFreeGuidance(model, self.schedule, self.prediction, y, net.null_like(y[:1]), guidance,
                                         clip=clip and classifier is None)
        else:
            den = Denoiser(model, self.schedule, self.prediction, y=y if net.conditional else None,
                           clip=clip and classifier is None)
        if classifier is not None:
            den = ClassifierGuidance(den, classifier, self.schedule, y, classifier_scale, clip=clip)
        return den

    @torch.no_grad()
    def sample(self, model, n: int, *, y: Optional[torch.Tensor] = None, sampler: Optional[str] = None,
               steps: Optional[int] = None, eta: Optional[float] = None, spacing: Optional[str] = None,
               variance: Optional[str] = None, seed: int = 0, batch_size: int = 256,
               callback: Optional[Callable] = None, device=None, progress: bool = False,
               **extra) -> tuple[torch.Tensor, int]:
        """Draw n images in [-1, 1]; sample i uses seed + i alone, so it does not depend on the batching.

        Returns (images N x C x H x W on the CPU, network evaluations per sample). The callback (if given)
        receives the step info of the first batch only.
        """
        check_sample_options(self.name, ("guidance", "classifier", "classifier_scale", "known", "known_mask",
                                         "resample", "lowres", "lowres_t"), extra)
        guide = {k: extra[k] for k in ("guidance", "classifier", "classifier_scale") if k in extra}
        m = self.cfg.model
        s = self.cfg.sample
        sampler = sampler or s.sampler
        fn = get_sampler(sampler)
        opts = sampler_options(sampler, spacing=spacing or s.spacing, eta=s.eta if eta is None else eta,
                               variance=variance or s.variance)
        steps = s.steps if steps is None else steps
        if not 1 <= steps <= self.schedule.T:
            raise ValueError(f"steps must be in 1..{self.schedule.T} (diffusion.timesteps), got {steps}")
        device = device or next(model.parameters()).device
        net = _unwrap(model)
        shape = (net.out_channels, net.image_size, net.image_size)
        known, known_mask = known_pixels(extra, n, shape)
        given = extra.get("resample")
        resample = 1 if given is None else int(given)
        if resample < 1 or resample != given and given is not None:
            raise ValueError(f"resample must be an integer >= 1 (RePaint repeats per step), got {extra['resample']}")
        if resample > 1 and (known is None or sampler != "ddpm" or m.image_cond == "mask"):
            raise ValueError("resample (RePaint) applies to inpainting by replacement with the ddpm sampler")
        lowres = self._lowres(extra, n, shape)
        level = s.lowres_t if extra.get("lowres_t") is None else float(extra["lowres_t"])
        if not 0.0 <= level <= 1.0:
            raise ValueError(f"lowres_t is the upsampler's conditioning noise level as a fraction of T, in [0, 1]; "
                             f"got {level} (trained up to diffusion.lowres_aug={self.cfg.diffusion.lowres_aug})")
        out, nfe = [], 0
        was_training = model.training
        model.eval()
        schedule = self.schedule
        starts = range(0, n, batch_size)
        if progress:
            from tqdm import tqdm
            starts = tqdm(starts, desc=f"sampling {sampler}-{steps}", unit="batch", leave=False)
        for b0 in starts:
            b = min(batch_size, n - b0)
            noise = PerSampleNoise(range(seed + b0, seed + b0 + b))
            x_T = noise.randn((b, *shape), device)
            yb = None if y is None else y[b0:b0 + b].to(device)
            net_b = model
            if m.image_cond == "lowres":
                z = noise.randn((b, *lowres.shape[1:]), device)
                ab, lev = imc.augmentation(self.alphas_cumprod, torch.full((b,), level, device=device))
                cond = imc.lowres_input(lowres[b0:b0 + b].to(device), shape[-1], ab, z, lev)
                net_b = imc.WithImage(model, cond)
            elif m.image_cond == "mask":
                if known is None:   # nothing known: the model draws whole images
                    cond = imc.mask_input(torch.zeros((b, *shape)), torch.zeros((b, 1, *shape[1:]), dtype=torch.bool))
                else:
                    cond = imc.mask_input(known[b0:b0 + b], known_mask[b0:b0 + b])
                net_b = imc.WithImage(model, cond.to(device))
            den = self.denoiser(net_b, yb, **guide)
            if known is not None and m.image_cond != "mask":
                from ..diffusion.tasks import Inpaint

                den = Inpaint(den, schedule, known[b0:b0 + b].to(device), known_mask[b0:b0 + b].to(device))
            den = CountingDenoiser(den)
            cb = callback if b0 == 0 else None
            if resample > 1:
                from ..diffusion.tasks import repaint

                x = repaint(den, x_T, schedule, steps, resample=resample, generator=noise, callback=cb, **opts)
            else:
                x = fn(den, x_T, schedule, steps, generator=noise, callback=cb, **opts)
            x = x.clamp(-1, 1)
            if known is not None:        # the known pixels exactly (the last x0_hat already holds them)
                keep = known_mask[b0:b0 + b].to(x.device)
                x = torch.where(keep, known[b0:b0 + b].to(x.device, x.dtype), x)
            out.append(x.cpu())
            nfe = den.nfe
        model.train(was_training)
        return torch.cat(out), nfe

    def _lowres(self, opts: dict, n: int, shape: tuple) -> Optional[torch.Tensor]:
        """The low-resolution images an upsampler is conditioned on, checked; None for other models."""
        m = self.cfg.model
        lowres = opts.get("lowres")
        if m.image_cond != "lowres":
            if lowres is not None or opts.get("lowres_t") is not None:
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


def _unwrap(model):
    return getattr(model, "module", model)
