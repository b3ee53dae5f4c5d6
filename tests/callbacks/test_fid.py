"""FID callback: the split of n across ranks, the gather, protocol keys, and a short run that
logs scores to the W&B offline run and caches the real statistics."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from difflab.callbacks.fid import FID, rank_seed, sampler_name, split_counts
from difflab.metrics import RealStatsCache, floor_key
from difflab.samplers import DDIMSampler, DDPMSampler
from tests.app.test_train import run_tiny
from tests.conftest import compose_train

FID_ON = ["callbacks=[default,fid]", "callbacks.fid.n=32", "callbacks.fid.batch_size=16"]


# --------------------------------------------------------------------------- split and seeds
@pytest.mark.parametrize("world", [1, 2, 3, 4, 7, 8])
@pytest.mark.parametrize("n", [2, 5, 31, 32, 2000, 2001])
def test_split_counts_are_exact(n, world):
    counts = split_counts(n, world)
    assert len(counts) == world
    assert sum(counts) == n
    assert max(counts) - min(counts) <= 1
    assert counts == sorted(counts, reverse=True)  # the remainder goes to the first ranks
    assert split_counts(n, world) == counts  # deterministic


def test_split_counts_examples_and_errors():
    assert split_counts(5, 2) == [3, 2]
    assert split_counts(2000, 3) == [667, 667, 666]
    assert split_counts(2, 4) == [1, 1, 0, 0]
    with pytest.raises(ValueError):
        split_counts(10, 0)
    with pytest.raises(ValueError):
        split_counts(-1, 2)


def test_rank_seeds_are_distinct_and_stable():
    seeds = [rank_seed(0, r) for r in range(8)]
    assert len(set(seeds)) == 8
    assert seeds == [rank_seed(0, r) for r in range(8)]
    assert rank_seed(1, 0) not in seeds
    assert all(0 <= s < 2**63 for s in seeds)
    # fixed values: the same in every process (no dependence on Python's hash randomization)
    assert seeds[:2] == [7933492672757968414, 6460054740267733452]


class _FakeStrategy:
    """all_gather of a 2-rank world as seen from rank 0: stacks this rank's tensor with rank 1's."""

    def __init__(self, other: list[torch.Tensor]):
        self.other = list(other)

    def all_gather(self, tensor):
        return torch.stack([tensor, self.other.pop(0)])


def test_gather_with_uneven_counts_drops_the_padding():
    n, dim = 5, 3
    c0, c1 = split_counts(n, 2)  # 3, 2
    f0 = np.arange(c0 * dim, dtype=np.float64).reshape(c0, dim)
    f1 = -np.arange(1, c1 * dim + 1, dtype=np.float64).reshape(c1, dim)
    width = 3
    pad1 = torch.full((width, dim), 1e9, dtype=torch.float64)  # padding must never be read
    pad1[:c1] = torch.from_numpy(f1)
    trainer = SimpleNamespace(world_size=2, strategy=_FakeStrategy([pad1, torch.tensor([c1])]))
    cb = FID(n=n)
    feats, counts = cb._gather(trainer, f0, torch.device("cpu"))
    assert counts == [3, 2]
    np.testing.assert_array_equal(feats, np.concatenate([f0, f1]))


# --------------------------------------------------------------------------- keys
def test_protocol_keys_name_sampler_steps_eta_and_n():
    process = SimpleNamespace(num_timesteps=1000)
    cb = FID(n=2000, sampler=DDIMSampler(num_steps=50, eta=1.0))
    assert cb.protocol_keys(SimpleNamespace(process=process)) == {
        "fid": "fid/digits/ddim50_eta1/n2000",
        "kid": "kid/digits/ddim50_eta1/n2000",
    }
    module = SimpleNamespace(process=process, sampler=DDPMSampler())
    assert FID(n=500, metrics=["fid"]).protocol_keys(module) == {"fid": "fid/digits/ddpm1000/n500"}
    assert sampler_name(DDIMSampler()) == "ddim"
    assert floor_key("fid", "digits", 2000) == "fid_floor/digits/n2000"


def test_bad_arguments_fail_at_construction():
    with pytest.raises(ValueError, match="metrics"):
        FID(metrics=["fid", "is"])
    with pytest.raises(ValueError, match="n must"):
        FID(n=1)
    with pytest.raises(ValueError, match="every_n_steps"):
        FID(every_n_steps=-1)


def test_config_adds_fid_to_the_default_callbacks(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFLAB_CACHE_DIR", str(tmp_path / "cache"))
    cfg = compose_train(["callbacks=[default,fid]", "callbacks.fid.every_n_steps=100"])
    default = list(compose_train([]).callbacks)
    assert list(cfg.callbacks) == [*default, "fid"]
    assert "fid" not in default  # off by default
    assert cfg.callbacks.fid.every_n_steps == 100
    assert cfg.callbacks.fid.cache_dir == str(tmp_path / "cache")


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
    key, floor = "fid/digits/ddim2_eta1/n32", "fid_floor/digits/n32"
    overrides = [*FID_ON, f"callbacks.fid.cache_dir={cache_dir}", f"optimized_metric={key}"]

    metric, _ = run_tiny(tmp_path / "a", [*overrides, "logger=wandb"], steps=2)
    summary = _wandb_summary(tmp_path / "a")
    scores = summary["summary"]
    assert summary["state"] == "finished"
    assert {key, "kid/digits/ddim2_eta1/n32", floor, "kid_floor/digits/n32"} <= set(scores)
    assert metric == pytest.approx(scores[key])  # trainer.callback_metrics: what sweepers read
    assert np.isfinite(scores[key]) and scores[key] > scores[floor] > 0
    protocol = summary["config"]["fid_protocol"]
    assert protocol["feature"] == "digits" and len(protocol["feature_hash"]) == 16
    assert (protocol["sampler"], protocol["num_steps"], protocol["eta"]) == ("ddim", 2, 1)  # default: ddim_eta1
    assert (protocol["n"], protocol["world_size"], protocol["per_rank_counts"]) == (32, 1, [32])
    assert scores["fid_protocol"]["n"] == 32
    record = json.loads((tmp_path / "a" / "fid" / "step_0000002.json").read_text())
    assert record["scores"][key] == pytest.approx(scores[key])

    # real statistics of train (reference) and val (floor), both at n=32, in the cache dir
    assert sorted(saves) == ["train-n32", "val-n32"]
    files = sorted((cache_dir / "real_stats").glob("*.npz"))
    assert [f.name.split("-")[:4] for f in files] == [["mnist5k", "train", "digits", "n32"],
                                                       ["mnist5k", "val", "digits", "n32"]]
    mtimes = [f.stat().st_mtime_ns for f in files]

    # a second run reads them back: nothing is recomputed or rewritten, same floor
    saves.clear()
    metric_b, _ = run_tiny(tmp_path / "b", [*overrides, "logger=none"], steps=2)
    assert saves == []
    assert [f.stat().st_mtime_ns for f in files] == mtimes
    record_b = json.loads((tmp_path / "b" / "fid" / "step_0000002.json").read_text())
    assert record_b["floor"][floor] == record["floor"][floor]
    assert np.isfinite(metric_b)


def test_samples_in_inference_and_eval_mode_and_restores_train_mode():
    from difflab.diffusion.process import GaussianDiffusion
    from difflab.metrics import build_feature_extractor

    seen = []

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x, t):
            seen.append((self.training, torch.is_inference_mode_enabled()))
            return x * self.w

    net = Net().train()
    module = SimpleNamespace(
        eval_backbone=lambda: net, process=GaussianDiffusion.from_schedule("linear", 50),
        sampler=DDIMSampler(num_steps=2), image_shape=(1, 28, 28), device=torch.device("cpu"),
    )
    cb = FID(n=5, batch_size=2)
    cb.extractor = build_feature_extractor("digits")
    feats = cb._local_features(module, 3, rank=1)
    assert feats.shape == (3, cb.extractor.feature_dim)
    assert seen and all(s == (False, True) for s in seen)  # 2 batches x 2 steps, eval + inference mode
    assert net.training  # restored
    np.testing.assert_array_equal(feats, cb._local_features(module, 3, rank=1))  # (seed, rank) fixes them
    assert not np.array_equal(feats, cb._local_features(module, 3, rank=0))
