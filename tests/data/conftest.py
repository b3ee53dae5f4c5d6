import pytest

from difflab.data import MNIST5kDataModule


@pytest.fixture(scope="session")
def mnist5k():
    dm = MNIST5kDataModule(batch_size=128, seed=0)
    dm.setup()
    return dm


@pytest.fixture(scope="session")
def mnist5k_pad32():
    dm = MNIST5kDataModule(batch_size=128, pad_to_32=True)
    dm.setup()
    return dm
