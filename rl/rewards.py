"""Turn a recipe's `reward:` section into TRL reward functions and weights.

Each reward component (the rule matcher, the reward-model scorer) is a class built from its options
(`component_spec`): in the learner's process, or hosted on Ray actors by the pipeline, which then hands
`build_rewards` a proxy for it. Extension is configuration: a custom reward is named as
`package.module:function` or `path/to/file.py:function` (a class is instantiated with `kwargs`, a
function is wrapped with them). Every reward comes back wrapped in `GuardedReward`, so failures are
counted rather than silent.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from policies.loading import check_model_source
from reward.base import reward_name
from reward.failures import GuardedReward
from reward.hybrid import HybridReward, sigmoid
from reward.layouts import check_scalar_reward_model
from reward.rule import RuleMatcher, columns_read
from rl.config import RewardConfig


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


@dataclass(frozen=True)
class ComponentSpec:
    """How to build a reward component: `cls(**kwargs)`, in this process or inside a Ray actor.
    `reads`: the columns a call reads (None: every column, and the prompts), all a remote call sends."""

    cls: type
    kwargs: dict[str, Any] = field(default_factory=dict)
    reads: tuple[str, ...] | None = None

    def build(self) -> Callable:
        return self.cls(**self.kwargs)


def component_spec(name: str, cfg: RewardConfig) -> ComponentSpec:
    """The reward component `name` (one of `cfg.components()`) as the config describes it."""
    if name == "rule":
        return ComponentSpec(RuleMatcher, {"options": cfg.rule}, reads=columns_read(cfg.rule))
    if name == "model":
        from reward.scorer import RewardModelScorer

        return ComponentSpec(RewardModelScorer, {"options": cfg.model})
    if name == "judge":
        from reward.judge import GenerativeJudge

        return ComponentSpec(GenerativeJudge, {"options": cfg.judge})
    raise ValueError(f"unknown reward component {name!r}")


def resolve_reward_models(cfg: RewardConfig) -> None:
    """Check each reward-model checkpoint the scheme needs, before any actor starts, and make local paths
    absolute (reward actors open them where Ray started them: joining a running cluster, not where
    `brl grpo` was launched)."""
    if "judge" in cfg.components():
        if not cfg.judge.path:
            raise ValueError(
                f"reward.scheme={cfg.scheme} needs reward.judge.path: a generative judge (`brl train-rm "
                "CONFIG paradigm=generative`) or a published one (yifanzhang114/R1-Reward)"
            )
        check_model_source(cfg.judge.path, "reward.judge.path")
        cfg.judge.path = _absolute(cfg.judge.path)
    if "model" not in cfg.components():
        return
    if not cfg.model.paths:
        raise ValueError(f"reward.scheme={cfg.scheme} needs reward.model.paths (reward-model checkpoints)")
    for path in [*cfg.model.paths, *([cfg.model.text_path] if cfg.model.text_path else [])]:
        try:
            if not Path(path).is_dir():
                check_model_source(path, "reward.model.paths")  # a hub id: in the local cache, or refused here
            check_scalar_reward_model(path, "reward.model.paths")
        except FileNotFoundError as e:
            raise FileNotFoundError(
                f"reward.model.paths: {path} is not a reward-model checkpoint ({e}). A BaseReward "
                "is what `brl train-rm CONFIG` writes (see recipes/configs/tiny_cpu_rm.yaml); a "
                "published reward model is a downloaded folder or a cached hub id"
            ) from None
    cfg.model.paths = [_absolute(p) for p in cfg.model.paths]
    cfg.model.text_path = _absolute(cfg.model.text_path) if cfg.model.text_path else None


def _absolute(path: str) -> str:
    return str(Path(path).resolve()) if Path(path).exists() else path


def build_rewards(
    cfg: RewardConfig, hosted: Mapping[str, Callable] | None = None
) -> tuple[list[GuardedReward], list[float]]:
    """The reward functions and weights for TRL. `hosted`: components that run elsewhere (the
    pipeline's proxies to their Ray actors), by name; the scheme's other components are built here."""
    hosted = hosted or {}
    parts = {name: hosted.get(name) or component_spec(name, cfg).build() for name in cfg.components()}
    guard = functools.partial(GuardedReward, timeout_s=cfg.timeout_s, max_failure_rate=cfg.max_failure_rate)
    funcs: list[GuardedReward] = []
    weights: list[float] = []
    if cfg.scheme == "hybrid":  # a judge's verdicts are probabilities already: no sigmoid
        squash = sigmoid if cfg.hybrid_with == "model" else None
        funcs.append(guard(HybridReward(parts["rule"], parts[cfg.hybrid_with], squash), name="hybrid"))
    elif cfg.scheme != "none":
        funcs.append(guard(parts[cfg.scheme], name=cfg.scheme))
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
