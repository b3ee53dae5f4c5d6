"""difflab: an experiment framework for image diffusion models.

``difflab.DifflabUNet2DModel`` (difflab's UNet as a diffusers model) is imported on first use,
so ``import difflab`` stays light; after ``import difflab``,
``diffusers.DiffusionPipeline.from_pretrained`` loads pipelines exported by ``export.py``.
"""

__version__ = "0.1.0"

# Names diffusers' loader looks up in the library a model_index.json names (["difflab", ...]):
# the component class and the diffusers base class that gives it its loading method.
_DIFFUSERS_NAMES = ("DifflabUNet2DModel", "ModelMixin")


def __getattr__(name: str):
    if name in _DIFFUSERS_NAMES:
        from difflab.backbones import diffusers_export

        return getattr(diffusers_export, name)
    raise AttributeError(f"module 'difflab' has no attribute {name!r}")
