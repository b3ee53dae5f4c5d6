"""Conditional evaluation: class accuracy by the digits classifier, guidance in the key (with
its doubled NFE), the balanced label set, and the guidance sweep's table and plot."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from difflab.diffusion.process import GaussianDiffusion
from difflab.evaluation import Evaluator, evaluate
from difflab.evaluation.guidance_sweep import guidance_sweep, write_sweep
from difflab.samplers import DDIMSampler
from difflab.samplers.guidance import Guidance


class Digits:
    """A data module stand-in with mnist5k's name, shape and classes."""

    name = "mnist5k"
    image_shape = (1, 28, 28)
    num_classes = 10

    def __init__(self, train: np.ndarray, val: np.ndarray) -> None:
        self.splits = {"train": train, "val": val}

    def real_images(self, split, n=None, seed=0):
        return self.splits[split] if n is None else self.splits[split][:n]


class DigitOracle(nn.Module):
    """Predicts x0 = a real val digit of class (y + shift) mod 10 whatever x and t: deterministic
    DDIM then ends on exactly that digit, so the samples' classes are known."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, shift: int = 0) -> None:
        super().__init__()
        self.num_classes = 10
        bank = [images[np.flatnonzero(labels == (k + shift) % 10)[0]] for k in range(10)]  # (labels: the classifier's)
        bank.append(images[0])  # the null label: some digit
        self.register_buffer("bank", torch.from_numpy(np.stack(bank)).float() / 127.5 - 1.0)

    def forward(self, x, t, y=None):
        return self.bank[y]


@pytest.fixture(scope="module")
def mnist_val(mnist_val, digits):
    """Val digits labelled by the digits classifier itself (its errors are not under test)."""
    images = mnist_val[0]
    return images, digits.logits(torch.from_numpy(images)).argmax(1).numpy()


@pytest.fixture(scope="module")
def setup(mnist_train, mnist_val, digits):
    data = Digits(mnist_train[0], mnist_val[0])
    return data, Evaluator(data, n=20, floor=False, extractor=digits, metrics=["fid"])


def _labels(n: int = 20) -> torch.Tensor:
    return torch.arange(n) % 10


def test_class_accuracy_counts_samples_of_their_class(setup, mnist_val):
    data, ev = setup
    process, sampler = GaussianDiffusion.from_schedule("cosine", 50), DDIMSampler(num_steps=3, eta=0.0)
    right = evaluate(DigitOracle(*mnist_val), process, sampler, "x0", ev, batch_size=7, labels=_labels(),
                     label_scheme="uniform")
    wrong = evaluate(DigitOracle(*mnist_val, shift=1), process, sampler, "x0", ev, batch_size=7, labels=_labels(),
                     label_scheme="uniform")
    key = "acc/digits/ddim3_cfg1_nfe3_uniform/n20"
    assert right.scores[key] == 1.0 and wrong.scores[key] == 0.0
    assert right.protocol["labels"] == "uniform" and right.protocol["nfe"] == 3


def test_guided_key_shows_the_guidance_and_the_doubled_nfe(setup, mnist_val):
    data, ev = setup
    process, sampler = GaussianDiffusion.from_schedule("cosine", 50), DDIMSampler(num_steps=4, eta=0.0)
    res = evaluate(DigitOracle(*mnist_val), process, sampler, "x0", ev, labels=_labels(), guidance=Guidance(2.0),
                   label_scheme="uniform")
    assert set(res.scores) == {"fid/digits/ddim4_cfg2_nfe8_uniform/n20", "acc/digits/ddim4_cfg2_nfe8_uniform/n20"}
    assert res.protocol["nfe"] == 8 and res.protocol["guidance_config"]["scale"] == 2.0
    with pytest.raises(ValueError, match="1 labels for n=20"):
        evaluate(DigitOracle(*mnist_val), process, sampler, "x0", ev, labels=torch.tensor([1]))


def test_no_accuracy_without_a_classifier_of_the_data(mnist_train, mnist_val, digits):
    fashion = Digits(mnist_train[0], mnist_val[0])
    fashion.name = "fashion_mnist"
    ev = Evaluator(fashion, n=10, floor=False, extractor=digits, metrics=["fid"])
    res = evaluate(DigitOracle(*mnist_val), GaussianDiffusion.from_schedule("cosine", 50), DDIMSampler(num_steps=2),
                   "x0", ev, labels=_labels(10), label_scheme="uniform")
    assert [k.split("/")[0] for k in res.scores] == ["fid"]


def test_sweep_rows_files_and_plot(setup, mnist_val, tmp_path):
    _, ev = setup
    process, sampler = GaussianDiffusion.from_schedule("cosine", 50), DDIMSampler(num_steps=2, eta=0.0)
    rows = guidance_sweep(DigitOracle(*mnist_val), process, sampler, "x0", ev, [1.0, 0.0], num_classes=10,
                          batch_size=10)
    assert [r["w"] for r in rows] == [1.0, 0.0] and [r["nfe"] for r in rows] == [2, 2]
    assert rows[0]["acc"] == 1.0 and rows[1]["acc"] < 0.5  # w=0 draws the null label's digit for every class
    files = write_sweep(rows, tmp_path, "test")
    assert files["csv"].read_text().splitlines()[0].startswith("w,fid,kid,kid_std,acc,nfe")
    assert "| 1 |" in files["md"].read_text() and files["png"].stat().st_size > 1000
