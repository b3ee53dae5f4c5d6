"""A run stopped at a checkpoint and resumed ends bit for bit where the uninterrupted run ends.

Epochs are 4 batches long (``trainer.limit_train_batches=4``) and a checkpoint is written
every 2 steps, so the run can be stopped at an epoch boundary (step 4), in the middle of an epoch
(step 6), or by SIGTERM in the middle of an epoch (step 5, the preemption callback's
checkpoint), or by SIGUSR1 before the first validation (step 1); each is resumed to step 10 and
compared with a run that went 0 -> 10.
"""

from __future__ import annotations

import pytest

from tests.faults.conftest import load_ckpt, run_main
from tests.faults.inject import same_tensors

COMMON = [
    "+trainer.limit_train_batches=4",
    "trainer.val_check_interval=2",
    "trainer.deterministic=true",
    "callbacks.ema.decay=0.9",
    "lr_warmup_steps=3",
    # the decay is planned over the whole run: a run stopped early by a smaller max_steps
    # follows the same LR schedule as the uninterrupted one (cosine decays over total_steps)
    "lr_scheduler.total_steps=10",
]
TOTAL = 10


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("full")
    run_main(run_dir, [*COMMON, f"trainer.max_steps={TOTAL}"])
    return load_ckpt(run_dir / "checkpoints" / "last.ckpt")


def _compare(a: dict, b: dict) -> list[str]:
    differ = []
    for key in ("global_step", "epoch", "state_dict", "optimizer_states", "lr_schedulers"):
        if not same_tensors(a[key], b[key]):
            differ.append(key)
    if not same_tensors(a["callbacks"]["EMA"], b["callbacks"]["EMA"]):
        differ.append("EMA")
    return differ


@pytest.mark.parametrize(
    "stop_at, how",
    [
        # the epoch boundary is the easier case of the two below (~60-80 s on 2 busy cores)
        pytest.param(4, "max_steps", id="epoch_boundary", marks=pytest.mark.slow),
        pytest.param(6, "max_steps", id="mid_epoch"),
        pytest.param(5, "SIGTERM", id="sigterm_mid_epoch"),
        # before the first validation (step 2): ModelCheckpoint has written nothing yet, and its
        # on_train_end save used to replace this checkpoint with one marking epoch 0 completed
        pytest.param(1, "SIGUSR1", id="sigusr1_before_validation"),
    ],
)
def test_stop_and_resume_is_bit_exact(stop_at, how, uninterrupted, tmp_path):
    if how == "max_steps":  # a checkpoint written at validation (every 2 steps)
        run_main(tmp_path, [*COMMON, f"trainer.max_steps={stop_at}"])
    else:  # the preemption callback's checkpoint, written at the end of a training batch
        run_main(tmp_path, [*COMMON, f"trainer.max_steps={TOTAL}", "+callbacks.sig._target_=tests.faults.inject.SignalSelf",
                            f"+callbacks.sig.at_step={stop_at}", f"+callbacks.sig.signal={how}"])
    stopped = load_ckpt(tmp_path / "checkpoints" / "last.ckpt")
    assert stopped["global_step"] == stop_at
    epoch, batches = divmod(stop_at - 1, 4)
    assert stopped["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": epoch, "batches": batches + 1}]
    if how != "max_steps":  # the loop state agrees with the loader's: the epoch is not marked done
        assert stopped["epoch"] == epoch
        assert stopped["loops"]["fit_loop"]["epoch_progress"]["current"]["completed"] == epoch
    run_main(tmp_path, [*COMMON, f"trainer.max_steps={TOTAL}"])  # resume=auto picks up last.ckpt
    resumed = load_ckpt(tmp_path / "checkpoints" / "last.ckpt")
    assert resumed["global_step"] == TOTAL
    assert resumed["callbacks"]["EMA"]["num_updates"] == uninterrupted["callbacks"]["EMA"]["num_updates"] == TOTAL
    assert _compare(resumed, uninterrupted) == []
