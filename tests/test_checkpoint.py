"""Checkpoint / resume (atomic folders, exact resume) and the non-finite-step guard."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from adapters.trl import EpochSeededRepeatSampler
from recipes import grpo
from rl.checkpoint import (
    CHECKPOINTS,
    LATEST,
    TRAINER_STATE,
    check_resume_has_work,
    finalize,
    latest_checkpoint,
    resolve_resume,
)
from rl.step_guard import NonFiniteGuard, NonFiniteStepError, grads_finite

CONFIGS = Path(__file__).parent.parent / "recipes" / "configs"


def _staged(root: Path, step: int) -> Path:
    """What the Trainer writes: a checkpoint-N folder with its trainer state."""
    d = root / f"checkpoint-{step}"
    d.mkdir(parents=True)
    (d / TRAINER_STATE).write_text(json.dumps({"global_step": step}))
    (d / "model.safetensors").write_bytes(b"weights")
    return d


def test_finalize_moves_marks_and_keeps_the_last_k(tmp_path):
    for step in (2, 4, 6):
        dest = finalize(_staged(tmp_path, step), tmp_path, step, {"consumed_prompts": step * 2}, keep_last=2)
        assert dest == tmp_path / CHECKPOINTS / f"step-{step}"
        assert not (tmp_path / f"checkpoint-{step}").exists()  # staged folder renamed, not copied
    assert sorted(p.name for p in (tmp_path / CHECKPOINTS).iterdir() if p.is_dir()) == ["step-4", "step-6"]
    assert latest_checkpoint(tmp_path) == tmp_path / CHECKPOINTS / "step-6"
    assert json.loads((dest / "brl_state.json").read_text())["consumed_prompts"] == 12


def test_a_checkpoint_interrupted_before_its_marker_is_never_used(tmp_path):
    finalize(_staged(tmp_path, 2), tmp_path, 2, {}, keep_last=3)
    _staged(tmp_path, 4)  # the Trainer was killed after writing step 4, before we finalised it
    assert latest_checkpoint(tmp_path).name == "step-2"
    with pytest.raises(FileNotFoundError, match="not a complete Trainer checkpoint"):
        finalize(tmp_path / "checkpoint-6-partial", tmp_path, 6, {}, 3)
    assert (tmp_path / CHECKPOINTS / LATEST).read_text() == "step-2"


def test_resume_resolution_and_zero_step_resume(tmp_path):
    assert resolve_resume(None, tmp_path) is None
    assert resolve_resume("auto", tmp_path) is None  # a first run starts fresh
    with pytest.raises(FileNotFoundError, match="not a checkpoint folder"):
        resolve_resume(str(tmp_path / "nope"), tmp_path)
    finalize(_staged(tmp_path, 4), tmp_path, 4, {}, 2)
    found = resolve_resume("auto", tmp_path)
    assert found.name == "step-4" and resolve_resume(str(found), tmp_path) == found
    check_resume_has_work(found, max_steps=5)
    with pytest.raises(ValueError, match="would train nothing"):
        check_resume_has_work(found, max_steps=4)


def test_epoch_seeded_sampler_order_does_not_depend_on_history():
    def order(sampler, epoch):
        sampler.set_epoch(epoch)
        return list(sampler)

    fresh = EpochSeededRepeatSampler(list(range(10)), mini_repeat_count=2, batch_size=2, seed=3)
    long_lived = EpochSeededRepeatSampler(list(range(10)), mini_repeat_count=2, batch_size=2, seed=3)
    epochs = [order(long_lived, e) for e in range(3)]
    assert order(fresh, 2) == epochs[2]  # a resumed process reads epoch 2 as the original did
    assert epochs[0] != epochs[1] != epochs[2]  # still a new shuffle every epoch


def test_guard_drops_a_non_finite_gradient_and_stops_past_the_limit():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    state = type("S", (), {"global_step": 4})()
    guard = NonFiniteGuard(max_skipped=1)
    model(torch.ones(1, 3)).sum().backward()
    assert grads_finite(model.parameters())
    model.weight.grad[0, 0] = float("nan")
    before = [p.detach().clone() for p in model.parameters()]
    guard.on_pre_optimizer_step(None, state, None, optimizer=opt)
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters())) and guard.skipped_steps == [5]
    model(torch.ones(1, 3)).sum().backward()
    model.bias.grad[0] = float("inf")
    with pytest.raises(NonFiniteStepError, match="2 optimizer steps had non-finite gradients"):
        guard.on_pre_optimizer_step(None, state, None, optimizer=opt)


class StopAfterSave(TrainerCallback):
    """Ends training right after the checkpoint of `step` is written (an interrupted run)."""

    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


def _grpo_cfg(run: Path, policy: str, *extra: str):
    return grpo.load(
        str(CONFIGS / "tiny_cpu_rule.yaml"),
        [
            f"output_dir={run}",
            f"policy.path={policy}",
            "data.train_size=4",
            "trainer.max_steps=4",
            "trainer.per_device_train_batch_size=4",
            "trainer.num_generations=2",
            "trainer.max_completion_length=4",
            "trainer.learning_rate=1e-3",
            "trainer.report_to=[]",
            *extra,
        ],
    )


def _weights(summary: dict) -> dict[str, torch.Tensor]:
    return load_file(Path(summary["final_policy"]) / "model.safetensors")


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def test_resume_mid_epoch_is_bit_exact_in_process(tmp_path, warm_policy):
    """4 steps straight vs 3 steps, stop, resume=auto: identical weights (2 steps/epoch, so mid-epoch)."""
    straight = grpo.main(_grpo_cfg(tmp_path / "straight", warm_policy))
    run = tmp_path / "interrupted"
    first = grpo.main(_grpo_cfg(run, warm_policy, "checkpoint.every_steps=3"), callbacks=[StopAfterSave(3)])
    assert first["global_step"] == 3 and first["last_checkpoint"].endswith("step-3")
    state = json.loads((run / CHECKPOINTS / "step-3" / "brl_state.json").read_text())
    assert state["consumed_prompts"] == 6 and state["config"]["checkpoint"]["every_steps"] == 3
    resumed = grpo.main(_grpo_cfg(run, warm_policy, "checkpoint.every_steps=3", "resume=auto"))
    assert resumed["global_step"] == 4 and resumed["resumed_from"].endswith("step-3")
    _assert_same(_weights(straight), _weights(resumed))
    # Nothing left to do is an error, not a silent success.
    with pytest.raises(ValueError, match="would train nothing"):
        grpo.main(
            _grpo_cfg(
                tmp_path / "straight", warm_policy, "resume=" + str(run / CHECKPOINTS / "step-3"), "trainer.max_steps=3"
            )
        )


class KillActorsAfter(TrainerCallback):
    """SIGKILLs actor 0 of every actor group after step `step` (the rollout actor and the rule actor)."""

    def __init__(self, step: int, groups: list):
        self.step, self.groups, self.killed, self.at_end = step, groups, [], []

    def on_step_end(self, args, state, control, **kwargs):
        import ray

        if state.global_step == self.step:
            for calls in self.groups:
                pid = ray.get(calls.actors[0].pid.remote(), timeout=60)
                os.kill(pid, signal.SIGKILL)
                self.killed.append(pid)

    def on_train_end(self, args, state, control, **kwargs):
        import ray

        self.at_end = [ray.get(calls.actors[0].pid.remote(), timeout=60) for calls in self.groups]


@pytest.mark.ray
@pytest.mark.slow
def test_resume_and_actor_kills_through_ray_actors_are_bit_exact(tmp_path, warm_policy, monkeypatch):
    """The pipeline (rollout actor + rule actor, weights synced every 2 steps), 4 steps three ways:
    straight; stopped at the epoch boundary (step 2) and resumed; with both actor processes killed
    after step 3. All three end with identical weights: the resumed actors were re-synced, and the
    restarted rollout actor got the weights it held back and regenerated the same samples."""
    from pipeline.actor_calls import ActorCalls

    ray_opts = (
        "ray.enabled=true",
        "ray.num_cpus=2",
        "rollout.actors.num_cpus=1",
        "reward.actors.rule.num_actors=1",
        "rollout.sync_every=2",
        "rollout.max_staleness=1",
    )
    straight = grpo.main(_grpo_cfg(tmp_path / "straight", warm_policy, *ray_opts))
    assert straight["rollout_version"] == 2

    run = tmp_path / "interrupted"
    grpo.main(_grpo_cfg(run, warm_policy, *ray_opts, "checkpoint.every_steps=2"), callbacks=[StopAfterSave(2)])
    resumed = grpo.main(_grpo_cfg(run, warm_policy, *ray_opts, "checkpoint.every_steps=2", "resume=auto"))
    assert resumed["global_step"] == 4 and resumed["resumed_from"].endswith("step-2")
    _assert_same(_weights(straight), _weights(resumed))

    groups: list = []  # every ActorCalls the recipe makes (rollout pool, rule reward), to kill from
    init = ActorCalls.__init__
    monkeypatch.setattr(ActorCalls, "__init__", lambda self, *a, **k: (init(self, *a, **k), groups.append(self))[0])
    chaos = KillActorsAfter(3, groups)
    killed = grpo.main(_grpo_cfg(tmp_path / "killed", warm_policy, *ray_opts), callbacks=[chaos])
    assert len(chaos.killed) == 2 and not set(chaos.killed) & set(chaos.at_end)  # both are new processes
    # The rollout call hit the dead actor and was retried; the reward call, sent later, may find its
    # actor already restarted by Ray (then nothing needs retrying).
    (rollout,) = [g for g in groups if g.what == "rollout actors"]
    (rule,) = [g for g in groups if g is not rollout]
    assert rollout.restarts == 1 and rule.restarts <= 1
    assert killed["global_step"] == 4 and killed["actor_restarts"] == 1
    assert killed["reward_samples"] == {"rule": 4 * 4}  # 4 steps x 4 completions: none lost, none twice
    _assert_same(_weights(straight), _weights(killed))


class PoisonGradient(TrainerCallback):
    """Makes step `step`'s gradient NaN (as an overflow would) and records the weights after each step."""

    def __init__(self, step: int):
        self.step = step
        self.after: list[torch.Tensor] = []

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        if state.global_step + 1 == self.step:
            next(p for g in optimizer.param_groups for p in g["params"] if p.grad is not None).grad.fill_(float("nan"))

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.after.append(torch.cat([p.detach().flatten() for p in model.parameters() if p.requires_grad]).clone())


def test_a_non_finite_step_is_skipped_and_counted_not_applied(tmp_path, warm_policy):
    poison = PoisonGradient(step=2)
    summary = grpo.main(_grpo_cfg(tmp_path, warm_policy, "trainer.max_steps=3"), callbacks=[poison])
    assert summary["global_step"] == 3 and summary["skipped_steps"] == [2]
    assert torch.equal(poison.after[0], poison.after[1])  # step 2 changed nothing
    assert not torch.equal(poison.after[1], poison.after[2])  # step 3 trained again
    assert torch.isfinite(poison.after[2]).all()


@pytest.mark.slow
def test_a_run_killed_with_sigkill_resumes_to_the_same_weights(tmp_path, warm_policy):
    """`brl grpo` in its own process, SIGKILLed once it has a checkpoint at step >= 2; then
    `resume=auto` finishes the run, and its weights equal those of a run that was never stopped."""
    import subprocess
    import sys
    import time

    from rl.checkpoint import checkpoint_step

    steps = ("trainer.max_steps=8", "checkpoint.every_steps=1", "checkpoint.keep_last=2")
    run = tmp_path / "killed"
    args = [
        f"output_dir={run}",
        f"policy.path={warm_policy}",
        "data.train_size=4",
        *steps,
        "trainer.per_device_train_batch_size=4",
        "trainer.num_generations=2",
        "trainer.max_completion_length=4",
        "trainer.learning_rate=1e-3",
        "trainer.report_to=[]",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "recipes.cli", "grpo", str(CONFIGS / "tiny_cpu_rule.yaml"), *args],
        cwd=Path(__file__).parent.parent,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            latest = latest_checkpoint(run) if (run / CHECKPOINTS / LATEST).exists() else None
            if latest is not None and checkpoint_step(latest) >= 2:
                break
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    killed_at = checkpoint_step(latest_checkpoint(run))
    assert 2 <= killed_at < 8 and not (run / "final").exists()

    resumed = grpo.main(_grpo_cfg(run, warm_policy, *steps, "resume=auto"))
    straight = grpo.main(_grpo_cfg(tmp_path / "straight", warm_policy, *steps))
    assert resumed["global_step"] == straight["global_step"] == 8
    assert int(resumed["resumed_from"].rsplit("-", 1)[1]) >= killed_at
    _assert_same(_weights(straight), _weights(resumed))
