"""Fine-tuning: the linear probe, steps of batch_size clips, and gradient accumulation."""

import pytest
import torch
from helpers import ROOT
from hydra import compose, initialize_config_dir

from fedvssl.config.checks import validate
from fedvssl.config.settings import evaluation_settings
from fedvssl.core.errors import ConfigError
from fedvssl.data.lists import downstream_splits
from fedvssl.downstream.finetune import build_classifier, finetune, train_classifier


def settings_and_videos(world, tmp_path, *overrides):
    """Evaluation settings at 4x32x32 on the world's UCF-101 layout, its first 4 train videos and 2 test ones."""
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "config",
            [
                "input=tiny",
                "model=paper",
                f"dataset.root={world}",
                f"run.dir={tmp_path}",
                "data.probe=false",  # the lists are not what these tests check
                # fp32 in the default layout: the arithmetic checked here, the same on every CPU
                "runtime.precision.amp_dtype=none",
                "runtime.precision.channels_last=false",
                "finetune=ucf101",
                "finetune.training.enabled=true",
                "finetune.training.epochs=1",
                "finetune.training.num_test_clips=1",
                "runtime.eval_workers=0",
                "runtime.progress=false",
                *overrides,
            ],
        )
    validate(cfg)
    s = evaluation_settings(cfg)
    train, test, classes = downstream_splits(s.datasets[0], s.screening)
    # One video of each of 4 classes: a step of 4 clips of distinct labels.
    firsts = {}
    for r in train:
        firsts.setdefault(r.label, r)
    return s, list(firsts.values())[:4], test[:2], len(classes)


def trained(s, videos, num_classes, passes=None):
    """A seeded classifier after ``train_classifier``, and the clips per forward pass it saw."""
    model = build_classifier(None, num_classes, s.finetune.dropout, s.seed, s.backbone)
    seen = []
    if passes is not None:
        model.register_forward_pre_hook(lambda _, args: seen.append(len(args[0])))
    losses = train_classifier(model, videos, s, s.clips.compute)
    return model, losses, seen


def test_linear_probe_changes_the_head_and_not_the_backbone(world, tmp_path):
    """One step with a frozen backbone: every backbone tensor (BatchNorm statistics included) stays."""
    s, videos, test, num_classes = settings_and_videos(
        world, tmp_path, "finetune.training.linear_probe=true", "finetune.training.batch_size=4"
    )
    before = build_classifier(None, num_classes, s.finetune.dropout, s.seed, s.backbone).state_dict()
    model, losses, _ = trained(s, videos, num_classes)
    after = model.state_dict()
    backbone = [k for k in after if k.startswith("backbone.")]
    assert len(backbone) == 120
    for k in backbone:
        assert torch.equal(after[k], before[k]), k
    assert not torch.equal(after["cls_head.fc_cls.weight"], before["cls_head.fc_cls.weight"])
    assert not torch.equal(after["cls_head.fc_cls.bias"], before["cls_head.fc_cls.bias"])
    assert len(losses) == 1 and losses[0] > 0
    # and the whole protocol runs with it, up to the 1-clip test
    scores = finetune(s, videos, test, num_classes, None)
    assert scores["epochs"] == 1 and 0 <= scores["top1"] <= scores["top5"] <= 100


@pytest.mark.slow  # three fine-tuning runs
def test_accumulated_passes_make_the_same_step_as_one_batch(world, tmp_path):
    """batch_size clips per step: accumulate=4 runs 4 passes of 1 clip and sums to the 4-clip step.

    With a frozen backbone (BatchNorm on its running statistics) and no dropout the two steps
    are the same computation; 2 steps of 2 clips are not.
    """
    common = ["finetune.training.linear_probe=true", "finetune.training.dropout=0.0"]
    runs = {}
    for batch, accumulate in ((4, 1), (4, 4), (2, 1)):
        s, videos, _, num_classes = settings_and_videos(
            world,
            tmp_path,
            *common,
            f"finetune.training.batch_size={batch}",
            f"finetune.training.accumulate={accumulate}",
        )
        model, losses, passes = trained(s, videos, num_classes, passes=True)
        runs[batch, accumulate] = (model.cls_head.fc_cls.weight.detach().clone(), losses, passes)
    (one, loss_one, passes_one), (four, loss_four, passes_four) = runs[4, 1], runs[4, 4]
    assert passes_one == [4] and passes_four == [1, 1, 1, 1]
    torch.testing.assert_close(four, one, rtol=1e-5, atol=1e-7)
    assert loss_four == pytest.approx(loss_one, rel=1e-5)
    two_steps, _, passes_two = runs[2, 1]
    assert passes_two == [2, 2] and not torch.allclose(two_steps, one, rtol=1e-5, atol=1e-7)


@pytest.mark.slow  # trains the whole R3D-18
def test_full_fine_tuning_with_accumulation_updates_the_backbone(world, tmp_path):
    """Without the probe, the backbone and its BatchNorm statistics move, over passes of batch / accumulate clips."""
    s, videos, _, num_classes = settings_and_videos(
        world, tmp_path, "finetune.training.batch_size=4", "finetune.training.accumulate=2"
    )
    before = build_classifier(None, num_classes, s.finetune.dropout, s.seed, s.backbone).state_dict()
    model, _, passes = trained(s, videos, num_classes, passes=True)
    after = model.state_dict()
    assert passes == [2, 2]
    assert not torch.equal(after["backbone.stem.conv.weight"], before["backbone.stem.conv.weight"])
    assert not torch.equal(after["backbone.stem.bn.running_mean"], before["backbone.stem.bn.running_mean"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["finetune.training.accumulate=3"], "accumulate=3 must divide finetune.training.batch_size=32"),
        (["finetune.training.accumulate=0"], "finetune.training.accumulate=0 must be an integer >= 1"),
        (["finetune.training.batch_size=0"], "finetune.training.batch_size=0 must be an integer >= 1"),
    ],
)
def test_a_step_that_cannot_be_split_stops_before_any_work(tmp_path, overrides, message):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", [f"run.dir={tmp_path}", *overrides])
    with pytest.raises(ConfigError, match=message):
        validate(cfg)


def test_the_reference_protocol_takes_32_clips_per_step():
    """The reference's 4 GPUs x 8 clips with SyncBN: 32 clips per step, BatchNorm over all of them."""
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        t = compose("config", ["run.dir=."]).finetune.training
    assert (t.batch_size, t.accumulate, t.lr, t.momentum, t.weight_decay) == (32, 1, 0.01, 0.9, 5.0e-4)
    assert (t.epochs, list(t.milestones), t.grad_clip, t.dropout) == (150, [60, 120], 40, 0.5)
