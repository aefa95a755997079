"""Missing, empty, truncated, undecodable and too-short videos; bad annotation lines."""

import json
import logging
import os

import pytest
import torch
from helpers import make_speed

from fedvssl.core.errors import DataError
from fedvssl.data.annotations import index_videos
from fedvssl.data.client_dist import read_partition
from fedvssl.data.datasets import ClipsDataset, PretextDataset
from fedvssl.data.hmdb51 import read_hmdb51
from fedvssl.data.kinetics import read_kinetics_csv
from fedvssl.data.screening import ProbeCache, enforce, screen
from fedvssl.data.ucf101 import read_ucf101


def kinetics(world):
    return read_kinetics_csv(world / "kinetics400/annotations/train.csv", world / "kinetics400")[0]


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_screen_finds_every_breakage(broken_world, backend):
    records = kinetics(broken_world)
    good, bad = screen(records, min_frames=4, backend=backend)
    reasons = sorted(p.reason for p in bad)
    assert reasons == ["empty", "missing", "too short", "undecodable", "undecodable"]
    assert len(good) == len(records) - 5 and all("/train/" in r.path for r in good)  # flat layout resolved
    assert good == [r for r in records if r not in {b for b in records if b.name in {p.name for p in bad}}]


def test_screen_on_avi_layouts(broken_world):
    for reader in (read_ucf101, read_hmdb51):
        train, test, _ = reader(broken_world / reader.__name__.removeprefix("read_"), 1)
        good, bad = screen(train + test, min_frames=4)
        assert {p.reason for p in bad} >= {"missing", "too short"}
        assert len(good) + len(bad) == len(train + test)


def test_probe_cache_is_reused_and_invalidated(broken_world, tmp_path):
    records = kinetics(broken_world)
    cache = ProbeCache(tmp_path / "probe.json")
    first = screen(records, 4, cache=cache)
    cached = json.loads((tmp_path / "probe.json").read_text())
    assert len(cached) == len(records) - 2  # missing and empty files are never probed
    assert screen(records, 4, cache=ProbeCache(tmp_path / "probe.json")) == first
    victim = first[0][0].path
    cached[victim][1] += 1  # a changed mtime: the entry must not be trusted
    cached[victim][2] = -1
    (tmp_path / "probe.json").write_text(json.dumps(cached))
    assert screen(records, 4, cache=ProbeCache(tmp_path / "probe.json"))[0] == first[0]


def test_enforce_reports_once_or_stops(broken_world, caplog):
    records = kinetics(broken_world)
    _, bad = screen(records, 4)
    with caplog.at_level(logging.WARNING):
        enforce("pretraining", "ROOT", len(records), bad, 0.25)
    assert len(caplog.records) == 1 and "skipping 5 of 64" in caplog.text and "undecodable" in caplog.text
    with pytest.raises(DataError, match=r"^ROOT: 5 of 64 pretraining videos are unusable .*max_bad_fraction=0.05"):
        enforce("pretraining", "ROOT", len(records), bad, 0.05)
    with pytest.raises(DataError, match="5 of 5"):
        enforce("pretraining", "ROOT", 5, bad, 1.0)


def test_loading_replaces_a_broken_video_deterministically(broken_world):
    records = kinetics(broken_world)
    good, bad = screen(records, 4)
    broken = next(r for r in records if r.name == next(p.name for p in bad if p.reason == "undecodable"))
    mixed = [good[0], broken, good[1]]
    ds = PretextDataset(mixed, make_speed(), "auto", seed=(1,))
    item = ds[1]
    assert item["bad"] == 1
    torch.testing.assert_close(item["imgs"], PretextDataset(mixed, make_speed(), "auto", seed=(1,))[2]["imgs"])
    assert ds[0]["bad"] == -1


def test_clips_dataset_flags_instead_of_replacing(broken_world):
    records = kinetics(broken_world)
    bad_path = [r for r in records if r.path and os.path.getsize(r.path) == 0][0]
    ds = ClipsDataset([bad_path], 4, 2, 2, (128, 171), 32, "auto")  # 37 x 49 at the 32 crop
    assert ds[0]["bad"] == 0 and ds[0]["imgs"].shape == (2, 3, 4, 32, 32)


def test_duplicate_stems_prefer_replacement_then_regular_files(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "replacement").mkdir()
    original = tmp_path / "train" / "abcdefghijk_000001_000011.mp4"
    original.write_bytes(b"x")
    os.symlink(original, tmp_path / "train" / "aaa_link_000001_000011.mp4")
    (tmp_path / "zz").mkdir()
    os.symlink(original, tmp_path / "zz" / "abcdefghijk_000001_000011.mp4")
    index_videos.cache_clear()
    assert index_videos(str(tmp_path))["abcdefghijk_000001_000011"] == str(original)
    (tmp_path / "replacement" / "abcdefghijk_000001_000011.mkv").write_bytes(b"y")
    index_videos.cache_clear()
    assert index_videos(str(tmp_path))["abcdefghijk_000001_000011"].endswith(
        "replacement/abcdefghijk_000001_000011.mkv"
    )


def test_kinetics_csv_variants(tmp_path):
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "-abc_def_gh_000010_000020.webm").write_bytes(b"x")
    csv = tmp_path / "train.csv"
    csv.write_text(
        'label,youtube_id,time_start,time_end,split,is_cc\n"shooting goal (soccer)",-abc_def_gh,10,20,train,0\n'
    )
    [rec], classes = read_kinetics_csv(csv, tmp_path / "v")
    assert classes == ["shooting goal (soccer)"] and rec.name == "shooting_goal_(soccer)/-abc_def_gh_000010_000020"
    assert rec.path.endswith(".webm") and rec.label == 0
    test_csv = tmp_path / "test.csv"
    test_csv.write_text("youtube_id,time_start,time_end,split\n-abc_def_gh,10,20,test\n")
    [unlabelled], _ = read_kinetics_csv(test_csv, tmp_path / "v", "test")
    assert unlabelled.label == -1 and unlabelled.path


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("label,youtube_id,time_start,time_end,split\nx,abcdefghijk,ten,20,train\n", r"train.csv:2: bad Kinetics row"),
        ("label,youtube_id,time_start,time_end,split\nx,short,10,20,train\n", r"train.csv:2: .*not 11 characters"),
        ("label,time_start,time_end,split\n", r"train.csv:1: missing column"),
    ],
)
def test_bad_csv_lines_name_file_and_line(tmp_path, content, match):
    (tmp_path / "train.csv").write_text(content)
    with pytest.raises(DataError, match=match):
        read_kinetics_csv(tmp_path / "train.csv", tmp_path)


def test_bad_partition_records_are_named(tmp_path):
    (tmp_path / "client_dist1.json").write_text(json.dumps([{"name": "a/x", "label": 1}, {"name": "b/y"}]))
    with pytest.raises(DataError, match=r"client_dist1.json: record 1 needs"):
        read_partition(tmp_path / "client_dist1.json", tmp_path)
    (tmp_path / "client_dist2.json").write_text(json.dumps([{"name": "b/y", "label": 1}]))
    with pytest.raises(DataError, match=r"record 0 \(b/y\) does not match class 'a'"):
        read_partition(tmp_path / "client_dist2.json", tmp_path, classes=["a", "b"])


def test_hmdb_bad_line(tmp_path, world):
    import shutil

    shutil.copytree(world / "hmdb51", tmp_path / "h")
    split = sorted((tmp_path / "h" / "testTrainMulti_7030_splits").glob("*"))[0]
    split.write_text(split.read_text() + "video.avi 7\n")
    with pytest.raises(DataError, match=rf"{split.name}:\d+: expected '<video> <0\|1\|2>'"):
        read_hmdb51(tmp_path / "h", 1)


def test_items_do_not_depend_on_the_number_of_workers(world):
    """Per-item seeds: two DataLoader workers yield exactly what the main process yields."""
    ds = PretextDataset(kinetics(world)[:4], make_speed(), "auto", seed=(3, 1, 0))
    serial = list(torch.utils.data.DataLoader(ds, batch_size=2))
    parallel = list(torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2))
    for a, b in zip(serial, parallel, strict=True):
        torch.testing.assert_close(a["imgs"], b["imgs"])
        assert torch.equal(a["label"], b["label"])
