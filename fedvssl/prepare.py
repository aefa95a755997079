"""Prepare a run for ``flwr run`` (Flower's simulation or deployment runtime).

``python -m fedvssl.prepare [overrides]`` composes the same Hydra config as
``fedvssl.main``, checks it, prepares the data and partitions, writes the resolved
config into the run folder, and prints the ``flwr run`` line that uses it. The
ServerApp and ClientApp read nothing else, so there is no second copy of any default.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from fedvssl.config import CONF_DIR, validate
from fedvssl.errors import one_line_errors
from fedvssl.run_setup import set_up_run


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
@one_line_errors
def main(cfg: DictConfig) -> None:
    validate(cfg)
    path = set_up_run(cfg)
    print(path)
    print(f"""flwr run . <superlink> --run-config "config-path='{path}'" --stream""")


if __name__ == "__main__":
    main()
