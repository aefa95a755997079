"""The poisoning attacks of ``fault.attack``: what the attacker's reply becomes."""

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from fedvssl.config.checks import CONF_DIR, ConfigError, validate
from fedvssl.federated.attacks import Attack

RNG = np.random.default_rng(0)
GLOBAL = {"w": RNG.standard_normal((4, 3)).astype(np.float32), "n": np.array(5, dtype=np.int64)}
TRAINED = {"w": GLOBAL["w"] + RNG.standard_normal((4, 3)).astype(np.float32) * 0.1, "n": np.array(9, dtype=np.int64)}
METRICS = {"train-loss": 1.5, "num-examples": 16.0}


def test_signflip_reverses_and_scales_the_update():
    out, metrics = Attack("signflip", scale=10.0)(TRAINED, GLOBAL, METRICS, (0,))
    np.testing.assert_allclose(out["w"] - GLOBAL["w"], -10 * (TRAINED["w"] - GLOBAL["w"]), rtol=1e-5, atol=1e-6)
    assert out["n"] == 9 and metrics == METRICS  # counters and metrics as trained


def test_lie_sends_a_random_update_of_the_honest_norm_and_loss_zero():
    out, metrics = Attack("lie")(TRAINED, GLOBAL, METRICS, (7, 1, 0))
    update, honest = out["w"] - GLOBAL["w"], TRAINED["w"] - GLOBAL["w"]
    assert np.linalg.norm(update) == pytest.approx(np.linalg.norm(honest), rel=1e-5)
    assert abs(np.dot(update.ravel(), honest.ravel())) < 0.9 * np.linalg.norm(honest) ** 2  # not the honest one
    assert metrics["train-loss"] == 0.0 and metrics["num-examples"] == 16.0


def test_nan_poisons_the_first_float_tensor():
    out, _ = Attack("nonfinite")(TRAINED, GLOBAL, METRICS, (0,))
    assert np.isnan(out["w"]).all() and out["n"] == 9


def test_only_the_attacker_attacks():
    attack = Attack("nonfinite", client=2)
    assert attack.applies(2) and not attack.applies(0) and not Attack(None).applies(0)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("fault.attack.kind=flood", "fault.attack.kind=flood must be null or one of signflip, lie, nonfinite"),
        ("fault.attack.client=4", "fault.attack.client=4 must be a partition id in [0, 3]"),
        ("fault.attack.scale=0", "fault.attack.scale=0 must be > 0"),
    ],
)
def test_bad_attack_settings_are_one_line(override, expected):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        kind = [] if "kind" in override else ["fault.attack.kind=nonfinite"]  # an attacker, so its settings count
        cfg = compose("config", overrides=[*kind, override])
    with pytest.raises(ConfigError, match=expected.replace("[", r"\[").replace("]", r"\]")):
        validate(cfg)
