"""`brl`: the command line. Each recipe subcommand loads that recipe's config (its `load`) and calls
its `main(cfg)`; the other subcommands wrap one function each. The CLI sits on top of the recipes:
nothing imports it, and recipe modules are imported only for the command that runs.

    python -m recipes.cli COMMAND ...   (the same as `brl COMMAND ...`)
"""

from __future__ import annotations

import os

# Before anything imports torch: CUDA availability checks go through NVML instead of initialising
# CUDA, so this process can still be pinned to the learner's GPU(s) once they are chosen
# (pipeline/placement.py); CUDA reads CUDA_VISIBLE_DEVICES only when it initialises.
os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")

import argparse  # noqa: E402
import importlib  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from reward.failures import RewardFailureError  # noqa: E402
from rl.config import ConfigError  # noqa: E402
from rl.errors import ActorFailureError, LearnerWorkerError, NonFiniteStepError  # noqa: E402

# command -> (recipe module with load(path, overrides) and main(cfg), help)
RECIPES: dict[str, tuple[str, str]] = {
    "grpo": ("recipes.grpo", "GRPO fine-tuning with rule / model / hybrid rewards"),
    "sft": ("recipes.sft", "supervised warm-up of a policy on the RL data's answers"),
    "train-rm": (
        "recipes.train_reward_model",
        "train a BaseReward model (Bradley-Terry, MLP head) on preference pairs",
    ),
    "compare": ("recipes.compare", "run GRPO under several reward schemes and compare them on held-out data"),
}


def _run_recipe(ns: argparse.Namespace) -> int:
    recipe = importlib.import_module(RECIPES[ns.command][0])
    recipe.main(recipe.load(ns.config, ns.overrides))
    return 0


def _make_tiny(ns: argparse.Namespace) -> int:
    from rl.tasks.models import make_tiny_policy

    path = make_tiny_policy(ns.out, seed=ns.seed, text_only=ns.text_only)
    print(f"tiny {'Qwen2' if ns.text_only else 'Qwen2.5-VL'} saved to {path}")
    return 0


def _validate_data(ns: argparse.Namespace) -> int:
    from rl.config import SourceConfig, ValidationConfig
    from rl.data import Source, validate_source

    if not ns.path and not ns.preset:
        raise ConfigError("name a data file, folder or hub dataset, or a --preset")
    columns = dict(_key_value(c, "--column") for c in ns.column)
    source = Source.of(
        SourceConfig(source=ns.path, split=ns.split, preset=ns.preset, columns=columns, image_root=ns.image_root),
        ns.kind,
    )
    report = validate_source(source, ns.kind, ValidationConfig(max_image_pixels=ns.max_image_pixels))
    print(report.summary(limit=ns.limit))
    return 1 if report.bad else 0


def _key_value(text: str, flag: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key or not value:
        raise ConfigError(f"{flag} takes field=column (e.g. prompt=question), got {text!r}")
    return key, value


def _plan(ns: argparse.Namespace) -> int:
    """GPU memory per GPU of a GRPO (or compare: each scheme's) config; exit 1 when a GPU overflows."""
    import copy
    from pathlib import Path

    from pipeline.memory_plan import GiB, fewest_gpus, format_plan, plan_for
    from pipeline.placement import visible_gpus
    from recipes import compare, grpo
    from rl.learner import grpo_args

    first = Path(ns.config).read_text().split("\n", 1)[0] if Path(ns.config).is_file() else ""
    if first.startswith("# brl compare"):  # every scheme runs with a layout of its own
        loaded = compare.load(ns.config, ns.overrides)
        configs = []
        for scheme in loaded.schemes:
            cfg = copy.deepcopy(loaded.grpo)
            cfg.reward.scheme = scheme
            configs.append((f"{ns.config} (scheme {scheme})", cfg))
    else:
        configs = [(ns.config, grpo.load(ns.config, ns.overrides))]
    capacity = ns.gpu_memory_gib * GiB if ns.gpu_memory_gib else _gpu_memory() or 80 * GiB
    fits = True
    for name, cfg in configs:
        gpus = ns.gpus or len(visible_gpus()) or fewest_gpus(cfg)
        args = grpo_args(cfg.output_dir, cfg.seed, dict(cfg.trainer))
        plans, header = plan_for(cfg, args, gpus, int(capacity), ns.reward_model, ns.text_tokens, ns.images_per_prompt)
        print(format_plan(plans, f"{name}: {header}") + "\n")
        fits = fits and all(p.fits for p in plans)
    return 0 if fits else 1


def _gpu_memory() -> int | None:
    import torch

    return torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else None


def _demo(ns: argparse.Namespace) -> int:
    from recipes.demo import run

    run(ns.out, quick=ns.quick)
    return 0


def _eval_rm(ns: argparse.Namespace) -> int:
    from evaluation.rm_benchmarks import evaluate_file
    from evaluation.rm_metrics import length_scorer, random_scorer, reward_model_pairs, scalar_pairs
    from reward.layouts import layout_of

    costs, layouts = None, None
    if ns.scorer == "model":
        if not ns.model:
            raise ConfigError("--model PATH is required with --scorer model (or use --scorer length/random)")
        layouts = [layout_of(p) for p in ns.model]
        pairs, costs = reward_model_pairs(ns.model, device=ns.device, batch_size=ns.batch_size)
    else:
        pairs = scalar_pairs(length_scorer if ns.scorer == "length" else random_scorer(ns.seed))
    result = evaluate_file(
        ns.data,
        ns.format,
        pairs,
        needs_images=ns.scorer == "model",
        split=ns.split,
        image_root=ns.image_root,
        costs=costs,
    )
    result.update(format=ns.format, data=ns.data, scorer=ns.scorer, model=ns.model, layouts=layouts)
    return _emit(result, ns.out)


def _eval_bench(ns: argparse.Namespace) -> int:
    import json

    from evaluation.policy_benchmarks import evaluate_benchmarks, markdown_table
    from rl.config import BenchmarkOptions

    tasks = [t.strip() for t in ns.tasks.split(",") if t.strip()]
    if not tasks:
        raise ConfigError("--tasks names at least one lmms-eval task, e.g. --tasks mmstar,mme,mathvista_testmini")
    options = BenchmarkOptions(
        tasks=tasks,
        include_path=ns.include_path,
        limit=ns.limit,
        batch_size=ns.batch_size,
        backend=ns.backend,
        max_tokens=ns.max_tokens,
        max_pixels=ns.max_pixels,
        device=ns.device,
        log_samples=ns.log_samples,
    )
    results = evaluate_benchmarks(ns.model, options)
    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    table = markdown_table(results)
    (out / "results.md").write_text(table)
    print(table)
    print(f"wrote {out / 'results.json'} and {out / 'results.md'}")
    return 0


def _eval_policy(ns: argparse.Namespace) -> int:
    from dataclasses import asdict

    from evaluation.held_out import evaluate_policy
    from policies.hf_engine import HFEngine
    from rl.config import DataConfig
    from rl.data import load_rl_splits

    data = DataConfig(source=ns.data, split=ns.split, eval_size=ns.size, seed=ns.seed)
    train, held_out = load_rl_splits(data)
    rows = held_out if ns.data == "shapes" else train
    scorer = None
    if ns.reward_model:
        from reward.scorer import RewardModelScorer

        scorer = RewardModelScorer.from_paths(ns.reward_model, calibrate=False)  # raw scores
    result = evaluate_policy(HFEngine(ns.model), rows, ns.batch_size, ns.max_tokens, scorer=scorer)
    return _emit(asdict(result), ns.out)


def _emit(result: dict, out: str | None) -> int:
    """Print an evaluation's JSON, and write it to `out` too when given."""
    import json

    text = json.dumps(result, indent=2)
    print(text)
    if out:
        Path(out).write_text(text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="brl",
        description="RL fine-tuning of vision-language models with pluggable rewards (rule, BaseReward, hybrid).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for name, (_, help_) in RECIPES.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("config", help="YAML config (see recipes/configs/)")
        p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. trainer.max_steps=3")
        p.set_defaults(func=_run_recipe)

    p = sub.add_parser("plan", help="GPU memory per GPU of a GRPO or compare config, and whether it fits")
    p.add_argument("config", help="YAML config (see recipes/configs/)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, as for `brl grpo`")
    p.add_argument(
        "--gpus",
        type=int,
        help="GPUs of the node (default: the visible ones, else the fewest the config's requests pack into)",
    )
    p.add_argument("--gpu-memory-gib", type=float, help="memory per GPU (default: the first visible GPU's, else 80)")
    p.add_argument("--text-tokens", type=int, default=256, help="prompt text tokens (images are counted apart)")
    p.add_argument("--images-per-prompt", type=int, default=1)
    p.add_argument(
        "--reward-model",
        help="a BaseReward checkpoint or backbone to size the scorer by "
        "(default: reward.model.paths[0], else Qwen2.5-VL-7B)",
    )
    p.set_defaults(func=_plan)

    p = sub.add_parser("demo", help="the embedded main job: tiny rule / model / hybrid comparison on CPU")
    p.add_argument("--out", default="runs/demo", help="where the report, table and plot go")
    p.add_argument("--quick", action="store_true", help="CI-sized budgets (minutes, numbers not meaningful)")
    p.set_defaults(func=_demo)

    p = sub.add_parser(
        "eval-rm",
        help="evaluate a reward model on VL-RewardBench, MM-RLHF-RewardBench, Multimodal "
        "RewardBench, RewardBench or preference pairs",
    )
    p.add_argument(
        "--model",
        nargs="*",
        default=None,
        help="reward-model checkpoint(s), any layout: BaseReward, a "
        "value head, sequence classification (several are averaged), or one generative judge",
    )
    p.add_argument(
        "--format", required=True, choices=["vl-reward", "mm-rlhf", "multimodal-rewardbench", "rewardbench", "pairs"]
    )
    p.add_argument(
        "--data",
        required=True,
        help="the benchmark: a .jsonl/.json/.parquet file (images relative to "
        "it) or its hub dataset name (e.g. MMInstruction/VL-RewardBench)",
    )
    p.add_argument("--split", default="test", help="split, for hub datasets")
    p.add_argument("--image-root", help="image paths are relative to this (default: the file's folder)")
    p.add_argument(
        "--scorer",
        default="model",
        choices=["model", "length", "random"],
        help="length / random: model-free baselines that check the metric code",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--out", help="also write the JSON here")
    p.set_defaults(func=_eval_rm)

    p = sub.add_parser("eval-bench", help="the paper's policy benchmarks (lmms-eval) on a policy checkpoint")
    p.add_argument("--model", required=True, help="a policy checkpoint (local folder or hub id)")
    p.add_argument(
        "--tasks",
        required=True,
        help="lmms-eval task names, comma-separated (mmbench_en_dev, mme, mmstar, mathvista_testmini, "
        "vstar_bench, llava_in_the_wild, wildvision, ...)",
    )
    p.add_argument("--include-path", help="a folder of extra lmms-eval task definitions (local copies, your own)")
    p.add_argument("--limit", type=int, help="documents per task (default: all)")
    p.add_argument("--backend", default="hf", choices=["hf", "vllm"], help="the engine that generates the answers")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=1024, help="the most any task may generate per answer")
    p.add_argument("--max-pixels", type=int, help="per image (default: the checkpoint's processor setting)")
    p.add_argument("--device", help="hf backend: default cuda if there is a GPU, else cpu")
    p.add_argument("--log-samples", action="store_true", help="keep every document's response in results.json")
    p.add_argument("--out", default="runs/eval_bench", help="where results.json and results.md go")
    p.set_defaults(func=_eval_bench)

    p = sub.add_parser("eval-policy", help="greedy held-out evaluation of a policy checkpoint")
    p.add_argument("--model", required=True)
    p.add_argument("--data", default="shapes", help='"shapes" (held-out split) or an RL data file')
    p.add_argument("--split", default="test")
    p.add_argument("--size", type=int, default=256, help="rows, for the shapes task")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reward-model", nargs="*", help="also report the mean BaseReward score")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--out", help="also write the JSON here")
    p.set_defaults(func=_eval_policy)

    p = sub.add_parser("make-tiny", help="build the offline tiny Qwen2.5-VL policy (or a text-only Qwen2)")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--text-only", action="store_true", help="a tiny Qwen2 causal LM instead")
    p.set_defaults(func=_make_tiny)

    p = sub.add_parser("validate-data", help="check every row of a dataset; report bad rows by number")
    p.add_argument(
        "path",
        nargs="?",
        help="a data file, a dataset folder with a meta.json, or a hub dataset name "
        "(default with --preset: the preset's hub id)",
    )
    p.add_argument("--kind", choices=["rl", "preference"], default="rl")
    p.add_argument("--preset", help="a published dataset's mapping (see the README's list)")
    p.add_argument(
        "--column",
        action="append",
        default=[],
        metavar="FIELD=COLUMN",
        help="where a field is in the dataset, e.g. --column prompt=question (repeatable)",
    )
    p.add_argument("--image-root", help="image paths are relative to this (default: the data file's folder)")
    p.add_argument("--split", help="split, for hub datasets (default: the preset's, else train)")
    p.add_argument("--max-image-pixels", type=int, default=4096 * 4096)
    p.add_argument("--limit", type=int, default=50, help="bad rows to list")
    p.set_defaults(func=_validate_data)
    return parser


def main(argv: list[str] | None = None) -> int:
    import warnings

    # TRL 1.16 warns at import that it was tested up to vLLM 0.31; this project runs vLLM 0.32 (the
    # vLLM lane tests it), and TRL's own vLLM path is not used.
    warnings.filterwarnings("ignore", message="TRL currently supports vLLM versions")
    ns = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if ns.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return ns.func(ns)
    except (
        ValueError,
        OSError,
        ImportError,
        RewardFailureError,
        ActorFailureError,
        NonFiniteStepError,
        LearnerWorkerError,
    ) as e:
        # A user's mistake (config and data errors are ValueErrors, bad paths OSErrors, a missing extra an
        # ImportError that names it) or a run
        # stopped on purpose (a reward that cannot score, actors that keep dying, a diverging run:
        # each after writing a checkpoint) reads better without a traceback; -v keeps it.
        if ns.verbose:
            raise
        print(f"brl {ns.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
