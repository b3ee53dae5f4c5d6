from __future__ import annotations

import pytest
import torch

from difflab.backbones import BACKBONES, MLP, count_parameters

from .conftest import assert_grads_reach_all_parameters


def test_shape_and_count():
    m = MLP()
    assert BACKBONES["mlp"] is MLP
    assert count_parameters(m) == 610_050
    assert m(torch.randn(5, 2), torch.randint(0, 1000, (5,))).shape == (5, 2)
    assert MLP(dim=3, hidden=16, depth=1)(torch.randn(4, 3), torch.tensor(7)).shape == (4, 3)


def test_depends_on_t_and_y():
    m = MLP(hidden=32, depth=2, num_classes=4)
    x = torch.randn(1, 2).expand(2, -1)
    out = m(x, torch.tensor([10, 900]))
    assert not torch.allclose(out[0], out[1])
    out = m(x, torch.tensor([5, 5]), torch.tensor([0, 3]))
    assert not torch.allclose(out[0], out[1])
    torch.testing.assert_close(m(x, torch.tensor(5)), m(x, torch.tensor(5), torch.tensor([4, 4])))


def test_bad_input_raises():
    with pytest.raises(ValueError, match=r"expects input of shape \(B, 2\), got \(4, 3\)"):
        MLP()(torch.randn(4, 3), torch.tensor([1, 2, 3, 4]))
    with pytest.raises(ValueError, match="num_classes=None"):
        MLP()(torch.randn(2, 2), torch.tensor([1, 2]), torch.tensor([0, 1]))


def test_gradients_reach_all_parameters():
    m = MLP(hidden=32, depth=2, num_classes=2)
    assert_grads_reach_all_parameters(m, torch.randn(3, 2), torch.tensor([1, 2, 3]), torch.tensor([0, 1, 2]))
