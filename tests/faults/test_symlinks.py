"""Symlinks in ``data=image_folder``: broken ones are reported like corrupt files, loops are cut.

A dangling symlink or a file symlink to itself used to crash ``check_images`` with a
traceback (``os.stat``); a directory symlink back to an ancestor multiplied the data
(4 images became 164, with copies in both splits), and two such loops made the walk
exponential. Now each real folder and each real file is read once, and the user is told.
"""

from __future__ import annotations

import logging
import os
import threading

import numpy as np
import pytest
from PIL import Image

from difflab.data import CorruptDataError, ImageFolderDataModule
from difflab.data.image_folder import scan_folder
from tests.faults.conftest import one_error_line, run_main

FOLDER = ["data=image_folder", "data.image_size=8", "data.channels=3", "data.num_workers=0", "data.cache_dir=",
          "data.batch_size=2", "data.val_batch_size=2"]


def _images(root, names):
    rng = np.random.default_rng(0)
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8), "RGB").save(path)


def _broken_folder(root):
    _images(root, ["a.png", "b.png", "sub/c.png", "sub/d.png"])
    os.symlink(root / "gone.png", root / "dangling.png")  # target never existed
    os.symlink("self.png", root / "sub" / "self.png")  # a file symlink to itself (ELOOP)
    return root


def _dm(root, **kw):
    return ImageFolderDataModule(root=str(root), image_size=8, cache_dir="", batch_size=2, **kw)


def test_broken_symlinks_are_refused_in_one_line(tmp_path, capsys):
    root = _broken_folder(tmp_path / "imgs")
    with pytest.raises(SystemExit) as exit_info:
        run_main(tmp_path / "run", [*FOLDER, f"data.root={root}", "trainer.max_steps=1"])
    assert exit_info.value.code == 2
    line = one_error_line(capsys.readouterr().err)
    assert "2 of 6 image files" in line and "data.skip_corrupt=true" in line
    assert f"{root / 'dangling.png'} (dangling symlink to {root / 'gone.png'}" in line
    assert f"{root / 'sub' / 'self.png'} (symlink loop" in line


def test_broken_symlinks_are_skipped_and_counted(tmp_path, caplog):
    root = _broken_folder(tmp_path / "imgs")
    dm = _dm(root, skip_corrupt=True, val_fraction=0.0)
    with caplog.at_level(logging.WARNING, logger="difflab.data"):
        dm.setup()
    assert dm.num_skipped == 2 and dm.skipped_files == ["dangling.png", "sub/self.png"]
    assert sorted(dm.train_set.files) == ["a.png", "b.png", "sub/c.png", "sub/d.png"]
    assert "skipped 2 corrupt files" in caplog.text


def test_a_directory_loop_reads_each_file_once_and_is_reported(tmp_path, caplog):
    root = tmp_path / "imgs"
    _images(root, ["a.png", "b.png", "x/c.png", "x/y/d.png"])
    os.symlink(root, root / "x" / "y" / "up")  # x/y/up -> root: a loop
    dm = _dm(root, val_fraction=0.25)
    with caplog.at_level(logging.WARNING, logger="difflab.data"):
        dm.setup()
    files = sorted(dm.train_set.files + dm.val_set.files)
    assert files == ["a.png", "b.png", "x/c.png", "x/y/d.png"]  # 4, not 164
    real = [os.path.realpath(root / f) for f in files]
    assert len(set(real)) == 4  # the val split holds no copy of a training image
    assert dm.symlink_loops == [f"x/y/up -> {os.path.realpath(root)}"]
    assert "did not follow 1 directory symlinks" in caplog.text and "x/y/up" in caplog.text


def test_file_symlinks_to_a_listed_file_are_left_out(tmp_path):
    root = tmp_path / "imgs"
    _images(root, ["a.png", "b.png"])
    os.symlink(root / "a.png", root / "a_again.png")
    (root / "copy").symlink_to(root, target_is_directory=True)  # a second path to the root
    scan = scan_folder(root, ["png"])
    assert scan.images == ["a.png", "b.png"] and scan.duplicates == ["a_again.png"]
    assert scan.loops == [f"copy -> {os.path.realpath(root)}"]


def test_two_directory_loops_do_not_hang_the_scan(tmp_path):
    """With two loops the old walk had 2^40 paths to visit; it must finish at once."""
    root = tmp_path / "imgs"
    _images(root, ["a.png", "p/b.png", "q/c.png", "q/r/d.png"])
    os.symlink(root, root / "p" / "loop1")
    os.symlink(root / "q", root / "q" / "r" / "loop2")
    result = {}
    worker = threading.Thread(target=lambda: result.setdefault("scan", scan_folder(root, ["png"])), daemon=True)
    worker.start()
    worker.join(timeout=20)
    assert not worker.is_alive(), "the scan of two symlink loops did not finish in 20 s"
    scan = result["scan"]
    assert scan.images == ["a.png", "p/b.png", "q/c.png", "q/r/d.png"]
    assert sorted(scan.loops) == sorted([f"p/loop1 -> {os.path.realpath(root)}",
                                         f"q/r/loop2 -> {os.path.realpath(root / 'q')}"])
