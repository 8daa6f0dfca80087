"""A trained policy on the paper's benchmarks (MMBench, MME, MMStar, MathVista, V*, LLaVA-Wild,
WildVision), through lmms-eval (the `eval` extra): `brl eval-bench` and `brl compare`'s benchmark columns.

lmms-eval owns the benchmarks: their datasets, prompts, answer extraction and metrics, as published
(`--tasks mmstar,mme,mathvista_testmini,...`; a local task folder with `include_path`). The policy is
driven by this project's own rollout engine (`PolicyModel`, an lmms-eval model: transformers generate
or vLLM), so a checkpoint is rendered with the same chat template and engine it was trained with, and
nothing beyond lmms-eval's own requirements is needed (its `qwen2_5_vl` model wants decord and
qwen-vl-utils). Tasks scored by an LLM judge (LLaVA-Wild, WildVision) record which judge scored them.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from rl.config import BenchmarkOptions

log = logging.getLogger(__name__)
JUDGE_SETTINGS = ("MODEL_VERSION", "GPT_EVAL_MODEL_NAME")  # how lmms-eval's judge-scored tasks name their judge


def policy_model_class() -> type:
    """The lmms-eval model over this project's rollout engines (built lazily: lmms-eval is an extra)."""
    from lmms_eval.api.model import lmms
    from PIL import Image

    from policies.rollout_engine import RolloutRequest, SamplingParams

    class PolicyModel(lmms):
        """A policy checkpoint as lmms-eval sees a model: `generate_until` over the task's documents."""

        def __init__(self, path: str, options: BenchmarkOptions):
            super().__init__()
            self.options = options
            if options.backend == "vllm":
                from policies.vllm_engine import VLLMEngine

                self.engine = VLLMEngine(path, max_pixels=options.max_pixels)
            else:
                from policies.hf_engine import HFEngine

                self.engine = HFEngine(path, device=options.device, max_pixels=options.max_pixels)
            self.generated_tokens = 0

        def generate_until(self, requests: list) -> list[str]:
            answers: list[str | None] = [None] * len(requests)
            # Documents are generated in batches of the same task and generation settings.
            groups: dict[tuple, list[int]] = {}
            for k, request in enumerate(requests):
                context, gen_kwargs, _, _, task, _ = request.args
                groups.setdefault((task, repr(sorted(gen_kwargs.items()))), []).append(k)
            for indices in groups.values():
                gen_kwargs = requests[indices[0]].args[1]
                until = gen_kwargs.get("until") or []
                until = [until] if isinstance(until, str) else list(until)
                asked = int(gen_kwargs.get("max_new_tokens") or self.options.max_tokens)
                sampling = SamplingParams(
                    n=1,
                    temperature=float(gen_kwargs.get("temperature") or 0.0),
                    logprobs=False,
                    max_tokens=min(asked, self.options.max_tokens),
                    stop=until,
                )
                for start in range(0, len(indices), self.options.batch_size):
                    part = indices[start : start + self.options.batch_size]
                    batch = [self._request(requests[k]) for k in part]
                    for k, group in zip(part, self.engine.generate(batch, sampling), strict=True):
                        text = group[0].text
                        for stop in until:  # what a stop string ended is not part of the answer
                            text = text.split(stop)[0] if stop else text
                        answers[k] = text
                        self.generated_tokens += len(group[0].completion_ids)
            return answers

        def _request(self, request: Any) -> Any:
            context, _, doc_to_visual, doc_id, task, split = request.args
            visuals = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual else []
            images = [v.convert("RGB") for v in visuals or [] if isinstance(v, Image.Image)]
            text = context.replace("<image>", "").strip()
            content = [*[{"type": "image", "text": None}] * len(images), {"type": "text", "text": text}]
            return RolloutRequest([{"role": "user", "content": content}], images)

        def loglikelihood(self, requests: list) -> list:
            raise ValueError(
                "this policy model answers lmms-eval's generation tasks; a task scored by the "
                "likelihood of its options (output_type: loglikelihood) is not supported"
            )

        def generate_until_multi_round(self, requests: list) -> list:
            raise ValueError("multi-round lmms-eval tasks are not supported by the policy model")

    return PolicyModel


def headline(metrics: dict[str, Any]) -> tuple[str, float] | None:
    """A task's main number: its `average` metric where it has one (MMStar), else its first."""
    numeric = {
        k.split(",")[0]: v
        for k, v in metrics.items()
        if "," in k and "_stderr" not in k and isinstance(v, (int, float))
    }
    if not numeric:
        return None
    key = "average" if "average" in numeric else next(iter(numeric))
    return key, float(numeric[key])


def judge_of(config: dict[str, Any]) -> str | None:
    """The LLM judge a task (its lmms-eval config) is scored by: its scoring module's MODEL_VERSION setting
    (lmms-eval's judge-scored tasks read it from the environment); None for a task scored by rule."""
    module = sys.modules.get(getattr(config.get("process_results"), "__module__", "") or "")
    return next((str(getattr(module, name)) for name in JUDGE_SETTINGS if hasattr(module, name)), None)


def evaluate_benchmarks(path: str, options: BenchmarkOptions) -> dict[str, Any]:
    """lmms-eval's `tasks` on the policy at `path`: per task, its headline metric, every metric, the number
    of documents and (judge-scored tasks) the judge; and the tokens the policy generated."""
    try:
        from lmms_eval.evaluator import simple_evaluate
        from lmms_eval.tasks import TaskManager
    except ImportError as e:
        raise ImportError("brl eval-bench needs lmms-eval: pip install 'basereward-rl[eval]' (make installs it)") from e
    model = policy_model_class()(path, options)
    manager = TaskManager(include_path=options.include_path)
    unknown = [t for t in options.tasks if t not in manager.all_tasks]
    if unknown:
        raise ValueError(
            f"unknown lmms-eval task(s) {unknown}; see `python -m lmms_eval --tasks list`, or put a task "
            "definition in a folder and name it with --include-path"
        )
    out = simple_evaluate(
        model=model,
        tasks=list(options.tasks),
        limit=options.limit,
        task_manager=manager,
        log_samples=options.log_samples,
        batch_size=options.batch_size,
        verbosity="WARNING",
    )
    tasks = {}
    for name, metrics in out["results"].items():
        head = headline(metrics)
        tasks[name] = {
            "metric": head[0] if head else None,
            "score": head[1] if head else None,
            "documents": out.get("n-samples", {}).get(name, {}).get("effective"),
            "judge": judge_of(out["configs"].get(name, {})),
            "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))},
        }
        if options.log_samples:
            tasks[name]["samples"] = [
                {"doc_id": s["doc_id"], "target": s["target"], "response": s["filtered_resps"][0]}
                for s in out["samples"].get(name, [])
            ]
    return {"model": path, "tasks": tasks, "generated_tokens": model.generated_tokens, "lmms_eval_version": _version()}


def _version() -> str:
    from importlib.metadata import version

    return version("lmms_eval")


def markdown_table(results: dict[str, Any]) -> str:
    """One row per task: its headline metric, documents, and the judge where an LLM scored it."""
    lines = ["| task | metric | score | documents | judge |", "|---|---|---|---|---|"]
    for name, t in results["tasks"].items():
        score = "-" if t["score"] is None else f"{t['score']:.4g}"
        lines.append(f"| {name} | {t['metric'] or '-'} | {score} | {t['documents'] or '-'} | {t['judge'] or 'rule'} |")
    return "\n".join(lines) + f"\n\nModel: {results['model']}; lmms-eval {results['lmms_eval_version']}.\n"
