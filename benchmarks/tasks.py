"""Editing with a trained model: inpainting (RePaint), image-to-image (SDEdit), super-resolution (SR3), anomaly scores (AnoDDPM).

    python benchmarks/tasks.py --ckpt RUN/checkpoints/last.ckpt --anomaly-ckpt RUN_NO7/checkpoints/last.ckpt \
        --sr-ckpt RUN_SR3/checkpoints/last.ckpt
    python benchmarks/tasks.py --quick          # tiny models trained in-process (without the digit 7; SR x2), < 1 min

Four tables, each on the val split of mnist5k (n digits, a fixed random subset, the same for
every table), drawn through the task functions that ``python sample.py task=...`` runs:

1. **Inpainting** a ``--box`` x ``--box`` centre square (14 x 14) with RePaint
   (:func:`difflab.tasks.inpaint.repaint`): how often the digits classifier (the ``digits``
   feature network, 98% on these digits) still gives the true label, against the same
   square filled with uniform noise (the baseline) and the untouched originals. Goal: >= 90%.
2. **img2img** (SDEdit) over strength: digits-FID of the results against the training split
   (:class:`difflab.evaluation.Evaluator`, n = the number of inputs) against the L2 (RMS, in
   [0, 1] pixel units) distance to the input: the realism-against-faithfulness curve.
3. **Anomaly** AUROC (torchmetrics) of the reconstruction error after noising to t, on a model
   trained without the digit ``--anomaly-class`` (``data.exclude_classes=[7]``): that digit is
   the anomaly. Goal: >= 0.8.
4. **Super-resolution** (SR3, ``task=super_resolution``) of the n val digits average-pooled by
   the checkpoint's factor (14 x 14 -> 28 x 28 for ``experiment=mnist5k_sr3``): PSNR, SSIM and
   digits-FID of the SR3 results and of bicubic upsampling (the baseline) against the
   originals / the training split. Goal: SR3 beats bicubic on FID.

``--quick`` trains one tiny UNet for a few steps without the digit 7 and runs the three tables
with short grids, on 20 digits (the anomaly table on all 500): it checks the pipeline, not the
quality.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import loadavg, machine, note, table, train_tiny  # noqa: E402


def build_sampler(entry: dict, T: int):
    from difflab.samplers import SAMPLERS

    sampler = SAMPLERS[entry["name"]](**{k: v for k, v in entry.items() if k != "name"})
    sampler.steps(T)
    return sampler


def val_digits(model, n: int):
    """n val digits (the fixed random subset of ``task.input=null``) and their labels."""
    from difflab.tasks.common import datamodule_of, load_inputs

    inputs = load_inputs(None, model, n, datamodule_of(model))
    return inputs.images, inputs.labels


def inpaint_table(model, args, images, labels, device):
    import torch

    from difflab.evaluation import eval_mode, sample_generators
    from difflab.metrics.features import build_feature_extractor
    from difflab.tasks.common import batches
    from difflab.tasks.inpaint import label_kept, make_masks, noise_filled, repaint, repaint_schedule, reverse_steps
    from difflab.utils.images import from_uint8, to_uint8

    sampler = build_sampler(args.inpaint_sampler, model.process.num_timesteps)
    S = sampler.steps(model.process.num_timesteps)
    nfe = reverse_steps(repaint_schedule(S, args.jump_length, args.jump_n_sample), S)
    fill = torch.from_numpy(make_masks("center", tuple(model.image_shape[1:]), len(images), box=args.box)).unsqueeze(1)
    t0, out = time.perf_counter(), []
    with eval_mode(model.backbone):
        for idx in batches(len(images), args.batch_size):
            x0 = from_uint8(images[idx.start : idx.stop]).to(device)
            x = repaint(model.backbone, model.process, sampler, model.objective.target, x0,
                        (~fill[idx.start : idx.stop]).to(device), sample_generators(args.seed, idx),
                        args.jump_length, args.jump_n_sample)
            out.append(to_uint8(x).cpu())
    secs = time.perf_counter() - t0
    result = torch.cat(out)
    known = (~fill).expand_as(images)
    assert torch.equal(result[known], images[known]), "the known pixels must be the input's"
    clf = build_feature_extractor("digits", device=device)
    rows = [
        ["RePaint", f"{label_kept(result, labels, clf):.1%}", nfe, f"{secs:.1f}"],
        ["noise-filled (baseline)", f"{label_kept(noise_filled(images, fill, args.seed), labels, clf):.1%}", 0, "-"],
        ["originals", f"{label_kept(images, labels, clf):.1%}", 0, "-"],
    ]
    setting = (f"{args.box}x{args.box} centre box, {sampler.key_part(model.process.num_timesteps)}, jump_length "
               f"{args.jump_length}, jump_n_sample {args.jump_n_sample}")
    return rows, setting


def img2img_table(model, args, images, device, cache_dir):
    import torch

    from difflab.evaluation import Evaluator, eval_mode, sample_generators
    from difflab.tasks.common import batches, datamodule_of
    from difflab.tasks.img2img import keep_steps, l2_to_input, partial_denoise
    from difflab.utils.images import from_uint8, to_uint8

    T = model.process.num_timesteps
    sampler = build_sampler(args.img2img_sampler, T)
    S = sampler.steps(T)
    evaluator = Evaluator(datamodule_of(model), "digits", ("fid",), len(images), cache_dir, device=device)
    rows = []
    for strength in args.strengths:
        keep = keep_steps(S, strength)
        if keep < 1:
            continue
        out, nfe, t0 = [], 0, time.perf_counter()
        with eval_mode(model.backbone):
            for idx in batches(len(images), args.batch_size):
                x, nfe = partial_denoise(model.backbone, model.process, sampler, model.objective.target,
                                         from_uint8(images[idx.start : idx.stop]).to(device), keep,
                                         sample_generators(args.seed, idx))
                out.append(to_uint8(x).cpu())
        result = torch.cat(out)
        fid = evaluator.score(iter([result]), len(result), args.seed)["fid"]
        rows.append([f"{strength:g}", keep, nfe, f"{float(l2_to_input(result, images).mean()):.4f}", f"{fid:.3f}",
                     f"{time.perf_counter() - t0:.1f}"])
    inputs_fid = evaluator.score(iter([images]), len(images), args.seed)["fid"]
    rows.append(["0 (the inputs)", 0, 0, "0", f"{inputs_fid:.3f}", "-"])
    floor = evaluator.floor()
    return rows, sampler.key_part(T), floor


def anomaly_table(model, args, device):
    import torch

    from difflab.evaluation import eval_mode
    from difflab.tasks.anomaly import auroc, reconstruction_scores

    T = model.process.num_timesteps
    sampler = build_sampler(args.anomaly_sampler, T)
    images, labels = val_digits(model, args.anomaly_n)
    anomalous = labels == args.anomaly_class
    excluded = list((model.config.get("data") or {}).get("exclude_classes") or [])
    rows = []
    for t in args.anomaly_t:
        t0 = time.perf_counter()
        with eval_mode(model.backbone):
            scores, _ = reconstruction_scores(model.backbone, model.process, sampler, model.objective.target, images,
                                              t, args.seed, args.batch_size, device, args.repeats)
        rows.append([t, f"{auroc(scores, anomalous):.3f}", f"{float(scores[~anomalous].mean()):.4f}",
                     f"{float(scores[anomalous].mean()):.4f}", f"{time.perf_counter() - t0:.1f}"])
    return rows, sampler.key_part(T), int(anomalous.sum()), excluded


def sr_table(model, args, images, device, cache_dir):
    import torch

    from difflab.evaluation import Evaluator, eval_mode, sample_generators
    from difflab.tasks.common import batches, datamodule_of
    from difflab.tasks.super_resolution import low_res_of, psnr_ssim, upscale
    from difflab.utils.images import from_uint8, to_uint8

    T = model.process.num_timesteps
    sampler = build_sampler(args.sr_sampler, T) if args.sr_sampler else model.sampler
    low_res = low_res_of(model)
    size = tuple(model.image_shape[1:])
    small = low_res.downsample(from_uint8(images))
    conditions = low_res.upsample(small, size)  # the network's y, and the bicubic baseline
    bicubic = to_uint8(conditions)
    t0, out = time.perf_counter(), []
    with eval_mode(model.backbone):
        for idx in batches(len(images), args.batch_size):
            out.append(to_uint8(upscale(model.backbone, model.process, sampler, model.objective.target,
                                        conditions[idx.start : idx.stop], sample_generators(args.seed, idx),
                                        device)).cpu())
    secs = time.perf_counter() - t0
    result = torch.cat(out)
    evaluator = Evaluator(datamodule_of(model), "digits", ("fid",), len(images), cache_dir, device=device)
    rows = []
    for name, x, nfe, sec in (("SR3", result, sampler.nfe(T), f"{secs:.1f}"), ("bicubic (baseline)", bicubic, 0, "-"),
                              ("originals", images, 0, "-")):
        psnr, ssim = psnr_ssim(x, images) if x is not images else (float("inf"), 1.0)
        fid = evaluator.score(iter([x]), len(x), args.seed)["fid"]
        rows.append([name, nfe, "inf" if psnr == float("inf") else f"{psnr:.2f}", f"{ssim:.4f}", f"{fid:.3f}", sec])
    floor = evaluator.floor()
    n_lr = tuple(small.shape[-2:])
    setting = (f"x{low_res.factor}, {n_lr[0]}x{n_lr[1]} -> {size[0]}x{size[1]}, {sampler.key_part(T)}; FID against "
               f"mnist5k/train, digits features; floor {', '.join(f'{k} = {v:.3f}' for k, v in floor.items()) or 'n/a'}")
    return rows, setting


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", help="a model of all of mnist5k (inpainting, img2img)")
    p.add_argument("--anomaly-ckpt", help="a model trained with data.exclude_classes=[<anomaly class>]")
    p.add_argument("--sr-ckpt", help="a super-resolution model (conditioning=low_res, e.g. experiment=mnist5k_sr3)")
    p.add_argument("--sr-sampler", default=None, help="name:steps of the SR sampler, e.g. ddim:50 (default: the checkpoint's)")
    p.add_argument("--quick", action="store_true", help="tiny models trained in-process, 20 digits")
    p.add_argument("--n", type=int, default=None, help="val digits (default 500; --quick 20)")
    p.add_argument("--box", type=int, default=14)
    p.add_argument("--jump-length", type=int, default=10)
    p.add_argument("--jump-n-sample", type=int, default=5)
    p.add_argument("--steps", type=int, default=None, help="grid steps of the samplers (default 100; --quick 6)")
    p.add_argument("--strengths", default="0.2,0.4,0.6,0.8,1.0")
    p.add_argument("--anomaly-class", type=int, default=7)
    p.add_argument("--anomaly-t", default="100,250,400", help="timesteps to noise to (comma-separated)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--anomaly-n", type=int, default=500, help="val digits scored for the AUROC (500: all)")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--cache-dir", default=None)
    args = p.parse_args()
    if not args.quick and not (args.ckpt or args.anomaly_ckpt or args.sr_ckpt):
        p.error("--ckpt, --anomaly-ckpt and/or --sr-ckpt are required (or --quick)")
    if args.sr_sampler:
        name, _, k = args.sr_sampler.partition(":")
        args.sr_sampler = {"name": name, **({"num_steps": int(k)} if k else {})}
    elif args.quick:
        args.sr_sampler = {"name": "ddim", "num_steps": 6}
    args.n = args.n or (20 if args.quick else 500)
    steps = args.steps or (6 if args.quick else 100)
    if args.quick:
        args.jump_length, args.jump_n_sample, args.anomaly_t = 2, 2, "400,700"
    args.strengths = [float(s) for s in args.strengths.split(",") if s]
    args.anomaly_t = [int(t) for t in args.anomaly_t.split(",") if t]
    args.inpaint_sampler = {"name": "ddpm", "num_steps": steps}
    args.img2img_sampler = {"name": "ddim", "num_steps": steps, "eta": 0.0}
    args.anomaly_sampler = {"name": "ddim", "num_steps": steps, "eta": 0.0}
    cmd = "python benchmarks/tasks.py" + "".join(f" {a}" for a in sys.argv[1:])

    from difflab.utils.checkpoint import load_model
    from difflab.utils.outputs import resolve_device

    device = resolve_device(args.device)
    loads = [loadavg()]
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache_dir or str(Path(tmp) / "real_stats")
        tiny = train_tiny(str(Path(tmp) / "tiny"), ["data.exclude_classes=[7]"]) if args.quick else None
        ckpt, anomaly_ckpt = (tiny, tiny) if args.quick else (args.ckpt, args.anomaly_ckpt)
        sr_ckpt = (train_tiny(str(Path(tmp) / "tiny_sr"), ["conditioning=low_res", "conditioning.factor=2"])
                   if args.quick else args.sr_ckpt)
        out = []
        if ckpt:
            model = load_model(ckpt)
            model.backbone.to(device), model.process.to(device)
            images, labels = val_digits(model, args.n)
            note(f"inpainting {len(images)} digits ...")
            rows, setting = inpaint_table(model, args, images, labels, device)
            loads.append(loadavg())
            out.append(f"### Inpainting ({setting}; n = {len(images)} val digits)\n\n" + table(
                ["fill-in", "digits classifier keeps the label", "NFE", "time (s)"], rows))
            note("img2img over strength ...")
            rows, key, floor = img2img_table(model, args, images, device, cache)
            loads.append(loadavg())
            out.append(f"### img2img (SDEdit, {key}; n = {len(images)}; FID against mnist5k/train, digits features; "
                       f"floor {', '.join(f'{k} = {v:.3f}' for k, v in floor.items()) or 'n/a'})\n\n" + table(
                ["strength", "steps", "NFE", "L2 to input (RMS)", "FID", "time (s)"], rows))
            ck_line = f"{ckpt}: global step {model.global_step}, {'EMA' if model.used_ema else 'raw'} weights"
        if anomaly_ckpt:
            model = load_model(anomaly_ckpt)
            model.backbone.to(device), model.process.to(device)
            note("anomaly scores ...")
            rows, key, n_anom, excluded = anomaly_table(model, args, device)
            loads.append(loadavg())
            if args.anomaly_class not in excluded:
                note(f"warning: {anomaly_ckpt} was trained with data.exclude_classes={excluded}, "
                     f"not {args.anomaly_class}")
            out.append(f"### Anomaly (AnoDDPM-style reconstruction MSE, {key}; digit {args.anomaly_class} held out "
                       f"of training (data.exclude_classes={excluded}); {n_anom} of {args.anomaly_n} val digits anomalous; "
                       f"{args.repeats} noise draw(s))\n\n" + table(
                ["t", "AUROC", "mean score, normal", "mean score, anomalous", "time (s)"], rows))

        if sr_ckpt:
            model = load_model(sr_ckpt)
            model.backbone.to(device), model.process.to(device)
            images, _ = val_digits(model, args.n)
            note(f"super-resolution of {len(images)} digits ...")
            rows, setting = sr_table(model, args, images, device, cache)
            loads.append(loadavg())
            out.append(f"### Super-resolution (SR3, {setting}; n = {len(images)} val digits; {sr_ckpt}: global step "
                       f"{model.global_step})\n\n" + table(["method", "NFE", "PSNR (dB)", "SSIM", "FID", "time (s)"], rows))
    print(f"Command: `{cmd}`\n")
    print(f"Machine: {machine()}")
    print(f"Load average (1/5/15 min) at the start and after each table: {' -> '.join(loads)}")
    print("Checkpoint: " + ("tiny UNet trained 4 steps in-process without the digit 7 (--quick)" if args.quick
                            else ck_line if args.ckpt else str(args.anomaly_ckpt or args.sr_ckpt)) + "\n")
    print("\n\n".join(out))


if __name__ == "__main__":
    main()
