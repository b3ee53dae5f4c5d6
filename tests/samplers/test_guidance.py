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


# ---------------------------------------------------------------- DDIM's eps under guidance
MIX_MEANS = torch.tensor([[-0.5, 0.5], [0.5, -0.5]], dtype=torch.float64)
MIX_STD = 0.1


def exact_class_model(process: GaussianDiffusion):
    """The exact eps of two well-separated classes N(mu_k, 0.1^2 I) in 2-D (label 2: null, the
    equal mixture): E[x0 | x_t, k] = mu_k + sqrt(ab) s^2 / (ab s^2 + 1 - ab) (x_t - sqrt(ab) mu_k)."""
    ab_all = process.alphas_cumprod

    def model(x_t, t, y):
        x, ab = x_t.double(), ab_all[t].unsqueeze(1)
        var = ab * MIX_STD**2 + (1 - ab)
        centres = ab.sqrt().unsqueeze(2) * MIX_MEANS
        logits = -0.5 * ((x.unsqueeze(1) - centres) ** 2).sum(-1) / var
        own = torch.nn.functional.one_hot(y.clamp(max=1), 2).bool()
        logits = torch.where((y == 2).unsqueeze(1), logits, torch.where(own, 0.0, -torch.inf))
        r = torch.softmax(logits, 1)
        cond = MIX_MEANS + (ab.sqrt() * MIX_STD**2 / var).unsqueeze(2) * (x.unsqueeze(1) - centres)
        x0 = (r.unsqueeze(2) * cond).sum(1)
        return ((x - ab.sqrt() * x0) / (1 - ab).sqrt()).to(x_t.dtype)

    model.num_classes = 2
    return model


def _mixture_samples(sampler, w, n=2000):
    process = GaussianDiffusion.from_schedule("cosine", 1000)
    y = torch.arange(n) % 2
    x = generate(exact_class_model(process), process, sampler, (n, 2), torch.Generator().manual_seed(0), progress=False,
                 prediction_type="eps", y=y, guidance_scale=w, null_label=2)
    return x.double(), y


def test_guided_ddim_stays_on_its_class_with_clipping():
    """Far-apart classes: p(x|k)^w p(x)^(1-w) is about p(x|k) near class k's mode, so guided
    samples should sit on N(mu_k, 0.1^2) for any w. Guidance pushes x_0 past [-1, 1]; with the
    model's eps after clipping (diffusers' default) the unclipped x_0 left in eps drags the
    samples off (mean |x| 0.36 instead of 0.5 at w = 3); DDIM's default re-derives eps under
    guidance and lands on the class."""
    for w in (3.0, 5.0):
        x, y = _mixture_samples(DDIMSampler(num_steps=50, eta=1.0), w)
        for k in (0, 1):
            torch.testing.assert_close(x[y == k].mean(0), MIX_MEANS[k], atol=0.03, rtol=0)
            assert 0.07 < float(x[y == k].std(0).mean()) < 0.13
    x, y = _mixture_samples(DDIMSampler(num_steps=50, eta=1.0, use_clipped_model_output=False), 3.0)
    assert float((x[y == 0].mean(0) - MIX_MEANS[0]).abs().max()) > 0.1  # the failure the default avoids


def test_ddim_rederives_eps_under_guidance_only_by_default():
    """use_clipped_model_output=None: the model's eps unguided (w = 1), the clipped x_0's eps guided."""
    process = GaussianDiffusion.from_schedule("cosine", 1000)
    net = exact_class_model(process)
    y = torch.arange(6) % 2

    def run(sampler, w):
        return generate(net, process, sampler, (6, 2), torch.Generator().manual_seed(1), progress=False,
                        prediction_type="eps", y=y, guidance_scale=w, null_label=2)

    auto, model_eps, clip_eps = (DDIMSampler(num_steps=10, eta=0.5, use_clipped_model_output=u) for u in (None, False, True))
    assert torch.equal(run(auto, 3.0), run(clip_eps, 3.0)) and not torch.equal(run(auto, 3.0), run(model_eps, 3.0))
    assert torch.equal(run(auto, 1.0), run(model_eps, 1.0))
    # without clipping the two eps are one: every setting gives the same samples
    free = [DDIMSampler(num_steps=10, eta=0.5, clip_sample=False, use_clipped_model_output=u) for u in (None, False, True)]
    outs = [run(s, 3.0) for s in free]
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=1e-5)
    torch.testing.assert_close(outs[0], outs[2], rtol=0, atol=1e-5)


def test_modelfn_says_whether_its_last_call_was_guided():
    net = ClassNet()
    x, y = torch.randn(2, 1, 6, 6), torch.tensor([0, 1])
    fn = ModelFn(net, y, guidance=Guidance(2.0, interval=(0.5, 2.0)), null_label=3, sigma_of_t=lambda t: t / 10)
    fn(x, 10)
    assert fn.guided  # sigma 1 inside the interval: two passes mixed
    fn(x, 30)
    assert not fn.guided  # sigma 3 outside: the conditional pass alone
    plain = ModelFn(net, y)
    plain(x, 10)
    assert not plain.guided  # no guidance at all
