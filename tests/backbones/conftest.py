from __future__ import annotations

import pytest
import torch
from torch import nn


def randomize_(module: nn.Module, seed: int = 0, std: float = 0.1) -> nn.Module:
    """Give every parameter a random value.

    The UNet starts its residual branches and output conv at zero (as DDPM/ADM do), so a
    fresh network outputs zeros; perturbing every weight lets the tests see the signal path.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    return module


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(min(threads, 2))
    yield
    torch.set_num_threads(threads)


def assert_grads_reach_all_parameters(model: nn.Module, *inputs) -> None:
    model.zero_grad(set_to_none=True)
    out = model(*inputs)
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing, f"no gradient reached: {missing}"
