"""Steady-state training throughput: difflab under Lightning vs a bare loop vs a diffusers-style loop.

    python benchmarks/train_throughput.py                  # A/B/C at batch 128 + the speed switches
    python benchmarks/train_throughput.py --quick          # batch 4, 1+1 steps, no compile
    python benchmarks/train_throughput.py --no-switches    # only the A/B/C table
    python benchmarks/train_throughput.py --switches       # only the speed-switch table
    python benchmarks/train_throughput.py --profile        # + torch.profiler top ops of one A and one B step
    python benchmarks/train_throughput.py --switches --flops   # + FLOPs per step of each backbone (for MFU)

A/B/C train the same network (``difflab.backbones.DiffusersUNet`` defaults, i.e. one
``diffusers.UNet2DModel``, same initial weights), on the same mnist5k loader (batch, order),
with AdamW (the conf/optimizer/adamw.yaml settings), global-norm gradient clipping at 1.0, an
EMA of the weights (decay 0.999 with warm-up) and 200 steps of linear LR warm-up:

- A: ``DiffusionModule`` under the Lightning ``Trainer``, built as ``train.py`` builds it
  (``difflab.build.build_module``, the configured callbacks and a CSVLogger: every
  ``self.log`` call runs), with the progress bar, checkpointing, sample grids and validation off;
  objective eps with uniform weighting (the plain MSE that B and C compute);
- B: a bare PyTorch loop in this file: ``GaussianDiffusion.q_sample``, eps MSE, AdamW,
  ``clip_grad_norm_`` (foreach), EMA by ``torch._foreach_lerp_``;
- C: the loop of diffusers' ``examples/unconditional_image_generation/train_unconditional.py``
  (``UNet2DModel``, ``DDPMScheduler.add_noise``, ``diffusers.training_utils.EMAModel``,
  ``get_scheduler("cosine")``, ``loss.item()`` logs), without ``accelerate`` (one CPU process).

Every variant runs ``--warmup`` steps, then ``--window`` timed steps; A is timed by a callback
that timestamps ``on_train_batch_end`` (after the EMA callback), so Trainer setup is not in
the window. Runs are interleaved (A B C A B C ...) and medians reported; the ratios are
medians of the per-round ratios, so load drift between rounds cancels.

The speed-switch table trains the default config (``backbone=unet``, min-SNR eps objective,
batch 128) under the Trainer with one switch at a time, same seed, and reports images/s,
speed-up against the baseline of the same round and the loss at the last step.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Stopwatch, compose_train, loadavg, machine, median, note, table  # noqa: E402

# ------------------------------------------------------------------------------------------------
# shared configuration

ABC_OVERRIDES = [
    "backbone=diffusers_unet",
    "objective.weighting=uniform",
    "logger=csv",
    "~callbacks.model_checkpoint",
    "~callbacks.sample_grid",
    "~callbacks.progress_bar",
    "trainer.accelerator=cpu",
    "trainer.precision=32-true",
    "channels_last=false",  # B and C run the plain (contiguous) layout of diffusers' example
    "trainer.enable_progress_bar=false",
    "+trainer.enable_checkpointing=false",
    "trainer.enable_model_summary=false",
    "trainer.limit_val_batches=0",
    "print_config=false",
    "resume=false",
]

# lr_warmup_steps=0: with the default 200-step warm-up the (zero-initialised) output layer has
# barely moved after a few steps and every switch would report the same loss
SWITCH_BASE = [o for o in ABC_OVERRIDES if not o.startswith(("backbone=", "objective."))] + ["lr_warmup_steps=0"]


def steady_ips(stamps: list[float], warmup: int, window: int, batch: int) -> float:
    """Images/s between the end of step ``warmup`` and the end of step ``warmup + window``."""
    return window * batch / (stamps[warmup + window - 1] - stamps[warmup - 1])


# ------------------------------------------------------------------------------------------------
# A: DiffusionModule under the Lightning Trainer


def run_lightning(overrides: list[str], batch: int, warmup: int, window: int, profile: bool = False) -> dict[str, Any]:
    import lightning as L
    from lightning.pytorch.callbacks import Callback

    from difflab.build import build_callbacks, build_datamodule, build_loggers, build_module, instantiate

    class StepTimer(Callback):
        def __init__(self) -> None:
            self.stamps: list[float] = []
            self.losses: list[float] = []
            self.fit_start = 0.0

        def on_train_start(self, trainer, pl_module) -> None:
            self.fit_start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.stamps.append(time.perf_counter())
            self.losses.append(float(outputs["loss"]))

    with tempfile.TemporaryDirectory() as out:
        cfg = compose_train(
            [*overrides, f"data.batch_size={batch}", f"trainer.max_steps={warmup + window}"], output_dir=out
        )
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        dm = build_datamodule(cfg)
        module = build_module(cfg, tuple(dm.image_shape))
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        timer = StepTimer()
        callbacks = [*build_callbacks(cfg), timer]  # timer last: after EMA
        loggers = build_loggers(cfg)
        profiler = None
        if profile:
            from lightning.pytorch.profilers import SimpleProfiler

            profiler = SimpleProfiler(dirpath=out, filename="simple")
        trainer = instantiate(cfg.trainer, "trainer", callbacks=callbacks, logger=loggers or False, profiler=profiler)
        trainer.fit(module, datamodule=dm)
        report = profiler.summary() if profiler is not None else None
    return {
        "ips": steady_ips(timer.stamps, warmup, window, batch),
        "loss": timer.losses[-1],
        "first_step_s": timer.stamps[0] - timer.fit_start,
        "step_s": (timer.stamps[-1] - timer.stamps[warmup - 1]) / window,
        "profile": report,
    }


# ------------------------------------------------------------------------------------------------
# B and C: loops written here


def _loader(batch: int):
    cfg = compose_train([*ABC_OVERRIDES, f"data.batch_size={batch}"])
    import lightning as L

    from difflab.build import build_datamodule

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    dm = build_datamodule(cfg)
    dm.setup("fit")
    return cfg, dm.train_dataloader()


def _cycle(loader):
    while True:
        yield from loader


def _backbone(cfg):
    import hydra
    import lightning as L

    L.seed_everything(cfg.seed, workers=True, verbose=False)  # same initial weights as A
    return hydra.utils.instantiate(cfg.backbone)


def _warmup_lambda(warmup: int):
    return lambda step: 1.0 if warmup == 0 else min(1.0, (step + 1) / warmup)


def run_bare(batch: int, warmup: int, window: int, profile: bool = False) -> dict[str, Any]:
    """B: the same objective math as DiffusionModule.training_step, as a plain loop."""
    import hydra
    import torch
    import torch.nn.functional as F

    from difflab.callbacks.ema import ema_decay_at

    cfg, loader = _loader(batch)
    model = _backbone(cfg).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    process = hydra.utils.instantiate(cfg.schedule)
    opt = hydra.utils.instantiate(cfg.optimizer)(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _warmup_lambda(int(cfg.lr_warmup_steps)))
    params, ema_params = list(model.parameters()), list(ema.parameters())
    g = torch.Generator().manual_seed(cfg.seed)
    T = process.num_timesteps
    stamps, losses = [], []
    prof = None
    t_start = time.perf_counter()
    for step, (x0, _) in enumerate(_cycle(loader)):
        if step == warmup + window:
            break
        if profile and step == warmup:
            prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            prof.__enter__()
        t = torch.randint(0, T, (x0.shape[0],), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        x_t = process.q_sample(x0, t, noise)
        loss = F.mse_loss(model(x_t, t), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        opt.step()
        sched.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, [p.detach() for p in params], 1.0 - ema_decay_at(step, 0.999, True))
        if prof is not None and step == warmup:
            prof.__exit__(None, None, None)
        stamps.append(time.perf_counter())
        losses.append(loss.item())
    return {
        "ips": steady_ips(stamps, warmup, window, batch),
        "loss": losses[-1],
        "first_step_s": stamps[0] - t_start,
        "step_s": (stamps[-1] - stamps[warmup - 1]) / window,
        "profile": prof,
    }


def run_diffusers(batch: int, warmup: int, window: int) -> dict[str, Any]:
    """C: diffusers' train_unconditional.py loop (without accelerate)."""
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler, UNet2DModel
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    cfg, loader = _loader(batch)
    model = _backbone(cfg).unet.train()  # the same UNet2DModel (and weights) that A wraps
    noise_scheduler = DDPMScheduler(num_train_timesteps=int(cfg.schedule.num_timesteps), beta_schedule="squaredcos_cap_v2")
    ema_model = EMAModel(
        model.parameters(), decay=0.999, use_ema_warmup=True, inv_gamma=1.0, power=3 / 4,
        model_cls=UNet2DModel, model_config=model.config,
    )
    o = cfg.optimizer
    optimizer = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay, eps=o.eps)
    lr_scheduler = get_scheduler(
        "cosine", optimizer=optimizer, num_warmup_steps=int(cfg.lr_warmup_steps), num_training_steps=int(cfg.trainer.max_steps)
    )
    stamps, losses = [], []
    t_start = time.perf_counter()
    global_step = 0
    for step, (clean_images, _) in enumerate(_cycle(loader)):
        if step == warmup + window:
            break
        noise = torch.randn(clean_images.shape, dtype=clean_images.dtype, device=clean_images.device)
        bsz = clean_images.shape[0]
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (bsz,), device=clean_images.device).long()
        noisy_images = noise_scheduler.add_noise(clean_images, noise, timesteps)
        model_output = model(noisy_images, timesteps).sample
        loss = F.mse_loss(model_output.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad()
        ema_model.step(model.parameters())
        global_step += 1
        logs = {"loss": loss.detach().item(), "lr": lr_scheduler.get_last_lr()[0], "step": global_step}
        logs["ema_decay"] = ema_model.cur_decay_value
        stamps.append(time.perf_counter())
        losses.append(logs["loss"])
    return {
        "ips": steady_ips(stamps, warmup, window, batch),
        "loss": losses[-1],
        "first_step_s": stamps[0] - t_start,
        "step_s": (stamps[-1] - stamps[warmup - 1]) / window,
        "profile": None,
    }


def abc_table(batch: int, warmup: int, window: int, repeats: int, profile: bool) -> None:
    names = {"A": "A: difflab DiffusionModule + Lightning Trainer", "B": "B: bare PyTorch loop",
             "C": "C: diffusers train_unconditional-style loop"}
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in names}
    loads = [loadavg()]
    for r in range(repeats):
        for k in names:
            if k == "A":
                res = run_lightning(ABC_OVERRIDES, batch, warmup, window)
            elif k == "B":
                res = run_bare(batch, warmup, window)
            else:
                res = run_diffusers(batch, warmup, window)
            runs[k].append(res)
            note(f"  round {r + 1}/{repeats} {k}: {res['ips']:.1f} images/s, loss {res['loss']:.4f}")
        loads.append(loadavg())
    n_params = sum(p.numel() for p in _backbone(compose_train(ABC_OVERRIDES)).parameters())
    print("### Training throughput: A (Lightning) vs B (bare loop) vs C (diffusers-style loop)\n")
    print(f"Machine: {machine()}")
    print(f"Load average (1/5/15 min) before and after each round: {' -> '.join(loads)}")
    print(
        f"DiffusersUNet defaults ({n_params / 1e6:.2f}M params), batch {batch} x 1x28x28, AdamW, clip 1.0, EMA 0.999; "
        f"{warmup} warm-up steps then {window} timed steps per run; {repeats} interleaved rounds (A B C ...)\n"
    )
    rows = []
    for k, label in names.items():
        ips = [x["ips"] for x in runs[k]]
        rows.append([
            label, f"{median(ips):.1f}", f"{min(ips):.1f} - {max(ips):.1f}", f"{median([x['step_s'] for x in runs[k]]) * 1e3:.0f}",
            f"{median([x['first_step_s'] for x in runs[k]]):.2f}", f"{runs[k][-1]['loss']:.4f}",
        ])
    print(table(["run", "median images/s", "range images/s", "median ms / step", "first step (s)", "loss, last step"], rows))
    ab = [a["ips"] / b["ips"] for a, b in zip(runs["A"], runs["B"])]
    ac = [a["ips"] / c["ips"] for a, c in zip(runs["A"], runs["C"])]
    print()
    print(f"A/B = {median(ab):.3f} (per round: {', '.join(f'{x:.3f}' for x in ab)}; target >= 0.97: "
          f"{'met' if median(ab) >= 0.97 else 'missed'})")
    print(f"A/C = {median(ac):.3f} (per round: {', '.join(f'{x:.3f}' for x in ac)}; target >= 1.0: "
          f"{'met' if median(ac) >= 1.0 else 'missed'})")
    print(f"ratios of medians: A/B = {median([x['ips'] for x in runs['A']]) / median([x['ips'] for x in runs['B']]):.3f}, "
          f"A/C = {median([x['ips'] for x in runs['A']]) / median([x['ips'] for x in runs['C']]):.3f}")
    if profile:
        a = run_lightning(ABC_OVERRIDES, batch, warmup, window, profile=True)
        b = run_bare(batch, warmup, 1, profile=True)
        print("\nLightning SimpleProfiler (A, one run):\n")
        print("```")
        print("\n".join(a["profile"].splitlines()[:30]))
        print("```")
        print("\ntorch.profiler, one B step, top 15 ops by self CPU time:\n")
        print("```")
        print(b["profile"].key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
        print("```")


# ------------------------------------------------------------------------------------------------
# speed switches


def ema_microbench(reps: int) -> tuple[list[list[str]], float, int]:
    """ms per EMA update of the default backbone: foreach lerp (the callback), per-parameter loop, diffusers."""
    import torch
    from diffusers.training_utils import EMAModel

    from difflab.callbacks.ema import EMA

    cfg = compose_train(SWITCH_BASE)
    model = _backbone(cfg)
    cb = EMA(decay=0.999)
    cb.ema_model = copy.deepcopy(model).requires_grad_(False)
    loop_ema = [p.detach().clone() for p in model.parameters()]
    d_loop = EMAModel(model.parameters(), decay=0.999, use_ema_warmup=True, foreach=False)
    d_each = EMAModel(model.parameters(), decay=0.999, use_ema_warmup=True, foreach=True)

    @torch.no_grad()
    def per_param():
        for e, p in zip(loop_ema, model.parameters()):
            e.lerp_(p, 1.0 - 0.999)

    fns = {
        "EMA callback (torch._foreach_lerp_, the default)": lambda: cb.update(model),
        "per-parameter lerp_ loop": per_param,
        "diffusers EMAModel.step (foreach=False, as in train_unconditional)": lambda: d_loop.step(model.parameters()),
        "diffusers EMAModel.step (foreach=True)": lambda: d_each.step(model.parameters()),
    }
    times: dict[str, list[float]] = {k: [] for k in fns}
    for f in fns.values():
        f()
    for _ in range(reps):
        for k, f in fns.items():
            t0 = time.perf_counter()
            for _ in range(5):
                f()
            times[k].append((time.perf_counter() - t0) / 5)
    base = median(times[next(iter(fns))])
    return [[k, f"{median(v) * 1e3:.2f}", f"{median(v) / base:.2f}x"] for k, v in times.items()], base, len(list(model.parameters()))


def loader_ips(batch: int, num_workers: int, batches: int) -> float:
    import lightning as L

    from difflab.build import build_datamodule

    cfg = compose_train([*SWITCH_BASE, f"data.batch_size={batch}", f"data.num_workers={num_workers}"])
    L.seed_everything(0, verbose=False)
    dm = build_datamodule(cfg)
    dm.setup("fit")
    it = iter(_cycle(dm.train_dataloader()))
    next(it)  # worker start-up / first batch not timed
    t0 = time.perf_counter()
    n = 0
    for _ in range(batches):
        n += next(it)[0].shape[0]
    return n / (time.perf_counter() - t0)


def switches_table(batch: int, warmup: int, window: int, repeats: int, quick: bool) -> float:
    variants = {
        "baseline (32-true, contiguous, eager)": [],
        "channels_last=true": ["channels_last=true"],
        "trainer.precision=bf16-mixed": ["trainer.precision=bf16-mixed"],
    }
    if not quick:
        variants["channels_last=true + bf16-mixed"] = ["channels_last=true", "trainer.precision=bf16-mixed"]
        variants["compile=true"] = ["compile=true"]
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in variants}
    loads = [loadavg()]
    for r in range(repeats):
        for k, ov in variants.items():
            if r > 0 and "compile=true" in ov:  # compiling takes minutes here: first round only
                continue
            res = run_lightning([*SWITCH_BASE, *ov], batch, warmup, window)
            runs[k].append(res)
            note(f"  round {r + 1}/{repeats} {k}: {res['ips']:.1f} images/s, first step {res['first_step_s']:.1f}s, loss {res['loss']:.5f}")
        loads.append(loadavg())
    base = runs[next(iter(variants))]
    print("### Speed switches (default config: backbone=unet, eps + min-SNR, AdamW, clip 1.0, EMA; lr_warmup_steps=0)\n")
    print(f"Machine: {machine()}")
    print(f"Load average (1/5/15 min) before and after each round: {' -> '.join(loads)}")
    print(f"batch {batch}, {warmup} warm-up steps then {window} timed steps per run, seed 0; {repeats} interleaved rounds\n")
    rows = []
    for k, rs in runs.items():
        ips = [x["ips"] for x in rs]
        speedup = median([x["ips"] / b["ips"] for x, b in zip(rs, base)])  # compile: round 1 only
        extra = median([x["first_step_s"] - x["step_s"] for x in rs]) - median([b["first_step_s"] - b["step_s"] for b in base])
        rows.append([k, f"{median(ips):.1f}", f"{speedup:.2f}x", f"{median([x['first_step_s'] for x in rs]):.1f}",
                     "-" if rs is base else f"{extra:+.1f}", f"{rs[-1]['loss']:.5f}"])
    print(table(["switch", "median images/s", "speed-up vs baseline (per-round median)", "first step (s)",
                 "extra first-step time vs baseline (s) (compile time)", f"loss at step {warmup + window}"], rows))
    if quick:
        print("\n(--quick skips compile=true: compiling the UNet takes minutes on this CPU)")
    else:
        print("\n(compile=true runs in the first round only; its speed-up is against that round's baseline)")

    ema_rows, ema_base, n_tensors = ema_microbench(3 if quick else 20)
    step_ms = 1e3 * batch / median([x["ips"] for x in base])
    print(f"\nEMA update of the default backbone ({n_tensors} parameter tensors), ms per update (medians, interleaved); "
          f"the baseline training step takes {step_ms:.0f} ms, so the default EMA update is "
          f"{100 * ema_base * 1e3 / step_ms:.2f}% of it\n")
    print(table(["EMA update", "ms / update", "vs callback"], ema_rows))

    nb = 3 if quick else 20
    rows = []
    for w in (0, 2):
        ips = loader_ips(batch, w, nb)
        rows.append([f"mnist5k train_dataloader, num_workers={w}", f"{ips:.0f}", f"{ips / median([x['ips'] for x in base]):.0f}x"])
    print(f"\nData loading alone ({nb} batches of {batch}, after the first) against the baseline training throughput "
          f"({median([x['ips'] for x in base]):.1f} images/s)\n")
    print(table(["loader", "images/s", "vs training images/s"], rows))
    return median([x["ips"] for x in base])


# ------------------------------------------------------------------------------------------------
# FLOPs per training step (for model FLOPs utilisation)

#: backbone configs: (name, overrides)
FLOP_MODELS = [
    ("default UNet (backbone=unet), mnist5k 1x28x28", []),
    ("DiffusersUNet defaults (backbone=diffusers_unet), 1x28x28", ["backbone=diffusers_unet"]),
    ("DDPM CIFAR-10 UNet (experiment=cifar10_ddpm), 3x32x32", ["experiment=cifar10_ddpm"]),
]


def step_flops(overrides: list[str], batch: int) -> tuple[int, int, int]:
    """(parameters, forward FLOPs, forward + backward FLOPs) of one training step of the
    backbone at ``batch``, counted by ``torch.utils.flop_counter.FlopCounterMode`` (matmuls and
    convolutions, 2 FLOPs per multiply-add) on a batch of 2 and scaled linearly (every counted
    op is linear in the batch)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    cfg = compose_train([*SWITCH_BASE, *overrides])
    model = _backbone(cfg).train()
    from difflab.build import build_datamodule

    shape = tuple(build_datamodule(cfg).image_shape)
    x = torch.randn(2, *shape)
    t = torch.randint(0, 1000, (2,))
    with FlopCounterMode(display=False) as fwd:
        out = model(x, t)
    with FlopCounterMode(display=False) as bwd:
        out.float().pow(2).mean().backward()
    params = sum(p.numel() for p in model.parameters())
    f, b = fwd.get_total_flops(), bwd.get_total_flops()
    return params, f * batch // 2, (f + b) * batch // 2


def flops_table(batch: int, default_ips: float | None) -> None:
    """FLOPs per training step of each backbone and what a measured step rate means in TFLOP/s."""
    rows, totals = [], []
    for name, ov in FLOP_MODELS:
        params, fwd, total = step_flops(ov, batch)
        totals.append(total)
        rows.append([name, f"{params / 1e6:.2f}M", f"{fwd / 1e9:.1f}", f"{total / 1e9:.1f}",
                     f"{total / 1e12 * 1e3 / 989:.3f}"])
    print(f"### FLOPs per training step (batch {batch}; FlopCounterMode, 2 FLOPs per multiply-add)\n")
    print(table(["backbone", "parameters", "forward GFLOP", "forward + backward GFLOP",
                 "ms per step at 989 TFLOP/s (H100/H200 dense bf16 peak)"], rows))
    if default_ips:  # FLOP_MODELS[0] is the default UNet the switch table timed
        print(f"\nThe default UNet at the measured baseline rate here ({default_ips:.1f} images/s) runs at "
              f"{totals[0] / batch * default_ips / 1e9:.1f} GFLOP/s on this CPU.")
    print("\nModel FLOPs utilisation = (forward + backward FLOPs per step) x (steps/s) / (device peak FLOP/s);"
          " on a GPU time the step with `python train.py experiment=cifar10_ddpm trainer=gpu` (steps/s in the"
          " progress bar) and divide.")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="batch 4, 1+1 steps, 1 round, no compile (under a minute on an idle machine)")
    p.add_argument("--switches", action="store_true", help="only the speed-switch table")
    p.add_argument("--no-switches", action="store_true", help="only the A/B/C table")
    p.add_argument("--batch", type=int, default=None, help="batch size (default 128; --quick 8)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per run (default 1)")
    p.add_argument("--window", type=int, default=None, help="timed steps per run (default 4; --quick 1)")
    p.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default 3; --quick 1)")
    p.add_argument("--switch-repeats", type=int, default=None, help="interleaved rounds of the switch table (default 2; --quick 1)")
    p.add_argument("--profile", action="store_true", help="also print profiler summaries of A and B")
    p.add_argument("--flops", action="store_true", help="also print FLOPs per training step of each backbone (for MFU)")
    p.add_argument("--device", default="cpu", help="only cpu is wired up; see the README's GPU section")
    args = p.parse_args()
    if args.device != "cpu":
        p.error("--device: only cpu is measured by this script; the GPU section of benchmarks/README.md says why")
    batch = args.batch or (4 if args.quick else 128)
    warmup = args.warmup or 1
    window = args.window or (1 if args.quick else 4)
    repeats = args.repeats or (1 if args.quick else 3)
    cmd = "python benchmarks/train_throughput.py" + "".join(f" {a}" for a in sys.argv[1:])
    print(f"Command: `{cmd}`\n")
    with Stopwatch() as sw:
        if not args.switches:
            abc_table(batch, warmup, window, repeats, args.profile)
            print()
        base_ips = None
        if not args.no_switches:
            base_ips = switches_table(batch, warmup, window, args.switch_repeats or (1 if args.quick else 2), args.quick)
        if args.flops:
            print()
            flops_table(batch, base_ips)
    print(f"\n(total {sw.seconds:.0f} s)")


if __name__ == "__main__":
    main()
