"""Randomness that does not depend on how the work is split.

A training step draws its random numbers (timesteps, noise, label dropout) for the whole global micro-batch
from a generator seeded by (seed, step, micro-step), and each process keeps its own rows. So one process and
N processes with the same global batch see the same numbers, and a resumed run continues exactly: the state
is (seed, step), nothing else.
"""
from __future__ import annotations

import torch


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (SplitMix64-style mixing), so nearby steps get unrelated streams."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h ^= (int(p) + 0x9E3779B97F4A7C15 + (h << 6) + (h >> 2)) & 0xFFFFFFFFFFFFFFFF
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


class StepRNG:
    """Draws for ``global_n`` rows from one CPU generator, returning the rows ``rows`` of this process on
    ``device``. Each call draws a fresh block, in the same order on every process."""

    def __init__(self, seed: int, global_n: int, rows: slice = slice(None), device="cpu"):
        self.gen = torch.Generator().manual_seed(seed)
        self.global_n, self.rows, self.device = global_n, rows, device

    def randn(self, *shape: int) -> torch.Tensor:
        return torch.randn((self.global_n, *shape), generator=self.gen)[self.rows].to(self.device)

    def rand(self, *shape: int) -> torch.Tensor:
        return torch.rand((self.global_n, *shape), generator=self.gen)[self.rows].to(self.device)

    def randint(self, high: int, *shape: int) -> torch.Tensor:
        return torch.randint(high, (self.global_n, *shape), generator=self.gen)[self.rows].to(self.device)
