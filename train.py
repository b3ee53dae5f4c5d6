"""Train a diffusion model: `python train.py [overrides]` (see README.md and conf/train.yaml)."""

import hydra
from omegaconf import DictConfig

from difflab.config import register_configs
from difflab.utils.hydra import register_resolvers

register_resolvers()
register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from difflab.train import main as train
    from difflab.utils.sweeps import run_job

    # run_job: in a multirun a failed job is recorded and the sweep goes on (utils/sweeps.py)
    return run_job(train, cfg, script=__file__)


if __name__ == "__main__":
    main()
