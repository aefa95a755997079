"""Summaries of Hydra multiruns, and our numbers beside the paper's.

- ``SweepSummary``: a Hydra callback (configured in ``conf/config.yaml``) that writes
  ``summary.md``, ``summary.csv`` and ``summary.png`` into the multirun folder when
  the sweep ends.
- ``python -m fedvssl.reports.sweep summary <multirun dir>``: the same, for any folder.
- Both pool jobs that differ only in ``seed=`` (``seeds.csv`` and a second table in
  ``summary.md``): mean ± std of R@1/5/10 (and fine-tuning top-1) for the pretrained backbone and for its
  random-init control, and the paired gain.
- ``python -m fedvssl.reports.sweep paper <run or multirun dir>``: each job's R@1 and top-1
  beside the published numbers of its preset (``+experiment=``) and (alpha, beta) variant
  (``paper_results.csv``), with how it computed (precision, transfer dtype), so that no
  reproduction claim hides a bf16 run.
- Every row records how its job computed: ``amp_dtype``, ``channels_last``,
  ``transfer_dtype``, ``decoder`` and ``device`` (from ``results.json``, else the job's config).
"""

from __future__ import annotations

import argparse
import json
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from hydra.experimental.callback import Callback

from fedvssl.core.run_folder import RunFolder

METRICS = ("R@1", "R@5", "R@10", "R@20", "R@50")
SEED_METRICS = ("R@1", "R@5", "R@10", "top1")
CONTROL = "random_init"  # the seeded random-init backbone every main job also evaluates


def job_folders(folder: Path) -> list[RunFolder]:
    """The run folders below ``folder`` that hold results, in path order."""
    name = RunFolder(folder).results.name
    return [RunFolder(f.parent) for f in sorted(Path(folder).rglob(name), key=lambda p: str(p))]


def failed_jobs(folder: Path) -> pd.DataFrame:
    """The jobs below ``folder`` that failed (their ``failed.txt``, no results): job, overrides, error."""
    rows = []
    for path in sorted(Path(folder).rglob(RunFolder(folder).failure.name), key=lambda p: str(p)):
        job = RunFolder(path.parent)
        reason = job.failure_reason()
        if reason is None:
            continue
        overrides_file = job.root / ".hydra" / "overrides.yaml"
        overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else []
        rows.append({"job": str(job.root.relative_to(folder)), "overrides": " ".join(overrides), "error": reason})
    return pd.DataFrame(rows, columns=["job", "overrides", "error"])


def job_rows(folder: Path) -> pd.DataFrame:
    """One row per job folder holding a ``results.json``: its overrides and its downstream numbers."""
    rows = []
    for job in job_folders(folder):
        results = json.loads(job.results.read_text())
        run = results.get("run", {})
        row: dict[str, Any] = {
            "job": str(job.root.relative_to(folder)) or ".",
            "overrides": " ".join(run.get("overrides", [])),
            "experiment": run.get("experiment") or _experiment(run.get("overrides", [])),
        }
        cfg = yaml.safe_load(job.config.read_text()) if job.config.is_file() else {}
        if cfg:
            strategy = cfg.get("strategy", {})
            row.update(alpha=strategy.get("alpha"), beta=strategy.get("beta"), share=strategy.get("share"))
            row.update(seed=cfg.get("seed"), clients=cfg.get("partition", {}).get("num_clients"))
        row.update(computed(run.get("precision"), cfg))
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


def _experiment(overrides: list[str]) -> str | None:
    """The ``+experiment=`` preset among a job's overrides (results written before they recorded it)."""
    found = [o.split("=", 1)[1] for o in overrides if o.lstrip("+").startswith("experiment=")]
    return found[-1] if found else None


def computed(record: dict | None, cfg: dict) -> dict[str, Any]:
    """How a job computed: its results' record, else what its config asked for (decoder unresolved)."""
    if record:
        keys = ("amp_dtype", "channels_last", "transfer_dtype", "decoder", "device")
        return {k: record.get(k) for k in keys}
    runtime = cfg.get("runtime", {})
    return {
        "amp_dtype": runtime.get("precision", {}).get("amp_dtype"),
        "channels_last": runtime.get("precision", {}).get("channels_last"),
        "transfer_dtype": cfg.get("strategy", {}).get("transfer_dtype"),
        "decoder": runtime.get("decode_backend"),
        "device": runtime.get("device"),
    }


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
    frame, failed = job_rows(folder), failed_jobs(folder)
    if frame.empty and failed.empty:
        raise SystemExit(f"{folder}: no results.json below this folder")
    text = f"# Sweep summary ({folder})\n\n"
    if not failed.empty:
        text += f"## Failed jobs ({len(failed)}; run the sweep again to retry them)\n\n{markdown(failed)}\n\n"
    if frame.empty:
        (folder / "summary.md").write_text(text)
        return frame, pd.DataFrame()
    pooled = over_seeds(frame)
    frame.to_csv(folder / "summary.csv", index=False)
    pooled.to_csv(folder / "seeds.csv", index=False)
    text += f"{markdown(frame)}\n"
    if not pooled.empty:
        text += f"\n## Over seeds: pretrained against random init\n\n{markdown(pooled)}\n"
    gains = strategy_gains(frame)
    if len(gains) > 1 or (len(gains) == 1 and gains["seeds"].iloc[0] > 1):
        text += f"\n## R@1 gain over random init per strategy (paired per seed)\n\n{markdown(gains)}\n"
    if plot_monitor(frame, folder, folder / "monitor.png"):
        text += "\n![R@1 of the global backbone against round, from the monitor](monitor.png)\n"
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
        failed = failed_jobs(folder)
        if job_folders(folder) or not failed.empty:
            _, pooled = write_summary(folder)
            if not pooled.empty:
                print(f"\nOver seeds ({folder / 'summary.md'}):\n\n{markdown(pooled)}")
        if not failed.empty:
            # The sweep went on past them; its exit status still says that it is not complete.
            raise SystemExit(f"fedvssl: error: {len(failed)} job(s) of the sweep failed: {', '.join(failed['job'])} "
                             f"({folder / 'summary.md'}; run the same command again to retry them)")  # fmt: skip


# (our column in job_rows, the paper's in paper_results.csv, the header)
PAPER_METRICS = (
    ("ucf101 R@1", "ucf101_R@1", "UCF R@1"),
    ("hmdb51 R@1", "hmdb51_R@1", "HMDB R@1"),
    ("ucf101 top1", "ucf101_top1", "UCF top-1"),
    ("ucf101 top5", "ucf101_top5", "UCF top-5"),
    ("hmdb51 top1", "hmdb51_top1", "HMDB top-1"),
)


def paper_rows() -> pd.DataFrame:
    """The published numbers, one row per preset and variant (``fedvssl/reports/paper_results.csv``)."""
    return pd.read_csv(resources.files("fedvssl.reports").joinpath("paper_results.csv"))


def paper_match(paper: pd.DataFrame, row: pd.Series) -> pd.Series | None:
    """The paper's row for a job: its preset's, and among several the same (alpha, beta, share).

    A job without a preset (run before presets existed, or from overrides alone) is compared
    with the Table 4 variant of its (alpha, beta, share), as it always was.
    """
    experiment = row.get("experiment")
    if not isinstance(experiment, str) or not experiment:
        experiment = "paper_k400_ctp"
    rows = paper[paper.experiment == experiment]
    if len(rows) > 1:
        same = (rows.alpha == row.get("alpha")) & (rows.beta == row.get("beta")) & (rows.share == row.get("share"))
        rows = rows[same]
    return rows.iloc[0] if len(rows) else None


def precision_label(row: pd.Series) -> str:
    """``fp32`` or the autocast dtype, then a non-float32 transfer: what a reproduction claim must state."""
    amp = row.get("amp_dtype")
    if amp is None or pd.isna(amp):
        label = "?"
    else:  # "auto" only from the config of a job run before its results recorded what it resolved to
        label = {"none": "fp32", "auto": "auto (bf16 where native)"}.get(amp, f"{amp} autocast")
    transfer = row.get("transfer_dtype")
    if isinstance(transfer, str) and transfer != "float32":
        label += f", {transfer} transfer"
    return label


def _cell(value: Any) -> str:
    return "-" if value is None or pd.isna(value) else f"{value:.2f}"


def paper_table(folder: Path) -> str:
    """Each job's numbers beside the paper's row for its preset and variant, and the rows' sources."""
    paper, ours = paper_rows(), job_rows(folder)
    head = ["variant", "job", "preset", "computed"]
    for _, _, name in PAPER_METRICS:
        head += [f"ours {name}", f"paper {name}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    cited = {}
    for _, row in ours.iterrows():
        ref = paper_match(paper, row)
        preset = row.get("experiment") if isinstance(row.get("experiment"), str) else "-"
        if ref is None:
            name = f"alpha={row.get('alpha')} beta={row.get('beta')} (no published row)"
        else:
            name = ref["variant"]
            cited[ref["experiment"]] = f"{ref['setting']}. Sources: {ref['source']}"
        cells = [name, row["job"], preset, precision_label(row)]
        for ours_key, paper_key, _ in PAPER_METRICS:
            cells += [_cell(row.get(ours_key)), _cell(None if ref is None else ref[paper_key])]
        lines.append("| " + " | ".join(cells) + " |")
    notes = "".join(f"- {experiment}: {text}\n" for experiment, text in cited.items())
    return "\n".join(lines) + ("\n\nPaper numbers (- where none is published):\n\n" + notes if notes else "\n")


# -- comparing strategies: the R@1 gain per strategy, and R@1 against round ----------------


def short_labels(settings: list[str]) -> dict[str, str]:
    """Each setting without the overrides that every setting shares (``monitor.every=4`` in a
    comparison sweep), so a table row or a legend entry names only what differs."""
    tokens = [s.split() for s in settings]
    common = set.intersection(*map(set, tokens)) if len(tokens) > 1 else set()
    return {s: " ".join(t for t in ts if t not in common) or s for s, ts in zip(settings, tokens, strict=True)}


def strategy_gains(frame: pd.DataFrame) -> pd.DataFrame:
    """Per setting (the overrides less ``seed=``; a comparison sweep varies ``strategy=``): the R@1 gain.

    Each seed's gain is its pretrained R@1 less its own random-init control's (paired), then
    mean ± std over the seeds (sample std; 0 for one seed), per dataset.
    """
    rows = []
    settings = frame["overrides"].map(_without_seed)
    labels = short_labels(list(dict.fromkeys(settings)))
    for setting, jobs in frame.groupby(settings, sort=False):
        row: dict[str, Any] = {"setting": labels[setting], "seeds": len(jobs)}
        for column in jobs.columns:
            dataset, _, metric = column.partition(" ")
            control = f"{dataset} {CONTROL} R@1"
            if metric != "R@1" or control not in jobs:
                continue
            gain = jobs[column].astype(float) - jobs[control].astype(float)
            spread = gain.std(ddof=1) if len(gain) > 1 else 0.0
            row[f"{dataset} R@1 gain"] = f"{gain.mean():+.2f} ± {spread:.2f}"
        if len(row) > 2:
            rows.append(row)
    return pd.DataFrame(rows)


def monitor_curves(frame: pd.DataFrame, folder: Path) -> dict[str, dict[str, pd.DataFrame]]:
    """``{dataset: {setting: rows (round, seed job, R@1, random-init R@1)}}`` from the jobs' monitor scores."""
    curves: dict[str, dict[str, list[dict]]] = {}
    for _, job in frame.iterrows():
        setting = _without_seed(job["overrides"])
        for entry in RunFolder(Path(folder) / job["job"]).read_history():
            scores = entry.get("monitor", {})
            for dataset, retrieval in scores.get("global", {}).items():
                control = scores.get(CONTROL, {}).get(dataset, {}).get("R@1")
                curves.setdefault(dataset, {}).setdefault(setting, []).append(
                    {"round": entry["round"], "job": job["job"], "R@1": retrieval["R@1"], "control": control}
                )
    return {d: {s: pd.DataFrame(rows) for s, rows in by.items()} for d, by in curves.items()}


def plot_monitor(frame: pd.DataFrame, folder: Path, path: Path) -> bool:
    """R@1 of the global backbone against round per setting (mean over seeds, ± std shaded), one panel
    per dataset, the random-init control dashed; False (and no file) without monitor scores (``monitor.every=0``).
    """
    curves = monitor_curves(frame, folder)
    if not curves:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = short_labels(list(dict.fromkeys(frame["overrides"].map(_without_seed))))
    fig, axes = plt.subplots(1, len(curves), figsize=(5.5 * len(curves) + 2.5, 3.8), squeeze=False)
    for ax, (dataset, by_setting) in zip(axes[0], sorted(curves.items()), strict=True):
        controls = []
        for setting, rows in by_setting.items():
            stats = rows.groupby("round")["R@1"].agg(["mean", "std"]).fillna(0.0)
            ax.plot(stats.index, stats["mean"], marker="o", ms=3, label=labels[setting])
            ax.fill_between(stats.index, stats["mean"] - stats["std"], stats["mean"] + stats["std"], alpha=0.15)
            controls += rows["control"].dropna().tolist()
        if controls:
            ax.axhline(float(np.mean(controls)), color="gray", ls="--", lw=1, label="random init")
        ax.set(title=f"{dataset}: retrieval monitor", xlabel="round", ylabel="R@1 (%)")
    # Beside the panels: with nine strategies a legend inside would cover the curves.
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


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
