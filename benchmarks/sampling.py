"""Sampling speed: difflab's denoising loop against its floor and against diffusers.

For one network (the default small ``DiffusersUNet``: 28x28 greyscale, block_out_channels
(32, 64, 64), 1.54M parameters) this measures, with medians over interleaved repeats:

- the backbone's forward time at the sampling batch size (``model(x, t)``, one NFE);
- difflab's DDIM (``DDIMSampler``, eta=0, trailing spacing) through ``generate``, against the
  floor NFE x forward, and against diffusers' ``DDIMPipeline`` running the same
  ``UNet2DModel`` weights with a matching ``DDIMScheduler`` (same betas, steps and spacing);
- difflab's DDPM (``DDPMSampler`` with the same number of steps) and every other sampler of
  ``difflab.samplers.SAMPLERS`` (DPM-Solver++ 2M and its SDE variant, UniPC, Euler, Euler
  ancestral, and Heun with Karras sigmas, whose fractional timesteps and two network calls per
  step go through the same loop) at the same NFE (Heun: the odd NFE 2k - 1 <= steps):
  seconds per image and the overhead over NFE x forward (the goal: within 3%).

Each repeat runs forward, difflab DDIM, DDIMPipeline, then the other samplers in turn, so a change in
machine load hits all of them alike. Forward hooks on the shared ``UNet2DModel`` also time
the network inside every run, which gives a second, load-robust overhead figure: the share of
the wall time spent outside the network (the loop, the sampler step, the pipeline's glue). Both loops start from the same x_T (same seed), and the
script prints how far apart their samples end up.

    python benchmarks/sampling.py            # batch 64, 50 steps, 3 repeats (< 10 min on 2 cores)
    python benchmarks/sampling.py --quick    # batch 16, 10 steps, 2 repeats (< 1 min)
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
from diffusers import DDIMPipeline, DDIMScheduler

from difflab.backbones import DiffusersUNet, count_parameters
from difflab.diffusion.process import GaussianDiffusion
from difflab.samplers import (
    SAMPLERS,
    DDIMSampler,
    DDPMSampler,
    DPMSolverSampler,
    EulerAncestralSampler,
    EulerSampler,
    HeunSampler,
    Sampler,
    UniPCSampler,
    generate,
    prev_timesteps,
)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="batch 16, 10 steps, 2 repeats (< 1 min)")
    parser.add_argument("--batch-size", type=int, default=None, help="default 64 (16 with --quick)")
    parser.add_argument("--steps", type=int, default=None, help="NFE per run; default 50 (10 with --quick)")
    parser.add_argument("--repeats", type=int, default=None, help="default 3 (2 with --quick)")
    parser.add_argument("--forward-repeats", type=int, default=3, help="forward calls timed per repeat")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    batch = args.batch_size or (16 if args.quick else 64)
    steps = args.steps or (10 if args.quick else 50)
    repeats = args.repeats or (2 if args.quick else 3)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    model = DiffusersUNet().eval()  # 28x28x1, block_out_channels (32, 64, 64)
    shape = (batch, model.in_channels, *model.sample_size)
    process = GaussianDiffusion.from_schedule("linear", num_timesteps=1000)
    ddim = DDIMSampler(num_steps=steps, eta=0.0, spacing="trailing")
    ddpm = DDPMSampler(num_steps=steps)
    # the other samplers at the same NFE (Heun: 2k - 1 <= steps), labelled by their metric-key part
    others: list[Sampler] = [
        ddpm,
        DPMSolverSampler(num_steps=steps),
        DPMSolverSampler(num_steps=steps, algorithm="sde-dpmsolver++"),
        UniPCSampler(num_steps=steps),
        EulerSampler(num_steps=steps),
        EulerAncestralSampler(num_steps=steps),
        HeunSampler(num_steps=max(1, (steps + 1) // 2), use_karras_sigmas=True),
    ]
    missing = set(SAMPLERS) - {s.name for s in others} - {"ddim"}
    if missing:
        raise RuntimeError(f"samplers missing from the benchmark: {sorted(missing)}")
    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=1e-4,
        beta_end=0.02,
        beta_schedule="linear",
        clip_sample=True,
        set_alpha_to_one=True,
        timestep_spacing="trailing",
        prediction_type="epsilon",
    )
    pipeline = DDIMPipeline(unet=model.unet, scheduler=scheduler)
    pipeline.set_progress_bar_config(disable=True)

    # Time spent inside the network during a run, via hooks on the module both loops call.
    in_network = [0.0]
    started = [0.0]

    def pre_hook(module, inputs):
        started[0] = time.perf_counter()

    def post_hook(module, inputs, output):
        in_network[0] += time.perf_counter() - started[0]

    model.unet.register_forward_pre_hook(pre_hook)
    model.unet.register_forward_hook(post_hook)

    x = torch.randn(shape)
    t = torch.full((batch,), 500, dtype=torch.long)

    def forward() -> None:
        with torch.inference_mode():
            model(x, t)

    def ours_ddim() -> torch.Tensor:
        return generate(model, process, ddim, shape, torch.Generator().manual_seed(args.seed), progress=False, prediction_type="eps")

    def ours_run(sampler: Sampler) -> Callable[[], torch.Tensor]:
        return lambda: generate(
            model, process, sampler, shape, torch.Generator().manual_seed(args.seed), progress=False, prediction_type="eps"
        )

    def diffusers_ddim() -> torch.Tensor:
        return pipeline(
            batch_size=batch,
            generator=torch.Generator().manual_seed(args.seed),
            eta=0.0,
            num_inference_steps=steps,
            output_type="pt",
        ).images

    # Both DDIM loops visit the same timesteps and take the same step from the same inputs.
    pipeline.scheduler.set_timesteps(steps)
    grid = ddim.timesteps(process.num_timesteps)
    if pipeline.scheduler.timesteps.tolist() != grid.tolist():
        raise RuntimeError(f"timestep grids differ: {pipeline.scheduler.timesteps.tolist()} vs {grid.tolist()}")
    g = torch.Generator().manual_seed(args.seed)
    step_diff = 0.0
    for t_now, t_prev in zip(grid.tolist(), prev_timesteps(grid).tolist()):
        x_t, eps = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
        ours = ddim.step(process, eps, t_now, t_prev, x_t, prediction_type="eps").prev_sample
        theirs = pipeline.scheduler.step(eps, t_now, x_t).prev_sample
        step_diff = max(step_diff, (ours - theirs).abs().max().item())

    # Warm-up (allocator, oneDNN kernels), and the end-to-end difference.
    forward()
    model(x, t.float())  # the fractional-timestep path (Karras sigmas) too
    a = (ours_ddim() / 2 + 0.5).clamp(0, 1)
    b = diffusers_ddim()
    max_diff = (a - b.reshape(a.shape)).abs().max().item()

    runs: dict[str, Callable[[], torch.Tensor]] = {"ddim": ours_ddim, "pipeline": diffusers_ddim}
    nfe = {"ddim": steps, "pipeline": steps}
    for sampler in others:
        key = sampler.key_part(process.num_timesteps)
        runs[key], nfe[key] = ours_run(sampler), sampler.nfe(process.num_timesteps)
    times: dict[str, list[float]] = {"forward": [], **{k: [] for k in runs}}
    outside: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeats):
        times["forward"].extend(timed(forward) for _ in range(args.forward_repeats))
        for name, run in runs.items():
            in_network[0] = 0.0
            wall = timed(run)
            times[name].append(wall)
            outside[name].append((wall - in_network[0]) / wall)
    med = {k: statistics.median(v) for k, v in times.items()}

    def row(name: str, key: str) -> str:
        seconds = med[key]
        if key == "forward":
            return f"| {name} | 1 | {seconds:.3f} | {1000 * seconds / batch:.1f} | - | - | - |"
        floor = nfe[key] * med["forward"]
        over = 100 * (seconds - floor) / floor
        share = 100 * statistics.median(outside[key])
        return (
            f"| {name} | {nfe[key]} | {seconds:.3f} | {1000 * seconds / batch:.1f} | {floor:.2f} "
            f"| {over:+.1f}% | {share:.2f}% |"
        )

    print(
        f"Sampling, DiffusersUNet defaults ({count_parameters(model) / 1e6:.2f}M params), "
        f"{batch} x {shape[1]}x{shape[2]}x{shape[3]}, {steps} steps, medians of {repeats} interleaved "
        f"repeats ({repeats * args.forward_repeats} for the forward); torch {torch.__version__}, "
        f"{args.threads} threads, {cpu_model()}\n"
    )
    print(
        "| run | NFE | median wall (s) | ms / image | NFE x forward (s) | overhead vs floor "
        "| time outside the network |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(row("backbone forward (1 NFE)", "forward"))
    print(row("difflab DDIM (eta=0, trailing)", "ddim"))
    print(row("diffusers DDIMPipeline (same weights)", "pipeline"))
    for key in runs:
        if key not in ("ddim", "pipeline"):
            print(row(f"difflab `{key}`", key))
    print()
    print(f"difflab DDIM / DDIMPipeline wall-time ratio: {med['ddim'] / med['pipeline']:.3f}")
    print(f"DDIM step agreement (same x_t and eps, all {steps} steps): max |difference| {step_diff:.1e}")
    print(f"max |difference| between the two DDIM samples in [0, 1] (untrained network): {max_diff:.2e}")
    print("wall times per repeat (s): " + "; ".join(f"{k} " + ", ".join(f"{v:.2f}" for v in times[k]) for k in runs))


if __name__ == "__main__":
    main()
