"""Export a checkpoint as a diffusers pipeline: `python export.py ckpt=PATH out=DIR` (see conf/export.yaml)."""

import hydra
from omegaconf import DictConfig

from difflab.config import register_configs
from difflab.utils.hydra import register_resolvers

register_resolvers()
register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def main(cfg: DictConfig) -> None:
    from difflab.tasks.export import main as run

    run(cfg)


if __name__ == "__main__":
    main()
