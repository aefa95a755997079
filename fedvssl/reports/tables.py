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
