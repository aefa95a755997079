"""Client partitions in the FedVSSL ``client_dist<k>.json`` schema.

Every scheme writes ``client_dist<k>.json`` (k = 1..N; a JSON list of
``{"name": "<class_dir>/<stem>", "label": 1..C}``, exactly the schema of the
published FedVSSL partitions, so ours and theirs are interchangeable), the
``classInd.txt`` the labels index, and ``manifest.json`` with the counts, the
classes per client, the parameters and a SHA-256 of the input list.

Schemes (one sub-command each; ``--help`` on each):

- ``iid``: seeded shuffle (Python's ``random``, as the reference), then N equal
  contiguous chunks. With ``--source ucf101`` and seed 7 it is the Flower
  baseline's UCF-101 split.
- ``noniid``: the paper's Kinetics-400 split: classes sorted by count, client i and
  i + N/2 share 8 classes (the 4 smallest from position i, the 4 largest from
  position C-5-i), each class shuffled (seed 1234 small, 4321 large) and halved.
- ``dirichlet``: label skew, class shares per client drawn from Dir(alpha).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fedvssl.data.partitions import checksum, kinetics_items, split, ucf101_items, write_partition


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="scheme", required=True)
    for scheme, help_text in (
        ("iid", "seeded shuffle, equal chunks"),
        ("noniid", "the paper's overlapping 8-class windows (Kinetics-400)"),
        ("dirichlet", "Dirichlet label skew"),
    ):
        p = sub.add_parser(scheme, help=help_text, description=help_text)
        p.add_argument("--source", choices=("kinetics", "ucf101"), default="kinetics")
        p.add_argument("--csv", type=Path, help="kinetics: the annotation CSV")
        p.add_argument("--videos", type=Path, help="kinetics: video folder; rows without a file are left out")
        p.add_argument("--class-index", type=Path, help="kinetics: classInd.txt fixing the label order")
        p.add_argument("--root", type=Path, help="ucf101: dataset root (with ucfTrainTestlist/)")
        p.add_argument("--split", type=int, default=1, help="ucf101: official split 1-3")
        p.add_argument("--out", type=Path, required=True, help="output folder")
        p.add_argument("--num-clients", type=int, default=100 if scheme == "noniid" else 10)
        if scheme != "noniid":
            p.add_argument("--seed", type=int, default=7)
        if scheme == "dirichlet":
            p.add_argument("--alpha", type=float, default=0.5, help="concentration; smaller is more skewed")
    a = parser.parse_args(argv)
    try:
        run(a)
    except ValueError as e:  # DataError included: one line, no traceback
        parser.exit(2, f"partition: error: {e}\n")


def run(a: argparse.Namespace) -> None:
    if a.source == "kinetics":
        if a.csv is None:
            raise ValueError("--csv is required with --source kinetics")
        items, classes = kinetics_items(a.csv, a.videos, a.class_index)
        source = str(a.csv)
    else:
        if a.root is None:
            raise ValueError("--root is required with --source ucf101")
        items, classes = ucf101_items(a.root, a.split)
        source = str(a.root)
    clients, params = split(items, a.scheme, a.num_clients, getattr(a, "seed", 7), getattr(a, "alpha", 0.5))
    write_partition(
        clients, classes, a.out, {"scheme": a.scheme, "source": source, "sha256": checksum(items), **params}
    )
    print(f"wrote {len(clients)} clients to {a.out}: {min(map(len, clients))}-{max(map(len, clients))} videos each")


if __name__ == "__main__":
    main()
