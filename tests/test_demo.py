"""`brl demo --quick` end to end: tiny policy, SFT, BaseReward training, compare through real Ray actors."""

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

    table = (out / "compare" / "results.md").read_text().splitlines()
    rows = [line for line in table if line.startswith("| ") and not line.startswith("| policy")]
    assert [r.split("|")[1].strip() for r in rows] == [
        "starting policy (SFT)", "GRPO, rule reward", "GRPO, model reward", "GRPO, hybrid reward"]

    results = json.loads((out / "compare" / "results.json").read_text())
    numbers = [results["start"]["rule_match"], results["start"]["sampled_rule_match"], results["start"]["model_score"]]
    for runs in results["schemes"].values():
        run = runs[0]
        numbers += [run["final"]["rule_match"], run["final"]["exact_match"], run["final"]["sampled_rule_match"],
                    run["mean_reward_last"],
                    run["model_score"], run["wall_time_s"]]
        assert run["final"]["step"] == 3
    assert all(isinstance(x, float) and math.isfinite(x) for x in numbers)
