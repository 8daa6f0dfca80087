"""`brl demo --quick` end to end: tiny policy, SFT, the tiny BaseReward and generative judge, compare
through real Ray actors: the paper's five rows, per task family, with each reward's cost."""

import json
import math

import pytest

from recipes.cli import main as cli

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def test_demo_quick_writes_report_table_and_plot(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli(["demo", "--out", str(out), "--quick"]) == 0
    assert f"Report: {out / 'report.md'}" in capsys.readouterr().out
    for name in ("report.md", "demo.json", "compare/results.json", "compare/results.md", "compare/compare.png"):
        assert (out / name).is_file(), name
    assert (out / "compare" / "compare.png").stat().st_size > 10_000

    table = (out / "compare" / "results.md").read_text().split("\n\n")[0].splitlines()
    assert table[0].split("|")[2:8] == [" color ", " count ", " description ", " position ", " shape ", " average "]
    rows = [line for line in table[2:] if line.startswith("| ")]
    assert [r.split("|")[1].strip() for r in rows] == [
        "starting policy (SFT)",
        "GRPO, rule reward",
        "GRPO, judge reward",
        "GRPO, model reward",
        "GRPO, hybrid reward",
    ]

    results = json.loads((out / "compare" / "results.json").read_text())
    start = results["start"]
    numbers = [
        start["rule_match"],
        start["sampled_task_average"],
        start["per_task"]["description"]["sampled"],
        start["model_score"]["mean"],
    ]
    for scheme, runs in results["schemes"].items():
        run = runs[0]
        numbers += [
            run["final"]["rule_match"],
            run["final"]["sampled_task_average"],
            run["mean_reward_last"],
            run["model_score"]["right_mean"] if run["model_score"]["right_n"] else 0.0,
            run["reward_seconds_per_step"],
            run["wall_time_s"],
        ]
        assert run["final"]["step"] == 3
        # The judge writes its verdicts; the scalar head and the rule write nothing.
        assert (run["reward_tokens_per_step"] > 0) == (scheme == "judge"), (scheme, run["reward_tokens_per_step"])
    per_task = [k for k in results["schemes"]["hybrid"][0]["mechanism"] if k.startswith("hybrid/decided_by_match/")]
    assert per_task and {k.rsplit("/", 1)[1] for k in per_task} <= set(results["tasks"])  # the tasks its steps saw
    assert all(isinstance(x, float) and math.isfinite(x) for x in numbers), numbers
    report = (out / "report.md").read_text()
    assert "generative judge: held-out pairwise accuracy" in report and "BaseReward (scalar head)" in report
    assert report.count("near misses by task: color ") == 2  # both reward models, per question
