"""Feature networks: the shipped digits net (accuracy, inputs, quantization) and inception."""

from __future__ import annotations


import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from difflab.metrics import (
    DIGITS_WEIGHTS,
    INCEPTION_URL,
    DigitFeatures,
    FeatureWeightsNotFoundError,
    build_feature_extractor,
    inception_weights_cache_path,
)
from difflab.metrics import features as features_mod
from difflab.utils.images import from_uint8, save_png, to_uint8

# --- digits -------------------------------------------------------------------------------


def test_digits_weights_ship_small_and_record_val_accuracy(digits):
    assert DIGITS_WEIGHTS.is_file() and DIGITS_WEIGHTS.suffix == ".safetensors"
    assert DIGITS_WEIGHTS.stat().st_size < 1_000_000
    assert float(digits.metadata["val_accuracy"]) >= 0.97
    assert digits.metadata["train_data"].startswith("mnist5k/train")


def test_digits_val_accuracy_remeasured(digits, mnist_val):
    x, y = mnist_val
    acc = float((digits.logits(torch.from_numpy(x)).argmax(1).numpy() == y).mean())
    assert acc >= 0.97
    assert acc == pytest.approx(float(digits.metadata["val_accuracy"]), abs=2e-3)


def test_digits_output_and_extract(digits, mnist_val):
    x = torch.from_numpy(mnist_val[0][:37])
    f = digits(x)
    assert f.dtype == torch.float32 and f.shape == (37, digits.feature_dim) == (37, 128)
    assert digits.name == "digits"
    full = digits.extract(x, batch_size=256)
    small = digits.extract(x, batch_size=5)
    streamed = digits.extract((x[i : i + 10] for i in range(0, 37, 10)), batch_size=4)
    assert full.dtype == np.float64 and full.shape == (37, 128)
    np.testing.assert_allclose(small, full, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(streamed, full, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(digits.extract(x.numpy()), full, rtol=0, atol=0)


def test_digits_features_are_scaled_to_unit_mean_square(real_halves):
    a, _ = real_halves
    assert 0.5 < (a**2).mean() < 2.0


def test_digits_accepts_32x32_padded_and_rgb(digits, mnist_val):
    x = torch.from_numpy(mnist_val[0][:16])
    ref = digits.extract(x)
    padded = F.pad(x, (2, 2, 2, 2))  # MNIST padded to 32x32 with black
    np.testing.assert_array_equal(digits.extract(padded), ref)
    rgb = x.repeat(1, 3, 1, 1)
    np.testing.assert_allclose(digits.extract(rgb), ref, atol=1e-4)


def test_digits_resizes_other_sizes_with_a_note(mnist_val):
    net = DigitFeatures()
    x = torch.from_numpy(mnist_val[0][:4])
    big = F.interpolate(x.float(), size=(64, 64), mode="nearest").to(torch.uint8)
    with pytest.warns(UserWarning, match="resized to 28x28"):
        f = net.extract(big)
    assert f.shape == (4, 128)


def test_digits_rejects_float_and_unbatched_input(digits):
    with pytest.raises(ValueError, match="to_uint8"):
        digits.extract(torch.zeros(2, 1, 28, 28))
    with pytest.raises(ValueError, match=r"images\[:, None\]"):
        digits.extract(torch.zeros(2, 28, 28, dtype=torch.uint8))
    with pytest.raises(ValueError, match="channels"):
        digits.extract(torch.zeros(2, 2, 28, 28, dtype=torch.uint8))


def test_features_of_to_uint8_equal_features_of_saved_png(digits, mnist_val, tmp_path):
    g = torch.Generator().manual_seed(0)
    real = from_uint8(torch.from_numpy(mnist_val[0][:8]))
    x = torch.cat([real + 0.02 * torch.randn(real.shape, generator=g), 1.1 * (2 * torch.rand(8, 1, 28, 28, generator=g) - 1)])
    u = to_uint8(x)
    reloaded = []
    for i, img in enumerate(u):
        path = save_png(img.permute(1, 2, 0).numpy(), tmp_path / f"{i}.png")
        reloaded.append(torch.from_numpy(np.array(Image.open(path)))[None])
    reloaded = torch.stack(reloaded)
    assert torch.equal(reloaded, u)
    np.testing.assert_array_equal(digits.extract(reloaded), digits.extract(u))


def test_weights_hash_identifies_the_weights(digits):
    assert digits.weights_hash == DigitFeatures().weights_hash
    other = DigitFeatures()
    with torch.no_grad():
        other.net.fc1.bias[0] += 1e-3
    other._weights_hash = None
    assert other.weights_hash != digits.weights_hash


def test_build_feature_extractor_unknown_name_lists_available():
    with pytest.raises(ValueError, match="digits, inception"):
        build_feature_extractor("clip")


def test_digits_missing_weights_say_how_to_make_them(tmp_path):
    with pytest.raises(FeatureWeightsNotFoundError, match="train_digit_features.py"):
        build_feature_extractor("digits", weights_path=tmp_path / "nope.safetensors")


# --- inception ----------------------------------------------------------------------------


@pytest.fixture
def empty_torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # in case something called set_dir
    return tmp_path / "torch"


def test_inception_cache_path_is_torch_hub_checkpoints(empty_torch_home):
    path = inception_weights_cache_path()
    assert path == empty_torch_home / "hub" / "checkpoints" / "weights-inception-2015-12-05-6726825d.pth"


def assert_names_url_and_path(err: Exception) -> None:
    msg = str(err)
    assert INCEPTION_URL in msg
    assert str(inception_weights_cache_path()) in msg
    assert "weights_path" in msg


def test_inception_without_weights_and_download_disabled(empty_torch_home):
    with pytest.raises(FeatureWeightsNotFoundError) as info:
        build_feature_extractor("inception", download=False)
    assert_names_url_and_path(info.value)


def test_inception_offline_fails_fast_with_instructions(empty_torch_home, monkeypatch):
    probes = []
    monkeypatch.setattr(features_mod, "_host_reachable", lambda *a, **k: probes.append((a, k)) or False)
    with pytest.raises(FeatureWeightsNotFoundError, match="no network") as info:
        build_feature_extractor("inception")
    assert len(probes) == 1  # asked once whether the host answers, then stopped: no download attempt
    assert_names_url_and_path(info.value)


@pytest.mark.timeout(60)  # a hang fails here instead of stalling the suite
def test_inception_offline_probe_is_bounded(empty_torch_home, monkeypatch):
    """The real network probe: offline it fails with instructions, and its timeout is a few seconds."""
    if features_mod._host_reachable("github.com", timeout=3.0):
        pytest.skip("network available: this test is about the offline failure")
    real, timeouts = features_mod._host_reachable, []

    def spy(*a, **k):
        timeouts.append(k.get("timeout", a[2] if len(a) > 2 else 3.0))
        return real(*a, **k)

    monkeypatch.setattr(features_mod, "_host_reachable", spy)
    with pytest.raises(FeatureWeightsNotFoundError) as info:
        build_feature_extractor("inception")
    assert timeouts and all(t is not None and t <= 5.0 for t in timeouts)
    assert_names_url_and_path(info.value)


def test_inception_missing_weights_path(tmp_path):
    with pytest.raises(FeatureWeightsNotFoundError, match="does not exist"):
        build_feature_extractor("inception", weights_path=tmp_path / "missing.pth")


@pytest.mark.slow  # builds InceptionV3 (24M parameters) and writes its 95 MB of weights
def test_inception_runs_from_a_local_weights_file(tmp_path, monkeypatch):
    """Random weights in the torch-fidelity layout, saved as .pth and loaded with weights_only."""
    import torch_fidelity.feature_extractor_inceptionv3 as tfi

    monkeypatch.setattr(tfi, "load_state_dict_from_url", lambda *a, **k: {})
    monkeypatch.setattr(tfi.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd, strict=True: None)
    torch.manual_seed(0)
    state = tfi.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"]).state_dict()
    monkeypatch.undo()
    path = tmp_path / "inception.pth"
    torch.save(state, path)

    net = build_feature_extractor("inception", weights_path=path)
    assert net.name == "inception" and net.feature_dim == 2048
    g = torch.Generator().manual_seed(0)
    grey = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8, generator=g)
    f = net.extract(grey)
    assert f.shape == (2, 2048) and f.dtype == np.float64 and np.isfinite(f).all()
    np.testing.assert_allclose(net.extract(grey.repeat(1, 3, 1, 1)), f, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="to_uint8"):
        net.extract(grey.float())


# --- pixels -------------------------------------------------------------------------------


def test_pixels_are_2x2_block_means_of_the_grey_image(mnist_val):
    x = torch.from_numpy(mnist_val[0][:5])
    f = build_feature_extractor("pixels")
    out = f(x)
    ref = (x.double() / 127.5 - 1.0).reshape(5, 14, 2, 14, 2).mean(dim=(2, 4)).reshape(5, 196)
    assert out.shape == (5, 196) and f.feature_dim == 196
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=1e-6)
    rgb = x.repeat(1, 3, 1, 1)  # a grey image as RGB: the same features (the luma weights sum to 1)
    torch.testing.assert_close(f(rgb), out, rtol=0, atol=1e-5)
    padded = F.pad(x, (2, 2, 2, 2))  # any size is area-averaged to 14x14
    assert f(padded).shape == (5, 196)
    with pytest.raises(ValueError, match="no weights"):
        build_feature_extractor("pixels", weights_path="w.safetensors")


def test_pixel_frechet_distance_tells_real_halves_from_faded_digits(mnist_train):
    """Two random halves of the training digits are close in pixels; the same digits at half
    intensity are far: the Frechet distance of the pooled pixels sees the images themselves."""
    import scipy.linalg

    x = mnist_train[0]
    idx = np.random.default_rng(0).permutation(len(x))[:1500]
    f = build_feature_extractor("pixels")
    a, b = f.extract(x[idx[:750]]), f.extract(x[idx[750:]])
    faded = f.extract((x[idx[750:]] // 2).astype(np.uint8))

    def fd(u, v):
        s1, s2 = np.cov(u, rowvar=False), np.cov(v, rowvar=False)
        return float(((u.mean(0) - v.mean(0)) ** 2).sum() + np.trace(s1 + s2) - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2).real))

    near, far = fd(a, b), fd(a, faded)
    assert near < 2.5 and far > 10 * near, (near, far)
