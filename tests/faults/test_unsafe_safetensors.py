"""A pickle named ``.safetensors`` is refused as unsafe (not called damaged), and its code never runs."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from difflab.errors import CheckpointError
from difflab.utils.checkpoint import load_model


class Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_pickle_named_safetensors_is_refused_as_unsafe(writer, tmp_path):
    marker = tmp_path / "payload-ran"
    bad = tmp_path / "model.safetensors"
    obj = {"state_dict": {}, "x": Payload(str(marker))}
    if writer == "torch.save":
        torch.save(obj, bad)
    else:
        bad.write_bytes(pickle.dumps(obj, protocol=4))
    with pytest.raises(CheckpointError) as err:
        load_model(bad)
    message = str(err.value)
    assert "\n" not in message and str(bad) in message
    assert "refused" in message and "not safetensors" in message and "damaged" not in message
    assert "weights_only=False" not in message
    assert not marker.exists()


def test_truncated_safetensors_is_called_damaged(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({"a": torch.zeros(64)}, str(path), metadata={"config": "{}"})
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(CheckpointError, match="truncated, damaged or not a safetensors file"):
        load_model(path)
