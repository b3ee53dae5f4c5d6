"""The run helpers of sample.py and its tasks: device names, integer checks, npz bytes, the sampler node, the run dir."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from difflab.errors import ConfigError
from difflab.utils.outputs import check_int, output_dir, resolve_device, sampler_node, write_npz


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad, match in (("gpu0", "is not a device"), ("meta", "accepted are auto, cpu")):
        with pytest.raises(ConfigError, match=match):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda")


@pytest.mark.parametrize("value", [0, -1, True, 1.5, "3"])
def test_check_int(value):
    with pytest.raises(ConfigError, match="n must be an integer >= 1"):
        check_int("n", value, 1)
    assert check_int("n", 4, 1) == 4


def test_write_npz_is_byte_stable_and_pickle_free(tmp_path):
    arrays = {"images": np.arange(24, dtype=np.uint8).reshape(2, 2, 2, 3), "note": np.array("text")}
    a, b = write_npz(tmp_path / "a.npz", arrays), write_npz(tmp_path / "b.npz", arrays)
    assert a.read_bytes() == b.read_bytes()
    with np.load(a, allow_pickle=False) as f:
        assert np.array_equal(f["images"], arrays["images"]) and str(f["note"]) == "text"
    with pytest.raises(ValueError):
        write_npz(tmp_path / "c.npz", {"obj": np.array([object()], dtype=object)})


def test_sampler_node():
    ckpt = {"_target_": "difflab.samplers.DDIMSampler", "num_steps": 50, "eta": 1.0, "prediction_type": "eps"}
    assert OmegaConf.to_container(sampler_node(OmegaConf.create({}), ckpt)) == {
        "_target_": "difflab.samplers.DDIMSampler", "num_steps": 50, "eta": 1.0}  # older checkpoints' key dropped
    edited = sampler_node(OmegaConf.create({"sampler": {"num_steps": 10}}), ckpt)
    assert edited.num_steps == 10 and edited.eta == 1.0
    chosen = sampler_node(OmegaConf.create({"sampler": {"_target_": "difflab.samplers.DDPMSampler"}}), ckpt)
    assert OmegaConf.to_container(chosen) == {"_target_": "difflab.samplers.DDPMSampler"}


def test_output_dir(tmp_path):
    assert output_dir(OmegaConf.create({"paths": {"output_dir": str(tmp_path)}})) == tmp_path
    with pytest.raises(ConfigError, match="paths.output_dir is not set"):
        output_dir(OmegaConf.create({}))
