"""The Speed pretext task: sampling, augmentation, head, loss, and that it learns."""

import numpy as np
import pytest
import torch
from helpers import make_speed

from fedvssl.data.datasets import PretextDataset
from fedvssl.data.kinetics import read_kinetics_csv
from fedvssl.federated.training import train_epoch
from fedvssl.ssl.speed import STRIDES


@pytest.mark.parametrize("label", range(len(STRIDES)))
def test_indices_follow_the_stride(label):
    speed = make_speed(clip_len=5)
    idx = speed.indices(100, label, np.random.default_rng(label))
    diffs = np.diff(idx)
    assert len(idx) == 5 and (diffs == STRIDES[label]).all()
    assert idx.min() >= 0 and idx.max() <= 99


def test_short_videos_are_clamped():
    idx = make_speed(clip_len=16).indices(20, STRIDES.index(4), np.random.default_rng(0))
    assert idx.max() == 19 and (np.diff(idx) >= 0).all()


def test_samples_are_deterministic_and_normalised(world):
    records, _ = read_kinetics_csv(world / "kinetics400/annotations/train.csv", world / "kinetics400")
    ds = PretextDataset(records[:4], make_speed(), "auto", seed=(7, 1, 0))
    a, b = ds[2], ds[2]
    assert a["imgs"].shape == (3, 4, 32, 32) and 0 <= a["label"] < 7
    torch.testing.assert_close(a["imgs"], b["imgs"])
    assert abs(float(a["imgs"].mean())) < 3 and float(a["imgs"].std()) > 0.1
    other_round = PretextDataset(records[:4], make_speed(), "auto", seed=(7, 2, 0))[2]
    assert not torch.equal(a["imgs"], other_round["imgs"])


@pytest.mark.parametrize("seed", range(6))
def test_a_repeated_frame_is_augmented_once_with_the_values_of_the_whole_clip(world, seed):
    """Stride 0 augments its one frame and repeats it: every value equals the whole clip's chain,
    draw for draw (flips and every jitter drawn half of the time across the seeds)."""
    from fedvssl.data.samplers import read_clip
    from fedvssl.data.video import make_reader

    records, _ = read_kinetics_csv(world / "kinetics400/annotations/train.csv", world / "kinetics400")
    speed, reader, path = make_speed(clip_len=6), make_reader(), records[seed].path
    speed.augment.brightness, speed.augment.contrast = (0.5, 32), (0.5, 0.2)
    speed.augment.hue_saturation = (0.5, 12, 0.1)

    class StrideZero(np.random.Generator):  # the label draw picks stride 0; every later draw is the seed's
        def integers(self, *args, **kwargs):
            self.integers = super().integers
            return STRIDES.index(0)

    chain, augmented = speed.augment, []
    speed.augment = lambda frames, rng: augmented.append(len(frames)) or chain(frames, rng)
    fast = speed.sample(reader, path, reader.num_frames(path), StrideZero(np.random.PCG64(seed)))
    assert augmented == [1]  # one frame through the chain, not six
    rng = np.random.default_rng(seed)
    idx = speed.indices(reader.num_frames(path), STRIDES.index(0), rng)
    assert len(set(idx.tolist())) == 1
    whole = chain(read_clip(reader, path, idx), rng)
    assert fast["label"] == STRIDES.index(0) and fast["imgs"].is_contiguous()
    assert torch.equal(fast["imgs"], whole)


def test_head_layout_and_init():
    model = make_speed().build_model(seed=3)
    sd = model.state_dict()
    assert list(sd)[120:] == ["cls_head.fc_cls.weight", "cls_head.fc_cls.bias"]
    assert sd["cls_head.fc_cls.weight"].shape == (7, 512)
    assert float(sd["cls_head.fc_cls.weight"].std()) < 0.002 and float(sd["cls_head.fc_cls.bias"].abs().max()) == 0
    again = make_speed().build_model(seed=3).state_dict()
    assert all(torch.equal(sd[k], again[k]) for k in sd)


@pytest.mark.slow
def test_loss_falls_on_a_fixed_batch(world):
    """A short centralised run on real decoded clips: the loss falls and accuracy beats chance."""
    torch.manual_seed(0)
    records, _ = read_kinetics_csv(world / "kinetics400/annotations/train.csv", world / "kinetics400")
    speed = make_speed(lr=0.05)
    ds = PretextDataset(records[:14], speed, "auto", seed=(0,))
    batch = torch.utils.data.default_collate([ds[i] for i in range(len(ds))])
    model = speed.build_model(seed=0)
    model.pretext_head.dropout.p = 0.0
    first = train_epoch(model, speed, [batch])
    for _ in range(25):
        last = train_epoch(model, speed, [batch])
    assert last["train-loss"] < 0.5 * first["train-loss"]
    assert last["accuracy"] > 2.0 / len(STRIDES)
    assert last["num-examples"] == len(ds)
