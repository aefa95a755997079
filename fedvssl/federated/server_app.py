"""Flower ServerApp: seeded initial model, FedVSSL strategy, final checkpoint."""

from __future__ import annotations

import logging
from pathlib import Path

from flwr.app import ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from hydra.utils import instantiate
from omegaconf import DictConfig

from fedvssl.config.checks import CONFIG_KEY, build_method, client_config, server_config, to_yaml
from fedvssl.config.settings import evaluation_settings
from fedvssl.core.run_folder import RunFolder
from fedvssl.data.client_dist import partition_sizes
from fedvssl.data.partitions import PUBLISHED
from fedvssl.federated.records import numpy_to_record
from fedvssl.federated.training import shared_keys, state_to_numpy

log = logging.getLogger(__name__)
app = ServerApp()


def observers(cfg: DictConfig, start_round: int) -> dict:
    """The strategy's optional ``monitor`` and ``logger``, built from their ``_target_``s.

    Neither module is imported when it is off (``monitor.every=0``, no ``logger``).
    """
    built = {}
    if cfg.get("monitor") and cfg.monitor.every:
        # The settings object is passed at call time: Hydra would turn a dataclass argument into config.
        build = instantiate(cfg.monitor, _partial_=True, _convert_="all")
        built["monitor"] = build(settings=evaluation_settings(cfg))
    if cfg.get("logger"):
        log_dir = RunFolder(cfg.run.dir).tensorboard
        built["logger"] = instantiate(cfg.logger, log_dir=str(log_dir), start_round=start_round, _convert_="all")
    return built


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = server_config(dict(context.run_config))
    model = build_method(cfg).build_model(cfg.seed)
    initial = state_to_numpy(model, shared_keys(model, cfg.strategy.share))
    done, history = 0, []
    if cfg.get("resume", False):
        done, saved, history = RunFolder(cfg.run.dir).completed_rounds()
        if saved is not None:
            if list(saved) != list(initial):
                raise ValueError(f"{cfg.run.dir}: the checkpoint of round {done} does not match this configuration")
            initial = saved
            log.info("resuming after round %d of %d", done, cfg.num_rounds)
    if done >= cfg.num_rounds:
        log.info("all %d rounds are already done", done)
        return
    strategy = instantiate(
        cfg.strategy,
        num_clients=cfg.partition.num_clients,
        seed=cfg.seed,
        out_dir=cfg.run.dir,
        start_round=done,
        history=history,
        progress_rounds=cfg.num_rounds if cfg.runtime.progress else 0,
        keep_last=cfg.checkpoints.keep_last,
        keep_every=cfg.checkpoints.keep_every,
        # What bounds each reply's num-examples (see FedVSSL.expected).
        partition_sizes=partition_sizes(Path(cfg.partition.dir), cfg.partition.num_clients),
        published_partitions=cfg.partition.scheme == PUBLISHED,
        **observers(cfg, done),
        _convert_="all",
    )
    try:
        strategy.start(
            grid=grid,
            initial_arrays=numpy_to_record(initial),
            num_rounds=cfg.num_rounds - done,
            timeout=float(cfg.runtime.round_timeout_s),
            train_config=ConfigRecord({CONFIG_KEY: to_yaml(client_config(cfg))}),
            # Flower's server-side evaluation hook runs the monitor (none when it is off).
            evaluate_fn=strategy.evaluate_global if strategy.monitor is not None else None,
        )
    finally:
        strategy.close()
