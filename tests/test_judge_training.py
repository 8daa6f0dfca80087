"""The generative judge trained by the upstream recipe (`brl train-rm ... paradigm=generative`) on the
tiny pairs: it writes readable verdicts and learns the pairs the text gives away, its verdicts barely
depend on the order of the two responses (it was trained on both), it scores GRPO completions from its
own actors, and a judge actor killed mid-call is restarted and its share sent again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from shared_artifacts import built_once

from rl.tasks.shapes import make_preference_pairs

pytestmark = pytest.mark.slow
CONFIGS = Path(__file__).parent.parent / "recipes" / "configs"


@pytest.fixture(scope="module")
def judge(tmp_path_factory, warm_policy) -> dict:
    """The tiny judge, trained from the warmed-up policy on the recipe's synthetic pairs: its summary."""
    from recipes import train_reward_model

    def build(out: Path) -> dict:
        cfg = train_reward_model.load(
            str(CONFIGS / "tiny_cpu_rm.yaml"),
            [
                f"output_dir={out}",
                "paradigm=generative",
                f"backbone.path={warm_policy}",
                "trainer.report_to=[]",
                "data.sources.0.size=1024",
                "data.eval_size=128",
                "generative.trainer.max_steps=200",
            ],
        )  # the demo's: 800
        return train_reward_model.main(cfg)

    return built_once(tmp_path_factory, "judge", build)


def test_the_generative_trainer_teaches_the_verdict_format_and_the_pairs_the_text_gives_away(judge):
    """At this budget (200 steps from a 120-step SFT policy, a quarter of the demo's) the tiny judge always
    writes a readable verdict and tells degenerate answers apart; it reports how order sways it."""
    summary = json.loads((Path(judge["checkpoint"]).parent / "summary.json").read_text())
    assert summary["paradigm"] == "generative" and summary["eval_after"]["eval_unparsed_rate"] < 0.05
    assert summary["eval_accuracy_by_kind"]["degenerate"] >= 0.75, summary["eval_accuracy_by_kind"]  # chance: 0.5
    assert summary["eval_after"]["eval_accuracy"] > 0.5, summary["eval_after"]
    assert 0 < summary["eval_after"]["generated_tokens_per_pair"] <= 2 * 8  # two verdicts, each <answer>N</answer>
    assert 0 <= summary["eval_after"]["eval_first_position_rate"] <= 1  # order bias and consistency: brl eval-rm's
    assert 0 <= summary["eval_after"]["eval_position_consistency"] <= 1
    assert (Path(judge["checkpoint"]) / "judge.json").is_file()


def test_a_judge_trained_on_both_orders_barely_depends_on_the_order(judge):
    """P("1") for (a, b) against 1 - P("1") for (b, a), over held-out pairs: within 0.1 on average."""
    from reward.judge import GenerativeJudge, JudgeRequest, pairwise_prompt, question_text
    from reward.options import JudgeOptions

    model = GenerativeJudge(JudgeOptions(path=judge["checkpoint"], batch_size=64))
    pairs = make_preference_pairs(48, seed=77)
    requests = []
    for i, row in enumerate(pairs):
        q = question_text(row["prompt"])
        requests += [
            JudgeRequest(i, "first", pairwise_prompt(model.pairwise, q, row["chosen"], row["rejected"]), row["images"]),
            JudgeRequest(
                i, "second", pairwise_prompt(model.pairwise, q, row["rejected"], row["chosen"]), row["images"]
            ),
        ]
    p = model.verdicts(requests)
    gaps = [
        abs(p[2 * i] - (1 - p[2 * i + 1]))
        for i in range(len(pairs))
        if p[2 * i] is not None and p[2 * i + 1] is not None
    ]
    assert len(gaps) >= 0.95 * len(pairs)
    assert sum(gaps) / len(gaps) < 0.1, sorted(gaps)[-5:]


def test_a_judge_actor_killed_mid_call_is_restarted_and_its_share_sent_again(judge, ray_local):
    import os
    import signal
    import threading

    from pipeline.actors import start_group, stop_actors
    from pipeline.remote_reward import RemoteReward
    from reward.judge import GenerativeJudge
    from reward.options import JudgeOptions
    from rl.config import ActorGroupConfig
    from rl.tasks.shapes import make_shapes_dataset

    rows = make_shapes_dataset(96, seed=5)
    prompts, images, references = list(rows["prompt"]), [list(x) for x in rows["images"]], list(rows["reference"])
    completions = ["red", "circle", "2", "top left", "a red circle in the top left", "blue"] * 16
    # A prompt per generate call, 48 per actor: a call of several seconds, so the kill lands inside it.
    options = JudgeOptions(path=judge["checkpoint"], batch_size=1)
    expected = GenerativeJudge(options)(prompts, completions, images=images, reference=references)
    group = ActorGroupConfig(num_actors=2, num_cpus=0.5, max_restarts=1, max_retries=1)
    actors = start_group("judge", GenerativeJudge, {"options": options}, group).ready()
    pid = ray_local.get(actors[1].pid.remote())
    kill = threading.Timer(1.0, os.kill, (pid, signal.SIGKILL))
    try:
        remote = RemoteReward(actors, "judge", timeout_s=300, max_retries=1, counts_costs=True)
        kill.start()
        got = remote(prompts, completions, images=images, reference=references)
        assert remote.calls.restarts == 1 and ray_local.get(actors[1].pid.remote()) != pid
        assert got == pytest.approx(expected, abs=1e-6)  # greedy verdicts: the re-sent share judges the same
        costs = remote.metrics()  # the restarted actor's counters start again: only its retried share is in
        assert costs["verdicts"] >= len(completions) and costs["unparsed"] == 0
    finally:
        kill.cancel()  # never a late kill of whatever process holds that pid next
        stop_actors(actors)


def test_grpo_with_the_judge_scheme_reports_its_cost_per_step(judge, tmp_path, warm_policy):
    """`reward.scheme: judge` through a judge actor: every completion judged against its reference, the
    tokens the judge generated and its seconds logged per step (what `brl compare` tabulates)."""
    from recipes import grpo

    summary = grpo.main(
        grpo.load(
            str(CONFIGS / "tiny_cpu_hybrid.yaml"),
            [
                f"output_dir={tmp_path}",
                f"policy.path={warm_policy}",
                "reward.scheme=judge",
                f"reward.judge.path={judge['checkpoint']}",
                "reward.judge.max_tokens=8",
                "reward.actors.judge.num_cpus=0.5",
                "rollout.actors.num_actors=1",
                "rollout.actors.num_cpus=0.5",
                "ray.num_cpus=2",
                "trainer.max_steps=2",
                "trainer.per_device_train_batch_size=8",
                "trainer.num_generations=4",
                "trainer.report_to=[]",
            ],
        )
    )
    steps = [r for r in summary["log_history"] if "rewards/judge/generated_tokens" in r]
    assert summary["global_step"] == 2 and len(steps) == 2 and summary["reward_failures"] == {"judge": 0}
    assert all(0 < r["rewards/judge/generated_tokens"] <= 8 * 2 * 8 for r in steps)  # 8 completions, 2 orders
    assert all(r["timing/reward/judge"] > 0 and r["rewards/judge/unparsed"] == 0 for r in steps)
