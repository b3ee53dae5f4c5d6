"""Sample from a checkpoint: `python sample.py ckpt=PATH [n=1000 metrics=[fid,kid] ...]` (see conf/sample.yaml)."""

import sys

import hydra
from omegaconf import DictConfig

from difflab.config import register_configs
from difflab.utils.hydra import register_resolvers

register_resolvers()
register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="sample")
def main(cfg: DictConfig) -> None:
    from difflab.sample import main as run

    run(cfg)


def _open_sampler_overrides(argv: list[str]) -> list[str]:
    """``sampler.KEY=VALUE`` edits the checkpoint's own sampler when no ``sampler=NAME`` is
    chosen; the sampler node is then added at run time, so Hydra needs the ``+``."""
    if any(a.startswith("sampler=") for a in argv):
        return argv
    return [f"+{a}" if a.startswith("sampler.") else a for a in argv]


if __name__ == "__main__":
    sys.argv[1:] = _open_sampler_overrides(sys.argv[1:])
    main()
