"""lucidrains/denoising-diffusion-pytorch as a benchmark peer: its ``Unet`` in its ``GaussianDiffusion``, called
directly with the recipe of its ``Trainer`` (the Trainer itself is not used: it computes FID with Inception
weights it downloads).

The recipe is the library's: ``GaussianDiffusion`` with 1000 steps and its defaults (v target, sigmoid beta
schedule, auto-normalization of [0, 1] images), Adam lr 8e-5 betas (0.9, 0.99) at a constant learning rate,
gradient clipping at 1, ``ema_pytorch.EMA`` with beta 0.995 updated every 10 steps. Sampling: its
``ddim_sample`` (``sampling_timesteps``, eta 0) and its ancestral ``p_sample_loop`` over all 1000 steps; a DDPM
on fewer steps is its DDIM with eta 1.
"""
from __future__ import annotations

from pathlib import Path

import torch

from genlab.train.loop import data_indices

from .common import TRAIN_SEED, CallCounter, Variant, count_params, load_tensors, save_tensors, timed_training, \
    to_levels


def ddp_unet(channels: int = 1, dim: int = 32, dim_mults=(1, 2)):
    from denoising_diffusion_pytorch import Unet

    # dim 32 as the B1 protocol asks; dim_mults (1, 2): two levels (8x8 and 4x4 for digits, full attention at
    # the inner level)
    return Unet(dim=dim, dim_mults=tuple(dim_mults), channels=channels)


def ddp_diffusion(unet, image_size=8, sampling_timesteps=None, eta=0.0):
    from denoising_diffusion_pytorch import GaussianDiffusion
    import denoising_diffusion_pytorch.denoising_diffusion_pytorch as ddp_mod

    ddp_mod.tqdm = _no_tqdm  # its sampling loops draw a progress bar per batch
    # its defaults otherwise: objective pred_v, sigmoid beta schedule, auto_normalize (takes [0, 1] images)
    return GaussianDiffusion(unet, image_size=image_size, timesteps=1000, sampling_timesteps=sampling_timesteps,
                             ddim_sampling_eta=eta)


def _no_tqdm(it=None, *args, **kwargs):
    return it


class DdpmPytorchPeer:
    """The denoising-diffusion-pytorch peer (see the module docstring); ``shape`` and ``levels`` are the data's
    (8x8 digits with 17 levels by default), ``dim`` / ``dim_mults`` the Unet's."""
    family = "ddpm-pytorch"

    def __init__(self, batch_size: int = 128, shape=(1, 8, 8), levels: int = 17, dim: int = 32, dim_mults=(1, 2)):
        self.batch_size, self.shape, self.levels = batch_size, tuple(shape), levels
        self.dim, self.dim_mults = dim, tuple(dim_mults)

    def variants(self) -> list[Variant]:
        """The published learning rate and one higher one (the budgets are short)."""
        return [Variant(self.family, "ddpm-pytorch", 8e-5, "published (Trainer recipe)"),
                Variant(self.family, "ddpm-pytorch-lr1e-3", 1e-3, "higher LR")]

    def network(self) -> torch.nn.Module:
        return ddp_unet(self.shape[0], self.dim, self.dim_mults)

    def diffusion(self, unet, sampling_timesteps=None, eta=0.0):
        return ddp_diffusion(unet, tuple(self.shape[1:]) if self.shape[1] != self.shape[2] else self.shape[1],
                             sampling_timesteps=sampling_timesteps, eta=eta)

    def describe(self) -> dict:
        return {"params": count_params(self.network()), "batch_size": self.batch_size, "shape": list(self.shape),
                "details": f"Unet(dim={self.dim}, dim_mults={self.dim_mults}, channels={self.shape[0]}); "
                           "GaussianDiffusion 1000 steps (pred_v, sigmoid schedule: its defaults), DDIM 50 via "
                           "sampling_timesteps; Adam betas (0.9, 0.99), constant LR, grad clip 1; ema_pytorch.EMA "
                           "beta 0.995 update_every 10"}

    def train(self, variant: Variant, budget_s: float, out_dir: Path, data: torch.Tensor) -> dict:
        """Train from scratch on ``data`` (model space [-1, 1], N x C x H x W) for ``budget_s`` seconds of
        training steps; write ``out_dir/{model,ema}.safetensors`` (the Unet's weights); return the record."""
        from ema_pytorch import EMA

        torch.manual_seed(TRAIN_SEED)
        diffusion = self.diffusion(self.network()).train()
        opt = torch.optim.Adam(diffusion.parameters(), lr=variant.lr, betas=(0.9, 0.99))
        ema = EMA(diffusion, beta=0.995, update_every=10)
        data01 = (data + 1) / 2  # GaussianDiffusion normalizes [0, 1] -> [-1, 1] itself (auto_normalize)
        bs, n = self.batch_size, len(data)

        def step_fn(step, frac):
            x0 = data01[data_indices(n, TRAIN_SEED, step * bs, bs)]
            loss = diffusion(x0)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(diffusion.parameters(), 1.0)
            opt.step()
            opt.zero_grad()
            ema.update()
            return loss.item()

        stats = timed_training(step_fn, budget_s)
        out_dir = Path(out_dir)
        save_tensors(diffusion.model.state_dict(), out_dir / "model.safetensors")
        save_tensors(ema.ema_model.model.state_dict(), out_dir / "ema.safetensors")
        return {**stats, "images": stats["steps"] * bs, "weights": str(out_dir)}

    def sampler(self, record: dict) -> "DdpmPytorchSampler":
        return DdpmPytorchSampler(Path(record["weights"]), self)


class DdpmPytorchSampler:
    def __init__(self, wdir: Path, peer: DdpmPytorchPeer):
        self.wdir, self.peer = wdir, peer

    def sample(self, n, sampler, steps, seed, use_ema, batch_size):
        """(uint8 levels N x C x H x W, network evaluations per sample, label) with ``sampler`` ddim or ddpm."""
        unet = self.peer.network()
        unet.load_state_dict(load_tensors(self.wdir / ("ema.safetensors" if use_ema else "model.safetensors")))
        if sampler == "ddim":
            diffusion, label = self.peer.diffusion(unet, sampling_timesteps=steps), "ddim (ddim_sample, eta 0)"
        elif steps == 1000:
            diffusion, label = self.peer.diffusion(unet), "ddpm (p_sample_loop)"
        else:  # its ancestral sampler runs all 1000 steps; on a subsequence DDIM with eta = 1 is the DDPM analogue
            diffusion, label = self.peer.diffusion(unet, sampling_timesteps=steps, eta=1.0), \
                "ddpm (ddim_sample, eta 1)"
        diffusion.eval()
        counter = CallCounter(unet)
        out, batches = [], 0
        for b0 in range(0, n, batch_size):
            b = min(batch_size, n - b0)
            torch.manual_seed(seed + b0)  # it draws its noise from the global generator
            out.append(diffusion.sample(batch_size=b) * 2 - 1)  # its samples are in [0, 1]
            batches += 1
        counter.close()
        return to_levels(torch.cat(out), self.peer.levels), counter.calls // batches, label
