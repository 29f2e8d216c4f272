"""What makes a run reproducible from its record: git commit, package versions, hashes (house rule 7)."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

PACKAGES = ("vimpo-bench", "torch", "transformers", "mlflow", "optuna", "math-verify", "pandas", "numpy", "trl",
            "accelerate", "vllm")


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
        "machine.cpu_count": str(os.cpu_count()),
        "machine.torch_threads": str(torch.get_num_threads()),
        "machine.accelerator": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
    }
