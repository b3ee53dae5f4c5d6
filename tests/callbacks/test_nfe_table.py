"""NFETable: config syntax, argument checks, and the table a short run writes."""

from __future__ import annotations

import csv
import math

import pytest

from difflab.callbacks.nfe_table import NFETable, curve_label
from difflab.errors import ConfigError
from tests.conftest import compose_train
from tests.utils.test_checkpoint import TINY_RUN


def test_added_to_the_default_callbacks_by_a_list():
    cfg = compose_train(["callbacks=[default,nfe_table,trajectory]"])
    assert {"model_checkpoint", "ema", "sample_grid", "nfe_table", "trajectory"} <= set(cfg.callbacks)
    entries = [dict(s) for s in cfg.callbacks.nfe_table.samplers]
    assert {"name": "ddim", "num_steps": 10} in entries
    # every sampler of the group is in the default table, at 5, 10, 20 and 50 NFE where its order allows
    from difflab.samplers import SAMPLERS

    assert {e["name"] for e in entries} == set(SAMPLERS)
    table = NFETable(samplers=entries, n=2)
    nfes: dict[str, set] = {}
    for sampler in table.build_samplers(1000):
        nfes.setdefault(curve_label({"key_part": sampler.key_part(1000)}), set()).add(sampler.nfe(1000))
    assert all(v == {5, 10, 20, 50} or v == {5, 9, 19, 49} for v in nfes.values()), nfes
    cfg = compose_train(["callbacks=[default,nfe_table]", "callbacks.nfe_table.samplers=[{name:ddim,num_steps:10}]"])
    assert len(cfg.callbacks.nfe_table.samplers) == 1
    assert "nfe_table" not in compose_train([]).callbacks  # off by default


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({"samplers": [{"name": "dpm_solver_v3", "num_steps": 10}]}, "unknown sampler 'dpm_solver_v3'"),
        ({"samplers": [{"name": "ddim", "num_steps": 10, "prediction_type": "v"}]}, "prediction_type"),
        ({"n": 1}, "n must be an integer >= 2"),
        ({"metrics": ["fid", "is"]}, "unknown metric"),
        ({"feature": "resnet"}, "feature"),
        ({"samplers": []}, "empty"),
    ],
)
def test_arguments_are_checked(kwargs, expected):
    with pytest.raises(ValueError, match=expected):
        NFETable(**kwargs)


def test_step_counts_are_checked_against_T():
    table = NFETable(samplers=[{"name": "ddim", "num_steps": 5000}])
    with pytest.raises(ConfigError, match=r"samplers\[0\].*num_timesteps=1000"):
        table.build_samplers(1000)
    ddpm = NFETable(samplers=[{"name": "ddpm", "num_steps": None}]).build_samplers(1000)[0]
    assert len(ddpm.timesteps(1000)) == 1000 and ddpm.key_part(1000) == "ddpm1000"


def test_short_run_writes_the_table_and_plot(tmp_path):
    from difflab.train import run

    overrides = [o for o in TINY_RUN if not o.startswith(("callbacks", "trainer.max_steps", "logger"))]
    overrides += [
        "trainer.max_steps=1",
        "logger=csv",
        "callbacks=[ema,nfe_table]",
        "callbacks.nfe_table.n=20",
        "callbacks.nfe_table.batch_size=10",
        "callbacks.nfe_table.samplers=[{name:ddpm,num_steps:3},{name:ddim,num_steps:2}]",
        f"callbacks.nfe_table.cache_dir={tmp_path / 'cache'}",
    ]
    run(compose_train(overrides, output_dir=str(tmp_path)))
    with open(tmp_path / "nfe_table.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["sampler"], int(r["nfe"])) for r in rows] == [("ddpm", 3), ("ddim", 2)]
    for r in rows:
        assert math.isfinite(float(r["fid"])) and math.isfinite(float(r["kid"])) and math.isfinite(float(r["floor_fid"]))
        assert r["n"] == "20" and r["feature"] == "digits" and r["floor_n"] == "20"
    assert rows[0]["fid_key"] == "fid/digits/ddpm3/n20" and rows[1]["kid_key"] == "kid/digits/ddim2/n20"
    assert (tmp_path / "nfe_fid.png").stat().st_size > 1000
    metrics = (tmp_path / "csv" / "metrics.csv").read_text()
    assert "fid/digits/ddim2/n20" in metrics and "fid_floor/digits/n20" in metrics


def test_bad_step_count_stops_before_training(tmp_path):
    from difflab.train import run

    overrides = [o for o in TINY_RUN if not o.startswith("callbacks")]
    overrides += ["callbacks=[ema,nfe_table]", "callbacks.nfe_table.samplers=[{name:ddim,num_steps:5000}]"]
    with pytest.raises(ConfigError, match="num_steps"):
        run(compose_train(overrides, output_dir=str(tmp_path)))
    assert not (tmp_path / "checkpoints").exists()
