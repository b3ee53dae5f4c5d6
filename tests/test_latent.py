"""LatentDiffusionModule: scaled posterior latents, decoding, the scale from the data and in checkpoints."""

from __future__ import annotations

import math

import pytest
import torch

from difflab.diffusion.objectives import DiffusionObjective
from difflab.diffusion.process import GaussianDiffusion
from difflab.diffusion.schedules import linear_beta_schedule
from difflab.errors import CheckpointError
from difflab.first_stage import FirstStage, build_autoencoder_kl
from difflab.latent import LatentDiffusionModule, clip_for_latents, latent_bound_of
from difflab.samplers import DDIMSampler


def _first_stage(seed=0, scaling_factor=None):
    torch.manual_seed(seed)
    vae = build_autoencoder_kl(1, block_out_channels=(8, 8, 8), latent_channels=2, norm_num_groups=4)
    return FirstStage(vae, (1, 28, 28), latent_multiple=4, scaling_factor=scaling_factor)


class Backbone(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x, t):
        return self.conv(x)


def _module(first_stage, sample_posterior=True):
    return LatentDiffusionModule(
        first_stage=first_stage, sample_posterior=sample_posterior, backbone=Backbone(),
        process=GaussianDiffusion(linear_beta_schedule(100)), objective=DiffusionObjective(target="eps"),
        sampler=DDIMSampler(num_steps=2), optimizer=torch.optim.AdamW,
    )


def test_the_module_samples_the_latent_shape_and_keeps_the_autoencoder_out_of_its_state():
    m = _module(_first_stage())
    assert m.image_shape == (2, 8, 8) and m.data_shape == (1, 28, 28)
    assert not any(k.startswith(("first_stage", "vae")) for k in m.state_dict())
    assert {"latent_scale", "latent_shift"} <= set(m.state_dict())
    assert math.isnan(float(m.latent_scale))  # set from the data at fit start


def test_latents_are_scaled_posterior_draws_and_decode_inverts_the_scale():
    fs = _first_stage()
    m = _module(fs, sample_posterior=False)
    m.latent_scale.fill_(2.5)
    m.latent_shift.fill_(0.1)
    mean, logvar = torch.randn(3, 2, 8, 8), torch.full((3, 2, 8, 8), -2.0)
    moments = torch.cat([mean, logvar], 1)
    torch.testing.assert_close(m.to_latents(moments, torch.Generator().manual_seed(0)), (mean - 0.1) * 2.5)
    torch.testing.assert_close(m.decode((mean - 0.1) * 2.5), fs.decode(mean), atol=1e-5, rtol=1e-5)
    m.sample_posterior = True
    many = torch.cat([moments] * 400)
    z = m.to_latents(many, torch.Generator().manual_seed(0)) / 2.5 + 0.1  # unscaled draws
    z = z.reshape(400, 3, 2, 8, 8)
    torch.testing.assert_close(z.mean(0), mean, atol=0.08, rtol=0)  # 4.4 standard errors
    assert float(z.std(0).mean()) == pytest.approx(math.exp(-1.0), rel=0.05)  # exp(logvar / 2)


def test_a_pretrained_scaling_factor_is_used_as_given():
    m = _module(_first_stage(scaling_factor=0.18215))
    assert float(m.latent_scale) == pytest.approx(0.18215)


def test_the_scale_is_set_once_from_the_data_and_resume_keeps_it():
    class DM:
        def latent_std(self, sample_posterior):
            return 4.0

        def posterior(self, split):
            return torch.full((2, 2, 8, 8), 8.0), torch.full((2, 2, 8, 8), -60.0)

    class Trainer:
        datamodule, callbacks = DM(), []

    m = _module(_first_stage())
    m._trainer = Trainer()
    m.on_fit_start()
    assert float(m.latent_scale) == pytest.approx(0.25) and float(m.latent_bound) == pytest.approx(2.0, rel=1e-5)
    m.latent_scale.fill_(0.5)  # as loaded from a checkpoint
    m.latent_bound.fill_(3.0)
    m.on_fit_start()
    assert float(m.latent_scale) == 0.5 and float(m.latent_bound) == 3.0 and m.sampler.clip_range == 3.0


def test_a_checkpoint_of_another_autoencoder_does_not_resume():
    m = _module(_first_stage(0))
    m.latent_scale.fill_(1.0)
    ckpt = {"difflab": {}}
    m.on_save_checkpoint(ckpt)
    assert ckpt["difflab"]["first_stage"]["latent_scale"] == 1.0 and ckpt["difflab"]["data_shape"] == [1, 28, 28]
    m.on_load_checkpoint(ckpt)  # the same autoencoder
    with pytest.raises(CheckpointError, match="another autoencoder"):
        _module(_first_stage(1)).on_load_checkpoint(ckpt)


def test_latent_samplers_clip_x0_to_the_latents_range_or_not_at_all():
    s = DDIMSampler(num_steps=2)
    assert s.clip_sample and s.clip_range == 1.0
    assert clip_for_latents(s, None).clip_sample is False
    s = clip_for_latents(s, 4.5)
    assert s.clip_sample and s.clip_range == 4.5
    assert clip_for_latents(s, math.nan).clip_sample is False
    assert _module(_first_stage()).sampler.clip_sample is False  # until the bound is known
    # a sampler configured unclipped stays unclipped once the bound is known (the FID callback's,
    # a checkpoint's), and its key names it; one configured with its own range is told it is replaced
    s = clip_for_latents(DDIMSampler(num_steps=10, clip_sample=False), None)
    s = clip_for_latents(s, 4.5)
    assert s.clip_sample is False and s.key_part(1000) == "ddim10_noclip" and "_clip_requested" not in repr(s)
    s = clip_for_latents(clip_for_latents(DDIMSampler(num_steps=10), None), 4.5)
    assert s.clip_sample and s.clip_range == 4.5 and s.key_part(1000) == "ddim10"


def test_a_latent_models_own_clipping_is_not_named_in_its_metric_key():
    """The bound each run computes is the model's setting, not a user's change: the key stays
    ``ddim10``; a change the user makes on top of it is named."""
    s = clip_for_latents(DDIMSampler(num_steps=10, eta=1.0), 4.5)
    assert s.key_part(1000) == "ddim10_eta1"
    s.clip_range = 2.0
    assert s.key_part(1000) == "ddim10_eta1_clip2"
    s = clip_for_latents(DDIMSampler(num_steps=10), None)  # bound unknown: unclipped, as LDM samples
    assert s.key_part(1000) == "ddim10"
    s.clip_sample = True  # clipping to [-1, 1] where the model does not clip
    assert s.key_part(1000) == "ddim10_clip1"
    assert DDIMSampler(num_steps=10, clip_sample=False).key_part(1000) == "ddim10_noclip"  # pixels: named
    s = clip_for_latents(DDIMSampler(num_steps=10), 4.5, clip=False)  # the user turns the model's clipping off
    assert s.clip_sample is False and s.key_part(1000) == "ddim10_noclip"
    assert clip_for_latents(DDIMSampler(num_steps=10), None, clip=False).key_part(1000) == "ddim10"  # nothing to turn off


def test_the_bound_is_the_largest_scaled_latent_with_three_posterior_stds():
    mean = torch.tensor([[0.5, -2.0], [1.0, 0.0]]).view(2, 1, 1, 2)
    logvar = torch.full_like(mean, math.log(0.01))  # std 0.1
    assert latent_bound_of(mean, logvar, scale=2.0, shift=0.5, sample_posterior=False) == pytest.approx(5.0)
    assert latent_bound_of(mean, logvar, scale=2.0, shift=0.5) == pytest.approx((2.5 + 0.3) * 2.0)


def test_fit_start_sets_scale_and_bound_from_the_data_and_clips_every_sampler():
    from difflab.samplers import EulerSampler

    fs = _first_stage()
    mean, logvar = torch.randn(5, 2, 8, 8) * 3 + 1, torch.full((5, 2, 8, 8), -4.0)

    class DM:
        def latent_std(self, sample_posterior):
            return 2.0

        def posterior(self, split):
            return mean, logvar

    class FIDLike:
        sampler = EulerSampler(num_steps=3)

    class Trainer:
        datamodule, callbacks = DM(), [FIDLike()]

    m = _module(fs, sample_posterior=True)
    m._trainer = Trainer()
    m.on_fit_start()
    expected = float(((mean.abs() + 3 * math.exp(-2.0)) * 0.5).max())
    assert float(m.latent_bound) == pytest.approx(expected) and m.clip_bound == pytest.approx(expected)
    for s in (m.sampler, FIDLike.sampler):
        assert s.clip_sample and s.clip_range == pytest.approx(expected)
    ckpt = {"difflab": {}}
    m.on_save_checkpoint(ckpt)
    assert ckpt["difflab"]["first_stage"]["latent_bound"] == pytest.approx(expected)
    off = _module(fs)
    off.clip_latents = False
    off._trainer = Trainer()
    off.on_fit_start()
    assert off.clip_bound is None and not off.sampler.clip_sample and math.isfinite(float(off.latent_bound))


def test_a_checkpoint_without_the_bound_resumes_and_gets_it_from_the_data():
    m = _module(_first_stage())
    state = {k: v for k, v in m.state_dict().items() if k != "latent_bound"}
    ckpt = {"state_dict": state, "difflab": {}}
    m.on_load_checkpoint(ckpt)
    assert math.isnan(float(ckpt["state_dict"]["latent_bound"]))
    m.load_state_dict(ckpt["state_dict"])


@pytest.mark.parametrize("name", sorted(__import__("difflab.samplers", fromlist=["SAMPLERS"]).SAMPLERS))
def test_every_sampler_draws_latents_that_decode_to_images(name):
    from difflab.evaluation import draw
    from difflab.samplers import SAMPLERS

    m = _module(_first_stage())
    m.latent_scale.fill_(1.0)
    sampler = clip_for_latents(SAMPLERS[name](num_steps=2), 3.0)
    ((_, x),) = draw(m.backbone.eval(), m.process, sampler, "eps", m.image_shape, 2, batches=[0], decode=m.decode)
    assert x.dtype == torch.uint8 and x.shape == (2, 1, 28, 28)


class IdealDenoiser(torch.nn.Module):
    """The eps of the exact posterior mean E[z_0 | z_t] under the empirical distribution of
    ``points`` (the optimal denoiser of a finite training set): a deterministic sampler driven by
    it ends on one of the points, so the latent sample path can be checked without training."""

    def __init__(self, points, alphas_cumprod):
        super().__init__()
        self.points = points.double().flatten(1)
        self.ab = alphas_cumprod.double()
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # a device for the loop

    def forward(self, x, t, y=None):
        t = t.double()
        lo = t.floor().long().clamp(0, len(self.ab) - 1)
        hi = (lo + 1).clamp(max=len(self.ab) - 1)
        frac = (t - lo).unsqueeze(1)
        ab = self.ab[lo].unsqueeze(1) * (1 - frac) + self.ab[hi].unsqueeze(1) * frac
        xf = x.double().flatten(1)
        logits = -ab * torch.cdist(xf / ab.sqrt(), self.points) ** 2 / (2 * (1 - ab))  # -|x - sqrt(ab) z|^2 / 2(1-ab)
        x0 = torch.softmax(logits, dim=1) @ self.points
        return ((xf - ab.sqrt() * x0) / (1 - ab).sqrt()).view_as(x).to(x.dtype)


def test_the_latent_sample_path_decodes_what_the_ideal_denoiser_of_the_training_latents_draws():
    """Scale, shift, the unclipped sampler and the decode fit together: samples of the optimal
    denoiser of the scaled training latents decode to the decoded training images themselves."""
    from difflab.evaluation import draw

    fs = _first_stage()
    torch.manual_seed(1)
    images = torch.rand(6, 1, 28, 28) * 2 - 1
    mean, logvar = fs.encode(images)
    m = _module(fs, sample_posterior=False)
    m.latent_scale.fill_(1.0 / float(mean.std()) * 3.0)  # scaled latents well beyond [-1, 1]
    m.latent_shift.fill_(0.2)
    points = m.to_latents(torch.cat([mean, logvar], 1), None)
    assert float(points.abs().max()) > 2.0
    model = IdealDenoiser(points, m.process.alphas_cumprod)
    sampler = clip_for_latents(DDIMSampler(num_steps=20), float(points.abs().max()))
    ((_, x),) = draw(model, m.process, sampler, "eps", m.image_shape, 8, batches=[0], decode=m.decode)
    decoded = ((fs.decode(mean) + 1) * 127.5).round()
    distance = (x.double()[:, None] - decoded.double()[None]).abs().amax(dim=(2, 3, 4))  # (samples, points)
    assert float(distance.min(1).values.max()) <= 1.0  # every sample is a training image, to one level
