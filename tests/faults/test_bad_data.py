"""Bad image folders: missing, empty, corrupt files, non-image files, mixed pixel formats."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from difflab.data import CorruptDataError, DataNotFoundError
from difflab.errors import DifflabError
from tests.faults.conftest import load_ckpt, one_error_line, run_main, run_train

FOLDER = ["data=image_folder", "data.image_size=8", "data.channels=3", "data.num_workers=0", "data.cache_dir=",
          "data.batch_size=2", "data.val_batch_size=2"]


def _mixed_folder(root, corrupt: bool = True):
    """Grey, RGB, RGBA, palette and 16-bit PNGs, a JPEG, a text file and (optionally) a broken PNG."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (12, 10), dtype=np.uint8), "L").save(root / "grey.png")
    Image.fromarray(rng.integers(0, 255, (9, 9, 3), dtype=np.uint8), "RGB").save(root / "rgb.png")
    Image.fromarray(rng.integers(0, 255, (9, 9, 4), dtype=np.uint8), "RGBA").save(root / "rgba.png")
    Image.fromarray(rng.integers(0, 255, (9, 9, 3), dtype=np.uint8), "RGB").convert("P").save(root / "pal.png")
    Image.fromarray(rng.integers(0, 65535, (9, 9), dtype=np.uint16)).save(root / "deep16.png")
    (root / "sub").mkdir()
    Image.fromarray(rng.integers(0, 255, (16, 8, 3), dtype=np.uint8), "RGB").save(root / "sub" / "photo.jpg")
    (root / "notes.txt").write_text("not an image")
    (root / "sub" / "labels.csv").write_text("a,b\n")
    if corrupt:
        png = (root / "rgb.png").read_bytes()
        (root / "sub" / "broken.png").write_bytes(png[: len(png) // 2])


def test_data_errors_are_difflab_errors():
    assert issubclass(DataNotFoundError, DifflabError) and issubclass(CorruptDataError, DifflabError)


def test_corrupt_file_is_named_in_one_line_by_train_py(tmp_path):
    root = tmp_path / "imgs"
    _mixed_folder(root)
    proc = run_train(tmp_path / "run", [*FOLDER, f"data.root={root}", "trainer.max_steps=2"])
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = one_error_line(proc.stderr)
    assert str(root / "sub" / "broken.png") in line and "1 of 7 image files" in line
    assert "data.skip_corrupt=true" in line
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_skip_corrupt_trains_on_the_rest_and_counts_it(tmp_path, caplog):
    root = tmp_path / "imgs"
    _mixed_folder(root)
    with caplog.at_level(logging.INFO, logger="difflab.data"):
        run_main(tmp_path / "run", [*FOLDER, f"data.root={root}", "data.skip_corrupt=true", "data.val_fraction=0.2",
                                    "trainer.max_steps=2", "trainer.val_check_interval=2"])
    assert "skipped 1 corrupt files" in caplog.text and "sub/broken.png" in caplog.text
    assert "ignored 2 non-image files" in caplog.text
    ckpt = load_ckpt(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 2 and ckpt["difflab"]["image_shape"] == [3, 8, 8]


@pytest.mark.parametrize("kind", ["missing", "empty"])
def test_missing_or_empty_folder_is_one_line(kind, tmp_path, capsys):
    root = tmp_path / "imgs"
    if kind == "empty":
        root.mkdir()
        (root / "readme.txt").write_text("no images here")
    with pytest.raises(SystemExit) as exit_info:
        run_main(tmp_path / "run", [*FOLDER, f"data.root={root}", "trainer.max_steps=1"])
    assert exit_info.value.code == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(root) in line
    assert ("does not exist" if kind == "missing" else "no images under") in line and "data.root" in line
