"""sample.py: checkpoint -> samples.npz + grid.png (+ metrics.json); bad input -> one line, exit 2."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import ROOT
from tests.utils.test_checkpoint import tiny_checkpoint


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.getbasetemp() / "tiny-run")


def compose_sample(overrides: list[str], output_dir: Path):
    """conf/sample.yaml with overrides, as `python sample.py` composes it."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    from difflab.config import register_configs
    from difflab.utils.hydra import register_resolvers

    register_resolvers()
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="sample", overrides=list(overrides))
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.root_dir = str(ROOT)
    return cfg


def sample(ckpt, out: Path, *overrides: str, cache: Path | None = None):
    from difflab.sample import run

    extra = [f"cache_dir={cache}"] if cache else []
    return run(compose_sample([f"ckpt={ckpt}", "device=cpu", "progress=false", *extra, *overrides], out))


def fails(ckpt, tmp_path, capsys, *overrides: str) -> str:
    """Run difflab.sample.main; assert exit code 2 and one line on stderr; return that line."""
    from difflab.sample import main

    args = ([f"ckpt={ckpt}"] if ckpt else []) + ["device=cpu", "progress=false", *overrides]
    cfg = compose_sample(args, tmp_path / "out")
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(cfg)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    assert not (tmp_path / "out" / "samples.npz").exists()
    return err


# ----------------------------------------------------------------------------- outputs
def test_writes_npz_and_grid(tiny_ckpt, tmp_path):
    result = sample(tiny_ckpt, tmp_path, "n=5", "batch_size=2", "seed=3")
    with np.load(tmp_path / "samples.npz", allow_pickle=False) as f:
        images = f["images"]
        assert images.dtype == np.uint8 and images.shape == (5, 28, 28, 1)
        assert str(f["sampler"]) == "dpmpp2m_sde_nfe2" and int(f["nfe"]) == 2  # the default sampler: dpm_solver_sde
        assert int(f["seed"]) == 3 and int(f["n"]) == 5 and bool(f["use_ema"]) and int(f["global_step"]) == 2
        protocol = json.loads(str(f["protocol"]))
    assert protocol["sampler"] == "dpmpp2m_sde_nfe2" and "prediction_type" not in protocol["sampler_config"]
    grid = np.asarray(Image.open(tmp_path / "grid.png"))
    assert grid.shape == (2 * 30 + 2, 3 * 30 + 2)  # 5 images: 3 per row, 2 rows, 2 px padding
    assert result["grid"] == tmp_path / "grid.png" and result["metrics"] == []


def test_same_seed_same_bytes_other_seed_differs(tiny_ckpt, tmp_path):
    paths = []
    for name, seed in [("a", 0), ("b", 0), ("c", 1)]:
        sample(tiny_ckpt, tmp_path / name, "n=3", "batch_size=2", f"seed={seed}", "grid_size=0")
        paths.append((tmp_path / name / "samples.npz").read_bytes())
    assert paths[0] == paths[1]
    assert paths[0] != paths[2]
    assert not (tmp_path / "a" / "grid.png").exists()


def test_raw_weights_differ_from_ema(tiny_ckpt, tmp_path):
    sample(tiny_ckpt, tmp_path / "ema", "n=3")
    sample(tiny_ckpt, tmp_path / "raw", "n=3", "use_ema=false")
    ema = np.load(tmp_path / "ema" / "samples.npz")
    raw = np.load(tmp_path / "raw" / "samples.npz")
    assert bool(ema["use_ema"]) and not bool(raw["use_ema"])
    assert not np.array_equal(ema["images"], raw["images"])


def test_sampler_choice_and_partial_override(tiny_ckpt, tmp_path):
    sample(tiny_ckpt, tmp_path / "ddpm", "n=2", "sampler=ddpm", "sampler.num_steps=3")
    with np.load(tmp_path / "ddpm" / "samples.npz") as f:
        assert str(f["sampler"]) == "ddpm3" and int(f["nfe"]) == 3
    sample(tiny_ckpt, tmp_path / "ckpt-sampler", "n=2", "+sampler.num_steps=1")
    with np.load(tmp_path / "ckpt-sampler" / "samples.npz") as f:
        assert str(f["sampler"]) == "dpmpp2m_sde_nfe1" and int(f["nfe"]) == 1  # the checkpoint's sampler, 1 step


def test_exported_safetensors_sample_like_the_checkpoint(tiny_ckpt, tmp_path):
    from difflab.utils.checkpoint import export_safetensors

    exported = export_safetensors(tiny_ckpt, tmp_path / "ema.safetensors")
    sample(tiny_ckpt, tmp_path / "ckpt", "n=2")
    sample(exported, tmp_path / "st", "n=2")
    a, b = np.load(tmp_path / "ckpt" / "samples.npz"), np.load(tmp_path / "st" / "samples.npz")
    assert np.array_equal(a["images"], b["images"])


def test_metrics_table_and_json(tiny_ckpt, tmp_path, capsys):
    result = sample(tiny_ckpt, tmp_path / "out", "n=6", "batch_size=3", "metrics=[fid,kid]", cache=tmp_path / "cache")
    out = capsys.readouterr().out
    assert "fid/digits/dpmpp2m_sde_nfe2/n6" in out and "kid/digits/dpmpp2m_sde_nfe2/n6" in out and "floor" in out
    report = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert set(report["metrics"]) == {"fid/digits/dpmpp2m_sde_nfe2/n6", "kid/digits/dpmpp2m_sde_nfe2/n6"}
    assert all(np.isfinite(v) for v in report["metrics"].values())
    assert set(report["floor"]) == {"fid_floor/digits/n6", "kid_floor/digits/n6"}  # at the score's own n
    assert np.isfinite(report["floor"]["fid_floor/digits/n6"])
    assert report["score_protocol"]["n_real"] == 6 and report["score_protocol"]["real"]["split"] == "train"
    assert 0.0 <= report["clamped"] <= 1.0  # the share of pixel values quantisation clamped
    assert [r["metric"] for r in result["metrics"]] == ["fid", "kid"]
    assert list((tmp_path / "cache").glob("*.npz")), "real statistics are cached"


def test_the_checkpoints_sampler_takes_overrides_without_a_plus(tiny_ckpt, tmp_path):
    """`sample.py ckpt=... sampler.num_steps=5` edits the checkpoint's sampler (the entry point
    adds the `+` Hydra needs when no sampler=NAME is chosen)."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    out = tmp_path / "cli"
    proc = subprocess.run(
        [sys.executable, "sample.py", f"ckpt={tiny_ckpt}", "n=2", "sampler.num_steps=1", "device=cpu",
         "progress=false", f"hydra.run.dir={out}"], cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    with np.load(out / "samples.npz") as f:
        assert str(f["sampler"]) == "dpmpp2m_sde_nfe1"


# ----------------------------------------------------------------------------- bad input
def test_missing_checkpoint(tmp_path, capsys):
    err = fails(tmp_path / "nope.ckpt", tmp_path, capsys)
    assert "no such file" in err and "last.ckpt" in err


def test_no_checkpoint_given(tmp_path, capsys):
    assert "ckpt is required" in fails(None, tmp_path, capsys)


def test_unsafe_checkpoint(tmp_path, capsys):
    from tests.utils.test_checkpoint import Payload

    torch.save({"x": Payload()}, tmp_path / "evil.ckpt")
    assert "refused for safety" in fails(tmp_path / "evil.ckpt", tmp_path, capsys)


def test_checkpoint_of_another_architecture(tiny_ckpt, tmp_path, capsys):
    ckpt = copy.deepcopy(torch.load(tiny_ckpt, map_location="cpu", weights_only=True))
    ckpt["hyper_parameters"]["config"]["backbone"]["base_channels"] = 16
    torch.save(ckpt, tmp_path / "other.ckpt")
    err = fails(tmp_path / "other.ckpt", tmp_path, capsys)
    assert "do not fit the backbone" in err and "shape mismatches" in err


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["n=1", "metrics=[fid]"], "n must be an integer >= 2"),
        (["n=0"], "n must be an integer >= 1"),
        (["metrics=[fid,fdi]"], "unknown metric(s) fdi; accepted: fid, kid"),
        (["metrics=[fid]", "feature=resnet"], "accepted: digits, inception"),
        (["batch_size=0"], "batch_size must be an integer >= 1"),
        (["sampler=ddim", "sampler.num_steps=5000"], "num_timesteps=1000"),
        (["ema=slow"], "has no EMA named 'slow' (it holds no named EMA)"),
        (["ema=slow", "use_ema=false"], "with use_ema=true"),
    ],
)
def test_bad_arguments(tiny_ckpt, tmp_path, capsys, overrides, expected):
    assert expected in fails(tiny_ckpt, tmp_path, capsys, *overrides)


def test_cli_end_to_end(tiny_ckpt, tmp_path):
    """The thin entry point: Hydra run dir, sampler group with the checkpoint's prediction type."""
    out = tmp_path / "run"
    cmd = [sys.executable, "sample.py", f"ckpt={tiny_ckpt}", "n=2", "sampler=ddim", "sampler.num_steps=1", "device=cpu"]
    proc = subprocess.run([*cmd, f"hydra.run.dir={out}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "samples.npz").is_file() and (out / "grid.png").is_file() and (out / ".hydra").is_dir()
    bad = subprocess.run([*cmd, "metrics=[fid,foo]", f"hydra.run.dir={tmp_path / 'bad'}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2
    assert "error: metrics: unknown metric(s) foo; accepted: fid, kid" in bad.stderr and "Traceback" not in bad.stderr


def test_point_data_are_scored_with_swd_mmd_and_bits_per_dim(tmp_path, capsys):
    """toy2d on the evaluation path: a scatter plot, SWD/MMD with their floor, and bits/dim by the ODE."""
    from difflab.train import run as train_run
    from tests.conftest import compose_train

    overrides = ["data=toy2d", "backbone=mlp", "trainer=cpu", "trainer.max_steps=4", "trainer.val_check_interval=4",
                 "callbacks.fid.n=50", "sampler.num_steps=3", "logger=none", "print_config=false",
                 "trainer.enable_progress_bar=false", "callbacks.sample_grid.num_points=50"]
    train_run(compose_train(overrides, output_dir=str(tmp_path / "run")))
    record = json.loads((tmp_path / "run" / "fid" / "step_0000004.json").read_text())
    assert set(record["scores"]) == {"swd/points/dpmpp2m_sde_nfe3/n50", "mmd/points/dpmpp2m_sde_nfe3/n50"}
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    result = sample(ckpt, tmp_path / "good", "n=50", "metrics=[swd,mmd,nll]", "nll_n=3")
    keys = [r["key"] for r in result["metrics"]]
    assert keys[:2] == ["swd/points/dpmpp2m_sde_nfe3/n50", "mmd/points/dpmpp2m_sde_nfe3/n50"]
    assert keys[2].startswith("nll/bpd/ode_dopri5_rtol1e-5_atol1e-5_exact") and keys[2].endswith("/val3")
    assert all(np.isfinite(r["value"]) for r in result["metrics"])
    assert (tmp_path / "good" / "grid.png").stat().st_size > 1000  # the scatter plot
    with np.load(tmp_path / "good" / "samples.npz") as f:
        assert f["points"].shape == (50, 2)
    err = fails(ckpt, tmp_path, capsys, "metrics=[fid]")
    assert "metrics=['fid']" in err and "swd,mmd" in err


def test_malloc_tuning_takes_a_boolean(tiny_ckpt, tmp_path, capsys):
    err = fails(tiny_ckpt, tmp_path, capsys, "malloc_tuning=maybe")
    assert "malloc_tuning must be true or false" in err
