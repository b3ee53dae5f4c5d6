"""EMA callback: decay schedule, update rule against the closed form, checkpoint round trip."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from difflab.callbacks.ema import EMA, ema_decay_at, ema_state_from_checkpoint, find_ema


def test_decay_schedule_closed_form():
    assert ema_decay_at(0, 0.999, warmup=True) == pytest.approx(0.1)
    assert ema_decay_at(10, 0.999, warmup=True) == pytest.approx(11 / 20)
    assert ema_decay_at(10**6, 0.999, warmup=True) == 0.999
    assert ema_decay_at(0, 0.999, warmup=False) == 0.999


def _module(seed=0):
    torch.manual_seed(seed)
    backbone = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    return SimpleNamespace(backbone=backbone, device=torch.device("cpu"), last_step_skipped=False)


def test_updates_match_the_recurrence():
    pl = _module()
    ema = EMA(decay=0.9, warmup=True)
    ema.setup(None, pl, "fit")
    expected = {k: v.clone() for k, v in pl.backbone.state_dict().items()}
    for n in range(5):
        with torch.no_grad():
            for p in pl.backbone.parameters():
                p.add_(torch.randn_like(p))
            pl.backbone[1].running_mean.add_(1.0)
        ema.update(pl.backbone)
        d = min(0.9, (1 + n) / (10 + n))
        for k, v in pl.backbone.state_dict().items():
            if k.endswith(("weight", "bias")):
                expected[k] = d * expected[k] + (1 - d) * v
            else:  # buffers are copied
                expected[k] = v.clone()
    for k, v in ema.ema_model.state_dict().items():
        torch.testing.assert_close(v, expected[k], rtol=1e-6, atol=1e-6)
    assert ema.num_updates == 5


def test_skipped_and_accumulating_steps_do_not_update():
    pl = _module()
    ema = EMA(decay=0.5)
    ema.setup(None, pl, "fit")
    trainer = SimpleNamespace(global_step=0)
    ema._last_global_step = 0
    ema.on_train_batch_end(trainer, pl, None, None, 0)  # no optimizer step yet
    assert ema.num_updates == 0
    trainer.global_step = 1
    pl.last_step_skipped = True
    ema.on_train_batch_end(trainer, pl, None, None, 1)
    assert ema.num_updates == 0
    trainer.global_step = 2
    pl.last_step_skipped = False
    ema.on_train_batch_end(trainer, pl, None, None, 2)
    assert ema.num_updates == 1


def test_state_dict_round_trip_before_and_after_setup():
    pl = _module()
    ema = EMA(decay=0.9)
    ema.setup(None, pl, "fit")
    for _ in range(3):
        with torch.no_grad():
            for p in pl.backbone.parameters():
                p.add_(1.0)
        ema.update(pl.backbone)
    state = copy.deepcopy(ema.state_dict())

    restored = EMA(decay=0.9)
    restored.load_state_dict(state)  # before setup: kept until the model exists
    restored.setup(None, _module(seed=1), "fit")
    assert restored.num_updates == 3
    for k, v in restored.ema_model.state_dict().items():
        assert torch.equal(v, ema.ema_model.state_dict()[k])
    ckpt = {"callbacks": {"EMA": state}}
    assert ema_state_from_checkpoint(ckpt).keys() == ema.ema_model.state_dict().keys()
    assert ema_state_from_checkpoint({"callbacks": {}}) is None


def test_find_ema_and_bad_args():
    ema, slow = EMA(), EMA(decay=0.9999, name="slow")
    assert find_ema(SimpleNamespace(callbacks=[object(), slow, ema])) is ema
    assert find_ema(SimpleNamespace(callbacks=[ema, slow]), name="slow") is slow
    assert find_ema(SimpleNamespace(callbacks=[slow])) is None
    assert find_ema(None) is None
    assert (ema.state_key, slow.state_key) == ("EMA", "EMA:slow")
    with pytest.raises(ValueError, match="name"):
        EMA(name="a:b")
    with pytest.raises(ValueError, match="decay"):
        EMA(decay=1.0)
    with pytest.raises(ValueError, match="update_every"):
        EMA(update_every=0)


@pytest.mark.parametrize("how", ["method", "wrapper"])
def test_ema_copy_of_a_compiled_backbone_runs_eagerly_on_its_own_weights(how):
    """A compiled backbone (``model.compile()`` or ``torch.compile(model)``) gives an EMA copy
    that is a plain module with the same state-dict keys, whose forward uses the copy's weights."""
    from difflab.callbacks.ema import uncompiled_copy

    torch.manual_seed(0)
    net = nn.Linear(3, 2)
    keys = list(net.state_dict())
    if how == "method":
        net.compile()
        compiled = net
    else:
        compiled = torch.compile(net)
    copy_ = uncompiled_copy(compiled)
    assert type(copy_) is nn.Linear
    assert getattr(copy_, "_compiled_call_impl", None) is None
    assert list(copy_.state_dict()) == keys
    with torch.no_grad():
        copy_.weight.mul_(2.0)
    x = torch.randn(4, 3)
    assert torch.equal(copy_(x), torch.nn.functional.linear(x, copy_.weight, copy_.bias))
    assert not torch.equal(copy_.weight, net.weight)


def test_a_named_ema_does_not_serve_sampling_and_is_found_in_the_checkpoint_by_name():
    pl = _module()
    served = []
    pl.set_eval_backbone = served.append
    own, slow = EMA(decay=0.9), EMA(decay=0.99, warmup=False, name="slow")
    own.setup(None, pl, "fit")
    slow.setup(None, pl, "fit")
    assert served == [own.ema_model]  # the named one keeps its weights to itself
    with torch.no_grad():
        for p in pl.backbone.parameters():
            p.add_(1.0)
    own.update(pl.backbone)
    slow.update(pl.backbone)
    ckpt = {"callbacks": {own.state_key: own.state_dict(), slow.state_key: slow.state_dict()}}
    w = ema_state_from_checkpoint(ckpt, "slow")["0.weight"]
    # one update from the starting weights w0 to w0 + 1: w0 + (1 - d); d = 0.99 without warm-up, 0.1 with it
    torch.testing.assert_close(w, slow.ema_model[0].weight)
    torch.testing.assert_close(w - ema_state_from_checkpoint(ckpt)["0.weight"], torch.full_like(w, 0.01 - 0.9))
    assert ema_state_from_checkpoint(ckpt, "fast") is None
