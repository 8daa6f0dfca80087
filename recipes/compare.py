"""Compare reward schemes the way the paper does: same GRPO recipe, seeds, data and budget; only the
reward differs. Each final policy and the starting policy are evaluated on held-out data, per task family.

    brl compare recipes/configs/tiny_cpu_compare.yaml [key=value ...]

Writes to `output_dir`: results.json (every number), results.md (the paper-style table, and what each
reward cost and how it decided) and compare.png (training reward and held-out score per step).
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

from evaluation.held_out import COLLAPSE_MARGIN, HeldOutCallback, collapsed_tasks, evaluate_policy, history_entry
from recipes import grpo
from reward.stats import mean_std
from rl.config import CompareRecipeConfig, GRPORecipeConfig, load_config, to_yaml
from rl.data import load_rl_splits
from rl.models import resolve_model_path

log = logging.getLogger("brl.compare")
COLORS = {"rule": "tab:blue", "model": "tab:orange", "hybrid": "tab:green", "judge": "tab:red"}


def load(path: str | None = None, overrides: Sequence[str] = ()) -> CompareRecipeConfig:
    """This recipe's config: defaults, then the YAML file, then `key=value` overrides; `grpo.trainer:`
    keys must be fields of TRL's GRPOConfig."""
    return load_config(CompareRecipeConfig, path, overrides, passthrough={"grpo.trainer": GRPOConfig})


def _mean_std(xs: list[float | None]) -> tuple[float, float]:
    """Over seeds: the mean and the sample std (the seeds sample what a scheme does)."""
    return mean_std(xs, sample=True)


def _fmt(xs: list[float | None], digits: int = 3) -> str:
    m, s = _mean_std(xs)
    if math.isnan(m):
        return "-"
    return f"{m:.{digits}f}" if len(xs) == 1 else f"{m:.{digits}f} ± {s:.{digits}f}"


def step_means(log_history: list[dict], prefix: str) -> dict[str, float]:
    """The mean over training steps of every logged metric whose name starts with `prefix`."""
    sums: dict[str, list[float]] = {}
    for record in log_history:
        for key, value in record.items():
            if key.startswith(prefix) and isinstance(value, (int, float)) and math.isfinite(value):
                sums.setdefault(key, []).append(float(value))
    return {key: sum(v) / len(v) for key, v in sums.items()}


def evaluate_start(base: GRPORecipeConfig, held_out: Any, cfg: CompareRecipeConfig) -> dict:
    """The starting policy's held-out evaluation, once for every run (each run's curve starts from it)."""
    from policies.hf_engine import HFEngine

    result = evaluate_policy(
        HFEngine(base.policy.path),
        held_out,
        64,
        cfg.eval.max_tokens,
        samples=cfg.eval.samples,
        temperature=base.trainer.get("temperature", 1.0),
    )
    return history_entry(0, result)


def run_scheme(
    base: GRPORecipeConfig, scheme: str, seed: int, out: Path, held_out: Any, cfg: CompareRecipeConfig, start: dict
) -> dict:
    """One GRPO run; returns its final held-out scores, curves, what its reward cost and how it decided."""
    from policies.loading import load_processor

    run = copy.deepcopy(base)
    run.reward.scheme, run.seed = scheme, seed
    run.output_dir = str(out / f"{scheme}-seed{seed}")
    callback = HeldOutCallback(
        held_out,
        load_processor(run.policy.path, run.policy.max_pixels),
        cfg.eval.every,
        cfg.eval.max_tokens,
        samples=cfg.eval.samples,
        temperature=run.trainer.get("temperature", 1.0),
        start=start,
    )
    began = time.perf_counter()
    summary = grpo.main(run, callbacks=[callback])
    wall = time.perf_counter() - began
    history = summary["log_history"]
    steps = [r for r in history if "reward" in r]
    name = scheme  # TRL logs a scheme's reward under the scheme's name
    return {
        "scheme": scheme,
        "seed": seed,
        "final": callback.history[-1],
        "curve": callback.history,
        # (HeldOutCallback warned when it saw a family collapse)
        "collapsed_tasks": collapsed_tasks(start["per_task"], callback.history[-1]["per_task"]),
        "reward_curve": [{"step": i + 1, "reward": r["reward"]} for i, r in enumerate(steps)],
        "mean_reward_last": _mean_std([r["reward"] for r in steps[-5:]])[0],  # a step with no reward at all: None
        "tokens": steps[-1].get("num_tokens") if steps else None,
        "wall_time_s": wall,
        # What the reward cost per step, measured in the run: its seconds (the guarded call, actors
        # included) and the tokens it generated (a judge writes a verdict; a scalar head writes none).
        "reward_seconds_per_step": step_means(history, f"timing/reward/{name}").get(f"timing/reward/{name}"),
        "reward_tokens_per_step": step_means(history, f"rewards/{name}/generated_tokens").get(
            f"rewards/{name}/generated_tokens", 0.0
        ),
        "mechanism": {
            **step_means(history, "hybrid/decided_by_match"),
            **step_means(history, "hybrid/all_wrong"),
            **step_means(history, "rewards/flat_groups"),
            **step_means(history, "rewards/equal_groups"),
        },
        "flat_group_std": run.reward.flat_group_std(),
        "final_policy": summary["final_policy"],
    }


def model_scores(policy_path: str, held_out: Any, scorer_cfg: Any, max_tokens: int) -> dict[str, float] | None:
    """The reward model's scores of a policy's greedy held-out answers: their mean, and the mean and std
    over the answers the rule accepts and over those it rejects (closed questions): how far apart the
    model puts right and wrong answers (None without a reward model)."""
    if not scorer_cfg.paths:
        return None
    from policies.hf_engine import HFEngine
    from policies.rollout_engine import RolloutRequest, SamplingParams
    from reward.rule import RuleMatcher
    from reward.scorer import RewardModelScorer

    engine, scorer, matcher = HFEngine(policy_path), RewardModelScorer(scorer_cfg), RuleMatcher()
    greedy = SamplingParams(n=1, temperature=0.0, max_tokens=max_tokens, logprobs=False)
    every: list[float] = []
    split: dict[str, list[float]] = {"right": [], "wrong": []}
    for start in range(0, len(held_out), 64):
        rows = held_out[start : start + 64]
        answers = [
            g[0].text
            for g in engine.generate(
                [RolloutRequest(p, i) for p, i in zip(rows["prompt"], rows["images"], strict=True)], greedy
            )
        ]
        scores = scorer(rows["prompt"], answers, images=rows["images"])
        tasks = rows.get("task") or [None] * len(answers)
        for answer, truth, task, score in zip(answers, rows["answer"], tasks, scores, strict=True):
            if score is None:
                continue
            every.append(score)
            if truth is not None and task != "description":
                split["right" if matcher.match(answer, truth) else "wrong"].append(score)
    out = {"mean": sum(every) / len(every) if every else math.nan}
    for label, xs in split.items():
        m, sd = _mean_std(xs)
        out.update({f"{label}_mean": m, f"{label}_std": sd, f"{label}_n": float(len(xs))})
    return out


def benchmark_scores(policy_path: str, cfg: CompareRecipeConfig, out: Path) -> dict[str, float] | None:
    """lmms-eval's benchmarks (`benchmarks.tasks`) on a policy: each task's headline score (the full
    results in `out/benchmarks.json`); None when no benchmark is asked for."""
    if not cfg.benchmarks.tasks:
        return None
    from evaluation.policy_benchmarks import evaluate_benchmarks

    result = evaluate_benchmarks(policy_path, cfg.benchmarks)
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmarks.json").write_text(json.dumps(result, indent=2, default=str))
    return {task: t["score"] for task, t in result["tasks"].items()}


def write_table(results: dict, path: Path) -> str:
    """The paper-style table (a column per task family and their average), what each reward cost per
    step, and (for the hybrid) how it decided: results.md."""
    tasks = results["tasks"]
    start, schemes = results["start"], results["schemes"]
    benchmarks = results.get("benchmark_tasks") or []
    head = [
        "policy",
        *tasks,
        "average",
        "average, greedy",
        *benchmarks,
        "reward s/step",
        "reward tokens/step",
        "wall time (s)",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def row(label: str, finals: list[dict], runs: list[dict] | None) -> str:
        cells = [_fmt([f["per_task"].get(t, {}).get("sampled") for f in finals]) for t in tasks]
        cells += [_fmt([f["sampled_task_average"] for f in finals]), _fmt([f["task_average"] for f in finals])]
        cells += [_fmt([(f.get("benchmarks") or {}).get(b) for f in finals], 4) for b in benchmarks]
        cells += (
            ["-"] * 3
            if runs is None
            else [
                _fmt([r["reward_seconds_per_step"] for r in runs], 3),
                _fmt([r["reward_tokens_per_step"] for r in runs], 0),
                _fmt([r["wall_time_s"] for r in runs], 0),
            ]
        )
        return f"| {label} | " + " | ".join(cells) + " |"

    lines.append(row("starting policy (SFT)", [start], None))
    for scheme, runs in schemes.items():
        lines.append(row(f"GRPO, {scheme} reward", [r["final"] for r in runs], runs))
    seeds = sorted({r["seed"] for runs in schemes.values() for r in runs})
    note = (
        f"\nSeeds {seeds}; mean ± sample std over seeds where there are several. Held-out set: "
        f"{results['held_out_size']} rows. Each task column: the mean score of {results['samples']} sampled "
        f"answers per row at the training temperature (what GRPO optimises): rule match for the closed "
        f"questions, the scene score (precision and recall of the objects named) for descriptions; average: "
        f"over the task families; greedy: one answer per row. Reward s/step and tokens/step: what the scheme's "
        f"reward cost per GRPO step, measured in the run (seconds of the reward call, tokens it generated).\n"
    )
    lines.append(note)
    mechanism = mechanism_table(results)
    table = "\n".join(lines) + "\n" + collapse_table(results) + ("\n" + mechanism if mechanism else "")
    path.write_text(table)
    return table


def collapse_table(results: dict) -> str:
    """Per task family, how spread out each policy's greedy held-out answers are: the share of the most
    frequent answer and the number of distinct answers (what a collapsed policy shows), and the families
    each run collapsed that its start had not."""
    tasks = results["tasks"]
    head = ["policy", *[f"{t}: top answer share / distinct" for t in tasks], "collapsed (runs)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def cells(finals: list[dict]) -> list[str]:
        return [
            f"{_fmt([f['per_task'].get(t, {}).get('top_share') for f in finals], 2)} / "
            f"{_fmt([f['per_task'].get(t, {}).get('distinct') for f in finals], 0)}"
            for t in tasks
        ]

    start = results["start"]
    truth = [f"{start['per_task'].get(t, {}).get('truth_top_share', math.nan):.2f}" for t in tasks]
    lines.append("| right answers | " + " | ".join(f"{x} / -" for x in truth) + " | - |")
    lines.append("| starting policy (SFT) | " + " | ".join(cells([start])) + " | - |")
    for scheme, runs in results["schemes"].items():
        collapsed = sorted({t for r in runs for t in r.get("collapsed_tasks", [])})
        lines.append(
            f"| GRPO, {scheme} reward | "
            + " | ".join(cells([r["final"] for r in runs]))
            + f" | {', '.join(collapsed) or 'none'} |"
        )
    return "\n".join(lines) + (
        f"\n\nCollapse: per family, the share of greedy held-out answers equal to the most frequent one and the "
        f"number of distinct answers (right answers: the same share among the rows' own answers). A run has "
        f"collapsed a family when that share exceeds the right answers' by {COLLAPSE_MARGIN:.2f} or more where "
        f"its start's did not.\n"
    )


def mechanism_table(results: dict) -> str:
    """How each scheme's reward decided, measured: the share of samples the rule decided (per task, the
    hybrid), the share of groups with flat rewards, the reward spread in groups with no right answer, and
    the reward model's scores of right and wrong answers."""
    rows = []
    tasks = results["tasks"]
    for scheme, runs in results["schemes"].items():
        mech = [r["mechanism"] for r in runs]
        decided = [_fmt([m.get(f"hybrid/decided_by_match/{t}") for m in mech], 2) for t in tasks]
        scores = [r.get("model_score") or {} for r in runs]
        tolerance = runs[0].get("flat_group_std", math.nan)
        rows.append(
            f"| {scheme} | " + " | ".join(decided) + f" | {tolerance:g}"
            f" | {_fmt([m.get('rewards/flat_groups') for m in mech], 2)}"
            f" | {_fmt([m.get('rewards/equal_groups') for m in mech], 2)}"
            f" | {_fmt([m.get('hybrid/all_wrong_group_std') for m in mech], 3)}"
            f" | {_fmt([s.get('right_mean') for s in scores], 2)} | {_fmt([s.get('wrong_mean') for s in scores], 2)} |"
        )
    head = [
        "scheme",
        *[f"decided by rule: {t}" for t in tasks],
        "flat-group tolerance",
        "flat groups",
        "groups of equal rewards",
        "reward std, all-wrong groups",
        "RM score, right answers",
        "RM score, wrong answers",
    ]
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *rows]) + (
        "\n\nDecided by rule: the share of training samples the exact match settled (the rest went to the model "
        "branch; hybrid only). Flat groups: the share of groups whose rewards spread (population std) by no more "
        "than the scheme's tolerance (reward.min_group_std, else its default): no advantage; groups of equal "
        "rewards: those with no spread at all, which get none anyway (the difference is what the tolerance "
        "adds). Reward std, all-wrong groups: the mean spread of the hybrid's "
        "rewards in groups with no right answer (GRPO standardises it into advantages). RM score: the reward "
        "model's mean score of the final policy's greedy answers the rule accepts / rejects.\n"
    )


def excess_top_share(point: dict) -> float:
    """How far one held-out evaluation is from collapse: the largest, over task families, of the most
    frequent greedy answer's share above the most frequent right answer's."""
    excess = [
        s["top_share"] - s["truth_top_share"]
        for s in point["per_task"].values()
        if math.isfinite(s.get("top_share", math.nan)) and math.isfinite(s.get("truth_top_share", math.nan))
    ]
    return max(excess) if excess else math.nan


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_r, ax_a, ax_c) = plt.subplots(1, 3, figsize=(16, 4))
    for scheme, runs in results["schemes"].items():
        for i, run in enumerate(runs):
            label = scheme if i == 0 else None
            color = COLORS.get(scheme)
            ax_r.plot(
                [p["step"] for p in run["reward_curve"]],
                [p["reward"] for p in run["reward_curve"]],
                color=color,
                alpha=0.8,
                label=label,
            )
            steps = [p["step"] for p in run["curve"]]
            ax_a.plot(
                steps,
                [p["sampled_task_average"] for p in run["curve"]],
                color=color,
                alpha=0.8,
                marker="o",
                label=f"{label}, sampled" if label else None,
            )
            ax_a.plot(
                steps,
                [p["task_average"] for p in run["curve"]],
                color=color,
                alpha=0.5,
                linestyle=":",
                label=f"{label}, greedy" if label else None,
            )
            ax_c.plot(
                steps, [excess_top_share(p) for p in run["curve"]], color=color, alpha=0.8, marker="o", label=label
            )
    ax_c.axhline(COLLAPSE_MARGIN, color="grey", linestyle="--", label="collapsed")
    ax_c.set(
        title="collapse: top answer share above the right answers'\n(largest over families, greedy)",
        xlabel="step",
        ylabel="excess share",
    )
    ax_r.set(title="mean training reward (own scheme's scale)", xlabel="step", ylabel="reward")
    ax_a.set(title="held-out score, average over task families", xlabel="step", ylabel="score", ylim=(0, 1))
    for ax in (ax_r, ax_a, ax_c):
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
    base.policy.path = resolve_model_path(base.policy.path, out, base.seed, "grpo.policy.path")  # one for all

    from pipeline.placement import ray_cluster

    tasks = sorted(set(held_out["task"])) if "task" in held_out.column_names else ["all"]
    results: dict[str, Any] = {
        "held_out_size": len(held_out),
        "samples": cfg.eval.samples,
        "tasks": tasks,
        "start_policy": base.policy.path,
        "schemes": {},
    }
    results["benchmark_tasks"] = list(cfg.benchmarks.tasks)
    log.info("=== the starting policy, on %d held-out rows ===", len(held_out))
    start = evaluate_start(base, held_out, cfg)
    with ray_cluster(base) if base.ray.enabled else contextlib.nullcontext():  # one cluster for every run
        for seed in cfg.seeds:
            for scheme in cfg.schemes:
                log.info("=== scheme %s, seed %d ===", scheme, seed)
                run = run_scheme(base, scheme, seed, out, held_out, cfg, start)
                run["model_score"] = model_scores(run["final_policy"], held_out, base.reward.model, cfg.eval.max_tokens)
                run["final"]["benchmarks"] = benchmark_scores(run["final_policy"], cfg, out / f"{scheme}-seed{seed}")
                results["schemes"].setdefault(scheme, []).append(run)
    results["start"] = {
        **start,
        "model_score": model_scores(base.policy.path, held_out, base.reward.model, cfg.eval.max_tokens),
        "benchmarks": benchmark_scores(base.policy.path, cfg, out / "start"),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    table = write_table(results, out / "results.md")
    plot(results, out / "compare.png")
    log.info("results:\n%s", table)
    log.info("wrote %s, %s and %s", out / "results.json", out / "results.md", out / "compare.png")
    return results
