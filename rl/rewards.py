"""Turn a recipe's `reward:` section into TRL reward functions and weights.

Extension is configuration: a custom reward is named as `package.module:function` or
`path/to/file.py:function` (a class is instantiated with `kwargs`, a function is wrapped with them).
Every reward comes back wrapped in `GuardedReward`, so failures are counted rather than silent.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.util
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reward.base import reward_name
from reward.failures import GuardedReward
from reward.hybrid import HybridReward
from reward.model import HEAD_FILE
from reward.rule import RuleMatcher
from rl.config import RewardConfig

SCHEMES = ("rule", "model", "hybrid", "none")


def load_callable(spec: str) -> Any:
    """Resolve `module:attr` or `file.py:attr` to the object it names, with a clear error."""
    if ":" not in spec:
        raise ValueError(f"reward function {spec!r} must look like 'package.module:function' or 'file.py:function'")
    target, attr = spec.rsplit(":", 1)
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise FileNotFoundError(f"reward function {spec!r}: file {path} not found")
        module_spec = importlib.util.spec_from_file_location(f"brl_user_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as e:
            raise ImportError(f"reward function {spec!r}: cannot import {target}: {e}") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise AttributeError(f"reward function {spec!r}: {target} has no attribute {attr!r}") from None


def make_custom_reward(spec: str, kwargs: dict[str, Any] | None = None) -> Callable:
    """A class is instantiated with `kwargs`; a function gets them bound with functools.partial."""
    obj = load_callable(spec)
    kwargs = dict(kwargs or {})
    if inspect.isclass(obj):
        fn = obj(**kwargs)
    elif kwargs:
        fn = functools.partial(obj, **kwargs)
    else:
        fn = obj
    if not callable(fn):
        raise TypeError(f"reward function {spec!r} is not callable")
    return fn


def rule_options(cfg: RewardConfig) -> dict[str, Any]:
    """The rule matcher's own options out of the `reward.rule:` section (which adds where it runs)."""
    return {f.name: getattr(cfg.rule, f.name) for f in dataclasses.fields(RuleMatcher)}


def check_model_paths(cfg: RewardConfig) -> None:
    """Fail before any actor starts if a reward-model checkpoint the scheme needs is missing."""
    if cfg.scheme not in ("model", "hybrid"):
        return
    if not cfg.model.paths:
        raise ValueError(f"reward.scheme={cfg.scheme} needs reward.model.paths (BaseReward checkpoints)")
    for path in [*cfg.model.paths, *([cfg.model.text_path] if cfg.model.text_path else [])]:
        if not (Path(path) / HEAD_FILE).is_file():
            raise FileNotFoundError(f"reward.model.paths: {path} is not a BaseReward checkpoint (no {HEAD_FILE}); "
                                    "train one with `brl train-rm CONFIG` (see recipes/configs/tiny_cpu_rm.yaml)")


def build_reward_funcs(cfg: RewardConfig, scorer: Callable | None = None,
                       rule: Callable | None = None) -> tuple[list[GuardedReward], list[float]]:
    """The reward functions and weights for TRL. `scorer` and `rule` replace the in-process BaseReward
    scorer and rule matcher (the Ray pipeline passes proxies to actors here)."""
    if cfg.scheme not in SCHEMES:
        raise ValueError(f"reward.scheme must be one of {SCHEMES}, got {cfg.scheme!r}")
    guard = functools.partial(GuardedReward, timeout_s=cfg.timeout_s, max_failure_rate=cfg.max_failure_rate)
    funcs: list[GuardedReward] = []
    weights: list[float] = []
    if cfg.scheme in ("model", "hybrid") and scorer is None:
        from reward.scorer import BaseRewardScorer

        scorer = BaseRewardScorer(cfg.model)  # the section is the scorer's options (plus its actors)
    rule = rule or RuleMatcher(**rule_options(cfg))
    if cfg.scheme == "rule":
        funcs.append(guard(rule, name="rule"))
    elif cfg.scheme == "model":
        funcs.append(guard(scorer, name="basereward"))
    elif cfg.scheme == "hybrid":
        funcs.append(guard(HybridReward(rule, scorer), name="hybrid"))
    if cfg.scheme != "none":
        weights.append(cfg.weight)
    for extra in cfg.extra:
        fn = make_custom_reward(extra.fn, extra.kwargs)
        funcs.append(guard(fn, name=extra.name or reward_name(getattr(fn, "func", fn))))
        weights.append(extra.weight)
    if not funcs:
        raise ValueError("no rewards configured: set reward.scheme or add reward.extra entries")
    names = [f.__name__ for f in funcs]
    if len(set(names)) != len(names):
        raise ValueError(f"reward names must be unique (set reward.extra[].name): {names}")
    return funcs, weights
