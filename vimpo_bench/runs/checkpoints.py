"""Resumable checkpoints, one format for both engines (`engines/native.py` and the trl engine).

    <output_dir>/<run id>/checkpoint/
        policy/       the policy and its tokenizer (loads and evaluates on its own; with LoRA the merged weights)
        adapter/      with LoRA (`model.lora`), the adapter in peft's layout: what a resume loads (models/lora.py)
        reference/    pi_ref, only when ref.schedule moves it (a frozen one is the starting model)
        state.pt      RL step, optimizer, lr scheduler, RNG states, step-0 evaluation (+ an engine's `extra`)
        config.json   the resolved config the run continues with
        COMPLETE      written last: a folder without it is not a checkpoint

A save is built in a `.checkpoint-*` folder beside and swapped in with `os.replace`, so a kill mid-save
keeps the previous checkpoint (renamed `checkpoint.old` for the moment of the swap); a save that fails
(a full disk) removes its folder at once. A checkpoint that cannot be read raises CheckpointError naming
the file.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from vimpo_bench import faults
from vimpo_bench.models import lora
from vimpo_bench.config import Config, from_dict

TEMP_PREFIX = ".checkpoint-"  # a save in progress; left behind only by a kill, removed at the next start


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written (a full disk) or read (a missing, truncated or emptied file)."""


def checkpoint_dir(config, run_id: str | None) -> Path:
    """Where run `run_id` keeps its checkpoint (a run without an id, e.g. untracked, under `local/`)."""
    return Path(config.run.output_dir) / (run_id or "local") / "checkpoint"


def saved_config(checkpoint: Path) -> Config:
    """The resolved config a checkpoint was saved with: a resumed run goes on with it, whatever the
    resuming command's config says."""
    path = checkpoint / "config.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {checkpoint} is corrupt: {path.name} {_why(exc)}") from exc
    return from_dict(data, str(path))


def _why(exc: Exception) -> str:
    if isinstance(exc, FileNotFoundError):
        return "is missing"
    return f"cannot be read ({faults.one_line(exc)})"


def check_checkpoint(checkpoint: Path) -> None:
    """Raise CheckpointError naming the first file of `checkpoint` that cannot be read (a missing config, a
    truncated or emptied weights file or state.pt), before a resume reopens the run. Cheap: the config,
    each safetensors header and state.pt's zip directory, not the tensors."""
    config = saved_config(checkpoint)
    if not list((checkpoint / "policy").glob("*.safetensors")):
        raise CheckpointError(f"checkpoint {checkpoint} is corrupt: policy/ holds no weights (*.safetensors)")
    check_weights(checkpoint / "policy")
    if config.model.lora.r and not list((checkpoint / "adapter").glob("*.safetensors")):
        raise CheckpointError(f"checkpoint {checkpoint} is corrupt: adapter/ holds no weights (*.safetensors)")
    for folder in ("reference", "adapter"):
        if (checkpoint / folder).is_dir():
            check_weights(checkpoint / folder)
    state = checkpoint / "state.pt"
    try:
        zipfile.ZipFile(state).close()  # torch.save's format; a cut-off file has no central directory
    except (OSError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"checkpoint {checkpoint} is corrupt: {state.name} {_why(exc)}") from exc


def check_weights(folder: Path) -> None:
    """Raise CheckpointError naming the first weights file of a `save_pretrained` folder whose header cannot
    be read (safetensors' own error does not say which file)."""
    from safetensors import safe_open

    for file in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(file, "pt"):
                pass
        except Exception as exc:  # SafetensorError: a truncated, emptied or overwritten file
            raise CheckpointError(f"{file} is corrupt: truncated or emptied ({faults.one_line(exc)})") from exc


def checkpoint_due(every: int, step: int, last_step: int) -> bool:
    """Whether RL step `step` (1-based, done) ends with a save: every `every` steps (0: never) and at the last."""
    return (every > 0 and step % every == 0) or step == last_step


def save_checkpoint(path: Path, config, policy, reference, optimizer, scheduler, step: int, initial: dict,
                    tokenizer=None, extra: dict | None = None, files: dict[str, str] | None = None,
                    policy_weights: dict | None = None) -> None:
    """Write the checkpoint atomically: build it beside, then swap; a kill mid-save keeps the old one.

    `extra` joins state.pt (an engine's own loop state), `files` are written as text beside it, and
    `policy_weights` replaces `policy.state_dict()` (weights gathered from shards). With `optimizer=None`
    the folder holds the policy and config only: a trained model to evaluate, not a state to resume."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=path.parent))
    except OSError as exc:
        raise _save_error(path, exc) from exc
    try:
        if lora.is_lora(policy):  # policy/ merged (a plain model to evaluate), adapter/ to resume from
            lora.save(policy, tmp / "policy", tmp / "adapter", policy_weights)
        else:
            policy.save_pretrained(tmp / "policy", state_dict=policy_weights)
        faults.point("save")
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp / "policy")
        if config.ref.schedule != "frozen":  # a frozen reference is the starting model, rebuilt on resume
            reference.save_pretrained(tmp / "reference")
        for name, text in (files or {}).items():
            (tmp / name).write_text(text)
        (tmp / "config.json").write_text(json.dumps(config.to_dict(), indent=1))
        if optimizer is not None:
            with open(tmp / "state.pt", "wb") as f:  # through a Python file: a full disk raises OSError(ENOSPC)
                torch.save({"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                            "torch_rng": torch.get_rng_state(), "python_rng": random.getstate(), "initial": initial,
                            **(extra or {})}, f)
            (tmp / "COMPLETE").write_text(str(step))
    except BaseException as exc:  # a failed save leaves nothing behind (a kill -9 leaves it to the next start)
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, Exception) and faults.disk_full(exc):
            raise _save_error(path, exc) from exc
        raise
    old = path.with_name("checkpoint.old")
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def _save_error(path: Path, exc: Exception) -> Exception:
    if faults.disk_full(exc):
        return CheckpointError(f"cannot save checkpoint {path}: the disk is full (no space left on "
                               f"{path.parent}); the partial save was removed")
    return CheckpointError(f"cannot save checkpoint {path}: {faults.one_line(exc)}")


def find_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run (the previous one if a save was cut short)."""
    for name in ("checkpoint", "checkpoint.old"):
        if (run_dir / name / "COMPLETE").is_file():
            return run_dir / name
    return None


def load_weights(path: Path, policy, reference) -> None:
    """Copy the checkpoint's policy (and moved reference, when saved) into the models, in place. A LoRA policy
    (built on the same starting model) takes the saved adapter: its frozen base is the start already."""
    from transformers import AutoModelForCausalLM

    def copy_weights(target, folder: Path):
        check_weights(folder)  # a cut-off file: say which, not safetensors' bare header error
        source = AutoModelForCausalLM.from_pretrained(folder, dtype=next(target.parameters()).dtype)
        target.load_state_dict(source.state_dict())

    if lora.is_lora(policy):
        check_weights(path / "adapter")
        try:
            lora.load_adapter(policy, path / "adapter")
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {path} cannot be resumed: {faults.one_line(exc)}") from exc
    else:
        copy_weights(policy, path / "policy")
    if (path / "reference").is_dir():
        copy_weights(reference, path / "reference")


def load_state(path: Path) -> dict:
    """state.pt of a checkpoint, on the CPU (the optimizer moves its state to its parameters' device)."""
    try:
        return torch.load(path / "state.pt", map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        raise CheckpointError(f"checkpoint {path} is corrupt: state.pt {_why(exc)}") from exc


def load_checkpoint(path: Path, policy, reference, optimizer, scheduler) -> tuple[int, dict]:
    """Restore a native-engine run in place; returns (RL step done, step-0 evaluation)."""
    load_weights(path, policy, reference)
    state = load_state(path)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    random.setstate(state["python_rng"])
    return int(state["step"]), state["initial"]


def rng_state() -> dict:
    """This process's RNG states: Python, NumPy, torch CPU and (where present) every CUDA device."""
    out = {"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def remove_partial_saves(root: Path, live: Callable[[Path], bool]) -> None:
    """Remove the temporary folders of saves cut short by a kill, under each run folder of `root` whose run
    is not `live` (a live run may be saving right now)."""
    for partial in root.glob(f"*/{TEMP_PREFIX}*"):
        if not live(partial.parent):
            shutil.rmtree(partial, ignore_errors=True)
