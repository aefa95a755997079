"""results.json and its markdown table."""

from __future__ import annotations

from collections.abc import Mapping


def _variants(entry: Mapping, first: str) -> list[tuple[str, Mapping]]:
    return [(first, entry)] + [(t, v) for t, v in entry.items() if isinstance(v, Mapping) and "retrieval" in v]


def retrieval_table(results: Mapping[str, dict], ks: list[int], first: str = "pretrained") -> str:
    """One row per (dataset, backbone): R@k in percent."""
    rows = ["| dataset | backbone | " + " | ".join(f"R@{k}" for k in ks) + " |", "|" + "---|" * (len(ks) + 2)]
    for name, entry in results.items():
        if isinstance(entry, Mapping) and "retrieval" in entry:
            for tag, scores in _variants(entry, first):
                cells = " | ".join(f"{scores['retrieval'][f'R@{k}']:.2f}" for k in ks)
                rows.append(f"| {name} | {tag} | {cells} |")
    return "\n".join(rows) + "\n"


def finetune_table(results: Mapping[str, dict], first: str = "pretrained") -> str:
    """One row per (dataset, backbone): top-1, top-5 and mean-class accuracy; empty if none ran."""
    rows = ["| dataset | backbone | top-1 | top-5 | mean class | epochs |", "|---|---|---|---|---|---|"]
    for name, entry in results.items():
        if isinstance(entry, Mapping) and "retrieval" in entry:
            for tag, scores in _variants(entry, first):
                if "finetune" in scores:
                    f = scores["finetune"]
                    cells = f"{f['top1']:.2f} | {f['top5']:.2f} | {f['mean_class']:.2f} | {f['epochs']}"
                    rows.append(f"| {name} | {tag} | {cells} |")
    return "\n".join(rows) + "\n" if len(rows) > 2 else ""


def results_markdown(results: Mapping[str, dict], ks: list[int], first: str = "pretrained") -> str:
    text = f"# Retrieval (R@k, %)\n\n{retrieval_table(results, ks, first)}"
    tuned = finetune_table(results, first)
    return text + (f"\n# Fine-tuning (%)\n\n{tuned}" if tuned else "")


def history_frame(history: list[dict]):
    """One row per (round, client): partition id, samples, loss, weight and pretext scores."""
    import pandas as pd

    rows = []
    for entry in history:
        per_client = {k: v for k, v in entry.items() if isinstance(v, list) and len(v) == len(entry["partition_ids"])}
        for i, pid in enumerate(entry["partition_ids"]):
            rows.append(
                {
                    "round": entry["round"],
                    "partition_id": pid,
                    **{k: v[i] for k, v in per_client.items() if k != "partition_ids"},
                    "round_time_s": entry["time_s"],
                    "bytes_sent": entry["bytes_sent"],
                    "bytes_received": entry["bytes_received"],
                    "failures": len(entry.get("failures", [])),
                }
            )
    return pd.DataFrame(rows)


def plot_history(history: list[dict], path) -> None:
    """Training loss, pretext score (accuracy, or IoU for CtP) and aggregation weight of every client, per round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    frame = history_frame(history)
    score = next((c for c in ("accuracy", "iou") if c in frame), None)
    panels = [("train_loss", "local training loss", "Client losses")]
    panels += [(score, f"pretext {score}", f"Pretext {score}")] if score else []
    panels += [("weights", "weight w_k", "Aggregation weights")]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8))
    for ax, (column, ylabel, title) in zip(axes, panels, strict=True):
        for pid, rows in frame.groupby("partition_id"):
            ax.plot(rows["round"], rows[column], marker="o", label=f"client {pid}")
        if column != "weights":  # the aggregation-weighted mean over the round's clients
            mean = frame.groupby("round").apply(lambda g, c=column: (g["weights"] * g[c]).sum(), include_groups=False)
            ax.plot(mean.index, mean.values, color="black", linewidth=2, label="weighted mean")
        ax.set(xlabel="round", ylabel=ylabel, title=title)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    if frame["partition_id"].nunique() <= 10:
        axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
