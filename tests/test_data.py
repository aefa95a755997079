"""The synthetic world in the three official layouts, and the readers that parse them."""

import numpy as np
import pytest
import torch

from dataset_preparation.synthetic import MOTIONS, WorldSpec, render_video
from fedvssl.annotations import DataError, read_hmdb51, read_kinetics_csv, read_ucf101
from fedvssl.dataset import ClipsDataset, uniform_clip_starts


def test_world_is_deterministic():
    spec = WorldSpec(num_frames=6, height=32, width=48)
    a = render_video("grow", np.random.default_rng(1), spec)
    b = render_video("grow", np.random.default_rng(1), spec)
    c = render_video("grow", np.random.default_rng(2), spec)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(int) - c).mean() > 5


def test_motion_not_appearance_defines_the_class():
    """With the same draws, sliding left is sliding right played backwards: same frames, other order."""
    spec = WorldSpec(num_frames=12, height=48, width=64)
    right = render_video("slide_right", np.random.default_rng(5), spec).astype(float)
    left = render_video("slide_left", np.random.default_rng(5), spec).astype(float)

    def flat(frame):  # remove the per-frame brightness flicker
        return frame - frame.mean()

    assert np.abs(flat(right[0]) - flat(left[-1])).mean() < 1.0
    assert np.abs(flat(right[0]) - flat(left[0])).mean() > 5.0


def test_kinetics_layout(world):
    records, classes = read_kinetics_csv(world / "kinetics400/annotations/train.csv", world / "kinetics400")
    assert classes == sorted(m.replace("_", " ") for m in MOTIONS)
    assert len(records) == len(MOTIONS) * WorldSpec().kinetics_per_class
    r = records[0]
    assert r.path.endswith(".mp4") and f"/train/{classes[r.label]}/" in r.path
    stem = r.name.split("/")[1]
    assert len(stem) == 25 and stem[11] == "_" and stem[18] == "_"


def test_ucf101_layout(world):
    train, test, classes = read_ucf101(world / "ucf101", 1)
    assert len(classes) == len(MOTIONS) and classes[0] == "SlideRight"
    spec = WorldSpec()
    per_class = spec.ucf_groups * spec.ucf_clips_per_group
    assert len(test) == len(MOTIONS) * spec.ucf_test_groups * spec.ucf_clips_per_group
    assert len(train) + len(test) == len(MOTIONS) * per_class
    assert all("_g01_" in r.name or "_g02_" in r.name for r in test)
    assert all(r.path.endswith(".avi") and classes[r.label] in r.name for r in train)


def test_hmdb51_layout(world):
    train, test, classes = read_hmdb51(world / "hmdb51", 1)
    assert classes == sorted(MOTIONS)
    spec = WorldSpec()
    assert len(test) == len(MOTIONS) * spec.hmdb_test_per_class
    assert len(train) == len(MOTIONS) * (spec.hmdb_per_class - spec.hmdb_test_per_class - spec.hmdb_unused_per_class)


def test_bad_split_line_names_file_and_line(tmp_path, world):
    import shutil

    root = tmp_path / "ucf"
    shutil.copytree(world / "ucf101", root)
    with open(root / "ucfTrainTestlist" / "testlist01.txt", "a") as f:
        f.write("NoSuchClass/v_NoSuchClass_g01_c01.avi\n")
    with pytest.raises(DataError, match=r"testlist01.txt:\d+: class 'NoSuchClass'"):
        read_ucf101(root, 1)


def test_uniform_clip_starts_follow_the_reference_formula():
    # tick = (N - clip_len * stride + 1) / num_clips, start_k = int(tick / 2 + tick * k)
    assert uniform_clip_starts(100, 16, 2, 10).tolist() == [int(6.9 / 2 + 6.9 * k) for k in range(10)]
    assert uniform_clip_starts(20, 16, 2, 3).tolist() == [0, 0, 0]


def test_clips_dataset_shapes(world):
    train, _, _ = read_ucf101(world / "ucf101", 1)
    ds = ClipsDataset(train[:2], clip_len=4, stride=2, num_clips=3, resize_hw=(37, 49), crop=32, backend="auto")
    item = ds[1]
    views = item["imgs"]
    assert views.shape == (3, 3, 4, 32, 32) and item["label"] == train[1].label and item["bad"] == -1
    assert torch.isfinite(views).all() and views.std() > 0.1
