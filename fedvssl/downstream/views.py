"""The evaluation views of a video list: uniformly spread clips, fixed resize, centre crop."""

from __future__ import annotations

from collections.abc import Sequence

from torch.utils.data import DataLoader

from fedvssl.config.settings import ClipInput
from fedvssl.data.annotations import VideoRecord
from fedvssl.data.datasets import ClipsDataset
from fedvssl.data.transforms import at_crop
from fedvssl.models.device import device_of
from fedvssl.models.precision import pin_memory


def view_loader(
    records: Sequence[VideoRecord],
    clips: ClipInput,
    stride: int,
    num_clips: int,
    resize_hw: Sequence[int],
    batch_size: int,
) -> DataLoader:
    """``num_clips`` test views per video; ``resize_hw`` is given at the reference 112 crop."""
    size_hw = (at_crop(resize_hw[0], clips.crop_size), at_crop(resize_hw[1], clips.crop_size))
    views = ClipsDataset(
        records, clips.clip_len, stride, num_clips, size_hw, clips.crop_size, clips.decode_backend, clips.frame_cache
    )
    pin = pin_memory(device_of(clips.device))
    return DataLoader(views, batch_size=batch_size, num_workers=clips.eval_workers, pin_memory=pin)
