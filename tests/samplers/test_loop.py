"""generate(): reproducibility, trajectory, model call convention."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from difflab.diffusion.process import GaussianDiffusion
from difflab.samplers import DDIMSampler, DDPMSampler, HeunSampler, Trajectory, generate


class TinyNet(nn.Module):
    def __init__(self, channels: int = 1) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.calls: list[tuple[torch.Tensor, torch.Tensor | None]] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        self.calls.append((t.clone(), y))
        return torch.tanh(self.conv(x)) + 1e-3 * t.float().reshape(-1, 1, 1, 1)


@pytest.fixture(scope="module")
def process() -> GaussianDiffusion:
    return GaussianDiffusion.from_schedule("cosine", 100)


@pytest.mark.parametrize("sampler", [DDPMSampler(num_steps=20), DDIMSampler(num_steps=10, eta=0.5)])
def test_reproducible_bit_for_bit(process, sampler) -> None:
    net = TinyNet()
    a = generate(
        net, process, sampler, (3, 1, 8, 8), torch.Generator().manual_seed(42), progress=False, prediction_type="eps"
    )
    b = generate(
        net, process, sampler, (3, 1, 8, 8), torch.Generator().manual_seed(42), progress=False, prediction_type="eps"
    )
    c = generate(
        net, process, sampler, (3, 1, 8, 8), torch.Generator().manual_seed(43), progress=False, prediction_type="eps"
    )
    assert a.shape == (3, 1, 8, 8) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.abs().max() <= 1.0 + 1e-6  # the last step returns the clipped x_0 estimate


def test_trajectory(process) -> None:
    net = TinyNet()
    sampler = DDIMSampler(num_steps=7)
    x, traj = generate(
        net, process, sampler, (2, 1, 4, 4), torch.Generator().manual_seed(0), return_trajectory=True,
        progress=False, prediction_type="eps"
    )
    assert isinstance(traj, Trajectory)
    assert torch.equal(traj.timesteps, sampler.timesteps(100))
    assert len(traj.x_t) == 8 and len(traj.pred_x0) == 7
    assert all(s.shape == (2, 1, 4, 4) for s in traj.x_t + traj.pred_x0)
    assert torch.equal(traj.x_t[-1], x)
    # x_T is the first draw of the generator
    x_T = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(traj.x_t[0], x_T)
    # each state follows from the previous by one step
    prev = [int(t) for t in traj.timesteps[1:]] + [-1]
    for i, (t, t_prev) in enumerate(zip(traj.timesteps.tolist(), prev)):
        with torch.inference_mode():
            out = net(traj.x_t[i], torch.full((2,), t))
        step = sampler.step(process, out, t, t_prev, traj.x_t[i], prediction_type="eps")
        torch.testing.assert_close(step.prev_sample, traj.x_t[i + 1])
        torch.testing.assert_close(step.pred_x0, traj.pred_x0[i])
    # the same run without the trajectory gives the same sample
    y = generate(
        net, process, sampler, (2, 1, 4, 4), torch.Generator().manual_seed(0), progress=False, prediction_type="eps"
    )
    assert torch.equal(x, y)


def test_model_call_convention(process) -> None:
    net = TinyNet()
    labels = torch.tensor([3, 1])
    generate(
        net, process, DDPMSampler(num_steps=5), (2, 1, 4, 4), torch.Generator(),
        progress=False, prediction_type="eps", y=labels
    )
    assert len(net.calls) == 5
    expected = DDPMSampler(num_steps=5).timesteps(100).tolist()
    for (t, y), t_expected in zip(net.calls, expected):
        assert t.dtype == torch.long and t.shape == (2,) and t.tolist() == [t_expected] * 2
        assert torch.equal(y, labels)
    net.calls.clear()
    generate(
        net, process, DDPMSampler(num_steps=2), (2, 1, 4, 4), torch.Generator(), progress=False, prediction_type="eps"
    )
    assert all(y is None for _, y in net.calls)


def test_inference_mode_and_device(process) -> None:
    x = generate(
        TinyNet(), process, DDIMSampler(num_steps=2), (1, 1, 4, 4), torch.Generator(),
        progress=True, prediction_type="eps"
    )
    assert torch.is_inference(x)
    assert x.device.type == "cpu"
    # a plain callable (no parameters) samples on the process' device
    x = generate(
        lambda x, t: torch.zeros_like(x), process, DDIMSampler(num_steps=2), (2, 2), torch.Generator(),
        progress=False, prediction_type="eps"
    )
    assert x.device == process.betas.device and x.shape == (2, 2)


def test_bad_inputs(process) -> None:
    net = TinyNet()
    with pytest.raises(ValueError, match="generator"):
        generate(
            net, process, DDIMSampler(num_steps=2), (1, 1, 4, 4), None, progress=False, prediction_type="eps"
        )  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shape"):
        generate(
            net, process, DDIMSampler(num_steps=2), (0, 1, 4, 4), torch.Generator(),
            progress=False, prediction_type="eps"
        )
    with pytest.raises(ValueError, match="y must have batch size 2"):
        generate(
            net, process, DDIMSampler(num_steps=2), (2, 1, 4, 4), torch.Generator(),
            progress=False, prediction_type="eps", y=torch.zeros(3)
        )
    with pytest.raises(ValueError, match="num_steps.*101"):
        generate(
            net, process, DDIMSampler(num_steps=101), (1, 1, 4, 4), torch.Generator(),
            progress=False, prediction_type="eps"
        )
    with pytest.raises(ValueError, match="sampler"):
        generate(
            net, process, "ddim", (1, 1, 4, 4), torch.Generator(), progress=False, prediction_type="eps"
        )  # type: ignore[arg-type]


def test_fractional_timesteps_and_several_calls_per_step(process) -> None:
    net = TinyNet()
    sampler = HeunSampler(num_steps=3, use_karras_sigmas=True)
    steps = []
    x, traj = generate(
        net, process, sampler, (2, 1, 4, 4), torch.Generator().manual_seed(0), return_trajectory=True,
        progress=False, prediction_type="eps", on_step=lambda i, n: steps.append((i, n)),
    )
    assert steps == [(0, 3), (1, 3), (2, 3)]
    assert traj.timesteps.dtype == torch.float64 and traj.timesteps.shape == (3,)
    assert len(traj.x_t) == 4 and len(traj.pred_x0) == 3
    # Heun: t_0, then the correction at t_1; t_1, correction at t_2; t_2 (the last step is Euler)
    t = traj.timesteps.float().tolist()
    assert len(net.calls) == traj.nfe == sampler.nfe(100) == 5
    assert [c[0][0].item() for c in net.calls] == pytest.approx([t[0], t[1], t[1], t[2], t[2]])
    assert all(c[0].dtype == torch.float32 and c[0].shape == (2,) for c in net.calls)
    assert t[2] == 0 < t[1] < t[0] == 99 and t[1] != round(t[1])  # fractional: the timesteps of Karras sigmas
