"""Published trends on mnist5k, with seeds and error bars: run the findings suite, write findings.md.

    python benchmarks/findings.py                          # every finding: the runs not done yet, then findings.md
    python benchmarks/findings.py --finding ddim_eta       # one finding (its runs; shared runs serve the others too)
    python benchmarks/findings.py --finding ema --max-minutes 110 --commit   # one piece: stop before 110 min, commit each result
    python benchmarks/findings.py --report                 # findings.md from the committed results alone, no run
    python benchmarks/findings.py --list                   # every run: its cost (steps, image NFEs) and whether it is done
    python benchmarks/findings.py --arm schedule=linear --seed 0 --commit   # one run of the list
    python benchmarks/findings.py --full                   # full size (GPU): 20,000 steps, n = 4,500 -> findings_full.md
    python benchmarks/findings.py --quick                  # the pipeline in a temporary folder, tiny UNet, 2 seeds

One finding = one Hydra multirun spec, ``sweeps/findings/<name>.yaml``: its grid
(``hydra.sweeper.params``: the arms and the seeds), its W&B group and a ``finding`` block (the
paper, the published trend, and what is scored from each checkpoint). ``python train.py -m
--config-dir sweeps +findings=<name>`` runs the same training jobs on their own. This script
expands each grid into runs (arm x seed) and, for each run that has no result yet:

1. trains it in-process (``difflab.train.run``) from ``sweeps/findings/common.yaml`` plus the
   arm's overrides, in ``--work-dir`` (deleted after the run unless ``--keep``), with the W&B
   group named in the table;
2. scores its checkpoint on the one evaluation path (``difflab.evaluation``: ``Evaluator`` and
   ``evaluate``, sample i drawn from the run's seed and i, the protocol keys), for every
   evaluation that any finding asks of this arm (the default arm serves findings 1-5 and 7 at
   once); the FID-against-step curve comes from the FID callback's ``<run dir>/fid/*.json``,
   bits/dim from ``difflab.evaluation.likelihood.bits_per_dim``;
3. writes ``benchmarks/findings/<budget>/<arm>/seed<k>.json`` (config, seed, step, metrics,
   W&B group and run id): the evidence. A run whose JSON exists with every evaluation its
   findings need is skipped, so the suite runs in pieces across sessions that keep nothing
   but the committed JSON files (``--commit`` commits each one as it is written).

Then it writes ``benchmarks/findings.md`` (``findings_full.md`` for ``--full``) from those JSON
files only: per finding a table (mean ± std over seeds), a plot (``benchmarks/findings/plots/``),
the budget, the commands, the W&B groups, and a verdict computed from the figures: a claim
holds when the difference in the paper's direction is significant in a two-sided t-test at 5%
(paired by seed when both sides come from the same checkpoints, Welch's otherwise: with 3
seeds paired the difference must exceed 4.30 standard errors), is contradicted when it is
significant the other way; "reproduced" when every claim holds, "not reproduced"
when one is contradicted, "inconclusive" otherwise; "pending" while some runs are missing
("not run yet" while all are).
Nothing is estimated: a missing figure reads "not run yet".

Budgets: short (the default; 1,500 steps, n = 1,000, seeds 0-2), full (``--full``; a GPU) and
quick (``--quick``: a tiny UNet trained 4-8 steps on the CPU, n = 16, 2 seeds, everything in a
temporary folder; it checks the pipeline, not the findings).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, compose_train, machine, note, table  # noqa: E402

SPEC_DIR = ROOT / "sweeps" / "findings"
RESULTS_DIR = ROOT / "benchmarks" / "findings"
#: The findings in the order of the issue (their numbers), by spec file name.
FINDINGS = ("ddim_eta", "schedule", "min_snr", "solvers", "objective", "guidance", "ema")
BUDGETS = ("short", "full", "quick")
FORMAT = "difflab-finding-run-v1"
#: Machine-side settings of --quick on top of the spec's quick budget (a tiny UNet on the CPU).
QUICK_OVERRIDES = [
    "backbone.base_channels=8",
    "backbone.channel_mult=[1,2]",
    "backbone.num_res_blocks=1",
    "data.batch_size=16",
    "data.val_batch_size=16",
    "trainer.val_check_interval=4",
    "trainer.limit_val_batches=1",
    "trainer.accelerator=cpu",
    "trainer.precision=32-true",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "sampler.num_steps=2",
    "~callbacks.sample_grid",
    "~callbacks.progress_bar",
    "lr_warmup_steps=0",
    "logger=csv",
]
#: Keys of a run's config that say nothing about the model or its scores (left out of the JSON).
VOLATILE = ("paths", "print_config", "resume", "ckpt_path", "run_name", "group", "tags", "notes", "finding")


# --------------------------------------------------------------------------- specs and runs
@dataclass
class Spec:
    """One finding's spec under one budget."""

    name: str
    number: int
    title: str
    paper: str
    published: str
    group: str
    params: dict[str, list[str]]  # key -> values (the grid; "seed" among them)
    evaluate: list[dict[str, Any]]
    settings: dict[str, Any]  # batch_size, bpd_n, bpd_batch_size, bpd_rtol, bpd_atol

    @property
    def seeds(self) -> list[int]:
        return [int(s) for s in self.params.get("seed", ["0"])]

    def arm_grid(self) -> list[dict[str, str]]:
        """Every arm of the grid: {key: value} without the seed, in the grid's order."""
        keys = [k for k in self.params if k != "seed"]
        return [dict(zip(keys, values)) for values in itertools.product(*(self.params[k] for k in keys))]


def _values(key: str, value: Any) -> list[str]:
    """The values of one sweeper parameter (``a,b,c`` or ``range(...)``), as override strings."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    text = str(value).lower() if isinstance(value, bool) else str(value)
    override = OverridesParser.create().parse_overrides([f"{key}={text}"])[0]
    if override.is_sweep_override():
        return [str(v) for v in override.sweep_string_iterator()]
    return [override.get_value_element_as_str()]


def load_spec(name: str, budget: str = "short") -> Spec:
    """``sweeps/findings/<name>.yaml`` with ``common.yaml``, under ``budget`` (short | full | quick)."""
    from omegaconf import OmegaConf

    path = SPEC_DIR / f"{name}.yaml"
    if not path.is_file():
        raise SystemExit(f"--finding {name}: no spec {path}; accepted: {', '.join(FINDINGS)}")
    if budget not in BUDGETS:
        raise ValueError(f"budget {budget!r}; accepted: {', '.join(BUDGETS)}")
    common = OmegaConf.to_container(OmegaConf.load(SPEC_DIR / "common.yaml").finding)
    raw = OmegaConf.load(path)
    own = OmegaConf.to_container(raw.finding)
    params = {str(k): v for k, v in OmegaConf.to_container(raw.hydra.sweeper.params).items()}
    settings = {"batch_size": 250, "bpd_n": 100, "bpd_batch_size": 100, "bpd_rtol": 1e-5, "bpd_atol": 1e-5}
    settings.update({k: v for k, v in common.items() if k not in BUDGETS})
    evaluate = own.get("evaluate") or []
    if budget != "short":
        for part in (common.get(budget) or {}, own.get(budget) or {}):
            params.update({str(k): v for k, v in (part.get("params") or {}).items()})
            settings.update({k: v for k, v in part.items() if k not in ("params", "evaluate")})
        if "evaluate" in (own.get(budget) or {}):
            evaluate = own[budget]["evaluate"]
        else:  # a short-budget sample count (`n`) does not carry over: the budget's own n holds
            evaluate = [{k: v for k, v in e.items() if k != "n"} for e in evaluate]
    return Spec(
        name=name, number=int(own["number"]), title=str(own["title"]), paper=str(own["paper"]),
        published=str(own["published"]), group=str(raw.group),
        params={k: _values(k, v) for k, v in params.items()}, evaluate=list(evaluate), settings=settings,
    )


def base_overrides(budget: str) -> list[str]:
    """The overrides every run of a budget starts from (after ``+findings=common``)."""
    out = [f"hydra.searchpath=[file://{SPEC_DIR.parent}]", "+findings=common"]
    if budget == "quick":
        out += QUICK_OVERRIDES
    return out


class Composer:
    """Composes run configs (cached) and drops arm overrides that equal the base config."""

    def __init__(self, budget: str) -> None:
        self.budget = budget
        self._cache: dict[tuple[str, ...], Any] = {}

    def compose(self, overrides: list[str]):
        key = tuple(overrides)
        if key not in self._cache:
            self._cache[key] = compose_train(base_overrides(self.budget) + list(overrides))
        return self._cache[key]

    def canonical(self, arm: dict[str, str], fixed: dict[str, str]) -> tuple[str, ...]:
        """The arm as sorted ``key=value`` overrides, without those the base config already has.

        ``fixed`` holds the budget's single-valued settings common to every finding (e.g.
        ``trainer.max_steps``); they are part of the base, so ``trainer.max_steps=1500`` in
        finding 1 is the default arm of findings 2-7.
        """
        from omegaconf import OmegaConf

        base_list = [f"{k}={v}" for k, v in fixed.items()]
        base = self.compose(base_list)
        kept = []
        for key, value in sorted(arm.items()):
            cfg = self.compose(base_list + [f"{key}={value}"])
            a, b = OmegaConf.select(cfg, key), OmegaConf.select(base, key)
            a = OmegaConf.to_container(a, resolve=True) if OmegaConf.is_config(a) else a
            b = OmegaConf.to_container(b, resolve=True) if OmegaConf.is_config(b) else b
            if a != b:
                kept.append(f"{key}={value}")
        return tuple(kept)


@dataclass
class Run:
    """One training run: an arm (canonical overrides) and a seed, under a budget."""

    budget: str
    arm: tuple[str, ...]
    seed: int
    fixed: dict[str, str]
    findings: list[str] = field(default_factory=list)
    evaluations: dict[str, dict[str, Any]] = field(default_factory=dict)  # label -> evaluation

    @property
    def slug(self) -> str:
        return ",".join(self.arm) if self.arm else "default"

    @property
    def group(self) -> str:
        if not self.arm:
            return "findings-default"
        return f"findings-{self.findings[0]}" if len(self.findings) == 1 else "findings-shared"

    def path(self, results: Path) -> Path:
        return results / self.budget / self.slug / f"seed{self.seed}.json"

    def overrides(self) -> list[str]:
        """The run's overrides after the base (what ``python train.py --config-dir sweeps`` takes)."""
        tags = ",".join(["findings", *(f"finding-{f}" for f in self.findings)])
        # the FID-against-step curve (every callbacks.fid.every_n_steps) only where a finding reads
        # it (fid_curve); other runs score at the end alone, which their evaluations reuse
        curve = [] if not self.evaluations or "fid_curve" in self.evaluations else ["callbacks.fid.every_n_steps=0"]
        return [*(f"{k}={v}" for k, v in self.fixed.items()), *self.arm, *curve, f"seed={self.seed}",
                f"group={self.group}", f"run_name='{self.slug}-seed{self.seed}'", f"tags=[{tags}]"]

    def command(self) -> str:
        extra = " ".join(QUICK_OVERRIDES) + " " if self.budget == "quick" else ""
        return "python train.py --config-dir sweeps +findings=common " + extra + " ".join(self.overrides())


def fixed_settings(budget: str) -> dict[str, str]:
    """The budget's settings shared by all findings: ``common.yaml``'s budget params but the seeds."""
    from omegaconf import OmegaConf

    if budget == "short":
        return {}
    common = OmegaConf.to_container(OmegaConf.load(SPEC_DIR / "common.yaml").finding)
    params = (common.get(budget) or {}).get("params") or {}
    out = {}
    for k, v in params.items():
        values = _values(k, v)
        if k != "seed" and len(values) == 1:
            out[str(k)] = values[0]
    return out


# --------------------------------------------------------------------------- evaluations
def _sampler_options(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """A sampler entry with list values, expanded into one option dict per combination."""
    node = dict(entry)
    keys = list(node)
    values = [v if isinstance(v, list) else [v] for v in node.values()]
    return [dict(zip(keys, combo)) for combo in itertools.product(*values)]


def build_sampler(options: dict[str, Any]):
    from difflab.samplers import SAMPLERS

    name = options.get("name")
    if name not in SAMPLERS:
        raise ValueError(f"sampler name {name!r} in a findings spec; accepted: {', '.join(SAMPLERS)}")
    return SAMPLERS[name](**{k: v for k, v in options.items() if k != "name"})


def sampler_label(options: dict[str, Any], num_timesteps: int = 1000) -> str:
    """The sampler's protocol part (``ddim10_eta0.2``; ``ddim10_noclip`` when x_0 is not clipped)."""
    return build_sampler(options).key_part(num_timesteps)


def expand_evaluations(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """label -> one concrete evaluation: ``{kind: fid|bpd|fid_curve, sampler, weights, w}``."""
    out: dict[str, dict[str, Any]] = {}
    for entry in entries:
        metric = entry.get("metric", "fid")
        if metric == "bpd":
            out["bpd"] = {"kind": "bpd"}
            continue
        if metric == "fid_curve":
            out["fid_curve"] = {"kind": "fid_curve"}
            continue
        if metric != "fid":
            raise ValueError(f"metric {metric!r} in a findings spec; accepted: fid, bpd, fid_curve")
        weights = entry.get("weights", "ema")
        scales = entry.get("conditioning.guidance_scale")
        n = entry.get("n")  # this evaluation's sample count; default: the run's callbacks.fid.n
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 2):
            raise ValueError(f"n {n!r} in a findings spec: an integer >= 2 (samples per score)")
        extra = {} if n is None else {"n": int(n)}
        feature = entry.get("feature", "digits")  # another feature space: its label ends in _<feature>
        if feature != "digits":
            from difflab.metrics.features import available_feature_extractors

            if feature not in available_feature_extractors():
                raise ValueError(f"feature {feature!r} in a findings spec; accepted: {', '.join(available_feature_extractors())}")
            if scales is not None:
                raise ValueError("a guidance evaluation scores class accuracy with the digits network: leave feature unset")
            extra["feature"] = feature
        for options in _sampler_options(entry["sampler"]):
            for w in weights if isinstance(weights, list) else [weights]:
                label = sampler_label(options) + _weights_suffix(w) + ("" if feature == "digits" else f"_{feature}")
                if scales is None:
                    out[label] = {"kind": "fid", "sampler": options, "weights": w, **extra}
                else:
                    for s in scales if isinstance(scales, list) else [scales]:
                        out[f"{label}_w{float(s):g}"] = {"kind": "guidance", "sampler": options, "weights": w, "w": float(s),
                                                         **extra}
    return out


def _weights_suffix(weights: Any) -> str:
    """A label's weights part: "" (the run's EMA), "_raw", or "_<name>" for a further EMA the run kept
    (``ema:<name>``, a named EMA callback, e.g. ``ema:decay9999``)."""
    w = str(weights)
    if w == "ema":
        return ""
    if w == "raw":
        return "_raw"
    if w.startswith("ema:") and len(w) > 4:
        return f"_{w[4:]}"
    raise ValueError(f"weights {weights!r} in a findings spec; accepted: ema, raw, ema:<name> (a named EMA callback)")


def plan(names: list[str], budget: str) -> tuple[list[Run], dict[str, Spec], dict[str, dict[tuple[str, ...], str]]]:
    """Every run the findings need (shared arms once), the specs, and per finding arm -> slug."""
    fixed = fixed_settings(budget)
    composer = Composer(budget)
    specs = {n: load_spec(n, budget) for n in FINDINGS}
    runs: dict[tuple[tuple[str, ...], int], Run] = {}
    arms: dict[str, dict[tuple[str, ...], str]] = {}
    for name in FINDINGS:  # all findings, so a shared run gets every finding's evaluations
        spec = specs[name]
        evals = expand_evaluations(spec.evaluate)
        arms[name] = {}
        for arm in spec.arm_grid():
            canon = composer.canonical(arm, fixed)
            arms[name][tuple(f"{k}={v}" for k, v in arm.items())] = ",".join(canon) if canon else "default"
            for seed in spec.seeds:
                run = runs.setdefault((canon, seed), Run(budget, canon, seed, fixed))
                if name not in run.findings:
                    run.findings.append(name)
                run.evaluations.update(evals)
    # one label, one protocol: a label several findings ask for is scored at the same n on every
    # arm (the run's own n when a finding leaves n unset, else the largest n asked), so that the
    # order of the findings never decides it and a cell means the same thing on every arm
    chosen = {}
    for spec in specs.values():
        for label, ev in expand_evaluations(spec.evaluate).items():
            if label not in chosen or _more_samples(ev, chosen[label]):
                chosen[label] = ev
    for run in runs.values():
        run.evaluations = {label: chosen[label] for label in run.evaluations}
    selected = [r for r in runs.values() if any(f in names for f in r.findings)]
    return selected, specs, arms


def _more_samples(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether evaluation ``a`` draws more samples than ``b`` (no ``n``: the run's own, taken as the most)."""
    if "n" not in b:
        return False
    return "n" not in a or int(a["n"]) > int(b["n"])



def run_cost(run: Run, composer: Composer) -> dict[str, int]:
    """What a run costs before any figure: its training steps, and the network evaluations
    (one image through the network, counted per image) of its FID callback and of its
    evaluations; bits/dim (an adaptive ODE solve) is counted apart, as the number of val digits.
    The budget of a piece: steps x (time of a step) + image NFEs x (time of one image's forward)."""
    from omegaconf import OmegaConf

    from difflab.build import build_sampler as build_run_sampler

    cfg = composer.compose(run.overrides())
    steps = int(cfg.trainer.max_steps)
    T = int(cfg.schedule.num_timesteps)
    n = int(cfg.callbacks.fid.n)
    every = int(OmegaConf.select(cfg, "callbacks.fid.every_n_steps") or 0)
    scores = steps // every if every > 0 else 0  # the FID callback's scores: every N steps, and at the end
    scores += int(bool(OmegaConf.select(cfg, "callbacks.fid.at_end", default=True)) and (every <= 0 or steps % every != 0))
    callback_nfe = run_nfe = build_run_sampler(cfg.sampler, T).nfe(T)
    fid_node = OmegaConf.select(cfg, "callbacks.fid.sampler")
    if fid_node is not None and OmegaConf.select(fid_node, "_target_") is not None:
        callback_nfe = build_run_sampler(fid_node, T).nfe(T)
    images = sum(int(ev.get("n", n)) * build_sampler(ev["sampler"]).nfe(T) * (2 if ev["kind"] == "guidance" else 1)
                 for ev in run.evaluations.values() if ev["kind"] in ("fid", "guidance"))  # a guided step: 2 calls
    settings = cfg.get("finding") or {}
    return {"train_steps": steps, "callback_image_nfe": scores * n * callback_nfe,
            "evaluation_image_nfe": images,
            "bpd_images": int(settings.get("bpd_n", 0)) if "bpd" in run.evaluations else 0, "run_nfe": run_nfe}


#: What makes two runs the same experiment: a result whose recorded config differs from the run's
#: config of today in one of these (e.g. trainer.precision, which follows the machine unless set)
#: is stale: it is not counted, and the suite runs it again. Keys that only say where or how fast
#: (paths, loader workers, logging, speed switches that keep the numbers) are not part of it.
IDENTITY_KEYS = ("backbone", "schedule", "objective", "sampler", "optimizer", "lr_scheduler", "conditioning",
                 "first_stage", "data", "seed", "lr_warmup_steps", "trainer.max_steps", "trainer.precision",
                 "trainer.accumulate_grad_batches", "trainer.gradient_clip_val", "callbacks.ema", "callbacks.fid.n",
                 "callbacks.fid.feature")
_NOT_IDENTITY = ("num_workers", "pin_memory", "persistent_workers", "prefetch_factor")


def identity(config: dict[str, Any]) -> dict[str, Any]:
    """The :data:`IDENTITY_KEYS` of a plain config dict (dotted keys; a missing key reads None),
    without data keys that hold paths or loader settings."""
    out: dict[str, Any] = {}
    for key in IDENTITY_KEYS:
        node: Any = config
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if key == "data" and isinstance(node, dict):
            node = {k: v for k, v in node.items()
                    if k not in _NOT_IDENTITY and not k.endswith(("_dir", "root", "path"))}
        out[key] = node
    return out


def identity_diff(recorded: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """``key: recorded -> expected`` for each identity key on which a result's config and the
    run's config of today differ (the first differing leaf of a group, e.g. backbone.base_channels).
    A leaf absent on one side reads null: an option added to a schema since, whose null default
    keeps the old behaviour (DDIM's use_clipped_model_output), leaves the result current."""
    def leaves(x: Any, prefix: str) -> dict[str, Any]:
        if isinstance(x, dict):
            out: dict[str, Any] = {}
            for k, v in x.items():
                out.update(leaves(v, f"{prefix}.{k}"))
            return out or {prefix: {}}
        return {prefix: x}

    a, b = identity(recorded), identity(expected)
    out = []
    for key in IDENTITY_KEYS:
        if a[key] != b[key]:
            la, lb = leaves(a[key], key), leaves(b[key], key)
            diff = [k for k in sorted(set(la) | set(lb)) if la.get(k) != lb.get(k)]
            if diff:  # else only a key null on one side and absent on the other: an option added since, at null
                out.append(f"{diff[0]}: {la.get(diff[0])!r} -> {lb.get(diff[0])!r}")
    return out


def stored_config(cfg: Any) -> dict[str, Any]:
    """The plain, resolved config a run of composed config ``cfg`` stores in its checkpoint and
    result (with the class count conditioning=class writes into the backbone)."""
    import copy

    from difflab.build import build_conditioning, settle_num_classes
    from difflab.utils.hydra import to_plain_dict

    cfg = copy.deepcopy(cfg)
    settle_num_classes(cfg, build_conditioning(cfg))
    return to_plain_dict(cfg)


def expected_config(run: Run, composer: Composer) -> dict[str, Any]:
    """The run's config as this checkout composes it on this machine and the run stores it."""
    return stored_config(composer.compose(run.overrides()))


def read_result(run: Run, results: Path) -> dict[str, Any] | None:
    """The run's committed result record, or None when it has none."""
    path = run.path(results)
    return json.loads(path.read_text()) if path.is_file() else None


def stale_reason(run: Run, record: dict[str, Any] | None, composer: Composer) -> list[str]:
    """Why the run's result record is not the run of today ([] when it is, or there is none)."""
    if not record or not record.get("config"):  # nothing to check against
        return []
    return identity_diff(record["config"], expected_config(run, composer))


@dataclass(frozen=True)
class Fix:
    """A fix of the code that changed some evaluations' figures.

    A label's figure in a result predates the fix when the commit that scored it (the label's
    ``rescored`` entry, else the record's ``commit``) does not contain ``commit``; where git
    cannot tell (no such commit here), when it was scored before ``date``. Such a figure is set
    aside: the label counts as missing, the suite scores it again, and the report names the fix.
    """

    commit: str
    date: str  # ISO 8601, UTC
    what: str
    applies: Callable[[dict[str, Any], dict[str, Any]], bool]  # (stored config, evaluation) -> the fix changed it


def _sigma_sampler_on_a_floored_schedule(config: dict[str, Any], ev: dict[str, Any]) -> bool:
    """An evaluation by a sigma sampler (Euler, Heun, DPM-Solver, UniPC) under a schedule whose
    alpha-bar_{T-1} lies in (0, 2**-24), where the old sigma table was floored (cosine's 2.4e-9)."""
    from difflab.samplers import SAMPLERS
    from difflab.samplers.base import MIN_ALPHA_BAR, SigmaSampler

    cls = SAMPLERS.get(str((ev.get("sampler") or {}).get("name")))
    if cls is None or not issubclass(cls, SigmaSampler) or not config.get("schedule"):
        return False
    last = _terminal_alpha_bar(json.dumps(config["schedule"], sort_keys=True))
    return 0.0 < last < MIN_ALPHA_BAR


@functools.lru_cache(maxsize=None)
def _terminal_alpha_bar(schedule: str) -> float:
    import hydra

    return float(hydra.utils.instantiate(json.loads(schedule)).alphas_cumprod[-1])


#: The fixes that set figures aside (see :class:`Fix`), oldest first.
FIXES: tuple[Fix, ...] = (
    Fix("7e75329", "2026-12-04T01:56:30Z",
        "the sigma samplers' table floored alpha-bar at 2^-24, so their first step called the model at t = T - 1 "
        "with sigma 4096 instead of the cosine schedule's 2.03e4 (x_0 estimate 5x shrunk)",
        _sigma_sampler_on_a_floored_schedule),
)


def _contains(commit: str | None, fix: str) -> bool | None:
    """Whether ``commit`` contains ``fix`` (None: git cannot tell here)."""
    if not commit:
        return None
    try:
        r = subprocess.run(["git", "merge-base", "--is-ancestor", fix, commit], cwd=ROOT, capture_output=True)
    except OSError:
        return None
    return {0: True, 1: False}.get(r.returncode)


def superseded_labels(record: dict[str, Any] | None, evaluations: dict[str, dict[str, Any]]) -> dict[str, Fix]:
    """label -> the fix that set its figure in ``record`` aside (the labels a fix changed that
    were scored before it)."""
    if not record or not record.get("config"):
        return {}
    out: dict[str, Fix] = {}
    for label, ev in evaluations.items():
        if label not in record.get("metrics", {}):
            continue
        when = (record.get("rescored") or {}).get(label) or record
        for fix in FIXES:
            if not fix.applies(record["config"], ev):
                continue
            has = _contains(when.get("commit"), fix.commit)
            if has is False or (has is None and str(when.get("finished_at") or "") < fix.date):
                out[label] = fix
    return out


def missing_labels(run: Run, record: dict[str, Any] | None) -> list[str] | None:
    """None when the run has no result yet, else the evaluations its result lacks (or holds
    from before a fix that changed them: :func:`superseded_labels`)."""
    if record is None:
        return None
    old = superseded_labels(record, run.evaluations)
    return [label for label in run.evaluations if label not in record.get("metrics", {}) or label in old]


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def evaluate_run(run: Run, run_dir: Path, cache_dir: Path, device: str, settings: dict[str, Any],
                 labels: list[str] | None = None) -> tuple[dict, dict]:
    """Score the run's checkpoint for each of its evaluations (or those of ``labels``): (metrics by label, floor)."""
    import hydra
    import torch

    from difflab.evaluation import Evaluator, eval_mode, evaluate
    from difflab.utils.checkpoint import load_model

    ckpt = run_dir / "checkpoints" / "last.ckpt"
    models: dict[str, Any] = {}

    def model(weights: str):
        if weights not in models:  # ema | raw | ema:<name> (a further EMA of the run)
            named = weights[4:] if weights.startswith("ema:") else None
            models[weights] = load_model(ckpt, use_ema=weights != "raw", ema=named)
            models[weights].backbone.to(device)
            models[weights].process.to(device)
        return models[weights]

    config = model("ema").config
    n = int(config["callbacks"]["fid"]["n"])
    datamodule = hydra.utils.instantiate(config["data"])
    evaluators: dict[int, Any] = {}

    def evaluator_of(count: int, feature: str = "digits"):
        if (count, feature) not in evaluators:
            evaluators[(count, feature)] = Evaluator(datamodule, feature, ("fid", "kid"), count, str(cache_dir), device=device)
        return evaluators[(count, feature)]

    batch = int(settings["batch_size"])
    metrics: dict[str, Any] = {}
    for label, ev in run.evaluations.items():
        if labels is not None and label not in labels:
            continue
        t0 = time.perf_counter()
        if ev["kind"] == "fid_curve":
            points = []
            for f in sorted((run_dir / "fid").glob("step_*.json")):
                rec = json.loads(f.read_text())
                fid_key = next((k for k in rec["scores"] if k.startswith("fid/")), None)
                kid_key = next((k for k in rec["scores"] if k.startswith("kid/")), None)
                points.append({"step": int(rec["step"]), "fid": rec["scores"].get(fid_key),
                               "kid": rec["scores"].get(kid_key), "key": fid_key})
            if not points:
                raise RuntimeError(f"{run_dir}/fid holds no FID callback results; the FID callback must run (callbacks.fid)")
            metrics[label] = {"points": points}
            continue
        if ev["kind"] == "bpd":
            from difflab.evaluation.likelihood import bits_per_dim

            m = model("ema")
            x0 = datamodule.real_images("val", int(settings["bpd_n"]), seed=0)
            with eval_mode(m.backbone):
                out = bits_per_dim(m.backbone, m.process, m.objective.target, x0, batch_size=int(settings["bpd_batch_size"]),
                                   rtol=float(settings["bpd_rtol"]), atol=float(settings["bpd_atol"]))
            metrics[label] = {"bpd": out["mean"], "bpd_std": out["std"], "bpd_stderr": out["stderr"], "n": out["n"],
                              "nfe": out["nfe"], "key": f"nll/bpd/{out['key']}", "seconds": time.perf_counter() - t0}
            continue
        m = model(ev["weights"])
        sampler = build_sampler(ev["sampler"])
        ev_n = int(ev.get("n", n))
        feature = ev.get("feature", "digits")
        if ev["kind"] == "fid" and ev["weights"] == "ema" and feature == "digits":
            again = _callback_score(run_dir, m.global_step, repr(sampler), ev_n, run.seed, batch)
            if again is not None:  # the FID callback drew and scored these very samples at the end
                metrics[label] = {**again, "sampler": repr(sampler), "weights": "ema", "seconds": 0.0}
                note(f"  {label}: the FID callback's score at step {m.global_step} (the same samples), not drawn again")
                continue
        with eval_mode(m.backbone):
            if ev["kind"] == "guidance":
                from difflab.evaluation.guidance_sweep import guidance_sweep

                num_classes = getattr(m.backbone, "num_classes", None)
                if num_classes is None:
                    raise RuntimeError(f"{label}: the checkpoint is unconditional; guidance needs conditioning=class")
                row = guidance_sweep(m.backbone, m.process, sampler, m.objective.target, evaluator_of(ev_n), [ev["w"]],
                                     num_classes=int(num_classes), seed=run.seed, batch_size=batch, device=device)[0]
                metrics[label] = {"fid": row["fid"], "kid": row["kid"], "kid_std": row["kid_std"], "acc": row["acc"],
                                  "clamped": row["clamped"], "overshoot": row["overshoot"],
                                  "nfe": row["nfe"], "key": row["fid_key"], "w": ev["w"], "n": ev_n, "sampler": repr(sampler),
                                  "weights": ev["weights"], "seconds": time.perf_counter() - t0}
                continue
            res = evaluate(m.backbone, m.process, sampler, m.objective.target, evaluator_of(ev_n, feature), run.seed, batch,
                           device)
        fid_key = next(k for k in res.scores if k.startswith("fid/"))
        kid_key = next(k for k in res.scores if k.startswith("kid/"))
        metrics[label] = {"fid": res.scores[fid_key], "kid": res.scores[kid_key], "kid_std": res.values.get("kid_std"),
                          "clamped": res.values.get("clamped"), "overshoot": res.values.get("overshoot"),
                          "nfe": res.protocol["nfe"], "key": fid_key, "n": ev_n, "sampler": repr(sampler), "weights": ev["weights"],
                          "feature": feature, "seconds": time.perf_counter() - t0}
    evaluator_of(n)  # the run's n has its floor even when every evaluation set its own n
    floor: dict[str, float] = {}
    for other in evaluators.values():  # the floor at each n an evaluation used (its key names n)
        floor.update(other.floor() or {})
    del models
    if device == "cuda":
        torch.cuda.empty_cache()
    return metrics, floor


def _callback_score(run_dir: Path, step: int, sampler_config: str, n: int, seed: int, batch: int) -> dict | None:
    """The FID callback's end-of-run score (``<run dir>/fid/step_*.json``) when it is the very
    evaluation asked for: the same step, sampler (its repr), n, seed and batch, without guidance
    (the callback samples with the EMA weights when there are any, as ``load_model`` does); else
    None. Sample i is drawn from (seed, i) on both paths, so the figure would be the same."""
    if step is None:
        return None
    path = run_dir / "fid" / f"step_{int(step):07d}.json"
    if not path.is_file():
        return None
    rec = json.loads(path.read_text())
    proto = rec.get("protocol") or {}
    if (proto.get("sampler_config") != sampler_config or proto.get("n") != n or proto.get("seed") != seed
            or proto.get("batch_size") != batch or proto.get("guidance") is not None or proto.get("labels") is not None
            or proto.get("latent_shape") is not None):
        return None
    scores = rec.get("scores") or {}
    fid_key = next((k for k in scores if k.startswith("fid/")), None)
    kid_key = next((k for k in scores if k.startswith("kid/")), None)
    if fid_key is None:
        return None
    return {"fid": scores[fid_key], "kid": scores.get(kid_key), "kid_std": None, "nfe": proto.get("nfe"), "key": fid_key,
            "n": n, "from": f"callbacks.fid, step {int(step)}"}


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def execute(run: Run, results: Path, work: Path, cache_dir: Path, specs: dict[str, Spec], keep: bool) -> Path:
    """Train, score and record one run; returns the path of its JSON."""
    from omegaconf import OmegaConf

    from difflab.train import run as train
    from difflab.utils.hydra import to_plain_dict

    run_dir = work / run.budget / run.slug / f"seed{run.seed}"
    settings = dict(specs[run.findings[0]].settings)
    t0 = time.perf_counter()
    cfg = compose_train(base_overrides(run.budget) + run.overrides(), output_dir=str(run_dir))
    set_aside_other_experiment(run_dir, cfg)
    train(cfg)  # resume=auto: a run dir left by an interrupted piece goes on from its last checkpoint
    t_train = time.perf_counter() - t0
    finished = run_dir / "finished.yaml"
    if not finished.is_file():
        raise RuntimeError(f"{run.slug} seed {run.seed}: the fit did not reach trainer.max_steps (no {finished})")
    marker = OmegaConf.to_container(OmegaConf.load(finished))
    old = read_result(run, results)
    redo = missing_labels(run, old)
    if old is not None and redo and len(redo) < len(run.evaluations) and not stale_reason(run, old, Composer(run.budget)):
        path = rescore(run, old, redo, run_dir, cache_dir, settings, marker, results)
        if path is not None:
            if not keep:
                shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
            return path
    metrics, floor = evaluate_run(run, run_dir, cache_dir, _device(), settings)
    config = {k: v for k, v in to_plain_dict(cfg).items() if k not in VOLATILE}
    logger = ",".join(str(k) for k in (cfg.get("logger") or {}))
    record = {
        "format": FORMAT,
        "budget": run.budget,
        "arm": run.slug,
        "overrides": list(run.arm),
        "seed": run.seed,
        "global_step": marker.get("global_step"),
        "findings": run.findings,
        "wandb": {"project": OmegaConf.select(cfg, "logger.wandb.project", default=None), "group": run.group,
                  "run_id": marker.get("wandb_run_id"), "name": f"{run.slug}-seed{run.seed}",
                  "logger": logger or None},
        "command": run.command(),
        "metrics": metrics,
        "floor": floor,
        "config": config,
        "seconds": {"train": round(t_train, 1), "evaluate": round(time.perf_counter() - t0 - t_train, 1)},
        "machine": machine(),
        "commit": _git_commit(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    path = run.path(results)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)
    if not keep:  # the checkpoints go; the rest (wandb/ for `wandb sync`, fid/, logs) stays in the work dir
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    return path


def witness_label(run: Run, record: dict[str, Any], redo: list[str]) -> str | None:
    """A label the record holds and keeps, to score again beside ``redo``: the FID callback's end
    score where the record took one (free: the retrained run scores it anyway), else the
    cheapest FID evaluation (fewest network calls x samples). None when there is none."""
    kept = [lab for lab, ev in run.evaluations.items()
            if lab not in redo and ev["kind"] == "fid" and (record.get("metrics") or {}).get(lab, {}).get("fid") is not None]
    if not kept:
        return None
    free = [lab for lab in kept if str(record["metrics"][lab].get("from", "")).startswith("callbacks.fid")]
    if free:
        return free[0]
    return min(kept, key=lambda lab: (record["metrics"][lab].get("nfe") or math.inf) * (record["metrics"][lab].get("n") or 1))


def rescore(run: Run, record: dict[str, Any], redo: list[str], run_dir: Path, cache_dir: Path,
            settings: dict[str, Any], marker: dict[str, Any], results: Path) -> Path | None:
    """Score only the labels ``redo`` on the run's checkpoint (trained again when its checkpoint
    is gone) and merge them into ``record``, when the checkpoint is the one the record was scored
    from: a label the record keeps (:func:`witness_label`) must score the same figure again (to
    1e-6). Returns the path written, or None when the weights differ (then every label is scored
    afresh). Each merged label gets a ``rescored`` entry: commit, time, W&B run id, the witness."""
    witness = witness_label(run, record, redo)
    if witness is None:
        return None
    note(f"  scoring again {', '.join(redo)} (witness {witness}: the same weights must give its recorded figure)")
    metrics, floor = evaluate_run(run, run_dir, cache_dir, _device(), settings, labels=[*redo, witness])
    before, after = float(record["metrics"][witness]["fid"]), float(metrics[witness]["fid"])
    if not math.isclose(before, after, rel_tol=1e-6, abs_tol=1e-9):
        note(f"  the retrained checkpoint scores {witness} FID {after:.6g}, the record {before:.6g}: other weights; "
             "scoring every label afresh")
        return None
    stamp = {"commit": _git_commit(), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
             "wandb_run_id": marker.get("wandb_run_id"), "witness": witness, "witness_fid": after,
             "why": sorted({fix.commit for fix in superseded_labels(record, run.evaluations).values()})}
    record = json.loads(json.dumps(record))
    record["metrics"].update({lab: metrics[lab] for lab in redo})
    record["floor"] = {**(record.get("floor") or {}), **floor}
    record["rescored"] = {**(record.get("rescored") or {}), **{lab: dict(stamp) for lab in redo}}
    path = run.path(results)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)
    return path


def set_aside_other_experiment(run_dir: Path, cfg: Any) -> Path | None:
    """A run dir whose checkpoints were trained as another experiment (e.g. in bf16 before the
    suite pinned fp32) must not be resumed: it is renamed ``<run dir>.stale-<time>`` (nothing
    is deleted) and the run starts afresh. ``cfg``: the run's composed config, compared as the
    run stores it (:func:`stored_config`). Returns where it went, or None."""
    from difflab.utils.checkpoint import checkpoint_config, load_checkpoint

    config = stored_config(cfg)

    ckpts = [p for p in [run_dir / "checkpoints" / "last.ckpt", *run_dir.glob("hpc_ckpt_*.ckpt")] if p.is_file()]
    for ckpt in ckpts:
        why = identity_diff(checkpoint_config(load_checkpoint(ckpt), str(ckpt)), config)
        if why:
            aside = run_dir.with_name(f"{run_dir.name}.stale-{time.strftime('%Y%m%d-%H%M%S')}")
            run_dir.rename(aside)
            note(f"{run_dir} holds another experiment ({'; '.join(why)}): moved to {aside}; starting afresh")
            return aside
    return None


# --------------------------------------------------------------------------- statistics
def stats(xs: list[float]) -> tuple[float, float, int]:
    """(mean, sample std, n) of the finite values; std is nan for one value."""
    xs = [float(x) for x in xs if x is not None and math.isfinite(float(x))]
    if not xs:
        return math.nan, math.nan, 0
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else math.nan), len(xs)


def cell(values: dict[int, float], seeds: list[int], digits: int = 2, scale: float = 1.0) -> str:
    """``mean ± std`` of ``values`` (by seed) over the seeds (``(k seeds)`` after it when fewer
    than the ``seeds`` planned hold one), "not finite" when the runs scored only NaN or inf, or
    "not run yet"."""
    present = [x * scale for x in values.values() if x is not None]
    m, s, n = stats(present)
    if n == 0:
        return f"not finite ({len(present)} of {len(seeds)} seeds)" if present else "not run yet"
    if n == 1:
        return f"{m:.{digits}f} (1 seed)"
    return f"{m:.{digits}f} ± {s:.{digits}f}" + (f" ({n} seeds)" if n < len(seeds) else "")


def t_critical(df: float) -> float:
    """The two-sided 5% critical value of Student's t with ``df`` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(0.975, df))


@dataclass
class Claim:
    """The paper says ``low`` is lower than ``high`` (FID, bits/dim; accuracy: pass them swapped)."""

    text: str
    low: dict[int, float]   # seed -> value
    high: dict[int, float]
    paired: bool
    directed: bool = True  # False: a difference reported without a published direction
    n_low: dict[int, int] = field(default_factory=dict)  # seed -> samples per score, where recorded
    n_high: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        def finite(d: dict[int, float]) -> dict[int, float]:
            return {k: float(v) for k, v in d.items() if v is not None and math.isfinite(float(v))}

        self.low, self.high = finite(self.low), finite(self.high)

    def _mixed_n(self) -> str:
        """Why the scores are drawn at different sample counts ("" when they are not, or no n is
        recorded on either side): paired, seed by seed; Welch's, one n over both sides."""
        if not self.n_low and not self.n_high:
            return ""
        show = lambda n: "not recorded" if n is None else f"{n:,d}"  # noqa: E731
        if self.paired:
            bad = [(sd, self.n_low.get(sd), self.n_high.get(sd)) for sd in sorted(set(self.low) & set(self.high))
                   if self.n_low.get(sd) != self.n_high.get(sd)]
            return "; ".join(f"seed {sd} scored at n = {show(b)} against n = {show(a)}" for sd, a, b in bad)
        ns = {self.n_low.get(sd) for sd in self.low} | {self.n_high.get(sd) for sd in self.high}
        if len(ns) < 2:
            return ""
        return "scored at n = " + ", ".join(show(n) for n in sorted(ns, key=lambda n: -1 if n is None else n))

    def ttest(self) -> tuple[str, float, float, float, str]:
        """(outcome, difference high - low, its standard error, the 5% two-sided critical value,
        how it was tested): a t-test paired over seeds, or Welch's. The outcome is "agrees",
        "contradicts" or "unclear"; "missing" (the last item then says why, the numbers are nan)
        when a side has no scores, too few seeds, or scores at different n."""
        nan = math.nan
        if not self.low and not self.high:
            return "missing", nan, nan, nan, "not run yet"
        mixed = self._mixed_n()
        if mixed:  # FID's bias falls as n grows: such scores are not comparable
            return "missing", nan, nan, nan, f"not comparable ({mixed})"
        if self.paired:
            seeds = sorted(set(self.low) & set(self.high))
            diffs = [self.high[s] - self.low[s] for s in seeds]
            if len(diffs) < 2:
                return "missing", nan, nan, nan, "fewer than 2 seeds"
            d, sd, k = stats(diffs)
            se, df = sd / math.sqrt(k), k - 1
            how = f"paired over {k} seeds"
        else:
            a, b = list(self.low.values()), list(self.high.values())
            if len(a) < 2 or len(b) < 2:
                return "missing", nan, nan, nan, "fewer than 2 seeds"
            (ma, sa, na), (mb, sb, nb) = stats(a), stats(b)
            va, vb = sa**2 / na, sb**2 / nb
            d, se = mb - ma, math.sqrt(va + vb)
            df = (va + vb) ** 2 / (va**2 / (na - 1) + vb**2 / (nb - 1)) if va + vb > 0 else na + nb - 2  # Welch-Satterthwaite
            how = f"Welch, {na} and {nb} seeds, df {df:.3g}"
        crit = t_critical(df)
        outcome = "agrees" if d > crit * se else "contradicts" if d < -crit * se else "unclear"
        return outcome, d, se, crit, how

    def test(self) -> tuple[str, str]:
        """("agrees" | "contradicts" | "unclear" | "missing", the figure behind it): a two-sided
        t-test at 5% on the difference high - low (paired over seeds, or Welch's)."""
        outcome, d, se, crit, how = self.ttest()
        if outcome == "missing":
            return outcome, f"{self.text}: {how}"
        if self.directed:
            word = {"agrees": "holds", "contradicts": "reversed", "unclear": "not significant"}[outcome]
        else:
            word = {"agrees": "positive", "contradicts": "negative", "unclear": "not significant"}[outcome]
        return outcome, (f"{self.text}: difference {d:+.3g} ± {se:.2g} SE ({how}; 5% two-sided needs {crit:.3g} SE), "
                         f"{word}")


def verdict(claims: list[Claim], done: int, total: int, partial: int = 0) -> tuple[str, list[str]]:
    """``partial``: runs with a result that lacks some of the finding's figures (added to the
    finding later, or set aside by a fix) and waits to be scored again."""
    if done == 0 and not partial:
        return "not run yet", [f"0 of {total} runs have results"]
    if done < total and partial:
        return "pending", [f"{done} of {total} runs have every figure of this finding, {partial} "
                           f"{'has a result that lacks' if partial == 1 else 'have results that lack'} some (to be "
                           "scored again: `--arm ARM --seed SEED`); the verdict waits for the rest"]
    if done < total:
        return "pending", [f"{done} of {total} runs have results; the verdict waits for the rest"]
    assert all(c.directed for c in claims), "a claim without a published direction belongs in the notes"
    tested = [c.test() for c in claims]
    outcomes = [o for o, _ in tested]
    lines = [line for _, line in tested]
    if "contradicts" in outcomes:  # one significant reversal is enough, whatever else is missing
        return "not reproduced", lines
    if not claims or "missing" in outcomes:
        return "inconclusive", lines or ["no claim could be tested"]
    if all(o == "agrees" for o in outcomes):
        return "reproduced", lines
    return "inconclusive", lines


# --------------------------------------------------------------------------- the report
class Results:
    """The JSON results of one budget, by arm slug and seed."""

    def __init__(self, results: Path, budget: str, expected: dict[tuple[str, int], dict] | None = None,
                 evaluations: dict[tuple[str, int], dict[str, dict]] | None = None) -> None:
        """``expected``: (arm, seed) -> the run's config of today; a record that differs from it in
        an identity key goes to ``stale`` (with the reasons) instead of ``by``. ``evaluations``:
        (arm, seed) -> the run's evaluations; a figure scored before a fix that changed it
        (:func:`superseded_labels`) is left out of ``by`` and listed in ``superseded``."""
        self.by: dict[tuple[str, int], dict] = {}
        self.stale: dict[tuple[str, int], list[str]] = {}
        self.superseded: dict[tuple[str, int], dict[str, Fix]] = {}
        for path in sorted((results / budget).glob("*/seed*.json")):
            rec = json.loads(path.read_text())
            if rec.get("format") != FORMAT:
                continue
            key = (rec["arm"], int(rec["seed"]))
            check = expected and key in expected and rec.get("config")  # a record without its config is taken as is
            why = identity_diff(rec["config"], expected[key]) if check else []
            if why:
                self.stale[key] = why
                continue
            old = superseded_labels(rec, (evaluations or {}).get(key, {}))
            if old:
                self.superseded[key] = old
                rec = {**rec, "metrics": {k: v for k, v in rec["metrics"].items() if k not in old}}
            self.by[key] = rec

    def values(self, arm: str, seeds: list[int], label: str, metric: str = "fid") -> dict[int, float]:
        out = {}
        for s in seeds:
            m = (self.by.get((arm, s)) or {}).get("metrics", {}).get(label)
            if m is not None and m.get(metric) is not None:
                out[s] = float(m[metric])
        return out

    def ns(self, arm: str, seeds: list[int], label: str) -> dict[int, int]:
        """seed -> the number of samples behind a score (where the record says)."""
        out = {}
        for s in seeds:
            m = (self.by.get((arm, s)) or {}).get("metrics", {}).get(label)
            if m is not None and m.get("n") is not None:
                out[s] = int(m["n"])
        return out

    def claim(self, text: str, low: tuple[str, str], high: tuple[str, str], seeds: list[int], paired: bool,
              directed: bool = True, metric: str = "fid") -> Claim:
        """A :class:`Claim` on two (arm, label) scores, with their sample counts, so that scores
        at different n are never compared."""
        return Claim(text, self.values(low[0], seeds, low[1], metric), self.values(high[0], seeds, high[1], metric),
                     paired, directed, self.ns(low[0], seeds, low[1]), self.ns(high[0], seeds, high[1]))

    def curve(self, arm: str, seeds: list[int]) -> dict[int, dict[int, float]]:
        """step -> seed -> FID, from the runs' FID-callback curves."""
        out: dict[int, dict[int, float]] = {}
        for s in seeds:
            m = (self.by.get((arm, s)) or {}).get("metrics", {}).get("fid_curve")
            for p in (m or {}).get("points", []):
                if p.get("fid") is not None:
                    out.setdefault(int(p["step"]), {})[s] = float(p["fid"])
        return out

    def groups(self, arm: str, seeds: list[int]) -> list[str]:
        return sorted({r["wandb"]["group"] for (a, s), r in self.by.items() if a == arm and s in seeds})

    def done(self, arm: str, seeds: list[int], labels: Any = ()) -> int:
        """The runs of ``arm`` with a result that holds every one of ``labels``, none of them set
        aside by a fix (a label a finding added later is missing until the run is scored again)."""
        return sum((arm, s) in self.by and set(labels) <= set(self.by[(arm, s)].get("metrics") or {})
                   and not set(labels) & set(self.superseded.get((arm, s), {})) for s in seeds)


@dataclass
class Section:
    """What a finding's report holds: a table, plot panels, claims, extra lines."""

    header: list[str]
    rows: list[list[str]]
    panels: list[tuple[str, str, str, dict[str, tuple[list, list[dict[int, float]]]]]]  # title, xlabel, ylabel, series
    claims: list[Claim]
    notes: list[str] = field(default_factory=list)


def _labels(spec: Spec) -> dict[str, dict[str, Any]]:
    return expand_evaluations(spec.evaluate)


def _sampler_rows(spec: Spec) -> list[tuple[str, dict[str, Any]]]:
    return [(label, ev) for label, ev in _labels(spec).items() if ev["kind"] == "fid"]


def section_ddim_eta(spec: Spec, res: Results, arms: dict) -> Section:
    seeds = spec.seeds
    every = _sampler_rows(spec)
    evs = [(lab, ev) for lab, ev in every if ev.get("feature", "digits") == "digits"]
    other = [(lab, ev) for lab, ev in every if ev.get("feature", "digits") != "digits"]
    etas = sorted({float(ev["sampler"]["eta"]) for _, ev in evs})
    steps = sorted({int(ev["sampler"]["num_steps"]) for _, ev in evs})
    clips = [c for c in (True, False) if any(bool(ev["sampler"].get("clip_sample", True)) == c for _, ev in evs)]
    lengths = [(dict(x.split("=", 1) for x in k).get("trainer.max_steps", "?"), slug) for k, slug in arms.items()]
    label = {(float(ev["sampler"]["eta"]), int(ev["sampler"]["num_steps"]), bool(ev["sampler"].get("clip_sample", True))): lab
             for lab, ev in evs}
    rows, panels, claims, notes = [], [], [], []
    factors: list[tuple[str, str, Claim]] = []  # the investigation's comparisons: name, detail, claim
    # the grid's own n; a cell another finding shares is scored at that finding's n (the suite
    # scores a label at one n on every arm): such cells carry a mark and a note
    grid_n = (Counter(int(ev["n"]) for _, ev in evs if "n" in ev).most_common(1) or [(0, 0)])[0][0]
    marked: set[int] = set()

    def mark(ns: dict[int, int]) -> str:
        other = sorted(set(ns.values()) - {grid_n})
        marked.update(other)
        return f" (n {','.join(f'{x:,d}' for x in other)})" if grid_n and other else ""

    for length, slug in lengths:
        for clip in clips:
            series = {}
            for eta in etas:
                series[f"eta {eta:g}"] = (steps, [res.values(slug, seeds, label[(eta, st, clip)]) for st in steps])
            panels.append((f"{length} training steps, {'clipped' if clip else 'unclipped'} x0", "sampling steps", "FID", series))
            for st in steps:
                rows.append([f"{length}", "yes" if clip else "no", str(st),
                             *(cell(res.values(slug, seeds, label[(eta, st, clip)]), seeds)
                               + mark(res.ns(slug, seeds, label[(eta, st, clip)])) for eta in etas)])
            lo, hi = min(etas), max(etas)
            c = res.claim(f"{length} steps, clip {'on' if clip else 'off'}, {steps[0]} sampling steps: "
                          f"FID(eta {hi:g}) - FID(eta {lo:g})", (slug, label[(lo, steps[0], clip)]),
                          (slug, label[(hi, steps[0], clip)]), seeds, True)
            if length == lengths[0][0] and clip:
                claims.append(c)  # the paper's setting: clipped, the budget's checkpoint, the fewest steps
            else:
                notes.append("Investigation, " + c.test()[1])
                factors.append((f"{length} training steps" if clip else f"clip off at {length} training steps",
                                "" if clip else "samples: " + clamped_share(
                                    res, slug, seeds, [label[(e, st, False)] for e in etas for st in steps]), c))
        if len(clips) == 2:  # why clipping matters: FID, the clamped share, and the first step's gain
            notes.extend(_clip_notes(res, slug, seeds, length, etas, steps, label))
        # the same question in another feature space: the spec's cells (eta, steps) scored there
        spaces = sorted({ev["feature"] for _, ev in other})
        for space in spaces:
            cells = {(float(ev["sampler"]["eta"]), int(ev["sampler"]["num_steps"])): lab for lab, ev in other
                     if ev["feature"] == space and bool(ev["sampler"].get("clip_sample", True))}
            for st in sorted({s_ for _, s_ in cells}):
                es = sorted(e for e, s_ in cells if s_ == st)
                if len(es) < 2:
                    continue
                lo, hi = es[0], es[-1]
                c = res.claim(f"{length} steps, clip on, {st} sampling steps, {space} features: FD(eta {hi:g}) - FD(eta {lo:g})",
                              (slug, cells[(lo, st)]), (slug, cells[(hi, st)]), seeds, True)
                notes.append("Investigation, " + c.test()[1] + " (" + ", ".join(
                    f"eta {e:g}: {cell(res.values(slug, seeds, cells[(e, st)]), seeds)}" for e in es) + ")")
                if st == steps[0]:
                    factors.append((f"{space} features at {length} training steps", "", c))
    if claims and factors:
        notes.insert(0, eta_answer(claims[0], factors))
    if grid_n and marked:
        notes.insert(0, f"Cells marked (n ...) are scored at that n, not the grid's n = {grid_n:,d}: other findings share "
                        "them, and the suite scores a sampler at one n on every arm. FID falls as n grows, so compare "
                        "such a cell only with cells at its n; a claim between different n reads 'not comparable'.")
    return Section(["training steps", "clip x0", "sampling steps", *(f"FID eta {e:g}" for e in etas)], rows, panels, claims,
                   notes)


def eta_answer(main: Claim, factors: list[tuple[str, str, Claim]]) -> str:
    """Finding 1's question, from the figures: the paper's comparison (eta 1 against eta 0 at the
    fewest steps) in its setting here, then how each factor the investigation changes (clipping,
    training length, feature space) moves it, and which of them turn it to the paper's direction."""
    def said(c: Claim) -> tuple[str, str]:
        outcome, d, _, _, how = c.ttest()
        means = ", ".join(f"{name} {stats(list(side.values()))[0]:.3g}" for name, side in (("eta 0", c.low), ("eta 1", c.high))
                          if side)
        if outcome == "missing":
            return outcome, f"not decided ({how}{'; ' + means if means else ''})"
        word = {"agrees": "the paper's direction, significant", "contradicts": "eta 1 better, significant",
                "unclear": "not significant"}[outcome]
        return outcome, f"{d:+.3g} ({word}; {means})"

    outcome, text = said(main)
    head = main.text.split(": FID(")[0]
    judged = [(name, detail, *said(c)) for name, detail, c in factors]  # each claim tested once
    parts = [f"Why, from the figures: FID(eta 1) - FID(eta 0) is {text} in the paper's setting here ({head})"]
    parts += [f"{name}{f' ({detail})' if detail else ''}: {words}" for name, detail, _, words in judged]
    if outcome in ("contradicts", "unclear"):
        by = {o: [name for name, _, got, _ in judged if got == o] for o in ("agrees", "contradicts", "unclear", "missing")}
        def both(names: list[str], last: str = "and") -> str:
            return names[0] if len(names) == 1 else ", ".join(names[:-1]) + f" {last} " + names[-1]

        tail = []
        if by["agrees"]:
            tail.append("the paper's direction appears with " + both(by["agrees"]))
        if by["contradicts"]:
            tail.append("it does not appear with " + both(by["contradicts"], "nor"))
        if by["unclear"]:
            tail.append(both(by["unclear"]) + " leave" + ("s" if len(by["unclear"]) == 1 else "")
                        + " it undecided (not significant at their seeds)")
        if by["missing"]:
            tail.append(both(by["missing"]) + " not decided yet")
        return "; ".join(parts) + ". So " + "; ".join(tail)
    return "; ".join(parts)


def terminal_x0_gain(config: dict[str, Any]) -> float | None:
    """1 / sqrt(abar_T) of a run's schedule (its stored config): how much an eps-prediction
    model's error in eps at t = T is magnified in its x_0 estimate,
    x_0 = (x_T - sqrt(1 - abar_T) eps) / sqrt(abar_T), the estimate DDIM's first step moves
    toward. None for x_0 or v prediction (no division by sqrt(abar_T)) or zero terminal SNR."""
    import hydra

    if (config.get("objective") or {}).get("target", "eps") != "eps" or not config.get("schedule"):
        return None
    process = hydra.utils.instantiate(config["schedule"])
    last = float(process.alphas_cumprod[-1])
    return 1.0 / math.sqrt(last) if last > 0 else None


def clamped_share(res: Results, slug: str, seeds: list[int], labels: list[str]) -> str:
    """The share of sample pixel values outside [-1, 1] that quantisation clamped, the mean
    overshoot where every cell records it, and the number of cells, over ``labels`` and seeds."""
    clamped = [v for lab in labels for v in res.values(slug, seeds, lab, "clamped").values()]
    over = [v for lab in labels for v in res.values(slug, seeds, lab, "overshoot").values()]
    if not clamped:
        return "not recorded"
    return (f"{100 * sum(clamped) / len(clamped):.2f}% of values clamped"
            + (f", mean overshoot {sum(over) / len(over):.3g}" if len(over) == len(clamped) else "")
            + f" ({len(clamped)} cells)")


def _clip_notes(res: Results, slug: str, seeds: list[int], length: str, etas: list[float], steps: list[int],
                label: dict[tuple[float, int, bool], str]) -> list[str]:
    """The clipping investigation of one checkpoint length: FID without against with clipping
    (eta 0, fewest steps), the share of sample pixel values that quantisation clamped with and
    without clipping (over every cell and seed), and the schedule's closed-form x_0 gain at t = T."""
    lo = min(etas)

    def pair(st: int) -> Claim:  # no direction: the paper does not compare clipping
        return res.claim(f"{length} steps, eta {lo:g}, {st} sampling steps: FID(clip off) - FID(clip on)",
                         (slug, label[(lo, st, True)]), (slug, label[(lo, st, False)]), seeds, True, directed=False)

    # the fewest sampling steps whose two cells share an n (a cell shared with another finding may have another)
    c = next((c for c in map(pair, steps) if "not comparable" not in c.test()[1]), pair(steps[0]))
    notes = ["Investigation, clipping: " + c.test()[1]]
    shares = {clip: clamped_share(res, slug, seeds, [label[(eta, st, clip)] for eta in etas for st in steps])
              for clip in (True, False)}
    notes.append(f"Investigation, clipping, {length} steps: sample pixel values outside [-1, 1] that quantisation "
                 f"clamped (mean over every cell and seed; overshoot: the excess |x| - 1 of the clamped values, "
                 f"summed and divided by the number of all values): clip on {shares[True]}; clip off {shares[False]}")
    config = next((res.by[(slug, s)].get("config") for s in seeds if (slug, s) in res.by), None)
    gain = terminal_x0_gain(config) if config else None
    if gain is not None:
        notes.append(f"Investigation, clipping, {length} steps: closed form: this schedule's 1/sqrt(abar_T) is {gain:.3g}, "
                     "so without clipping DDIM's first step from t = T takes an x_0 estimate whose error is the "
                     f"eps-prediction error times {gain:.3g}; clipping x_0 to [-1, 1] bounds it")
    return notes


def section_schedule(spec: Spec, res: Results, arms: dict) -> Section:
    seeds = spec.seeds
    evs = _sampler_rows(spec)
    by_arm = {dict([k[0].split("=", 1)])["schedule"]: slug for k, slug in arms.items()}
    rows, claims = [], []
    series: dict[str, tuple[list, list]] = {}
    bpd_series: dict[str, tuple[list, list]] = {"bits/dim": ([], [])}
    for name, slug in by_arm.items():
        fids = [res.values(slug, seeds, lab) for lab, _ in evs]
        bpd = res.values(slug, seeds, "bpd", "bpd")
        rows.append([name, *(cell(v, seeds) for v in fids), cell(bpd, seeds, 3)])
        series[name] = ([int(ev["sampler"]["num_steps"]) for _, ev in evs], fids)
        bpd_series["bits/dim"][0].append(name)
        bpd_series["bits/dim"][1].append(bpd)
    if {"cosine", "linear"} <= set(by_arm):
        cos, lin = by_arm["cosine"], by_arm["linear"]
        for lab, ev in evs:
            claims.append(res.claim(f"FID {lab}: linear - cosine", (cos, lab), (lin, lab), seeds, False))
        claims.append(res.claim("bits/dim: linear - cosine", (cos, "bpd"), (lin, "bpd"), seeds, False, metric="bpd"))
    return Section(["schedule", *(f"FID {lab}" for lab, _ in evs), "val bits/dim"], rows,
                   [("FID against sampling steps", "sampling steps", "FID", series),
                    ("val bits/dim (probability-flow ODE)", "schedule", "bits/dim", bpd_series)], claims)


def section_min_snr(spec: Spec, res: Results, arms: dict) -> Section:
    seeds = spec.seeds
    by_arm = {dict([k[0].split("=", 1)])["objective.weighting"]: slug for k, slug in arms.items()}
    curves = {name: res.curve(slug, seeds) for name, slug in by_arm.items()}
    steps = sorted(set().union(*(c.keys() for c in curves.values()))) if curves else []
    rows, claims, notes = [], [], []
    for st in steps:
        rows.append([str(st), *(cell(curves[name].get(st, {}), seeds) for name in by_arm)])
    if not rows:
        rows.append(["not run yet", *("not run yet" for _ in by_arm)])
    if {"uniform", "min_snr"} <= set(by_arm):
        for st in steps:
            claims.append(Claim(f"FID at step {st}: uniform - min-SNR", curves["min_snr"].get(st, {}),
                                curves["uniform"].get(st, {}), False))
        full = all(len(curves[n].get(st, {})) == len(seeds) for n in by_arm for st in steps) and steps
        if full:
            target = stats(list(curves["uniform"][steps[-1]].values()))[0]
            reach = next((st for st in steps if stats(list(curves["min_snr"][st].values()))[0] <= target), None)
            notes.append(f"Speed-up: min-SNR's mean FID reaches uniform's final mean ({target:.2f} at step {steps[-1]}) "
                         + (f"at step {reach}: {steps[-1] / reach:.1f}x fewer steps (on a grid of {steps[0]} steps)"
                            if reach else "at none of the scored steps"))
    series = {name: (steps, [curves[name].get(st, {}) for st in steps]) for name in by_arm}
    return Section(["training step", *(f"FID {n}" for n in by_arm)], rows,
                   [("FID against training step", "training step", "FID", series)], claims, notes)


def section_solvers(spec: Spec, res: Results, arms: dict) -> Section:
    seeds = spec.seeds
    slug = next(iter(arms.values()))
    evs = _sampler_rows(spec)
    by_name: dict[str, list[tuple[int, str]]] = {}
    published: dict[str, bool] = {}
    for lab, ev in evs:
        nfe = build_sampler(ev["sampler"]).nfe(1000)
        name, published[lab] = solver_protocol(ev["sampler"])
        by_name.setdefault(name, []).append((nfe, lab))
    rows, claims, series, apart = [], [], {}, []
    ddim = dict(by_name.get("ddim", []))
    for name, pts in by_name.items():
        pts.sort()
        series[name] = ([n for n, _ in pts], [res.values(slug, seeds, lab) for _, lab in pts])
        for nfe, lab in pts:
            rows.append([name, str(nfe), lab, cell(res.values(slug, seeds, lab), seeds)])
            if name != "ddim":
                ref = ddim.get(nfe) or ddim.get(nfe + 1)  # Heun's 2s - 1 NFE against DDIM's next even count
                if ref:
                    c = res.claim(f"FID {lab} against {ref}: DDIM - {name}", (slug, lab), (slug, ref), seeds, True,
                                  directed=published[lab])
                    if c.directed:
                        claims.append(c)
                    else:  # not the paper's protocol: reported, no direction claimed
                        apart.append("Reported, no direction claimed: " + c.test()[1])
    config = next((res.by[(slug, s)].get("config") for s in seeds if (slug, s) in res.by), None)
    notes = apart + (karras_grid_notes(config, evs) if config else [])
    if not all(published.values()):
        notes.append("Heun's published protocol is EDM's grid (Karras et al. 2022, Table 1: sigma_max = 80, rho 7); the "
                     "verdict tests that one. A Karras grid from the schedule's own sigma(T - 1) (diffusers' default "
                     "range) is not what the paper ran: it is reported, with no direction claimed")
    return Section(["sampler", "NFE", "protocol", "FID"], rows, [("FID against NFE", "NFE", "FID", series)], claims,
                   notes)


EDM_SIGMA_MAX = 80.0  # Karras et al. 2022, Table 1: EDM's highest noise level


def solver_protocol(sampler: dict[str, Any]) -> tuple[str, bool]:
    """A sampler's row name in the solvers finding, and whether it is the protocol the papers
    published: Heun's is EDM's Karras grid (sigma_max = 80); a Karras grid over the schedule's
    whole range (diffusers' default) is a different protocol, named apart."""
    name = str(sampler["name"])
    if not sampler.get("use_karras_sigmas"):
        return name, True
    smax = sampler.get("sigma_max")
    if smax is None:
        return f"{name}, Karras grid from sigma(T - 1)", name != "heun"
    return f"{name}, Karras grid from sigma {float(smax):g}", name != "heun" or float(smax) == EDM_SIGMA_MAX


def karras_grid_notes(config: dict[str, Any], evs: list[tuple[str, dict]]) -> list[str]:
    """The noise levels each Karras-grid sampler steps through under the run's schedule (its
    stored config): how many steps start above EDM's sigma_max = 80 (the image there is noise to
    within 1/80 of its scale) and the widest step that ends below sigma 1 (where digits' strokes
    form), as a ratio of noise levels. Closed forms of the grid, no figure of a run."""
    import hydra

    from difflab.samplers.base import vp_sigmas

    if not config.get("schedule"):
        return []
    process = hydra.utils.instantiate(config["schedule"])
    table = vp_sigmas(process)
    last = float(process.alphas_cumprod[-1])
    top = math.sqrt((1 - last) / last) if last > 0 else math.inf
    notes = []
    for lab, ev in evs:
        sampler = build_sampler(ev["sampler"])
        if not getattr(sampler, "use_karras_sigmas", False):
            continue
        sigmas = [float(x) for x in sampler.grid(process)[1][:-1]]  # the last level, 0, is the clean sample
        high = sum(a > EDM_SIGMA_MAX for a in sigmas[:-1])
        low = [(a / b, a, b) for a, b in zip(sigmas, sigmas[1:]) if b < 1.0]
        widest = max(low, default=None)
        notes.append(
            f"Grid of {lab} (Karras et al. eq. 5, rho {sampler.rho:g}, from sigma_max = {sigmas[0]:.4g} to sigma(0) = "
            f"{float(table[0]):.3g}"
            + ("; sigma_max is sigma(T - 1) with its alpha-bar of 0 (zero terminal SNR) read as 2^-24"
               if sampler.sigma_max is None and top > sigmas[0] * (1 + 1e-6) else "")
            + "): " + ", ".join(f"{x:.3g}" for x in sigmas) + ", then 0; "
            f"{high} of its {len(sigmas) - 1} steps between noise levels start above sigma {EDM_SIGMA_MAX:g} (EDM's sigma_max)"
            + (f"; its widest step that ends below sigma 1 goes from {widest[1]:.3g} to {widest[2]:.3g} "
               f"(a factor of {widest[0]:.3g})" if widest else ""))
    return notes


def section_objective(spec: Spec, res: Results, arms: dict) -> Section:
    seeds = spec.seeds
    evs = _sampler_rows(spec)
    by_arm = {dict([k[0].split("=", 1)])["objective"]: slug for k, slug in arms.items()}
    rows, claims, notes = [], [], []
    series = {lab: (list(by_arm), [res.values(slug, seeds, lab) for slug in by_arm.values()]) for lab, _ in evs}
    for name, slug in by_arm.items():
        rows.append([name, *(cell(res.values(slug, seeds, lab), seeds) for lab, _ in evs)])
    if {"eps", "x0", "v"} <= set(by_arm):
        for lab, _ in evs:
            claims.append(res.claim(f"FID {lab}: x0 - eps", (by_arm["eps"], lab), (by_arm["x0"], lab), seeds, False))
            notes.append("Reported, no direction claimed: " + res.claim(
                f"FID {lab}: v - eps", (by_arm["eps"], lab), (by_arm["v"], lab), seeds, False, directed=False).test()[1])
    return Section(["prediction", *(f"FID {lab}" for lab, _ in evs)], rows,
                   [("FID by prediction target", "prediction target", "FID", series)], claims, notes)


def section_guidance(spec: Spec, res: Results, arms: dict) -> Section:
    seeds = spec.seeds
    slug = next(iter(arms.values()))
    evs = sorted(((ev["w"], lab) for lab, ev in _labels(spec).items() if ev["kind"] == "guidance"))
    rows = [[f"{w:g}", cell(res.values(slug, seeds, lab), seeds),
             cell(res.values(slug, seeds, lab, "acc"), seeds, 1, 100.0),
             cell(res.values(slug, seeds, lab, "clamped"), seeds, 2, 100.0)] for w, lab in evs]
    ws = [w for w, _ in evs]
    fid = [res.values(slug, seeds, lab) for _, lab in evs]
    acc = [{s: 100 * v for s, v in res.values(slug, seeds, lab, "acc").items()} for _, lab in evs]
    claims = []
    one = dict((w, lab) for w, lab in evs).get(1.0)
    top_w, top = evs[-1] if evs else (None, None)
    if one and top and top != one:
        claims.append(res.claim(f"class accuracy: w={top_w:g} - w=1 (higher is the paper's direction)",
                                (slug, one), (slug, top), seeds, True, metric="acc"))
        claims.append(res.claim(f"FID: w={top_w:g} - w=1", (slug, one), (slug, top), seeds, True))
    return Section(["w", "FID", "class accuracy (%)", "pixel values clamped (%)"], rows,
                   [("FID against w", "guidance scale w", "FID", {"FID": (ws, fid)}),
                    ("class accuracy against w", "guidance scale w", "accuracy (%)", {"accuracy": (ws, acc)})], claims)


def named_emas() -> dict[str, dict[str, Any]]:
    """The further EMAs every findings run keeps (named EMA callbacks in ``common.yaml``): name ->
    {decay, warmup}; the run's own EMA is under ``""`` (``conf/callbacks/ema.yaml`` unless overridden)."""
    from omegaconf import OmegaConf

    own = OmegaConf.load(ROOT / "conf" / "callbacks" / "ema.yaml").ema
    out = {"": {"decay": float(own.decay), "warmup": bool(own.warmup)}}
    for node in (OmegaConf.load(SPEC_DIR / "common.yaml").get("callbacks") or {}).values():
        if str(node.get("_target_", "")).endswith("callbacks.ema.EMA"):
            if node.get("name") is None:
                out[""] = {"decay": float(node.get("decay", own.decay)), "warmup": bool(node.get("warmup", own.warmup))}
            else:
                out[str(node.name)] = {"decay": float(node.decay), "warmup": bool(node.get("warmup", True))}
    return out


def initial_share(steps: int, decay: float, warmup: bool) -> float:
    """The weight an EMA still gives the weights it started from (the initialisation) after ``steps``
    updates: the product of its decays (callbacks/ema.py ``ema_decay_at``)."""
    from difflab.callbacks.ema import ema_decay_at

    share = 1.0
    for k in range(steps):
        share *= ema_decay_at(k, decay, warmup)
    return share


def section_ema(spec: Spec, res: Results, arms: dict) -> Section:
    """Raw weights against the run's EMA and the further EMAs the same runs kept (one training run
    serves every decay, so each comparison is paired by seed)."""
    from difflab.callbacks.ema import ema_decay_at

    seeds = spec.seeds
    slug = next(iter(arms.values()))
    evs = _sampler_rows(spec)
    emas = named_emas()
    steps = next((int(r["global_step"]) for (a, _), r in res.by.items() if a == slug), None)
    raw_lab = next(lab for lab, ev in evs if ev["weights"] == "raw")
    raw = res.values(slug, seeds, raw_lab)
    rows = [["raw", "-", "-", "-", "-", cell(raw, seeds)]]
    xs, vals, claims, notes = ["raw"], [raw], [], []
    run_d, run_warm = emas[""]["decay"], emas[""]["warmup"]
    for lab, ev in evs:
        w = str(ev["weights"])
        if w == "raw":
            continue
        name = "" if w == "ema" else w[4:]
        if name not in emas:
            raise ValueError(f"finding {spec.name}: weights {w!r}, but common.yaml keeps no EMA named {name!r}")
        d, warm = emas[name]["decay"], emas[name]["warmup"]
        what = f"EMA {d:g}" + ("" if warm else ", no warm-up")
        last = f"{ema_decay_at(steps - 1, d, warm):.4g}" if steps else "-"
        share = f"{initial_share(steps, d, warm):.2g}" if steps else "-"
        vals_ = res.values(slug, seeds, lab)
        rows.append([what + (" (the run's)" if w == "ema" else ""), f"{d:g}", "yes" if warm else "no", last, share,
                     cell(vals_, seeds)])
        xs.append(what)
        vals.append(vals_)
        same = (w != "ema" and steps and warm == run_warm
                and ema_decay_at(steps - 1, d, warm) == ema_decay_at(steps - 1, run_d, run_warm))
        if same:  # every update of this EMA had the run EMA's decay: the same weights, not a second test
            notes.append(f"Not tested apart: {what} had the decay of the run's EMA at every one of the {steps:,d} "
                         f"updates (the warm-up cap stayed below both), so its weights are the run EMA's and its FID "
                         f"{cell(vals_, seeds)} is the same comparison again")
        elif w == "ema" or warm:  # the published recipe (with the warm-up): EMA beats the raw weights
            claims.append(res.claim(f"FID {lab}: raw - {what}", (slug, lab), (slug, raw_lab), seeds, True))
        else:  # without the warm-up the EMA holds its initialisation for long: reported, no direction claimed
            notes.append("Reported, no direction claimed: " + res.claim(
                f"FID {lab}: raw - {what}", (slug, lab), (slug, raw_lab), seeds, True, directed=False).test()[1])
    notes.append("One training run keeps every EMA (named EMA callbacks in sweeps/findings/common.yaml), so each is "
                 "compared with the raw weights of the same run. The warm-up caps the decay at (1 + n) / (10 + n) after "
                 "n updates (callbacks/ema.py), below 0.999 until step 8,990: shorter runs give the same EMA weights for "
                 "both decays. 'decay at the end' is the decay of the last update; 'initial share' the weight the EMA "
                 "still gives the random initialisation it started from.")
    return Section(["weights", "decay", "warm-up", "decay at the end", "initial share", f"FID {evs[0][0]}"], rows,
                   [("FID by weights", "weights", "FID", {"FID": (xs, vals)})], claims, notes)


SECTIONS = {"ddim_eta": section_ddim_eta, "schedule": section_schedule, "min_snr": section_min_snr,
            "solvers": section_solvers, "objective": section_objective, "guidance": section_guidance, "ema": section_ema}


def plot(path: Path, title: str, panels: list) -> Path | None:
    """The panels as one PNG (matplotlib Agg): mean ± std over seeds; None when no figure exists."""
    if not any(stats(list(v.values()))[2] for _, _, _, series in panels for _, vals in series.values() for v in vals):
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = min(len(panels), 2)
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(5 * cols, 3.6 * rows), dpi=100)
    FigureCanvasAgg(fig)
    for i, (ptitle, xlabel, ylabel, series) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        for name, (xs, vals) in series.items():
            pts = [(x, *stats(list(v.values()))) for x, v in zip(xs, vals)]
            pts = [(x, m, s) for x, m, s, n in pts if n]  # one seed: std nan, drawn without a bar
            if not pts:
                continue
            categorical = any(isinstance(x, str) for x, _, _ in pts)
            pos = [xs.index(x) for x, _, _ in pts] if categorical else [x for x, _, _ in pts]
            ax.errorbar(pos, [m for _, m, _ in pts], yerr=[s for _, _, s in pts], marker="o", capsize=3, label=name)
            if categorical:
                ax.set_xticks(range(len(xs)), [str(x) for x in xs])
        ax.set_title(ptitle, fontsize=9)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if len(series) > 1 and ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(title + "\n(mean ± std over seeds; no bar: one seed)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def budget_line(spec: Spec, budget: str, composer: Composer) -> str:
    cfg = composer.compose([f"{k}={v}" for k, v in fixed_settings(budget).items()])
    steps = spec.params.get("trainer.max_steps", [str(cfg.trainer.max_steps)])
    evs = list(_labels(spec))
    parts = [f"{' and '.join(f'{int(s):,}' for s in steps)} training steps at batch {cfg.data.batch_size}",
             f"{len(spec.seeds)} seeds ({', '.join(map(str, spec.seeds))})",
             f"FID/KID of n = {int(cfg.callbacks.fid.n):,} samples (digits features, EMA weights unless _raw) "
             f"against {int(cfg.callbacks.fid.n):,} training digits"]
    if "fid_curve" in evs:
        parts.append(f"scored every {int(cfg.callbacks.fid.every_n_steps):,} steps with the run's sampler "
                     f"(`{cfg.sampler._target_.rsplit('.', 1)[-1]}`, {cfg.sampler.num_steps} steps, eta {cfg.sampler.eta:g})")
    if "bpd" in evs:
        parts.append(f"bits/dim on {spec.settings['bpd_n']} val digits (dopri5, rtol {spec.settings['bpd_rtol']:g}, Hutchinson)")
    expanded = expand_evaluations(spec.evaluate)
    samplers = [lab for lab in evs if lab not in ("bpd", "fid_curve") and "feature" not in expanded[lab]]
    own_n = sorted({int(ev["n"]) for ev in expanded.values() if "n" in ev})
    at_n = f" at n = {' and '.join(f'{k:,}' for k in own_n)} (against as many training digits)" if own_n else ""
    if len(samplers) > 8:
        parts.append(f"{len(samplers)} sampler settings, the table's grid (`{samplers[0]}` to `{samplers[-1]}`){at_n}")
    elif samplers:
        parts.append(f"samplers: {', '.join(f'`{s}`' for s in samplers)}{at_n}")
    spaces = sorted({ev["feature"] for ev in expanded.values() if "feature" in ev})
    for space in spaces:
        labs = [lab for lab, ev in expanded.items() if ev.get("feature") == space]
        parts.append(f"in {space} features too (Frechet distance and KID, no network for pixels): "
                     + ", ".join(f"`{lab}`" for lab in labs))
    return "; ".join(parts)


def write_report(results: Path, budget: str, out: Path, plots: Path, wandb_dir: Path | None = None) -> str:
    """``findings.md`` (and its plots) from the JSON results of ``budget``; returns the text."""
    runs, specs, arms = plan(list(FINDINGS), budget)
    composer = Composer(budget)
    res = Results(results, budget, {(r.slug, r.seed): expected_config(r, composer) for r in runs
                                    if r.path(results).is_file()},  # composed for the runs with a result only
                  {(r.slug, r.seed): r.evaluations for r in runs})
    group_of = {r.slug: r.group for r in runs}
    flag = {"short": "", "full": " --full", "quick": " --quick"}[budget]
    rel = os.path.relpath(results, ROOT) if results.is_relative_to(ROOT) else str(results)
    intro = [
        f"# Findings: published trends on mnist5k ({budget} budget)",
        "",
        "Generated by `python benchmarks/findings.py" + flag + " --report` from the JSON results under "
        f"`{rel}/{budget}/` only (one file per training run: config, seed, step, metrics, W&B group and run id). "
        "Each table holds mean ± std over the seeds; a cell without results reads *not run yet*, and no figure is "
        "estimated. A claim holds when the difference in the paper's direction is significant in a two-sided t-test at "
        "5% (paired by seed when both sides are scored from the same checkpoints, Welch's otherwise; with 3 seeds "
        "paired it must exceed 4.30 standard errors); scores drawn at different sample counts n are never compared.",
        "",
        "Run the missing pieces with `python benchmarks/findings.py" + flag + " --finding NAME` (each finished run "
        "writes its JSON; `--commit` commits it; `--max-minutes 110` stops before a piece's time is up; `--list` "
        "prints each run's cost and `--arm`/`--seed` pick the runs that fit a piece). The default "
        "arm (the default config) is trained once and serves findings 1-5 and 7 (W&B group `findings-default`).",
        "",
    ]
    if res.stale:
        intro += ["Not counted: results run as another experiment than the suite's of today (they run again): "
                  + "; ".join(f"`{a}` seed {sd} ({', '.join(why)})" for (a, sd), why in sorted(res.stale.items())) + ".",
                  ""]
    by_fix: dict[str, list[str]] = {}
    for (a, sd), old in sorted(res.superseded.items()):
        for fix in {f.commit: f for f in old.values()}.values():
            by_fix.setdefault(fix.commit, []).append(
                f"`{a}` seed {sd} ({', '.join(f'`{lab}`' for lab, f in old.items() if f.commit == fix.commit)})")
    for commit, where in by_fix.items():
        fix = next(f for f in FIXES if f.commit == commit)
        intro += [f"Set aside until scored again: figures scored before fix {commit} ({fix.what}): " + "; ".join(where)
                  + ". Their old values stay in the JSON files; a run counts as done for a finding again when "
                  "its labels are scored anew (`python benchmarks/findings.py --arm ARM --seed SEED`).", ""]
    lines: list[str] = []
    summary = []
    for name in FINDINGS:
        spec = specs[name]
        slugs = sorted(set(arms[name].values()))
        total = len(slugs) * len(spec.seeds)
        done = sum(res.done(s, spec.seeds, _labels(spec)) for s in slugs)
        partial = sum((s, sd) in res.by for s in slugs for sd in spec.seeds) - done
        sec = SECTIONS[name](spec, res, arms[name])
        word, why = verdict(sec.claims, done, total, partial)
        summary.append((spec.number, spec.title, word, done, total))
        groups = sorted({g for s in slugs for g in res.groups(s, spec.seeds)})
        planned = sorted({group_of[s] for s in slugs})
        lines += [
            f"## {spec.number}. {spec.title}",
            "",
            f"Paper: {spec.paper}. Published: {spec.published}.",
            "",
            f"Budget: {budget_line(spec, budget, composer)}.",
            "",
            f"Command: `python benchmarks/findings.py{flag} --finding {name}` (training jobs alone: "
            f"`python train.py -m --config-dir sweeps +findings={name}`; spec `sweeps/findings/{name}.yaml`).",
            "",
            f"Runs: {done} of {total} done ({', '.join(f'`{s}`' for s in slugs)} x seeds {spec.seeds}); "
            f"W&B group{'s' if len(groups or planned) > 1 else ''}: "
            + ", ".join(f"`{g}`" for g in (groups or planned)) + ("" if groups else " (when run)") + ".",
            "",
            table(sec.header, sec.rows),
            "",
        ]
        png = plot(plots / f"{name}.png", f"{spec.number}. {spec.title}", sec.panels) if done else None
        if png is not None:
            lines += [f"![{spec.title}]({os.path.relpath(png, out.parent)})", ""]
        else:
            lines += ["Plot: not run yet.", ""]
        lines += [f"**Verdict: {word}.** " + "; ".join(why) + ".", ""]
        aside = sorted({(lab, f.commit) for sl in slugs for sd in spec.seeds
                        for lab, f in res.superseded.get((sl, sd), {}).items() if lab in _labels(spec)})
        notes = list(sec.notes) + ([
            "Cells read *not run yet* where their figures were scored before a fix that changed them and are set aside "
            "until scored again: " + ", ".join(f"`{lab}` (fix {c})" for lab, c in aside)] if aside else [])
        lines += [f"- {n}" for n in notes] + ([""] if notes else [])
        if wandb_dir is not None and png is not None:
            log_to_wandb(spec, budget, sec, png, word, why, wandb_dir)
    head = ["## Summary", "", table(["#", "finding", "verdict", "runs done"],
                                    [[str(n), t, w, f"{d}/{tot}"] for n, t, w, d, tot in summary], ["r", "l", "l", "r"]), ""]
    text = "\n".join(intro + head + lines).rstrip() + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return text


def log_to_wandb(spec: Spec, budget: str, sec: Section, png: Path, word: str, why: list[str], wandb_dir: Path) -> None:
    """The finding's table and plot as a W&B run in the finding's group (offline without a key)."""
    import numpy as np
    from PIL import Image

    from difflab.utils.loggers import log_image, log_table, make_wandb_logger

    logger = make_wandb_logger("auto", save_dir=str(wandb_dir / f"{spec.name}-{budget}"), project="difflab", group=spec.group,
                               job_type="findings-report", name=f"{spec.name}-{budget}-report",
                               config={"finding": spec.name, "budget": budget, "verdict": word, "why": why})
    log_table(logger, f"findings/{spec.name}/table", sec.header, sec.rows)
    log_image(logger, f"findings/{spec.name}/plot", np.asarray(Image.open(png).convert("RGB")), step=0,
              caption=f"{spec.title}: {word}")
    logger.experiment.finish()


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--finding", action="append", choices=FINDINGS, help="run this finding (repeatable; default: all)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--full", action="store_true", help="the full-size budget (a GPU): results and findings_full.md")
    size.add_argument("--quick", action="store_true", help="tiny pipeline check in a temporary folder (CI)")
    p.add_argument("--report", action="store_true", help="only write findings.md from the results; run nothing")
    p.add_argument("--list", action="store_true", help="print the runs and whether each has a result; run nothing")
    p.add_argument("--max-minutes", type=float, default=None, help="start no run that would end past this many minutes")
    p.add_argument("--max-runs", type=int, default=None, help="run at most this many runs, then report")
    p.add_argument("--arm", action="append", default=None,
                   help="only this arm, as --list names it (e.g. schedule=linear, default; repeatable)")
    p.add_argument("--seed", type=int, action="append", default=None, help="only this seed (repeatable)")
    p.add_argument("--results-dir", default=None, help=f"where the run JSONs go (default {RESULTS_DIR.relative_to(ROOT)})")
    p.add_argument("--out", default=None, help="the markdown file (default benchmarks/findings.md, _full for --full)")
    p.add_argument("--work-dir", default=None, help="run dirs (default outputs/findings; --quick: a temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep each run's checkpoints after its JSON is written")
    p.add_argument("--commit", action="store_true", help="git-commit each result JSON as it is written, and the report")
    p.add_argument("--no-wandb", action="store_true", help="do not log the findings' tables and plots to W&B")
    args = p.parse_args(argv)
    budget = "quick" if args.quick else "full" if args.full else "short"
    names = args.finding or list(FINDINGS)

    with tempfile.TemporaryDirectory(prefix="difflab-findings-") as tmp:
        tmp = Path(tmp)
        if args.quick:
            results = Path(args.results_dir) if args.results_dir else tmp / "findings"
            out = Path(args.out) if args.out else tmp / "findings.md"
        else:
            results = Path(args.results_dir) if args.results_dir else RESULTS_DIR
            out = Path(args.out) if args.out else ROOT / "benchmarks" / ("findings_full.md" if args.full else "findings.md")
        plots = results / "plots" / ("" if budget == "short" else budget)
        work = Path(args.work_dir) if args.work_dir else (tmp / "runs" if args.quick else ROOT / "outputs" / "findings")
        cache = work / "real_stats"
        runs, _, _ = plan(names, budget)
        if args.arm:
            slugs = {r.slug for r in runs}
            unknown = [a for a in args.arm if a not in slugs]
            if unknown:
                p.error(f"--arm {unknown}: not an arm of findings {', '.join(names)}; accepted: {', '.join(sorted(slugs))}")
            runs = [r for r in runs if r.slug in args.arm]
        if args.seed:
            runs = [r for r in runs if r.seed in args.seed]
        todo = []
        composer = Composer(budget)
        if args.list:
            print(f"{'arm':40s} {'seed':>4s}  {'steps':>6s} {'callback NFE':>13s} {'eval NFE':>11s} {'bpd':>4s}  findings  state")
        for run in runs:
            record = read_result(run, results)
            lacking = missing_labels(run, record)
            stale = stale_reason(run, record, composer)
            if stale:  # another experiment than the run of today (e.g. another machine's precision): run it again
                note(f"stale {run.slug} seed {run.seed}: its result was run with {'; '.join(stale)}; running it again")
                lacking = None
            old = {} if stale else superseded_labels(record, run.evaluations)
            state = ("stale" if stale else "no result") if lacking is None else (
                "done" if not lacking else f"lacks {', '.join(lacking[:4])}"
                + (f" (set aside by fix {', '.join(sorted({f.commit for f in old.values()}))})" if old else ""))
            if args.list:
                c = run_cost(run, composer)
                print(f"{run.slug:40s} {run.seed:4d}  {c['train_steps']:6d} {c['callback_image_nfe']:13,d} "
                      f"{c['evaluation_image_nfe']:11,d} {c['bpd_images']:4d}  [{', '.join(run.findings)}]  {state}")
            if lacking is None or lacking:
                todo.append(run)
            else:
                note(f"skip {run.slug} seed {run.seed}: its result is in {run.path(results)}")
        if args.list:
            return 0
        start, durations, failed = time.perf_counter(), [], 0
        if not args.report:
            note(f"{len(todo)} of {len(runs)} runs to do ({budget} budget, findings {', '.join(names)})")
            for i, run in enumerate(todo):
                if args.max_runs is not None and i >= args.max_runs:
                    note(f"--max-runs {args.max_runs}: {len(todo) - i} runs left for the next piece")
                    break
                if args.max_minutes is not None and durations:
                    elapsed = (time.perf_counter() - start) / 60
                    if elapsed + max(durations) / 60 > args.max_minutes:
                        note(f"--max-minutes {args.max_minutes:g}: {elapsed:.0f} min used, {len(todo) - i} runs left")
                        break
                t0 = time.perf_counter()
                note(f"run {i + 1}/{len(todo)}: {run.slug} seed {run.seed} (findings {', '.join(run.findings)})")
                try:
                    path = execute(run, results, work, cache, load_specs_for(run, budget), args.keep)
                except Exception as e:  # one failed run does not stop the piece
                    import traceback

                    failed += 1
                    note(traceback.format_exc())
                    note(f"  FAILED {run.slug} seed {run.seed}: {type(e).__name__}: {e}")
                    continue
                durations.append(time.perf_counter() - t0)
                note(f"  wrote {path} ({durations[-1]:.0f}s)")
                if args.commit:
                    _commit([path], f"Findings: {budget} result of {run.slug} seed {run.seed} ({', '.join(run.findings)})")
        wandb_dir = None if (args.no_wandb or args.quick) else work / "wandb_reports"
        write_report(results, budget, out, plots, wandb_dir)
        print(out.read_text())
        note(f"report: {out}")
        if args.commit and not args.quick:
            pngs = [p for p in plots.glob("*.png")]
            _commit([out, *pngs], f"Findings ({budget}): report from the committed results")
    return 1 if failed else 0


def load_specs_for(run: Run, budget: str) -> dict[str, Spec]:
    return {name: load_spec(name, budget) for name in run.findings}


def _commit(paths: list[Path], message: str) -> None:
    rel = [str(p.relative_to(ROOT)) for p in paths if p.is_relative_to(ROOT)]
    if not rel:
        return
    subprocess.run(["git", "add", "--", *rel], cwd=ROOT, check=True)
    subprocess.run(["git", "commit", "-q", "-m", message, "--", *rel], cwd=ROOT, check=False)


if __name__ == "__main__":
    raise SystemExit(main())
