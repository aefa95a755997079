"""The three pretext tasks: layouts, sampling, CtP geometry, and that each one learns."""

import numpy as np
import pytest
import torch
from helpers import ROOT, TAILS
from hydra import compose, initialize_config_dir

from fedvssl.config.checks import build_method
from fedvssl.data.datasets import PretextDataset
from fedvssl.data.kinetics import read_kinetics_csv
from fedvssl.federated.training import train_epoch
from fedvssl.ssl.ctp import PatchTrajectories, box_deltas, box_iou, decode_deltas, paste_patches, walk
from fedvssl.ssl.motion import interpolate, sample_key_frames
from fedvssl.ssl.vcop import PERMUTATIONS

# Tiny inputs per method: CtP's head needs 9-16 frames, the others run on 4.
TINY = {"ctp": (16, 32), "vcop": (4, 32), "speed": (4, 32)}


def method(name, *overrides):
    clip_len, crop = TINY[name]
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "config",
            [
                f"ssl={name}",
                "model=paper",
                f"input.clip_len={clip_len}",
                f"input.crop_size={crop}",
                "run.dir=.",
                *overrides,
            ],
        )
    return build_method(cfg)


def batch_of(world, m, n, seed=0):
    records, _ = read_kinetics_csv(world / "kinetics400/annotations/train.csv", world / "kinetics400")
    ds = PretextDataset(records[:: len(records) // n][:n], m, "auto", seed=(seed,))
    batch = torch.utils.data.default_collate([ds[i] for i in range(n)])
    assert (batch.pop("bad") < 0).all()
    return batch


@pytest.mark.parametrize("name", sorted(TINY))
def test_layout_and_forward_backward(world, name):
    m = method(name)
    model = m.build_model(seed=0)
    sd = model.state_dict()
    assert len(sd) == 120 + len(TAILS[name])
    assert all(k.startswith("backbone.") for k in list(sd)[:120])
    assert [(k, tuple(v.shape)) for k, v in list(sd.items())[120:]] == TAILS[name]
    assert model.backbone.ctp_strides == (name == "ctp")
    loss, metrics = m.loss(model, batch_of(world, m, 2))
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.parameters())
    assert set(metrics) >= ({"iou"} if name == "ctp" else {"accuracy"})


@pytest.mark.parametrize("name", sorted(TINY))
def test_the_demo_backbone_is_the_same_network_narrower_and_shallower(world, name):
    """model=small: R3D at width 16 with one block per stage; every head follows its width."""
    m = method(name, "model=small")
    model = m.build_model(seed=0)
    names = [k for k in model.state_dict() if k.startswith("backbone.")]
    paper = [k for k in method(name).build_model(seed=0).state_dict() if k.startswith("backbone.")]
    assert names == [k for k in paper if ".1." not in k]  # the second block of each stage is gone
    assert model.backbone.stem.conv.weight.shape[0] == 16 and model.backbone.out_channels == 128
    loss, _ = m.loss(model, batch_of(world, m, 2))
    loss.backward()
    assert torch.isfinite(loss)


def test_optimiser_defaults_follow_the_paper():
    for name, lr, momentum in (("ctp", 0.01, 0.0), ("vcop", 0.001, 0.0), ("speed", 0.01, 0.9)):
        m = method(name)
        opt = m.make_optimizer(m.build_model(0))
        group = opt.param_groups[0]
        assert (group["lr"], group["momentum"], group["weight_decay"]) == (lr, momentum, 1e-4)
        assert m.optimizer["grad_clip"] == 40


@pytest.mark.parametrize(
    ("name", "clips", "steps", "lr"), [("speed", 8, 25, 0.05), ("vcop", 8, 25, 0.05), ("ctp", 4, 90, 0.02)]
)
@pytest.mark.slow
def test_learns_on_a_fixed_batch(world, name, clips, steps, lr):
    """A short centralised run on real decoded clips: loss falls, the pretext score beats chance.

    CtP's head starts from Normal(0, 0.001) weights in two stacked layers, so it
    leaves its starting point slowly: it gets twice the steps on half the clips, and
    its check averages the last 5 steps. Measured 2026-12-05 (2-core CPU) with batch
    and model seeds 0-2: the tail loss was 0.24-0.41 of the first, the tail IoU
    0.22-0.27 above the zero-motion guess; 45 steps on 8 clips at lr 0.05 gave only
    0.85-0.90, too close to call.
    """
    torch.manual_seed(0)
    m = method(name, f"ssl.optimizer.lr={lr}", "ssl.optimizer.momentum=0.9")
    batch = batch_of(world, m, clips)
    model = m.build_model(seed=0)
    for mod in model.modules():
        if isinstance(mod, torch.nn.Dropout):
            mod.p = 0.0
    history = [train_epoch(model, m, [batch]) for _ in range(steps + 1)]
    first, last = history[0], history[-1]
    if name == "ctp":  # chance = predicting the first-frame box everywhere (zero deltas)
        zero = box_iou(batch["trajs"][:, :, :1].expand_as(batch["trajs"]), batch["trajs"]).mean().item()
        tail_loss = np.mean([h["train-loss"] for h in history[-5:]])
        tail_iou = np.mean([h["iou"] for h in history[-5:]])
        assert tail_loss < 0.7 * first["train-loss"], (first, tail_loss)
        assert tail_iou > zero + 0.1, (zero, tail_iou)
    else:
        assert last["train-loss"] < 0.6 * first["train-loss"], (first, last)
        chance = 1 / (len(PERMUTATIONS) if name == "vcop" else 7)
        assert last["accuracy"] >= 2 * chance, last


def test_key_frames_and_interpolation():
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(300):
        keys = sample_key_frames(16, (0.5, 0.3, 0.2), rng)
        assert keys[0] == 0 and keys[-1] == 15 and (np.diff(keys) > 0).all()
        seen.add(len(keys))
    assert seen == {2, 3, 4}
    keys, values = np.array([0, 5, 15]), np.array([[0.0], [10.0], [0.0]])
    np.testing.assert_allclose(
        interpolate(keys, values, 16)[:, 0], [2.0 * i for i in range(6)] + [10 - i for i in range(1, 11)]
    )
    randomly = interpolate(keys, values, 16, np.random.default_rng(1))
    np.testing.assert_allclose(randomly[keys], values)  # every mode hits the key values


def test_trajectories_stay_inside_follow_speed_limits_and_repeat():
    traj = PatchTrajectories([16, 24, 28, 32, 48, 64], [0.5, 1.0, 2.0], 0.18, 3, 3.0, 0.025, (0.5, 0.3, 0.2))
    for seed in range(50):
        boxes = traj(16, 112, 112, np.random.default_rng(seed))
        assert boxes.shape == (3, 16, 4) and (boxes == np.round(boxes)).all()
        assert boxes.min() >= 0 and boxes[..., [0, 2]].max() <= 112 and boxes[..., [1, 3]].max() <= 112
        assert (boxes[..., 2] >= boxes[..., 0]).all() and (boxes[..., 3] >= boxes[..., 1]).all()
        centres = (boxes[..., :2] + boxes[..., 2:]) / 2
        # Shifts are at most 3 px per frame of a segment on average; an accelerating segment
        # moves up to twice that in its last frame; rounding adds up to 1 px.
        assert np.abs(np.diff(centres, axis=1)).max() <= 2 * 3.0 + 1 + 1e-6
    np.testing.assert_array_equal(
        traj(16, 112, 112, np.random.default_rng(7)), traj(16, 112, 112, np.random.default_rng(7))
    )
    assert not np.array_equal(
        traj(16, 112, 112, np.random.default_rng(7)), traj(16, 112, 112, np.random.default_rng(8))
    )


def test_key_frame_positions_are_clipped_at_every_key_frame():
    """Pushed 20 px past the left edge, then 15 px right: back from the edge (the reference), not from -10."""
    low, high = np.array([5.0, 5.0]), np.array([100.0, 100.0])
    path = walk(np.array([[10.0, 50.0]]), np.array([[[-20.0, 0.0]], [[15.0, 0.0]], [[200.0, 70.0]]]), low, high)
    np.testing.assert_array_equal(path[:, 0], [[10, 50], [5, 50], [20, 50], [100, 100]])


def test_patches_are_pasted_where_the_boxes_are():
    xs = torch.arange(40, dtype=torch.float32)
    clip = (xs * 6).view(1, 1, 1, 40).expand(6, 3, 40, 40).clone()  # a horizontal ramp: any shift shows
    trajs = np.array([[[2 + 3 * t, 5, 14 + 3 * t, 17] for t in range(6)]], dtype=float)
    out = paste_patches(clip, trajs, np.random.default_rng(0), label_prob=1.0, key_frame_probs=(1.0,))
    changed = (out - clip).abs().sum(dim=1) > 0
    frames_with_patch = 0
    for t in range(6):  # changes only inside the box; every frame but the source frame changes
        ys, xs_ = torch.nonzero(changed[t], as_tuple=True)
        frames_with_patch += len(ys) > 0
        if len(ys):
            assert xs_.min() >= 2 + 3 * t and xs_.max() < 14 + 3 * t and ys.min() >= 5 and ys.max() < 17
    assert frames_with_patch == 5
    assert (out == out.floor()).all() and out.max() <= 255


def test_targets_decode_back_to_the_boxes():
    trajs = torch.as_tensor(
        PatchTrajectories([24, 48], [0.5, 2.0], 0.18, 3, 3.0, 0.025, (0.5, 0.3, 0.2))(
            16, 112, 112, np.random.default_rng(3)
        ),
        dtype=torch.float32,
    )
    trajs = trajs.unsqueeze(0)
    rois = trajs[:, :, 0]
    deltas = box_deltas(rois, trajs)
    torch.testing.assert_close(deltas[:, :, 0], torch.zeros_like(deltas[:, :, 0]))
    torch.testing.assert_close(decode_deltas(rois, deltas), trajs, atol=1e-3, rtol=0)
    assert box_iou(decode_deltas(rois, deltas), trajs).min() > 0.999


def test_vcop_clip_order_matches_the_label(world):
    m = method("vcop")
    starts = m.clip_starts(100, np.random.default_rng(0))
    assert (np.diff(starts) == 4 + 8).all()
    # 0 < avg = (20 - 12) // 2 = 4 < 8: the gap shrinks to avg and the clips fill the video.
    assert m.clip_starts(20, np.random.default_rng(0)).tolist() == [0, 8, 16]
    short = m.clip_starts(10, np.random.default_rng(0))
    assert len(short) == 3 and short.max() <= 10 - 4

    class Frames:
        """A reader whose frame i is filled with the value i: clip order is visible in the pixels."""

        name = "frames"

        def num_frames(self, path):
            return 60

        def get_frames(self, path, indices):
            return np.broadcast_to(np.asarray(indices, np.uint8)[:, None, None, None], (len(indices), 40, 50, 3)).copy()

    for seed in range(12):
        item = m.sample(Frames(), "x", 60, np.random.default_rng(seed))
        order = item["imgs"][:, 0].mean(dim=(1, 2, 3)).argsort().argsort().tolist()
        assert tuple(order) == PERMUTATIONS[item["label"]]


def test_ctp_rejects_clip_lengths_its_head_cannot_take():
    with pytest.raises(Exception, match=r"clip_len in \[9, 16\]"):
        method("ctp", "input.clip_len=8")
