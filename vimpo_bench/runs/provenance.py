"""What makes a run reproducible from its record: git commit, package versions, hashes (house rule 7)."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

PACKAGES = ("vimpo-bench", "torch", "transformers", "mlflow", "optuna", "math-verify", "pandas", "numpy", "trl",
            "accelerate", "peft", "vllm")


def git_state(path: Path | None = None) -> dict[str, str]:
    """Commit and dirty flag of the checkout holding this package (or `path`); 'unknown' outside git."""
    where = str(path or Path(__file__).resolve().parent)
    try:
        commit = subprocess.run(["git", "-C", where, "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", where, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        return {"git_commit": commit, "git_dirty": str(bool(dirty)).lower()}
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": "unknown", "git_dirty": "unknown"}


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[f"versions.{name}"] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[f"versions.{name}"] = "absent"
    return out


def machine_state() -> dict[str, str]:
    """The machine a run ran on (results pages say where numbers come from; wall times depend on it)."""
    import torch

    return {
        "machine.platform": platform.platform(),
        "machine.processor": platform.processor() or platform.machine(),
        "machine.cpu_model": cpu_model(),
        "machine.cpu_count": str(os.cpu_count()),
        "machine.torch_threads": str(torch.get_num_threads()),
        "machine.accelerator": accelerator(),
        "machine.load_start": load_average(),
    }


def load_average() -> str:
    """The 1-, 5- and 15-minute load averages ("0.42 0.61 0.80"), or "unknown" where the OS has none: a run's
    wall times mean something only when the machine was quiet (a load near 0 beside its own work)."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except (OSError, AttributeError):
        return "unknown"


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name (`model name` in /proc/cpuinfo on Linux x86), else what `platform` knows."""
    try:
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def accelerator() -> str:
    """The first GPU's name, or "none"."""
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"


def weights_checksum(model) -> str:
    """sha256 of a model's weights as held (dtype included): for each state_dict entry in sorted key order,
    the key in UTF-8 then the tensor's bytes (row-major); first 16 hex digits. Two runs with the same
    config can start from different weights (the warm start runs on the CPU, whose kernels differ between
    machines), so a result says which start it came from."""
    import torch

    if any(hasattr(p, "ds_id") for p in model.parameters()):  # loaded under DeepSpeed ZeRO-3: this process
        return "unavailable (ZeRO-3 partitioned)"  # holds a shard, and gathering it is a collective call
    digest = hashlib.sha256()
    state = model.state_dict()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()[:16]


def run_identity(model) -> dict[str, str]:
    """What tells two results apart when their configs agree, logged as params of a training run and printed
    in its closing summary: the machine (CPU model, GPU, torch and transformers versions) and the checksum
    of the starting weights (after the warm start, as loaded)."""
    versions = package_versions()
    return {
        "machine.cpu_model": cpu_model(),
        "machine.accelerator": accelerator(),
        "versions.torch": versions["versions.torch"],
        "versions.transformers": versions["versions.transformers"],
        "model.start_checksum": weights_checksum(model),
    }
