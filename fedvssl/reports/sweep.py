"""Summaries of Hydra multiruns, and our numbers beside the paper's.

- ``SweepSummary``: a Hydra callback (configured in ``conf/config.yaml``) that writes
  ``summary.md``, ``summary.csv`` and ``summary.png`` into the multirun folder when
  the sweep ends.
- ``python -m fedvssl.reports.sweep summary <multirun dir>``: the same, for any folder.
- Both pool jobs that differ only in ``seed=`` (``seeds.csv`` and a second table in
  ``summary.md``): mean ± std of R@1/5/10 (and fine-tuning top-1) for the pretrained backbone and for its
  random-init control, and the paired gain.
- ``python -m fedvssl.reports.sweep paper <run or multirun dir>``: our R@1 and top-1 beside
  the published FedVSSL numbers of the same (alpha, beta) variant.
"""

from __future__ import annotations

import argparse
import json
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from hydra.experimental.callback import Callback

from fedvssl.run_folder import RunFolder

METRICS = ("R@1", "R@5", "R@10", "R@20", "R@50")
SEED_METRICS = ("R@1", "R@5", "R@10", "top1")
CONTROL = "random_init"  # the seeded random-init backbone every main job also evaluates


def job_folders(folder: Path) -> list[RunFolder]:
    """The run folders below ``folder`` that hold results, in path order."""
    name = RunFolder(folder).results.name
    return [RunFolder(f.parent) for f in sorted(Path(folder).rglob(name), key=lambda p: str(p))]


def job_rows(folder: Path) -> pd.DataFrame:
    """One row per job folder holding a ``results.json``: its overrides and its downstream numbers."""
    rows = []
    for job in job_folders(folder):
        results = json.loads(job.results.read_text())
        run = results.get("run", {})
        row: dict[str, Any] = {
            "job": str(job.root.relative_to(folder)) or ".",
            "overrides": " ".join(run.get("overrides", [])),
        }
        if job.config.is_file():
            cfg = yaml.safe_load(job.config.read_text())
            strategy = cfg.get("strategy", {})
            row.update(alpha=strategy.get("alpha"), beta=strategy.get("beta"), share=strategy.get("share"))
            row.update(seed=cfg.get("seed"), clients=cfg.get("partition", {}).get("num_clients"))
        for name, entry in results.items():
            if not isinstance(entry, dict) or "retrieval" not in entry:
                continue
            for metric in METRICS:
                row[f"{name} {metric}"] = entry["retrieval"].get(metric)
            for metric in METRICS:
                if CONTROL in entry:
                    row[f"{name} {CONTROL} {metric}"] = entry[CONTROL]["retrieval"].get(metric)
            if "finetune" in entry:
                row[f"{name} top1"] = entry["finetune"]["top1"]
                row[f"{name} top5"] = entry["finetune"]["top5"]
            if "finetune" in entry.get(CONTROL, {}):
                row[f"{name} {CONTROL} top1"] = entry[CONTROL]["finetune"]["top1"]
        rows.append(row)
    return pd.DataFrame(rows)


def markdown(frame: pd.DataFrame) -> str:
    """A markdown table (pandas' own needs the optional tabulate package)."""

    def fmt(v: Any) -> str:
        return f"{v:.2f}" if isinstance(v, float) else ("-" if v is None else str(v))

    head = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "---|" * len(frame.columns)
    return "\n".join(
        [head, rule, *("| " + " | ".join(fmt(v) for v in row) + " |" for row in frame.itertuples(index=False))]
    )


def _without_seed(overrides: str) -> str:
    return " ".join(o for o in overrides.split() if not o.startswith("seed=")) or "(defaults)"


def over_seeds(frame: pd.DataFrame) -> pd.DataFrame:
    """Jobs that differ only in ``seed=``, pooled: mean ± std of pretrained, random init and gain.

    The gain is taken job by job (pretrained minus the same job's random init) before
    averaging, so it is paired; ``min gain`` is the worst single seed.
    """
    rows = []
    keys = frame["overrides"].map(_without_seed)
    for setting, jobs in frame.groupby(keys, sort=False):
        for column in jobs.columns:
            dataset, _, metric = column.partition(" ")
            if metric not in SEED_METRICS or f"{dataset} {CONTROL} {metric}" not in jobs:
                continue
            ours, control = jobs[column].astype(float), jobs[f"{dataset} {CONTROL} {metric}"].astype(float)
            gain = ours - control
            rows.append(
                {
                    "setting": setting,
                    "seeds": len(jobs),
                    "dataset": dataset,
                    "metric": metric,
                    "pretrained": f"{ours.mean():.2f} ± {ours.std(ddof=1) if len(jobs) > 1 else 0:.2f}",
                    "random init": f"{control.mean():.2f} ± {control.std(ddof=1) if len(jobs) > 1 else 0:.2f}",
                    "gain": f"{gain.mean():+.2f} ± {gain.std(ddof=1) if len(jobs) > 1 else 0:.2f}",
                    "min gain": round(float(gain.min()), 2),
                }
            )
    return pd.DataFrame(rows)


def write_summary(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``summary.md``/``.csv``/``.png`` (one row per job) and ``seeds.csv`` (pooled over seeds)."""
    frame = job_rows(folder)
    if frame.empty:
        raise SystemExit(f"{folder}: no results.json below this folder")
    pooled = over_seeds(frame)
    frame.to_csv(folder / "summary.csv", index=False)
    pooled.to_csv(folder / "seeds.csv", index=False)
    text = f"# Sweep summary ({folder})\n\n{markdown(frame)}\n"
    if not pooled.empty:
        text += f"\n## Over seeds: pretrained against random init\n\n{markdown(pooled)}\n"
    (folder / "summary.md").write_text(text)
    plot(frame, folder / "summary.png")
    return frame, pooled


def plot(frame: pd.DataFrame, path: Path) -> None:
    columns = [c for c in frame.columns if c.endswith((" R@1", " top1"))]
    if not columns:  # pretraining-only jobs (finetune.datasets=[]): nothing to draw
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ax = frame.set_index("job")[columns].plot.bar(figsize=(max(5, 1.2 * len(frame)), 3.5), rot=0)
    ax.set(ylabel="%", title="Downstream results per job")
    ax.figure.tight_layout()
    ax.figure.savefig(path, dpi=100)
    plt.close(ax.figure)


class SweepSummary(Callback):
    """Writes the summary when a Hydra multirun ends."""

    def on_multirun_end(self, config, **kwargs: Any) -> None:
        folder = Path(config.hydra.sweep.dir)
        if job_folders(folder):
            _, pooled = write_summary(folder)
            if not pooled.empty:
                print(f"\nOver seeds ({folder / 'summary.md'}):\n\n{markdown(pooled)}")


def paper_table(folder: Path) -> str:
    paper = pd.read_csv(resources.files("fedvssl.reports").joinpath("paper_results.csv"))
    ours = job_rows(folder)
    lines = [
        "| variant | ours UCF R@1 | paper UCF R@1 | ours HMDB R@1 | paper HMDB R@1 "
        "| ours UCF top-1 | paper UCF top-1 |",
        "|---|---|---|---|---|---|---|",
    ]
    for _, row in ours.iterrows():
        match = paper[
            (paper.alpha == row.get("alpha")) & (paper.beta == row.get("beta")) & (paper.share == row.get("share"))
        ]
        ref = match.iloc[0] if len(match) else None

        def cell(value):
            return "-" if value is None or pd.isna(value) else f"{value:.2f}"

        name = ref["variant"] if ref is not None else f"alpha={row.get('alpha')} beta={row.get('beta')} ({row['job']})"
        lines.append(
            f"| {name} | {cell(row.get('ucf101 R@1'))} | {cell(None if ref is None else ref['ucf101_R@1'])} "
            f"| {cell(row.get('hmdb51 R@1'))} | {cell(None if ref is None else ref['hmdb51_R@1'])} "
            f"| {cell(row.get('ucf101 top1'))} | {cell(None if ref is None else ref['ucf101_top1'])} |"
        )
    sources = sorted(set(paper["source"]))
    return "\n".join(lines) + "\n\nPaper numbers: CtP, K-400 non-iid, 540 rounds. Sources: " + "; ".join(sources) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("summary", help="summary.md/.csv/.png for a multirun folder").add_argument("folder", type=Path)
    sub.add_parser("paper", help="our numbers beside the paper's").add_argument("folder", type=Path)
    a = p.parse_args(argv)
    if a.command == "summary":
        frame, pooled = write_summary(a.folder)
        print(markdown(frame))
        if not pooled.empty:
            print(f"\nOver seeds:\n\n{markdown(pooled)}")
    else:
        print(paper_table(a.folder))


if __name__ == "__main__":
    main()
