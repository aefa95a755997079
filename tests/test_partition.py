"""Partitioners: the reference's properties, determinism, the published schema."""

import json
import random
import subprocess
import sys

import pytest
from helpers import ROOT

from dataset_preparation.synthetic import WorldSpec
from fedvssl.core.errors import DataError
from fedvssl.data.partitions import dirichlet, iid, noniid, noniid_windows, ucf101_items, write_partition


def class_items(counts):
    """Items (name, label) with ``counts[c]`` videos for label c + 1."""
    return [(f"class{c}/vid{c}_{j:04d}", c + 1) for c, n in enumerate(counts) for j in range(n)]


def test_iid_equal_chunks_and_determinism():
    items = class_items([7, 11, 5, 9])
    parts = iid(items, 5, seed=7)
    assert sorted(x for p in parts for x in p) == sorted(items)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert parts == iid(items, 5, seed=7) and parts != iid(items, 5, seed=8)
    with pytest.raises(ValueError, match="num_clients"):
        iid(items, 100, seed=7)


def test_ucf101_iid_is_the_flower_baseline_split(world):
    items, classes = ucf101_items(world / "ucf101")
    expected = list(items)
    random.seed(7)
    random.shuffle(expected)
    parts = iid(items, 5, seed=7)
    assert [x for p in parts for x in p] == expected
    first_train_group = WorldSpec().ucf_test_groups + 1  # trainlist01's order: groups after the test ones
    assert items[0][0].endswith(f"_g{first_train_group:02d}_c01") and "." not in items[0][0]
    assert all(classes[lab - 1] == name.split("/")[0] for name, lab in items)


def test_main_job_splits_ucf101_as_the_partition_command(tmp_path, world):
    """The main job's iid split of UCF-101 is Flower's: trainlist order, then the seeded shuffle."""
    from hydra import compose, initialize_config_dir

    from fedvssl.prepare import screen_and_partition

    overrides = ["dataset=ucf101", f"dataset.root={world}", "partition.num_clients=3", f"run.dir={tmp_path}"]
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[*overrides, f"data.probe_cache={tmp_path / 'cache'}", "finetune=ucf101"])
    screen_and_partition(cfg)
    items, _ = ucf101_items(world / "ucf101")
    assert items != sorted(items)  # the world's trainlist is not in name order, so the check can fail
    for k, part in enumerate(iid(items, 3, seed=7), start=1):
        written = json.loads((tmp_path / "partition" / f"client_dist{k}.json").read_text())
        assert [(r["name"], r["label"]) for r in written] == [tuple(x) for x in part]


def test_noniid_windows_of_the_paper():
    assert noniid_windows(400, 100)[0] == ([0, 1, 2, 3], [395, 396, 397, 398])
    assert noniid_windows(400, 100)[49] == ([49, 50, 51, 52], [346, 347, 348, 349])
    with pytest.raises(ValueError, match="classes"):
        noniid_windows(100, 100)
    with pytest.raises(ValueError, match="even"):
        noniid_windows(400, 7)


def test_noniid_eight_classes_in_complementary_halves():
    counts = [20 + (c * 37) % 50 for c in range(30)]  # 30 classes, uneven sizes, with ties
    items = class_items(counts)
    parts = noniid(items, num_clients=20)
    order = sorted(range(1, 31), key=lambda lab: (counts[lab - 1], lab))
    half = 10
    for i in range(half):
        a, b = parts[i], parts[i + half]
        labels = {lab for _, lab in a}
        assert len(labels) == 8 and labels == {lab for _, lab in b}
        assert labels == {order[p] for p in [*range(i, i + 4), *range(25 - i, 29 - i)]}
        for lab in labels:
            first, second = [n for n, x in a if x == lab], [n for n, x in b if x == lab]
            assert not set(first) & set(second)
            assert len(first) == counts[lab - 1] // 2 and len(second) == counts[lab - 1] - counts[lab - 1] // 2
    assert order[-1] not in {lab for p in parts for _, lab in p}  # the largest class is never used
    assert parts == noniid(class_items(counts), num_clients=20)


def test_dirichlet_uses_every_video_once_and_skews_labels():
    items = class_items([40] * 10)
    skewed = dirichlet(items, 5, alpha=0.1, seed=1)
    flat = dirichlet(items, 5, alpha=100.0, seed=1)
    for parts in (skewed, flat):
        assert sorted(x for p in parts for x in p) == sorted(items) and min(map(len, parts)) >= 1
    mean_classes = [sum(len({lab for _, lab in p}) for p in parts) / 5 for parts in (skewed, flat)]
    assert mean_classes[0] < mean_classes[1]
    assert skewed == dirichlet(items, 5, alpha=0.1, seed=1)


def test_written_files_follow_the_published_schema(tmp_path):
    parts = iid(class_items([3, 4]), 2, seed=0)
    write_partition(parts, ["a_b", "c"], tmp_path, {"scheme": "iid", "seed": 0, "sha256": "x"})
    records = json.loads((tmp_path / "client_dist1.json").read_text())
    assert all(list(r) == ["name", "label"] for r in records)
    assert (tmp_path / "classInd.txt").read_text() == "1 a_b\n2 c\n"
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["counts"] == [len(p) for p in parts] and manifest["num_clients"] == 2


@pytest.mark.parametrize("scheme", ["iid", "noniid", "dirichlet"])
@pytest.mark.slow
def test_commands(tmp_path, world, scheme):
    cmd = [sys.executable, "-m", "dataset_preparation.partition"]
    assert "--num-clients" in subprocess.run([*cmd, scheme, "--help"], cwd=ROOT, capture_output=True, text=True).stdout
    args = [scheme, "--csv", str(world / "kinetics400/annotations/train.csv"), "--out", str(tmp_path / "out")]
    proc = subprocess.run([*cmd, *args, "--num-clients", "4"], cwd=ROOT, capture_output=True, text=True)
    if scheme == "noniid":  # 8 classes cannot form the paper's windows: a clear one-line refusal
        assert proc.returncode != 0 and "noniid needs at least" in proc.stderr.splitlines()[-1]
        return
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert sum(manifest["counts"]) == 64 and manifest["scheme"] == scheme and len(manifest["sha256"]) == 64


def test_a_folder_of_published_partitions_is_never_overwritten(tmp_path):
    """Partition files no command wrote (no manifest.json) stay as they are; ours may be rewritten."""
    published = [{"name": "a_b/x", "label": 1}]
    (tmp_path / "client_dist1.json").write_text(json.dumps(published))
    with pytest.raises(DataError, match=r"partition.dir=.*\(no manifest.json\)"):
        write_partition([[("a_b/y", 1)]], ["a_b"], tmp_path, {"scheme": "iid"})
    assert json.loads((tmp_path / "client_dist1.json").read_text()) == published
    ours = tmp_path / "ours"
    write_partition([[("a_b/y", 1)]], ["a_b"], ours, {"scheme": "iid"})
    write_partition([[("a_b/z", 1)]], ["a_b"], ours, {"scheme": "iid"})  # a run's own split, written again
    assert json.loads((ours / "client_dist1.json").read_text()) == [{"name": "a_b/z", "label": 1}]
