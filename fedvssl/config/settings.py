"""Typed settings: each stage's values, read from Hydra's config once and checked there.

Code below the entry points receives these frozen dataclasses (or plain values from
them), never the whole config. They are Hydra structured configs: :func:`settings`
takes exactly a dataclass's fields from a config node, and OmegaConf checks each
value's type and converts it (``40`` for a float field becomes ``40.0``) in one place.
The dataclasses of ``data`` live beside their code; those of the later stages live here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf

from fedvssl.core.errors import ConfigError
from fedvssl.data.lists import DownstreamSet, PretrainSource
from fedvssl.data.pretraining import PartitionSettings
from fedvssl.data.screening import ScreeningSettings
from fedvssl.models.precision import Compute, Precision
from fedvssl.models.r3d import BackboneSize

T = TypeVar("T")


def _writable(node: DictConfig) -> DictConfig:
    """A frozen dataclass's schema made mergeable, nested frozen dataclasses (``Precision``) included."""
    OmegaConf.set_readonly(node, False)
    for key in node:
        if isinstance(child := node._get_node(key), DictConfig):
            _writable(child)
    return node


def settings(cls: type[T], node: DictConfig | dict[str, Any], **values: Any) -> T:
    """The fields of dataclass ``cls`` from ``node`` (others ignored), plus ``values``, type-checked."""
    names = [f.name for f in fields(cls)]
    picked = {k: node[k] for k in names if k in node and k not in values}
    try:
        merged = OmegaConf.merge(_writable(OmegaConf.structured(cls)), {**picked, **values})
        return OmegaConf.to_object(merged)
    except Exception as e:  # OmegaConf's errors carry the key apart from the message
        key = getattr(e, "full_key", "") or "?"
        raise ConfigError(f"{cls.__name__}: {key}: {str(e).splitlines()[0]}") from None


@dataclass(frozen=True)
class ClientSettings:
    """What a client's local training uses (``federated.training.local_train``)."""

    seed: int
    share: str  # strategy.share: which tensors travel
    device: str
    torch_threads: int
    decode_backend: str
    num_workers: int
    batch_size: int
    progress: bool
    failure_rate: float  # fault.client_failure_rate
    clips_per_video: int  # dataset.pretrain.clips_per_video
    partition_dir: str
    videos: str  # dataset.pretrain.videos
    run_dir: str
    precision: Precision = field(default_factory=Precision)  # runtime.precision
    prefetch_factor: int = 2  # runtime.prefetch_factor: batches each loader worker keeps ready
    frame_cache: str | None = None  # runtime.frame_cache: read with decode_backend=cache


@dataclass(frozen=True)
class ClipInput:
    """How downstream clips are read and where the model runs."""

    clip_len: int
    crop_size: int
    decode_backend: str
    eval_workers: int
    device: str
    progress: bool
    precision: Precision = field(default_factory=Precision)  # runtime.precision
    frame_cache: str | None = None  # runtime.frame_cache: read with decode_backend=cache

    @property
    def compute(self) -> Compute:
        """``device`` (``auto`` resolved) in ``precision``."""
        return Compute.on(self.device, self.precision)


@dataclass(frozen=True)
class RetrievalSettings:
    num_clips: int
    stride: int
    resize_hw: list[int]
    ks: list[int]
    batch_size: int
    compare_random_init: bool


@dataclass(frozen=True)
class FinetuneSettings:
    enabled: bool
    linear_probe: bool
    epochs: int
    milestones: list[int]
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    grad_clip: float
    dropout: float
    stride: int
    scales_wh: list[list[int]]
    flip_p: float
    brightness: list[float]
    contrast: list[float]
    hue_saturation: list[float]
    num_test_clips: int
    accumulate: int = 1  # forward passes per optimizer step, of batch_size / accumulate clips each


@dataclass(frozen=True)
class EvaluationSettings:
    """Everything the downstream evaluation uses."""

    seed: int
    backbone: BackboneSize
    clips: ClipInput
    retrieval: RetrievalSettings
    finetune: FinetuneSettings
    screening: ScreeningSettings
    datasets: list[DownstreamSet] = field(default_factory=list)


def screening(cfg: DictConfig) -> ScreeningSettings:
    return settings(
        ScreeningSettings,
        cfg.data,
        min_frames=cfg.input.clip_len,
        decode_backend=cfg.runtime.decode_backend,
        frame_cache=cfg.runtime.get("frame_cache"),
    )


def pretrain_source(cfg: DictConfig) -> PretrainSource:
    return settings(PretrainSource, cfg.dataset.pretrain)


def partition_settings(cfg: DictConfig) -> PartitionSettings:
    return settings(PartitionSettings, cfg.partition)


def downstream_set(cfg: DictConfig, name: str) -> DownstreamSet:
    return settings(DownstreamSet, cfg.dataset[name], name=name)


def client_settings(cfg: DictConfig) -> ClientSettings:
    return settings(
        ClientSettings,
        cfg.runtime,
        seed=cfg.seed,
        share=cfg.strategy.share,
        batch_size=cfg.train.batch_size,
        failure_rate=cfg.get("fault", {}).get("client_failure_rate", 0.0),
        partition_dir=cfg.partition.dir,
        videos=cfg.dataset.pretrain.videos,
        # 1, the reference's one local epoch, unless the dataset asks for more.
        clips_per_video=cfg.dataset.pretrain.get("clips_per_video", 1),
        run_dir=cfg.run.dir,
    )


def evaluation_settings(cfg: DictConfig) -> EvaluationSettings:
    return EvaluationSettings(
        seed=cfg.seed,
        backbone=settings(BackboneSize, cfg.model),
        clips=settings(ClipInput, cfg.runtime, clip_len=cfg.input.clip_len, crop_size=cfg.input.crop_size),
        retrieval=settings(RetrievalSettings, cfg.finetune.retrieval),
        finetune=settings(FinetuneSettings, cfg.finetune.training),
        screening=screening(cfg),
        datasets=[downstream_set(cfg, name) for name in cfg.finetune.datasets],
    )
