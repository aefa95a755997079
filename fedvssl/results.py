"""results.json and its markdown table."""

from __future__ import annotations

from collections.abc import Mapping


def retrieval_table(results: Mapping[str, dict], ks: list[int]) -> str:
    """One row per (dataset, backbone): R@k in percent."""
    head = "| dataset | backbone | " + " | ".join(f"R@{k}" for k in ks) + " |"
    rows = [head, "|" + "---|" * (len(ks) + 2)]
    for name, entry in results.items():
        if not isinstance(entry, Mapping) or "retrieval" not in entry:
            continue
        variants = [("pretrained", entry)] + [
            (t, v) for t, v in entry.items() if isinstance(v, Mapping) and "retrieval" in v
        ]
        for tag, scores in variants:
            cells = " | ".join(f"{scores['retrieval'][f'R@{k}']:.2f}" for k in ks)
            rows.append(f"| {name} | {tag} | {cells} |")
    return "\n".join(rows) + "\n"
