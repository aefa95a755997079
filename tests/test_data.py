"""The synthetic world in the three official layouts, and the readers that parse them."""

import numpy as np
import pytest
import torch

from dataset_preparation.synthetic import _HEADINGS, MOTIONS, WorldSpec, _trajectory, render_video
from fedvssl.core.errors import DataError
from fedvssl.data.datasets import ClipsDataset
from fedvssl.data.hmdb51 import read_hmdb51
from fedvssl.data.kinetics import read_kinetics_csv
from fedvssl.data.samplers import uniform_clip_starts
from fedvssl.data.ucf101 import read_ucf101
from fedvssl.data.video import DecordReader


def test_world_is_deterministic():
    spec = WorldSpec(num_frames=6, height=32, width=48)
    a = render_video("grow", np.random.default_rng(1), spec)
    b = render_video("grow", np.random.default_rng(1), spec)
    c = render_video("grow", np.random.default_rng(2), spec)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(int) - c).mean() > 5


def test_datasets_written_side_by_side_equal_those_written_one_by_one(tmp_path):
    """``generate`` writes the datasets in spawned processes; here they are written again in this
    process, which has torch loaded and so another memory layout. Videos agree frame for frame,
    the rest byte for byte."""
    from dataset_preparation import synthetic as S

    spec = WorldSpec(
        num_frames=4, height=48, width=64, kinetics_per_class=1, ucf_groups=2, ucf_test_groups=1, hmdb_per_class=2,
        hmdb_test_per_class=1, hmdb_unused_per_class=0,
    )  # fmt: skip
    S.generate(tmp_path / "parallel", spec)
    seeds = np.random.SeedSequence(spec.seed).spawn(3)
    for (write, name), seed in zip(
        ((S._write_kinetics, "kinetics400"), (S._write_ucf101, "ucf101"), (S._write_hmdb51, "hmdb51")),
        seeds,
        strict=True,
    ):
        write(tmp_path / "serial" / name, spec, np.random.default_rng(seed))
    files = sorted(p.relative_to(tmp_path / "serial") for p in (tmp_path / "serial").rglob("*") if p.is_file())
    assert len(files) > 8 * 4
    reader = DecordReader()
    for f in files:
        a, b = tmp_path / "parallel" / f, tmp_path / "serial" / f
        if f.suffix in (".mp4", ".avi"):
            # Containers stamp the time of writing into their headers, so videos are compared by frames.
            n = reader.num_frames(str(b))
            assert reader.num_frames(str(a)) == n, f
            np.testing.assert_array_equal(
                reader.get_frames(str(a), range(n)), reader.get_frames(str(b), range(n)), str(f)
            )
        else:
            assert a.read_bytes() == b.read_bytes(), f


def test_world_has_an_arrow_of_time():
    """Every class moves forward in a way whose time reversal is no class of the world."""
    spec = WorldSpec(num_frames=30, height=48, width=64)
    for motion, heading in _HEADINGS.items():
        cx, cy, _, _ = _trajectory(motion, np.random.default_rng(3), spec)
        step = np.deg2rad(heading)
        along = np.diff(cx) * np.cos(step) + np.diff(cy) * np.sin(step)
        assert along.min() > 0.5, motion  # always forward along its heading, pixels per frame
        reverse = (heading + 180) % 360
        assert all(abs((h - reverse + 180) % 360 - 180) > 1 for h in _HEADINGS.values()), motion
    cx, cy, _, _ = _trajectory("orbit_cw", np.random.default_rng(3), spec)
    dx, dy = np.diff(cx), np.diff(cy)
    assert (dx[:-1] * dy[1:] - dy[:-1] * dx[1:] > 0).all()  # turning clockwise on screen (y down)
    assert (np.diff(_trajectory("spin_cw", np.random.default_rng(3), spec)[3]) > 0).all()
    radius = _trajectory("grow", np.random.default_rng(3), spec)[2]
    assert (np.diff(radius) > 0).mean() > 0.85  # grows, except where it starts small again
    assert not {"slide_left", "rise", "orbit_ccw", "spin_ccw", "shrink"} & set(MOTIONS)


def test_background_contrast_controls_the_texture_behind_the_objects():
    """The default plain background: one colour per video, the texture only on the objects."""
    spec = WorldSpec(num_frames=2, height=48, width=64, objects=0)
    plain = render_video("fall", np.random.default_rng(4), spec).astype(float)
    textured = render_video(
        "fall", np.random.default_rng(4), WorldSpec(**{**spec.__dict__, "background_contrast": 1.0})
    )
    assert plain[0].std(axis=(0, 1)).max() < 1.0  # flat up to rounding
    assert textured[0].astype(float).std(axis=(0, 1)).max() > 10.0
    assert np.abs(plain[0].mean(axis=(0, 1)) - textured[0].mean(axis=(0, 1))).max() < 2.0  # same colour on average
    with_objects = render_video("fall", np.random.default_rng(4), WorldSpec(num_frames=2, height=48, width=64))
    assert with_objects[0].astype(float).std(axis=(0, 1)).max() > 10.0  # the objects keep their texture


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
    test_groups = {f"_g{g:02d}_" for g in range(1, spec.ucf_test_groups + 1)}
    assert all(any(g in r.name for g in test_groups) for r in test)
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
    # The test resize as the configs give it (128 x 171 at the reference 112 crop) is 37 x 49 at 32.
    ds = ClipsDataset(train[:2], clip_len=4, stride=2, num_clips=3, resize_hw=(128, 171), crop=32, backend="auto")
    assert ds.resize_hw == (37, 49)
    item = ds[1]
    views = item["imgs"]
    assert views.shape == (3, 3, 4, 32, 32) and item["label"] == train[1].label and item["bad"] == -1
    assert torch.isfinite(views).all() and views.std() > 0.1
