"""Backbone sizes of zero or less stop the run with one line naming the key (not torch's message)."""

from __future__ import annotations

import pytest

from difflab.backbones.diffusers_unet import DiffusersUNet
from difflab.backbones.mlp import MLP
from difflab.backbones.unet import UNet
from tests.faults.conftest import one_error_line, run_main


@pytest.mark.parametrize(
    "override, expected",
    [
        ("backbone.base_channels=0", "backbone.base_channels must be an integer >= 1, got 0"),
        ("backbone.base_channels=-8", "backbone.base_channels must be an integer >= 1, got -8"),
        ("backbone.channel_mult=[1,0]", "backbone.channel_mult must hold integers >= 1"),
        ("backbone.norm_groups=0", "backbone.norm_groups must be an integer >= 1, got 0"),
    ],
)
def test_zero_sized_unet_is_one_line(override, expected, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_main(tmp_path, [override, "trainer.max_steps=1"])
    assert exit_info.value.code == 2
    line = one_error_line(capsys.readouterr().err)
    assert expected in line and "expected weight" not in line
    assert not any(tmp_path.iterdir())  # nothing built, nothing written


@pytest.mark.parametrize(
    "build, key",
    [
        (lambda: UNet(base_channels=0), "base_channels"),
        (lambda: UNet(num_heads=0), "num_heads"),
        (lambda: UNet(in_channels=0), "in_channels"),
        (lambda: DiffusersUNet(block_out_channels=(0, 8)), "block_out_channels"),
        (lambda: DiffusersUNet(layers_per_block=0), "layers_per_block"),
        (lambda: MLP(hidden=0), "hidden"),
        (lambda: MLP(dim=0), "dim"),
    ],
)
def test_constructors_name_the_argument(build, key):
    with pytest.raises(ValueError, match=rf"^{key} must be"):
        build()
