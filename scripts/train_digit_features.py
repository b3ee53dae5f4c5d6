"""Train the ``digits`` feature network (difflab.metrics.DigitFeatures) on mnist5k/train.

    python scripts/train_digit_features.py            # writes src/difflab/metrics/weights/digits_mnist5k.safetensors

Deterministic: fixed seeds, ``torch.use_deterministic_algorithms(True)`` and a fixed number of
CPU threads, so the same machine and torch version produce the same weights. Trains on the
4,500 train digits only (light augmentation: random shifts of up to 2 px); reports accuracy on
the 500 held-out val digits, measured through ``DigitFeatures`` from the saved file (uint8 in,
the path every metric uses), and stores it in the file's metadata. A couple of minutes on a CPU.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from difflab.data.mnist5k import load_mnist5k
from difflab.metrics.features import DIGITS_WEIGHTS, DigitFeatures, DigitNet


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by an independent integer offset in [-max_shift, max_shift] (zero fill)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)  # -1 is the background in [-1, 1]
    offsets = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=generator)
    return torch.stack([padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets.tolist())])


def accuracy(extractor: DigitFeatures, images: np.ndarray, labels: np.ndarray) -> float:
    logits = extractor.logits(torch.from_numpy(images[:, None]))
    return float((logits.argmax(1).numpy() == labels).mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=DIGITS_WEIGHTS)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--max-shift", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)

    x_train, y_train = load_mnist5k("train")
    x_val, y_val = load_mnist5k("val")
    x = torch.from_numpy(x_train[:, None]).float().div(127.5).sub(1.0)  # same scaling as DigitFeatures
    y = torch.from_numpy(y_train)

    net = DigitNet()
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    steps_per_epoch = -(-len(x) // args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch)

    t0 = time.perf_counter()
    for epoch in range(args.epochs):
        net.train()
        perm = torch.randperm(len(x), generator=generator)
        total, correct, loss_sum = 0, 0, 0.0
        for start in range(0, len(x), args.batch_size):
            idx = perm[start : start + args.batch_size]
            xb = random_shift(x[idx], args.max_shift, generator) if args.max_shift else x[idx]
            logits = net(xb)
            loss = F.cross_entropy(logits, y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(idx)
            correct += int((logits.argmax(1) == y[idx]).sum())
            total += len(idx)
        print(
            f"epoch {epoch + 1}/{args.epochs}  loss {loss_sum / total:.4f}  "
            f"train acc (augmented) {correct / total:.4f}  {time.perf_counter() - t0:.0f}s",
            flush=True,
        )

    net.eval()
    with torch.no_grad():  # fix the feature scale: mean squared feature over the train split = 1
        f = torch.cat([net.penultimate(x[i : i + 500]) for i in range(0, len(x), 500)])
        net.feature_scale.fill_(float(f.double().pow(2).mean().rsqrt()))
    state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    metadata = {
        "arch": "DigitNet (conv5x5x32-conv5x5x64-conv3x3x64-fc128-fc10)",
        "feature_layer": "fc1 pre-activation (128-d) * feature_scale",
        "feature_scale": f"{float(net.feature_scale):.6g}",
        "train_data": "mnist5k/train (4500 digits)",
        "val_data": "mnist5k/val (500 digits)",
        "seed": str(args.seed),
        "epochs": str(args.epochs),
        "batch_size": str(args.batch_size),
        "lr": str(args.lr),
        "augmentation": f"random shift <= {args.max_shift}px",
        "torch": torch.__version__.split("+")[0],
    }
    # Measure val accuracy through DigitFeatures (uint8 in) from the saved file, then store it.
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "probe.safetensors"
        save_file(state, str(probe), metadata=metadata)
        val_acc = accuracy(DigitFeatures(probe), x_val, y_val)
    metadata["val_accuracy"] = f"{val_acc:.4f}"
    tmp_out = args.out.with_name(args.out.name + ".tmp")
    save_file(state, str(tmp_out), metadata=metadata)
    os.chmod(tmp_out, 0o644)
    os.replace(tmp_out, args.out)

    print(f"val accuracy (mnist5k/val, 500 held-out digits): {val_acc:.4f}")
    print(f"saved {args.out} ({args.out.stat().st_size / 1024:.0f} KiB) in {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
