"""LR schedules: closed forms, and the same values as torch's own schedulers."""

from __future__ import annotations

import math

import pytest
import torch

from difflab.utils.lr import LRSchedule, lr_factor


def _run(scheduler, optimizer, steps):
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def _opt(lr=1e-3):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def test_closed_forms():
    # warm-up: (s + 1) / w, full lr at s = w - 1
    assert [lr_factor(s, "cosine", 4, 104, 0.1) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    # cosine: 1 at the start of the decay, (1 + r) / 2 half-way, r at the end and after
    assert lr_factor(4, "cosine", 4, 104, 0.1) == pytest.approx(1.0)
    assert lr_factor(54, "cosine", 4, 104, 0.1) == pytest.approx(0.55)
    assert lr_factor(29, "cosine", 4, 104, 0.0) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_factor(104, "cosine", 4, 104, 0.1) == pytest.approx(0.1)
    assert lr_factor(500, "cosine", 4, 104, 0.1) == pytest.approx(0.1)
    # linear: straight line from 1 to r
    assert lr_factor(29, "linear", 4, 104, 0.2) == pytest.approx(0.2 + 0.8 * 0.75)
    assert lr_factor(104, "linear", 4, 104, 0.2) == pytest.approx(0.2)
    # constant ignores the total and the floor
    assert lr_factor(10_000, "constant", 4, None, 0.5) == 1.0
    assert lr_factor(0, "constant", 0) == 1.0


@pytest.mark.parametrize("warmup", [0, 1, 5])
def test_cosine_matches_torch(warmup):
    total, ratio, lr = 40, 0.1, 2e-3
    ours = _opt(lr)
    mine = _run(LRSchedule("cosine", warmup, ratio, total).build(ours), ours, total + 5)
    ref = _opt(lr)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(ref, T_max=total - warmup, eta_min=ratio * lr)
    if warmup:
        warm = torch.optim.lr_scheduler.LinearLR(ref, start_factor=1 / warmup, end_factor=1.0, total_iters=max(warmup - 1, 1))
        sched = torch.optim.lr_scheduler.SequentialLR(ref, [warm, cosine], milestones=[warmup])
    else:
        sched = cosine
    theirs = _run(sched, ref, total + 1)  # CosineAnnealingLR rises again after T_max: compare up to the end
    assert mine[: total + 1] == pytest.approx(theirs, rel=1e-9, abs=1e-12)
    assert mine[total:] == pytest.approx([ratio * lr] * 5)


@pytest.mark.parametrize("warmup", [0, 3])
def test_linear_matches_torch(warmup):
    total, ratio, lr = 30, 0.25, 1e-3
    ours = _opt(lr)
    mine = _run(LRSchedule("linear", warmup, ratio, total).build(ours), ours, total + 5)
    ref = _opt(lr)
    decay = torch.optim.lr_scheduler.LinearLR(ref, start_factor=1.0, end_factor=ratio, total_iters=total - warmup)
    if warmup:
        warm = torch.optim.lr_scheduler.LinearLR(ref, start_factor=1 / warmup, end_factor=1.0, total_iters=warmup - 1)
        sched = torch.optim.lr_scheduler.SequentialLR(ref, [warm, decay], milestones=[warmup])
    else:
        sched = decay
    assert mine == pytest.approx(_run(sched, ref, total + 5), rel=1e-9, abs=1e-12)


def test_cosine_matches_diffusers_after_warmup():
    """diffusers' get_cosine_schedule_with_warmup (floor 0) is the same curve; its warm-up
    starts at 0 (step / w) where ours starts at 1 / w ((step + 1) / w)."""
    from diffusers.optimization import get_cosine_schedule_with_warmup

    total, warmup = 50, 5
    ref = _opt()
    theirs = _run(get_cosine_schedule_with_warmup(ref, warmup, total), ref, total)
    ours = _opt()
    mine = _run(LRSchedule("cosine", warmup, 0.0, total).build(ours), ours, total)
    assert mine[warmup:] == pytest.approx(theirs[warmup:], abs=1e-12)
    assert mine[: warmup - 1] == pytest.approx(theirs[1:warmup])


def test_none_total_comes_from_the_trainer_and_state_holds_no_settings():
    opt = _opt()
    sched = LRSchedule("linear", 0, 0.0).build(opt, total_steps=10)
    assert _run(sched, opt, 3) == pytest.approx([1e-3, 0.9e-3, 0.8e-3])
    assert sched.state_dict()["lr_lambdas"] == [None]  # a resumed run follows its own config


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(name="cosin"), "name must be one of constant, cosine, linear"),
        (dict(name="cosine", min_lr_ratio=1.5), "min_lr_ratio must be a number in"),
        (dict(name="cosine", warmup_steps=-1), "warmup_steps must be an integer"),
        (dict(name="cosine", total_steps=0), "total_steps must be an integer"),
    ],
)
def test_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LRSchedule(**kwargs)


def test_a_warmup_longer_than_the_run_ramps_up_over_the_whole_run():
    """A short run under the default (decaying) schedule trains on the warm-up ramp; validation
    says in one line that the LR never decays."""
    opt = _opt()
    sched = LRSchedule("cosine", 100, 0.1).build(opt, total_steps=50)
    lrs = []
    for _ in range(50):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    base = lrs[0] * 100  # lr_factor(0) = 1 / warmup
    assert lrs == pytest.approx([base * (s + 1) / 100 for s in range(50)])
