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

from fedvssl.config import client_config, validate
from fedvssl.downstream.finetune import video_logits
from fedvssl.downstream.retrieval import extract_features
from fedvssl.errors import ConfigError
from fedvssl.federated.training import train_epoch
from fedvssl.models.precision import FP32, Precision, prepare, to_device
from fedvssl.models.r3d import R3D18
from fedvssl.settings import client_settings, evaluation_settings

BF16 = Precision(amp_dtype="bf16")
CHANNELS_LAST = Precision(channels_last=True)
FAST = Precision(amp_dtype="bf16", channels_last=True)
CL3D = torch.channels_last_3d

# One training step (SGD after one batch of 4), bf16 against fp32. Measured: loss 8e-5
# apart, parameter updates 13 % apart in relative L2 norm (cosine 0.99): bf16 keeps 8
# mantissa bits, and the backward pass through 18 layers of a random network adds up.
STEP_LOSS_TOL = 1e-3
STEP_UPDATE_REL_TOL = 0.25
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
    # Two threads, whatever earlier tests left: with one thread, torch 2.14.1's CPU bf16
    # backward of this model gives NaN gradients (measured 2026-11-29; fp32 is unaffected);
    # with two it still does now and then (see _bf16_step).
    torch.set_num_threads(2)
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


def _bf16_step(precision: Precision):
    """``_step`` in bf16; an expected failure where torch's CPU bf16 backward gives NaN.

    On some CPUs (seen in CI, 2026-12-04) the backward pass of this model in bf16 gives
    NaN gradients after a finite loss; training then stops with FloatingPointError
    (tested below) rather than agree, and that is torch's kernel, not this package.
    """
    try:
        return _step(precision)
    except FloatingPointError as err:
        if "non-finite gradients" not in str(err):
            raise
        pytest.xfail(f"torch's CPU bf16 backward gave non-finite gradients here: {err}")


def test_bf16_training_step_agrees_with_fp32(fp32_step):
    loss32, update32, _ = fp32_step
    loss16, update16, _ = _bf16_step(BF16)
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
    loss, update, model = _bf16_step(FAST)
    assert model.backbone.stem.conv.weight.is_contiguous(memory_format=CL3D)
    assert loss != loss32 and abs(loss - loss32) < STEP_LOSS_TOL
    assert _rel(update, update32) < STEP_UPDATE_REL_TOL
    assert all(v.dtype != torch.bfloat16 for v in model.state_dict().values())  # weights stay fp32


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


def _views():
    gen = torch.Generator().manual_seed(1)
    return [
        {"imgs": torch.randn(6, 2, 3, 4, 32, 32, generator=gen), "bad": torch.full((6,), -1), "label": torch.arange(6)}
    ]


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return R3D18()


def _features(backbone, precision: Precision, loader=None) -> torch.Tensor:
    feats, _ = extract_features({"b": copy.deepcopy(backbone)}, loader or _views(), precision=precision)
    return feats["b"]


def test_bf16_retrieval_features_agree_with_fp32(backbone):
    f32, f16 = _features(backbone, FP32), _features(backbone, BF16)
    assert f16.dtype == torch.float32 and not torch.equal(f16, f32)
    assert F.cosine_similarity(f16, f32).min().item() >= FEATURE_COS_TOL


def test_channels_last_retrieval_features_match_default_format(backbone):
    f32, fcl = _features(backbone, FP32), _features(backbone, CHANNELS_LAST)
    assert _rel(fcl, f32) < LAYOUT_REL_TOL
    loaded = copy.deepcopy(backbone)
    extract_features({"b": loaded}, _views(), precision=CHANNELS_LAST)
    assert loaded.stem.conv.weight.is_contiguous(memory_format=CL3D)
    f_both = _features(backbone, FAST)
    assert F.cosine_similarity(f_both, f32).min().item() >= FEATURE_COS_TOL and not torch.equal(f_both, f32)


def test_bf16_fine_tuning_logits_agree_with_fp32(backbone):
    model = copy.deepcopy(backbone).eval()  # a backbone is a classifier of 512 "classes" here
    loader = [{**v, "imgs": v["imgs"]} for v in _views()]
    l32, _ = video_logits(model, loader, precision=FP32)
    l16, _ = video_logits(prepare(model, FAST, "cpu"), loader, precision=FAST)
    assert l16.dtype == torch.float32 and not torch.equal(l16, l32)
    assert F.cosine_similarity(l16.flatten(1), l32.flatten(1)).min().item() >= FEATURE_COS_TOL


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


def test_runtime_gpu_turns_on_the_fast_settings_and_cpu_keeps_fp32():
    gpu = _compose("runtime=gpu")
    fast = Precision(amp_dtype="bf16", channels_last=True, cudnn_benchmark=True, compile=False)
    assert client_settings(gpu).precision == fast
    assert evaluation_settings(gpu).clips.precision == fast
    assert client_config(gpu).runtime.precision.amp_dtype == "bf16"  # what travels to the clients
    cpu = _compose()
    assert client_settings(cpu).precision == FP32 == evaluation_settings(cpu).clips.precision
    assert client_settings(_compose("runtime.precision.compile=true")).precision.compile


def test_unknown_amp_dtype_is_one_line_before_any_work():
    with pytest.raises(ConfigError, match="runtime.precision.amp_dtype=fp8 must be one of none, bf16, fp16"):
        validate(_compose("runtime.precision.amp_dtype=fp8"))
