"""Schedules and samplers against ``diffusers`` (the test-only reference): same model outputs, same initial
noise, same timesteps, max abs difference <= 1e-5 at every step."""
import pytest
import torch

diffusers = pytest.importorskip("diffusers", reason="diffusers is the dev extra's reference")
from diffusers import DDIMScheduler, DDPMScheduler  # noqa: E402

from genlab.diffusion import CountingDenoiser, Denoiser  # noqa: E402
from genlab.diffusion.samplers import ddim, ddim_step, ddpm, ddpm_step  # noqa: E402
from genlab.diffusion.schedules import Schedule, timesteps  # noqa: E402

PRED = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
SCHED = {"linear": "linear", "cosine": "squaredcos_cap_v2"}
TOL = 1e-5


def toy_net(x, t, y=None):
    """A fixed nonlinear 'network' of (x_t, t), the same for both implementations."""
    tt = torch.as_tensor(t, dtype=torch.float32).reshape(-1, *([1] * (x.dim() - 1)))
    return 0.6 * torch.tanh(1.3 * x + tt / 700.0) + 0.2 * torch.sin(3 * x) * torch.cos(tt / 90.0)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_schedules_match(kind):
    ours = Schedule.create(kind, 1000)
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule=SCHED[kind])
    assert (ours.betas - ref.betas).abs().max() < 1e-7
    assert (ours.alphas_cumprod - ref.alphas_cumprod).abs().max() < 1e-6


def test_alpha_bar_more_accurate_than_float32_cumprod():
    ours = Schedule.create("linear", 1000).alphas_cumprod.double()
    exact = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
    ref = DDPMScheduler(num_train_timesteps=1000).alphas_cumprod.double()
    assert ((ours - exact) / exact).abs().max() < 1e-7
    assert ((ours - exact) / exact).abs().max() < ((ref - exact) / exact).abs().max()


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", [1, 10, 50, 333, 1000])
def test_timesteps_match(spacing, steps):
    ref = DDIMScheduler(num_train_timesteps=1000, timestep_spacing=spacing)
    ref.set_timesteps(steps)
    assert torch.equal(timesteps(1000, steps, spacing), ref.timesteps.long())


def _reference_run(sched, x, steps, step_kw):
    """diffusers' loop; the noise of step k comes from a generator seeded with k."""
    xs, x0s = [x], []
    sched.set_timesteps(steps)
    for k, t in enumerate(sched.timesteps):
        out = sched.step(toy_net(x, t.expand(x.shape[0])), t, x, generator=torch.Generator().manual_seed(k),
                         **step_kw)
        x = out.prev_sample
        xs.append(x)
        x0s.append(out.pred_original_sample)
    return xs, x0s


class SeededPerStep:
    """Our sampler's noise source with the same per-step seeding as the reference loop above."""

    def __init__(self):
        self.k = 0

    def randn(self, shape, device=None, dtype=torch.float32):  # noqa: D102
        z = torch.randn(shape, generator=torch.Generator().manual_seed(self.k), dtype=dtype)
        self.k += 1
        return z


def _check(kind, prediction, clip, steps, ref_sched, step_kw, our_step, dtype=torch.float64):
    """Teacher-forced: from each reference state x_t, our step must give the reference x_s and x0_hat within
    TOL. Run in float64 by default: in float32, diffusers forms beta_{t|s} = 1 - alpha_bar_t / alpha_bar_s by
    cancellation (relative error up to 2e-4 at small t), which alone moves the noise term by ~1.5e-5."""
    schedule = Schedule.create(kind, 1000)
    # diffusers forms alpha_bar by a float32 cumprod (relative error up to ~1e-5 at t = 999); ours is a float64
    # cumprod rounded once (test_alpha_bar_more_accurate_than_float32_cumprod). The sampler comparison gives both
    # the same alpha_bar, so it tests the sampler math alone.
    ref_sched.alphas_cumprod = schedule.alphas_cumprod.to(dtype)
    den = Denoiser(toy_net, schedule, prediction, clip=clip)
    x_T = torch.randn(4, 1, 6, 6, generator=torch.Generator().manual_seed(7), dtype=dtype)
    ref_x, ref_x0 = _reference_run(ref_sched, x_T.clone(), steps, step_kw)
    ts = timesteps(1000, steps, "leading")
    ab = schedule.alphas_cumprod
    for k, t in enumerate(ts.tolist()):
        ab_s = ab[ts[k + 1]].item() if k + 1 < steps else 1.0
        x = ref_x[k]
        x0, eps = den(x, torch.full((4,), t))
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(k), dtype=dtype)
        x_s = our_step(x, x0, eps, ab[t].item(), ab_s, noise, last=k + 1 == steps)
        assert (x0 - ref_x0[k]).abs().max() <= TOL, f"x0_hat differs at step {k} (t={t})"
        assert (x_s - ref_x[k + 1]).abs().max() <= TOL, f"x_s differs at step {k} (t={t})"
    return schedule, den, x_T, ref_x


def _free_run(sampler, schedule, den, x_T, steps, ref_x, tol=TOL, **kw):
    """Whole run from the same noise: every step of our trajectory within tol of the reference's."""
    xs = []
    counter = CountingDenoiser(den)
    out = sampler(counter, x_T.clone(), schedule, steps, generator=SeededPerStep(), spacing="leading",
                  callback=lambda s: xs.append(s["x_t"]), **kw)
    assert counter.nfe == steps, "one network evaluation per step"
    assert torch.equal(out, xs[-1])
    # relative to the size of the values: unclipped eps-prediction can make states of magnitude ~10-100
    worst = max(((a - b).abs().max() / b.abs().max().clamp(min=1)).item() for a, b in zip(xs, ref_x[1:]))
    assert worst <= tol, worst


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("kind,variance,steps,clip", [
    ("linear", "small", 1000, True), ("linear", "large", 50, True), ("cosine", "small", 50, False),
    ("cosine", "small", 20, True)])
def test_ddpm_matches_diffusers(prediction, kind, variance, steps, clip):
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule=SCHED[kind], prediction_type=PRED[prediction],
                        variance_type="fixed_" + variance, clip_sample=clip)

    def step(x, x0, eps, ab_t, ab_s, noise, last):
        return ddpm_step(x, x0, ab_t, ab_s, None if last else noise, variance)

    schedule, den, x_T, ref_x = _check(kind, prediction, clip, steps, ref, {}, step)
    _free_run(ddpm, schedule, den, x_T, steps, ref_x, variance=variance)
    # float32 on both sides: the whole trajectory still agrees to 1e-4 relative (see _check for why not 1e-5)
    ref_x32, _ = _reference_run(ref, x_T.float(), steps, {})
    _free_run(ddpm, schedule, den, x_T.float(), steps, ref_x32, tol=1e-4, variance=variance)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("kind,eta,steps,clip", [
    ("linear", 0.0, 50, True), ("cosine", 0.0, 10, False), ("cosine", 1.0, 50, True), ("linear", 0.5, 100, False),
    ("cosine", 0.0, 1000, True)])
def test_ddim_matches_diffusers(prediction, kind, eta, steps, clip):
    ref = DDIMScheduler(num_train_timesteps=1000, beta_schedule=SCHED[kind], prediction_type=PRED[prediction],
                        clip_sample=clip)

    def step(x, x0, eps, ab_t, ab_s, noise, last):
        return ddim_step(x0, eps, ab_t, ab_s, eta, noise)

    schedule, den, x_T, ref_x = _check(kind, prediction, clip, steps, ref,
                                       {"eta": eta, "use_clipped_model_output": True}, step)
    _free_run(ddim, schedule, den, x_T, steps, ref_x, eta=eta)
    ref_x32, _ = _reference_run(ref, x_T.float(), steps, {"eta": eta, "use_clipped_model_output": True})
    _free_run(ddim, schedule, den, x_T.float(), steps, ref_x32, tol=1e-4, eta=eta)


# ----------------------------------------------------------------------------- fast samplers

from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler, HeunDiscreteScheduler  # noqa: E402

from genlab.diffusion.samplers import _karras_levels, dpmpp_2m, euler, heun  # noqa: E402


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp(min=1)).item()


def _reference_ve_run(sched, x_T, steps, dtype):
    """diffusers' loop for schedulers working on sigmas (scale_model_input, then step)."""
    sched.set_timesteps(steps)
    x = x_T * sched.init_noise_sigma
    xs, nfe = [], 0
    for t in sched.timesteps:
        out = toy_net(sched.scale_model_input(x, t), t.to(dtype).expand(x.shape[0]))
        nfe += 1
        x = sched.step(out, t, x).prev_sample
        xs.append(x)
    return xs, nfe


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("kind,steps", [("linear", 20), ("cosine", 10), ("cosine", 50), ("linear", 5)])
def test_dpmpp_2m_matches_diffusers(prediction, kind, steps):
    schedule = Schedule.create(kind, 1000)
    ref = DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_schedule=SCHED[kind],
                                      prediction_type=PRED[prediction], algorithm_type="dpmsolver++",
                                      solver_order=2, timestep_spacing="trailing")
    ref.alphas_cumprod = schedule.alphas_cumprod.clone()
    ref.alpha_t, ref.sigma_t = ref.alphas_cumprod.sqrt(), (1 - ref.alphas_cumprod).sqrt()
    ref.lambda_t = ref.alpha_t.log() - ref.sigma_t.log()
    ref.sigmas = ((1 - ref.alphas_cumprod) / ref.alphas_cumprod) ** 0.5
    x_T = torch.randn(4, 1, 6, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ref_xs, ref_nfe = _reference_ve_run(ref, x_T.clone(), steps, torch.float64)
    xs = []
    den = CountingDenoiser(Denoiser(toy_net, schedule, prediction, clip=False))
    dpmpp_2m(den, x_T.clone(), schedule, steps, spacing="trailing", callback=lambda s: xs.append(s["x_t"]))
    assert den.nfe == ref_nfe == steps
    for k, (a, b) in enumerate(zip(xs, ref_xs)):
        assert _rel(a, b) <= TOL, f"step {k}: {_rel(a, b)}"


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("kind,steps", [("linear", 10), ("cosine", 20)])
@pytest.mark.parametrize("name", ["euler", "heun"])
def test_karras_samplers_match_diffusers(name, prediction, kind, steps):
    schedule = Schedule.create(kind, 1000)
    cls = EulerDiscreteScheduler if name == "euler" else HeunDiscreteScheduler
    ref = cls(num_train_timesteps=1000, beta_schedule=SCHED[kind], prediction_type=PRED[prediction],
              use_karras_sigmas=True, timestep_spacing="linspace")
    ref.alphas_cumprod = schedule.alphas_cumprod.clone()
    x_T = torch.randn(3, 1, 5, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    ref_xs, ref_nfe = _reference_ve_run(ref, x_T.clone(), steps, torch.float64)
    # diffusers rounds the Karras levels to float32 (at sigma ~ 1e4 that moves eps-prediction's x0 by ~1e-4), and
    # starts from sigma_max * x_T instead of sqrt(1 + sigma_max^2) * x_T: give ours the same levels and start
    levels = torch.cat([ref.sigmas[:1], ref.sigmas[1::2]]) if name == "heun" else ref.sigmas
    assert torch.allclose(levels.double(), torch.tensor(_karras_levels(schedule, steps, sigma_max=None),
                                                               dtype=torch.float64),
                          rtol=1e-6)
    s0 = levels[0].double()
    x_start = x_T * s0 / (1 + s0 ** 2).sqrt()
    xs = []
    den = CountingDenoiser(Denoiser(toy_net, schedule, prediction, clip=False))
    fn = euler if name == "euler" else heun
    out = fn(den, x_start, schedule, steps, sigmas=levels, callback=lambda s: xs.append(s["x_t"]))
    assert den.nfe == ref_nfe == (steps if name == "euler" else 2 * steps - 1)
    if name == "heun":  # diffusers yields after each half step (2 calls a step, 1 for the last one to sigma 0)
        ref_xs = ref_xs[1::2] + [ref_xs[-1]]
    assert len(ref_xs) == steps
    sig = levels.tolist()
    # eps-prediction on the cosine schedule starts at sigma ~ 2e4, where x0 = x - sigma * eps multiplies the
    # float32 rounding of diffusers' timesteps (~1e-9 in the toy network's output) by 2e4: 1e-4 there
    tol = 1e-4 if (kind, prediction) == ("cosine", "eps") else TOL
    for k, (a, b) in enumerate(zip(xs, ref_xs)):  # ours reports VP-space states; diffusers keeps VE ones
        b_vp = b / (1 + sig[k + 1] ** 2) ** 0.5
        assert _rel(a, b_vp) <= tol, f"step {k}: {_rel(a, b_vp)}"
    assert _rel(out, ref_xs[-1]) <= tol
