"""A resumed run continues its W&B run.

Offline: the W&B run id is kept in ``<run dir>/wandb/run_id`` and W&B's offline run folders
end with that id, so a resume shows up as a second folder of the same run. That a re-run
sweep skips a finished job (and starts no W&B run for it) is tested on the multirun of
``test_secret_spellings.py``, to start one sweep fewer.
"""

from __future__ import annotations

import re

from omegaconf import OmegaConf

from difflab.utils.sweeps import finished_marker
from tests.conftest import compose_train
from tests.faults.conftest import TINY

TINY_WANDB = [o for o in TINY if not o.startswith("logger=")] + ["logger=wandb"]


def _main(run_dir, overrides):
    from difflab.train import main

    return main(compose_train([*TINY_WANDB, *overrides], output_dir=str(run_dir)))


def _run_ids(run_dir) -> list[str]:
    """The run id of each offline run folder, ``offline-run-<date>_<time>-<id>``; W&B appends
    ``-1``, ``-2`` ... when a resume starts within the same second as the run before it."""
    names = [p.name for p in (run_dir / "wandb").glob("offline-run-*")]
    return sorted(re.fullmatch(r"offline-run-\d{8}_\d{6}-([^-]+)(?:-\d+)?", n).group(1) for n in names)


def test_a_resumed_run_continues_its_wandb_run(tmp_path):
    common = ["+trainer.limit_train_batches=4", "trainer.val_check_interval=2", "trainer.max_steps=3"]
    _main(tmp_path, [*common, "+callbacks.sig._target_=tests.faults.inject.SignalSelf", "+callbacks.sig.at_step=1"])
    run_id = (tmp_path / "wandb" / "run_id").read_text().strip()
    assert _run_ids(tmp_path) == [run_id]
    assert not finished_marker(tmp_path).exists()  # preempted at step 1: not finished
    _main(tmp_path, common)  # resume=auto: from last.ckpt, into the same W&B run
    assert set(_run_ids(tmp_path)) == {run_id}
    marker = OmegaConf.load(finished_marker(tmp_path))
    assert marker.global_step == 3 and marker.max_steps == 3 and marker.wandb_run_id == run_id
