"""Sample from a checkpoint: `python sample.py ckpt=PATH [n=1000 metrics=[fid,kid] ...]` (see conf/sample.yaml)."""

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


if __name__ == "__main__":
    main()
