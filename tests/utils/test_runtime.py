"""tune_malloc: freed large blocks are reused instead of being unmapped and faulted in again."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

from difflab.errors import ConfigError
from difflab.utils.validation import validate_config
from tests.conftest import compose_train

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

# in a fresh interpreter: the page faults of allocating, filling and freeing a 64 MiB block 8 times
_PROBE = """
import json, resource, sys
import torch
from difflab.utils.runtime import malloc_tuned, tune_malloc
applied = tune_malloc(sys.argv[1] == "tuned")
torch.ones(16 << 20)  # first touch: the heap (or a mapping) grows once
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(8):
    torch.ones(16 << 20).sum()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"applied": applied, "tuned": malloc_tuned(), "faults": faults}))
"""


def _probe(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True,
                         env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's (Linux)")
def test_tuned_malloc_reuses_freed_blocks_instead_of_faulting_them_in_again():
    plain, tuned = _probe("plain"), _probe("tuned")
    assert plain["applied"] is False and plain["tuned"] is False
    assert tuned["applied"] is True and tuned["tuned"] is True
    pages = 8 * (64 << 20) // 4096  # 131,072 pages: what 8 fresh mappings fault in
    assert plain["faults"] > 0.5 * pages, plain  # glibc's default: every block mapped and unmapped anew
    assert tuned["faults"] < 0.35 * pages, tuned  # the same heap memory, reused (a block or two faulted in once)


# in a fresh interpreter: a digest of 3 AdamW steps and the loss of a small UNet at batch 16
_TRAIN = """
import hashlib, sys
import torch
from difflab.utils.runtime import tune_malloc
tune_malloc(sys.argv[1] == "tuned")
from difflab.backbones import UNet
torch.manual_seed(0)
net = UNet(image_size=28, in_channels=1, base_channels=16, channel_mult=[1, 2, 4], num_res_blocks=1,
           attention_resolutions=[14], norm_groups=8)
opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
x, t = torch.randn(16, 1, 28, 28), torch.randint(0, 1000, (16,))
for _ in range(3):
    loss = (net(x, t) - x).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
h = hashlib.sha256(loss.detach().numpy().tobytes())
for p in net.parameters():
    h.update(p.detach().numpy().tobytes())
print(h.hexdigest())
"""


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's (Linux)")
def test_tuned_malloc_trains_bit_for_bit_the_same_weights():
    digests = [subprocess.run([sys.executable, "-c", _TRAIN, mode], capture_output=True, text=True, check=True,
                              env={**__import__("os").environ, "OMP_NUM_THREADS": "2"}).stdout.strip()
               for mode in ("plain", "tuned")]
    assert len(digests[0]) == 64 and digests[0] == digests[1]


def test_tune_malloc_is_idempotent_and_false_leaves_it(monkeypatch):
    import difflab.utils.runtime as rt

    monkeypatch.setattr(rt, "_tuned", False)
    assert rt.tune_malloc(False) is False and not rt.malloc_tuned()
    monkeypatch.setattr(rt, "_glibc", lambda: None)  # macOS, musl, Windows: nothing to tune
    assert rt.tune_malloc() is False and not rt.malloc_tuned()


@pytest.mark.parametrize("value", ["yes", "1", "null"])
def test_malloc_tuning_takes_a_boolean(value):
    with pytest.raises(ConfigError, match="malloc_tuning"):
        validate_config(compose_train([f"malloc_tuning={value}"]))
    validate_config(compose_train(["malloc_tuning=false"]))
