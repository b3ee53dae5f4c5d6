"""Safe checkpoint loading, model rebuilding, architecture mismatches and safetensors export."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from difflab.errors import CheckpointError
from difflab.utils.checkpoint import (
    build_model_from_checkpoint,
    export_safetensors,
    load_checkpoint,
    load_safetensors,
    model_from_safetensors,
)
from tests.conftest import compose_train

# A 2-step run of a tiny UNet. lr=1e-2 without warm-up and an EMA without warm-up make the
# EMA weights differ clearly from the raw ones.
TINY_RUN = [
    "trainer=cpu",
    "trainer.max_steps=2",
    "trainer.val_check_interval=2",
    "trainer.limit_val_batches=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "data.batch_size=8",
    "data.val_batch_size=8",
    "backbone.base_channels=8",
    "backbone.channel_mult=[1,2]",
    "backbone.num_res_blocks=1",
    "sampler.num_steps=2",
    "callbacks=[model_checkpoint,ema]",
    "callbacks.ema.warmup=false",
    "logger=none",
    "lr_warmup_steps=0",
    "optimizer.lr=0.01",
    "print_config=false",
]


def tiny_checkpoint(root: Path) -> Path:
    """<root>/checkpoints/last.ckpt of a tiny training run (trained once, then reused)."""
    from difflab.train import run

    ckpt = root / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        run(compose_train(TINY_RUN, output_dir=str(root)))
    assert ckpt.is_file()
    return ckpt


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.getbasetemp() / "tiny-run")


_payload_ran = []


def _payload() -> dict:
    _payload_ran.append(True)
    return {}


class Payload:
    """A pickled object whose unpickling calls a function (as a malicious file would)."""

    def __reduce__(self):
        return (_payload, ())


# ----------------------------------------------------------------------------- loading
def test_loads_a_training_checkpoint(tiny_ckpt):
    ckpt = load_checkpoint(tiny_ckpt)
    assert ckpt["difflab"]["image_shape"] == [1, 28, 28]
    assert "EMA" in ckpt["callbacks"] and isinstance(ckpt["hyper_parameters"]["config"], dict)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"no such file.*last\.ckpt"):
        load_checkpoint(tmp_path / "nope.ckpt")


def test_run_dir_instead_of_file(tiny_ckpt):
    with pytest.raises(CheckpointError, match="did you mean .*last.ckpt"):
        load_checkpoint(tiny_ckpt.parent.parent)


@pytest.mark.parametrize("content", ["truncated", "garbage", "empty"])
def test_unreadable_file_is_named(tiny_ckpt, tmp_path, content):
    data = tiny_ckpt.read_bytes()
    bad = tmp_path / f"{content}.ckpt"
    bad.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"not a checkpoint", "empty": b""}[content])
    with pytest.raises(CheckpointError, match="cannot be read") as e:
        load_checkpoint(bad)
    assert str(bad) in str(e.value) and "\n" not in str(e.value)


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": Payload()}, path)
    _payload_ran.clear()
    with pytest.raises(CheckpointError, match="refused for safety") as e:
        load_checkpoint(path)
    assert "arbitrary code" in str(e.value) and "_payload" in str(e.value)  # names the refused global
    assert not _payload_ran, "the payload ran"


def test_not_a_difflab_checkpoint(tmp_path):
    path = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    with pytest.raises(CheckpointError, match="not written by difflab"):
        build_model_from_checkpoint(load_checkpoint(path))


# ----------------------------------------------------------------------------- rebuilding
def test_rebuilds_with_ema_or_raw_weights(tiny_ckpt):
    ckpt = load_checkpoint(tiny_ckpt)
    ema = build_model_from_checkpoint(ckpt, use_ema=True)
    raw = build_model_from_checkpoint(ckpt, use_ema=False)
    assert ema.used_ema and not raw.used_ema
    assert ema.image_shape == (1, 28, 28) and ema.global_step == 2
    assert ema.sampler.num_steps == 2 and not hasattr(ema.sampler, "prediction_type")  # the objective's, only
    for k, v in ema.backbone.state_dict().items():
        assert torch.equal(v, ckpt["callbacks"]["EMA"]["state_dict"][k])
    for k, v in raw.backbone.state_dict().items():
        assert torch.equal(v, ckpt["state_dict"]["backbone." + k])
    w = "input_conv.weight"
    assert not torch.equal(ema.backbone.state_dict()[w], raw.backbone.state_dict()[w])
    assert not ema.backbone.training


def test_samples_with_the_betas_it_stores(tiny_ckpt, caplog):
    """The betas in the checkpoint, not the schedule code, define the model: a stored config
    that now gives other betas (changed schedule code) is reported in one line, and the
    stored betas are used."""
    import logging

    ckpt = copy.deepcopy(load_checkpoint(tiny_ckpt))
    assert torch.equal(build_model_from_checkpoint(ckpt).process.betas.double(),
                       ckpt["state_dict"]["process.betas"].double())
    stored = ckpt["state_dict"]["process.betas"].double() * 0.9  # as if the schedule code had changed since
    ckpt["state_dict"]["process.betas"] = stored
    with caplog.at_level(logging.WARNING):
        model = build_model_from_checkpoint(ckpt)
    assert torch.equal(model.process.betas.double(), stored)
    lines = [r.getMessage() for r in caplog.records if "other betas" in r.getMessage()]
    assert len(lines) == 1 and "samples with the stored ones" in lines[0] and "\n" not in lines[0]


def test_a_schedule_override_that_disagrees_with_stored_betas_is_refused():
    from difflab.build import build_core
    from difflab.diffusion.process import GaussianDiffusion
    from difflab.errors import ConfigError
    from tests.conftest import compose_train

    linear = GaussianDiffusion.from_schedule("linear", 1000).betas
    with pytest.raises(ConfigError, match="other betas than the checkpoint stores"):
        build_core(compose_train(["schedule=cosine"]), betas=linear)
    assert torch.equal(build_core(compose_train(["schedule=linear"]), betas=linear)[0].betas.double(), linear.double())


def test_without_ema_state_falls_back_to_raw(tiny_ckpt):
    ckpt = load_checkpoint(tiny_ckpt)
    del ckpt["callbacks"]["EMA"]
    assert not build_model_from_checkpoint(ckpt, use_ema=True).used_ema


def test_compiled_run_prefixes_are_stripped(tiny_ckpt):
    ckpt = load_checkpoint(tiny_ckpt)
    ema = ckpt["callbacks"]["EMA"]
    ema["state_dict"] = {f"_orig_mod.{k}": v for k, v in ema["state_dict"].items()}
    assert build_model_from_checkpoint(ckpt).used_ema


@pytest.mark.parametrize(
    "change, expected",
    [({"base_channels": 16}, "shape mismatches"), ({"num_res_blocks": 2}, "missing keys")],
)
def test_other_architecture_says_what_differs(tiny_ckpt, change, expected):
    ckpt = copy.deepcopy(load_checkpoint(tiny_ckpt))
    ckpt["hyper_parameters"]["config"]["backbone"].update(change)
    with pytest.raises(CheckpointError, match=expected) as e:
        build_model_from_checkpoint(ckpt, source="checkpoint x.ckpt")
    message = str(e.value)
    assert message.startswith("checkpoint x.ckpt") and "difflab version that trained it" in message
    assert message.count(";") < 40  # the first few keys, not all of them


# ----------------------------------------------------------------------------- safetensors
def test_export_safetensors_round_trip(tiny_ckpt, tmp_path):
    out = export_safetensors(tiny_ckpt, tmp_path / "ema.safetensors")
    state, meta = load_safetensors(out)
    ckpt = load_checkpoint(tiny_ckpt)
    assert meta["config"] == ckpt["hyper_parameters"]["config"]
    assert meta["use_ema"] is True and meta["image_shape"] == (1, 28, 28) and meta["global_step"] == 2
    assert set(state) == set(ckpt["callbacks"]["EMA"]["state_dict"])
    for k, v in state.items():
        assert torch.equal(v, ckpt["callbacks"]["EMA"]["state_dict"][k])
    model = model_from_safetensors(out)
    assert model.used_ema and model.image_shape == (1, 28, 28)
    raw = load_safetensors(export_safetensors(tiny_ckpt, tmp_path / "raw.safetensors", use_ema=False))
    assert raw[1]["use_ema"] is False


def test_safetensors_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_safetensors(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_safetensors(bad)


# ----------------------------------------------------------------------------- init_from (fine-tuning)
def _module(overrides=()):
    from difflab.build import build_module
    from difflab.utils.hydra import to_plain_dict

    cfg = compose_train([*TINY_RUN, *overrides])
    return build_module(cfg, (1, 28, 28), config_dict=to_plain_dict(cfg))


def test_init_weights_from_loads_raw_and_ema_weights_only(tiny_ckpt):
    from difflab.utils.checkpoint import ema_state_from_checkpoint, init_weights_from

    module = _module()
    ckpt = load_checkpoint(tiny_ckpt)
    loaded = init_weights_from(module, tiny_ckpt)
    assert loaded.ema and loaded.source_step == 2 and loaded.num_tensors == len(module.backbone.state_dict())
    for k, v in module.backbone.state_dict().items():
        assert torch.equal(v, ckpt["state_dict"][f"backbone.{k}"]), k
    ema = ema_state_from_checkpoint(ckpt)
    assert set(module.initial_ema_state) == set(ema)
    assert all(torch.equal(module.initial_ema_state[k], ema[k]) for k in ema)
    assert any(not torch.equal(ema[k], ckpt["state_dict"][f"backbone.{k}"]) for k in ema)  # two different sets


def test_init_from_another_backbone_is_refused_naming_the_keys(tiny_ckpt):
    from difflab.utils.checkpoint import init_weights_from

    with pytest.raises(CheckpointError) as e:
        init_weights_from(_module(["backbone.base_channels=16"]), tiny_ckpt)
    msg = str(e.value)
    assert "\n" not in msg and "init_from=" in msg and "backbone.base_channels=16 here, 8 in the file" in msg


def test_init_from_weights_that_do_not_fit(tiny_ckpt, tmp_path):
    """The stored config matches but the weights are another network's: the weights are checked too."""
    from difflab.backbones import UNet
    from difflab.utils.checkpoint import init_weights_from

    path = tmp_path / "other.ckpt"
    other = UNet(in_channels=1, image_size=28, base_channels=8, channel_mult=(1, 2), num_res_blocks=2)
    config = load_checkpoint(tiny_ckpt)["hyper_parameters"]["config"]
    torch.save({"hyper_parameters": {"config": config}, "state_dict": {f"backbone.{k}": v for k, v in other.state_dict().items()}}, path)
    with pytest.raises(CheckpointError, match="do not fit the backbone") as e:
        init_weights_from(_module(), path)
    assert "unexpected keys" in str(e.value) and "\n" not in str(e.value)


def test_init_from_missing_or_unsafe_file_is_one_line(tmp_path):
    from difflab.utils.checkpoint import init_weights_from

    with pytest.raises(CheckpointError, match=r"^init_from: checkpoint .*nope.ckpt: no such file"):
        init_weights_from(_module(), tmp_path / "nope.ckpt")
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": Payload()}, evil)
    _payload_ran.clear()
    with pytest.raises(CheckpointError, match="^init_from: .*refused for safety"):
        init_weights_from(_module(), evil)
    assert not _payload_ran


def test_init_from_exported_safetensors(tiny_ckpt, tmp_path):
    from difflab.utils.checkpoint import init_weights_from

    out = export_safetensors(tiny_ckpt, tmp_path / "w.safetensors")
    module = _module()
    loaded = init_weights_from(module, out)
    state, _ = load_safetensors(out)
    assert not loaded.ema and module.initial_ema_state is None  # one set: the EMA starts from it
    assert all(torch.equal(module.backbone.state_dict()[k], v) for k, v in state.items())


def test_fine_tuning_run_starts_at_step_0_with_a_fresh_optimizer_and_the_files_ema(tiny_ckpt, tmp_path):
    from difflab.train import run
    from difflab.utils.checkpoint import ema_state_from_checkpoint

    src = load_checkpoint(tiny_ckpt)
    run(compose_train([*TINY_RUN, "trainer.max_steps=1", "trainer.val_check_interval=1", f"init_from={tiny_ckpt}"],
                      output_dir=str(tmp_path)))
    out = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert out["global_step"] == 1 and out["callbacks"]["EMA"]["num_updates"] == 1
    assert {int(s["step"]) for s in out["optimizer_states"][0]["state"].values()} == {1}  # not 3: fresh moments
    # EMA without warm-up, decay 0.999: ema = 0.999 * (the file's EMA) + 0.001 * (raw weights after step 1)
    ema_src, ema_out = ema_state_from_checkpoint(src), ema_state_from_checkpoint(out)
    for k, v in ema_out.items():
        if v.is_floating_point():
            expected = 0.999 * ema_src[k] + 0.001 * out["state_dict"][f"backbone.{k}"]
            assert torch.allclose(v, expected, atol=1e-6), k


def test_init_from_with_ckpt_path_is_refused(tiny_ckpt):
    from difflab.errors import ConfigError
    from difflab.utils.validation import validate_config

    with pytest.raises(ConfigError, match="exclude each other"):
        validate_config(compose_train([f"init_from={tiny_ckpt}", f"ckpt_path={tiny_ckpt}"]))
    with pytest.raises(ConfigError, match="init_from=/nope.ckpt: no such file"):
        validate_config(compose_train(["init_from=/nope.ckpt"]))


def test_named_emas_are_kept_in_the_checkpoint_and_load_by_name(tmp_path):
    """Further EMAs of one training run (named EMA callbacks) are saved under EMA:<name> and
    loaded with ``ema=<name>``: one with the run's EMA settings has its very weights, one of decay 0
    the raw weights; an unknown name is refused naming those the file has."""
    from difflab.utils.checkpoint import ema_names, load_model

    extra = [
        "+callbacks.ema_same._target_=difflab.callbacks.ema.EMA", "+callbacks.ema_same.name=same",
        "+callbacks.ema_same.decay=0.999", "+callbacks.ema_same.warmup=false",
        "+callbacks.ema_raw._target_=difflab.callbacks.ema.EMA", "+callbacks.ema_raw.name=zero",
        "+callbacks.ema_raw.decay=0.0", "+callbacks.ema_raw.warmup=false",
    ]
    from difflab.train import run

    run(compose_train([*TINY_RUN, *extra], output_dir=str(tmp_path)))
    path = tmp_path / "checkpoints" / "last.ckpt"
    ckpt = load_checkpoint(path)
    assert ema_names(ckpt) == ["same", "zero"]
    assert ckpt["callbacks"]["EMA:zero"]["num_updates"] == ckpt["callbacks"]["EMA"]["num_updates"] == 2
    own, same, zero = load_model(path), load_model(path, ema="same"), load_model(path, ema="zero")
    raw = load_model(path, use_ema=False)
    assert same.used_ema and same.ema_name == "same" and own.ema_name is None
    for k, v in own.backbone.state_dict().items():
        assert torch.equal(same.backbone.state_dict()[k], v), k
        torch.testing.assert_close(zero.backbone.state_dict()[k], raw.backbone.state_dict()[k], rtol=0, atol=1e-6)
    w = "input_conv.weight"
    assert not torch.allclose(own.backbone.state_dict()[w], raw.backbone.state_dict()[w])
    with pytest.raises(CheckpointError, match=r"no EMA named 'slow' \(it holds 'same', 'zero'\)"):
        load_model(path, ema="slow")


def test_two_emas_of_one_name_are_refused():
    from difflab.build import build_callbacks
    from difflab.errors import ConfigError

    cfg = compose_train([*TINY_RUN, "+callbacks.ema_b._target_=difflab.callbacks.ema.EMA"])
    with pytest.raises(ConfigError, match="share the unnamed EMA"):
        build_callbacks(cfg)
    cfg = compose_train([*TINY_RUN, "+callbacks.ema_b._target_=difflab.callbacks.ema.EMA", "+callbacks.ema_b.name=x",
                         "+callbacks.ema_c._target_=difflab.callbacks.ema.EMA", "+callbacks.ema_c.name=x"])
    with pytest.raises(ConfigError, match="share name='x'"):
        build_callbacks(cfg)
