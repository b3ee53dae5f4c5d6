"""image_folder with class_folders: subfolder names as classes (for conditioning=class)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from difflab.data import DataNotFoundError, ImageFolderDataModule


def _write(root, layout: dict[str, int]) -> None:
    for folder, count in layout.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.new("L", (8, 8), 10 * i).save(root / folder / f"{i}.png")


def _dm(root, tmp_path, **kw) -> ImageFolderDataModule:
    return ImageFolderDataModule(str(root), image_size=8, channels=1, batch_size=2, val_fraction=0.25,
                                 cache_dir=str(tmp_path / "cache"), class_folders=True, **kw)


def test_subfolders_are_classes_in_sorted_order(tmp_path):
    root = tmp_path / "pets"
    _write(root, {"dog": 4, "cat": 4, "cat/kittens": 2, "eel": 4})
    dm = _dm(root, tmp_path)
    assert dm.num_classes == 3 and dm.class_names == ["cat", "dog", "eel"]
    dm.setup()
    labels = {}
    for ds in (dm.train_set, dm.val_set):
        for i, f in enumerate(ds.files):
            labels[f] = int(ds[i][1])
    assert labels["cat/kittens/1.png"] == 0 and labels["dog/3.png"] == 1 and labels["eel/0.png"] == 2
    assert {labels[f] for f in labels} == {0, 1, 2} and len(labels) == 14
    x, y = next(iter(dm.train_dataloader()))
    assert y.dtype == torch.int64 and bool((y >= 0).all())


def test_without_class_folders_no_labels(tmp_path):
    root = tmp_path / "pets"
    _write(root, {"dog": 2, "cat": 2})
    dm = ImageFolderDataModule(str(root), image_size=8, channels=1, batch_size=2, cache_dir=str(tmp_path / "c"))
    dm.setup()
    assert dm.num_classes is None and int(dm.train_set[0][1]) == -1


def test_loose_images_and_empty_class_folders_fail_in_one_line(tmp_path):
    root = tmp_path / "loose"
    _write(root, {"dog": 2, "cat": 2})
    Image.new("L", (8, 8)).save(root / "stray.png")
    with pytest.raises(DataNotFoundError, match="directly in it") as e:
        _dm(root, tmp_path).setup()
    assert "\n" not in str(e.value)
    root = tmp_path / "empty"
    _write(root, {"dog": 2, "cat": 2})
    (root / "fish").mkdir()
    with pytest.raises(DataNotFoundError, match="fish"):
        _dm(root, tmp_path).setup()
