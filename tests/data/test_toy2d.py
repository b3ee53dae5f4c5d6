import numpy as np
import pytest
import torch

from difflab.data import Toy2DDataModule


@pytest.mark.parametrize("name, num_classes", [("moons", 2), ("swiss_roll", None), ("gaussians8", 8)])
def test_shapes_scale_labels(name, num_classes):
    dm = Toy2DDataModule(name=name, n_train=2000, n_val=300, batch_size=100)
    dm.setup()
    assert dm.image_shape == (2,) and dm.num_classes == num_classes and dm.name == name
    assert len(dm.train_set) == 2000 and len(dm.val_set) == 300
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (100, 2) and x.dtype == torch.float32 and y.dtype == torch.int64
    pts = dm.real_points("train")
    assert pts.shape == (2000, 2)
    assert pts.mean(0).abs().max() < 0.1  # standardised with constants of the distribution
    assert abs(float((pts - pts.mean(0)).pow(2).mean().sqrt()) - 1.0) < 0.05
    labels = dm.train_set.labels
    if num_classes is None:
        assert (labels == -1).all()
    else:
        assert sorted(labels.unique().tolist()) == list(range(num_classes))


def test_gaussians8_modes_on_a_circle():
    dm = Toy2DDataModule(name="gaussians8", n_train=4000, n_val=10, noise=0.0)
    dm.setup()
    pts, labels = dm.train_set.points, dm.train_set.labels
    radius = pts.norm(dim=1)
    assert torch.allclose(radius, torch.full_like(radius, 2 ** 0.5), atol=1e-5)  # radius 2 / sqrt(2)
    angle = torch.atan2(pts[:, 1], pts[:, 0])
    d = torch.remainder(angle - 2 * np.pi * labels / 8 + np.pi, 2 * np.pi) - np.pi
    assert d.abs().max() < 1e-5  # mode k sits at angle 2 pi k / 8


def test_seeds():
    a = Toy2DDataModule(name="moons", n_train=500, n_val=50, seed=0)
    b = Toy2DDataModule(name="moons", n_train=500, n_val=50, seed=0)
    c = Toy2DDataModule(name="moons", n_train=500, n_val=50, seed=1)
    for dm in (a, b, c):
        dm.setup()
    assert torch.equal(a.real_points("train"), b.real_points("train"))
    assert torch.equal(a.real_points("val"), b.real_points("val"))
    assert not torch.equal(a.real_points("train"), c.real_points("train"))
    assert not torch.equal(a.real_points("train")[:50], a.real_points("val"))  # independent streams
    sub = a.real_points("train", n=100, seed=2)
    assert sub.shape == (100, 2) and torch.equal(sub, a.real_points("train", n=100, seed=2))
    with pytest.raises(ValueError, match="only 50"):
        a.real_points("val", n=51)


def test_real_images_not_applicable():
    dm = Toy2DDataModule(name="swiss_roll", n_train=300, n_val=10)
    with pytest.raises(NotImplementedError, match="real_points"):
        dm.real_images("train")


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"name": "spirals"}, "name must be one of"),
        ({"n_train": 0}, "n_train"),
        ({"n_val": 1.5}, "n_val"),
        ({"noise": -0.1}, "noise"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_args(kw, match):
    with pytest.raises(ValueError, match=match):
        Toy2DDataModule(**kw)
