"""Where a recipe's models come from: a hub id, a local directory, or "tiny" (the offline tiny model,
built on first use). Every recipe resolves its model paths here before anything starts."""

from __future__ import annotations

import logging
from pathlib import Path

from policies.loading import check_model_source

log = logging.getLogger(__name__)


def resolve_model_path(path: str, output_dir: str | Path, seed: int = 0, field: str = "policy.path") -> str:
    """`tiny` builds the offline tiny Qwen2.5-VL under `output_dir/tiny-policy` (once); a local directory
    is made absolute (actors and learner workers open it from directories of their own); a hub id passes
    through. A path that cannot load here is a FileNotFoundError naming `field`."""
    if path != "tiny":
        check_model_source(path, field)
        return str(Path(path).resolve()) if Path(path).is_dir() else path
    from rl.tasks.models import make_tiny_policy

    target = Path(output_dir) / "tiny-policy"
    if not (target / "config.json").is_file():
        log.info("building the offline tiny Qwen2.5-VL policy in %s", target)
        make_tiny_policy(target, seed=seed)
    return str(target.resolve())
