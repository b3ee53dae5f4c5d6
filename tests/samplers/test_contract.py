"""The contract every registered sampler keeps (see difflab.samplers.base).

Per-call state, an unchanged sampler object, NFE = model calls, typed output in the input's
dtype, the last step returning the x_0 estimate, the metric key, validated options. The
single-output ``step`` of DDPM and DDIM keeps its own checks here too.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, EulerDiscreteScheduler

from difflab.diffusion.process import GaussianDiffusion
from difflab.samplers import (
    SAMPLERS,
    DDIMSampler,
    DDPMSampler,
    DPMSolverSampler,
    EulerAncestralSampler,
    EulerSampler,
    HeunSampler,
    ModelFn,
    Sampler,
    SigmaSampler,
    StepOutput,
    UniPCSampler,
    generate,
    karras_sigmas,
    sigma_to_t,
    split_output,
    t_to_sigma,
    threshold_sample,
    vp_sigmas,
)

# a stochastic configuration of every sampler (UniPC has none: it is deterministic)
CONFIGS = {
    "ddpm": {"num_steps": 25},
    "ddim": {"num_steps": 25, "eta": 0.5},
    "dpm_solver": {"num_steps": 25, "order": 3, "algorithm": "sde-dpmsolver++"},
    "euler": {"num_steps": 25, "s_churn": 5.0},
    "euler_ancestral": {"num_steps": 25},
    "heun": {"num_steps": 25, "s_churn": 5.0, "use_karras_sigmas": True},
    "unipc": {"num_steps": 25, "order": 3},
}
STOCHASTIC = set(CONFIGS) - {"unipc"}
SINGLE_OUTPUT = ["ddpm", "ddim"]  # samplers with a stateless step(process, model_output, t, t_prev, x_t)


@pytest.fixture(scope="module")
def process() -> GaussianDiffusion:
    return GaussianDiffusion.from_schedule("cosine", 100)


def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return 0.5 * torch.tanh(x) + 0.2 * torch.cos(x + t.to(x.dtype).reshape(-1, *[1] * (x.ndim - 1)) / 30)


def test_registry() -> None:
    assert set(SAMPLERS) == {"ddpm", "ddim", "dpm_solver", "euler", "euler_ancestral", "heun", "unipc"}
    assert set(CONFIGS) == set(SAMPLERS)
    for name, cls in SAMPLERS.items():
        assert issubclass(cls, Sampler) and cls.name == name


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_grid(name: str, process) -> None:
    sampler = SAMPLERS[name](**CONFIGS[name])
    state = sampler.init_state(process, "eps")
    ts, sigmas = state.timesteps, state.sigmas
    assert ts.shape == (25,) and sigmas.shape == (26,) and sigmas.dtype == torch.float64
    assert bool((ts[1:] < ts[:-1]).all()) and ts.min() >= 0 and ts.max() <= 99
    assert bool((sigmas[1:] < sigmas[:-1]).all()) and sigmas[-1] == 0
    # sigma and timestep agree: sigma_i is the noise level of timestep i
    torch.testing.assert_close(t_to_sigma(ts.double(), vp_sigmas(process).log()), sigmas[:-1])
    if getattr(sampler, "use_karras_sigmas", False):
        assert ts.dtype == torch.float64
    else:
        assert ts.dtype == torch.long and torch.equal(ts, sampler.timesteps(100))


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_state_is_per_call_and_the_sampler_never_changes(name: str, process) -> None:
    sampler = SAMPLERS[name](**CONFIGS[name])
    before = copy.deepcopy(vars(sampler))
    x_T = torch.randn(3, 2, generator=torch.Generator().manual_seed(0))
    alone = []
    for seed in (1, 2):
        state, x, g = sampler.init_state(process, "v"), x_T.clone(), torch.Generator().manual_seed(seed)
        for _ in range(state.num_steps):
            x = sampler.advance(ModelFn(model), x, state, g).prev_sample
        alone.append(x)
    # two runs interleaved step by step with one sampler object give the same as run alone
    states = [sampler.init_state(process, "v") for _ in range(2)]
    xs, gs = [x_T.clone(), x_T.clone()], [torch.Generator().manual_seed(s) for s in (1, 2)]
    for _ in range(states[0].num_steps):
        for k in range(2):
            xs[k] = sampler.advance(ModelFn(model), xs[k], states[k], gs[k]).prev_sample
    for k in range(2):
        assert torch.equal(xs[k], alone[k])
    assert vars(sampler) == before
    with pytest.raises(ValueError, match="create a new state per call"):
        sampler.advance(ModelFn(model), xs[0], states[0], gs[0])


@pytest.mark.parametrize(
    "sampler",
    [
        DDPMSampler(num_steps=7),
        DDIMSampler(num_steps=7),
        DPMSolverSampler(num_steps=7, order=3),
        EulerSampler(num_steps=7, s_churn=2.0),
        EulerAncestralSampler(num_steps=7, use_karras_sigmas=True),
        HeunSampler(num_steps=7),
        HeunSampler(num_steps=7, s_churn=2.0, use_karras_sigmas=True),
        UniPCSampler(num_steps=7, order=3),
    ],
    ids=repr,
)
def test_nfe_counts_network_calls(sampler: Sampler, process) -> None:
    calls = []

    def counting(x, t):
        calls.append(t)
        return model(x, t)

    _, traj = generate(
        counting, process, sampler, (2, 3), torch.Generator().manual_seed(0), return_trajectory=True,
        progress=False, prediction_type="eps",
    )
    assert len(calls) == traj.nfe == sampler.nfe(100)
    assert sampler.nfe(100) == (13 if isinstance(sampler, HeunSampler) else 7)


@pytest.mark.parametrize(
    ("sampler", "key"),
    [
        (DDPMSampler(), "ddpm1000"),
        (DDPMSampler(num_steps=100), "ddpm100"),
        (DDIMSampler(), "ddim50"),
        (DDIMSampler(eta=1.0), "ddim50_eta1"),
        (DDIMSampler(num_steps=20, eta=0.5), "ddim20_eta0.5"),
        (DPMSolverSampler(num_steps=10), "dpmpp2m_nfe10"),
        (DPMSolverSampler(num_steps=20, order=3, algorithm="sde-dpmsolver++", use_karras_sigmas=True), "dpmpp3m_sde_karras_nfe20"),
        (DPMSolverSampler(num_steps=10, algorithm="dpmsolver", solver_type="heun"), "dpm2m_heun_nfe10"),
        (DPMSolverSampler(num_steps=10, order=1, solver_type="heun"), "dpmpp1m_nfe10"),
        (DPMSolverSampler(num_steps=10, lower_order_final=False, spacing="linspace"), "dpmpp2m_nolof_linspace_nfe10"),
        (EulerSampler(num_steps=20), "euler_nfe20"),
        (EulerSampler(num_steps=20, s_churn=40, s_tmin=0.05, s_tmax=50), "euler_churn40_tmin0.05_tmax50_nfe20"),
        (EulerAncestralSampler(num_steps=20), "euler_a_nfe20"),
        (EulerAncestralSampler(num_steps=20, eta=0.5, use_karras_sigmas=True, rho=5), "euler_a_karras_rho5_eta0.5_nfe20"),
        (HeunSampler(num_steps=10, use_karras_sigmas=True), "heun_karras_nfe19"),
        (HeunSampler(num_steps=18, use_karras_sigmas=True, sigma_max=80), "heun_karras_smax80_nfe35"),
        (DPMSolverSampler(num_steps=10, use_karras_sigmas=True, sigma_min=0.02, sigma_max=80), "dpmpp2m_karras_smin0.02_smax80_nfe10"),
        (HeunSampler(num_steps=18, spacing="leading", steps_offset=1), "heun_leading_offset1_nfe35"),
        (UniPCSampler(num_steps=10), "unipc_nfe10"),
        (UniPCSampler(num_steps=10, order=3, solver_type="bh1"), "unipc3_bh1_nfe10"),
        # options that change the samples are named, so that no two protocols share a key
        (DDIMSampler(num_steps=10, eta=1.0, clip_sample=False), "ddim10_eta1_noclip"),
        (DDIMSampler(num_steps=10, spacing="leading"), "ddim10_leading"),
        (DDIMSampler(num_steps=10, spacing="leading", steps_offset=1, clip_range=2.0), "ddim10_leading_offset1_clip2"),
        (DDPMSampler(variance_type="fixed_large"), "ddpm1000_fixed_large"),
        (DDPMSampler(spacing="trailing"), "ddpm1000"),  # every timestep: the spacing changes nothing
        (DDPMSampler(num_steps=100, spacing="trailing", clip_sample=False), "ddpm100_trailing_noclip"),
        (DPMSolverSampler(num_steps=10, dynamic_thresholding=True), "dpmpp2m_nfe10_dynthresh0.995"),
        (HeunSampler(num_steps=10, use_karras_sigmas=True, clip_sample=False), "heun_karras_nfe19_noclip"),
        (UniPCSampler(num_steps=10, dynamic_thresholding=True, sample_max_value=2.0), "unipc_nfe10_dynthresh0.995_max2"),
        # a number :g would round is written in full: 0.5000001 is not 0.5
        (DDIMSampler(num_steps=10, eta=0.5000001), "ddim10_eta0.5000001"),
        (DDIMSampler(num_steps=10, clip_range=1.0000001), "ddim10_clip1.0000001"),
        (EulerSampler(num_steps=20, s_churn=40.0000001), "euler_churn40.0000001_nfe20"),
    ],
    ids=lambda v: v if isinstance(v, str) else type(v).__name__,
)
def test_key_part(sampler: Sampler, key: str) -> None:
    assert sampler.key_part(1000) == key


@pytest.mark.parametrize("name", sorted(SAMPLERS))
@pytest.mark.parametrize("prediction_type", ["eps", "x0", "v"])
def test_last_step_returns_pred_x0(name: str, prediction_type: str, process) -> None:
    sampler = SAMPLERS[name](**CONFIGS[name])
    x, traj = generate(
        model, process, sampler, (4, 2), torch.Generator().manual_seed(4), return_trajectory=True,
        progress=False, prediction_type=prediction_type,
    )
    torch.testing.assert_close(x, traj.pred_x0[-1])
    assert x.abs().max() <= 1.0 + 1e-6  # clip_sample defaults to True
    assert len(traj.x_t) == 26 and len(traj.pred_x0) == 25


@pytest.mark.parametrize("name", sorted(SAMPLERS))
@pytest.mark.parametrize("shape", [(3, 2), (2, 3, 4, 4)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_output_keeps_shape_and_dtype(name: str, shape, dtype, process) -> None:
    sampler = SAMPLERS[name](**CONFIGS[name])
    state = sampler.init_state(process, "eps")
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=dtype)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        out = sampler.advance(ModelFn(model), x, state, g)
        assert isinstance(out, StepOutput)
        for tensor in (out.prev_sample, out.pred_x0):
            assert tensor.shape == shape and tensor.dtype == dtype and torch.isfinite(tensor).all()
        x = out.prev_sample


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_randomness_comes_from_the_generator(name: str, process) -> None:
    sampler = SAMPLERS[name](**CONFIGS[name])

    def run(seed: int) -> tuple[torch.Tensor, torch.Generator]:
        g = torch.Generator().manual_seed(seed)
        return generate(model, process, sampler, (3, 2), g, progress=False, prediction_type="eps"), g

    (a, ga), (b, _) = run(0), run(0)
    assert torch.equal(a, b)
    c, _ = run(1)
    assert not torch.equal(a, c)
    # deterministic samplers draw x_T and nothing else; stochastic ones draw more
    reference = torch.Generator().manual_seed(0)
    torch.randn(3, 2, generator=reference)
    assert torch.equal(ga.get_state(), reference.get_state()) == (name not in STOCHASTIC)


@pytest.mark.parametrize("name", sorted(STOCHASTIC))
def test_stochastic_steps_need_a_generator(name: str, process) -> None:
    sampler = SAMPLERS[name](**CONFIGS[name])
    state = sampler.init_state(process, "eps")
    with pytest.raises(ValueError, match="generator"):
        sampler.advance(ModelFn(model), torch.zeros(2, 3), state, None)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_clip_range(name: str, process) -> None:
    x = torch.full((2, 3), 3.0)
    for kwargs, expected in (({"clip_range": 0.5}, torch.full((2, 3), 0.5)), ({"clip_sample": False}, x)):
        sampler = SAMPLERS[name](**CONFIGS[name], **kwargs)
        state = sampler.init_state(process, "x0")
        out = sampler.advance(ModelFn(lambda x, t: torch.full_like(x, 3.0)), x, state, torch.Generator())
        assert torch.equal(out.pred_x0, expected)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"spacing": "even"}, r"'even'.*\['linspace', 'leading', 'trailing'\]"),
        ({"num_steps": 0}, "num_steps.*0"),
        ({"clip_range": 0.0}, "clip_range.*0.0"),
        ({"dynamic_thresholding_ratio": 1.5}, r"dynamic_thresholding_ratio.*\(0, 1\].*1.5"),
        ({"sample_max_value": 0.5}, "sample_max_value.*0.5"),
        ({"steps_offset": -1}, "steps_offset.*-1"),
    ],
)
def test_bad_options(name: str, kwargs, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SAMPLERS[name](**kwargs)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_bad_prediction_type(name: str, process) -> None:
    with pytest.raises(ValueError, match=r"'epsilon'.*\['eps', 'x0', 'v'\]"):
        SAMPLERS[name](**CONFIGS[name]).init_state(process, "epsilon")


def test_karras_timesteps_need_the_process() -> None:
    with pytest.raises(ValueError, match="Karras sigmas depend on the noise schedule"):
        EulerSampler(use_karras_sigmas=True).timesteps(1000)
    assert EulerSampler(num_steps=2000, use_karras_sigmas=True).nfe(1000) == 2000
    with pytest.raises(ValueError, match=r"num_steps.*\[1, num_train_timesteps=1000\].*2000"):
        EulerSampler(num_steps=2000).nfe(1000)


# ---------------------------------------------------------------- the single-output step (DDPM, DDIM)
@pytest.mark.parametrize("name", SINGLE_OUTPUT)
@pytest.mark.parametrize("shape", [(3, 2), (2, 3, 4, 4)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_step_output_and_statelessness(name: str, shape, dtype, process) -> None:
    sampler = SAMPLERS[name](**CONFIGS[name])
    g = torch.Generator().manual_seed(0)
    x_t = torch.randn(shape, generator=g, dtype=dtype)
    out = torch.randn(shape, generator=g, dtype=dtype)
    a = sampler.step(process, out, 60, 56, x_t, torch.Generator().manual_seed(1), prediction_type="eps")
    assert isinstance(a, StepOutput)
    for tensor in (a.prev_sample, a.pred_x0):
        assert tensor.shape == shape and tensor.dtype == dtype and torch.isfinite(tensor).all()
    # any order, any pair, no priming: the same inputs give the same outputs
    sampler.step(process, out, 3, -1, x_t, torch.Generator().manual_seed(2), prediction_type="v")
    sampler.step(process, out, 99, 0, x_t, torch.Generator().manual_seed(2), prediction_type="eps")
    b = sampler.step(process, out, 60, 56, x_t, torch.Generator().manual_seed(1), prediction_type="eps")
    assert torch.equal(a.prev_sample, b.prev_sample)
    c = sampler.step(process, out, 60, 56, x_t, torch.Generator().manual_seed(3), prediction_type="eps")
    assert not torch.equal(a.prev_sample, c.prev_sample)  # stochastic configs use the generator


@pytest.mark.parametrize("name", SINGLE_OUTPUT)
@pytest.mark.parametrize("prediction_type", ["eps", "x0", "v"])
def test_single_output_last_step_returns_pred_x0(name: str, prediction_type: str, process) -> None:
    sampler = SAMPLERS[name](**CONFIGS[name])
    g = torch.Generator().manual_seed(4)
    x_t = torch.randn(4, 2, generator=g)
    out = torch.randn(4, 2, generator=g)
    state = g.get_state()
    res = sampler.step(process, out, 2, -1, x_t, g, prediction_type=prediction_type)
    assert torch.equal(g.get_state(), state)  # no noise at the last step
    torch.testing.assert_close(res.prev_sample, res.pred_x0)
    assert res.pred_x0.abs().max() <= 1.0  # clip_sample defaults to True


@pytest.mark.parametrize("name", SINGLE_OUTPUT)
def test_single_output_clip_range(name: str, process) -> None:
    sampler = SAMPLERS[name](**CONFIGS[name], clip_range=0.5)
    x = torch.full((2, 3), 3.0)
    res = sampler.step(process, x, 50, 40, x, torch.Generator(), prediction_type="x0")
    assert torch.equal(res.pred_x0, torch.full((2, 3), 0.5))
    free = SAMPLERS[name](**CONFIGS[name], clip_sample=False)
    assert torch.equal(free.step(process, x, 50, 40, x, torch.Generator(), prediction_type="x0").pred_x0, x)


@pytest.mark.parametrize("name", SINGLE_OUTPUT)
def test_bad_step_arguments(name: str, process) -> None:
    sampler = SAMPLERS[name](**CONFIGS[name])
    x = torch.zeros(2, 3)
    g = torch.Generator()
    with pytest.raises(ValueError, match=r"t must be an int in \[0, 99\], got 100"):
        sampler.step(process, x, 100, 50, x, g, prediction_type="eps")
    with pytest.raises(ValueError, match=r"t must be an int in \[0, 99\], got -1"):
        sampler.step(process, x, -1, -2, x, g, prediction_type="eps")
    with pytest.raises(ValueError, match=r"t_prev must be an int in \[-1, t - 1 = 49\], got 50"):
        sampler.step(process, x, 50, 50, x, g, prediction_type="eps")
    with pytest.raises(ValueError, match=r"t_prev.*got -2"):
        sampler.step(process, x, 50, -2, x, g, prediction_type="eps")
    with pytest.raises(ValueError, match=r"model_output has shape \(2, 4\) but x_t has shape \(2, 3\)"):
        sampler.step(process, torch.zeros(2, 4), 50, 40, x, g, prediction_type="eps")
    with pytest.raises(ValueError, match=r"'epsilon'.*\['eps', 'x0', 'v'\]"):
        sampler.step(process, x, 50, 40, x, g, prediction_type="epsilon")
    with pytest.raises(ValueError, match=r"noise has shape"):
        sampler.step(process, x, 50, 40, x, noise=torch.zeros(1, 3), prediction_type="eps")


def test_multi_call_samplers_have_no_single_output_step(process) -> None:
    x = torch.zeros(2, 3)
    with pytest.raises(NotImplementedError, match="advance"):
        HeunSampler().step(process, x, 50, 40, x, prediction_type="eps")


# ---------------------------------------------------------------- sigma helpers
def test_split_output_matches_process(process) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, generator=g, dtype=torch.float64)
    out = torch.randn(4, 3, generator=g, dtype=torch.float64)
    for t in (0, 37, 99):
        ab = float(process.alphas_cumprod[t])
        for prediction_type in ("eps", "x0", "v"):
            ours = split_output(out, x, ab**0.5, (1 - ab) ** 0.5, prediction_type)
            ref = process.split_prediction(out, x, torch.full((4,), t), prediction_type)
            for a, b in zip(ours, ref):
                torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_sigma_to_t_matches_diffusers_and_inverts() -> None:
    process = GaussianDiffusion.from_schedule("linear", 1000)
    log_sigmas = vp_sigmas(process).log()
    sched = EulerDiscreteScheduler()
    sigmas = karras_sigmas(float(log_sigmas[0].exp()), float(log_sigmas[-1].exp()), 17)
    ref = torch.from_numpy(np.array([sched._sigma_to_t(s, log_sigmas.numpy()) for s in sigmas.numpy()]))
    ours = sigma_to_t(sigmas, log_sigmas)
    torch.testing.assert_close(ours, ref.double(), rtol=0, atol=1e-9)
    assert float(ours[0]) == pytest.approx(999, abs=1e-9) and float(ours[-1]) == pytest.approx(0, abs=1e-9)
    torch.testing.assert_close(t_to_sigma(ours, log_sigmas), sigmas, rtol=1e-12, atol=0)
    assert torch.equal(sigma_to_t(log_sigmas[[5, 500]].exp(), log_sigmas), torch.tensor([5.0, 500.0], dtype=torch.float64))
    # Karras et al. 2022 eq. 5 end points and rho
    assert karras_sigmas(0.002, 80.0, 5).tolist()[0] == pytest.approx(80.0)
    assert karras_sigmas(0.002, 80.0, 5).tolist()[-1] == pytest.approx(0.002)
    torch.testing.assert_close(karras_sigmas(1.0, 16.0, 3, rho=1.0), torch.tensor([16.0, 8.5, 1.0], dtype=torch.float64))


def test_zero_terminal_snr_sigma_is_finite() -> None:
    process = GaussianDiffusion.from_schedule("linear", 1000, zero_terminal_snr=True)
    sigmas = vp_sigmas(process)
    assert torch.isfinite(sigmas).all() and sigmas[-1] == pytest.approx(4096.0, rel=1e-6)  # alpha-bar 2**-24
    assert isinstance(EulerSampler(), SigmaSampler)


SCHEDULES = ["linear", "cosine", "scaled_linear", "sigmoid", "linear-ztsnr"]


def _schedule(name: str) -> GaussianDiffusion:
    if name == "linear-ztsnr":
        return GaussianDiffusion.from_schedule("linear", 1000, zero_terminal_snr=True)
    return GaussianDiffusion.from_schedule(name, 1000)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_sigma_table_is_diffusers_on_every_schedule(schedule: str) -> None:
    # the noise level of each timestep is the one the model was trained at: diffusers' Euler table
    # from the same betas (cosine's alpha-bar_{T-1} = 2.4e-9 gives sigma 2.03e4; only an alpha-bar
    # of exactly 0 reads 2**-24, as diffusers' rescale_betas_zero_snr puts there)
    process = _schedule(schedule)
    ztsnr = schedule.endswith("ztsnr")
    sched = EulerDiscreteScheduler(trained_betas=process.betas.numpy(), rescale_betas_zero_snr=ztsnr,
                                   timestep_spacing="trailing")
    ab = sched.alphas_cumprod.double()
    ref = ((1 - ab) / ab).sqrt()
    torch.testing.assert_close(vp_sigmas(process), ref, rtol=2e-3, atol=0)  # diffusers: float32
    sched.set_timesteps(10)
    state = EulerSampler(num_steps=10).init_state(process, "eps")
    torch.testing.assert_close(state.sigmas, sched.sigmas.double(), rtol=2e-3, atol=0)
    if schedule == "cosine":
        assert float(state.sigmas[0]) == pytest.approx(2.029e4, rel=1e-3)


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("prediction_type", ["eps", "v"])
def test_euler_and_first_order_dpm_solver_are_ddim_on_every_schedule(schedule: str, prediction_type: str) -> None:
    # DDIM (eta 0) is Euler's method on dx/dsigma in x / sqrt(alpha-bar) (Karras et al. 2022, sec. 3;
    # Lu et al. 2022, DPM-Solver-1): the three agree step for step when each step's sigma is the
    # noise level of the timestep the model sees there, on every schedule
    process = _schedule(schedule)
    if schedule.endswith("ztsnr") and prediction_type == "eps":
        pytest.skip("eps defines no x_0 at zero terminal SNR")
    kw = {"num_steps": 10, "clip_sample": False}
    runs = {}
    for name, sampler in {"ddim": DDIMSampler(eta=0.0, **kw), "euler": EulerSampler(**kw),
                          "dpm1": DPMSolverSampler(order=1, **kw)}.items():
        state = sampler.init_state(process, prediction_type)
        x = torch.randn(64, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        for _ in range(state.num_steps):  # in float64: sigma space at sigma 2e4 cancels digits in float32
            x = sampler.advance(ModelFn(smooth_model_2d), x, state).prev_sample
        runs[name] = x
    # at zero terminal SNR the table's 2**-24 stands in for alpha-bar 0, where DDIM steps from the
    # exact alpha-bar: the first steps differ by O(sqrt(2**-24)) = O(2.4e-4) there
    atol = 2e-3 if schedule.endswith("ztsnr") else 1e-8
    torch.testing.assert_close(runs["euler"], runs["ddim"], rtol=0, atol=atol)
    torch.testing.assert_close(runs["dpm1"], runs["ddim"], rtol=0, atol=atol)


def smooth_model_2d(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A smooth stand-in network whose output depends on t (so that a step at the wrong noise level shows)."""
    t = t.to(x.dtype).reshape(-1, 1)
    return 0.6 * torch.tanh(x) + 0.3 * torch.sin(3.0 * x + t / 150.0) - 2e-4 * t


# ---------------------------------------------------------------- x_0 post-processing
def test_threshold_sample_matches_diffusers() -> None:
    sched = DDPMScheduler(thresholding=True, dynamic_thresholding_ratio=0.8, sample_max_value=2.0)
    x = torch.randn(5, 3, 6, 6, generator=torch.Generator().manual_seed(0)) * torch.tensor(
        [0.3, 1.0, 1.5, 2.5, 5.0]
    ).reshape(-1, 1, 1, 1)
    torch.testing.assert_close(threshold_sample(x, 0.8, 2.0), sched._threshold_sample(x))


def test_threshold_sample_closed_form_2d() -> None:
    x = torch.tensor([[0.2, -0.4], [3.0, -1.5], [10.0, 0.0]], dtype=torch.float64)
    out = threshold_sample(x, ratio=1.0, max_value=4.0).numpy()
    # s = max |x| per row, clamped to [1, 4]; x -> clip(x, -s, s) / s
    expected = np.array([[0.2, -0.4], [1.0, -0.5], [1.0, 0.0]])
    np.testing.assert_allclose(out, expected)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_a_sample_does_not_depend_on_its_batch(name: str, process) -> None:
    # one generator per sample: row i depends on generator i only (see difflab.evaluation)
    sampler = SAMPLERS[name](**CONFIGS[name])

    def run(seeds: list[int]) -> torch.Tensor:
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        return generate(model, process, sampler, (len(seeds), 2, 3), gens, progress=False, prediction_type="v")

    batch = run([5, 6, 7])
    for i, seed in enumerate((5, 6, 7)):
        torch.testing.assert_close(run([seed])[0], batch[i], rtol=1e-6, atol=1e-6)
