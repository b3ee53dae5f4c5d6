"""DiffusionModule: per-rank noise, loss buckets, warm-up, skipped non-finite steps."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch

from difflab.backbones import UNet
from difflab.diffusion.objectives import DiffusionObjective
from difflab.diffusion.process import GaussianDiffusion
from difflab.module import DiffusionModule, NonFiniteLossError, _mix_seed
from difflab.samplers import DDIMSampler


def make_module(**kw):
    torch.manual_seed(0)
    return DiffusionModule(
        backbone=UNet(in_channels=1, image_size=8, base_channels=8, channel_mult=(1, 2), num_res_blocks=1),
        process=GaussianDiffusion.from_schedule("cosine", num_timesteps=100),
        objective=DiffusionObjective("eps"),
        sampler=DDIMSampler(num_steps=5),
        optimizer=partial(torch.optim.AdamW, lr=1e-3),
        image_shape=(1, 8, 8),
        **kw,
    )


def test_seeds_differ_by_rank_step_and_batch_and_are_stable():
    seeds = {_mix_seed(0, r, s, b) for r in range(4) for s in range(50) for b in range(3)}
    assert len(seeds) == 4 * 50 * 3
    assert _mix_seed(0, 1, 2, 3) == _mix_seed(0, 1, 2, 3)


def test_noise_depends_on_rank(monkeypatch):
    m = make_module()
    x = torch.zeros(4, 1, 8, 8)
    draws = []
    for rank in (0, 1):
        monkeypatch.setattr(DiffusionModule, "global_rank", property(lambda self, r=rank: r))
        g = m._generator(_mix_seed(m.seed, m.global_rank, 0, 0))
        draws.append(torch.randn(x.shape, generator=g))
    assert not torch.equal(draws[0], draws[1])


def test_training_step_logs_loss_buckets(monkeypatch):
    m = make_module()
    logged = {}
    monkeypatch.setattr(m, "log_dict", lambda d, **k: logged.update(d))
    monkeypatch.setattr(m, "log", lambda k, v, **kw: logged.__setitem__(k, v))
    loss = m.training_step((torch.rand(16, 1, 8, 8) * 2 - 1, torch.zeros(16, dtype=torch.long)), 0)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert {"train/loss", "train/loss_q0", "train/loss_q1", "train/loss_q2", "train/loss_q3"} <= set(logged)
    assert all(torch.isfinite(torch.as_tensor(v)) for v in logged.values())


def test_an_empty_timestep_quarter_logs_nothing(monkeypatch):
    """One sample falls into one quarter: the other three are not logged (not as 0)."""
    m = make_module()
    logged = {}
    monkeypatch.setattr(m, "log_dict", lambda d, **k: logged.update(d))
    monkeypatch.setattr(m, "log", lambda k, v, **kw: logged.__setitem__(k, v))
    loss = m.training_step((torch.rand(1, 1, 8, 8) * 2 - 1, torch.zeros(1, dtype=torch.long)), 0)
    buckets = [k for k in logged if k.startswith("train/loss_q")]
    assert len(buckets) == 1
    assert float(logged[buckets[0]]) == pytest.approx(float(loss.detach())) and float(loss.detach()) > 0


def test_warmup_is_linear():
    m = make_module(lr_warmup_steps=4)
    conf = m.configure_optimizers()
    sched = conf["lr_scheduler"]["scheduler"]
    lrs = []
    for _ in range(6):
        lrs.append(sched.get_last_lr()[0])
        conf["optimizer"].step()
        sched.step()
    assert lrs == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])


def test_lr_scheduler_decays_and_is_logged_as_train_lr():
    from difflab.utils.lr import LRSchedule

    m = make_module(lr_warmup_steps=99, lr_scheduler=LRSchedule("cosine", warmup_steps=2, min_lr_ratio=0.1, total_steps=6))
    conf = m.configure_optimizers()
    assert conf["lr_scheduler"]["name"] == "train/lr" and conf["lr_scheduler"]["interval"] == "step"
    lrs = []
    for _ in range(8):
        lrs.append(conf["optimizer"].param_groups[0]["lr"])
        conf["optimizer"].step()
        conf["lr_scheduler"]["scheduler"].step()
    cos = [1e-4 + 9e-4 * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(5)]
    assert lrs == pytest.approx([5e-4, 1e-3, *cos, 1e-4])
    assert "on_train_batch_end" not in vars(DiffusionModule)  # LearningRateMonitor logs train/lr


def test_nonfinite_gradient_skips_the_step(monkeypatch):
    m = make_module(max_consecutive_nonfinite=2)
    monkeypatch.setattr(m, "log", lambda *a, **k: None)
    opt = m.configure_optimizers()["optimizer"]
    for p in m.backbone.parameters():
        p.grad = torch.full_like(p, float("nan"))
    before = {k: v.clone() for k, v in m.backbone.state_dict().items()}
    m.configure_gradient_clipping(opt, gradient_clip_val=1.0, gradient_clip_algorithm="norm")
    assert m.last_step_skipped and m.skipped_steps == 1
    opt.step()
    for k, v in m.backbone.state_dict().items():
        assert torch.equal(v, before[k])
    assert not opt.state  # AdamW kept no moments for a skipped step
    for p in m.backbone.parameters():
        p.grad = torch.full_like(p, float("inf"))
    with pytest.raises(NonFiniteLossError, match="2 consecutive"):
        m.configure_gradient_clipping(opt, gradient_clip_val=1.0, gradient_clip_algorithm="norm")


def test_finite_gradient_is_clipped_and_resets_the_count(monkeypatch):
    m = make_module()
    logged = {}
    monkeypatch.setattr(m, "log", lambda k, v, **kw: logged.__setitem__(k, v))
    opt = m.configure_optimizers()["optimizer"]
    m.consecutive_nonfinite = 3
    for p in m.backbone.parameters():
        p.grad = torch.full_like(p, 10.0)
    m.configure_gradient_clipping(opt, gradient_clip_val=1.0, gradient_clip_algorithm="norm")
    total = torch.sqrt(sum((p.grad**2).sum() for p in m.backbone.parameters()))
    assert total == pytest.approx(1.0, rel=1e-4)
    assert logged["train/grad_norm"] > 1.0 and m.consecutive_nonfinite == 0
