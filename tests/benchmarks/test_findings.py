"""benchmarks/findings.py: the specs, the statistics behind the verdicts, the report, and --quick end to end."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import findings as F  # noqa: E402


def test_one_spec_per_finding_with_three_seeds_and_its_own_group():
    specs = sorted(p.stem for p in F.SPEC_DIR.glob("*.yaml") if p.stem != "common")
    assert specs == sorted(F.FINDINGS)
    for number, name in enumerate(F.FINDINGS, start=1):
        spec = F.load_spec(name)
        assert spec.number == number
        assert len(spec.seeds) >= 3, name
        assert spec.group == f"findings-{name}"
        assert spec.arm_grid(), name
        # only the grid, the group and the finding: fixed settings belong in common.yaml, so
        # that two findings asking for the same arm ask for the same run
        raw = OmegaConf.load(F.SPEC_DIR / f"{name}.yaml")
        assert set(raw) == {"defaults", "group", "hydra", "finding"}, name
        assert list(raw.defaults) == ["common", "_self_"]
        assert set(raw.hydra) == {"sweeper"} and set(raw.hydra.sweeper) == {"params"}


def test_budgets_change_the_grid_and_the_evaluations():
    short, full, quick = (F.load_spec("ddim_eta", b) for b in F.BUDGETS)
    assert short.params["trainer.max_steps"] == ["1500", "6000"]
    assert full.params["trainer.max_steps"] == ["20000", "80000"]
    assert full.params["callbacks.fid.n"] == ["4500"]
    assert quick.params["seed"] == ["0", "1"] and quick.params["trainer.max_steps"] == ["4", "8"]
    labels = F.expand_evaluations(short.evaluate)
    # 4 steps x 4 etas x clip on/off, each named by its protocol part (+ _noclip), and the 10-step
    # cells of eta 0 and 1 again in pixel features
    assert len(labels) == 34
    assert labels["ddim10_eta1_pixels"] == {"kind": "fid", "sampler": {"name": "ddim", "num_steps": 10, "eta": 1.0},
                                            "weights": "ema", "n": 500, "feature": "pixels"}
    assert "feature" not in labels["ddim10_eta1"]
    assert {"ddim10", "ddim10_noclip", "ddim10_eta0.2", "ddim100_eta1_noclip"} <= set(labels)
    assert labels["ddim10_eta0.5_noclip"]["sampler"] == {"name": "ddim", "num_steps": 10, "eta": 0.5, "clip_sample": False}


def test_evaluation_labels_name_the_protocol():
    ev = F.expand_evaluations(F.load_spec("solvers").evaluate)
    assert set(ev) == {"ddim10", "ddim20", "dpmpp2m_nfe10", "dpmpp2m_nfe20", "unipc_nfe10", "unipc_nfe20",
                       "heun_karras_smax80_nfe9", "heun_karras_smax80_nfe19", "heun_karras_nfe9", "heun_karras_nfe19"}
    assert ev["heun_karras_smax80_nfe9"]["sampler"] == {"name": "heun", "num_steps": 5, "use_karras_sigmas": True,
                                                         "sigma_max": 80.0}
    ema = F.expand_evaluations(F.load_spec("ema").evaluate)
    assert set(ema) == {"ddim50_eta1", "ddim50_eta1_raw", "ddim50_eta1_decay9999", "ddim50_eta1_decay999_nowarmup",
                        "ddim50_eta1_decay9999_nowarmup"}
    assert ema["ddim50_eta1_raw"]["weights"] == "raw" and ema["ddim50_eta1_decay9999"]["weights"] == "ema:decay9999"
    # every further EMA the finding scores is kept by every findings run (common.yaml)
    kept = F.named_emas()
    assert kept[""] == {"decay": 0.999, "warmup": True}
    assert kept["decay9999"] == {"decay": 0.9999, "warmup": True}
    assert kept["decay9999_nowarmup"] == {"decay": 0.9999, "warmup": False}
    assert {e["weights"][4:] for e in ema.values() if e["weights"].startswith("ema:")} <= set(kept)
    cfg = F.expand_evaluations(F.load_spec("guidance").evaluate)
    assert sorted(e["w"] for e in cfg.values()) == [0.0, 1.0, 1.5, 2.0, 3.0, 5.0]
    with pytest.raises(ValueError, match="accepted: ema, raw, ema:<name>"):
        F.expand_evaluations([{"sampler": {"name": "ddim", "num_steps": 10}, "weights": "swa"}])
    with pytest.raises(ValueError, match="feature 'clip' in a findings spec; accepted: digits, inception, pixels"):
        F.expand_evaluations([{"sampler": {"name": "ddim", "num_steps": 10}, "feature": "clip"}])
    with pytest.raises(ValueError, match="sampler name 'dpm'"):
        F.expand_evaluations([{"sampler": {"name": "dpm", "num_steps": 10}}])


def test_paired_claim_is_a_t_test_on_the_per_seed_differences():
    # differences 1, 1.1, 1.2: mean 1.1, sd 0.1, se 0.0577; t = 19 > t(0.975, 2) = 4.303 -> holds
    c = F.Claim("x", low={0: 10.0, 1: 10.0, 2: 10.0}, high={0: 11.0, 1: 11.1, 2: 11.2}, paired=True)
    outcome, line = c.test()
    assert outcome == "agrees" and "+1.1 ± 0.058 SE (paired over 3 seeds; 5% two-sided needs 4.3 SE), holds" in line
    # the other way round: reversed
    assert F.Claim("x", low=c.high, high=c.low, paired=True).test()[0] == "contradicts"
    # differences 1, 2, 3: mean 2, se 0.577, t = 3.46: past 2 SE, but 3 seeds give 2 degrees of
    # freedom and need 4.30 SE for 5%: not significant
    assert F.Claim("x", low={0: 10, 1: 10, 2: 10}, high={0: 11, 1: 12, 2: 13}, paired=True).test()[0] == "unclear"
    assert F.t_critical(2) == pytest.approx(4.302653, rel=1e-6) and F.t_critical(1e9) == pytest.approx(1.959964, rel=1e-6)
    # a seed whose score is NaN is not a seed: one left in common, nothing to test
    assert F.Claim("x", low={0: 1.0, 1: math.nan}, high={0: 2.0, 1: 3.0}, paired=True).test()[0] == "missing"
    # one seed in common: nothing to test
    assert F.Claim("x", low={0: 1.0}, high={0: 2.0, 1: 3.0}, paired=True).test()[0] == "missing"


def test_unpaired_claim_uses_welch_standard_error():
    low, high = {0: 1.0, 1: 2.0, 2: 3.0}, {0: 5.0, 1: 7.0, 2: 9.0}
    va, vb = 1.0 / 3, 4.0 / 3  # variances 1 and 4 over 3 seeds each
    se, df = math.sqrt(va + vb), (va + vb) ** 2 / (va**2 / 2 + vb**2 / 2)  # Welch-Satterthwaite: 2.94
    outcome, line = F.Claim("x", low=low, high=high, paired=False).test()
    assert outcome == "agrees" and f"+5 ± {se:.2g} SE (Welch, 3 and 3 seeds, df {df:.3g}; " in line  # 5 / 1.29 > 3.19
    # a difference of 4 is 3.1 SE: under t(0.975, 2.94) = 3.19
    assert F.Claim("x", low=low, high={0: 4.0, 1: 6.0, 2: 8.0}, paired=False).test()[0] == "unclear"


def test_scores_at_different_n_are_not_compared(tmp_path):
    for s in range(3):
        _fake_result(tmp_path / "res", "default", s, {"a": {"fid": 5.0 + s, "n": 1000}, "b": {"fid": 3.0, "n": 500},
                                                      "c": {"fid": 3.0 + s / 10, "n": 1000}})
    res = F.Results(tmp_path / "res", "short")
    c = res.claim("x", ("default", "b"), ("default", "a"), [0, 1, 2], True)
    assert c.test() == ("missing", "x: not comparable (seed 0 scored at n = 1,000 against n = 500; "
                                   "seed 1 scored at n = 1,000 against n = 500; seed 2 scored at n = 1,000 against n = 500)")
    assert res.claim("x", ("default", "c"), ("default", "a"), [0, 1, 2], True).test()[0] == "agrees"
    # paired, seed by seed: the same set of n on both sides is not enough
    swapped = F.Claim("x", {0: 1.0, 1: 1.0}, {0: 2.0, 1: 2.1}, True, n_low={0: 1000, 1: 4500}, n_high={0: 4500, 1: 1000})
    assert swapped.test()[0] == "missing"
    # Welch's: one n over both sides; an n recorded on one side only is not comparable either
    low, high = {0: 1.0, 1: 1.1}, {0: 2.0, 1: 2.1}
    assert F.Claim("x", low, high, False, n_low={0: 500, 1: 1000}, n_high={0: 500, 1: 500}).test()[0] == "missing"
    one_side = F.Claim("x", low, high, False, n_low={0: 500, 1: 500})
    assert one_side.test() == ("missing", "x: not comparable (scored at n = not recorded, 500)")
    assert F.Claim("x", low, high, False, n_low={0: 500, 1: 500}, n_high={0: 500, 1: 500}).test()[0] == "agrees"


def test_scores_that_are_not_finite_are_dropped_not_averaged():
    c = F.Claim("x", {0: 1.0, 1: 2.0, 2: 3.0}, {0: math.inf, 1: 5.0, 2: 6.1}, True)
    assert c.low == {0: 1.0, 1: 2.0, 2: 3.0} and c.high == {1: 5.0, 2: 6.1}
    assert "paired over 2 seeds" in c.test()[1]
    assert F.cell({0: math.nan, 1: math.inf}, [0, 1, 2]) == "not finite (2 of 3 seeds)"


def test_a_label_is_scored_at_one_n_on_every_arm():
    """Finding 1 asks for its grid at n = 500; the cells other findings score at the run's n
    (ddim10, ddim20, ddim10_eta1) are scored at the run's n on the 6,000-step arm too."""
    runs, _, _ = F.plan(list(F.FINDINGS), "short")
    by_slug = {r.slug: r for r in runs if r.seed == 0}
    for slug in ("default", "trainer.max_steps=6000"):
        ev = by_slug[slug].evaluations
        assert all("n" not in ev[lab] for lab in ("ddim10", "ddim20", "ddim10_eta1", "ddim50_eta1"))
        assert ev["ddim100_eta1"]["n"] == 500 and ev["ddim10_noclip"]["n"] == 500
    assert F._more_samples({"kind": "fid"}, {"kind": "fid", "n": 500}) and not F._more_samples({"n": 500}, {})
    assert F._more_samples({"n": 600}, {"n": 500}) and not F._more_samples({"n": 500}, {"n": 500})


def test_verdict_words():
    agree = F.Claim("a", {0: 0, 1: 0}, {0: 1, 1: 1.1}, True)
    reverse = F.Claim("b", {0: 1, 1: 1.1}, {0: 0, 1: 0}, True)
    unclear = F.Claim("c", {0: 0, 1: 0}, {0: 1, 1: -1}, True)
    assert F.verdict([agree], 6, 6)[0] == "reproduced"
    assert F.verdict([agree, reverse], 6, 6)[0] == "not reproduced"
    assert F.verdict([agree, unclear], 6, 6)[0] == "inconclusive"
    missing = F.Claim("d", {}, {}, True)
    assert F.verdict([agree, missing], 6, 6)[0] == "inconclusive"
    assert F.verdict([reverse, missing], 6, 6)[0] == "not reproduced"  # one significant reversal is enough
    word, why = F.verdict([agree], 5, 6)
    assert word == "pending" and why == ["5 of 6 runs have results; the verdict waits for the rest"]
    word, why = F.verdict([agree], 0, 3, partial=3)  # results that lack a figure the finding added later
    assert word == "pending" and why[0].startswith("0 of 3 runs have every figure of this finding, 3 have results that lack")
    assert F.verdict([agree], 0, 3)[0] == "not run yet"


def test_cell_never_estimates():
    assert F.cell({}, [0, 1]) == "not run yet"
    assert F.cell({0: 2.0}, [0, 1, 2]) == "2.00 (1 seed)"
    assert F.cell({0: 1.0, 1: 3.0}, [0, 1]) == "2.00 ± 1.41"
    assert F.cell({0: 1.0, 2: 3.0}, [0, 1, 2]) == "2.00 ± 1.41 (2 seeds)"  # fewer than planned: says so
    assert F.cell({0: 0.5, 1: math.nan, 2: 0.7}, [0, 1, 2], 1, 100.0) == "60.0 ± 14.1 (2 seeds)"


def _fake_result(root: Path, arm: str, seed: int, metrics: dict) -> None:
    path = root / "short" / arm / f"seed{seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"format": F.FORMAT, "arm": arm, "seed": seed, "metrics": metrics, "global_step": 1500,
                                "wandb": {"group": "findings-default" if arm == "default" else "findings-ema",
                                          "run_id": f"id{seed}"}}))


def test_terminal_x0_gain_is_one_over_sqrt_abar_T_for_eps_only():
    from difflab.diffusion.process import GaussianDiffusion

    composer = F.Composer("short")
    runs, _, _ = F.plan(["schedule", "objective"], "short")
    config = {r.slug: F.expected_config(r, composer) for r in runs}
    cosine = GaussianDiffusion.from_schedule("cosine", 1000).alphas_cumprod[-1]
    linear = GaussianDiffusion.from_schedule("linear", 1000).alphas_cumprod[-1]
    assert F.terminal_x0_gain(config["default"]) == pytest.approx(float(cosine) ** -0.5, rel=1e-6)
    assert F.terminal_x0_gain(config["schedule=linear"]) == pytest.approx(float(linear) ** -0.5, rel=1e-6)
    assert F.terminal_x0_gain(config["default"]) > 1e4 > 1e3 > F.terminal_x0_gain(config["schedule=linear"]) > 1e2
    assert F.terminal_x0_gain(config["objective=x0"]) is None and F.terminal_x0_gain(config["objective=v"]) is None


def test_karras_grid_notes_follow_eq_5_under_the_run_schedule():
    from difflab.diffusion.process import GaussianDiffusion

    composer = F.Composer("short")
    runs, _, _ = F.plan(["solvers"], "short")
    config = F.expected_config(runs[0], composer)
    ab = GaussianDiffusion.from_schedule("cosine", 1000).alphas_cumprod.double()  # sigma(T - 1) = 2.03e4
    smin, smax = float(((1 - ab[0]) / ab[0]).sqrt()), float(((1 - ab[-1]) / ab[-1]).sqrt())
    grid = [(smax ** (1 / 7) + i / 4 * (smin ** (1 / 7) - smax ** (1 / 7))) ** 7 for i in range(5)]  # eq. 5, 5 levels
    heun = {"sampler": {"name": "heun", "num_steps": 5, "use_karras_sigmas": True}}
    ddim = {"sampler": {"name": "ddim", "num_steps": 10}}
    notes = F.karras_grid_notes(config, [("ddim10", ddim), ("heun_karras_nfe9", heun)])
    assert len(notes) == 1 and notes[0].startswith("Grid of heun_karras_nfe9 ")  # DDIM has no Karras grid
    assert ": " + ", ".join(f"{x:.3g}" for x in grid) + ", then 0; " in notes[0]
    above = sum(x > 80 for x in grid[:-1])
    assert f"{above} of its 4 steps between noise levels start above sigma 80" in notes[0]
    assert f"goes from {grid[3]:.3g} to {grid[4]:.3g} (a factor of {grid[3] / grid[4]:.3g})" in notes[0]


def test_clip_notes_compare_fid_and_the_clamped_share(tmp_path):
    labels = {(0.0, 10, True): "ddim10", (1.0, 10, True): "ddim10_eta1", (0.0, 10, False): "ddim10_noclip",
              (1.0, 10, False): "ddim10_eta1_noclip"}
    for s in range(3):
        m = {"ddim10": {"fid": 5.0 + s, "clamped": 0.0, "overshoot": 0.0},
             "ddim10_eta1": {"fid": 3.0 + s, "clamped": 0.0, "overshoot": 0.0},
             "ddim10_noclip": {"fid": 60.0 + 2 * s, "clamped": 0.5, "overshoot": 2.0},
             "ddim10_eta1_noclip": {"fid": 60.0, "clamped": 0.7, "overshoot": 4.0}}
        _fake_result(tmp_path / "res", "default", s, m)
    res = F.Results(tmp_path / "res", "short")
    notes = F._clip_notes(res, "default", [0, 1, 2], "1500", [0.0, 1.0], [10], labels)
    assert notes[0] == ("Investigation, clipping: 1500 steps, eta 0, 10 sampling steps: FID(clip off) - FID(clip on): "
                        "difference +56 ± 0.58 SE (paired over 3 seeds; 5% two-sided needs 4.3 SE), positive")
    assert ("clip on 0.00% of values clamped, mean overshoot 0 (6 cells); "
            "clip off 60.00% of values clamped, mean overshoot 3 (6 cells)") in notes[1]
    assert len(notes) == 2  # no stored config: no closed form


@pytest.mark.slow
def test_report_from_results_only(tmp_path):
    """Without results every finding reads "not run yet" and no plot is drawn; with the EMA
    finding's runs the table holds their mean ± std and the verdict follows the figures."""
    out = tmp_path / "findings.md"
    text = F.write_report(tmp_path / "res", "short", out, tmp_path / "plots")
    assert text.count("**Verdict: not run yet.**") == 7
    assert "not run yet" in text and not list((tmp_path / "plots").glob("*.png"))
    for name in F.FINDINGS:
        assert f"python benchmarks/findings.py --finding {name}" in text
        assert f"+findings={name}" in text
    # EMA, all from the default arm's runs: raw 10, 12, 14; EMA 0.999 5, 6, 7 (paired differences
    # 5, 6, 7: holds), EMA 0.9999 with warm-up the same; without warm-up 30+: worse than raw, but
    # no direction is claimed for those, so the verdict stands
    for s in range(3):
        m = {"ddim50_eta1": {"fid": 5.0 + s}, "ddim50_eta1_raw": {"fid": 10.0 + 2 * s},
             "ddim50_eta1_decay9999": {"fid": 5.0 + s}, "ddim50_eta1_decay999_nowarmup": {"fid": 20.0 + s},
             "ddim50_eta1_decay9999_nowarmup": {"fid": 30.0 + s},
             "ddim10_pixels": {"fid": 4.0 + s}, "ddim10_eta1_pixels": {"fid": 3.0 + s}}
        _fake_result(tmp_path / "res", "default", s, m)
    text = F.write_report(tmp_path / "res", "short", out, tmp_path / "plots")
    ema = text.split("## 7.")[1]
    # 1,500 steps: the warm-up's last decay is 1500 / 1509; without it, 0.9999^1500 of the init is left
    assert "| raw | - | - | - | - | 12.00 ± 2.00 |" in ema
    assert "| EMA 0.999 (the run's) | 0.999 | yes | 0.994 | " in ema and "| 6.00 ± 1.00 |" in ema
    assert f"| EMA 0.9999, no warm-up | 0.9999 | no | 0.9999 | {0.9999 ** 1500:.2g} | 31.00 ± 1.00 |" in ema
    assert "Reported, no direction claimed: FID ddim50_eta1_decay9999_nowarmup" in ema
    # with the warm-up, 1,500 updates never reach either decay: EMA 0.9999 is the run's EMA, not a second claim
    assert "Not tested apart: EMA 0.9999 had the decay of the run's EMA at every one of the 1,500 updates" in ema
    assert "FID ddim50_eta1_decay9999: raw" not in ema
    assert "**Verdict: reproduced.**" in ema and "`findings-default`" in ema
    ddim = text.split("## 1.")[1].split("## 2.")[0]  # finding 1's feature-space question, from the same runs
    assert ("Investigation, 1500 steps, clip on, 10 sampling steps, pixels features: FD(eta 1) - FD(eta 0): difference "
            "-1 ± 0 SE (paired over 3 seeds; 5% two-sided needs 4.3 SE), reversed (eta 0: 5.00 ± 1.00, eta 1: 4.00 ± 1.00)"
            ) in ddim
    assert (tmp_path / "plots" / "ema.png").is_file()
    # the other findings that use the default arm still lack figures or runs
    assert text.split("## 2.")[1].split("## 3.")[0].count("**Verdict: pending.**") == 1


def test_plan_shares_the_default_arm():
    runs, _, arms = F.plan(list(F.FINDINGS), "short")
    default = [r for r in runs if r.slug == "default"]
    assert len(default) == 3
    assert {"schedule", "min_snr", "objective", "ema"} <= set(default[0].findings)
    assert default[0].group == "findings-default"
    assert arms["schedule"][("schedule=cosine",)] == "default"
    assert arms["ddim_eta"][("trainer.max_steps=1500",)] == "default"
    assert arms["ddim_eta"][("trainer.max_steps=6000",)] == "trainer.max_steps=6000"
    # the default arm is scored for every finding it serves, once per label
    assert {"bpd", "fid_curve", "ddim10_noclip", "dpmpp2m_nfe20", "ddim50_eta1_raw",
            "ddim50_eta1_decay9999_nowarmup"} <= set(default[0].evaluations)
    assert sorted({r.slug for r in runs}) == sorted([
        "default", "trainer.max_steps=6000", "schedule=linear", "objective.weighting=uniform", "objective=v",
        "objective=x0", "conditioning=class"])


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_quick_runs_the_pipeline_and_resumes(tmp_path):
    """--quick trains 14 tiny runs, scores them, writes one JSON each and findings.md with a
    verdict per finding; run again, it skips every run and rewrites the same report."""
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, str(ROOT / "benchmarks" / "findings.py"), "--quick",
           "--results-dir", str(tmp_path / "findings"), "--out", str(tmp_path / "findings.md")]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    files = sorted((tmp_path / "findings" / "quick").glob("*/seed*.json"))
    assert len(files) == 14
    rec = json.loads(files[0].read_text())
    assert {"config", "seed", "global_step", "metrics", "wandb", "command"} <= set(rec)
    assert rec["wandb"]["group"].startswith("findings-")
    text = (tmp_path / "findings.md").read_text()
    assert text.count("**Verdict: ") == 7 and "**Verdict: not run yet.**" not in text
    assert len(list((tmp_path / "findings" / "plots" / "quick").glob("*.png"))) == 7
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    assert again.returncode == 0, again.stderr[-4000:]
    assert "0 of 14 runs to do" in again.stderr and again.stderr.count("skip ") == 14
    assert (tmp_path / "findings.md").read_text() == text


def test_claim_without_results_is_not_run_yet():
    assert F.Claim("x", {}, {}, True).test() == ("missing", "x: not run yet")


def test_run_cost_counts_every_image_through_the_network():
    """--list's cost of a run: the FID callback's scores (every 500 steps of 1,500, n = 1,000,
    DDIM 50) and each evaluation's NFE x n, a guided one twice."""
    runs, _, _ = F.plan(list(F.FINDINGS), "short")
    by_slug = {r.slug: r for r in runs if r.seed == 0}
    composer = F.Composer("short")
    linear = F.run_cost(by_slug["schedule=linear"], composer)
    assert linear["train_steps"] == 1500 and linear["run_nfe"] == 50
    assert F.run_cost(by_slug["default"], composer)["callback_image_nfe"] == 3 * 1000 * 50  # steps 500, 1000, 1500
    assert linear["callback_image_nfe"] == 1000 * 50  # no curve: at the end alone
    assert linear["evaluation_image_nfe"] == 1000 * (10 + 50) and linear["bpd_images"] == 100
    grid = sum(steps * 4 * 2 for steps in (10, 20, 50, 100))  # 4 etas x clipped or not, at n = 500
    pixels = 10 + 10  # eta 0 and 1 at 10 steps, in pixel features
    shared = 10 + 20 + 10 + 50  # ddim10, ddim20, ddim10_eta1, ddim50_eta1: other findings' cells, at their n
    assert F.run_cost(by_slug["trainer.max_steps=6000"], composer)["evaluation_image_nfe"] == (
        500 * (grid + pixels - shared) + 1000 * shared)
    assert F.run_cost(by_slug["objective.weighting=uniform"], composer)["evaluation_image_nfe"] == 0


def test_arm_and_seed_select_runs(tmp_path, capsys):
    args = ["--list", "--results-dir", str(tmp_path), "--arm", "schedule=linear", "--seed", "1"]
    assert F.main(args) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if "schedule=linear" in line]
    assert len(rows) == 1 and rows[0].split()[1] == "1" and "no result" in rows[0]
    with pytest.raises(SystemExit):
        F.main(["--list", "--results-dir", str(tmp_path), "--arm", "schedule=cosine"])  # the default arm's name is "default"
    assert "accepted: " in capsys.readouterr().err


def test_runs_without_a_curve_score_at_the_end_only_and_reuse_that_score(tmp_path):
    runs, _, _ = F.plan(list(F.FINDINGS), "short")
    by_slug = {r.slug: r for r in runs if r.seed == 0}
    assert "callbacks.fid.every_n_steps=0" not in by_slug["default"].overrides()  # min_snr reads its curve
    assert "callbacks.fid.every_n_steps=0" in by_slug["schedule=linear"].overrides()
    composer = F.Composer("short")
    assert F.run_cost(by_slug["schedule=linear"], composer)["callback_image_nfe"] == 1000 * 50  # at the end alone

    sampler = repr(F.build_sampler({"name": "ddim", "num_steps": 50, "eta": 1.0}))
    proto = {"sampler_config": sampler, "n": 1000, "seed": 0, "batch_size": 250, "guidance": None, "labels": None,
             "latent_shape": None, "nfe": 50}
    (tmp_path / "fid").mkdir()
    record = {"step": 1500, "protocol": proto, "scores": {"fid/digits/ddim50_eta1/n1000": 1.25, "kid/digits/ddim50_eta1/n1000": 0.01}}
    (tmp_path / "fid" / "step_0001500.json").write_text(json.dumps(record))
    got = F._callback_score(tmp_path, 1500, sampler, 1000, 0, 250)
    assert got["fid"] == 1.25 and got["kid"] == 0.01 and got["key"] == "fid/digits/ddim50_eta1/n1000"
    # anything else asked for is drawn again: another step, sampler, n, seed or batch
    assert F._callback_score(tmp_path, 1000, sampler, 1000, 0, 250) is None
    assert F._callback_score(tmp_path, 1500, sampler.replace("eta=1.0", "eta=0.0"), 1000, 0, 250) is None
    assert F._callback_score(tmp_path, 1500, sampler, 500, 0, 250) is None
    assert F._callback_score(tmp_path, 1500, sampler, 1000, 1, 250) is None
    assert F._callback_score(tmp_path, 1500, sampler, 1000, 0, 100) is None


def test_an_evaluation_can_have_its_own_n_on_the_short_budget_only():
    short = F.expand_evaluations(F.load_spec("ddim_eta", "short").evaluate)
    assert len(short) == 34 and {ev["n"] for ev in short.values()} == {500}
    full = F.expand_evaluations(F.load_spec("ddim_eta", "full").evaluate)
    assert all("n" not in ev for ev in full.values())  # the full budget's n (4,500)
    with pytest.raises(ValueError, match="integer >= 2"):
        F.expand_evaluations([{"sampler": {"name": "ddim", "num_steps": 10}, "n": 1}])


def test_the_suite_samples_with_ddim_50_eta_1_whatever_the_default_sampler():
    """common.yaml pins the run's sampler, so results of different sessions are scored alike."""
    cfg = F.Composer("short").compose([])
    assert cfg.sampler._target_.endswith("DDIMSampler") and (cfg.sampler.num_steps, cfg.sampler.eta) == (50, 1.0)


@pytest.mark.parametrize("slug", ["conditioning=class", "default"])
def test_the_expected_config_is_the_config_the_run_stores(slug):
    """build_module writes what it derives (conditioning=class: the data's class count into
    backbone.num_classes) into the stored config; the config a result is checked against must
    say so too, or every such result would read as stale and run again."""
    import copy

    from difflab.build import build_module
    from difflab.utils.hydra import to_plain_dict

    runs, _, _ = F.plan(list(F.FINDINGS), "short")
    run = next(r for r in runs if r.slug == slug)
    composer = F.Composer("short")
    cfg = copy.deepcopy(composer.compose(run.overrides()))
    stored = to_plain_dict(cfg)
    build_module(cfg, (1, 28, 28), config_dict=stored)
    expected = F.expected_config(run, composer)
    assert F.identity_diff(stored, expected) == []
    assert expected["backbone"]["num_classes"] == (10 if slug == "conditioning=class" else None)


def test_an_option_added_at_null_leaves_a_result_current():
    """A result recorded before a schema gained an option (DDIM's use_clipped_model_output, null:
    the old behaviour) is the same experiment; the option set to a value is another one."""
    runs, _, _ = F.plan(["objective"], "short")
    run = next(r for r in runs if r.slug == "objective=x0" and r.seed == 1)
    expected = F.expected_config(run, F.Composer("short"))
    assert "use_clipped_model_output" in expected["sampler"] and expected["sampler"]["use_clipped_model_output"] is None
    older = json.loads(json.dumps(expected))
    del older["sampler"]["use_clipped_model_output"]
    assert F.identity_diff(older, expected) == []
    older["sampler"]["use_clipped_model_output"] = True
    assert F.identity_diff(older, expected) == ["sampler.use_clipped_model_output: True -> None"]


def test_a_result_of_another_experiment_is_stale_not_counted_and_run_again(tmp_path, capsys):
    """trainer.precision follows the machine unless set: the suite pins it, and a result whose
    config differs from the run's of today in an identity key is reported, not counted, rerun."""
    runs, _, _ = F.plan(["objective"], "short")
    run = next(r for r in runs if r.slug == "objective=x0" and r.seed == 1)
    composer = F.Composer("short")
    config = F.expected_config(run, composer)
    assert config["trainer"]["precision"] == "32-true"  # pinned by sweeps/findings/common.yaml, whatever the CPU
    metrics = {"ddim10_eta1": {"fid": 3.0}, "ddim50_eta1": {"fid": 1.0}}
    path = run.path(tmp_path / "res")
    path.parent.mkdir(parents=True)
    record = {"format": F.FORMAT, "arm": run.slug, "seed": 1, "metrics": metrics, "global_step": 1500, "config": config,
              "wandb": {"group": run.group, "run_id": "abc"}}
    path.write_text(json.dumps(record))
    assert F.stale_reason(run, F.read_result(run, tmp_path / "res"), composer) == []
    assert F.missing_labels(run, F.read_result(run, tmp_path / "res")) == []
    assert F.Results(tmp_path / "res", "short", {(run.slug, 1): config}).by
    bf16 = json.loads(json.dumps(config))
    bf16["trainer"]["precision"] = "bf16-mixed"
    bf16["backbone"]["base_channels"] = 32
    bf16["callbacks"]["fid"]["cache_dir"] = "/elsewhere"  # not part of what the experiment is
    path.write_text(json.dumps({**record, "config": bf16}))
    why = F.stale_reason(run, F.read_result(run, tmp_path / "res"), composer)
    assert why == ["backbone.base_channels: 32 -> 16", "trainer.precision: 'bf16-mixed' -> '32-true'"]
    res = F.Results(tmp_path / "res", "short", {(run.slug, 1): config})
    assert not res.by and res.stale[(run.slug, 1)] == why
    assert F.main(["--list", "--results-dir", str(tmp_path / "res"), "--arm", "objective=x0", "--seed", "1"]) == 0
    out = capsys.readouterr()
    assert "stale" in out.out and "trainer.precision: 'bf16-mixed' -> '32-true'" in out.err + out.out


@pytest.mark.parametrize("slug", ["objective=x0", "conditioning=class"])
def test_a_run_dir_of_another_experiment_is_set_aside_not_resumed(tmp_path, slug):
    """resume=auto would go on from a checkpoint trained in bf16 into an fp32 run: the run dir
    is renamed instead (nothing deleted) and the run starts afresh; a matching one is resumed
    (conditioning=class too, whose checkpoint holds the class count the run wrote into the
    backbone, which the composed config lacks)."""
    import torch

    runs, _, _ = F.plan(["objective", "guidance"], "short")
    run = next(r for r in runs if r.slug == slug and r.seed == 1)
    composed = F.Composer("short").compose(run.overrides())
    config = F.expected_config(run, F.Composer("short"))
    run_dir = tmp_path / "seed1"
    (run_dir / "checkpoints").mkdir(parents=True)
    torch.save({"hyper_parameters": {"config": config}}, run_dir / "checkpoints" / "last.ckpt")
    assert F.set_aside_other_experiment(run_dir, composed) is None and run_dir.is_dir()
    other = json.loads(json.dumps(config))
    other["trainer"]["precision"] = "bf16-mixed"
    torch.save({"hyper_parameters": {"config": other}}, run_dir / "checkpoints" / "last.ckpt")
    aside = F.set_aside_other_experiment(run_dir, composed)
    assert aside is not None and not run_dir.exists() and (aside / "checkpoints" / "last.ckpt").is_file()
    assert aside.name.startswith("seed1.stale-")


def _default_record(run, config, commit, finished_at):
    metrics = {lab: {"fid": 1.0 + i, "n": 1000, "nfe": 10} for i, lab in enumerate(run.evaluations)}
    metrics["ddim50_eta1"]["from"] = "callbacks.fid, step 1500"
    return {"format": F.FORMAT, "arm": run.slug, "seed": run.seed, "metrics": metrics, "global_step": 1500,
            "config": config, "commit": commit, "finished_at": finished_at, "floor": {"fid_floor/digits/n1000": 0.1},
            "wandb": {"group": run.group, "run_id": "old"}}


def _git(*args):
    """git's answer in the checkout, or a skip where it has no history (a shallow clone)."""
    proc = subprocess.run(["git", *args], cwd=F.ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"git {' '.join(args)}: {proc.stderr.strip()} (needs the checkout's history)")
    return proc.stdout.strip()


def test_figures_scored_before_a_fix_are_set_aside_and_scored_again(tmp_path):
    """The sigma-table fix (7e75329) changed what sigma samplers give on the cosine schedule: a
    result scored before it keeps its DDIM figures, while its DPM-Solver/UniPC/Heun labels count
    as missing (the suite scores them again) and the report leaves them out and says why."""
    fix = next(f for f in F.FIXES if f.commit == "7e75329")
    runs, _, _ = F.plan(["solvers"], "short")
    run = next(r for r in runs if r.seed == 0)
    config = F.expected_config(run, F.Composer("short"))
    sigma_labels = {lab for lab, ev in run.evaluations.items() if ev["kind"] == "fid"
                    and ev["sampler"]["name"] in ("dpm_solver", "unipc", "heun", "euler", "euler_ancestral")}
    assert {"dpmpp2m_nfe10", "unipc_nfe20", "heun_karras_nfe9"} <= sigma_labels and "ddim10" not in sigma_labels
    parent = _git("rev-parse", f"{fix.commit}~1")
    before = _default_record(run, config, parent, "2026-12-03T11:52:28Z")
    assert set(F.superseded_labels(before, run.evaluations)) == sigma_labels
    assert set(F.missing_labels(run, before)) == sigma_labels
    after = _default_record(run, config, _git("rev-parse", "HEAD"), "2026-12-03T11:52:28Z")  # git says: it has the fix
    assert F.superseded_labels(after, run.evaluations) == {} and F.missing_labels(run, after) == []
    unknown = _default_record(run, config, "0" * 40, "2026-12-05T00:00:00Z")  # a commit git does not know: the date
    assert F.superseded_labels(unknown, run.evaluations) == {}
    assert set(F.superseded_labels({**unknown, "finished_at": "2026-12-01T00:00:00Z"}, run.evaluations)) == sigma_labels
    rescored = json.loads(json.dumps(before))
    rescored["rescored"] = {lab: {"commit": _git("rev-parse", "HEAD"), "finished_at": "2026-12-05T00:00:00Z"}
                            for lab in sigma_labels}
    assert F.missing_labels(run, rescored) == []
    linear = json.loads(json.dumps(before))  # linear's alpha-bar_{T-1} = 4e-5: the table never floored it
    linear_run = next(r for r in F.plan(["schedule"], "short")[0] if r.slug == "schedule=linear")
    linear["config"]["schedule"] = F.expected_config(linear_run, F.Composer("short"))["schedule"]
    assert F.superseded_labels(linear, run.evaluations) == {}

    path = run.path(tmp_path / "res")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(before))
    res = F.Results(tmp_path / "res", "short", {(run.slug, 0): config}, {(run.slug, 0): run.evaluations})
    assert set(res.superseded[(run.slug, 0)]) == sigma_labels
    assert res.values(run.slug, [0], "dpmpp2m_nfe10") == {} and res.values(run.slug, [0], "ddim10") == {0: before["metrics"]["ddim10"]["fid"]}
    assert res.done(run.slug, [0]) == 1 and res.done(run.slug, [0], ["ddim10"]) == 1
    assert res.done(run.slug, [0], ["ddim10", "unipc_nfe10"]) == 0


@pytest.mark.parametrize("same_weights", [True, False])
def test_rescoring_merges_only_from_the_same_weights(tmp_path, monkeypatch, same_weights):
    """Only the set-aside labels are scored again, beside a witness the record keeps (the FID
    callback's score, free); they are merged when the witness scores its recorded figure again,
    else nothing is merged (the caller scores every label afresh)."""
    runs, _, _ = F.plan(["solvers"], "short")
    run = next(r for r in runs if r.seed == 0)
    config = F.expected_config(run, F.Composer("short"))
    record = _default_record(run, config, "0" * 40, "2026-12-03T11:52:28Z")  # unknown to git: before the fix by date
    path = run.path(tmp_path / "res")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(record))
    redo = F.missing_labels(run, record)
    assert F.witness_label(run, record, redo) == "ddim50_eta1"
    assert F.witness_label(run, {**record, "metrics": {k: {**v, "from": None} for k, v in record["metrics"].items()}},
                           redo) not in redo
    asked = []

    def fake_evaluate(run_, run_dir, cache_dir, device, settings, labels=None):
        asked.append(list(labels))
        out = {lab: {"fid": 50.0, "n": 1000, "nfe": 10} for lab in labels}
        out["ddim50_eta1"] = {"fid": record["metrics"]["ddim50_eta1"]["fid"] + (0.0 if same_weights else 0.01)}
        return out, {"fid_floor/digits/n500": 0.2}

    monkeypatch.setattr(F, "evaluate_run", fake_evaluate)
    got = F.rescore(run, record, redo, tmp_path / "run", tmp_path / "cache", {}, {"wandb_run_id": "new"}, tmp_path / "res")
    assert asked == [[*redo, "ddim50_eta1"]]
    written = json.loads(path.read_text())
    if not same_weights:
        assert got is None and written == record  # nothing merged
        return
    assert got == path
    assert {lab for lab, m in written["metrics"].items() if m["fid"] == 50.0} == set(redo)
    assert written["metrics"]["ddim10"] == record["metrics"]["ddim10"]  # the kept figures stay
    assert written["commit"] == record["commit"] and written["wandb"]["run_id"] == "old"
    assert set(written["rescored"]) == set(redo)
    stamp = written["rescored"]["unipc_nfe10"]
    assert stamp["wandb_run_id"] == "new" and stamp["witness"] == "ddim50_eta1" and stamp["why"] == [F.FIXES[0].commit]
    assert written["floor"] == {"fid_floor/digits/n1000": 0.1, "fid_floor/digits/n500": 0.2}
    assert F.missing_labels(run, written) == []  # scored after the fix: current again


def test_solvers_verdict_tests_edms_heun_grid_and_reports_the_full_range_apart(tmp_path):
    """Karras et al. published Heun on EDM's grid (sigma_max = 80): the verdict tests that grid;
    a Karras grid over the schedule's whole range (diffusers' default) is reported with no
    direction claimed. A result without the EDM-grid labels does not count as done."""
    assert F.solver_protocol({"name": "heun", "num_steps": 5, "use_karras_sigmas": True, "sigma_max": 80.0})[1]
    assert not F.solver_protocol({"name": "heun", "num_steps": 5, "use_karras_sigmas": True})[1]
    assert not F.solver_protocol({"name": "heun", "num_steps": 5, "use_karras_sigmas": True, "sigma_max": 150.0})[1]
    assert F.solver_protocol({"name": "dpm_solver", "num_steps": 10}) == ("dpm_solver", True)
    runs, specs, arms = F.plan(["solvers"], "short")
    config = F.expected_config(runs[0], F.Composer("short"))
    fid = {"ddim10": 5.0, "ddim20": 3.0, "dpmpp2m_nfe10": 4.0, "dpmpp2m_nfe20": 2.5, "unipc_nfe10": 3.0,
           "unipc_nfe20": 2.0, "heun_karras_smax80_nfe9": 4.5, "heun_karras_smax80_nfe19": 2.8,
           "heun_karras_nfe9": 60.0, "heun_karras_nfe19": 7.0}
    for run in runs:
        rec = _default_record(run, config, "0" * 40, "2026-12-05T00:00:00Z")  # after the fix (by date)
        rec["metrics"].update({lab: {"fid": v + 0.01 * run.seed, "n": 1000} for lab, v in fid.items()})
        if run.seed == 2:
            del rec["metrics"]["heun_karras_smax80_nfe19"]
        path = run.path(tmp_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rec))
    res = F.Results(tmp_path, "short")
    slug = runs[0].slug
    labels = F._labels(specs["solvers"])
    assert res.done(slug, [0, 1], labels) == 2 and res.done(slug, [0, 1, 2], labels) == 2
    assert F.missing_labels(runs[2], res.by[(slug, 2)]) == ["heun_karras_smax80_nfe19"]
    sec = F.section_solvers(specs["solvers"], res, arms["solvers"])
    texts = [c.text for c in sec.claims]
    assert any(t.startswith("FID heun_karras_smax80_nfe9 against ddim10") for t in texts)
    assert not any("heun_karras_nfe" in t for t in texts)  # the full-range grid is no claim...
    apart = [n for n in sec.notes if n.startswith("Reported, no direction claimed: FID heun_karras_nfe9 against ddim10")]
    assert len(apart) == 1 and "negative" in apart[0]  # ...but its comparison is in the notes
    names = {row[2]: row[0] for row in sec.rows}
    assert names["heun_karras_smax80_nfe9"] != names["heun_karras_nfe9"]  # two rows, two series in the plot
    assert set(sec.panels[0][3]) == {"ddim", "dpm_solver", "unipc", names["heun_karras_nfe9"], names["heun_karras_smax80_nfe9"]}
    grid = next(n for n in sec.notes if n.startswith("Grid of heun_karras_smax80_nfe9 "))
    assert "from sigma_max = 80 to" in grid and "2^-24" not in grid and "0 of its 4 steps" in grid


def test_eta_answer_says_which_factor_turns_the_comparison():
    """Finding 1's 'why': the paper's comparison reversed here, one factor that gives the paper's
    direction, one that keeps the reversal, one undecided and one without runs, each named."""
    seeds = [0, 1, 2]
    main = F.Claim("1500 steps, clip on, 10 sampling steps: FID(eta 1) - FID(eta 0)",
                   {s: 5.0 + s for s in seeds}, {s: 3.0 + s for s in seeds}, True)
    noclip = F.Claim("x", {s: 60.0 + s for s in seeds}, {s: 61.0 + s for s in seeds}, True)
    longer = F.Claim("x", {s: 4.0 + s for s in seeds}, {0: 3.0, 1: 3.9, 2: 5.0}, True)  # -1 +- 0.08: reversed
    pixels = F.Claim("x", {s: 4.0 for s in seeds}, {0: 3.0, 1: 5.0, 2: 4.5}, True)  # +0.17 +- 0.6: unclear
    later = F.Claim("x", {0: 3.0}, {0: 2.0}, True)
    text = F.eta_answer(main, [("clip off", "samples: 99% clamped", noclip), ("6000 training steps", "", longer),
                               ("pixels features", "", pixels), ("9000 training steps", "", later)])
    assert text.startswith("Why, from the figures: FID(eta 1) - FID(eta 0) is -2 (eta 1 better, significant; "
                           "eta 0 6, eta 1 4) in the paper's setting here (1500 steps, clip on, 10 sampling steps)")
    assert "clip off (samples: 99% clamped): +1 (the paper's direction, significant; eta 0 61, eta 1 62)" in text
    assert "9000 training steps: not decided (fewer than 2 seeds; eta 0 3, eta 1 2)" in text
    assert text.endswith(". So the paper's direction appears with clip off; it does not appear with 6000 training "
                         "steps; pixels features leaves it undecided (not significant at their seeds); 9000 training steps not decided "
                         "yet")
    # where the paper's setting agrees there is nothing to explain
    agree = F.Claim("a: FID(eta 1) - FID(eta 0)", {s: 3.0 + s for s in seeds}, {s: 5.0 + s for s in seeds}, True)
    assert ". So" not in F.eta_answer(agree, [("clip off", "", noclip)])
