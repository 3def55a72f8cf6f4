"""A noise-aware CLIP as a method, trained by the same loop, for CLIP guidance (GLIDE, Nichol et al. 2022,
sec. 2.4): a contrastive image-text model (:mod:`genlab.nn.clip`) whose image encoder sees x_t and t, trained on
captioned images noised with the diffusion schedule of the ``diffusion`` section (which must match the generator
it guides, checked when guiding).

Loss (Radford et al. 2021, Fig. 3): the symmetric cross-entropy of the batch's image-caption logits, each image's
own caption the right answer among the batch's captions and the other way round, in nats (under several
processes, among the whole global batch's). Guidance
(:class:`genlab.diffusion.guidance.ClipGuidance`) adds s * grad_x (f(x_t, t) . g(c)) to the sampler's mean, in
eps form like classifier guidance.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from ..config import Config, num
from ..diffusion import Schedule
from ..diffusion.process import q_sample
from ..rng import StepRNG
from .base import Method, register
from .categorical import square_shape, unwrap


def gather_embeddings(img: torch.Tensor, txt: torch.Tensor):
    """(every process's image embeddings, every process's caption embeddings, this process's row offset): under
    several processes the negatives of each pair are the whole global batch, as with one process (gathered with
    gradients, torch.distributed.nn.all_gather; the micro-batch rows of process r start at r * rows)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return img, txt, 0
    from torch.distributed.nn import all_gather

    return torch.cat(all_gather(img)), torch.cat(all_gather(txt)), dist.get_rank() * img.shape[0]


@dataclass
class ClipConfig:
    """The ``clip`` config section (method ``clip``)."""
    embed_dim: int = num(64, 1, 4096)       # joint embedding size


@register
class ClipMethod(Method):
    """Not a generator: ``genlab sample`` refuses it, ``--clip`` loads it to guide a diffusion model."""
    name = "clip"
    family = "CLIP"
    label = "noise-aware CLIP"
    section = "clip"
    Section = ClipConfig
    draws_samples = False
    guides = "diffusion"
    conditions = ("text",)

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.schedule = Schedule.from_config(cfg.diffusion)

    @classmethod
    def check_config(cls, cfg) -> None:
        super().check_config(cfg)
        from ..config import ConfigError

        if not cfg.model.text_cond or cfg.model.text_encoder != "learned":
            raise ConfigError("method=clip learns its own text encoder from the captions: set model.text_cond=true "
                              "and model.text_encoder=learned (data with captions: shapes, or a captioned folder)")

    def build_model(self, shape: tuple, num_classes: int = 0, levels: int = 256, vocab: Optional[dict] = None):
        from ..nn.clip import NoisyCLIP
        from ..nn.text import Tokenizer

        if not vocab:
            raise ValueError("method=clip needs captions to learn from (data.name=shapes, or a folder with "
                             "captions.csv or one .txt per image)")
        m = self.cfg.model
        c, h = square_shape(shape)
        return NoisyCLIP(Tokenizer.from_dict(vocab), in_channels=c, image_size=h, embed_dim=self.cfg.clip.embed_dim,
                         width=m.width, channel_mults=tuple(m.channel_mults), num_res_blocks=m.num_res_blocks,
                         text_width=m.text_width, text_layers=m.text_layers, heads=m.num_heads)

    def loss(self, model, batch: dict, rng: StepRNG) -> torch.Tensor:
        """Symmetric contrastive cross-entropy of images noised to a uniform random timestep and their captions."""
        x0 = batch["x"]
        if "text" not in batch:
            raise ValueError("method=clip trains on captions: the batch has none")
        t = rng.randint(self.schedule.T)
        eps = rng.randn(*x0.shape[1:])
        x_t = q_sample(x0, self.schedule.alphas_cumprod.to(x0.device)[t], eps)
        tokens = unwrap(model).text.tokenizer.encode(batch["text"]).to(x0.device)
        img, txt, scale = model(x_t, t, tokens)
        img_all, txt_all, offset = gather_embeddings(img, txt)
        target = torch.arange(len(x0), device=x0.device) + offset
        logits_i = scale * img.float() @ txt_all.float().T          # this process's images vs every caption
        logits_t = scale * txt.float() @ img_all.float().T          # this process's captions vs every image
        return (F.cross_entropy(logits_i, target) + F.cross_entropy(logits_t, target)) / 2

    @torch.no_grad()
    def retrieval_accuracy(self, model, x: torch.Tensor, captions: list, t: int) -> float:
        """Fraction of images whose own caption scores highest among the given captions, at timestep t
        (fixed noise seed); captions that are the same text count as a match."""
        net = unwrap(model)
        g = torch.Generator().manual_seed(t)
        tt = torch.full((len(x),), t, dtype=torch.long, device=x.device)
        x_t = q_sample(x, self.schedule.alphas_cumprod.to(x.device)[tt], torch.randn(x.shape, generator=g).to(x.device))
        sims = net.encode_image(x_t, tt) @ net.encode_text(net.text.tokenizer.encode(captions).to(x.device)).T
        best = sims.argmax(1).tolist()
        return sum(captions[b] == captions[i] for i, b in enumerate(best)) / len(x)

    def sample_batch(self, *a, **k):
        raise ValueError("this checkpoint is a noise-aware CLIP (method=clip): it guides a diffusion model "
                         "(genlab sample --ckpt GENERATOR --clip THIS --clip-scale S --prompt \"...\") but draws "
                         "no samples itself")

    def log_likelihood(self, *a, **k):
        raise ValueError("a CLIP model (method=clip) has no image likelihood")
