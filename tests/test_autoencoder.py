"""AutoencoderModule: the KL in closed form, the L1/L2 loss, and the patch-GAN terms reaching only their own parameters."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from difflab.autoencoder import AutoencoderModule, PatchDiscriminator
from difflab.first_stage import build_autoencoder_kl


def _module(**kwargs):
    torch.manual_seed(0)
    vae = build_autoencoder_kl(1, block_out_channels=(8, 8, 8), latent_channels=2, norm_num_groups=4)
    return AutoencoderModule(vae=vae, optimizer=torch.optim.AdamW, image_shape=(1, 28, 28), latent_multiple=4, **kwargs)


def _step(m, x):
    m.log = m.log_dict = lambda *a, **k: None
    return m.training_step((x, torch.zeros(len(x), dtype=torch.long)), 0)


def test_shapes_and_the_latent_of_a_padded_digit():
    m = _module()
    x = torch.rand(2, 1, 28, 28) * 2 - 1
    rec, posterior = m(x)
    assert rec.shape == x.shape and posterior.mean.shape == (2, 2, 8, 8) and m.latent_shape == (2, 8, 8)
    assert m.reconstruct(x).abs().max() <= 1


def test_the_kl_is_the_closed_form_summed_over_latents():
    m = _module()
    _, posterior = m(torch.rand(3, 1, 28, 28) * 2 - 1)
    mu, logvar = posterior.mean, posterior.logvar
    closed = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=(1, 2, 3)).mean()
    torch.testing.assert_close(m._kl(posterior), closed)


@pytest.mark.parametrize("loss", ["l1", "l2"])
def test_the_loss_is_reconstruction_plus_weighted_kl(loss, monkeypatch):
    m = _module(loss=loss, kl_weight=0.5)
    x = torch.rand(2, 1, 28, 28) * 2 - 1
    seen = {}
    forward = m.forward

    def spy(x, generator=None):
        rec, post = forward(x, generator)
        seen["rec"], seen["post"] = rec, post
        return rec, post

    monkeypatch.setattr(m, "forward", spy)
    loss_value = _step(m, x)
    rec = (seen["rec"] - x).abs().mean() if loss == "l1" else F.mse_loss(seen["rec"], x)
    torch.testing.assert_close(loss_value, rec + 0.5 * seen["post"].kl().mean())


def test_bad_options_fail_naming_the_key():
    with pytest.raises(ValueError, match="model.loss"):
        _module(loss="l3")
    with pytest.raises(ValueError, match="model.kl_weight"):
        _module(kl_weight=-1.0)


def _grads(module, loss):
    module.zero_grad(set_to_none=True)
    loss.backward()
    return {n: None if p.grad is None else p.grad.clone() for n, p in module.named_parameters()}


def test_gan_terms_reach_only_their_own_parameters_after_the_start_step(monkeypatch):
    m = _module(gan_weight=0.3, gan_start_step=5)
    assert isinstance(m.discriminator, PatchDiscriminator)
    x = torch.rand(2, 1, 28, 28) * 2 - 1
    # before the start: the discriminator takes no part
    before = _grads(m, _step(m, x))
    assert all(g is None for n, g in before.items() if n.startswith("discriminator."))
    # after it: total gradients = autoencoder from rec + kl + w * g_loss, discriminator from the hinge loss
    monkeypatch.setattr(AutoencoderModule, "global_step", property(lambda self: 7))
    total = _grads(m, _step(m, x))
    g = torch.Generator().manual_seed(0)
    from difflab.module import _mix_seed

    g.manual_seed(_mix_seed(m.seed, 0, 7, 0))
    rec, post = m(x, g)
    d = m.discriminator
    ae_loss = (rec - x).abs().mean() + m.kl_weight * post.kl().mean() - 0.3 * d(rec).mean()
    ae = _grads(m, ae_loss)
    rec_d = rec.detach()
    d_loss = 0.5 * (F.relu(1 - d(x)).mean() + F.relu(1 + d(rec_d)).mean())
    disc = _grads(m, d_loss)
    for n, grad in total.items():
        expected = disc[n] if n.startswith("discriminator.") else ae[n]
        assert grad is not None and expected is not None, n
        torch.testing.assert_close(grad, expected, atol=1e-5, rtol=1e-4, msg=n)


def test_a_non_finite_gradient_skips_the_step_and_too_many_stop_the_run():
    from difflab.module import NonFiniteLossError

    m = _module(max_consecutive_nonfinite=2)
    m.log = lambda *a, **k: None
    opt = torch.optim.AdamW(m.parameters())
    p = next(m.vae.parameters())
    p.grad = torch.full_like(p, float("nan"))
    m.configure_gradient_clipping(opt, 1.0, "norm")
    assert m.last_step_skipped and p.grad is None and m.skipped_steps == 1
    p.grad = torch.full_like(p, float("inf"))
    with pytest.raises(NonFiniteLossError, match="2 consecutive steps"):
        m.configure_gradient_clipping(opt, 1.0, "norm")
