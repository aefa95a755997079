"""Downstream evaluation of a backbone on UCF-101 and HMDB-51: retrieval, and fine-tuning.

``python -m fedvssl.evaluate checkpoint=<path> finetune=ucf101`` evaluates any
checkpoint that ``fedvssl.models.checkpoints`` reads (ours, a published FedVSSL .npz, a
torchvision state_dict) with the same Hydra configs as the main job, beside the seeded
random-init backbone (the control; ``finetune.retrieval.compare_random_init=false``
leaves it out); without ``checkpoint`` it evaluates the control alone. Add
``finetune.training.enabled=true`` for fine-tuning on top of retrieval.
"""

from __future__ import annotations

import time

import hydra
from omegaconf import DictConfig

from fedvssl.config.checks import CONF_DIR, validate
from fedvssl.core.errors import one_line_errors
from fedvssl.core.run_folder import RunFolder


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
@one_line_errors
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from fedvssl.config.settings import evaluation_settings
    from fedvssl.downstream.protocol import evaluate_checkpoint
    from fedvssl.prepare import generate_data
    from fedvssl.reports.tables import precision_record, results_markdown

    validate(cfg)
    generate_data(cfg)
    checkpoint = cfg.get("checkpoint")
    start = time.perf_counter()
    results, first = evaluate_checkpoint(evaluation_settings(cfg), checkpoint)
    results["run"] = {
        "checkpoint": str(checkpoint) if checkpoint else None,
        "overrides": list(HydraConfig.get().overrides.task),
        "experiment": HydraConfig.get().runtime.choices.get("experiment"),  # the +experiment= preset, if any
        "precision": precision_record(cfg.runtime, None),  # no transfer: nothing is federated here
        "wall_time_s": {"evaluation_s": round(time.perf_counter() - start, 2)},
    }
    text = results_markdown(results, list(cfg.finetune.retrieval.ks), first)
    RunFolder(cfg.run.dir).write_results(results, text)
    print(text)


if __name__ == "__main__":
    main()
