"""DPMSolverSampler against diffusers' DPMSolverMultistepScheduler (Lu et al. 2022, arXiv:2206.00927, 2211.01095).

Documented differences, and how the tests bridge them:

- Grid: diffusers' DPM-Solver has its own ``linspace``/``leading`` (S + 1 points, the last
  dropped); difflab uses one set of spacings for every sampler (``make_timesteps``), so the
  oracle is given our timesteps (``set_timesteps(timesteps=...)``; ``trailing`` is the same).
- Karras sigmas: diffusers rounds the timesteps of the Karras sigmas to integers for the model
  input (the solver still uses the exact sigmas); difflab passes the fractional timestep of
  each sigma (as diffusers' Euler and Heun do). Whole runs give diffusers our timesteps.
- ``algorithm="dpmsolver"`` (noise prediction): diffusers refuses to step to sigma = 0
  (``final_sigmas_type="zero"``); difflab takes the limit of the same first-order update, the
  x_0 estimate. The oracle ends at sigma(0) instead, so its last step is checked against the
  closed form.
- The SDE variant draws no noise at the last step (its coefficient is 0 there); diffusers draws
  and discards it, after all the draws both share.
- Single steps run diffusers in float64 (``oracle.float64_scheduler``) with our float64 sigmas;
  whole runs compare float32 to float32 (rtol 1e-4; for entries near 0, 1e-4 of the largest).
"""

from __future__ import annotations

import itertools

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler

from difflab.diffusion.process import GaussianDiffusion
from difflab.samplers import DPMSolverSampler, generate
from tests.samplers.oracle import (
    DIFFUSERS_PREDICTION,
    Scripted,
    assert_close_float32,
    float64_scheduler,
    run_diffusers,
    set_sigmas,
    smooth_model,
)


@pytest.fixture(scope="module")
def process() -> GaussianDiffusion:
    return GaussianDiffusion.from_schedule("linear", 1000)


def _oracle(process, state, sampler: DPMSolverSampler, prediction_type: str, **config) -> DPMSolverMultistepScheduler:
    sched = DPMSolverMultistepScheduler(
        trained_betas=process.betas.numpy(),
        solver_order=sampler.order,
        prediction_type=DIFFUSERS_PREDICTION[prediction_type],
        algorithm_type=sampler.algorithm,
        solver_type=sampler.solver_type,
        lower_order_final=sampler.lower_order_final,
        use_karras_sigmas=sampler.use_karras_sigmas,
        final_sigmas_type="sigma_min" if sampler.algorithm == "dpmsolver" else "zero",
        **config,
    )
    if sampler.use_karras_sigmas:
        sched.set_timesteps(state.num_steps)
        assert torch.equal(sched.timesteps, state.timesteps.round().long())  # diffusers rounds them
    else:
        sched.set_timesteps(timesteps=state.timesteps.tolist())
    sched.set_begin_index(0)
    return sched


SINGLE_STEP_CASES = [
    (order, algorithm, solver_type, karras)
    for order, algorithm, solver_type, karras in itertools.product(
        (1, 2, 3), ("dpmsolver++", "dpmsolver", "sde-dpmsolver++"), ("midpoint", "heun"), (False, True)
    )
    if order > 1 or solver_type == "midpoint"  # the solver type only enters second-order steps
]


@pytest.mark.parametrize(("order", "algorithm", "solver_type", "karras"), SINGLE_STEP_CASES)
@pytest.mark.parametrize("prediction_type", ["eps", "x0", "v"])
def test_single_steps_match_diffusers_float64(process, order, algorithm, solver_type, karras, prediction_type) -> None:
    n = 10
    sampler = DPMSolverSampler(
        num_steps=n, order=order, algorithm=algorithm, solver_type=solver_type, use_karras_sigmas=karras,
        clip_sample=False,
    )
    state = sampler.init_state(process, prediction_type)
    with float64_scheduler(DPMSolverMultistepScheduler):
        sched = _oracle(process, state, sampler, prediction_type)
        if algorithm == "dpmsolver":  # diffusers ends at sigma(0): see the module docstring
            torch.testing.assert_close(sched.sigmas[:-1].double(), state.sigmas[:-1], rtol=2e-6, atol=0)
            sched.sigmas = torch.cat([state.sigmas[:-1], sched.sigmas[-1:].double()])
        else:
            set_sigmas(sched, state.sigmas)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
        for i in range(n):
            out = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
            z = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
            model = Scripted([out])
            ours = sampler.advance(model, x, state, noise=z)
            assert len(model.calls) == 1 and model.calls[0][1] == state.t(i)
            ref = sched.step(out, sched.timesteps[i], x, variance_noise=z).prev_sample
            assert ref.dtype == torch.float64
            if algorithm == "dpmsolver" and i == n - 1:
                # the limit sigma_t -> 0 of the first-order update: x_0 = (x - sigma_s eps) / alpha_s
                s = state.sigma(i)
                eps = {"eps": out, "x0": (x - out / (1 + s * s) ** 0.5) / (s / (1 + s * s) ** 0.5),
                       "v": out / (1 + s * s) ** 0.5 + x * s / (1 + s * s) ** 0.5}[prediction_type]
                torch.testing.assert_close(ours.prev_sample, x * (1 + s * s) ** 0.5 - s * eps, rtol=0, atol=1e-10)
                break
            torch.testing.assert_close(ours.prev_sample, ref, rtol=0, atol=1e-10)
            x = ref


def test_thresholding_matches_diffusers_float64(process) -> None:
    sampler = DPMSolverSampler(
        num_steps=10, order=3, clip_sample=False, dynamic_thresholding=True, dynamic_thresholding_ratio=0.9,
        sample_max_value=1.5,
    )
    state = sampler.init_state(process, "eps")
    with float64_scheduler(DPMSolverMultistepScheduler):
        sched = _oracle(process, state, sampler, "eps", thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=1.5)
        set_sigmas(sched, state.sigmas)
        g = torch.Generator().manual_seed(1)
        x = torch.randn(3, 1, 6, 6, generator=g, dtype=torch.float64)
        for i in range(10):
            out = 2 * torch.randn(3, 1, 6, 6, generator=g, dtype=torch.float64)
            ours = sampler.advance(Scripted([out]), x, state)
            ref = sched.step(out, sched.timesteps[i], x).prev_sample
            torch.testing.assert_close(ours.prev_sample, ref, rtol=0, atol=1e-10)
            x = ref


@pytest.mark.parametrize("n", [10, 20])
@pytest.mark.parametrize("prediction_type", ["eps", "v"])
@pytest.mark.parametrize(
    "options",
    [
        {"order": 1},
        {"order": 2},
        {"order": 3},
        {"order": 2, "solver_type": "heun"},
        {"order": 2, "algorithm": "sde-dpmsolver++"},
        {"order": 3, "use_karras_sigmas": True},
    ],
    ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()),
)
def test_whole_run_matches_diffusers_float32(process, n: int, prediction_type: str, options) -> None:
    sampler = DPMSolverSampler(num_steps=n, clip_sample=False, **options)
    shape = (2, 1, 5, 5)
    ours = generate(
        smooth_model, process, sampler, shape, torch.Generator().manual_seed(3), progress=False,
        prediction_type=prediction_type,
    )
    state = sampler.init_state(process, prediction_type)
    sched = _oracle(process, state, sampler, prediction_type)
    if sampler.use_karras_sigmas:
        sched.timesteps = state.timesteps.float()  # the model sees the fractional timesteps: see the docstring
    g = torch.Generator().manual_seed(3)
    x_T = torch.randn(shape, generator=g)
    ref = run_diffusers(sched, smooth_model, x_T, generator=g)
    assert_close_float32(ours, ref)


def test_orders_of_the_steps() -> None:
    # warm-up, then lower orders at the end below 15 steps; the step to sigma = 0 is first order
    assert [DPMSolverSampler(num_steps=6, order=3).step_order(i, 6) for i in range(6)] == [1, 2, 3, 3, 2, 1]
    assert [DPMSolverSampler(num_steps=6, order=3, lower_order_final=False).step_order(i, 6) for i in range(6)] == [
        1, 2, 3, 3, 3, 1,
    ]
    assert [DPMSolverSampler(num_steps=16, order=3).step_order(i, 16) for i in (13, 14, 15)] == [3, 3, 1]
    assert [DPMSolverSampler(num_steps=4, order=2).step_order(i, 4) for i in range(4)] == [1, 2, 2, 1]


def test_first_order_is_ddim(process) -> None:
    # DPM-Solver-1 = DDIM (arXiv:2206.00927, sec. 4.1; arXiv:2211.01095, sec. 3.2)
    from difflab.samplers import DDIMSampler

    for algorithm in ("dpmsolver", "dpmsolver++"):
        a = generate(
            smooth_model, process, DPMSolverSampler(num_steps=8, order=1, algorithm=algorithm, clip_sample=False),
            (3, 4), torch.Generator().manual_seed(0), progress=False, prediction_type="eps",
        )
        b = generate(
            smooth_model, process, DDIMSampler(num_steps=8, clip_sample=False), (3, 4),
            torch.Generator().manual_seed(0), progress=False, prediction_type="eps",
        )
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"order": 4}, "order must be 1, 2 or 3, got 4"),
        ({"order": True}, "order must be 1, 2 or 3"),
        ({"algorithm": "sde-dpmsolver"}, r"'sde-dpmsolver'.*\['dpmsolver\+\+', 'dpmsolver', 'sde-dpmsolver\+\+'\]"),
        ({"solver_type": "bh2"}, r"'bh2'.*\['midpoint', 'heun'\]"),
        ({"rho": 0}, "rho must be a number > 0"),
    ],
)
def test_bad_options(kwargs, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DPMSolverSampler(**kwargs)
