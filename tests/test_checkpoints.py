"""Published FedVSSL checkpoints (three layouts), refusal of foreign pickles, conversion."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import ROOT, write_layout
from torchvision.models.video import r3d_18

from fedvssl.core.files import load_npz, save_npz
from fedvssl.models.checkpoints import CheckpointError, load_backbone_state
from fedvssl.models.r3d import R3D18


@pytest.fixture(scope="module")
def ctp_arrays():
    """The 126 arrays of a CtP model as a FedVSSL server saved them (averaged: float buffers)."""
    from fedvssl.ssl.ctp import CtPHead

    torch.manual_seed(0)
    backbone, head = R3D18(ctp_strides=True), CtPHead(16)
    arrays = [v.numpy() for v in backbone.state_dict().values()] + [v.numpy() for v in head.state_dict().values()]
    return [a.astype(np.float64) if a.dtype == np.int64 else a for a in arrays]


@pytest.mark.parametrize("layout", ["a", "b", "c"])
def test_published_layouts_load(tmp_path, ctp_arrays, layout):
    path = tmp_path / f"round-540-{layout}.npz"
    write_layout(path, ctp_arrays, layout)
    state = load_backbone_state(path)
    assert len(state) == 120 and all(k.startswith("backbone.") for k in state)
    assert state["backbone.stem.bn.num_batches_tracked"].dtype == np.int64
    np.testing.assert_array_equal(state["backbone.layer4.1.conv2.conv.weight"], ctp_arrays[114])
    R3D18().load_state_dict({k.removeprefix("backbone."): torch.from_numpy(v) for k, v in state.items()})


class Evil:
    def __reduce__(self):
        import os

        return (os.system, (f"touch {Evil.marker}",))


def test_foreign_pickles_are_refused_without_running(tmp_path):
    Evil.marker = tmp_path / "pwned"
    objs = np.empty(1, dtype=object)
    objs[0] = Evil()
    np.savez(tmp_path / "evil.npz", objs)
    with pytest.raises(CheckpointError, match=r"evil.npz: refusing to load global (posix|os)\.system"):
        load_backbone_state(tmp_path / "evil.npz")
    assert not Evil.marker.exists()


def test_a_backbone_loads_at_its_own_size_only(tmp_path):
    from fedvssl.models.r3d import BackboneSize

    small = BackboneSize(width=16, blocks=1)
    state = {"backbone." + k: v.numpy() for k, v in R3D18(size=small).state_dict().items()}
    save_npz(tmp_path / "small.npz", state)
    loaded = load_backbone_state(tmp_path / "small.npz", small)
    assert list(loaded) == list(state) and all(np.array_equal(loaded[k], state[k]) for k in state)
    with pytest.raises(CheckpointError, match="another model size"):
        load_backbone_state(tmp_path / "small.npz")  # read as the paper's R3D-18


def test_shape_mismatch_names_the_entry(tmp_path, ctp_arrays):
    arrays = list(ctp_arrays)
    arrays[30] = np.zeros((3, 3), np.float32)
    write_layout(tmp_path / "bad.npz", arrays, "b")
    with pytest.raises(CheckpointError, match=r"entry 30 \(backbone.layer2.0.conv1.conv.weight\) has shape \(3, 3\)"):
        load_backbone_state(tmp_path / "bad.npz")
    write_layout(tmp_path / "short.npz", arrays[:50], "b")
    with pytest.raises(CheckpointError, match="50 arrays, a backbone needs 120"):
        load_backbone_state(tmp_path / "short.npz")


@pytest.mark.slow
def test_convert_round_trip_through_torchvision(tmp_path, ctp_arrays):
    src = tmp_path / "round-540.npz"
    write_layout(src, ctp_arrays, "a")
    cmd = [sys.executable, "-m", "fedvssl.convert"]
    out = subprocess.run([*cmd, str(src), str(tmp_path / "tv.pt")], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and "eps=1e-3" in out.stdout, out.stderr
    tv = r3d_18()
    missing, unexpected = tv.load_state_dict(torch.load(tmp_path / "tv.pt", weights_only=True), strict=False)
    assert missing == ["fc.weight", "fc.bias"] and unexpected == []
    back = subprocess.run([*cmd, str(tmp_path / "tv.pt"), str(tmp_path / "back.npz")], cwd=ROOT, capture_output=True)
    assert back.returncode == 0
    ours = load_npz(tmp_path / "back.npz")
    original = load_backbone_state(src)
    assert list(ours) == list(original)
    for k in ours:
        np.testing.assert_array_equal(ours[k], original[k])
    save_npz(tmp_path / "ours.npz", ours)
    assert list(load_backbone_state(tmp_path / "ours.npz")) == list(ours)
