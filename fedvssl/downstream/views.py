"""The evaluation views of a video list: uniformly spread clips, fixed resize, centre crop."""

from __future__ import annotations

from collections.abc import Sequence

from torch.utils.data import DataLoader

from fedvssl.config.settings import ClipInput
from fedvssl.data.annotations import VideoRecord
from fedvssl.data.datasets import ClipsDataset


def view_loader(
    records: Sequence[VideoRecord],
    clips: ClipInput,
    stride: int,
    num_clips: int,
    resize_hw: Sequence[int],
    batch_size: int,
) -> DataLoader:
    """``num_clips`` test views per video; ``resize_hw`` is given at the reference 112 crop."""
    views = ClipsDataset(
        records, clips.clip_len, stride, num_clips, resize_hw, clips.crop_size, clips.decode_backend, clips.frame_cache
    )
    pin = clips.compute.pin_memory
    return DataLoader(views, batch_size=batch_size, num_workers=clips.eval_workers, pin_memory=pin)
