"""Data modules: every one yields (x, y) with x float32 in [-1, 1] (see ``data.base``)."""

from difflab.data.base import BaseDataModule, CorruptDataError, DataNotFoundError
from difflab.data.image_folder import IMAGE_EXTENSIONS, ImageFolderDataModule
from difflab.data.mnist5k_datamodule import MNIST5kDataModule
from difflab.data.torchvision_data import TorchvisionDataModule
from difflab.data.toy2d import Toy2DDataModule

# name -> class; TorchvisionDataModule takes the data set as ``name=`` (mnist, fashion_mnist,
# cifar10) and Toy2DDataModule likewise (moons, swiss_roll, gaussians8)
DATAMODULES: dict[str, type[BaseDataModule]] = {
    "mnist5k": MNIST5kDataModule,
    "torchvision": TorchvisionDataModule,
    "image_folder": ImageFolderDataModule,
    "toy2d": Toy2DDataModule,
}

__all__ = [
    "DATAMODULES",
    "IMAGE_EXTENSIONS",
    "BaseDataModule",
    "CorruptDataError",
    "DataNotFoundError",
    "ImageFolderDataModule",
    "MNIST5kDataModule",
    "Toy2DDataModule",
    "TorchvisionDataModule",
]
