"""Every touch of TRL's private internals (and accelerate's, for FSDP on CPUs), in one module, checked
against the TRL version it was written for.

TRL's public API (GRPOConfig, GRPOTrainer, `rollout_func`, reward functions) carries most of this
project; what it does not offer is done here, and only here:

- `GRPOLearner`, a GRPOTrainer that resumes exactly and can correct stale rollouts: it seeds each
  epoch's data order by (seed, epoch) (its sampler), uses the rollout engine's log-probabilities as
  the PPO "old" policy when asked, restores Qwen-VL policy weights through `from_pretrained`, and
  runs FSDP2 on CPU workers too (accelerate's own FSDP2 path, which it enables on accelerators only);
- `log_metric`: a metric logged with TRL's own per-step metrics (from the rollout hook);
- `save_checkpoint_now`: a resumable checkpoint outside the save schedule (the abort path);
- `planned_prompts`: the prompts TRL will ask for at a future step (overlapped rollouts).

On another TRL version importing this module fails with a message saying what to do: each of these
relies on internals that TRL changes between releases.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
import trl
from trl import GRPOTrainer
from trl.trainer.utils import RepeatSampler

log = logging.getLogger(__name__)

WRITTEN_FOR_TRL = "1.16"


def check_trl_version(version: str = trl.__version__) -> None:
    if ".".join(version.split(".")[:2]) != WRITTEN_FOR_TRL:
        raise RuntimeError(
            f"adapters/trl.py was written against TRL {WRITTEN_FOR_TRL}.x and TRL {version} is installed. It "
            f"overrides TRL internals (GRPOTrainer._get_train_sampler, _generate_and_score_completions, "
            f"_calculate_rewards, _load_from_checkpoint, _save_checkpoint, _metrics) that change between releases. "
            f"Install trl=={WRITTEN_FOR_TRL}.* (the project's constraints.txt pins it), or port this module to "
            f"{version}."
        )


check_trl_version()


class EpochSeededRepeatSampler(RepeatSampler):
    """TRL's RepeatSampler, with the shuffle of epoch e seeded by (seed, e).

    TRL's draws every epoch's order from one generator, which a new process restarts: a run resumed in
    epoch 2 would replay epoch 0's order. Seeding per epoch makes a resumed run read exactly the data
    an uninterrupted one reads. The Trainer calls `set_epoch` (through accelerate's DataLoaderShard)
    before each epoch.
    """

    epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        if self.shuffle and self.seed is not None:
            self.generator.manual_seed(self.seed + self.epoch)
        yield from super().__iter__()

    def epoch_order(self, epoch: int) -> list[int]:
        """The dataset indices epoch `epoch` yields, without disturbing this sampler (for prefetching).

        Asked for every step with overlapped rollouts; the last epoch's order is kept, so the
        permutation is drawn once per epoch, not once per step."""
        cached = self.__dict__.get("_order")
        if cached is None or cached[0] != epoch:
            other = copy.copy(self)
            other.generator, other.epoch = torch.Generator(), epoch
            cached = self._order = (epoch, list(iter(other)))
        return cached[1]


class GRPOLearner(GRPOTrainer):
    """GRPOTrainer that resumes exactly (the data order, the weights), can correct stale rollouts and
    leaves out groups whose rewards differ only by noise.

    `rollout_logprobs_as_old`: when rollouts may come from older weights (weights synced every k
    steps, or generated one step ahead), the PPO ratio's "old" policy is the one that actually sampled
    them: the rollout engine's log-probabilities replace the learner's recomputed ones. The ratio is
    then the importance weight pi_theta / pi_behaviour, clipped as usual (decoupled PPO; the role TRL's
    vLLM importance-sampling correction plays, which TRL only applies to its own vLLM path).

    `min_group_std`: a group of completions whose rewards spread by no more than this (a reward model's
    noise over answers it cannot tell apart) gets zero advantages, as DAPO's dynamic sampling filters such
    groups out: GRPO's per-group standardisation would otherwise blow the noise up to full-size
    advantages. The share of such groups is logged per step (`rewards/flat_groups`).
    """

    rollout_logprobs_as_old = False
    min_group_std = 0.0
    _mostly_flat_steps = 0  # consecutive generations in which most groups were flat
    train_sampler: EpochSeededRepeatSampler | None = None
    _step_rewards: Any = None  # every process's rewards of the generation being scored [B_all, n_funcs]

    def create_accelerator_and_postprocess(self) -> None:
        super().create_accelerator_and_postprocess()
        if self.args.fsdp and not self.is_fsdp_enabled:
            self._enable_fsdp_on_cpu()

    def _enable_fsdp_on_cpu(self) -> None:
        """accelerate turns `fsdp` on for accelerators only; on CPU workers (gloo) it would quietly train
        with DDP. Set the state accelerate sets on GPUs (its FSDP2 plugin from these arguments), before
        the model is prepared, so the same path runs: fsdp2_prepare_model, fully_shard on a CPU mesh, full
        state dicts gathered for checkpoints. What the CPU tests of `learner.strategy: fsdp` run."""
        from accelerate.state import PartialState
        from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

        state = self.accelerator.state
        state.fsdp_plugin = FullyShardedDataParallelPlugin(**self.args.fsdp_plugin_args)
        state.distributed_type = DistributedType.FSDP
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # every AcceleratorState() re-reads it
        self.is_fsdp_enabled = True

    def _get_train_sampler(self, dataset: Any = None) -> RepeatSampler:
        sampler = super()._get_train_sampler(dataset)
        sampler.__class__ = EpochSeededRepeatSampler  # same fields, per-epoch seeding
        if dataset is None or dataset is self.train_dataset:
            self.train_sampler = sampler
        return sampler

    def _calculate_rewards(self, inputs: Any, prompts: Any, completions: Any, completion_ids_list: Any) -> Any:
        self._step_rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        return self._step_rewards  # [B_all, n_funcs], gathered across processes, NaN where unscored

    def _generate_and_score_completions(self, inputs: Any) -> dict[str, Any]:
        output = super()._generate_and_score_completions(inputs)
        if self.rollout_logprobs_as_old and output.get("sampling_per_token_logps") is not None:
            output["old_per_token_logps"] = output["sampling_per_token_logps"]  # [B, T], 0 where masked
        if self._step_rewards is not None and self.model.training:
            spread = group_spread(self._step_rewards, self.reward_weights, self.num_generations)  # [B_all / G]
            flat = is_flat(spread, self.min_group_std).repeat_interleave(self.num_generations)  # [B_all]
            first = self.accelerator.process_index * len(inputs)
            local = flat[first : first + len(inputs)]  # this process's samples
            output["advantages"] = output["advantages"].masked_fill(local.to(output["advantages"].device), 0.0)
            share = flat.float().mean().item()
            self._metrics["train"]["rewards/flat_groups"].append(share)
            # What the tolerance adds to the groups TRL leaves without advantage anyway (exactly equal rewards).
            self._metrics["train"]["rewards/equal_groups"].append(is_flat(spread, 0.0).float().mean().item())
            self._warn_if_no_signal(share)
        return output

    def _warn_if_no_signal(self, flat_share: float) -> None:
        """Warn once when most groups have been flat for NO_SIGNAL_STEPS generations in a row: the reward
        then gives GRPO (almost) nothing to learn from, whether every sample earns the same reward or the
        reward cannot tell the samples apart."""
        self._mostly_flat_steps = self._mostly_flat_steps + 1 if flat_share > 0.5 else 0
        if self._mostly_flat_steps == NO_SIGNAL_STEPS:
            log.warning(
                "most groups have had flat rewards (spread <= %g) for %d generations in a row (now %.0f%%): "
                "the reward gives no learning signal on them. The policy either always or never earns it, "
                "or the reward cannot tell its samples apart",
                self.min_group_std,
                NO_SIGNAL_STEPS,
                100 * flat_share,
            )

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        # The Trainer reads model.safetensors with the runtime key names, but save_pretrained writes
        # Qwen2-VL / Qwen2.5-VL weights under their legacy names (the model's key mapping), so its
        # load silently matches nothing and training "resumes" from the initial weights (seen with
        # transformers 5.19 and 5.23). from_pretrained applies the mapping; copy its tensors in, strictly.
        model = self.accelerator.unwrap_model(model if model is not None else self.model)
        if (
            not isinstance(model, torch.nn.Module)
            or not hasattr(type(model), "from_pretrained")
            or getattr(model, "peft_config", None)
            or self.is_fsdp_enabled
        ):  # FSDP: accelerate loads its shards
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        saved = type(model).from_pretrained(resume_from_checkpoint, dtype=model.dtype)
        model.load_state_dict(saved.state_dict(), strict=True)
        log.info("policy weights restored from %s", resume_from_checkpoint)


NO_SIGNAL_STEPS = 10  # GRPOLearner warns after this many generations in a row with mostly flat groups


def group_spread(rewards_per_func: torch.Tensor, weights: torch.Tensor, group: int) -> torch.Tensor:
    """Each group's spread of weighted rewards: population std, unscored samples left out (a group with
    none scored: 0). rewards_per_func: [B, F] -> [B / G]."""
    rewards = (rewards_per_func * weights.to(rewards_per_func.device).unsqueeze(0)).nansum(dim=1)  # [B]
    rewards[torch.isnan(rewards_per_func).all(dim=1)] = torch.nan
    grouped = rewards.view(-1, group)  # [B / G, G]
    mean = torch.nanmean(grouped, dim=1, keepdim=True)  # [B / G, 1]
    return torch.nan_to_num(torch.nanmean((grouped - mean) ** 2, dim=1).sqrt(), nan=0.0)  # [B / G]


def is_flat(spread: torch.Tensor, min_std: float) -> torch.Tensor:
    """Groups whose spread is at most `min_std` (0: exactly equal rewards, which TRL gives no advantage)."""
    return spread <= min_std + 1e-12


def flat_groups(rewards_per_func: torch.Tensor, weights: torch.Tensor, group: int, min_std: float) -> torch.Tensor:
    """Which samples belong to a flat group (`group_spread`, `is_flat`). [B, F] -> [B] bool."""
    return is_flat(group_spread(rewards_per_func, weights, group), min_std).repeat_interleave(group)  # [B]


def log_metric(trainer: GRPOTrainer, name: str, value: float) -> None:
    """Log `value` under `name` with this step's training metrics: TRL averages and logs it with
    its own (`kl`, `reward`, ...). For metrics measured outside reward functions (which get TRL's
    `log_metric` callback), e.g. in the rollout hook."""
    trainer._metrics["train"][name].append(value)


def save_checkpoint_now(trainer: GRPOTrainer) -> None:
    """Write the Trainer's checkpoint of the state as it is, in the folder its own periodic save uses.

    The Trainer has no public "checkpoint now" call; `_save_checkpoint` is what its save schedule
    runs, so the folder is the same format a resume reads."""
    trainer._save_checkpoint(trainer.model, trial=None)


def planned_prompts(trainer: GRPOLearner, step: int) -> list[Any] | None:
    """The distinct prompts TRL will ask for at optimizer step `step` (None: cannot tell).

    Needs one generation per optimizer step: steps_per_generation = gradient_accumulation_steps (TRL's
    default) and num_iterations = 1. TRL's sampler yields each generation's prompts (each repeated
    num_generations times) once per micro-step that generation serves; generation k of an epoch is
    the k-th such block of the learner's EpochSeededRepeatSampler. Prompts are built the way TRL builds
    them (images put into the messages), so they compare equal to what TRL then passes to the hook."""
    from trl.data_utils import prepare_multimodal_messages

    sampler, args = trainer.train_sampler, trainer.args
    if sampler is None or args.num_iterations != 1 or args.steps_per_generation != args.gradient_accumulation_steps:
        return None
    group = trainer.num_generations
    per_generation = sampler.batch_size  # distinct prompts per generation
    generations_per_epoch = sampler.num_samples // per_generation
    if generations_per_epoch == 0:
        return None
    epoch, k = divmod(step, generations_per_epoch)
    block = per_generation * group * sampler.repeat_count  # what the sampler yields for one generation
    order = sampler.epoch_order(epoch)
    indices = order[k * block : k * block + per_generation * group : group]
    rows = [trainer.train_dataset[i] for i in indices]
    return [
        prepare_multimodal_messages(r["prompt"], images=r["images"]) if r.get("images") else r["prompt"] for r in rows
    ]
