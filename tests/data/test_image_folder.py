"""ImageFolderDataModule on images each test writes itself."""

import logging

import numpy as np
import pytest
import torch
from PIL import Image

import difflab.data.image_folder as imf
from difflab.data import CorruptDataError, DataNotFoundError, ImageFolderDataModule
from difflab.data.image_folder import split_files, to_rgb_or_grey

S = 8  # image_size used in these tests


def _write_set(root):
    """One image of every kind, nested folders, a text file; returns rel path -> expected RGB."""
    (root / "a" / "b").mkdir(parents=True)
    (root / "c").mkdir()
    Image.new("L", (S, S), 200).save(root / "grey.png")
    Image.new("RGB", (S, S), (10, 200, 30)).save(root / "a" / "rgb.png")
    rgba = np.zeros((S, S, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[: S // 2, :, 3] = 255  # top half opaque red, bottom half fully transparent
    Image.fromarray(rgba, "RGBA").save(root / "a" / "b" / "rgba.png")
    pal = Image.new("P", (S, S), 1)
    pal.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)  # index 1 = blue
    pal.save(root / "c" / "palette.png")
    Image.fromarray(np.full((S, S), 65535, np.uint16)).save(root / "c" / "grey16_white.png")
    Image.fromarray(np.full((S, S), 32896, np.uint16)).save(root / "c" / "grey16_mid.png")  # 32896 / 257 = 128
    Image.new("RGB", (3 * S, 2 * S), (5, 6, 7)).save(root / "a" / "wide.jpg", quality=100)
    (root / "notes.txt").write_text("not an image")
    (root / "c" / "README").write_text("not an image either")
    return {
        "grey.png": (200, 200, 200),
        "a/rgb.png": (10, 200, 30),
        "c/palette.png": (0, 0, 255),
        "c/grey16_white.png": (255, 255, 255),
        "c/grey16_mid.png": (128, 128, 128),
    }


def _dm(root, tmp_path, **kw):
    kw.setdefault("batch_size", 2)
    kw.setdefault("image_size", S)
    kw.setdefault("val_fraction", 0.0)
    return ImageFolderDataModule(root=str(root), cache_dir=str(tmp_path / "cache"), **kw)


def _by_file(dm):
    return {f: dm.train_set.load_uint8(i) for i, f in enumerate(dm.train_set.files)}


def test_modes_are_converted_to_rgb(tmp_path):
    root = tmp_path / "imgs"
    expected = _write_set(root)
    dm = _dm(root, tmp_path)
    dm.setup()
    assert dm.image_shape == (3, S, S) and dm.num_classes is None and dm.name.startswith("image_folder:")
    assert len(dm.train_set) == 7 and dm.num_ignored == 2 and dm.num_skipped == 0
    got = _by_file(dm)
    for rel, rgb in expected.items():
        assert got[rel].shape == (3, S, S) and got[rel].dtype == np.uint8
        assert (got[rel] == np.array(rgb, np.uint8)[:, None, None]).all(), rel
    rgba = got["a/b/rgba.png"]
    assert (rgba[:, : S // 2] == np.array([255, 0, 0])[:, None, None]).all()  # opaque: red
    assert (rgba[:, S // 2 :] == 255).all()  # transparent: composited on white
    assert got["a/wide.jpg"].shape == (3, S, S)  # shorter side resized, then center-cropped
    x, y = dm.train_set[0]
    assert x.dtype == torch.float32 and x.shape == (3, S, S) and y.dtype == torch.int64 and int(y) == -1
    xb, yb = next(iter(dm.train_dataloader()))
    assert xb.shape == (2, 3, S, S) and (yb == -1).all() and xb.min() >= -1 and xb.max() <= 1
    white = dm.train_set[dm.train_set.files.index("c/grey16_white.png")][0]
    assert (white == 1.0).all()


def test_greyscale_channel_and_alpha_options(tmp_path):
    root = tmp_path / "imgs"
    _write_set(root)
    dm = _dm(root, tmp_path, channels=1, alpha="black")
    dm.setup()
    got = _by_file(dm)
    assert dm.image_shape == (1, S, S) and got["grey.png"].shape == (1, S, S)
    assert (got["grey.png"] == 200).all() and (got["c/grey16_mid.png"] == 128).all()
    assert (got["a/b/rgba.png"][:, S // 2 :] == 0).all()  # transparent on black
    assert (got["a/b/rgba.png"][:, : S // 2] == 76).all()  # luma of pure red: 0.299 * 255
    real = dm.real_images("train")
    assert real.dtype == torch.uint8 and real.shape == (7, 1, S, S)
    assert torch.equal(real[dm.train_set.files.index("grey.png")], torch.full((1, S, S), 200, dtype=torch.uint8))


def test_16bit_and_other_modes_scale_without_clipping():
    ramp = np.linspace(0, 65535, 16).astype(np.uint16).reshape(4, 4)
    out = np.asarray(to_rgb_or_grey(Image.fromarray(ramp), 1))
    assert out.min() == 0 and out.max() == 255 and len(np.unique(out)) == 16
    i32 = Image.fromarray(ramp.astype(np.int32), mode="I")
    assert np.array_equal(np.asarray(to_rgb_or_grey(i32, 1)), out)
    f = Image.fromarray(np.full((2, 2), 0.5, np.float32), mode="F")
    assert (np.asarray(to_rgb_or_grey(f, 1)) == 128).all()
    la = Image.new("LA", (2, 2), (0, 0))  # fully transparent black
    assert (np.asarray(to_rgb_or_grey(la, 3)) == 255).all()
    assert (np.asarray(to_rgb_or_grey(la, 3, alpha="drop")) == 0).all()
    cmyk = Image.new("CMYK", (2, 2), (0, 0, 0, 0))
    assert to_rgb_or_grey(cmyk, 3).mode == "RGB"


def _write_corrupt(root):
    Image.new("RGB", (S, S), (1, 2, 3)).save(root / "good1.png")
    Image.new("RGB", (S, S), (1, 2, 3)).save(root / "good2.png")
    png = (root / "good1.png").read_bytes()
    (root / "sub").mkdir(exist_ok=True)
    (root / "sub" / "truncated.png").write_bytes(png[: len(png) // 2])
    (root / "fake.jpg").write_text("this is text with an image extension")


def test_corrupt_files_raise_one_error_naming_them(tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    _write_corrupt(root)
    dm = _dm(root, tmp_path)
    with pytest.raises(CorruptDataError) as err:
        dm.setup()
    msg = str(err.value)
    assert "2 of 4 image files" in msg
    assert str(root / "sub" / "truncated.png") in msg and str(root / "fake.jpg") in msg
    assert "good1.png" not in msg and "data.skip_corrupt=true" in msg


def test_corrupt_error_lists_at_most_ten(tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    Image.new("L", (S, S)).save(root / "ok.png")
    for i in range(13):
        (root / f"bad{i:02d}.png").write_bytes(b"junk")
    with pytest.raises(CorruptDataError, match="and 3 more") as err:
        _dm(root, tmp_path).setup()
    assert str(err.value).count("bad") == 10


def test_skip_corrupt_counts_and_logs(tmp_path, caplog):
    root = tmp_path / "imgs"
    root.mkdir()
    _write_corrupt(root)
    dm = _dm(root, tmp_path, skip_corrupt=True, batch_size=1)
    with caplog.at_level(logging.INFO, logger="difflab.data.base"):
        dm.setup()
    assert dm.num_skipped == 2 and sorted(dm.skipped_files) == ["fake.jpg", "sub/truncated.png"]
    assert sorted(dm.train_set.files) == ["good1.png", "good2.png"]
    assert "skipped 2 corrupt" in caplog.text


def test_check_is_cached_by_path_size_mtime(tmp_path, monkeypatch):
    root = tmp_path / "imgs"
    _write_set(root)
    _dm(root, tmp_path).setup()
    calls = []
    real_check = imf._check_one
    monkeypatch.setattr(imf, "_check_one", lambda p: calls.append(p) or real_check(p))
    _dm(root, tmp_path).setup()
    assert calls == []  # second setup: nothing decoded again
    Image.new("L", (S, S), 3).save(root / "grey.png", optimize=True, compress_level=0)  # changed file
    (root / "new.png").write_bytes(b"broken")
    with pytest.raises(CorruptDataError, match="new.png"):
        _dm(root, tmp_path).setup()
    assert sorted(p.name for p in calls) == ["grey.png", "new.png"]


def test_missing_root_and_no_images(tmp_path):
    with pytest.raises(DataNotFoundError, match="does not exist") as err:
        _dm(tmp_path / "nope", tmp_path).setup()
    assert str(tmp_path / "nope") in str(err.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("x")
    with pytest.raises(DataNotFoundError, match="no images under") as err:
        _dm(empty, tmp_path).setup()
    assert "png, jpg, jpeg, bmp, webp, tif, tiff" in str(err.value) and "1 other files" in str(err.value)


def test_val_split_is_fixed_and_disjoint(tmp_path):
    files = [f"d{i // 10}/img{i:03d}.png" for i in range(100)]
    train, val = split_files(files, 0.05, 0)
    assert len(val) == 5 and len(train) == 95 and not set(train) & set(val)
    assert (train, val) == split_files(list(reversed(files)), 0.05, 0)
    assert val != split_files(files, 0.05, 1)[1]
    _, val_more = split_files(files + ["d9/extra.png"], 0.05, 0)
    assert len(set(val) & set(val_more)) >= 4  # adding a file moves at most one
    assert split_files(files[:3], 0.05, 0)[1].__len__() == 1


def test_split_module_and_flip(tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    for i in range(20):
        a = np.zeros((S, S, 3), np.uint8)
        a[:, : S // 2] = 255  # left half white: a flip is visible
        Image.fromarray(a).save(root / f"{i:02d}.png")
    dm = _dm(root, tmp_path, val_fraction=0.2, random_flip=True, batch_size=16, seed=0)
    dm.setup()
    assert len(dm.train_set) == 16 and len(dm.val_set) == 4
    xb, _ = next(iter(dm.train_dataloader()))
    left_white = (xb[:, :, :, 0] == 1).all(dim=(1, 2))
    assert 0 < int(left_white.sum()) < 16  # some flipped, some not
    assert all((x[:, :, 0] == 1).all() for x, _ in dm.val_set)  # val is never flipped
    assert dm.real_images("val").shape == (4, 3, S, S)
    with pytest.raises(ValueError, match="only 4"):
        dm.real_images("val", n=5)


def test_batch_larger_than_train_set(tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    Image.new("L", (S, S)).save(root / "one.png")
    with pytest.raises(ValueError, match="batch_size=4 is larger than the 1 training items"):
        _dm(root, tmp_path, batch_size=4).setup()


def test_name_depends_on_path_and_pixel_settings(tmp_path):
    a = _dm(tmp_path / "x", tmp_path)
    assert a.name == _dm(tmp_path / "x", tmp_path).name
    assert a.name != _dm(tmp_path / "y", tmp_path).name
    assert a.name != _dm(tmp_path / "x", tmp_path, image_size=16).name
    assert a.name != _dm(tmp_path / "x", tmp_path, channels=1).name


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"image_size": 0}, "image_size"),
        ({"channels": 4}, "channels"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"alpha": "grey"}, "alpha"),
        ({"extensions": "png"}, "extensions"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_args(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        _dm(tmp_path, tmp_path, **kw)
