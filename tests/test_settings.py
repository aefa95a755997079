"""Typed settings from the Hydra config, and the part of it a client receives."""

import pytest
from helpers import ROOT
from hydra import compose, initialize_config_dir

from fedvssl.config.checks import client_config
from fedvssl.config.settings import ClientSettings, client_settings, evaluation_settings, settings
from fedvssl.core.errors import ConfigError


def compose_config(*overrides: str):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("config", ["run.dir=/tmp/run", *overrides])


def test_a_client_receives_only_its_part():
    cfg = compose_config()
    sent = client_config(cfg)
    assert set(sent) == {
        "seed",
        "ssl",
        "input",
        "model",
        "runtime",
        "train",
        "fault",
        "strategy",
        "partition",
        "dataset",
        "run",
    }
    assert set(sent.strategy) == {"share"} and set(sent.partition) == {"dir"} and "finetune" not in sent
    # and it holds everything the client's settings need
    assert client_settings(sent) == client_settings(cfg)


def test_demo_choices_are_config_and_the_paper_settings_stay():
    """The CPU demo's choices come from its config groups; input=paper and real data keep the paper's."""
    demo = compose_config()
    assert dict(demo.model) == {"width": 16, "blocks": 1, "head_dropout": 0.0}
    assert demo.ssl.dropout == 0.0 and demo.train.batch_size == 16
    assert demo.ssl.flip_p == 0.0 and demo.finetune.training.flip_p == 0.0  # the world has an arrow of time
    paper = compose_config("input=paper", "dataset=kinetics400", "dataset.root=/data")
    assert dict(paper.model) == {"width": 64, "blocks": 2}
    assert paper.train.batch_size == 4 and paper.ssl.dropout == 0.5  # the reference's batch and head
    assert paper.ssl.flip_p == 0.5 and paper.finetune.training.flip_p == 0.35
    assert client_settings(paper).clips_per_video == 1  # one local epoch, as the reference
    more = compose_config("dataset.pretrain.clips_per_video=3")
    assert client_settings(more).clips_per_video == 3 == client_settings(client_config(more)).clips_per_video


def test_values_are_typed_once():
    s = evaluation_settings(compose_config("finetune.training.grad_clip=40"))
    assert s.finetune.grad_clip == 40.0 and isinstance(s.finetune.grad_clip, float)
    assert [d.name for d in s.datasets] == ["ucf101", "hmdb51"] and s.screening.min_frames == 8


def test_a_mistyped_value_fails_with_one_line():
    with pytest.raises(ConfigError, match="ClientSettings: .*batch_size"):
        settings(ClientSettings, compose_config().runtime, batch_size="four", seed=7)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("ucf101", "finetune.datasets=ucf101 must be a list without repeats"),
        ("[ucf101,ucf101]", "finetune.datasets=['ucf101', 'ucf101'] must be a list without repeats"),
        ("[kinetics]", "finetune.datasets contains 'kinetics'"),
    ],
)
def test_downstream_datasets_are_a_list_of_known_names(tmp_path, value, expected):
    from fedvssl.config.checks import validate

    with pytest.raises(ConfigError) as raised:
        validate(compose_config("input=tiny", f"dataset.root={tmp_path}", f"finetune.datasets={value}"))
    assert str(raised.value).startswith(expected)
    for fine in ("[]", "[hmdb51]", "[ucf101,hmdb51]"):
        validate(compose_config("input=tiny", f"dataset.root={tmp_path}", f"finetune.datasets={fine}"))
