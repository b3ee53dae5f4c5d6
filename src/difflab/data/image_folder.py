"""Any folder of images (searched recursively) as a data module.

Every image is brought to ``channels`` x ``image_size`` x ``image_size`` uint8 the same way,
for training and for FID statistics:

1. decode with PIL (first frame of multi-frame files), apply the EXIF orientation;
2. convert the mode (see :func:`to_rgb_or_grey`): 16-bit greyscale is scaled to 8 bits
   (``round(v / 257)``, so 65535 -> 255), palette and other modes are converted by PIL,
   transparency (RGBA, LA, palette or grey/RGB with a transparent colour) is composited on
   a white background (``alpha="white"``, the default), on black (``"black"``), or the
   alpha channel is simply dropped (``"drop"``);
3. ``channels=1``: ITU-R 601-2 luma; ``channels=3``: greyscale is repeated to RGB;
4. resize so the shorter side is ``image_size`` (bicubic, antialiased) and center-crop;
   with ``center_crop=False`` the whole image is resized to a square (aspect not kept).

At ``setup()`` every file is decoded once, so a broken file cannot crash an epoch half-way.
The result is cached in a small manifest (keyed by relative path, size and mtime) under
``cache_dir``, so a second setup only stats the files.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from difflab.data.base import (
    BaseDataModule,
    CorruptDataError,
    DataNotFoundError,
    FlipRNG,
    check_bool,
    check_choice,
    check_int,
    info,
    uint8_to_unit,
    warn,
)

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "bmp", "webp", "tif", "tiff")
ALPHA_MODES = ("white", "black", "drop")
_MANIFEST_VERSION = 1
_MAX_LISTED = 10


# ----------------------------------------------------------------------------------------
# pixels


def _is_transparent(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        img.mode in ("P", "L", "RGB") and "transparency" in img.info
    )


def _to_8bit_grey(img: Image.Image) -> Image.Image:
    """'I;16*', 'I' and 'F' images -> 'L' without clipping the range.

    'I;16*' is scaled by 1/257 (65535 -> 255). 'I' (32-bit int) is read as 8-bit when its
    maximum is <= 255, as 16-bit when <= 65535, otherwise scaled by its maximum. 'F' is read
    as [0, 1] when its maximum is <= 1, otherwise as [0, 255].
    """
    a = np.asarray(img).astype(np.float64)
    top = float(a.max()) if a.size else 0.0
    if img.mode.startswith("I;16"):
        scale = 255.0 / 65535.0
    elif img.mode == "I":
        scale = 1.0 if top <= 255 else 255.0 / 65535.0 if top <= 65535 else 255.0 / top
    else:  # "F"
        scale = 255.0 if top <= 1.0 else 1.0
    return Image.fromarray(np.rint(a * scale).clip(0, 255).astype(np.uint8), mode="L")


def to_rgb_or_grey(img: Image.Image, channels: int, alpha: str = "white") -> Image.Image:
    """Convert any PIL mode to 'L' (channels=1) or 'RGB' (channels=3); see the module doc."""
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        img = _to_8bit_grey(img)
    elif img.mode == "1":
        img = img.convert("L")
    elif _is_transparent(img):
        rgba = img.convert("RGBA")
        if alpha == "drop":
            img = rgba.convert("RGB")
        else:
            fill = (255, 255, 255, 255) if alpha == "white" else (0, 0, 0, 255)
            img = Image.alpha_composite(Image.new("RGBA", rgba.size, fill), rgba).convert("RGB")
    elif img.mode not in ("L", "RGB"):  # P, CMYK, YCbCr, LAB, HSV, RGBX, ...
        img = img.convert("RGB")
    if channels == 1 and img.mode != "L":
        img = img.convert("L")
    elif channels == 3 and img.mode != "RGB":
        img = img.convert("RGB")
    return img


def resize_and_crop(img: Image.Image, size: int, center_crop: bool = True) -> Image.Image:
    """Shorter side to ``size`` (bicubic) then center-crop; or squash to size x size."""
    w, h = img.size
    if not center_crop:
        return img if (w, h) == (size, size) else img.resize((size, size), Image.Resampling.BICUBIC)
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


def load_image(path: str | os.PathLike, size: int, channels: int, center_crop: bool = True, alpha: str = "white"):
    """Decode ``path`` to uint8 (channels, size, size) as a numpy array."""
    with Image.open(path) as im:
        im.load()
        img = ImageOps.exif_transpose(im)  # camera photos: honour the orientation tag
        img = to_rgb_or_grey(img, channels, alpha)
        img = resize_and_crop(img, size, center_crop)
        a = np.asarray(img, dtype=np.uint8)
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1).copy()


# ----------------------------------------------------------------------------------------
# finding and checking files


@dataclass
class FolderScan:
    """What :func:`scan_folder` found under a root.

    ``images``: relative POSIX paths of image files, each real file once (sorted);
    ``others``: the count of files with other endings; ``broken``: image-named entries that
    cannot be opened, ``{relpath: reason}`` (dangling symlinks, symlink loops);
    ``loops``: directory symlinks not followed because they lead to a folder already scanned
    (``"a/link -> /real/target"``); ``duplicates``: image paths left out because they reach a
    file already listed (a file symlink, or a folder reached twice).
    """

    images: list[str] = field(default_factory=list)
    others: int = 0
    broken: dict[str, str] = field(default_factory=dict)
    loops: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)


def _broken_reason(path: str, error: OSError) -> str:
    """One line for an entry that ``os.stat`` cannot follow."""
    if os.path.islink(path):
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        if error.errno == errno.ELOOP:
            return f"symlink loop: {target} leads back to itself"
        if error.errno == errno.ENOENT:
            return f"dangling symlink to {target}, which does not exist"
        return f"symlink to {target} cannot be followed ({error.strerror})"
    return f"{type(error).__name__}: {error.strerror or error}"


def scan_folder(root: Path, extensions: Sequence[str]) -> FolderScan:
    """Walk ``root`` (following symlinks), reading each real folder and each real file once.

    A directory symlink whose target was already scanned (a loop back to an ancestor, or a
    second path to one folder) is not entered, so the walk stays linear in the number of real
    folders however the links nest; an image file whose real path was already listed is left
    out. Image-named entries that cannot be stat'ed (dangling or looping symlinks) are
    returned in ``broken``, to be reported like corrupt files.
    """
    exts = {("." + e.lower().lstrip(".")) for e in extensions}
    root = Path(root)
    scan = FolderScan()
    visited_dirs = {os.path.realpath(root)}
    seen_files: set[str] = set()

    def rel(path: str) -> str:
        return Path(path).relative_to(root).as_posix()

    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        keep = []
        for d in sorted(dirnames):
            full = os.path.join(dirpath, d)
            real = os.path.realpath(full)
            if real in visited_dirs:
                scan.loops.append(f"{rel(full)} -> {real}")
                continue
            visited_dirs.add(real)
            keep.append(d)
        dirnames[:] = keep  # os.walk descends only into these
        for fname in sorted(filenames):
            full = os.path.join(dirpath, fname)
            if os.path.splitext(fname)[1].lower() not in exts:
                scan.others += 1
                continue
            try:
                os.stat(full)  # follows the link: dangling and looping ones fail here
            except OSError as e:
                scan.broken[rel(full)] = _broken_reason(full, e)
                continue
            real = os.path.realpath(full)
            if real in seen_files:
                scan.duplicates.append(rel(full))
                continue
            seen_files.add(real)
            scan.images.append(rel(full))
    scan.images.sort()
    return scan


def _check_one(path: Path) -> str | None:
    """None when the file decodes fully, else a one-line reason."""
    try:
        with Image.open(path) as im:
            im.load()
            to_rgb_or_grey(im, 3)
        return None
    except Exception as e:  # truncated, not an image, decompression bomb, ...
        reason = str(e).replace(repr(str(path)), "").replace(str(path), "").strip()  # the path is listed anyway
        return f"{type(e).__name__}: {' '.join(reason.split())}"  # one line


def default_cache_dir() -> Path:
    base = os.environ.get("DIFFLAB_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "difflab"
    )
    return Path(base) / "image_folder"


def check_images(
    root: Path, files: Sequence[str], cache_dir: Path | None, threads: int | None = None
) -> dict[str, str]:
    """Decode every file once (cached by path, size, mtime); return {relpath: reason} of failures."""
    manifest_path = None
    cached: dict[str, list] = {}
    if cache_dir is not None:
        manifest_path = Path(cache_dir) / (hashlib.sha1(str(root).encode()).hexdigest()[:16] + ".json")
        try:
            data = json.loads(manifest_path.read_text())
            if data.get("version") == _MANIFEST_VERSION and data.get("root") == str(root):
                cached = data.get("files", {})
        except (OSError, ValueError):
            cached = {}
    entries: dict[str, list] = {}
    todo: list[tuple[str, int, int]] = []
    for rel in files:
        try:
            st = os.stat(root / rel)
        except OSError as e:  # removed or re-linked since the scan
            entries[rel] = [0, 0, _broken_reason(str(root / rel), e)]
            continue
        hit = cached.get(rel)
        if hit is not None and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            entries[rel] = hit
        else:
            todo.append((rel, st.st_size, st.st_mtime_ns))
    if todo:
        info("image_folder: decoding %d of %d files once to check them", len(todo), len(files))
        threads = threads or min(8, os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=threads) as pool:
            results = list(pool.map(lambda t: _check_one(root / t[0]), todo))
        for (rel, size, mtime), err in zip(todo, results):
            entries[rel] = [size, mtime, err]
    if manifest_path is not None and (todo or set(cached) != set(entries)):
        _write_json(manifest_path, {"version": _MANIFEST_VERSION, "root": str(root), "files": entries})
    return {rel: e[2] for rel, e in entries.items() if e[2] is not None}


def _write_json(path: Path, obj: dict) -> None:
    """Atomic write; a cache that cannot be written only costs time, so just warn."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f)
        os.replace(tmp, path)
    except OSError as e:
        warn("image_folder: could not write the check cache %s (%s); the next setup checks again", path, e)


def split_files(files: Sequence[str], val_fraction: float, split_seed: int) -> tuple[list[str], list[str]]:
    """Fixed split: files ordered by a hash of (split_seed, relative path); the first
    ``round(n * val_fraction)`` (at least one when val_fraction > 0) are validation.

    A file's place in the order depends only on its own path, so adding files moves few.
    """
    if val_fraction == 0 or len(files) < 2:
        return sorted(files), []
    key = {f: hashlib.sha1(f"{split_seed}:{f}".encode()).hexdigest() for f in files}
    ordered = sorted(files, key=lambda f: (key[f], f))
    k = min(len(files) - 1, max(1, round(len(files) * val_fraction)))
    return sorted(ordered[k:]), sorted(ordered[:k])


# ----------------------------------------------------------------------------------------
# dataset and module


class ImageFileDataset(Dataset):
    """Decodes one file per item; x float32 in [-1, 1], y = the file's class index from
    ``labels`` (one per file), else -1 (no labels)."""

    def __init__(
        self,
        root: Path,
        files: Sequence[str],
        image_size: int,
        channels: int,
        center_crop: bool = True,
        alpha: str = "white",
        random_flip: bool = False,
        seed: int = 0,
        labels: Sequence[int] | None = None,
    ) -> None:
        self.root = Path(root)
        self.files = list(files)
        self.labels = list(labels) if labels is not None else None
        self.image_size, self.channels = image_size, channels
        self.center_crop, self.alpha = center_crop, alpha
        self.random_flip = random_flip
        self._flip = FlipRNG(seed)

    def __len__(self) -> int:
        return len(self.files)

    def load_uint8(self, index: int) -> np.ndarray:
        path = self.root / self.files[index]
        try:
            return load_image(path, self.image_size, self.channels, self.center_crop, self.alpha)
        except Exception as e:
            raise CorruptDataError(f"cannot read {path} ({type(e).__name__}: {e}); did it change after setup?") from e

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.load_uint8(index)
        if self.random_flip and bool(self._flip.mask(1)[0]):
            a = a[..., ::-1]
        label = -1 if self.labels is None else self.labels[index]
        return uint8_to_unit(a), torch.tensor(label, dtype=torch.int64)


class ImageFolderDataModule(BaseDataModule):
    """Any folder of images, searched recursively; unlabelled (y = -1), or with
    ``class_folders`` labelled by subfolder: every image lies under ``root/<class name>/``
    (at any depth below it), the classes are the sorted names of the subfolders of ``root``
    and the label of an image is its class's index (for ``conditioning=class``).

    Args:
        root: the folder.
        image_size: output height and width.
        channels: 1 (greyscale) or 3 (RGB); every file is converted to it.
        random_flip: random horizontal flips of training images.
        center_crop: shorter side to image_size then center-crop (True), or squash (False).
        val_fraction: share of files held out for validation, in [0, 1); the split is fixed
            by a hash of each relative path and ``split_seed``, not by the training seed.
        skip_corrupt: leave out files that cannot be decoded (counted in ``num_skipped``)
            instead of raising :class:`CorruptDataError`.
        extensions: file name endings (case-insensitive) that count as images; other
            files are ignored and counted in a log line.
        alpha: transparent pixels composited on "white" (default) or "black", or "drop"
            the alpha channel.
        class_folders: label each image by the subfolder of ``root`` it lies in (sorted names
            -> 0..K-1, in ``class_names``); the constructor lists the subfolders for
            ``num_classes``. Images directly in ``root`` or a subfolder without images stop
            setup with a one-line error.
        cache_dir: where the check manifest is kept (default ``$DIFFLAB_CACHE_DIR`` or
            ``~/.cache/difflab/image_folder``); None-like ``""`` disables it.
        **loader_args: see :class:`BaseDataModule`.

    ``name`` is ``"image_folder:<hash>"``, the hash covering the absolute path and every
    setting that changes the pixels (image_size, channels, center_crop, alpha).
    """

    def __init__(
        self,
        root: str,
        image_size: int = 64,
        channels: int = 3,
        random_flip: bool = False,
        center_crop: bool = True,
        val_fraction: float = 0.05,
        skip_corrupt: bool = False,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
        alpha: str = "white",
        split_seed: int = 0,
        class_folders: bool = False,
        cache_dir: str | None = None,
        batch_size: int = 64,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        drop_last: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__(
            batch_size=batch_size,
            val_batch_size=val_batch_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
            persistent_workers=persistent_workers,
            drop_last=drop_last,
            seed=seed,
        )
        if root is None or str(root) == "":
            raise ValueError("root must be the path of a folder of images, got an empty value (set data.root)")
        self.root = Path(os.path.expanduser(str(root))).resolve()
        self.image_size = check_int("image_size", image_size, minimum=1)
        self.channels = check_choice("channels", channels, (1, 3))
        self.random_flip = check_bool("random_flip", random_flip)
        self.center_crop = check_bool("center_crop", center_crop)
        if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction must be a number in [0, 1), got {val_fraction!r}")
        self.val_fraction = float(val_fraction)
        self.skip_corrupt = check_bool("skip_corrupt", skip_corrupt)
        if isinstance(extensions, str) or not extensions or not all(isinstance(e, str) and e for e in extensions):
            raise ValueError(
                f"extensions must be a non-empty list of file endings like ['png', 'jpg'], got {extensions!r}"
            )
        self.extensions = tuple(e.lower().lstrip(".") for e in extensions)
        self.alpha = check_choice("alpha", alpha, ALPHA_MODES)
        self.split_seed = check_int("split_seed", split_seed)
        if cache_dir is None:
            self.cache_dir: Path | None = default_cache_dir()
        elif str(cache_dir) == "":
            self.cache_dir = None
        else:
            self.cache_dir = Path(os.path.expanduser(str(cache_dir)))
        key = f"{self.root}|{self.image_size}|{self.channels}|{self.center_crop}|{self.alpha}"
        self.name = "image_folder:" + hashlib.sha1(key.encode()).hexdigest()[:12]
        self.image_shape = (self.channels, self.image_size, self.image_size)
        self.class_folders = check_bool("class_folders", class_folders)
        self.class_names: list[str] = []
        if self.class_folders and self.root.is_dir():  # one directory listing: num_classes for the config
            self.class_names = sorted(
                e.name for e in os.scandir(self.root) if e.is_dir() and not e.name.startswith(".")
            )
        self.num_classes = len(self.class_names) if self.class_folders else None
        self.num_skipped = 0
        self.skipped_files: list[str] = []
        self.num_ignored = 0
        # directory symlinks not followed (loops, second paths to a folder) and image paths
        # left out as second paths to a file already listed; both are reported at setup
        self.symlink_loops: list[str] = []
        self.duplicate_files: list[str] = []

    def _valid_files(self) -> list[str]:
        exts = ", ".join(self.extensions)
        if not self.root.is_dir():
            raise DataNotFoundError(
                f"image folder {self.root} does not exist (or is not a folder); set data.root to a folder "
                f"holding images ({exts}; subfolders are searched)"
            )
        scan = scan_folder(self.root, self.extensions)
        self.num_ignored = scan.others
        self.symlink_loops, self.duplicate_files = scan.loops, scan.duplicates
        files = sorted([*scan.images, *scan.broken])
        if not files:
            raise DataNotFoundError(
                f"no images under {self.root} (searched recursively for the extensions {exts}; "
                f"{self.num_ignored} other files were ignored). Set data.root or data.extensions"
            )
        bad = {**scan.broken, **check_images(self.root, scan.images, self.cache_dir)}
        if bad and not self.skip_corrupt:
            # one line, so that train.py prints it as a single `error: ...` line
            listed = "; ".join(f"{self.root / f} ({bad[f]})" for f in sorted(bad)[:_MAX_LISTED])
            more = f"; ... and {len(bad) - _MAX_LISTED} more" if len(bad) > _MAX_LISTED else ""
            raise CorruptDataError(
                f"{len(bad)} of {len(files)} image files under {self.root} cannot be decoded: {listed}{more}. "
                f"Fix or delete them, or set data.skip_corrupt=true to leave them out"
            )
        self.skipped_files = sorted(bad)
        self.num_skipped = len(bad)
        good = [f for f in files if f not in bad]
        if not good:
            raise DataNotFoundError(f"none of the {len(files)} image files under {self.root} can be decoded")
        return good

    def prepare_data(self) -> None:
        # rank 0 decodes every file once and writes the manifest; setup() on the other
        # ranks then finds every file in it
        self._valid_files()

    def _build(self) -> None:
        good = self._valid_files()
        if self.symlink_loops:
            warn(
                "image_folder: did not follow %d directory symlinks under %s that lead to a folder already "
                "scanned (a symlink loop or a second path to one folder), e.g. %s; each file is read once",
                len(self.symlink_loops), self.root, self.symlink_loops[0],
            )
        if self.duplicate_files:
            warn(
                "image_folder: left out %d image paths under %s that reach a file already listed (symlinks), "
                "e.g. %s",
                len(self.duplicate_files), self.root, self.duplicate_files[0],
            )
        if self.num_skipped:
            warn(
                "image_folder: skipped %d corrupt files under %s (data.skip_corrupt=true), e.g. %s",
                self.num_skipped, self.root, self.skipped_files[0],
            )
        train, val = split_files(good, self.val_fraction, self.split_seed)
        common = dict(
            image_size=self.image_size, channels=self.channels, center_crop=self.center_crop, alpha=self.alpha
        )
        train_labels = val_labels = None
        if self.class_folders:
            label_of = self._class_labels(good)
            train_labels, val_labels = [label_of[f] for f in train], [label_of[f] for f in val]
        self.train_set = ImageFileDataset(self.root, train, random_flip=self.random_flip, seed=self.seed,
                                          labels=train_labels, **common)
        self.val_set = ImageFileDataset(self.root, val, labels=val_labels, **common)
        info(
            "image_folder %s: %d train / %d val images, %s; ignored %d non-image files; skipped %d corrupt",
            self.root, len(train), len(val), self.image_shape, self.num_ignored, self.num_skipped,
        )

    def _class_labels(self, files: Sequence[str]) -> dict[str, int]:
        """{relative path: class index} from the first path component (``class_folders``)."""
        loose = [f for f in files if "/" not in f]
        if loose:
            raise DataNotFoundError(
                f"data.class_folders=true needs every image in a class subfolder of {self.root}, but {len(loose)} lie "
                f"directly in it (e.g. {self.root / loose[0]}); move them into a subfolder or set data.class_folders=false"
            )
        index = {name: i for i, name in enumerate(self.class_names)}
        found = {f.split("/", 1)[0] for f in files}
        empty = [name for name in self.class_names if name not in found]
        if empty or not found <= set(index):
            raise DataNotFoundError(
                f"data.class_folders=true: the subfolders of {self.root} changed since the config was built, or some "
                f"hold no images ({', '.join(empty) or 'new folders'}); every class subfolder needs images"
            )
        return {f: index[f.split("/", 1)[0]] for f in files}

    def _real_uint8(self, split: str, indices: torch.Tensor | None) -> torch.Tensor:
        ds: ImageFileDataset = self.train_set if split == "train" else self.val_set  # type: ignore[assignment]
        idx = range(len(ds)) if indices is None else indices.tolist()
        if len(idx) == 0:
            return torch.empty((0, *self.image_shape), dtype=torch.uint8)
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            arrays = list(pool.map(ds.load_uint8, idx))
        return torch.from_numpy(np.stack(arrays))
