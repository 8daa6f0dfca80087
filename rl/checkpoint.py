"""Atomic, resumable checkpoints for the GRPO recipe, on top of transformers' own checkpoint format.

transformers' Trainer writes everything a bit-exact resume needs into `<output_dir>/checkpoint-N`:
the policy (safetensors), optimizer, scheduler, the python/numpy/torch RNG states and
`trainer_state.json` (global step, epoch, so the data position). This module makes that atomic and
adds what is ours:

1. the Trainer's folder is a staging folder: `brl_state.json` (recipe config, reward checkpoint
   references, consumed prompts, rollout version) is added, then the folder is renamed to
   `<output_dir>/checkpoints/step-N`;
2. `checkpoints/latest`, which names the newest complete checkpoint, is replaced last, atomically. A
   crash at any point leaves the previous `latest` in place, and a half-written folder is never read;
3. only the last `keep_last` are kept (never the one `latest` names).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
LATEST = "latest"
BRL_STATE = "brl_state.json"
TRAINER_STATE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def write_atomic(path: Path, text: str) -> None:
    """Write-then-rename, so a reader sees the old content or the new, never a torn file."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def finalize(staged: Path, root: Path, step: int, extra: dict[str, Any], keep_last: int) -> Path:
    """Complete a Trainer-written folder, move it into `root/checkpoints/step-N`, point `latest` at it."""
    if not (staged / TRAINER_STATE).is_file():
        raise FileNotFoundError(f"{staged} is not a complete Trainer checkpoint (no {TRAINER_STATE})")
    (staged / BRL_STATE).write_text(json.dumps(extra, indent=2, default=str))
    folder = root / CHECKPOINTS
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / f"step-{step}"
    if dest.exists():  # the same step saved twice (an abort right after a periodic save)
        shutil.rmtree(dest)
    os.replace(staged, dest)
    write_atomic(folder / LATEST, dest.name)
    prune(folder, keep_last)
    log.info("checkpoint %s written", dest)
    return dest


def prune(folder: Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` step folders; the one `latest` names always stays."""
    if keep_last < 1:
        return
    steps = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_DIR.match(p.name)))
    current = (folder / LATEST).read_text().strip() if (folder / LATEST).is_file() else None
    for _, path in steps[:-keep_last]:
        if path.name != current:
            shutil.rmtree(path, ignore_errors=True)


def latest_checkpoint(root: Path) -> Path | None:
    """The checkpoint `root/checkpoints/latest` names, or None when there is none."""
    marker = Path(root) / CHECKPOINTS / LATEST
    if not marker.is_file():
        return None
    path = marker.parent / marker.read_text().strip()
    if not (path / TRAINER_STATE).is_file():
        raise FileNotFoundError(f"{marker} names {path.name}, which is missing or incomplete")
    return path


def resolve_resume(resume: str | None, root: Path) -> Path | None:
    """`resume` from the config -> the checkpoint folder to resume from (None: start fresh).

    "auto": the latest checkpoint under `root` if there is one (a first run starts fresh);
    a path: that checkpoint, which must exist."""
    if not resume:
        return None
    if resume == "auto":
        found = latest_checkpoint(root)
        log.info("resume=auto: %s", f"resuming from {found}" if found else f"no checkpoint in {root}; starting fresh")
        return found
    path = Path(resume)
    if not (path / TRAINER_STATE).is_file():
        raise FileNotFoundError(f"resume={resume}: not a checkpoint folder (no {TRAINER_STATE} in it)")
    return path


def checkpoint_step(checkpoint: Path) -> int:
    return int(json.loads((checkpoint / TRAINER_STATE).read_text())["global_step"])


def check_resume_has_work(checkpoint: Path, max_steps: int) -> None:
    """A resume that would train zero steps is a mistake (wrong folder, forgotten max_steps): say so."""
    done = checkpoint_step(checkpoint)
    if done >= max_steps:
        raise ValueError(
            f"{checkpoint} is at step {done} and the run is {max_steps} steps long: resuming "
            f"would train nothing. Raise trainer.max_steps (or num_train_epochs) to continue."
        )


class CheckpointCallback(TrainerCallback):
    """Turns each checkpoint the Trainer writes into an atomic, marked, rotated one (see the module)."""

    def __init__(self, root: Path, keep_last: int, extra_state: Callable[[Any], dict[str, Any]]):
        self.root = Path(root)
        self.keep_last = keep_last
        self.extra_state = extra_state  # state -> what we add to brl_state.json
        self.last: Path | None = None

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        import torch.distributed as dist

        staged = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        distributed = dist.is_initialized() and dist.get_world_size() > 1
        if distributed:
            dist.barrier()  # every learner worker has written its part (its RNG state, its shard)
        if state.is_world_process_zero:
            self.last = finalize(staged, self.root, state.global_step, self.extra_state(state), self.keep_last)
        else:
            self.last = self.root / CHECKPOINTS / f"step-{state.global_step}"
        if distributed:
            dist.barrier()  # nobody writes the next checkpoint before this one is in place


def save_now(trainer: Any, callback: CheckpointCallback) -> Path:
    """Write a resumable checkpoint of the trainer as it is (an abort path: the run stops after this)."""
    from adapters.trl import save_checkpoint_now

    save_checkpoint_now(trainer)
    callback.on_save(trainer.args, trainer.state, trainer.control)
    return callback.last
