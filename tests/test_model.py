"""R3D-18 in CtP's layout: names, order and shapes of the reference table; torchvision parity."""

from pathlib import Path

import pytest
import torch
from torchvision.models.video import r3d_18

from fedvssl.models.r3d import R3D18, load_backbone
from fedvssl.ssl.speed import Speed

LAYOUT = [
    line.rstrip("\n").split("\t")
    for line in (Path(__file__).parent / "data" / "r3d18_ctp_layout.tsv").read_text().splitlines()
    if not line.startswith("#")
]


def shape_of(text):
    return tuple(int(x) for x in text.split(",")) if text else ()


@pytest.mark.parametrize("ctp_strides", [False, True])
def test_state_dict_matches_reference_table(ctp_strides):
    sd = R3D18(ctp_strides=ctp_strides).state_dict()
    assert len(sd) == 120
    assert [f"backbone.{k}" for k in sd] == [row[1] for row in LAYOUT]
    assert [tuple(v.shape) for v in sd.values()] == [shape_of(row[2]) for row in LAYOUT]
    assert sum(v.numel() for k, v in sd.items() if "running" not in k and "num_batches" not in k) == 33_166_272


def test_bn_and_conv_conventions():
    m = R3D18()
    bns = [x for x in m.modules() if isinstance(x, torch.nn.BatchNorm3d)]
    convs = [x for x in m.modules() if isinstance(x, torch.nn.Conv3d)]
    assert len(bns) == 20 and all(b.eps == 1e-3 and b.momentum == 0.1 for b in bns)
    assert len(convs) == 20 and all(c.bias is None for c in convs)


def test_output_shapes_of_both_stride_configurations():
    x = torch.randn(1, 3, 16, 112, 112)
    with torch.inference_mode():
        assert R3D18(ctp_strides=False).eval()(x).shape == (1, 512, 2, 7, 7)
        assert R3D18(ctp_strides=True).eval()(x).shape == (1, 512, 2, 14, 14)


def test_same_function_as_torchvision_r3d18():
    """Loaded by position into torchvision's r3d_18 (BN eps set to 1e-3), layer4 outputs agree."""
    ours = R3D18().eval()
    tv = r3d_18()
    for mod in tv.modules():
        if isinstance(mod, torch.nn.BatchNorm3d):
            mod.eps = 1e-3
    tv_keys = [k for k in tv.state_dict() if not k.startswith("fc.")]
    assert tv_keys == [row[3] for row in LAYOUT]
    tv.load_state_dict(dict(zip(tv_keys, ours.state_dict().values(), strict=True)), strict=False)
    tv.eval()
    x = torch.randn(2, 3, 8, 32, 32)
    with torch.inference_mode():
        ref = tv.layer4(tv.layer3(tv.layer2(tv.layer1(tv.stem(x)))))
        torch.testing.assert_close(ours(x), ref)


def test_pretext_model_puts_backbone_first_and_loads_by_prefix():
    model = Speed(
        4, 32, {"lr": 0.01, "momentum": 0, "weight_decay": 0}, [112], 0.5, (0, 0), (0, 0), (0, 0, 0), 0.5
    ).build_model(0)
    keys = list(model.state_dict())
    assert len(keys) == 122 and keys[-2:] == ["cls_head.fc_cls.weight", "cls_head.fc_cls.bias"]
    assert all(k.startswith("backbone.") for k in keys[:120])
    fresh = R3D18()
    load_backbone(fresh, model.state_dict())
    torch.testing.assert_close(
        fresh.state_dict()["layer4.1.bn2.weight"], model.state_dict()["backbone.layer4.1.bn2.weight"]
    )
    with pytest.raises(RuntimeError):
        load_backbone(fresh, {"backbone.stem.conv.weight": torch.zeros(1)})
