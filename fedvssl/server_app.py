"""Flower ServerApp: seeded initial model, FedVSSL strategy, final checkpoint."""

from __future__ import annotations

import logging

from flwr.app import ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from hydra.utils import instantiate

from fedvssl.config import CONFIG_KEY, build_method, server_config, to_yaml
from fedvssl.strategy import numpy_to_record
from fedvssl.training import shared_keys, state_to_numpy

log = logging.getLogger(__name__)
app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = server_config(dict(context.run_config))
    model = build_method(cfg).build_model(int(cfg.seed))
    initial = state_to_numpy(model, shared_keys(model, cfg.strategy.share))
    strategy = instantiate(
        cfg.strategy, num_clients=cfg.partition.num_clients, seed=int(cfg.seed), out_dir=cfg.run.dir, _convert_="all"
    )
    strategy.start(
        grid=grid,
        initial_arrays=numpy_to_record(initial),
        num_rounds=int(cfg.num_rounds),
        timeout=float(cfg.runtime.round_timeout_s),
        train_config=ConfigRecord({CONFIG_KEY: to_yaml(cfg)}),
    )
