"""Config checks and the bridge from Hydra's composed config to the Flower apps.

Every check runs before any data, model or Ray work and fails with one line that
names the offending key and value.
"""

from __future__ import annotations

import os
from pathlib import Path

from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from fedvssl.core.errors import ConfigError
from fedvssl.data.frame_cache import VERSION, read_manifest
from fedvssl.data.lists import DOWNSTREAM_READERS, PRETRAIN_FORMATS
from fedvssl.data.partitions import PUBLISHED, SCHEMES
from fedvssl.data.transforms import at_crop
from fedvssl.data.video import BACKENDS
from fedvssl.models.precision import Precision
from fedvssl.ssl.base import SSLMethod

# The Hydra configs: conf/ beside the package in a checkout, fedvssl/conf once installed.
# The package's folder: installed, the configs ship inside it as fedvssl/conf; in a checkout
# they stay at the top level, beside it.
_PACKAGE = Path(__file__).resolve().parents[1]
CONF_DIR = str(_PACKAGE / "conf" if (_PACKAGE / "conf" / "config.yaml").is_file() else _PACKAGE.parent / "conf")
CONFIG_ENV = "FEDVSSL_CONFIG"
CONFIG_KEY = "fedvssl-config"


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _integer(value: object, key: str, minimum: int) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
    _check(ok, f"{key}={value} must be an integer >= {minimum}")


def missing_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    """Keys left at ``???``, found without resolving interpolations (which would fail on them)."""
    found = []
    for key in cfg:
        if OmegaConf.is_missing(cfg, key):
            found.append(f"{prefix}{key}")
        elif not OmegaConf.is_interpolation(cfg, key) and isinstance(cfg[key], DictConfig):
            found += missing_keys(cfg[key], f"{prefix}{key}.")
    return found


def _check_components(cfg: DictConfig, n: int) -> None:
    """The parts that check themselves (strategy, attack, monitor) and the optional logger, before any work."""
    settings = OmegaConf.to_container(cfg.strategy, resolve=True)
    try:  # the strategy class checks its own settings; asking it here makes them fail before any work
        get_class(settings.pop("_target_")).check_settings(num_clients=n, **settings)
    except (ValueError, TypeError, ImportError, AttributeError) as e:
        raise ConfigError(str(e)) from None
    attack = cfg.get("fault", {}).get("attack")
    if attack is not None:  # checked by its class, as the strategy is
        try:
            instantiate(attack).check(n)
        except (ValueError, TypeError) as e:
            raise ConfigError(str(e).splitlines()[0]) from None
    if cfg.get("monitor") and cfg.monitor.every != 0:  # checked by its class, as the strategy is
        monitor = OmegaConf.to_container(cfg.monitor, resolve=True)
        try:
            get_class(monitor.pop("_target_")).check_settings(evaluated=list(cfg.finetune.datasets), **monitor)
        except (ValueError, TypeError, ImportError, AttributeError) as e:
            raise ConfigError(str(e)) from None
    if cfg.get("logger"):
        try:  # an optional package (tensorboard) that is not installed fails here, before any work
            get_class(cfg.logger._target_)
        except (ImportError, AttributeError, ValueError) as e:
            while e.__cause__ is not None:  # Hydra wraps the import's own error twice
                e = e.__cause__
            message = str(e).splitlines()[0]
            raise ConfigError(message if "logger" in message else f"logger: {message}") from None


def _check_numbers(cfg: DictConfig) -> None:
    """The integer settings, including fine-tuning's (checked now, not after the pretraining rounds)."""
    _integer(cfg.seed, "seed", 0)
    _integer(cfg.partition.get("seed", 0), "partition.seed", 0)
    _integer(cfg.num_rounds, "num_rounds", 1)
    _integer(cfg.input.clip_len, "input.clip_len", 1)
    _integer(cfg.input.crop_size, "input.crop_size", 16)
    _integer(cfg.train.batch_size, "train.batch_size", 1)
    tuning = cfg.finetune.training
    _integer(tuning.batch_size, "finetune.training.batch_size", 1)
    _integer(tuning.get("accumulate", 1), "finetune.training.accumulate", 1)
    _check(
        tuning.batch_size % tuning.get("accumulate", 1) == 0,
        f"finetune.training.accumulate={tuning.get('accumulate')} must divide "
        f"finetune.training.batch_size={tuning.batch_size} (the clips per optimizer step)",
    )
    _integer(cfg.checkpoints.keep_last, "checkpoints.keep_last", 1)
    _integer(cfg.checkpoints.keep_every, "checkpoints.keep_every", 0)


def validate(cfg: DictConfig) -> None:
    """Fail fast on values Hydra cannot check by itself."""
    for key in missing_keys(cfg):
        raise ConfigError(f"{key} is required: add {key}=<value>")
    n = cfg.partition.num_clients
    _check(isinstance(n, int) and n >= 1, f"partition.num_clients={n} must be a positive integer")
    _check_components(cfg, n)
    _check_numbers(cfg)
    device = str(cfg.runtime.device)
    _check(
        device in ("cpu", "auto") or device.startswith("cuda"), f"runtime.device={device} must be cpu, cuda[:N] or auto"
    )
    if device.startswith("cuda"):
        import torch

        _check(torch.cuda.is_available(), f"runtime.device={device} but no CUDA device is available here")
    scheme = cfg.partition.scheme
    _check(scheme in (*SCHEMES, PUBLISHED), f"partition.scheme={scheme} is not a known scheme")
    fmt = cfg.dataset.pretrain.format
    _check(fmt in PRETRAIN_FORMATS, f"dataset.pretrain.format={fmt} must be one of {', '.join(PRETRAIN_FORMATS)}")
    frac = cfg.data.max_bad_fraction
    _check(0.0 <= frac <= 1.0, f"data.max_bad_fraction={frac} must be in [0, 1]")
    target = cfg.ssl.get("_target_", "")
    _check(
        isinstance(target, str) and target.startswith("fedvssl.ssl."),
        f"ssl._target_={target} is not a fedvssl.ssl method",
    )
    datasets = cfg.finetune.datasets
    _check(
        isinstance(datasets, ListConfig) and len(set(map(str, datasets))) == len(datasets),
        f"finetune.datasets={datasets} must be a list without repeats, such as [ucf101, hmdb51] or []",
    )
    for name in datasets:
        _check(
            name in DOWNSTREAM_READERS,
            f"finetune.datasets contains {name!r}; expected a subset of {list(DOWNSTREAM_READERS)}",
        )
    try:
        Precision(**cfg.runtime.get("precision", {}))
    except (ValueError, TypeError) as e:
        raise ConfigError(f"runtime.precision: {e}") from None
    try:
        method = build_method(cfg)
    except Exception as e:  # Hydra wraps the method's own ValueError; keep its message
        cause = e.__cause__ or e
        raise ConfigError(f"ssl={target.rsplit('.', 1)[-1]}: {cause}") from None
    _check(isinstance(method, SSLMethod), f"ssl._target_={target} does not build an SSLMethod")
    check_decoding(cfg)  # after the method: the resize sizes it checks are the method's


def largest_resize(cfg: DictConfig) -> tuple[int, str]:
    """The largest short side, in pixels, that this run resizes frames to, and the key that asks for it.

    Sizes are written at the 112 crop and scale with ``input.crop_size``. A fixed W x H
    resize counts by its smaller side: landscape frames at least as wide as its aspect
    (4:3 here, as Kinetics, UCF-101 and HMDB-51 are or wider) are then never enlarged.
    """
    asks = [(s, "ssl.scales") for s in cfg.ssl.get("scales", [])]
    if "resize_hw" in cfg.ssl:
        asks.append((min(cfg.ssl.resize_hw), "ssl.resize_hw"))
    asks.append((min(cfg.finetune.retrieval.resize_hw), "finetune.retrieval.resize_hw"))
    if cfg.finetune.training.enabled:
        asks += [(min(wh), "finetune.training.scales_wh") for wh in cfg.finetune.training.scales_wh]
    crop = cfg.input.crop_size
    size, key = max(((at_crop(s, crop, minimum=crop), k) for s, k in asks), key=lambda a: a[0])
    return size, key


def check_decoding(cfg: DictConfig) -> None:
    """``runtime.decode_backend``, and with ``cache`` a built frame cache whose frames are large enough."""
    backend, folder = cfg.runtime.decode_backend, cfg.runtime.get("frame_cache")
    _check(backend in BACKENDS, f"runtime.decode_backend={backend} must be one of {', '.join(BACKENDS)}")
    build = "build it with python -m fedvssl.cache and this run's overrides"
    if backend != "cache":
        _check(
            folder is None,
            f"runtime.frame_cache={folder} is read only with runtime.decode_backend=cache (now {backend}): "
            "add runtime.decode_backend=cache, or leave runtime.frame_cache out",
        )
        return
    _check(folder is not None, f"runtime.decode_backend=cache needs runtime.frame_cache=<folder>: {build}")
    _check(os.path.isdir(folder), f"runtime.frame_cache={folder} does not exist: {build}")
    try:
        manifest = read_manifest(folder)
    except (ValueError, KeyError) as e:
        raise ConfigError(f"runtime.frame_cache={folder}: {e}") from None
    _check(manifest is not None, f"runtime.frame_cache={folder} holds no frame cache (no frame_cache.json): {build}")
    _check(
        manifest.version == VERSION,
        f"runtime.frame_cache={folder} has format version {manifest.version}, this fedvssl reads {VERSION}: "
        "build a new one in another folder",
    )
    size, key = largest_resize(cfg)
    _check(
        manifest.short_side >= size,
        f"runtime.frame_cache={folder} holds frames at short side {manifest.short_side}, smaller than the {size} "
        f"that {key} asks for at input.crop_size={cfg.input.crop_size}: build one with "
        f"runtime.frame_cache_build.short_side={size} or more in another folder",
    )


def check_cache_build(cfg: DictConfig) -> None:
    """``runtime.frame_cache`` and ``runtime.frame_cache_build`` for ``python -m fedvssl.cache``."""
    folder, b = cfg.runtime.get("frame_cache"), cfg.runtime.frame_cache_build
    _check(folder is not None, "runtime.frame_cache is required: add runtime.frame_cache=<folder>")
    _integer(b.short_side, "runtime.frame_cache_build.short_side", 16)
    _integer(b.quality, "runtime.frame_cache_build.quality", 1)
    _check(b.quality <= 100, f"runtime.frame_cache_build.quality={b.quality} must be at most 100")
    if b.workers is not None:
        _integer(b.workers, "runtime.frame_cache_build.workers", 0)
    size, key = largest_resize(cfg)
    _check(
        b.short_side >= size,
        f"runtime.frame_cache_build.short_side={b.short_side} is smaller than the {size} that {key} asks for "
        f"at input.crop_size={cfg.input.crop_size}",
    )
    _check(not os.path.isfile(folder), f"runtime.frame_cache={folder} is a file, not a folder")
    try:
        manifest = read_manifest(folder) if os.path.isdir(folder) else None
    except (ValueError, KeyError) as e:
        raise ConfigError(f"runtime.frame_cache={folder}: {e}") from None
    if manifest is not None:
        _check(
            (manifest.version, manifest.short_side, manifest.quality) == (VERSION, b.short_side, b.quality),
            f"runtime.frame_cache={folder} holds a cache of format version {manifest.version} at short side "
            f"{manifest.short_side}, quality {manifest.quality}; runtime.frame_cache_build asks for version "
            f"{VERSION}, {b.short_side}, {b.quality}: use another folder, or the same settings",
        )


def build_method(cfg: DictConfig) -> SSLMethod:
    """Instantiate ``cfg.ssl`` at this run's clip length, crop size and backbone size."""
    size = {"width": cfg.model.width, "blocks": cfg.model.blocks}  # the model group also holds head settings
    return instantiate(
        cfg.ssl, clip_len=cfg.input.clip_len, crop_size=cfg.input.crop_size, backbone=size, _convert_="all"
    )


CLIENT_PRETRAIN_KEYS = ("videos", "clips_per_video")


def client_config(cfg: DictConfig) -> DictConfig:
    """The part of the run config a client uses: what the server sends it with every round.

    The keys keep their places, so a SuperNode's own paths (``client_app.NODE_OVERRIDES``)
    apply to it as to the full config.
    """
    return OmegaConf.create(
        {
            "seed": cfg.seed,
            "ssl": cfg.ssl,
            "input": cfg.input,
            "model": cfg.model,
            "runtime": cfg.runtime,
            "train": cfg.train,
            "fault": cfg.get("fault", {}),
            "strategy": {"share": cfg.strategy.share},
            "partition": {"dir": cfg.partition.dir},
            "dataset": {"pretrain": {k: v for k, v in cfg.dataset.pretrain.items() if k in CLIENT_PRETRAIN_KEYS}},
            "run": {"dir": cfg.run.dir},
        }
    )


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def from_yaml(text: str) -> DictConfig:
    """Parse a config sent over the wire: plain YAML, never evaluated."""
    cfg = OmegaConf.create(text)
    if not isinstance(cfg, DictConfig):
        raise ConfigError("the fedvssl config must be a YAML mapping")
    return cfg


def server_config(run_config: dict) -> DictConfig:
    """The run's config: a path in the Flower run config, else ``$FEDVSSL_CONFIG``."""
    path = run_config.get("config-path") or os.environ.get(CONFIG_ENV)
    if not path:
        raise ConfigError(f"no fedvssl config: set run config 'config-path' or ${CONFIG_ENV}")
    with open(path) as f:
        return from_yaml(f.read())
