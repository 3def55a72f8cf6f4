"""Diffusion math as small pure functions: schedules, the forward process, denoisers and samplers."""
from .denoiser import CountingDenoiser, Denoiser
from .process import PREDICTIONS, q_sample, target, to_x0_eps
from .samplers import SAMPLERS, PerSampleNoise, get_sampler
from .schedules import Schedule, timesteps
