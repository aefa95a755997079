"""A small stand-in for the paper's data, in the layouts that ``dataset.root=/data`` expects.

``python -m dataset_preparation.paper_layout --root <folder>`` writes::

    <root>/kinetics400/annotations/{train,val}.csv    label,youtube_id,time_start,time_end,split
    <root>/kinetics400/{train,val}/<label>/<ytid>_<ssssss>_<eeeeee>.mp4
    <root>/ucf101/ucfTrainTestlist/{classInd,trainlist01,testlist01}.txt
    <root>/ucf101/UCF-101/<Class>/v_<Class>_gXX_cYY.avi
    <root>/hmdb51/testTrainMulti_7030_splits/<class>_test_split1.txt
    <root>/hmdb51/<class>/<video>.avi
    <root>/partitions/k400_noniid/client_dist{1..100}.json, classInd.txt
    <root>/partitions/ucf101_5clients/client_dist{1..5}.json, classInd.txt

The shapes are the published ones (``datasets.md`` in the reference notes), the sizes small:

- Kinetics-400: the official CSV and class folders named by the CSV's labels, with spaces;
  a ``classInd.txt`` of 400 classes in a non-alphabetical order, whose names keep the
  parentheses and apostrophes of labels such as ``hurling (sport)``.
- ``k400_noniid``: FedVSSL's ``DATA/Kinetics-400_annotations``: 100 clients of exactly 8
  classes, clients i and i + 50 sharing a window of 4 small and 4 large classes with
  complementary halves, record order small_0, large_0, small_1, ..., 106 classes used
  (``fedvssl.data.partitions.noniid`` over 108 classes of 2 videos each, so each client
  lists 8 videos).
- ``ucf101_5clients``: the Flower baseline's split of UCF-101 split 1 (seed-7 shuffle of
  trainlist01, 5 contiguous chunks).
- HMDB-51: per-class split files with 1 = train, 2 = test, 0 = unused.

Videos are real encoded files of the synthetic world (``dataset_preparation.synthetic``):
32 frames at 64x48 by default, each class one of its motion patterns.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from dataset_preparation.synthetic import MOTIONS, WorldSpec, render_video, write_video
from fedvssl.data.kinetics import kinetics_stem
from fedvssl.data.partitions import iid, noniid, write_partition

MARKER = "paper_layout.json"
K400_NONIID = "partitions/k400_noniid"
UCF101_5CLIENTS = "partitions/ucf101_5clients"
# Kinetics labels whose folder names keep characters other than letters and underscores.
_SPECIAL_LABELS = (
    "massaging person's head",
    "hurling (sport)",
    "shooting goal (soccer)",
    "passing American football (in game)",
)
_VERBS = ("playing", "riding", "making", "cleaning", "throwing", "catching", "folding", "peeling", "washing", "tying")
_NOUNS = ("drums", "bike", "pizza", "windows", "ball", "frisbee", "paper", "apples", "dishes", "knot")
_NOUNS2 = ("", "outdoors", "at night", "with friends")
_YT = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


@dataclass(frozen=True)
class PaperLayout:
    """Everything that determines the written files; stored in the marker file."""

    seed: int = 0
    num_frames: int = 32
    height: int = 48
    width: int = 64
    k400_clients: int = 100
    k400_classes_with_videos: int = 108  # the 106 that the windows use, and 2 left out, as published
    k400_videos_per_class: int = 2
    k400_val_videos: int = 8  # a val split (val.csv, val/): a short pretraining list for tests
    ucf_groups: int = 3  # groups 1..ucf_test_groups are test, the others train (as split 1)
    ucf_test_groups: int = 1
    ucf_clients: int = 5
    hmdb_per_class: int = 4  # 1 test, 1 unused, the others train
    # False: the lists and partitions only, no video files (enough to compose and check commands).
    videos: bool = True


def kinetics_labels(seed: int) -> list[str]:
    """400 distinct Kinetics-style labels (with spaces), in a seeded, non-alphabetical order."""
    names = list(_SPECIAL_LABELS)
    for verb in _VERBS:
        for noun in _NOUNS:
            names += [f"{verb} {noun} {extra}".strip() for extra in _NOUNS2]
    names = names[:400]
    random.Random(seed).shuffle(names)
    return names


def labels_with_videos(labels: list[str], count: int) -> list[int]:
    """The 1-based labels given videos: spread over the index, the special-character ones among them."""
    special = [labels.index(name) for name in _SPECIAL_LABELS]
    step = len(labels) // count
    others = [i for i in range(0, len(labels), step) if i not in special]
    return sorted(i + 1 for i in special + others[: count - len(special)])


def _spec(layout: PaperLayout) -> WorldSpec:
    return WorldSpec(seed=layout.seed, num_frames=layout.num_frames, height=layout.height, width=layout.width)


def _video(path: Path, motion: str, layout: PaperLayout, rng: np.random.Generator) -> None:
    """One encoded video of ``motion`` (or, with ``layout.videos`` off, nothing: the lists alone).

    Its pixels come from a child of ``rng`` (spawning draws nothing from it), so the names and
    lists drawn from ``rng`` are the same with and without the videos.
    """
    child = rng.spawn(1)[0]
    if layout.videos:
        spec = _spec(layout)
        write_video(path, render_video(motion, child, spec), spec.fps)


def _write_kinetics(root: Path, layout: PaperLayout, labels: list[str], rng: np.random.Generator) -> list:
    """Class folders named by the CSV's labels, per split; returns the train (``<class_dir>/<stem>``, label) items."""
    items = []
    used = labels_with_videos(labels, layout.k400_classes_with_videos)
    for split, per_class, classes in (
        ("train", layout.k400_videos_per_class, used),
        ("val", 1, used[: layout.k400_val_videos]),
    ):
        rows = []
        for label in classes:
            name = labels[label - 1]
            for _ in range(per_class):
                ytid, start = "".join(rng.choice(list(_YT), size=11)), int(rng.integers(0, 300))
                stem = kinetics_stem(ytid, start, start + 10)
                _video(root / split / name / f"{stem}.mp4", MOTIONS[used.index(label) % len(MOTIONS)], layout, rng)
                rows.append((name, ytid, start, start + 10, split))
                if split == "train":
                    items.append((f"{name.replace(' ', '_')}/{stem}", label))
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        with open(root / "annotations" / f"{split}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
            writer.writerows(rows)
    return items


def _write_ucf101(root: Path, layout: PaperLayout, rng: np.random.Generator) -> tuple[list, list[str]]:
    """``ucfTrainTestlist/`` and ``UCF-101/<Class>/``; returns trainlist01's items (no extension) and the classes."""
    train, test = [], []
    classes = ["".join(p.capitalize() for p in m.split("_")) for m in MOTIONS]
    for idx, (motion, cls) in enumerate(zip(MOTIONS, classes, strict=True), start=1):
        for g in range(1, layout.ucf_groups + 1):
            entry = f"{cls}/v_{cls}_g{g:02d}_c01.avi"
            _video(root / "UCF-101" / entry, motion, layout, rng)
            (test if g <= layout.ucf_test_groups else train).append((entry, idx))
    lists = root / "ucfTrainTestlist"
    lists.mkdir(parents=True, exist_ok=True)
    (lists / "classInd.txt").write_text("".join(f"{i} {c}\r\n" for i, c in enumerate(classes, 1)))
    (lists / "trainlist01.txt").write_text("".join(f"{e} {i}\r\n" for e, i in train))
    (lists / "testlist01.txt").write_text("".join(f"{e}\r\n" for e, _ in test))
    return [(os.path.splitext(e)[0], i) for e, i in train], classes


def _write_hmdb51(root: Path, layout: PaperLayout, rng: np.random.Generator) -> None:
    splits = root / "testTrainMulti_7030_splits"
    splits.mkdir(parents=True, exist_ok=True)
    for motion in MOTIONS:
        lines = []
        for i in range(layout.hmdb_per_class):
            name = f"{motion}_clip{i:02d}_f_cm_np1_ri_med_{i}.avi"
            _video(root / motion / name, motion, layout, rng)
            lines.append(f"{name} {2 if i == 0 else 0 if i == 1 else 1} \n")
        (splits / f"{motion}_test_split1.txt").write_text("".join(lines))


def generate(root: str | Path, layout: PaperLayout = PaperLayout()) -> Path:
    """Write the datasets and both partitions under ``root`` (replaced); the marker file last."""
    root = Path(root)
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(layout.seed).spawn(3)]
    labels = kinetics_labels(layout.seed)
    k400 = _write_kinetics(root / "kinetics400", layout, labels, rngs[0])
    ucf, ucf_classes = _write_ucf101(root / "ucf101", layout, rngs[1])
    _write_hmdb51(root / "hmdb51", layout, rngs[2])
    class_dirs = [name.replace(" ", "_") for name in labels]
    write_partition(noniid(k400, layout.k400_clients), class_dirs, root / K400_NONIID, {"scheme": "noniid"})
    # The Flower baseline's split: trainlist01 order, Python's random seeded 7, contiguous chunks.
    write_partition(iid(ucf, layout.ucf_clients, 7), ucf_classes, root / UCF101_5CLIENTS, {"scheme": "iid", "seed": 7})
    tmp = root / (MARKER + ".tmp")
    tmp.write_text(json.dumps(asdict(layout), indent=2))
    os.replace(tmp, root / MARKER)
    return root


def ensure(root: str | Path, layout: PaperLayout = PaperLayout()) -> bool:
    """Generate the layout unless a complete copy with the same settings exists; True if generated."""
    marker = Path(root) / MARKER
    if marker.is_file() and json.loads(marker.read_text()) == asdict(layout):
        return False
    generate(root, layout)
    return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="output folder (replaced)")
    for name, default in asdict(PaperLayout()).items():
        if isinstance(default, bool):
            parser.add_argument(f"--no-{name}", dest=name, action="store_false", help=f"write no {name}")
        else:
            parser.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)
    args = vars(parser.parse_args(argv))
    root = args.pop("root")
    generate(root, PaperLayout(**args))
    print(f"wrote Kinetics-400, UCF-101 and HMDB-51 layouts and {K400_NONIID}, {UCF101_5CLIENTS} under {root}")


if __name__ == "__main__":
    main()
