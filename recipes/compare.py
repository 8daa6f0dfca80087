"""Compare reward schemes the way the paper does: same GRPO recipe, seeds, data and budget; only the
reward differs. Each final policy and the starting policy are evaluated on held-out data.

    brl compare recipes/configs/tiny_cpu_compare.yaml [key=value ...]

Writes to `output_dir`: results.json (every number), results.md (the paper-style table) and
compare.png (mean reward and held-out accuracy per step, one line per scheme).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trl import GRPOConfig

from recipes import grpo
from rl.config import CompareRecipeConfig, GRPORecipeConfig, load_config, to_yaml
from rl.data import load_rl_splits
from rl.evaluate import HeldOutCallback, evaluate_policy
from rl.tasks.shapes import resolve_policy_path

log = logging.getLogger("brl.compare")


def load(path: str | None = None, overrides: Sequence[str] = ()) -> CompareRecipeConfig:
    """This recipe's config: defaults, then the YAML file, then `key=value` overrides; `grpo.trainer:`
    keys must be fields of TRL's GRPOConfig."""
    return load_config(CompareRecipeConfig, path, overrides, passthrough={"grpo.trainer": GRPOConfig})


def _mean_std(xs: list[float]) -> tuple[float, float]:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    if not xs:
        return math.nan, math.nan
    m = sum(xs) / len(xs)
    return m, (math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0)


def _fmt(xs: list[float], digits: int = 3) -> str:
    m, s = _mean_std(xs)
    if math.isnan(m):
        return "-"
    return f"{m:.{digits}f}" if len(xs) == 1 else f"{m:.{digits}f} ± {s:.{digits}f}"


def run_scheme(base: GRPORecipeConfig, scheme: str, seed: int, out: Path, held_out: Any, eval_every: int,
               max_tokens: int, samples: int) -> dict:
    """One GRPO run; returns its final held-out metrics, reward curve and costs."""
    from policies.loading import load_processor

    cfg = copy.deepcopy(base)
    cfg.reward.scheme, cfg.seed = scheme, seed
    cfg.output_dir = str(out / f"{scheme}-seed{seed}")
    callback = HeldOutCallback(held_out, load_processor(cfg.policy.path, cfg.policy.max_pixels), eval_every,
                               max_tokens, samples=samples, temperature=cfg.trainer.get("temperature", 1.0))
    start = time.perf_counter()
    summary = grpo.main(cfg, callbacks=[callback])
    wall = time.perf_counter() - start
    steps = [r for r in summary["log_history"] if "reward" in r]
    return {
        "scheme": scheme, "seed": seed,
        "final": callback.history[-1], "curve": callback.history,
        "reward_curve": [{"step": i + 1, "reward": r["reward"]} for i, r in enumerate(steps)],
        "mean_reward_last": sum(r["reward"] for r in steps[-5:]) / max(1, len(steps[-5:])),
        "tokens": steps[-1].get("num_tokens") if steps else None,
        "wall_time_s": wall,
        "final_policy": summary["final_policy"],
    }


def model_scores(policy_path: str, held_out: Any, scorer_cfg: Any, max_tokens: int) -> float | None:
    """Mean BaseReward score of a policy's greedy held-out answers (None without a reward model)."""
    if not scorer_cfg.paths:
        return None
    from policies.hf_engine import HFEngine
    from reward.scorer import BaseRewardScorer

    scorer = BaseRewardScorer(scorer_cfg)  # the section is the scorer's options (calibrate included)
    result = evaluate_policy(HFEngine(policy_path), held_out, max_tokens=max_tokens, scorer=scorer)
    return result.mean_model_score


def write_table(results: dict, path: Path) -> str:
    header = ("| policy | held-out accuracy, sampled (T=train) | held-out exact match, greedy | "
              "held-out rule match, greedy | mean BaseReward score | mean train reward (last 5 steps) | tokens | "
              "wall time (s) |")
    lines = [header, "|" + "---|" * 8]
    start = results["start"]
    lines.append(f"| starting policy (SFT) | {_fmt([start['sampled_rule_match']])} | {_fmt([start['exact_match']])} | "
                 f"{_fmt([start['rule_match']])} | {_fmt([start.get('model_score')])} | - | - | - |")
    for scheme, runs in results["schemes"].items():
        lines.append(
            f"| GRPO, {scheme} reward | {_fmt([r['final']['sampled_rule_match'] for r in runs])} | "
            f"{_fmt([r['final']['exact_match'] for r in runs])} | "
            f"{_fmt([r['final']['rule_match'] for r in runs])} | {_fmt([r.get('model_score') for r in runs])} | "
            f"{_fmt([r['mean_reward_last'] for r in runs])} | {_fmt([r['tokens'] for r in runs], 0)} | "
            f"{_fmt([r['wall_time_s'] for r in runs], 0)} |")
    seeds = sorted({r["seed"] for runs in results["schemes"].values() for r in runs})
    note = (f"\nSeeds {seeds}; mean ± sample std over seeds where there are several. Held-out set: "
            f"{results['held_out_size']} rows. Sampled accuracy: mean rule match of {results['samples']} answers "
            f"per row at the training temperature (what GRPO optimises); greedy: one answer per row. The mean "
            f"train reward is on each scheme's own scale (raw scores for the model scheme).\n")
    table = "\n".join(lines) + "\n" + note
    path.write_text(table)
    return table


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_r, ax_a) = plt.subplots(1, 2, figsize=(11, 4))
    for scheme, runs in results["schemes"].items():
        for i, run in enumerate(runs):
            label = scheme if i == 0 else None
            color = {"rule": "tab:blue", "model": "tab:orange", "hybrid": "tab:green"}.get(scheme)
            ax_r.plot([p["step"] for p in run["reward_curve"]], [p["reward"] for p in run["reward_curve"]],
                      color=color, alpha=0.8, label=label)
            steps = [p["step"] for p in run["curve"]]
            ax_a.plot(steps, [p["sampled_rule_match"] for p in run["curve"]], color=color, alpha=0.8, marker="o",
                      label=f"{label}, sampled" if label else None)
            ax_a.plot(steps, [p["rule_match"] for p in run["curve"]], color=color, alpha=0.5, linestyle=":",
                      label=f"{label}, greedy" if label else None)
    ax_r.set(title="mean training reward (own scheme's scale)", xlabel="step", ylabel="reward")
    ax_a.set(title="held-out accuracy (rule match)", xlabel="step", ylabel="accuracy", ylim=(0, 1))
    for ax in (ax_r, ax_a):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(cfg: CompareRecipeConfig) -> dict:
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(to_yaml(cfg))
    base = cfg.grpo
    _, held_out = load_rl_splits(base.data)
    if held_out is None:
        raise ValueError("compare needs held-out data: set grpo.data.eval_source (or use the shapes task)")
    if cfg.eval.size:
        held_out = held_out.select(range(min(cfg.eval.size, len(held_out))))
    base = copy.deepcopy(base)
    base.policy.path = resolve_policy_path(base.policy.path, out, base.seed, "grpo.policy.path")  # one for all

    from rl.placement import ray_cluster

    results: dict[str, Any] = {"held_out_size": len(held_out), "samples": cfg.eval.samples,
                               "start_policy": base.policy.path, "schemes": {}}
    with ray_cluster(base) if base.ray.enabled else contextlib.nullcontext():  # one cluster for every run
        for seed in cfg.seeds:
            for scheme in cfg.schemes:
                log.info("=== scheme %s, seed %d ===", scheme, seed)
                run = run_scheme(base, scheme, seed, out, held_out, cfg.eval.every, cfg.eval.max_tokens,
                                 cfg.eval.samples)
                run["model_score"] = model_scores(run["final_policy"], held_out, base.reward.model,
                                                  cfg.eval.max_tokens)
                results["schemes"].setdefault(scheme, []).append(run)
    first = next(iter(results["schemes"].values()))[0]
    results["start"] = {**first["curve"][0],  # step 0 of any run is the starting policy
                        "model_score": model_scores(base.policy.path, held_out, base.reward.model,
                                                    cfg.eval.max_tokens)}
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    table = write_table(results, out / "results.md")
    plot(results, out / "compare.png")
    log.info("results:\n%s", table)
    log.info("wrote %s, %s and %s", out / "results.json", out / "results.md", out / "compare.png")
    return results

