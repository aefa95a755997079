"""The JPEG frame cache (runtime.decode_backend=cache): its frames, freshness, screening, config and build."""

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import ROOT, make_speed, one_error_line, run_main, run_module
from PIL import Image

from fedvssl.config.checks import check_cache_build, validate
from fedvssl.core.errors import ConfigError, DataError
from fedvssl.data import transforms as T
from fedvssl.data.annotations import VideoRecord
from fedvssl.data.datasets import PretextDataset
from fedvssl.data.frame_cache import CacheMiss, Manifest, entry_path, read_failures, write_manifest
from fedvssl.data.frame_cache_build import build_cache, build_entry
from fedvssl.data.screening import ScreeningSettings, screen, skipped, usable
from fedvssl.data.video import DecordReader, make_reader

QUALITY = 90
# JPEG's error at quality 90 (4:2:0 chroma) on the world's frames, per video: a mean absolute
# error of 1.0-2.3 and a 99.9th percentile of 24-43 grey levels were measured (the largest
# single errors, 50-100, sit on the sharp colour edges of the objects, where chroma
# subsampling blurs); the bounds leave room above that.
MAX_MEAN_ERROR, MAX_P999_ERROR = 3.0, 50.0
TINY_RUN = ["input=tiny", "dataset.pretrain.clips_per_video=1", "partition.num_clients=2"]
TINY_RUN += ["finetune.retrieval.num_clips=2", "runtime.eval_workers=0"]


def world_videos(world: Path) -> list[str]:
    """Two H.264 .mp4 (Kinetics layout) and two MPEG-4 .avi (UCF-101 layout) of the world."""
    mp4 = sorted(str(p) for p in (world / "kinetics400").rglob("*.mp4"))[:2]
    avi = sorted(str(p) for p in (world / "ucf101").rglob("*.avi"))[:2]
    return mp4 + avi


def copies(world: Path, folder: Path) -> list[str]:
    """Copies of the world's videos that a test may change (the world is shared by the session)."""
    folder.mkdir()
    return [shutil.copy2(p, folder / f"{i}-{Path(p).name}") for i, p in enumerate(world_videos(world))]


def built(folder: Path, paths: list[str], short_side: int) -> Path:
    manifest = Manifest(short_side, QUALITY)
    write_manifest(folder, manifest)
    for p in paths:
        assert build_entry(p, folder, manifest).error == ""
    return folder


def jpeg_round_trip(frame: np.ndarray) -> np.ndarray:
    """``frame`` coded as a JPEG at QUALITY and decoded again, by libjpeg-turbo through Pillow."""
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=QUALITY)
    return np.asarray(Image.open(buf).convert("RGB"))


@pytest.mark.parametrize(("short_side", "hw"), [(64, (64, 85)), (144, (96, 128))])
def test_cache_frames_are_the_decoded_frames_resized_within_jpeg_error(world, tmp_path, short_side, hw):
    """At 64 the world's 128x96 frames are resized; at 144 they are kept as decoded (never enlarged)."""
    paths = world_videos(world)
    reader = make_reader("cache", str(built(tmp_path, paths, short_side)))
    assert reader.name == "cache"
    for path in paths:
        decoded = DecordReader().get_frames(path, np.arange(DecordReader().num_frames(path)))
        resized = decoded
        if short_side < min(decoded.shape[1:3]):  # the training resize (bilinear), rounded back to uint8
            clip = T.resize_short_side(T.to_clip(decoded), short_side)
            resized = clip.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        assert reader.num_frames(path) == len(decoded)
        got = reader.get_frames(path, np.arange(len(decoded)))
        assert got.shape == (len(decoded), *hw, 3) and got.dtype == np.uint8
        # The JPEG coding of the resized frames, in order (the cache codes through Pillow too;
        # a grey level of slack for another libjpeg-turbo build's rounding of its inverse DCT) ...
        coded = np.stack([jpeg_round_trip(f) for f in resized])
        assert np.abs(got.astype(np.int16) - coded).max() <= 1, path
        # ... which is within JPEG's error of them.
        err = np.abs(got.astype(np.int16) - resized.astype(np.int16))
        assert err.mean() < MAX_MEAN_ERROR and np.percentile(err, 99.9) < MAX_P999_ERROR, path
        # Any order, repeats included, as decord returns them.
        np.testing.assert_array_equal(reader.get_frames(path, [30, 0, 30, 7]), got[[30, 0, 30, 7]])


def test_indices_past_the_end_repeat_the_last_frame_as_decord_does(world, tmp_path):
    path = world_videos(world)[0]
    reader = make_reader("cache", str(built(tmp_path, [path], 64)))
    n = reader.num_frames(path)
    past, clamped = [n - 2, n - 1, n, n + 10, 0], [n - 2, n - 1, n - 1, n - 1, 0]
    np.testing.assert_array_equal(reader.get_frames(path, past), reader.get_frames(path, clamped))
    np.testing.assert_array_equal(DecordReader().get_frames(path, past), DecordReader().get_frames(path, clamped))


def test_missing_stale_and_undecodable_videos_are_screened_with_their_reason(world, tmp_path):
    videos = copies(world, tmp_path / "videos")
    garbage = tmp_path / "videos" / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    folder = tmp_path / "cache"
    write_manifest(folder, Manifest(64, QUALITY))
    lines = []
    summary = build_cache([*videos, str(garbage)], folder, Manifest(64, QUALITY), workers=0, progress=lines.append)
    assert summary.built == 4 and list(summary.failed) == [str(garbage)]
    assert lines[0] == f"frame cache {folder}: 5 videos, 0 fresh, 5 to build" and "5/5 done (1 failed)" in lines[-1]
    assert set(read_failures(folder)) == {str(garbage)}  # the build records what it could not decode

    entry_path(folder, videos[1]).unlink()  # never cached
    st = os.stat(videos[2])
    os.utime(videos[2], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # changed since it was cached
    records = [VideoRecord(p, 0, Path(p).name) for p in [*videos, str(garbage), str(tmp_path / "absent.mp4")]]
    good, bad = screen(records, min_frames=4, backend="cache", frame_cache=str(folder))
    assert [r.path for r in good] == [videos[0], videos[3]]
    assert {p.name: p.reason for p in bad} == {
        Path(videos[1]).name: "not in the frame cache",
        Path(videos[2]).name: "stale in the frame cache",
        "garbage.mp4": "undecodable",
        "absent.mp4": "missing",
    }
    assert [e["reason"] for e in skipped("pretraining", "train", bad)] == [p.reason for p in bad]
    # The frame count comes from the entry: 48-frame videos are too short for 49-frame clips.
    assert screen(records[:1], min_frames=49, backend="cache", frame_cache=str(folder))[1][0].reason == "too short"

    # The run's limit on unusable videos applies, and the error says how to build the entries.
    settings = ScreeningSettings(4, "cache", True, 1, str(tmp_path / "probes"), 0.5, frame_cache=str(folder))
    with pytest.raises(DataError) as e:
        usable(records, "pretraining", str(tmp_path / "videos"), settings)
    message = str(e.value)
    assert "4 of 6 pretraining videos are unusable (1 missing, 1 not in the frame cache, " in message
    assert "1 stale in the frame cache, 1 undecodable), more than data.max_bad_fraction=0.5" in message
    assert "python -m fedvssl.cache" in message and "\n" not in message

    # While loading, the reader refuses both entries, so a loader never trains on old frames:
    # the stale video's item is replaced by the next video and counted as bad.
    reader = make_reader("cache", str(folder))
    with pytest.raises(CacheMiss, match="stale in the frame cache"):
        reader.get_frames(videos[2], [0])
    with pytest.raises(CacheMiss, match="not in the frame cache"):
        reader.num_frames(videos[1])
    dataset = PretextDataset(records[2:4], make_speed(), "cache", seed=(0,), frame_cache=str(folder))
    assert dataset[0]["bad"] == 0 and dataset[1]["bad"] == -1


def test_the_build_skips_fresh_entries_and_rebuilds_changed_ones(world, tmp_path):
    videos = copies(world, tmp_path / "videos")[:3]
    folder, manifest = tmp_path / "cache", Manifest(64, QUALITY)
    write_manifest(folder, manifest)
    first = build_cache([*videos, videos[0]], folder, manifest, workers=0, progress=lambda line: None)
    assert (first.listed, first.built, first.fresh, first.failed) == (3, 3, 0, {})
    assert first.bytes_written == first.bytes_total == sum(entry_path(folder, p).stat().st_size for p in videos)
    written = {p: entry_path(folder, p).stat().st_mtime_ns for p in videos}

    again = build_cache(videos, folder, manifest, workers=0, progress=lambda line: None)
    assert (again.built, again.fresh, again.bytes_written, again.bytes_total) == (0, 3, 0, first.bytes_total)
    assert {p: entry_path(folder, p).stat().st_mtime_ns for p in videos} == written  # not rewritten

    entry_path(folder, videos[0]).unlink()
    st = os.stat(videos[1])
    os.utime(videos[1], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    resumed = build_cache(videos, folder, manifest, workers=0, progress=lambda line: None)
    assert (resumed.built, resumed.fresh) == (2, 1)
    assert entry_path(folder, videos[2]).stat().st_mtime_ns == written[videos[2]]
    reader = make_reader("cache", str(folder))
    assert reader.get_frames(videos[1], [0]).shape == (1, 64, 85, 3)  # fresh again


def compose(tmp_path: Path, *overrides: str):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("config", ["input=tiny", f"dataset.root={tmp_path / 'data'}", f"run.dir={tmp_path}", *overrides])


def cache_at(folder: Path, short_side: int) -> str:
    write_manifest(folder, Manifest(short_side, QUALITY))
    return str(folder)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["runtime.decode_backend=opencv"], "runtime.decode_backend=opencv must be one of auto, decord, pyav, cache"),
        (["runtime.decode_backend=cache"], "runtime.decode_backend=cache needs runtime.frame_cache=<folder>: build"),
        (["runtime.decode_backend=cache", "runtime.frame_cache={tmp}/nope"], "runtime.frame_cache={tmp}/nope does not"),
        (["runtime.decode_backend=cache", "runtime.frame_cache={tmp}"], "holds no frame cache (no frame_cache.json)"),
        (["runtime.frame_cache={cache41}"], "is read only with runtime.decode_backend=cache (now auto)"),
        # input=tiny: ssl.scales' 144 at the 112 crop is 41 at the 32 crop.
        (
            ["runtime.decode_backend=cache", "runtime.frame_cache={cache40}"],
            "runtime.frame_cache={cache40} holds frames at short side 40, smaller than the 41 that ssl.scales asks "
            "for at input.crop_size=32: build one with runtime.frame_cache_build.short_side=41 or more",
        ),
        (
            ["runtime.decode_backend=cache", "runtime.frame_cache={cache41}", "input.crop_size=64"],
            "smaller than the 82 that ssl.scales asks for at input.crop_size=64",
        ),
        (
            ["runtime.decode_backend=cache", "runtime.frame_cache={cache40}", "ssl.scales=[112]"]
            + ["finetune.training.enabled=true"],
            "smaller than the 41 that finetune.training.scales_wh asks for",
        ),
        (
            ["runtime.decode_backend=cache", "runtime.frame_cache={cache36}", "ssl=vcop", "input.clip_len=4"],
            "smaller than the 37 that ssl.resize_hw asks for",
        ),
    ],
)
def test_bad_decoding_settings_are_one_line_naming_the_key(tmp_path, overrides, expected):
    names = {"tmp": str(tmp_path), **{f"cache{s}": cache_at(tmp_path / f"c{s}", s) for s in (36, 40, 41)}}
    with pytest.raises(ConfigError) as e:
        validate(compose(tmp_path, *(o.format(**names) for o in overrides)))
    assert expected.format(**names) in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_a_cache_large_enough_for_the_run_is_accepted(tmp_path):
    validate(compose(tmp_path, "runtime.decode_backend=cache", f"runtime.frame_cache={cache_at(tmp_path / 'c', 41)}"))
    # VCOP resizes to 128x171 at the 112 crop: 37 at 32, below Speed's 41.
    vcop = ["ssl=vcop", "input.clip_len=4", "runtime.decode_backend=cache"]
    validate(compose(tmp_path, *vcop, f"runtime.frame_cache={cache_at(tmp_path / 'c37', 37)}"))


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ([], "runtime.frame_cache is required: add runtime.frame_cache=<folder>"),
        (["runtime.frame_cache={tmp}/new", "runtime.frame_cache_build.quality=101"], "quality=101 must be at most 100"),
        (
            ["runtime.frame_cache={tmp}/new", "runtime.frame_cache_build.short_side=40"],
            "runtime.frame_cache_build.short_side=40 is smaller than the 41 that ssl.scales asks for",
        ),
        (
            ["runtime.frame_cache={cache48}", "runtime.frame_cache_build.short_side=64"],
            "runtime.frame_cache={cache48} holds a cache of format version 1 at short side 48, quality 90; "
            "runtime.frame_cache_build asks for version 1, 64, 90: use another folder, or the same settings",
        ),
    ],
)
def test_bad_build_settings_are_one_line_naming_the_key(tmp_path, overrides, expected):
    names = {"tmp": str(tmp_path), "cache48": cache_at(tmp_path / "c48", 48)}
    with pytest.raises(ConfigError) as e:
        check_cache_build(compose(tmp_path, *(o.format(**names) for o in overrides)))
    assert expected.format(**names) in str(e.value) and "\n" not in str(e.value), str(e.value)
    check_cache_build(
        compose(tmp_path, f"runtime.frame_cache={names['cache48']}", "runtime.frame_cache_build.short_side=48")
    )


def test_a_run_without_its_cache_stops_before_any_work(tmp_path, flower_env):
    data = tmp_path / "data"
    args = ["runtime.decode_backend=cache", f"runtime.frame_cache={tmp_path / 'nope'}", f"dataset.root={data}"]
    line = one_error_line(run_main([*args, f"hydra.run.dir={tmp_path / 'run'}"], flower_env))
    assert f"runtime.frame_cache={tmp_path / 'nope'} does not exist: build it with python -m fedvssl.cache" in line
    assert not data.exists()


@pytest.mark.slow  # two subprocesses over 192 videos: about 30 s on 2 cores
def test_the_build_command_builds_then_skips(tmp_path, flower_env, world):
    folder = tmp_path / "cache"
    args = ["input=tiny", "finetune=ucf101", f"dataset.root={world}", f"hydra.run.dir={tmp_path / 'run'}"]
    line = one_error_line(run_module("fedvssl.cache", args, flower_env))
    assert "runtime.frame_cache is required" in line
    args += [
        f"runtime.frame_cache={folder}",
        "runtime.frame_cache_build.short_side=48",
        "runtime.frame_cache_build.workers=2",
    ]
    first = run_module("fedvssl.cache", args, flower_env)
    assert first.returncode == 0, first.stderr[-3000:]
    # 64 Kinetics-layout pretraining videos, 64 UCF-101 train and 64 test videos.
    assert f"frame cache {folder}: 192 videos: 192 built, 0 already fresh;" in first.stdout, first.stdout
    assert json.loads((folder / "frame_cache.json").read_text())["short_side"] == 48
    assert len(list((folder / "entries").rglob("*.jpgs"))) == 192
    again = run_module("fedvssl.cache", args, flower_env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"frame cache {folder}: 192 videos: 0 built, 192 already fresh; 0 B written" in again.stdout, again.stdout


@pytest.mark.slow  # a federated round on Ray and a retrieval: about 100 s on 2 cores
def test_a_run_trains_and_evaluates_from_the_cache(tmp_path, flower_env, world):
    videos = sorted(str(p) for p in (world / "kinetics400").rglob("*.mp4"))
    videos += sorted(str(p) for p in (world / "ucf101").rglob("*.avi"))
    folder = tmp_path / "cache"
    write_manifest(folder, Manifest(48, QUALITY))
    assert build_cache(videos, folder, Manifest(48, QUALITY), workers=2, progress=lambda line: None).built == 192
    entry_path(folder, videos[0]).unlink()  # one pretraining video the cache lacks

    run = tmp_path / "run"
    args = [*TINY_RUN, "num_rounds=1", "finetune=ucf101", f"dataset.root={world}", f"hydra.run.dir={run}"]
    proc = run_main([*args, "runtime.decode_backend=cache", f"runtime.frame_cache={folder}"], flower_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [missing] = json.loads((run / "unusable_videos.json").read_text())
    assert (missing["path"], missing["reason"]) == (videos[0], "not in the frame cache")
    [entry] = json.loads((run / "history.json").read_text())
    assert sum(entry["num_examples"]) == 63 and entry["bad-videos"] == [0, 0]
    retrieval = json.loads((run / "results.json").read_text())["ucf101"]["retrieval"]
    assert 0.0 <= retrieval["R@1"] <= retrieval["R@50"] <= 100.0


def test_a_supernode_points_the_run_at_its_own_paths_and_cache(tmp_path):
    from flwr.app import Context, RecordDict

    from fedvssl.config.checks import client_config
    from fedvssl.federated.client_app import node_config

    cfg = client_config(compose(tmp_path, "runtime.decode_backend=cache", "runtime.frame_cache=/server/cache"))
    own = {"partition-id": 3, "videos": "/node/videos", "frame-cache": "/node/cache", "state-dir": "/node/state"}
    cfg = node_config(cfg, Context(run_id=0, node_id=1, node_config=own, state=RecordDict(), run_config={}))
    assert cfg.runtime.frame_cache == "/node/cache" and cfg.runtime.decode_backend == "cache"
    assert cfg.dataset.pretrain.videos == "/node/videos" and cfg.run.dir == "/node/state"
