"""The demo's pretext task learns: its loss falls below chance over federated rounds.

The demo's own configuration (``input=small``, its backbone, Speed, the synthetic world)
through Flower's simulation, 4 clients as in ``make run``, shortened to 7 of its 20 rounds. The loss and pretext
accuracy come from the clients' replies in ``history.json``. Without learning (a frozen
backbone, a wrong label, a model that cannot see motion) the loss stays at ln 7.
"""

import json
import math

import numpy as np
import pytest
from helpers import run_main

pytestmark = pytest.mark.slow  # Ray and 700 training steps of 16 clips (85 s on 2026-12-06, shared 2-core machine)

CHANCE = math.log(7)  # Speed's seven playback strides


def test_speed_loss_falls_below_chance_over_rounds(tmp_path, flower_env, world):
    run = tmp_path / "run"
    args = ["num_rounds=7", "finetune.datasets=[]"]  # pretraining only: the assertions read history.json
    proc = run_main([*args, f"dataset.root={world}", f"hydra.run.dir={run}"], flower_env)
    assert proc.returncode == 0, proc.stderr[-3000:]

    history = json.loads((run / "history.json").read_text())
    loss = [float(np.average(h["train_loss"], weights=h["num_examples"])) for h in history]
    accuracy = [float(np.average(h["accuracy"], weights=h["num_examples"])) for h in history]
    assert len(loss) == 7
    assert loss[0] > CHANCE - 0.1  # it starts at chance ...
    assert loss[-1] < CHANCE - 0.2, loss  # ... and ends clearly below it
    assert loss[-1] < loss[0] - 0.2 and accuracy[-1] > accuracy[0] + 0.1, (loss, accuracy)
    assert accuracy[-1] > 1.5 / 7  # well above chance accuracy
