"""results.json and its markdown table."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# The runtime.precision keys a job's results record (with their defaults), beside its transfer dtype and decoder.
PRECISION_DEFAULTS = {"amp_dtype": "none", "channels_last": False, "cudnn_benchmark": False, "compile": False}


def precision_record(runtime: Mapping[str, Any], transfer_dtype: str | None) -> dict[str, Any]:
    """How a job computed, for its results.json and the sweep summary, so that no result hides a bf16 run.

    ``runtime`` is the ``runtime`` config (its ``precision``, ``decode_backend``, ``frame_cache``
    and ``device``); ``transfer_dtype`` is ``strategy.transfer_dtype`` (None for an evaluation
    alone). ``amp_dtype`` is the autocast dtype the job computed in on its device (``auto``
    resolved: bf16 where the device has it natively, else none), ``amp_setting`` the one asked
    for; ``decoder`` is the decoder ``decode_backend`` resolves to here (``auto``: decord with
    PyAV as fallback, or PyAV alone where decord does not import).
    """
    import torch

    from fedvssl.data.video import make_reader
    from fedvssl.models.device import device_of
    from fedvssl.models.precision import resolved_amp_dtype

    precision = runtime.get("precision") or {}
    device = device_of(str(runtime.get("device", "cpu")))
    values = {key: precision.get(key, default) for key, default in PRECISION_DEFAULTS.items()}
    return {
        **values,
        "amp_dtype": resolved_amp_dtype(values["amp_dtype"], device),
        "amp_setting": values["amp_dtype"],
        "transfer_dtype": transfer_dtype,
        "decode_backend": runtime.get("decode_backend", "auto"),
        "decoder": make_reader(runtime.get("decode_backend", "auto"), runtime.get("frame_cache")).name,
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }


def precision_line(record: Mapping[str, Any]) -> str:
    """One sentence on how the job computed, under its results table."""
    amp = "fp32" if record.get("amp_dtype", "none") == "none" else f"{record['amp_dtype']} autocast"
    layout = ", channels-last" if record.get("channels_last") else ""
    transfer = f", transfer {record['transfer_dtype']}" if record.get("transfer_dtype") else ""
    where = record.get("gpu") or record.get("device", "?")
    return f"Computed in {amp}{layout}{transfer}, decoder {record.get('decoder', '?')}, on {where}.\n"


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
    text += f"\n# Fine-tuning (%)\n\n{tuned}" if tuned else ""
    record = results.get("run", {}).get("precision")
    return text + (f"\n{precision_line(record)}" if record else "")
