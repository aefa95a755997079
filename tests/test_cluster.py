"""The paper sweep on a SLURM cluster: what hydra-submitit-launcher would submit.

There is no scheduler here, so ``sbatch`` is a stand-in that keeps the submission
file and refuses the job; everything before it (Hydra's sweep, the launcher plugin,
submitit's sbatch script) is the real thing.
"""

import os
import re
import stat

import pytest
from helpers import run_main

pytestmark = pytest.mark.slow  # a Hydra sweep in a subprocess

ROWS = "fedvssl_a0_b0,fedvssl_a0_b1,fedvssl_a1_b0,fedvssl_a1_b1,fedvssl_a09_b0,fedvssl_a09_b1"


def _stub(path, text):
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_the_paper_sweep_becomes_one_slurm_array_of_six_gpu_jobs(tmp_path, flower_env):
    bin_dir, captured = tmp_path / "bin", tmp_path / "submitted.sh"
    bin_dir.mkdir()
    _stub(bin_dir / "srun", "#!/bin/sh\nexit 1\n")  # submitit only checks that it exists
    _stub(bin_dir / "sbatch", f'#!/bin/sh\ncp "$1" {captured}\necho "sbatch: error: no scheduler here" >&2\nexit 1\n')
    env = {**flower_env, "PATH": f"{bin_dir}{os.pathsep}{flower_env['PATH']}"}
    sweep = tmp_path / "sweep"
    args = [
        "-m",
        "hydra/launcher=slurm",
        "hydra.launcher.partition=gpu",
        f"strategy={ROWS}",
        f"hydra.sweep.dir={sweep}",
    ]
    proc = run_main(args, env, timeout=300)
    assert proc.returncode != 0 and "no scheduler here" in proc.stderr + proc.stdout
    script = captured.read_text()
    sbatch = dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)$", script, flags=re.M))
    assert sbatch["array"] == "0-5%6"  # one array task per strategy row, all at once
    assert sbatch["gpus-per-node"] == "1" and sbatch["cpus-per-task"] == "16" and sbatch["mem"] == "64GB"
    assert sbatch["time"] == "1440" and sbatch["partition"] == "gpu" and sbatch["job-name"] == "main"
    assert sbatch["signal"].startswith("USR2@")  # submitit requeues a job at its time limit
    assert "srun" in script and "submitit.core._submit" in script
    assert str(sweep / ".submitit") in script  # logs and pickled jobs next to the sweep's results
    for row in ROWS.split(","):
        assert f"strategy={row}" in proc.stdout + proc.stderr  # Hydra lists each job it submits
    assert not (sweep / "0" / "results.json").exists()  # nothing ran here
