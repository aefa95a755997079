"""Mixed precision and memory format (``runtime.precision``) in training, retrieval and fine-tuning.

All on the CPU, with the real R3D-18 at 4x32x32. bf16 is compared with fp32 within
tolerances measured here (2026-11-29, torch 2.14.1, 2-core CPU) with some headroom;
each comparison also checks that the option really changed the computation, so a
path that ignored it would fail.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import ROOT, make_speed
from hydra import compose, initialize_config_dir
from torch.utils.data import DataLoader

from fedvssl.config.checks import client_config, validate
from fedvssl.config.settings import client_settings, evaluation_settings
from fedvssl.core.errors import ConfigError
from fedvssl.downstream.finetune import video_logits
from fedvssl.downstream.retrieval import extract_features
from fedvssl.federated.training import train_epoch
from fedvssl.models.precision import (
    FP32,
    Compute,
    Conv3d,
    Precision,
    autocast,
    overhangs,
    prepare,
    resolved_amp_dtype,
    to_device,
)
from fedvssl.models.r3d import R3D18

BF16 = Precision(amp_dtype="bf16")
CHANNELS_LAST = Precision(channels_last=True)
FAST = Precision(amp_dtype="bf16", channels_last=True)
CL3D = torch.channels_last_3d

# One training step (SGD after one batch of 4), bf16 against fp32. Measured 2026-12-06: loss
# 8e-5 apart, parameter updates 0.7 % apart in relative L2 norm. (Before Conv3d padded the
# 2-frame inputs of layer2 itself, oneDNN's garbage weight gradients there put the updates
# 13 % apart, or made them NaN.)
STEP_LOSS_TOL = 1e-3
STEP_UPDATE_REL_TOL = 0.05
# channels_last against the default format, fp32: the same arithmetic in another order.
# Measured: equal loss, updates 7e-6 apart (relative), features 7e-7 apart (relative).
LAYOUT_REL_TOL = 1e-4
# Retrieval descriptors, bf16 against fp32. Measured: cosine >= 0.99998 per video, 0.6 %
# relative L2 difference; R@k ranks by cosine, so 0.999 leaves the rankings unchanged
# but for near ties.
FEATURE_COS_TOL = 0.999


def _batch():
    gen = torch.Generator().manual_seed(0)
    return {"imgs": torch.randn(4, 3, 4, 32, 32, generator=gen), "label": torch.tensor([0, 3, 5, 6])}


def _step(precision: Precision):
    """The loss, the parameter update and the model after one train_epoch over one batch."""
    torch.set_num_threads(2)  # the same, whatever earlier tests left
    method = make_speed()
    model = method.build_model(0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prepare(model, precision, "cpu")
    torch.manual_seed(1)  # the same dropout mask in every run
    metrics = train_epoch(model, method, [_batch()], precision=precision)
    after = model.state_dict()
    update = torch.cat([(after[k] - v).flatten() for k, v in before.items() if v.is_floating_point()])
    return metrics["train-loss"], update, model


@pytest.fixture(scope="module")
def fp32_step():
    return _step(FP32)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def test_bf16_training_step_agrees_with_fp32(fp32_step):
    loss32, update32, _ = fp32_step
    loss16, update16, _ = _step(BF16)
    assert loss16 != loss32 and not torch.equal(update16, update32)  # autocast really ran in bf16
    assert abs(loss16 - loss32) < STEP_LOSS_TOL
    assert _rel(update16, update32) < STEP_UPDATE_REL_TOL


def test_channels_last_training_step_matches_default_format(fp32_step):
    loss32, update32, _ = fp32_step
    loss, update, model = _step(CHANNELS_LAST)
    assert model.backbone.stem.conv.weight.is_contiguous(memory_format=CL3D)
    assert not model.backbone.stem.conv.weight.is_contiguous()
    assert abs(loss - loss32) <= LAYOUT_REL_TOL * abs(loss32)
    assert _rel(update, update32) < LAYOUT_REL_TOL


def test_bf16_and_channels_last_combine_in_training(fp32_step):
    loss32, update32, _ = fp32_step
    loss, update, model = _step(FAST)
    assert model.backbone.stem.conv.weight.is_contiguous(memory_format=CL3D)
    assert loss != loss32 and abs(loss - loss32) < STEP_LOSS_TOL
    assert _rel(update, update32) < STEP_UPDATE_REL_TOL
    assert all(v.dtype != torch.bfloat16 for v in model.state_dict().values())  # weights stay fp32


def _poison_freed_memory() -> None:
    """Free NaN-filled blocks, so that a kernel reading memory it never wrote most likely reads NaN."""
    junk = [torch.full((1 << 20,), float("nan"), dtype=torch.bfloat16) for _ in range(32)]
    del junk


@pytest.mark.parametrize("layout", [torch.contiguous_format, CL3D], ids=["default", "channels_last"])
def test_bf16_weight_gradient_is_right_where_the_kernel_overhangs_the_input(layout):
    """A 3-deep kernel on 2 frames (layer3 at the demo's 8 frames, layer2 of the tests' 4).

    There torch 2.14.1's oneDNN bf16 weight gradient reads memory it never wrote (garbage
    or NaN, measured 2026-12-06 in 3 of 3 poisoned tries with nn.Conv3d); Conv3d pads such
    inputs itself and still computes in bf16.
    """
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    conv = Conv3d(16, 16, 3, 1, 1, bias=False)
    x = torch.randn(4, 16, 2, 8, 8, generator=gen).contiguous(memory_format=layout)
    grad_out = torch.randn(4, 16, 2, 8, 8, generator=gen).bfloat16()
    # The exact gradient of the same bf16-rounded operands (autocast rounds them).
    w64 = conv.weight.detach().bfloat16().double().requires_grad_()
    F.conv3d(x.bfloat16().double(), w64, padding=1).backward(grad_out.double())
    for _ in range(3):
        conv.weight.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = conv(x)
        assert y.dtype == torch.bfloat16  # padded, not moved to fp32
        _poison_freed_memory()
        y.backward(grad_out)
        assert _rel(conv.weight.grad.double(), w64.grad) < 0.02


def test_conv3d_computes_what_nn_conv3d_computes():
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    conv = Conv3d(8, 8, 3, 1, 1, bias=False)
    x = torch.randn(2, 8, 2, 6, 6, generator=gen)
    assert overhangs(x, conv.kernel_size) and not overhangs(torch.randn(2, 8, 3, 6, 6), conv.kernel_size)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        padded = conv(x)
        plain = torch.nn.Conv3d.forward(conv, x)
    torch.testing.assert_close(padded, plain)  # the same arithmetic: only the weight gradient differed
    torch.testing.assert_close(conv(x), F.conv3d(x, conv.weight, padding=1))  # fp32: nn.Conv3d itself


@pytest.mark.parametrize("precision", [FP32, BF16], ids=["fp32", "bf16"])
def test_non_finite_gradients_stop_training_before_the_weights_change(precision):
    method = make_speed()
    model = method.build_model(0)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    prepare(model, precision, "cpu")
    model.backbone.stem.conv.weight.register_hook(lambda g: g * float("nan"))  # the loss stays finite
    with pytest.raises(FloatingPointError, match="non-finite gradients"):
        train_epoch(model, method, [_batch()], precision=precision)
    after = dict(model.named_parameters())  # (the forward pass did move BatchNorm's running stats)
    assert all(torch.equal(after[k], v) for k, v in before.items())


def test_inputs_move_in_the_chosen_format():
    batch = {**_batch(), "name": "kept"}
    moved = to_device(batch, CHANNELS_LAST, "cpu")
    assert moved["imgs"].is_contiguous(memory_format=CL3D) and not moved["imgs"].is_contiguous()
    assert torch.equal(moved["imgs"], batch["imgs"]) and moved["name"] == "kept"
    assert to_device(batch, FP32, "cpu")["imgs"].is_contiguous()


def _views() -> DataLoader:
    """One batch of 6 videos x 2 views, as the evaluation's loaders give them."""
    gen = torch.Generator().manual_seed(1)
    imgs = torch.randn(6, 2, 3, 4, 32, 32, generator=gen)
    batch = {"imgs": imgs, "bad": torch.full((6,), -1), "label": torch.arange(6)}
    return DataLoader([batch], batch_size=None)


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return R3D18()


def _features(backbone, precision: Precision, loader=None) -> torch.Tensor:
    feats, _ = extract_features({"b": copy.deepcopy(backbone)}, loader or _views(), Compute.on("cpu", precision))
    return feats["b"]


def test_bf16_retrieval_features_agree_with_fp32(backbone):
    f32, f16 = _features(backbone, FP32), _features(backbone, BF16)
    assert f16.dtype == torch.float32 and not torch.equal(f16, f32)
    assert F.cosine_similarity(f16, f32).min().item() >= FEATURE_COS_TOL


def test_channels_last_retrieval_features_match_default_format(backbone):
    f32, fcl = _features(backbone, FP32), _features(backbone, CHANNELS_LAST)
    assert _rel(fcl, f32) < LAYOUT_REL_TOL
    loaded = copy.deepcopy(backbone)
    extract_features({"b": loaded}, _views(), Compute.on("cpu", CHANNELS_LAST))
    assert loaded.stem.conv.weight.is_contiguous(memory_format=CL3D)
    f_both = _features(backbone, FAST)
    assert F.cosine_similarity(f_both, f32).min().item() >= FEATURE_COS_TOL and not torch.equal(f_both, f32)


def test_bf16_fine_tuning_logits_agree_with_fp32(backbone):
    model = copy.deepcopy(backbone).eval()  # a backbone is a classifier of 512 "classes" here
    loader = [{**v, "imgs": v["imgs"]} for v in _views()]
    l32, _ = video_logits(model, loader, Compute.on("cpu", FP32))
    fast = Compute.on("cpu", FAST)
    l16, _ = video_logits(fast.prepare(model), loader, fast)
    assert l16.dtype == torch.float32 and not torch.equal(l16, l32)
    assert F.cosine_similarity(l16.flatten(1), l32.flatten(1)).min().item() >= FEATURE_COS_TOL


def test_compute_resolves_the_device_once_and_applies_its_precision():
    """``Compute.on``: ``auto`` becomes a real device; each step uses the precision it was given."""
    auto = Compute.on("auto", CHANNELS_LAST)
    assert auto.device == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cpu = Compute.on("cpu", CHANNELS_LAST)
    assert cpu.device == torch.device("cpu") and cpu.pin_memory is False  # pinning serves CUDA only
    batch = {"imgs": torch.randn(2, 3, 4, 8, 8), "label": torch.arange(2)}
    assert cpu.batch(batch)["imgs"].is_contiguous(memory_format=CL3D)
    assert Compute.on("cpu").batch(batch)["imgs"].is_contiguous()
    model = cpu.prepare(R3D18())
    assert model.stem.conv.weight.is_contiguous(memory_format=CL3D)
    with Compute.on("cpu", BF16).autocast():
        assert torch.is_autocast_enabled("cpu")
    with cpu.autocast():
        assert not torch.is_autocast_enabled("cpu")
    assert not cpu.grad_scaler().is_enabled()
    assert Compute.on("cpu", Precision(amp_dtype="fp16")).grad_scaler().is_enabled()


def test_compile_option_compiles_the_backbone_in_place():
    method = make_speed()
    model = method.build_model(0)
    keys = list(model.state_dict())
    prepare(model, Precision(compile=True), "cpu")
    assert model.backbone._compiled_call_impl is not None  # nn.Module.compile: compiled on first call
    assert list(model.state_dict()) == keys  # checkpoints and shared tensors keep their names
    assert prepare(method.build_model(0), FP32, "cpu").backbone._compiled_call_impl is None


@pytest.mark.slow
def test_bf16_channels_last_and_compile_combine(backbone):
    """torch.compile (inductor, with the system's C++ compiler) takes about a minute here."""
    f32 = _features(backbone, FP32)
    compiled = Precision(amp_dtype="bf16", channels_last=True, compile=True)
    fc = _features(backbone, compiled)
    assert F.cosine_similarity(fc, f32).min().item() >= FEATURE_COS_TOL and not torch.equal(fc, f32)


def _compose(*overrides):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("config", ["run.dir=.", *overrides])


def test_runtime_gpu_turns_on_the_fast_settings_and_cpu_its_own():
    gpu = _compose("runtime=gpu")
    fast = Precision(amp_dtype="bf16", channels_last=True, cudnn_benchmark=True, compile=False)
    assert client_settings(gpu).precision == fast
    assert evaluation_settings(gpu).clips.precision == fast
    assert client_config(gpu).runtime.precision.amp_dtype == "bf16"  # what travels to the clients
    cpu = _compose()
    demo = Precision(amp_dtype="auto", channels_last=True)
    assert client_settings(cpu).precision == demo == evaluation_settings(cpu).clips.precision
    assert client_config(cpu).runtime.precision.amp_dtype == "auto"  # each client resolves it on its own CPU
    assert client_settings(_compose("runtime.precision.compile=true")).precision.compile


@pytest.mark.parametrize(
    ("caps", "expected"),
    [({}, None), ({"avx512_bf16": True}, torch.bfloat16), ({"amx_bf16": True}, torch.bfloat16)],
    ids=["no-bf16", "avx512-bf16", "amx-bf16"],
)
def test_auto_is_bf16_only_on_cpus_with_bf16_instructions(monkeypatch, caps, expected):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps)
    with autocast(Precision(amp_dtype="auto"), "cpu"):
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
    assert dtype == expected
    assert resolved_amp_dtype("auto", "cpu") == ("bf16" if expected else "none")
    assert resolved_amp_dtype("fp16", "cpu") == "fp16"  # an explicit choice stays


def test_unknown_amp_dtype_is_one_line_before_any_work():
    with pytest.raises(ConfigError, match="runtime.precision.amp_dtype=fp8 must be one of none, bf16, fp16, auto"):
        validate(_compose("runtime.precision.amp_dtype=fp8"))
