"""Timestep grids against diffusers' ``set_timesteps`` (Lin et al. 2023, arXiv:2305.08891, Table 2)."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from difflab.samplers import DDIMSampler, DDPMSampler, make_timesteps, prev_timesteps

CASES = [(1000, 1), (1000, 10), (1000, 50), (1000, 7), (1000, 30), (1000, 1000), (100, 3), (17, 7), (15, 13), (1, 1)]


def _diffusers_timesteps(cls, T: int, n: int, spacing: str, steps_offset: int = 0) -> torch.Tensor:
    sched = cls(num_train_timesteps=T, timestep_spacing=spacing, steps_offset=steps_offset)
    sched.set_timesteps(n)
    return sched.timesteps


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize(("T", "n"), CASES)
def test_make_timesteps_matches_diffusers(spacing: str, T: int, n: int) -> None:
    ours = make_timesteps(T, n, spacing)
    assert ours.dtype == torch.long and ours.shape == (n,)
    assert bool((ours[1:] < ours[:-1]).all())
    assert ours.min() >= 0 and ours.max() <= T - 1
    for cls in (DDPMScheduler, DDIMScheduler):
        ref = _diffusers_timesteps(cls, T, n, spacing)
        if spacing == "trailing" and len(ref) == n + 1:
            # diffusers' arange can yield one extra entry (-1) through rounding; we drop it
            assert ref[-1].item() == -1
            ref = ref[:n]
        assert torch.equal(ours, ref), (cls.__name__, ours, ref)


def test_spacing_end_points() -> None:
    # Lin et al. 2023 Table 2 (T = 1000, 10 steps)
    assert make_timesteps(1000, 10, "linspace").tolist() == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    assert make_timesteps(1000, 10, "leading").tolist() == [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]
    assert make_timesteps(1000, 10, "trailing").tolist() == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    assert make_timesteps(1000, 10, "leading", steps_offset=1).tolist() == [
        901, 801, 701, 601, 501, 401, 301, 201, 101, 1,
    ]


def test_steps_offset_matches_diffusers() -> None:
    ref = _diffusers_timesteps(DDIMScheduler, 1000, 50, "leading", steps_offset=1)
    assert torch.equal(make_timesteps(1000, 50, "leading", steps_offset=1), ref)
    # only "leading" is offset, as in diffusers
    ref = _diffusers_timesteps(DDIMScheduler, 1000, 50, "trailing", steps_offset=1)
    assert torch.equal(make_timesteps(1000, 50, "trailing", steps_offset=1), ref)


def test_prev_timesteps() -> None:
    assert prev_timesteps(torch.tensor([999, 500, 3])).tolist() == [500, 3, -1]
    assert prev_timesteps(torch.tensor([0])).tolist() == [-1]
    with pytest.raises(ValueError, match="descending"):
        prev_timesteps(torch.tensor([1, 5]))


def test_sampler_timesteps() -> None:
    assert torch.equal(DDPMSampler().timesteps(100), torch.arange(99, -1, -1))
    assert torch.equal(DDPMSampler(num_steps=10).timesteps(1000), make_timesteps(1000, 10, "leading"))
    assert torch.equal(DDIMSampler().timesteps(1000), make_timesteps(1000, 50, "trailing"))
    assert torch.equal(
        DDIMSampler(20, spacing="linspace").timesteps(1000), make_timesteps(1000, 20, "linspace")
    )


@pytest.mark.parametrize("n", [0, -1, 1001, 2.0, None])
def test_bad_num_steps(n) -> None:
    with pytest.raises(ValueError, match=rf"num_steps.*\[1, num_train_timesteps=1000\].*{n}"):
        make_timesteps(1000, n, "leading")


def test_bad_num_steps_via_sampler() -> None:
    with pytest.raises(ValueError, match="num_steps.*1001"):
        DDIMSampler(num_steps=1001).timesteps(1000)
    with pytest.raises(ValueError, match="num_steps.*0"):
        DDIMSampler(num_steps=0)


def test_bad_spacing() -> None:
    with pytest.raises(ValueError, match=r"'uniform'.*\['linspace', 'leading', 'trailing'\]"):
        make_timesteps(1000, 10, "uniform")
    with pytest.raises(ValueError, match=r"'uniform'.*\['linspace', 'leading', 'trailing'\]"):
        DDPMSampler(spacing="uniform")


def test_bad_steps_offset() -> None:
    with pytest.raises(ValueError, match="steps_offset"):
        make_timesteps(10, 10, "leading", steps_offset=1)
    with pytest.raises(ValueError, match="steps_offset"):
        make_timesteps(10, 5, "leading", steps_offset=-1)
