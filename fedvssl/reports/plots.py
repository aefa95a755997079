"""history.json as a table (``history.csv``) and as a figure (``history.png``)."""

from __future__ import annotations


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


def plot_history(history: list[dict], path, chance_loss: float | None = None) -> None:
    """Training loss, pretext score (accuracy, or IoU for CtP) and aggregation weight of every client, per round.

    ``chance_loss`` (the loss of a uniform guess) is drawn as a dashed line on the loss panel.
    """
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
        if column == "train_loss" and chance_loss is not None:
            ax.axhline(chance_loss, color="grey", linestyle="--", label=f"chance ({chance_loss:.2f})")
        ax.set(xlabel="round", ylabel=ylabel, title=title)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    if frame["partition_id"].nunique() <= 10:
        axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
