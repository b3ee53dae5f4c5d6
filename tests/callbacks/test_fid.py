"""FID callback: arguments, its place in the default callbacks, a short run that logs scores to
the W&B offline run and caches the real statistics, and the same number as the NFE table and
sample.py for the same checkpoint, protocol and seed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from difflab.callbacks.fid import FID
from difflab.metrics import RealStatsCache
from difflab.samplers import DDIMSampler
from tests.app.test_train import TINY, run_tiny
from tests.conftest import compose_train

FID_ON = ["callbacks.fid.n=32", "callbacks.fid.batch_size=16"]
BASE = [o for o in TINY if o != "~callbacks.fid"]  # FID on, as in the default run


def test_bad_arguments_fail_at_construction():
    with pytest.raises(ValueError, match="metrics"):
        FID(metrics=["fid", "is"])
    with pytest.raises(ValueError, match="n must"):
        FID(n=1)
    with pytest.raises(ValueError, match="every_n_steps"):
        FID(every_n_steps=-1)


def test_fid_is_a_default_callback_at_the_end_of_training(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFLAB_CACHE_DIR", str(tmp_path / "cache"))
    cfg = compose_train([])
    assert "fid" in cfg.callbacks
    fid = cfg.callbacks.fid
    assert (fid.at_end, fid.every_n_steps, fid.n, fid.feature) == (True, 0, 1000, "digits")
    assert fid.cache_dir == str(tmp_path / "cache")
    assert "fid" not in compose_train(["~callbacks.fid"]).callbacks
    assert compose_train(["callbacks.fid.every_n_steps=100"]).callbacks.fid.every_n_steps == 100


# --------------------------------------------------------------------------- a short run
def _wandb_summary(run_dir: Path) -> dict:
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    out = subprocess.run(
        [str(Path(sys.executable).parent / "wandb"), "leet", "inspect", "--summary", "--json", str(runs[0])],
        capture_output=True, text=True, timeout=120, check=True,
    )
    return json.loads(out.stdout)


def test_short_run_logs_fid_under_protocol_keys_and_reuses_the_cache(tmp_path, monkeypatch):
    cache_dir = tmp_path / "cache"
    saves: list[str] = []
    original_save = RealStatsCache.save

    def counting_save(self, key, stats):
        saves.append(f"{key['split']}-n{key['n']}")
        return original_save(self, key, stats)

    monkeypatch.setattr(RealStatsCache, "save", counting_save)
    key, floor = "fid/digits/dpmpp2m_sde_nfe2/n32", "fid_floor/digits/n32"
    overrides = [*FID_ON, f"callbacks.fid.cache_dir={cache_dir}", f"optimized_metric={key}"]

    metric, _ = run_tiny(tmp_path / "a", [*overrides, "logger=wandb"], steps=2, base=BASE)
    summary = _wandb_summary(tmp_path / "a")
    scores = summary["summary"]
    assert summary["state"] == "finished"
    assert {key, "kid/digits/dpmpp2m_sde_nfe2/n32", floor, "kid_floor/digits/n32"} <= set(scores)
    assert metric == pytest.approx(scores[key])  # trainer.callback_metrics: what sweepers read
    assert np.isfinite(scores[key]) and scores[key] > scores[floor] > 0
    protocol = summary["config"]["fid_protocol"]
    assert protocol["feature"] == "digits" and len(protocol["feature_hash"]) == 16
    assert (protocol["sampler"], protocol["nfe"]) == ("dpmpp2m_sde_nfe2", 2)  # the default sampler: dpm_solver_sde
    assert (protocol["n"], protocol["world_size"], protocol["seed"]) == (32, 1, 0)
    assert scores["fid_protocol"]["n"] == 32
    record = json.loads((tmp_path / "a" / "fid" / "step_0000002.json").read_text())
    assert record["scores"][key] == pytest.approx(scores[key])

    # real statistics of train (reference) and val (held-out floor set), both at n=32, in the cache dir
    assert sorted(saves) == ["train-n32", "val-n32"]
    files = sorted((cache_dir / "real_stats").glob("*.npz"))
    assert [f.name.split("-")[:4] for f in files] == [["mnist5k", "train", "digits", "n32"],
                                                       ["mnist5k", "val", "digits", "n32"]]
    mtimes = [f.stat().st_mtime_ns for f in files]

    # a second run reads them back: nothing is recomputed or rewritten, same floor
    saves.clear()
    metric_b, _ = run_tiny(tmp_path / "b", [*overrides, "logger=none"], steps=2, base=BASE)
    assert saves == []
    assert [f.stat().st_mtime_ns for f in files] == mtimes
    record_b = json.loads((tmp_path / "b" / "fid" / "step_0000002.json").read_text())
    assert record_b["floor"][floor] == record["floor"][floor]
    assert np.isfinite(metric_b)


def test_fid_callback_nfe_table_and_sample_py_give_the_same_number(tmp_path):
    """One path: the same checkpoint, protocol and seed give the identical score in all three."""
    from difflab.sample import run as sample_run

    run_dir = tmp_path / "run"
    overrides = [*FID_ON, f"callbacks.fid.cache_dir={tmp_path / 'cache'}", "logger=none",
                 "+callbacks.nfe_table._target_=difflab.callbacks.nfe_table.NFETable",
                 "+callbacks.nfe_table.samplers=[{name:dpm_solver,num_steps:2,algorithm:'sde-dpmsolver++'}]", "+callbacks.nfe_table.n=32",
                 "+callbacks.nfe_table.batch_size=16", "+callbacks.nfe_table.floor=false"]
    _, cfg = run_tiny(run_dir, overrides, steps=2, base=BASE)
    key = "fid/digits/dpmpp2m_sde_nfe2/n32"
    from_callback = json.loads((run_dir / "fid" / "step_0000002.json").read_text())["scores"][key]
    import csv

    with open(run_dir / "nfe_table.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert row["fid_key"] == key

    from tests.app.test_sample import compose_sample

    out = sample_run(compose_sample([f"ckpt={run_dir / 'checkpoints' / 'last.ckpt'}", "n=32", "seed=0",
                                     "batch_size=16", "metrics=[fid,kid]", f"cache_dir={tmp_path / 'cache2'}",
                                     "device=cpu", "progress=false"], tmp_path / "sample"))
    from_sample = {r["key"]: r["value"] for r in out["metrics"]}[key]
    assert from_callback == pytest.approx(float(row["fid"]), rel=1e-12)
    assert from_callback == pytest.approx(from_sample, rel=1e-12)


def test_samples_in_inference_and_eval_mode_and_restores_train_mode():
    from difflab.diffusion.process import GaussianDiffusion

    seen = []

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x, t):
            seen.append((self.training, torch.is_inference_mode_enabled()))
            return x * self.w

    from difflab.data import MNIST5kDataModule

    net = Net().train()
    module = SimpleNamespace(
        eval_backbone=lambda: net, process=GaussianDiffusion.from_schedule("linear", 50), objective=SimpleNamespace(target="eps"),
        sampler=DDIMSampler(num_steps=2), image_shape=(1, 28, 28), device=torch.device("cpu"),
    )
    trainer = SimpleNamespace(datamodule=MNIST5kDataModule(), global_step=1, is_global_zero=True, loggers=[],
                              callback_metrics={}, default_root_dir=str(Path("/tmp") / "difflab-fid-test"))
    cb = FID(n=5, batch_size=2, log_floor=False)
    cb.setup(trainer, module, "fit")
    out = cb.evaluate(trainer, module)
    assert set(out["scores"]) == {"fid/digits/ddim2/n5", "kid/digits/ddim2/n5"}
    assert seen and all(s == (False, True) for s in seen)  # 3 batches x 2 steps, eval + inference mode
    assert len(seen) == 6 and net.training  # restored
    assert set(trainer.callback_metrics) == set(out["scores"])
