"""Client partitions in the FedVSSL ``client_dist<k>.json`` schema: the splitting schemes.

Every scheme returns one item list per client; :func:`write_partition` writes
``client_dist<k>.json`` (k = 1..N; a JSON list of ``{"name": "<class_dir>/<stem>",
"label": 1..C}``, exactly the schema of the published FedVSSL partitions, so ours
and theirs are interchangeable), the ``classInd.txt`` the labels index, and
``manifest.json`` with the counts, the classes per client, the parameters and a
SHA-256 of the input list. The command is ``dataset_preparation/partition.py``.

- ``iid``: seeded shuffle (Python's ``random``, as the reference), then N equal
  contiguous chunks. With UCF-101 and seed 7 it is the Flower baseline's UCF-101 split.
- ``noniid``: the paper's Kinetics-400 split: classes sorted by count, client i and
  i + N/2 share 8 classes (the 4 smallest from position i, the 4 largest from
  position C-5-i), each class shuffled (seed 1234 small, 4321 large) and halved.
- ``dirichlet``: label skew, class shares per client drawn from Dir(alpha).
"""

from __future__ import annotations

import hashlib
import os
import random
from collections import defaultdict
from pathlib import Path

import numpy as np

from fedvssl.core.errors import DataError
from fedvssl.core.files import write_json, write_text
from fedvssl.data.annotations import VIDEO_EXTENSIONS, read_class_index
from fedvssl.data.client_dist import client_file
from fedvssl.data.kinetics import read_kinetics_csv
from fedvssl.data.ucf101 import read_ucf101

Item = tuple[str, int]  # (name, 1-based label)


def iid(items: list[Item], num_clients: int, seed: int) -> list[list[Item]]:
    """Seeded shuffle, then ``num_clients`` contiguous chunks [i*n/N, (i+1)*n/N)."""
    if not 1 <= num_clients <= len(items):
        raise ValueError(f"num_clients={num_clients} must be in [1, {len(items)}] (the number of videos)")
    shuffled = list(items)
    random.Random(seed).shuffle(shuffled)
    n = len(shuffled)
    return [shuffled[i * n // num_clients : (i + 1) * n // num_clients] for i in range(num_clients)]


def noniid_windows(num_classes: int, num_clients: int) -> list[tuple[list[int], list[int]]]:
    """Sorted-class positions (small, large) of window i, shared by clients i and i + N/2."""
    half = num_clients // 2
    if num_clients % 2 or num_clients < 2:
        raise ValueError(f"num_clients={num_clients} must be even: clients i and i+N/2 share a window")
    if num_classes < num_clients + 7:
        raise ValueError(
            f"noniid needs at least num_clients + 7 = {num_clients + 7} classes, the input has {num_classes}"
        )
    return [
        (list(range(i, i + 4)), list(range(num_classes - 5 - i, num_classes - 1 - i)))  # the largest class is unused
        for i in range(half)
    ]


def noniid(items: list[Item], num_clients: int = 100) -> list[list[Item]]:
    """The reference's overlapping 8-class windows; every class split in halves per window."""
    by_label: dict[int, list[Item]] = defaultdict(list)
    for item in items:
        by_label[item[1]].append(item)
    order = sorted(by_label, key=lambda lab: (len(by_label[lab]), lab))  # ascending count, ties by label
    half = num_clients // 2
    clients: list[list[Item]] = [[] for _ in range(num_clients)]
    for i, (small, large) in enumerate(noniid_windows(len(order), num_clients)):
        for s_pos, l_pos in zip(small, large, strict=True):
            for pos, seed in ((s_pos, 1234), (l_pos, 4321)):
                videos = by_label[order[pos]]
                random.Random(seed).shuffle(videos)  # in place, as the reference
                cut = len(videos) // 2
                clients[i] += videos[:cut]
                clients[i + half] += videos[cut:]
    return clients


def dirichlet(items: list[Item], num_clients: int, alpha: float, seed: int, min_size: int = 1) -> list[list[Item]]:
    """Per class, shares ~ Dir(alpha); redrawn (up to 100 times) until every client has ``min_size``."""
    if alpha <= 0:
        raise ValueError(f"alpha={alpha} must be positive")
    by_label: dict[int, list[Item]] = defaultdict(list)
    for item in items:
        by_label[item[1]].append(item)
    rng = np.random.default_rng(seed)
    for _ in range(100):
        clients: list[list[Item]] = [[] for _ in range(num_clients)]
        for label in sorted(by_label):
            videos = [by_label[label][j] for j in rng.permutation(len(by_label[label]))]
            cuts = (np.cumsum(rng.dirichlet([alpha] * num_clients))[:-1] * len(videos)).astype(int)
            for k, part in enumerate(np.split(np.arange(len(videos)), cuts)):
                clients[k] += [videos[j] for j in part]
        if min(map(len, clients)) >= min_size:
            return clients
    raise ValueError(f"could not give every one of {num_clients} clients {min_size} videos with alpha={alpha}")


# The schemes that split a list here, and the one that reads existing client_dist<k>.json files instead.
SCHEMES = ("iid", "noniid", "dirichlet")
PUBLISHED = "published"


def split(items: list[Item], scheme: str, num_clients: int, seed: int = 7, alpha: float = 0.5):
    """Dispatch to a scheme; returns the clients and the parameters worth recording."""
    if scheme == "iid":
        return iid(items, num_clients, seed), {"seed": seed}
    if scheme == "noniid":
        return noniid(items, num_clients), {"seeds": [1234, 4321]}
    if scheme == "dirichlet":
        return dirichlet(items, num_clients, alpha, seed), {"seed": seed, "alpha": alpha}
    raise ValueError(f"scheme={scheme!r}: expected {', '.join(SCHEMES)}")


def item_name(name: str) -> str:
    """Partition names carry no file extension (``Class/v_Class_g08_c01``, as CtP's annotations)."""
    stem, ext = os.path.splitext(name)
    return stem if ext.lower() in VIDEO_EXTENSIONS else name


def write_partition(clients: list[list[Item]], classes: list[str], out: Path, meta: dict) -> Path:
    """Write ``client_dist<k>.json``, ``classInd.txt`` and ``manifest.json`` into ``out``.

    Refuses a folder of partition files that no partition command wrote (no
    ``manifest.json``), such as FedVSSL's published ones: they cannot be regenerated.
    """
    out = Path(out)
    if not (out / "manifest.json").is_file() and any(out.glob("client_dist*.json")):
        raise DataError(
            f"partition.dir={out} holds client_dist<k>.json files that no partition command wrote (no "
            "manifest.json), such as the published ones; a new split would replace them: read them with "
            "partition=published, or give another partition.dir"
        )
    for k, records in enumerate(clients, start=1):
        write_json(client_file(out, k), [{"name": n, "label": lab} for n, lab in records])
    write_text(out / "classInd.txt", "".join(f"{i} {c}\n" for i, c in enumerate(classes, start=1)))
    manifest = {
        **meta,
        "num_clients": len(clients),
        "counts": [len(c) for c in clients],
        "classes_per_client": [sorted({lab for _, lab in c}) for c in clients],
    }
    write_json(out / "manifest.json", manifest)
    return out


def checksum(items: list[Item]) -> str:
    return hashlib.sha256("\n".join(f"{n} {lab}" for n, lab in items).encode()).hexdigest()


def kinetics_items(csv: Path, videos: Path | None, class_index: Path | None) -> tuple[list[Item], list[str]]:
    """Kinetics train rows as (``<class_dir>/<stem>``, label); labels follow ``class_index`` if given.

    With ``videos``, rows whose file is not on disk are left out (n_k counts real videos).
    Items are sorted by name, so the input order does not depend on the CSV's order.
    """
    records, classes = read_kinetics_csv(csv, videos or csv.parent, "train")
    class_dirs = read_class_index(class_index) if class_index else [c.replace(" ", "_") for c in classes]
    lookup = {c: i + 1 for i, c in enumerate(class_dirs)}
    items = []
    for r in records:
        if videos is not None and not r.path:
            continue
        class_dir = r.name.split("/")[0]
        if class_dir not in lookup:
            raise ValueError(f"{csv}: class {class_dir!r} is not in {class_index}")
        items.append((r.name, lookup[class_dir]))
    return sorted(items), class_dirs


def ucf101_items(root: Path, split: int = 1) -> tuple[list[Item], list[str]]:
    """UCF-101 train list in its official order, names without extension (as CtP's annotations)."""
    train, _, classes = read_ucf101(root, split)
    return [(item_name(r.name), r.label + 1) for r in train], classes
