"""Shared fixtures: tiny offline models are built once per test session, by one xdist worker, and reused."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from shared_artifacts import built_once  # noqa: E402
from transformers import TrainerCallback  # noqa: E402
from vllm_lock import vllm_lock  # noqa: E402


@pytest.fixture(scope="session")
def tiny_vl(tmp_path_factory) -> str:
    """A random-weight tiny Qwen2.5-VL checkpoint directory (with processor)."""
    from rl.tasks.models import make_tiny_policy

    return built_once(tmp_path_factory, "tiny-vl", lambda out: str(make_tiny_policy(out)))


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory) -> str:
    """A random-weight tiny Qwen2 (text-only) checkpoint directory (with tokenizer)."""
    from rl.tasks.models import make_tiny_policy

    return built_once(tmp_path_factory, "tiny-lm", lambda out: str(make_tiny_policy(out, text_only=True)))


@pytest.fixture(scope="session")
def warm_policy(tmp_path_factory, tiny_vl) -> str:
    """The tiny policy after a short SFT warm-up: it answers in the task's format, so GRPO has
    rewards with variance to learn from."""
    from recipes import sft
    from rl.config import SFTRecipeConfig, load_config

    def build(out: Path) -> str:
        cfg = load_config(
            SFTRecipeConfig,
            None,
            [
                f"output_dir={out}",
                f"policy.path={tiny_vl}",
                "data.train_size=512",
                "trainer.max_steps=120",
                "trainer.per_device_train_batch_size=32",
                "trainer.learning_rate=1e-3",
                "policy.freeze_vision=true",
                "trainer.report_to=[]",
            ],
        )
        return sft.main(cfg)["final_policy"]

    return built_once(tmp_path_factory, "warm-policy", build)


@pytest.fixture(scope="session")
def shapes_small():
    from rl.tasks.shapes import make_shapes_splits

    return make_shapes_splits(32, 16, seed=0)


@pytest.fixture(scope="session")
def untrained_rm(tmp_path_factory, tiny_vl) -> str:
    """A BaseReward checkpoint on the tiny backbone with a fresh head (scores are arbitrary but real)."""
    from policies.loading import load_processor
    from reward.model import BaseRewardModel, HeadConfig

    def build(out: Path) -> str:
        model = BaseRewardModel.from_backbone(tiny_vl, HeadConfig(), seed=0)
        return str(model.save_pretrained(out, load_processor(tiny_vl)))

    return built_once(tmp_path_factory, "untrained-rm", build)


@pytest.fixture()
def ray_local():
    """A local Ray cluster for the Ray lane (4 logical CPUs on a 2-core machine), started on first use
    and left running for the next test; restarted if a test (a multi-node one) shut it down."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    return ray


class UpdateWatch(TrainerCallback):
    """The share of the weights a gradient reached that the optimizer step changed."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, model=None, **kwargs):
        self.reached = {n: p.grad.detach() != 0 for n, p in model.named_parameters() if p.grad is not None}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        params = dict(model.named_parameters())
        changed = sum(int(((params[n].detach() != self.before[n]) & mask).sum()) for n, mask in self.reached.items())
        self.share_changed = changed / sum(int(mask.sum()) for mask in self.reached.values())


def _share_updated(tmp_path, policy, dtype):
    """One GRPO step at lr 1e-6 with bf16 compute; the reward (completion length) differs within groups."""
    from recipes import grpo

    reward = tmp_path / "length.py"
    reward.write_text(
        "def length(prompts, completions, **kw):\n    return [float(len(c[0]['content'])) for c in completions]\n"
    )
    config = Path(__file__).parent.parent / "recipes" / "configs" / "tiny_cpu_rule.yaml"
    cfg = grpo.load(
        str(config),
        [
            f"output_dir={tmp_path / dtype}",
            f"policy.path={policy}",
            "trainer.max_steps=1",
            "trainer.learning_rate=1e-6",
            "trainer.bf16=true",
            "trainer.report_to=[]",
            "trainer.max_completion_length=8",
            "reward.scheme=none",
            f"reward.extra=[{{fn: '{reward}:length'}}]",
            f"policy.dtype={dtype}",
        ],
    )
    watch = UpdateWatch()
    grpo.main(cfg, callbacks=[watch])
    return watch.share_changed


@pytest.fixture()
def share_updated():
    """share_updated(tmp_path, policy, dtype): the share of the weights a gradient reached that one GRPO
    step at lr 1e-6 with bf16 compute changed (the recipe, with weights loaded in `dtype`)."""
    return _share_updated


@pytest.fixture(autouse=True)
def one_vllm_test_at_a_time(request, tmp_path_factory):
    """Tests marked `vllm` run one at a time across workers (see tests/vllm_lock.py). Module-scoped engines are set
    up before this fixture, so they take the lock themselves while they start."""
    if request.node.get_closest_marker("vllm") is None:
        yield
        return
    with vllm_lock(tmp_path_factory):
        yield
