"""diffusers as a benchmark peer: ``UNet2DModel`` trained with the defaults of diffusers' unconditional training
example (``examples/unconditional_image_generation/train_unconditional.py``), sampled with its schedulers.

The recipe is the example's, not genlab's: ``DDPMScheduler`` with 1000 linear steps and the epsilon target,
AdamW lr 1e-4 betas (0.95, 0.999) weight decay 1e-6 eps 1e-8, ``get_cosine_schedule_with_warmup``'s lambda
with 500 warmup steps (the cosine follows the fraction of the time budget left after the warmup), gradient
clipping at 1, and its ``EMAModel`` with warmup (inv_gamma 1, power 3/4, up to 0.9999). The example's image
augmentations (resize, crop, horizontal flip) and accelerate are left out. Sampling: ``DDIMScheduler`` (eta 0)
or ``DDPMScheduler`` built ``from_config`` of the training scheduler, as the pipelines do.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from genlab.train.loop import data_indices

from .common import TRAIN_SEED, CallCounter, Variant, count_params, load_tensors, save_tensors, timed_training, \
    to_levels


def diffusers_unet(shape=(1, 8, 8), block_out_channels=(32, 64)):
    """The example's layout (two resnets per level, attention on the inner level) at this image size. For 8x8
    digits: levels of 32 and 64 channels, attention at 4x4, 1,001,729 parameters (about 1M)."""
    from diffusers import UNet2DModel

    c, h, _ = shape
    n = len(block_out_channels)
    return UNet2DModel(sample_size=h, in_channels=c, out_channels=c, layers_per_block=2,
                       block_out_channels=tuple(block_out_channels),
                       down_block_types=("DownBlock2D",) * (n - 1) + ("AttnDownBlock2D",),
                       up_block_types=("AttnUpBlock2D",) + ("UpBlock2D",) * (n - 1))


def diffusers_train_scheduler():
    from diffusers import DDPMScheduler

    # the example's --ddpm_num_steps 1000, --ddpm_beta_schedule linear, --prediction_type epsilon
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type="epsilon")


class DiffusersPeer:
    """The diffusers peer (see the module docstring); ``shape`` and ``levels`` are the data's (8x8 digits with
    17 levels by default), ``block_out_channels`` the UNet's widths."""
    family = "diffusers"
    WARMUP = 500

    def __init__(self, batch_size: int = 128, shape=(1, 8, 8), levels: int = 17, block_out_channels=(32, 64)):
        self.batch_size, self.shape, self.levels = batch_size, tuple(shape), levels
        self.block_out_channels = tuple(block_out_channels)

    def variants(self) -> list[Variant]:
        """The published learning rate and one higher one (the budgets are short)."""
        return [Variant(self.family, "diffusers", 1e-4, "published (example defaults)"),
                Variant(self.family, "diffusers-lr2e-4", 2e-4, "higher LR")]

    def network(self) -> torch.nn.Module:
        return diffusers_unet(self.shape, self.block_out_channels)

    def describe(self) -> dict:
        widths = ", ".join(str(w) for w in self.block_out_channels)
        inner = self.shape[1] // 2 ** (len(self.block_out_channels) - 1)
        return {"params": count_params(self.network()), "batch_size": self.batch_size, "shape": list(self.shape),
                "details": f"UNet2DModel ({widths}) x 2 resnets, attention at {inner}x{inner}; DDPMScheduler 1000 "
                           "linear, eps; AdamW betas (0.95, 0.999) wd 1e-6; cosine, 500 warmup steps (cosine over the "
                           "fraction of the time budget); grad clip 1; EMAModel warmup (inv_gamma 1, power 3/4, max "
                           "0.9999)"}

    def train(self, variant: Variant, budget_s: float, out_dir: Path, data: torch.Tensor) -> dict:
        """Train from scratch on ``data`` (model space [-1, 1], N x C x H x W) for ``budget_s`` seconds of
        training steps; write ``out_dir/{model,ema}.safetensors``; return the training's record."""
        from diffusers.training_utils import EMAModel

        torch.manual_seed(TRAIN_SEED)
        unet = self.network().train()
        sched = diffusers_train_scheduler()
        opt = torch.optim.AdamW(unet.parameters(), lr=variant.lr, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8)
        ema = EMAModel(unet.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=3 / 4)
        bs, n = self.batch_size, len(data)
        warm = {"frac": None}

        def lr_factor(step, frac):
            # get_cosine_schedule_with_warmup's lambda; the cosine runs over the time left after the warmup
            if step < self.WARMUP:
                return step / self.WARMUP
            if warm["frac"] is None:
                warm["frac"] = frac
            p = (frac - warm["frac"]) / max(1e-9, 1 - warm["frac"])
            return max(0.0, 0.5 * (1 + math.cos(math.pi * min(p, 1.0))))

        def step_fn(step, frac):
            for g in opt.param_groups:
                g["lr"] = variant.lr * lr_factor(step, frac)
            x0 = data[data_indices(n, TRAIN_SEED, step * bs, bs)]
            noise = torch.randn_like(x0)
            t = torch.randint(0, sched.config.num_train_timesteps, (bs,)).long()
            noisy = sched.add_noise(x0, noise, t)
            loss = F.mse_loss(unet(noisy, t).sample, noise)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
            opt.step()
            ema.step(unet.parameters())
            opt.zero_grad(set_to_none=True)
            return loss.item()

        stats = timed_training(step_fn, budget_s)
        ema_unet = copy.deepcopy(unet)
        ema.copy_to(ema_unet.parameters())
        out_dir = Path(out_dir)
        save_tensors(unet.state_dict(), out_dir / "model.safetensors")
        save_tensors(ema_unet.state_dict(), out_dir / "ema.safetensors")
        return {**stats, "images": stats["steps"] * bs, "weights": str(out_dir),
                "ema_decay_final": ema.cur_decay_value}

    def sampler(self, record: dict) -> "DiffusersSampler":
        return DiffusersSampler(Path(record["weights"]), self)


class DiffusersSampler:
    def __init__(self, wdir: Path, peer: DiffusersPeer):
        self.wdir, self.peer = wdir, peer

    def sample(self, n, sampler, steps, seed, use_ema, batch_size):
        """(uint8 levels N x C x H x W, network evaluations per sample, label) with ``sampler`` ddim or ddpm."""
        from diffusers import DDIMScheduler, DDPMScheduler

        unet = self.peer.network()
        unet.load_state_dict(load_tensors(self.wdir / ("ema.safetensors" if use_ema else "model.safetensors")))
        unet.eval()
        base = diffusers_train_scheduler()
        cls = {"ddim": DDIMScheduler, "ddpm": DDPMScheduler}[sampler]
        counter = CallCounter(unet)
        out, batches = [], 0
        with torch.inference_mode():
            for b0 in range(0, n, batch_size):
                b = min(batch_size, n - b0)
                sched = cls.from_config(base.config)  # as the pipelines do: DDIMScheduler.from_config(...)
                sched.set_timesteps(steps)
                g = torch.Generator().manual_seed(seed + b0)
                x = torch.randn((b, *self.peer.shape), generator=g)
                for t in sched.timesteps:
                    eps = unet(x, t).sample
                    kw = {"eta": 0.0} if sampler == "ddim" else {}
                    x = sched.step(eps, t, x, generator=g, **kw).prev_sample
                out.append(x)
                batches += 1
        counter.close()
        return to_levels(torch.cat(out), self.peer.levels), counter.calls // batches, \
            f"{sampler} (diffusers {cls.__name__})"
