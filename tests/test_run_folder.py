"""The run folder object: the stop reason, client heads, unusable videos."""

import json

import torch

from fedvssl.core.run_folder import RunFolder


def test_stop_reason_round_trip(tmp_path):
    run = RunFolder(tmp_path)
    assert run.stop_reason() is None
    run.record_stop("round 3: 0 of 2 clients replied\ntraceback ...")
    assert RunFolder(tmp_path).stop_reason() == "round 3: 0 of 2 clients replied"  # first line only
    run.clear_stop()
    assert run.stop_reason() is None


def test_heads_keep_the_newest_earlier_round(tmp_path):
    """A round redone after a crash starts from the head of the round before it; at most two files stay."""
    run = RunFolder(tmp_path)
    assert run.load_head_before(2, 1) is None
    for r in (1, 2, 3):
        run.save_head(2, r, {"w": torch.full((2,), float(r))})
    files = sorted(p.name for p in run.client_folder(2).iterdir())
    assert files == ["round-2.pt", "round-3.pt"]
    assert run.load_head_before(2, 3)["w"].tolist() == [2.0, 2.0]
    assert run.load_head_before(2, 4)["w"].tolist() == [3.0, 3.0]


def test_unusable_paths(tmp_path):
    run = RunFolder(tmp_path)
    assert run.unusable_paths() == set()
    run.write_unusable([{"dataset": "d", "split": "train", "name": "a", "path": "/v/a.mp4", "reason": "empty"}])
    assert run.unusable_paths() == {"/v/a.mp4"}
    assert json.loads(run.unusable.read_text())[0]["reason"] == "empty"


def test_completed_rounds_needs_checkpoint_and_history(tmp_path):
    run = RunFolder(tmp_path)
    run.save_checkpoint(1, {"backbone.w": torch.ones(2).numpy()})
    run.write_history([{"round": 1}, {"round": 2}])  # round 2's checkpoint never landed
    done, state, history = run.completed_rounds()
    assert done == 1 and list(state) == ["backbone.w"] and history == [{"round": 1}]
