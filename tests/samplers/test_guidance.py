"""Classifier-free guidance in the loop (ModelFn), for every sampler: the formula, one batched
forward, w = 1 / w = 0 as the conditional / unconditional model, NFE, rescale and interval."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from difflab.diffusion.process import GaussianDiffusion
from difflab.samplers import SAMPLERS, DDIMSampler, ModelFn, generate
from difflab.samplers.base import vp_sigmas
from difflab.samplers.guidance import Guidance, apply_guidance, guidance_key, guided_nfe, rescale_guided

T = 100


class ClassNet(nn.Module):
    """A conditional toy network: its output depends on x, t and the label (row K: null)."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.num_classes = num_classes
        self.conv = nn.Conv2d(1, 1, 3, padding=1)
        self.emb = nn.Embedding(num_classes + 1, 1)
        self.batches: list[int] = []

    def forward(self, x, t, y=None):
        self.batches.append(x.shape[0])
        y = torch.full((x.shape[0],), self.num_classes, dtype=torch.long) if y is None else y
        return torch.tanh(self.conv(x) + self.emb(y).reshape(-1, 1, 1, 1)) + 1e-3 * t.float().reshape(-1, 1, 1, 1)


@pytest.fixture(scope="module")
def process() -> GaussianDiffusion:
    return GaussianDiffusion.from_schedule("cosine", T)


def _sampler(name: str):
    return SAMPLERS[name](num_steps=5) if name != "ddpm" else SAMPLERS[name](num_steps=5)


def _run(net, process, sampler, y, **kw):
    return generate(net, process, sampler, (3, 1, 6, 6), [torch.Generator().manual_seed(i) for i in range(3)],
                    progress=False, prediction_type="eps", y=y, **kw)


def test_one_batched_forward_gives_the_guided_combination():
    net = ClassNet()
    x, y = torch.randn(4, 1, 6, 6), torch.tensor([0, 1, 2, 1])
    fn = ModelFn(net, y, guidance=Guidance(2.5), null_label=3)
    out = fn(x, 40)
    assert net.batches == [8] and fn.calls == 2  # one forward of 2B, counted as 2 NFE
    t = torch.full((4,), 40)
    cond, uncond = net(x, t, y), net(x, t, torch.full_like(y, 3))
    torch.testing.assert_close(out, uncond + 2.5 * (cond - uncond), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_w1_is_the_conditional_model_and_w0_the_unconditional_one(process, name):
    net, sampler, y = ClassNet(), _sampler(name), torch.tensor([0, 1, 2])
    conditional = _run(net, process, sampler, y)
    unconditional = _run(net, process, sampler, torch.full_like(y, 3))
    assert torch.equal(_run(net, process, sampler, y, guidance_scale=1.0, guidance_rescale=0.0), conditional)
    assert torch.equal(_run(net, process, sampler, y, guidance_scale=0.0), unconditional)
    guided = _run(net, process, sampler, y, guidance_scale=3.0)
    assert torch.isfinite(guided).all() and not torch.allclose(guided, conditional)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_a_guided_step_counts_two_nfe(process, name):
    sampler = _sampler(name)
    nfe = sampler.nfe(T)
    assert guided_nfe(process, sampler, "eps", Guidance(2.0)) == 2 * nfe
    assert guided_nfe(process, sampler, "eps", Guidance(1.0)) == nfe
    assert guided_nfe(process, sampler, "eps", Guidance(0.0)) == nfe


def test_interval_guides_only_inside_it(process):
    sampler = DDIMSampler(num_steps=10)
    sigmas = vp_sigmas(process)[sampler.timesteps(T)]
    lo, hi = float(sigmas[6]), float(sigmas[2])  # (lo, hi]: steps 2..5 are guided
    assert guided_nfe(process, sampler, "eps", Guidance(2.0, interval=(lo, hi))) == 10 + 4
    net, y = ClassNet(), torch.tensor([0, 1, 2])
    empty = _run(net, process, sampler, y, guidance_scale=4.0, guidance_interval=[1e-9, 2e-9])
    assert torch.equal(empty, _run(net, process, sampler, y))  # no step inside: the conditional model


def test_rescale_matches_lin_et_al():
    torch.manual_seed(0)
    cond, uncond = torch.randn(3, 1, 5, 5), torch.randn(3, 1, 5, 5)
    guided = apply_guidance(cond, uncond, 4.0)
    full = rescale_guided(guided, cond, 1.0)
    torch.testing.assert_close(full.std(dim=(1, 2, 3)), cond.std(dim=(1, 2, 3)))
    half = apply_guidance(cond, uncond, 4.0, rescale=0.7)
    torch.testing.assert_close(half, 0.7 * full + 0.3 * guided)
    assert torch.equal(rescale_guided(guided, cond, 0.0), guided)


def test_bad_guidance_fails_in_one_line(process):
    net = ClassNet()
    with pytest.raises(ValueError, match="needs class labels"):
        _run(net, process, DDIMSampler(num_steps=3), None, guidance_scale=2.0)
    plain = nn.Conv2d(1, 1, 1)
    with pytest.raises(ValueError, match="null label"):
        generate(lambda x, t, y=None: plain(x), process, DDIMSampler(num_steps=3), (1, 1, 4, 4), torch.Generator(),
                 progress=False, prediction_type="eps", y=torch.tensor([0]), guidance_scale=2.0)
    for bad, match in ((dict(scale=-1.0), "guidance_scale"), (dict(rescale=1.5), "guidance_rescale"),
                       (dict(interval=(2.0, 1.0)), "guidance_interval")):
        with pytest.raises(ValueError, match=match):
            Guidance(**bad)


def test_key_names_scale_options_nfe_and_labels():
    assert guidance_key(Guidance(2.0), 100, "uniform") == "cfg2_nfe100_uniform"
    assert guidance_key(Guidance(1.5, 0.7, (0.28, 5.42)), 80, "class3") == "cfg1.5_rescale0.7_int0.28-5.42_nfe80_class3"
    assert guidance_key(None, 50) is None
