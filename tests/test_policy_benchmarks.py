"""`brl eval-bench`: lmms-eval on a policy checkpoint, offline: a local task in MMStar's published schema
(index, question, image, answer, category, l2_category, meta_info) scored by lmms-eval's own MMStar
processing, with the tiny policy answering through this project's engine."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

pytest.importorskip("lmms_eval")

from datasets import Dataset, Features, Image, Value  # noqa: E402

from rl.tasks.shapes import COLORS, make_shapes_dataset  # noqa: E402

LETTERS = "ABCD"
POST_PROMPT = "\nAnswer with the option's letter from the given choices directly"


def mmstar_task(folder: Path, n: int = 6) -> Path:
    """A tiny MMStar copy (colour questions on shapes scenes, the options lettered) and its lmms-eval task,
    whose processing and metrics are MMStar's own (lmms_eval.tasks.mmstar.utils)."""
    rows = make_shapes_dataset(n, seed=3, tasks=["color"])
    records = [
        {
            "index": i,
            "question": "What color is the shape?\nOptions: "
            + ", ".join(f"{letter}: {color}" for letter, color in zip(LETTERS, COLORS)),
            "image": row["images"][0],
            "answer": LETTERS[list(COLORS).index(row["answer"])],
            "category": "fine-grained perception",
            "l2_category": "recognition",
            "meta_info": {"source": "shapes", "split": "val", "image_path": f"{i}.png"},
        }
        for i, row in enumerate(rows)
    ]
    features = Features(
        {
            "index": Value("int64"),
            "question": Value("string"),
            "image": Image(),
            "answer": Value("string"),
            "category": Value("string"),
            "l2_category": Value("string"),
            "meta_info": {"source": Value("string"), "split": Value("string"), "image_path": Value("string")},
        }
    )
    folder.mkdir(parents=True, exist_ok=True)
    Dataset.from_list(records, features=features).to_parquet(str(folder / "val.parquet"))
    (folder / "utils.py").write_text("from lmms_eval.tasks.mmstar.utils import *  # MMStar's processing and metrics\n")
    (folder / "mmstar_tiny.yaml").write_text(f"""task: mmstar_tiny
dataset_path: parquet
dataset_kwargs:
  data_files:
    val: {folder / "val.parquet"}
test_split: val
output_type: generate_until
doc_to_visual: !function utils.mmstar_doc_to_visual
doc_to_text: !function utils.mmstar_doc_to_text
doc_to_target: "answer"
process_results: !function utils.mmstar_process_results
metric_list:
  - metric: fine-grained perception
    aggregation: !function utils.mmstar_aggregate_results
    higher_is_better: true
  - metric: average
    aggregation: !function utils.mmstar_aggregate_results
    higher_is_better: true
lmms_eval_specific_kwargs:
  default:
    pre_prompt: ""
    post_prompt: {json.dumps(POST_PROMPT)}
generation_kwargs:
  max_new_tokens: 6
  temperature: 0
metadata:
  - version: 0.0
""")
    return folder


def test_eval_bench_scores_a_policy_with_lmms_evals_own_mmstar_processing(tmp_path, warm_policy, capsys):
    from lmms_eval.tasks.mmstar.utils import exact_match

    from policies.hf_engine import HFEngine
    from policies.rollout_engine import RolloutRequest, SamplingParams
    from recipes.cli import main as cli

    task = mmstar_task(tmp_path / "task")
    out = tmp_path / "bench"
    assert (
        cli(
            [
                "eval-bench",
                "--model",
                warm_policy,
                "--tasks",
                "mmstar_tiny",
                "--include-path",
                str(task),
                "--log-samples",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    results = json.loads((out / "results.json").read_text())
    result = results["tasks"]["mmstar_tiny"]
    assert result["documents"] == 6 and result["metric"] == "average" and result["judge"] is None
    assert "| mmstar_tiny | average |" in (out / "results.md").read_text() and "results.md" in capsys.readouterr().out
    # The answers lmms-eval scored are the engine's greedy answers to MMStar's prompt with the image ...
    rows = Dataset.from_parquet(str(task / "val.parquet"))
    requests = [
        RolloutRequest(
            [
                {
                    "role": "user",
                    "content": [{"type": "image", "text": None}, {"type": "text", "text": q.strip() + POST_PROMPT}],
                }
            ],
            [im],
        )
        for q, im in zip(rows["question"], rows["image"])
    ]
    greedy = HFEngine(warm_policy).generate(
        requests, SamplingParams(n=1, temperature=0.0, max_tokens=6, logprobs=False)
    )
    by_doc = {s["doc_id"]: s["response"] for s in result["samples"]}
    assert [by_doc[i] for i in range(6)] == [g[0].text for g in greedy]
    # ... and the score is MMStar's exact match of them, averaged as its aggregation does (one category).
    assert result["score"] == pytest.approx(sum(exact_match(by_doc[i], a) for i, a in enumerate(rows["answer"])) / 6)
    assert results["generated_tokens"] > 0


def test_compare_adds_a_column_per_benchmark_task(tmp_path, warm_policy):
    from recipes import compare

    task = mmstar_task(tmp_path / "task", n=3)
    cfg = compare.load(None, ["benchmarks.tasks=[mmstar_tiny]", f"benchmarks.include_path={task}"])
    scores = compare.benchmark_scores(warm_policy, cfg, tmp_path / "start")
    assert set(scores) == {"mmstar_tiny"} and 0.0 <= scores["mmstar_tiny"] <= 1.0
    assert json.loads((tmp_path / "start" / "benchmarks.json").read_text())["tasks"]["mmstar_tiny"]["documents"] == 3
    final = {
        "per_task": {"color": {"sampled": 0.5}},
        "sampled_task_average": 0.5,
        "task_average": 0.4,
        "benchmarks": scores,
    }
    results = {
        "tasks": ["color"],
        "benchmark_tasks": ["mmstar_tiny"],
        "held_out_size": 4,
        "samples": 2,
        "start": final,
        "schemes": {
            "rule": [
                {
                    "seed": 0,
                    "final": final,
                    "reward_seconds_per_step": 0.1,
                    "reward_tokens_per_step": 0.0,
                    "wall_time_s": 1.0,
                    "mechanism": {},
                    "model_score": None,
                }
            ]
        },
    }
    table = compare.write_table(results, tmp_path / "results.md").splitlines()
    assert "mmstar_tiny" in table[0].split("|")[5]
    assert table[2].split("|")[5].strip() == f"{scores['mmstar_tiny']:.4f}"


def test_a_judge_scored_task_records_its_judge(monkeypatch):
    from evaluation.policy_benchmarks import judge_of

    scoring = types.ModuleType("judged_task_utils")
    scoring.MODEL_VERSION = "gpt-4o-2024-11-20"

    def process_results(doc, results):
        return {}

    process_results.__module__ = scoring.__name__
    monkeypatch.setitem(sys.modules, scoring.__name__, scoring)
    assert judge_of({"process_results": process_results}) == "gpt-4o-2024-11-20"
    assert judge_of({"process_results": json.dumps}) is None  # scored by rule
