"""Feature networks for FID / KID.

Every extractor takes **uint8** images ``(N, C, H, W)`` -- the bytes a saved PNG holds, as
produced by :func:`difflab.utils.images.to_uint8` -- and returns float32 features ``(N, D)``.
Taking uint8 only is deliberate: a score computed in the training loop and a score computed
from PNG files on disk then see the same input, bit for bit.

Available networks (``build_feature_extractor(name)``):

- ``digits``: :class:`DigitFeatures`, a small LeNet-style classifier trained on the mnist5k
  train split (``scripts/train_digit_features.py``); its 128-d penultimate layer is the
  feature space for MNIST-like data. The weights ship in the package
  (``metrics/weights/digits_mnist5k.safetensors``).
- ``inception``: :class:`InceptionFeatures`, the standard InceptionV3 pool3 (2048-d) features of
  FID (Heusel et al. 2017), through torch-fidelity. Its weights are downloaded once into the
  torch hub cache, or passed as ``weights_path``.
- ``pixels``: :class:`PixelFeatures`, no network: the grey image average-pooled to 14x14 (196-d),
  in [-1, 1]. A learned-feature-free check of a trend seen in another feature space (a Frechet
  distance of pixels is a weak metric of its own: it sees mean and covariance of intensities).
"""

from __future__ import annotations

import hashlib
import os
import socket
import tempfile
import threading
import urllib.request
import warnings
from collections.abc import Iterable
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "DIGITS_WEIGHTS",
    "INCEPTION_URL",
    "DigitFeatures",
    "DigitNet",
    "FeatureExtractor",
    "FeatureWeightsNotFoundError",
    "InceptionFeatures",
    "PixelFeatures",
    "available_feature_extractors",
    "build_feature_extractor",
    "inception_weights_cache_path",
]

#: The shipped weights of the ``digits`` network (trained by scripts/train_digit_features.py).
DIGITS_WEIGHTS = Path(__file__).with_name("weights") / "digits_mnist5k.safetensors"

#: The InceptionV3 weights torch-fidelity downloads (TensorFlow FID weights, converted).
INCEPTION_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
    "weights-inception-2015-12-05-6726825d.pth"
)


class FeatureWeightsNotFoundError(RuntimeError):
    """The weights of a feature network are neither on disk nor downloadable."""


ImagesLike = torch.Tensor | np.ndarray | Iterable[torch.Tensor | np.ndarray]


def _as_uint8_batch(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Check that ``images`` is uint8 (N, C, H, W) and return it as a torch tensor."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor or numpy array of images, got {type(images).__name__}")
    if images.dtype != torch.uint8:
        raise ValueError(
            f"feature networks take uint8 images in [0, 255], got dtype {images.dtype}; "
            "quantize model output with difflab.utils.images.to_uint8 first"
        )
    if images.ndim != 4:
        hint = " (add a channel axis: images[:, None])" if images.ndim == 3 else ""
        raise ValueError(f"expected images of shape (N, C, H, W), got {tuple(images.shape)}{hint}")
    return images


class FeatureExtractor(nn.Module):
    """Base class: uint8 images (N, C, H, W) -> float32 features (N, D).

    Subclasses set ``name`` and ``feature_dim`` and implement :meth:`forward`. The network is
    frozen (``eval()``, no gradients). :meth:`extract` streams any number of images through
    the network in batches; :attr:`weights_hash` identifies the weights (it is part of every
    real-statistics cache key).
    """

    name: str = "base"
    feature_dim: int = 0

    def __init__(self) -> None:
        super().__init__()
        self._weights_hash: str | None = None

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        p = next(self.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    @property
    def weights_hash(self) -> str:
        """sha256 (first 16 hex digits) over the network's tensors, by sorted name."""
        if self._weights_hash is None:
            h = hashlib.sha256()
            for key, value in sorted(self.state_dict().items()):
                t = value.detach().cpu().contiguous()
                h.update(key.encode())
                h.update(str(t.dtype).encode())
                h.update(str(tuple(t.shape)).encode())
                h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
            self._weights_hash = h.hexdigest()[:16]
        return self._weights_hash

    @torch.no_grad()
    def extract(
        self,
        images: ImagesLike,
        batch_size: int = 256,
        device: str | torch.device | None = None,
    ) -> np.ndarray:
        """Features of ``images`` as a float64 numpy array (N, D), computed ``batch_size`` at a time.

        ``images`` is a uint8 array/tensor (N, C, H, W) (it stays where it is; only one batch
        at a time is moved to ``device``) or an iterable of such batches (e.g. a generator
        that samples from a model), so only the (N, D) feature matrix grows with N.
        ``device`` defaults to the device of the network; if given, the network moves there.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if device is not None and torch.device(device) != self.device:
            self.to(device)
        device = self.device
        self.eval()

        if isinstance(images, (torch.Tensor, np.ndarray)):
            images = _as_uint8_batch(images)
            n = images.shape[0]
            out = np.empty((n, self.feature_dim), dtype=np.float64)
            for start in range(0, n, batch_size):
                batch = images[start : start + batch_size].to(device)
                out[start : start + batch.shape[0]] = self(batch).double().cpu().numpy()
            return out

        chunks = []
        for batch in images:
            batch = _as_uint8_batch(batch)
            for start in range(0, batch.shape[0], batch_size):
                part = batch[start : start + batch_size].to(device)
                chunks.append(self(part).double().cpu().numpy())
        if not chunks:
            return np.empty((0, self.feature_dim), dtype=np.float64)
        return np.concatenate(chunks, axis=0)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, feature_dim={self.feature_dim}"


# ---------------------------------------------------------------------------------------
# digits: a LeNet-style network trained on mnist5k/train
# ---------------------------------------------------------------------------------------


class DigitNet(nn.Module):
    """LeNet-style classifier for 28x28 greyscale digits in [-1, 1].

    conv5x5(32) -> pool -> conv5x5(64) -> pool -> conv3x3(64) -> pool -> fc(128) -> fc(10).
    ``features`` returns the fc(128) pre-activations (the penultimate layer): pre-activation
    values have no dead (all-zero) dimensions, so their covariance is well conditioned.
    They are multiplied by the fixed buffer ``feature_scale``, set once by the training
    script so that the mean squared feature over the train split is 1: KID's kernel
    ``(x.y / d + 1)^3`` then sees ``x.y / d`` of order 1, as with Inception features.
    """

    feature_dim = 128
    num_classes = 10

    def __init__(self, dropout: float = 0.3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 5, padding=2)  # 28 -> pool -> 14
        self.conv2 = nn.Conv2d(32, 64, 5, padding=2)  # 14 -> pool -> 7
        self.conv3 = nn.Conv2d(64, 64, 3, padding=1)  # 7 -> pool -> 3
        self.fc1 = nn.Linear(64 * 3 * 3, self.feature_dim)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(self.feature_dim, self.num_classes)
        self.register_buffer("feature_scale", torch.ones(()))

    def penultimate(self, x: torch.Tensor) -> torch.Tensor:
        """fc(128) pre-activations, unscaled."""
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.max_pool2d(F.relu(self.conv3(x)), 2)
        return self.fc1(x.flatten(1))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.penultimate(x) * self.feature_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(F.relu(self.penultimate(x))))


def digits_preprocess(images: torch.Tensor) -> tuple[torch.Tensor, str | None]:
    """uint8 (N, C, H, W) -> float32 (N, 1, 28, 28) in [-1, 1], and a note if resized.

    RGB is converted to grey with the ITU-R BT.601 luma weights (as PIL's ``convert("L")``);
    32x32 (MNIST padded to 32, as diffusion models often use) is center-cropped by 2 px on
    each side; any other size is resized (bilinear, antialiased) to 28x28.
    """
    images = _as_uint8_batch(images)
    c, h, w = images.shape[1:]
    x = images.float()
    if c == 3:
        weights = torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)
        x = (x * weights).sum(dim=1, keepdim=True)
    elif c != 1:
        raise ValueError(f"the digits network takes 1 (grey) or 3 (RGB) channels, got {c}")
    note = None
    if (h, w) == (32, 32):
        x = x[:, :, 2:30, 2:30]
    elif (h, w) != (28, 28):
        x = F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False, antialias=True)
        note = (
            f"the digits feature network was trained on 28x28 digits; {h}x{w} images are "
            "resized to 28x28, so scores are not comparable with scores on 28x28/32x32 images"
        )
    return x.div(127.5).sub(1.0), note


class DigitFeatures(FeatureExtractor):
    """``digits``: 128-d penultimate features of :class:`DigitNet`, for FID on MNIST-like data.

    Input: uint8 (N, C, H, W); see :func:`digits_preprocess` for channels and sizes.
    :attr:`metadata` holds what the training script stored with the weights
    (validation accuracy, seed, data split, ...).
    """

    name = "digits"
    feature_dim = DigitNet.feature_dim

    def __init__(self, weights_path: str | Path | None = None) -> None:
        super().__init__()
        from safetensors import safe_open
        from safetensors.torch import load_file

        path = Path(weights_path) if weights_path is not None else DIGITS_WEIGHTS
        if not path.is_file():
            raise FeatureWeightsNotFoundError(
                f"digits feature weights not found at {path}; create them with "
                "`python scripts/train_digit_features.py` (a couple of minutes on a CPU)"
            )
        if path.suffix != ".safetensors":
            raise ValueError(f"digits weights must be a .safetensors file, got {path}")
        with safe_open(str(path), framework="pt") as f:
            self.metadata: dict[str, str] = dict(f.metadata() or {})
        self.net = DigitNet()
        self.net.load_state_dict(load_file(str(path)))
        self.weights_path = path
        self.requires_grad_(False)
        self.eval()
        self._warned_resize = False

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        x, note = digits_preprocess(images)
        if note is not None and not self._warned_resize:
            warnings.warn(note, stacklevel=3)
            self._warned_resize = True
        return x.to(self.device)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.features(self._prepare(images)).float()

    @torch.no_grad()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits (N, 10) of uint8 images; used to check the network's accuracy."""
        return self.net(self._prepare(images))


# ---------------------------------------------------------------------------------------
# inception: InceptionV3 pool3 through torch-fidelity
# ---------------------------------------------------------------------------------------


def inception_weights_cache_path() -> Path:
    """Where torch-fidelity (``torch.hub.load_state_dict_from_url``) keeps the weights."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(INCEPTION_URL)


def _inception_missing_message(path: Path, reason: str) -> str:
    return (
        f"InceptionV3 feature weights not available ({reason}).\n"
        f"  Download:  {INCEPTION_URL}\n"
        f"  and put it at:  {path}\n"
        "  (the torch hub checkpoints folder; set TORCH_HOME to move it), e.g.\n"
        f"    mkdir -p {path.parent} && curl -L -o {path} {INCEPTION_URL}\n"
        "  or give the file: weights_path=PATH (sample.py, callbacks.fid.weights_path, "
        "build_feature_extractor('inception', weights_path=PATH))."
    )


def _host_reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    """True if a TCP connection to ``host`` opens within ``timeout`` s (DNS included)."""
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)  # getaddrinfo has no timeout of its own; the thread bounds it
    return bool(result and result[0])


def _download(url: str, path: Path, timeout: float) -> None:
    """Download ``url`` to ``path`` atomically (tmp file in the same folder + os.replace)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=timeout) as r:
            while chunk := r.read(1 << 20):
                f.write(chunk)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _load_inception_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Weights from a .safetensors or a torch .pth file (loaded with ``weights_only=True``)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(str(path), map_location="cpu", weights_only=True)


def resolve_inception_weights(
    weights_path: str | Path | None = None, download: bool = True, timeout: float = 10.0
) -> Path:
    """The local InceptionV3 weights file: ``weights_path``, else the torch hub cache.

    If neither exists, the file is downloaded into the cache (when ``download`` and the host
    answers within a few seconds). Offline, this fails at once with a
    :class:`FeatureWeightsNotFoundError` naming the URL and the path to put the file at.
    """
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise FeatureWeightsNotFoundError(
                _inception_missing_message(path, f"weights_path {path} does not exist")
            )
        return path
    path = inception_weights_cache_path()
    if path.is_file():
        return path
    if not download:
        raise FeatureWeightsNotFoundError(_inception_missing_message(path, "not in the cache, download=False"))
    host = urllib.request.urlparse(INCEPTION_URL).hostname or "github.com"
    if not _host_reachable(host, timeout=min(timeout, 3.0)):
        raise FeatureWeightsNotFoundError(_inception_missing_message(path, f"no network: {host} unreachable"))
    try:
        _download(INCEPTION_URL, path, timeout=timeout)
    except OSError as e:
        raise FeatureWeightsNotFoundError(_inception_missing_message(path, f"download failed: {e}")) from e
    return path


class InceptionFeatures(FeatureExtractor):
    """``inception``: InceptionV3 pool3 features (2048-d), the standard FID feature space.

    Wraps ``torch_fidelity.feature_extractor_inceptionv3.FeatureExtractorInceptionV3``
    (TensorFlow-FID weights; bilinear resize to 299x299 done inside as TF 1.x did).
    Greyscale input is repeated to 3 channels.
    """

    name = "inception"
    feature_dim = 2048

    def __init__(self, weights_path: str | Path | None = None, download: bool = True) -> None:
        super().__init__()
        import sys

        import torch_fidelity.feature_extractor_inceptionv3 as tfi

        path = resolve_inception_weights(weights_path, download=download)
        state_dict = _load_inception_state_dict(path)
        # torch-fidelity loads weights in its constructor, from a URL or with
        # torch.load(weights_only=False). Hand it the state dict loaded above instead, so
        # that no pickle is ever executed and nothing is fetched twice.
        original = tfi.load_state_dict_from_url
        tfi.load_state_dict_from_url = lambda *args, **kwargs: state_dict
        try:
            with redirect_stdout(sys.stderr):
                self.net = tfi.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
        finally:
            tfi.load_state_dict_from_url = original
        self.weights_path = path
        self.requires_grad_(False)
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images = _as_uint8_batch(images).to(self.device)
        c = images.shape[1]
        if c == 1:
            images = images.repeat(1, 3, 1, 1)
        elif c != 3:
            raise ValueError(f"the inception network takes 1 or 3 channels, got {c}")
        (features,) = self.net(images)
        return features.float()


# ---------------------------------------------------------------------------------------
# pixels: no network
# ---------------------------------------------------------------------------------------


class PixelFeatures(FeatureExtractor):
    """``pixels``: grey intensities average-pooled to 14x14 (196-d), in [-1, 1].

    No learned weights: a feature space no classifier shaped, to tell whether a difference seen
    in ``digits`` (or ``inception``) features shows in the images themselves. RGB is converted
    to grey (ITU-R BT.601 luma); any size is area-averaged to 14x14 (28x28 digits: 2x2 blocks).
    """

    name = "pixels"
    feature_dim = 14 * 14

    def __init__(self, weights_path: str | Path | None = None) -> None:
        super().__init__()
        if weights_path is not None:
            raise ValueError("the pixels features have no weights; leave weights_path unset")
        self.register_buffer("version", torch.tensor([1, 14, 14]))  # the definition, in the cache key
        self.eval()

    @property
    def device(self) -> torch.device:
        return self.version.device

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = _as_uint8_batch(images).to(self.device).float()
        c = x.shape[1]
        if c == 3:
            x = (x * torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)).sum(dim=1, keepdim=True)
        elif c != 1:
            raise ValueError(f"the pixels features take 1 (grey) or 3 (RGB) channels, got {c}")
        x = F.adaptive_avg_pool2d(x.div(127.5).sub(1.0), (14, 14))
        return x.flatten(1)


# ---------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------

_REGISTRY: dict[str, type[FeatureExtractor]] = {
    DigitFeatures.name: DigitFeatures,
    InceptionFeatures.name: InceptionFeatures,
    PixelFeatures.name: PixelFeatures,
}


def available_feature_extractors() -> list[str]:
    return sorted(_REGISTRY)


def build_feature_extractor(
    name: str,
    weights_path: str | Path | None = None,
    device: str | torch.device | None = None,
    **kwargs: Any,
) -> FeatureExtractor:
    """Build the feature network ``name`` (``digits`` | ``inception`` | ``pixels``), frozen, in eval mode."""
    if name not in _REGISTRY:
        raise ValueError(
            f"unknown feature network {name!r}; available: {', '.join(available_feature_extractors())}"
        )
    extractor = _REGISTRY[name](weights_path=weights_path, **kwargs)
    if device is not None:
        extractor.to(device)
    return extractor
