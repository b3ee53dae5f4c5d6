"""difflab's own :class:`~difflab.backbones.UNet` as a diffusers model, for exported pipelines.

:class:`DifflabUNet2DModel` *is* a :class:`~difflab.backbones.UNet` (same modules, same
state-dict keys, same numbers) that is also a diffusers ``ModelMixin`` + ``ConfigMixin``:
``save_pretrained`` / ``from_pretrained`` work, its config has the ``sample_size`` and
``in_channels`` that ``DDPMPipeline`` / ``DDIMPipeline`` read, and ``forward`` follows the
``UNet2DModel`` convention (``unet(sample, timestep).sample``). difflab itself keeps calling
the plain UNet as ``backbone(x_t, t[, y]) -> tensor``; only exported folders use this class.

An exported folder's ``model_index.json`` names the component ``["difflab",
"DifflabUNet2DModel"]``. diffusers loads a component of a library other than its own only when
that library is already imported, so::

    import difflab  # makes difflab.DifflabUNet2DModel known to diffusers
    from diffusers import DiffusionPipeline
    pipe = DiffusionPipeline.from_pretrained("exported/")

(``difflab`` resolves ``DifflabUNet2DModel`` and ``ModelMixin`` lazily: diffusers looks the base
class up by name in the component's library to find its loading method.)
"""

from __future__ import annotations

from collections.abc import Sequence

from diffusers import ConfigMixin, ModelMixin  # ModelMixin: looked up here by diffusers' loader
from diffusers.configuration_utils import register_to_config
from diffusers.models.unets.unet_2d import UNet2DOutput
from torch import Tensor

from difflab.backbones.unet import UNet

__all__ = ["DifflabUNet2DModel", "ModelMixin", "from_unet"]


class DifflabUNet2DModel(ModelMixin, UNet, ConfigMixin):
    """:class:`~difflab.backbones.UNet` with the diffusers model interface.

    The arguments are the UNet's, with ``image_size`` named ``sample_size`` as in
    ``UNet2DModel`` (an int, or ``[height, width]``). ``forward(sample, timestep,
    class_labels=None, return_dict=True)`` returns ``UNet2DOutput(sample=...)`` (or a tuple),
    the output of ``UNet.forward(sample, timestep, class_labels)``.
    """

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        sample_size: int | Sequence[int] = 28,
        in_channels: int = 1,
        out_channels: int | None = None,
        base_channels: int = 32,
        channel_mult: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (),
        dropout: float = 0.0,
        num_heads: int = 4,
        norm_groups: int = 8,
        num_classes: int | None = None,
        use_scale_shift_norm: bool = False,
    ) -> None:
        UNet.__init__(
            self,
            in_channels=in_channels,
            out_channels=out_channels,
            base_channels=base_channels,
            channel_mult=channel_mult,
            num_res_blocks=num_res_blocks,
            attention_resolutions=attention_resolutions,
            image_size=sample_size if isinstance(sample_size, int) else tuple(sample_size),
            dropout=dropout,
            num_heads=num_heads,
            norm_groups=norm_groups,
            num_classes=num_classes,
            use_scale_shift_norm=use_scale_shift_norm,
        )
        # what ModelMixin.__init__ sets (not called: its super() chain would re-enter UNet.__init__)
        self._gradient_checkpointing_func = None

    def forward(  # type: ignore[override]
        self,
        sample: Tensor,
        timestep: Tensor | float | int,
        class_labels: Tensor | None = None,
        return_dict: bool = True,
    ) -> UNet2DOutput | tuple[Tensor]:
        out = UNet.forward(self, sample, timestep, class_labels)
        return UNet2DOutput(sample=out) if return_dict else (out,)


def from_unet(unet: UNet, kwargs: dict) -> DifflabUNet2DModel:
    """A :class:`DifflabUNet2DModel` built with the UNet constructor ``kwargs`` (``image_size``
    becomes ``sample_size``; ``_target_`` is dropped), holding ``unet``'s weights (strict load)."""
    kwargs = {k: v for k, v in kwargs.items() if k != "_target_"}
    kwargs["out_channels"] = unet.out_channels
    if "image_size" in kwargs:
        size = kwargs.pop("image_size")
        kwargs["sample_size"] = size if isinstance(size, int) else [int(s) for s in size]
    for key in ("channel_mult", "attention_resolutions"):
        if key in kwargs and kwargs[key] is not None:
            kwargs[key] = [int(v) for v in kwargs[key]]
    model = DifflabUNet2DModel(**kwargs)
    model.load_state_dict(unet.state_dict(), strict=True)
    return model.eval()
