"""Split a Kinetics-style training list into FedVSSL client partitions (iid).

Writes ``client_dist<k>.json`` (k = 1..N, records ``{"name": "<class_dir>/<stem>",
"label": 1..C}``, the schema of the published FedVSSL partitions), the
``classInd.txt`` that the labels index, and ``manifest.json`` with the counts, the
classes per client, the seed and a checksum of the input list.

Usage: ``python -m dataset_preparation.partition --csv annotations/train.csv --out parts --num-clients 4``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
from pathlib import Path

from fedvssl.checkpoint import write_json, write_text
from fedvssl.dataset import read_kinetics_csv


def iid_chunks(items: list, num_clients: int, seed: int) -> list[list]:
    """Seeded shuffle (Python's ``random``, as the reference), then N contiguous equal chunks."""
    if not 1 <= num_clients <= len(items):
        raise ValueError(f"num_clients={num_clients} must be in [1, {len(items)}] (the number of videos)")
    shuffled = list(items)
    random.Random(seed).shuffle(shuffled)
    n = len(shuffled)
    return [shuffled[i * n // num_clients : (i + 1) * n // num_clients] for i in range(num_clients)]


def write_partition(clients: list[list[dict]], classes: list[str], out: Path, meta: dict) -> None:
    out = Path(out)
    for k, records in enumerate(clients, start=1):
        write_json(out / f"client_dist{k}.json", records)
    write_text(out / "classInd.txt", "".join(f"{i} {c}\n" for i, c in enumerate(classes, start=1)))
    manifest = {
        **meta,
        "num_clients": len(clients),
        "counts": [len(c) for c in clients],
        "classes_per_client": [len({r["label"] for r in c}) for c in clients],
    }
    write_json(out / "manifest.json", manifest)


def kinetics_iid(csv_path: Path, video_root: Path, out: Path, num_clients: int, seed: int) -> Path:
    """Partition the videos of a Kinetics CSV that exist on disk, sorted by name first."""
    records, classes = read_kinetics_csv(Path(csv_path), Path(video_root))
    class_dirs = [c.replace(" ", "_") for c in classes]
    items = sorted((r.name, r.label + 1) for r in records)
    digest = hashlib.sha256("\n".join(f"{n} {lab}" for n, lab in items).encode()).hexdigest()
    chunks = iid_chunks(items, num_clients, seed)
    clients = [[{"name": n, "label": lab} for n, lab in chunk] for chunk in chunks]
    write_partition(clients, class_dirs, out, {"scheme": "iid", "seed": seed, "input": str(csv_path), "sha256": digest})
    return Path(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--csv", required=True, help="Kinetics annotation CSV (label,youtube_id,time_start,time_end,split)")
    p.add_argument("--videos", required=True, help="folder holding the videos (class folders or flat)")
    p.add_argument("--out", required=True, help="output folder for client_dist<k>.json")
    p.add_argument("--num-clients", type=int, default=100)
    p.add_argument("--seed", type=int, default=7)
    a = p.parse_args(argv)
    out = kinetics_iid(Path(a.csv), Path(a.videos), Path(a.out), a.num_clients, a.seed)
    print(json.dumps(json.loads((out / "manifest.json").read_text())["counts"]))


if __name__ == "__main__":
    main()
