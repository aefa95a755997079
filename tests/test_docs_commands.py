"""No command in the docs fails: each one composes and passes the checks its entry point makes before work.

Every line that starts with ``python -m fedvssl...`` (or ``dataset_preparation``), a ``fedvssl*``
console script or ``make`` in a ```bash (or sh, shell, console) block of README.md,
EXTENDED_README.md and docs/**/*.md is collected, with ``\\`` continuations joined; blocks marked
```text are illustrations and are left out. None of them runs. Each is checked against stand-ins:

- ``/data`` is the small generated layout of ``dataset_preparation/paper_layout.py`` (the
  Kinetics-400, UCF-101 and HMDB-51 lists and both partition folders), ``outputs/...`` a
  temporary folder, and a ``runtime.frame_cache`` folder holds a built cache's manifest;
- the documented machine: a GPU (``runtime=gpu`` asks for CUDA), 16 cores (``runtime=gpu``
  gives 5 clients 3 CPUs each) and, where a command names one, a Ray cluster that answers.

Hydra entry points (``fedvssl.main``, ``prepare``, ``evaluate``, ``cache``) are composed with
Hydra's compose API, sweeps (``-m``) expanded job by job, and put through the checks that entry
point makes before any work, then the typed settings its later stages build from the config
(``ENTRY_CHECKS``). Other commands parse their arguments. ``make
run ARGS=...`` is checked as ``python -m fedvssl.main ...``; other targets must be the Makefile's.
"""

from __future__ import annotations

import argparse
import itertools
import re
import shlex
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import ROOT
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf, open_dict

from fedvssl.config.checks import check_cache_build, client_config, validate
from fedvssl.config.settings import client_settings, evaluation_settings
from fedvssl.data.frame_cache import Manifest, write_manifest
from fedvssl.federated import backend

DOCS = [ROOT / "README.md", ROOT / "EXTENDED_README.md", *sorted((ROOT / "docs").rglob("*.md"))]
SHELL_BLOCKS = ("bash", "sh", "shell", "console")
FENCE = re.compile(r"^\s*(```+|~~~+)\s*([\w+-]*)")
PYTHON = ("python", "python3", ".venv/bin/python")
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def commands_in(path: Path) -> list[tuple[int, str]]:
    """(line number, command) for each command of ours in the shell blocks of a markdown file."""
    found, lines, block, fence = [], path.read_text().splitlines(), None, ""
    i = 0
    while i < len(lines):
        line, start = lines[i], i + 1
        opening = FENCE.match(line)
        if block is None:
            if opening:
                block, fence = opening.group(2).lower(), opening.group(1)
        elif line.strip().startswith(fence[:3]) and not line.strip().strip(fence[0]):
            block = None
        elif block in SHELL_BLOCKS:
            while line.rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                line = line.rstrip()[:-1] + " " + lines[i].strip()
            text = line.strip().removeprefix("$ ") if block == "console" else line.strip()
            found += [(start, command) for command in split_commands(text) if is_ours(command)]
        i += 1
    return found


def split_commands(text: str) -> list[list[str]]:
    """A shell line's simple commands (split at ``&&``, ``||``, ``;`` and ``|``), comments dropped."""
    try:
        tokens = shlex.split(text, comments=True)
    except ValueError:
        return [[text]]  # unbalanced quotes: kept whole, so that its check fails and names it
    commands, current = [], []
    for token in tokens:
        if token in ("&&", "||", ";", "|"):
            commands.append(current)
            current = []
        else:
            current.append(token)
    commands.append(current)
    return [drop_env(c) for c in commands if c]


def drop_env(command: list[str]) -> list[str]:
    while command and ENV_ASSIGNMENT.match(command[0]):
        command = command[1:]
    return command


def is_ours(command: list[str]) -> bool:
    if not command:
        return False
    if command[0] in PYTHON and len(command) > 2 and command[1] == "-m":
        return command[2].split(".")[0] in ("fedvssl", "dataset_preparation")
    return command[0].startswith("fedvssl") or command[0] == "make"


def all_commands() -> list:
    return [
        pytest.param(command, id=f"{path.relative_to(ROOT)}:{line}")
        for path in DOCS
        if path.is_file()
        for line, command in commands_in(path)
    ]


# -- the checks ------------------------------------------------------------------------------------
def console_scripts() -> dict[str, str]:
    """``[project.scripts]``: console script -> module."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    return {name: target.split(":")[0] for name, target in scripts.items()}


def make_targets() -> set[str]:
    return set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.MULTILINE))


def cache_run(cfg):
    """``fedvssl.cache`` checks the run's config as the run will read it: from the cache it builds."""
    return OmegaConf.merge(cfg, {"runtime": {"decode_backend": "auto", "frame_cache": None}})


def stage_settings(cfg) -> None:
    """The typed settings the later stages read (a client's, the evaluation's): a config they
    cannot be built from would stop the run after its checks, at its first round or its end."""
    client_settings(client_config(cfg))
    evaluation_settings(cfg)


# What each Hydra entry point checks before any work (fedvssl/<module>.py, its main), then the
# settings its later stages build.
ENTRY_CHECKS: dict[str, list[Callable]] = {
    "fedvssl.main": [validate, lambda cfg: backend.simulation_backend(cfg.runtime), stage_settings],
    "fedvssl.prepare": [validate, stage_settings],
    "fedvssl.evaluate": [validate, evaluation_settings],
    "fedvssl.cache": [check_cache_build, lambda cfg: validate(cache_run(cfg))],
}
HYDRA_FLAGS = {"-m": 0, "--multirun": 0, "--cfg": 1, "-c": 1, "--resolve": 0, "--package": 1, "-p": 1}


class StandIns:
    """Rewrites a documented command's paths to the stand-ins: ``/data``, ``outputs/``, frame caches."""

    def __init__(self, data: Path, tmp: Path) -> None:
        self.data, self.tmp = data, tmp

    def path(self, arg: str) -> str:
        arg = re.sub(r"(?<![\w./-])/data(?=/|$|\s|,|\])", str(self.data), arg)
        arg = re.sub(r"(?<![\w./-])outputs/", f"{self.tmp}/outputs/", arg)
        key, _, value = arg.partition("=")
        if key.lstrip("+~") == "runtime.frame_cache" and value and value != "null":
            folder = self.tmp / "frame-caches" / value.strip("/").replace("/", "_")
            if not (folder / "frame_cache.json").is_file():  # a built cache at the default settings
                folder.mkdir(parents=True, exist_ok=True)
                write_manifest(folder, Manifest(short_side=144, quality=90))
            arg = f"{key}={folder}"
        return arg


def hydra_jobs(args: list[str]) -> tuple[list[list[str]], bool]:
    """A Hydra command line's jobs (a sweep expanded, as Hydra's basic sweeper does) and whether it is a sweep."""
    overrides, multirun, i = [], False, 0
    while i < len(args):
        if args[i] in HYDRA_FLAGS:
            multirun |= args[i] in ("-m", "--multirun")
            i += 1 + HYDRA_FLAGS[args[i]]
            continue
        if args[i].startswith("-"):
            raise AssertionError(f"{args[i]}: not a flag of a Hydra command")
        overrides.append(args[i])
        i += 1
    parsed = OverridesParser.create().parse_overrides(overrides)
    choices = []
    for o in parsed:
        if o.is_sweep_override():
            assert multirun, f"{o.input_line} is a sweep: it needs -m"
            key = o.get_key_element()
            choices.append([f"{key}={v}" for v in o.sweep_string_iterator()])
        else:
            choices.append([o.input_line])
    return [list(job) for job in itertools.product(*choices)], multirun


# Jobs already checked, by entry point and their overrides other than Hydra's own (hydra.*,
# hydra/...), which change only where a job writes: the docs repeat the six-row sweep often.
_CHECKED: set[tuple[str, tuple[str, ...]]] = set()


def check_hydra(module: str, args: list[str]) -> None:
    assert module in ENTRY_CHECKS, f"{module}: a Hydra command whose checks this test does not know"
    jobs, multirun = hydra_jobs(args)
    for num, job in enumerate(jobs):
        key = (module, tuple(o for o in job if not o.lstrip("+~").startswith(("hydra.", "hydra/"))))
        if num > 0 and key in _CHECKED:  # the first job always composes, Hydra's own overrides included
            continue
        with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("config", job, return_hydra_config=True)
        # As Hydra does for the job: its folder, then the job's config without the hydra node.
        with open_dict(cfg):
            cfg.hydra.job.num = num
            out = f"{cfg.hydra.sweep.dir}/{cfg.hydra.sweep.subdir}" if multirun else cfg.hydra.run.dir
            cfg.hydra.runtime.output_dir = str(out)
        HydraConfig.instance().set_config(cfg)
        try:
            with open_dict(cfg):
                del cfg["hydra"]
            for check in ENTRY_CHECKS[module]:
                check(cfg)
        finally:
            HydraConfig.instance().cfg = None
        _CHECKED.add(key)


class Parsed(Exception):
    """Raised where an argparse command would start its work."""


def check_argparse(module: str, args: list[str], monkeypatch) -> None:
    import importlib

    main = getattr(importlib.import_module(module), "main", None)
    assert callable(main), f"python -m {module}: no main() to run"
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, argv=None, namespace=None):
        original(self, argv, namespace)
        raise Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    with pytest.raises(Parsed):
        main(args)


def check_command(command: list[str], stand_ins: StandIns, monkeypatch) -> None:
    """Fails (an exception that names the problem) unless ``command`` would get past its entry point's checks."""
    command = [stand_ins.path(a) for a in command]
    if command[0] == "make":
        targets, assignments = (
            [a for a in command[1:] if "=" not in a],
            dict(a.split("=", 1) for a in command[1:] if "=" in a),
        )
        unknown = set(targets) - make_targets()
        assert not unknown, f"make {' '.join(sorted(unknown))}: not a target of the Makefile"
        if "run" in targets:
            check_hydra("fedvssl.main", [stand_ins.path(a) for a in shlex.split(assignments.get("ARGS", ""))])
        return
    if command[0] in PYTHON:
        module, args = command[2], command[3:]
    else:
        scripts = console_scripts()
        assert command[0] in scripts, f"{command[0]}: not a console script of pyproject.toml"
        module, args = scripts[command[0]], command[1:]
    if module in ENTRY_CHECKS:
        check_hydra(module, args)
    else:
        check_argparse(module, args, monkeypatch)


@pytest.fixture
def documented_machine(monkeypatch):
    """A GPU, 16 cores and a Ray cluster that answers: what runtime=gpu and the cluster lines are written for."""
    import os

    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    monkeypatch.setattr(backend, "_answers", lambda host, port: True)
    monkeypatch.setattr(backend, "_outward_ip", lambda: None)


@pytest.fixture(scope="module")
def stand_ins(paper_lists, tmp_path_factory) -> StandIns:
    """One set of stand-in paths for the module, so that the same documented job is checked once."""
    return StandIns(paper_lists, tmp_path_factory.mktemp("docs-commands"))


@pytest.mark.parametrize("command", all_commands())
def test_each_documented_command_passes_its_checks(command, stand_ins, monkeypatch, documented_machine):
    check_command(command, stand_ins, monkeypatch)


def test_the_docs_give_commands_and_every_preset():
    """The extraction finds the documented commands, among them each preset's own command line."""
    found = [" ".join(p.values[0]) for p in all_commands()]
    assert len(found) >= 20
    for preset in sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml")):
        assert any(f"+experiment={preset}" in c for c in found), preset


def test_a_broken_command_fails_and_an_illustration_is_skipped(tmp_path, paper_lists, monkeypatch, documented_machine):
    page = tmp_path / "page.md"
    page.write_text(
        "Intro.\n\n```bash\n"
        "python -m fedvssl.main strategy.alhpa=1\n"
        "python -m fedvssl.main +experiment=paper_k400_ctp \\\n    dataset.root=/data  # the partition.dir is missing\n"
        "make run ARGS='strategy.beta=2'\n"
        "make deploy\n"
        "fedvssl-sweep paper\n"
        "python -m fedvssl.main -m strategy.alpha=0,2\n"
        "pip install fedvssl && python -m fedvssl.main +experiment=paper_k400_ctp dataset.root=/data "
        "partition.dir=/data/partitions/k400_noniid\n"
        "```\n\n```text\npython -m fedvssl.main strategy.alhpa=1\n```\n"
    )
    found = commands_in(page)
    assert [line for line, _ in found] == [4, 5, 7, 8, 9, 10, 11]  # the text block is not read
    stand_ins = StandIns(paper_lists, tmp_path)
    problems = []
    for _, command in found:
        try:
            check_command(command, stand_ins, monkeypatch)
            problems.append(None)
        except (Exception, SystemExit) as e:
            problems.append(f"{type(e).__name__}: {e}")
    assert "strategy.alhpa" in problems[0]
    assert "partition.dir is required" in problems[1]
    assert "strategy.beta=2 must be 0 or 1" in problems[2]
    assert "make deploy: not a target" in problems[3]
    assert problems[4] is not None  # sweep's `paper` needs its folder: argparse stops
    assert "strategy.alpha=2" in problems[5]
    assert problems[6] is None  # the line after `&&` is checked, and passes
