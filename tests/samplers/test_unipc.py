"""UniPCSampler against diffusers' UniPCMultistepScheduler (Zhao et al. 2023, arXiv:2302.04867).

Documented differences, and how the tests bridge them:

- Grid: as for DPM-Solver, difflab's shared spacings (``trailing`` is the same as diffusers');
  Karras timesteps are fractional for the model (diffusers rounds them), so whole Karras runs
  give diffusers our timesteps.
- The step to sigma = 0 is always first order (it returns the x_0 estimate). diffusers does the
  same with ``lower_order_final`` (the default); without it, it keeps the full order there,
  where h = inf makes the update singular (its ``torch.linalg.solve`` fails, or the result is
  nan), so ``lower_order_final=False`` is compared on every step but that last one. With
  ``bh1`` diffusers' last step is nan whatever the order (B(h) = -h = -inf times a zero
  correction), so bh1 runs are also compared up to that step, and the step against x_0.
- Only the data-prediction form (diffusers' default ``predict_x0=True``) is offered.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from diffusers import UniPCMultistepScheduler

from difflab.diffusion.process import GaussianDiffusion
from difflab.samplers import UniPCSampler, generate
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


def _oracle(process, sampler: UniPCSampler, prediction_type: str, n: int) -> UniPCMultistepScheduler:
    sched = UniPCMultistepScheduler(
        trained_betas=process.betas.numpy(),
        solver_order=sampler.order,
        prediction_type=DIFFUSERS_PREDICTION[prediction_type],
        solver_type=sampler.solver_type,
        lower_order_final=sampler.lower_order_final,
        use_karras_sigmas=sampler.use_karras_sigmas,
        timestep_spacing="trailing",
    )
    sched.set_timesteps(n)
    sched.set_begin_index(0)
    return sched


@pytest.mark.parametrize(("order", "solver_type", "karras"), list(itertools.product((1, 2, 3), ("bh1", "bh2"), (False, True))))
@pytest.mark.parametrize("prediction_type", ["eps", "x0", "v"])
def test_single_steps_match_diffusers_float64(process, order: int, solver_type: str, karras: bool, prediction_type: str) -> None:
    n = 10
    sampler = UniPCSampler(num_steps=n, order=order, solver_type=solver_type, use_karras_sigmas=karras, clip_sample=False)
    state = sampler.init_state(process, prediction_type)
    with float64_scheduler(UniPCMultistepScheduler):
        sched = _oracle(process, sampler, prediction_type, n)
        if not karras:
            assert torch.equal(sched.timesteps, state.timesteps)
        set_sigmas(sched, state.sigmas)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
        for i in range(n):
            out = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
            ours = sampler.advance(Scripted([out]), x, state)
            ref = sched.step(out, sched.timesteps[i], x).prev_sample
            assert ref.dtype == torch.float64
            if solver_type == "bh1" and i == n - 1:  # diffusers: nan (see the module docstring)
                torch.testing.assert_close(ours.prev_sample, ours.pred_x0, rtol=0, atol=0)
                break
            torch.testing.assert_close(ours.prev_sample, ref, rtol=0, atol=1e-10)
            x = ref


def test_without_lower_order_final_float64(process) -> None:
    n = 8
    sampler = UniPCSampler(num_steps=n, order=3, lower_order_final=False, clip_sample=False)
    state = sampler.init_state(process, "eps")
    with float64_scheduler(UniPCMultistepScheduler):
        sched = _oracle(process, sampler, "eps", n)
        set_sigmas(sched, state.sigmas)
        g = torch.Generator().manual_seed(1)
        x = torch.randn(2, 5, generator=g, dtype=torch.float64)
        for i in range(n - 1):
            out = torch.randn(2, 5, generator=g, dtype=torch.float64)
            ours = sampler.advance(Scripted([out]), x, state)
            ref = sched.step(out, sched.timesteps[i], x).prev_sample
            torch.testing.assert_close(ours.prev_sample, ref, rtol=0, atol=1e-10)
            x = ref
    assert [sampler.step_order(i, n) for i in range(n)] == [1, 2, 3, 3, 3, 3, 3, 1]
    last = sampler.advance(Scripted([torch.zeros(2, 5, dtype=torch.float64)]), x, state)
    assert torch.isfinite(last.prev_sample).all()
    torch.testing.assert_close(last.prev_sample, last.pred_x0)


@pytest.mark.parametrize("n", [10, 20])
@pytest.mark.parametrize("prediction_type", ["eps", "v"])
@pytest.mark.parametrize(
    "options",
    [{"order": 2}, {"order": 3}, {"order": 2, "solver_type": "bh1"}, {"order": 2, "use_karras_sigmas": True}],
    ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()),
)
def test_whole_run_matches_diffusers_float32(process, n: int, prediction_type: str, options) -> None:
    sampler = UniPCSampler(num_steps=n, clip_sample=False, **options)
    shape = (2, 1, 5, 5)
    ours, trajectory = generate(
        smooth_model, process, sampler, shape, torch.Generator().manual_seed(3), return_trajectory=True,
        progress=False, prediction_type=prediction_type,
    )
    sched = _oracle(process, sampler, prediction_type, n)
    if sampler.use_karras_sigmas:
        sched.timesteps = sampler.init_state(process, prediction_type).timesteps.float()
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    if sampler.solver_type == "bh1":  # diffusers' last bh1 step is nan: compare the state before it
        assert_close_float32(trajectory.x_t[-2], run_diffusers(sched, smooth_model, x_T, num_steps=n - 1))
    else:
        assert_close_float32(ours, run_diffusers(sched, smooth_model, x_T))


def test_orders_of_the_steps() -> None:
    assert [UniPCSampler(num_steps=6, order=3).step_order(i, 6) for i in range(6)] == [1, 2, 3, 3, 2, 1]
    assert [UniPCSampler(num_steps=3, order=2).step_order(i, 3) for i in range(3)] == [1, 2, 1]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"order": 0}, "order must be 1, 2 or 3, got 0"), ({"solver_type": "midpoint"}, r"'midpoint'.*\['bh1', 'bh2'\]")],
)
def test_bad_options(kwargs, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        UniPCSampler(**kwargs)
