"""A learner that spans processes and nodes: TRL's GRPOTrainer on N Ray Train workers
(`learner.num_workers > 1`).

The driver (`brl grpo`) starts the rollout, reward-model and rule actors as for one learner, then N Ray Train
workers (`TorchTrainer`, one torch.distributed group: gloo on CPUs, NCCL on GPUs), each running the
recipe's training function with TRL's GRPOTrainer under DDP, FSDP2 or DeepSpeed ZeRO-3 (accelerate, as
TRL runs them; `learner.strategy`). One config, one command, on a laptop, a node or a cluster (`ray.address`).

- Rollouts stay one pool. TRL calls `rollout_func` on every rank with that rank's prompts; rank 0
  gathers them in rank order (together, the generation's global batch in the sampler's order, each
  prompt's G repeats in a row), generates once on the rollout actors and hands every rank its rows
  back (`GatheredRollouts`). TRL then gathers the rewards of whole groups for the advantages itself.
- Rewards: every rank calls the same scorer and rule actors.
- Weight sync: rank 0 sends. Under FSDP or ZeRO-3 the full weights exist nowhere, so every rank takes part in
  gathering them, one tensor at a time, in the order rank 0's transport reads them (PolicyWeights),
  and in nothing else: no rank holds a second copy of the policy.
- Failures: a worker that raises or dies ends the run (Ray Train's FailureConfig(max_failures=0)), and
  so does a worker group that cannot be placed within `learner.ready_timeout_s` (Ray Train's start
  timeout, with no controller retries: it would otherwise retry for ever);
  Ray stops the other workers, so nothing waits forever in a collective, and the driver raises with
  the cause and the last checkpoint to resume from.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rl.errors import LearnerWorkerError

log = logging.getLogger(__name__)


def split_output(output: dict[str, list], sizes: list[int]) -> list[dict[str, list]]:
    """A rollout_func output over concatenated prompts -> one output per part of `sizes` rows."""
    parts, start = [], 0
    for size in sizes:
        parts.append({key: values[start : start + size] for key, values in output.items()})
        start += size
    if start != min(len(v) for v in output.values()):
        raise ValueError(f"rollout output has {min(len(v) for v in output.values())} rows, the ranks sent {start}")
    return parts


@dataclass
class GatheredRollouts:
    """TRL's `rollout_func` on every rank of a distributed learner: rank 0 generates for all.

    `inner` is rank 0's ActorRollouts (None elsewhere). The other ranks follow its sync schedule
    (a sync at step s when s - the last synced step >= sync_every, as ActorRollouts decides) so that,
    with a sharded learner, they take part in gathering the weights it sends."""

    inner: Any
    sync_every: int = 1
    sharded: bool = False
    dtype: Any = None
    # With a sharded learner, the engine/learner logprob gap (rank 0's ActorRollouts cannot re-score
    # alone: a sharded forward is collective) is measured here, every rank on its first rows at once.
    logprob_gap_samples: int = 0
    version: int = 0  # the step of the last sync (followers' copy of the pool's version)

    @property
    def pool(self) -> Any:
        return self.inner.pool if self.inner is not None else None

    def __call__(self, prompts: list[Any], trainer: Any) -> dict[str, list]:
        import torch.distributed as dist

        rank, world = dist.get_rank(), dist.get_world_size()
        step = trainer.state.global_step
        gathered: list[Any] | None = [None] * world if rank == 0 else None
        dist.gather_object(prompts, gathered, dst=0)
        syncs = step - self.version >= self.sync_every
        parts: list[Any] | None = None
        if rank == 0:
            output = self.inner([p for part in gathered for p in part], trainer)
            parts = split_output(output, [len(part) for part in gathered])
        elif syncs and self.sharded:
            self._gather_weights(trainer)
        if syncs:
            self.version = step
        mine: list[Any] = [None]
        dist.scatter_object_list(mine, parts, src=0)
        if self.sharded and self.logprob_gap_samples:
            self._log_gap(trainer, prompts, mine[0], rank)
        return mine[0]

    def _log_gap(self, trainer: Any, prompts: list[Any], output: dict[str, list], rank: int) -> None:
        from adapters.trl import log_metric
        from pipeline.rollout import output_logprob_gap

        model = trainer.accelerator.unwrap_model(trainer.model)
        gaps = output_logprob_gap(
            model, trainer.processing_class, prompts, output, trainer.args.temperature, self.logprob_gap_samples
        )
        if rank == 0 and gaps:
            log_metric(trainer, "rollout/logprob_gap_mean", sum(gaps) / len(gaps))
            log_metric(trainer, "rollout/logprob_gap_max", max(gaps))

    def _gather_weights(self, trainer: Any) -> None:
        """This rank's part in rank 0's sync: every tensor gathered in the same order, then dropped."""
        from pipeline.weight_sync.export import PolicyWeights

        weights = PolicyWeights(trainer.accelerator.unwrap_model(trainer.model), self.dtype)
        for name in weights:
            weights.source(name)

    def close(self) -> None:
        if self.inner is not None:
            self.inner.close()


# ZeRO-3 as transformers fills it in ("auto": from the trainer's own batch size, accumulation, clipping and
# precision, so the trainer: section stays the one place those are set). Weights, gradients and optimizer
# state are partitioned across the workers; with bf16 the optimizer keeps float32 masters. Full 16-bit
# weights are gathered when the final policy is saved, so `final/` is a from_pretrained folder.
DEEPSPEED_ZERO3: dict[str, Any] = {
    "zero_optimization": {
        "stage": 3,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_bucket_size": "auto",
        "stage3_prefetch_bucket_size": "auto",
        "stage3_param_persistence_threshold": "auto",
        "stage3_gather_16bit_weights_on_model_save": True,
    },
    "bf16": {"enabled": "auto"},
    "fp16": {"enabled": "auto"},
    "train_micro_batch_size_per_gpu": "auto",
    "train_batch_size": "auto",
    "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto",
}


def strategy_args(strategy: str, layer_classes: list[str], deepspeed: Any = None) -> dict[str, Any]:
    """The trainer (TrainingArguments) settings of `learner.strategy` for a multi-worker learner
    (`deepspeed`: the trainer's own `deepspeed` setting, a config file or dict, if it has one)."""
    if strategy == "fsdp":
        # FSDP2, whole decoder layers as units, a full state dict in checkpoints (what from_pretrained reads).
        return {
            "fsdp": True,
            "fsdp_config": {
                "version": 2,
                "transformer_layer_cls_to_wrap": layer_classes,
                "reshard_after_forward": True,
                "state_dict_type": "FULL_STATE_DICT",
            },
        }
    if strategy == "deepspeed":
        return {"deepspeed": deepspeed or copy.deepcopy(DEEPSPEED_ZERO3)}
    return {"ddp_find_unused_parameters": False}


def decoder_layer_classes(model: Any) -> list[str]:
    """The model's transformer block classes (what FSDP wraps as units): its `_no_split_modules`."""
    names = list(getattr(model, "_no_split_modules", None) or [])
    if not names:
        raise ValueError(
            f"{type(model).__name__} does not name its transformer blocks (_no_split_modules): "
            "learner.strategy=fsdp cannot tell what to shard as units"
        )
    return names


def _run_packed(config: dict[str, Any]) -> None:
    """A learner worker's entry point: `train_fn(**kwargs, learner_gpus=...)`, unpacked here, in the
    worker. Ray Train's controller unpickles what TorchTrainer is given; handed the recipe's function and
    config directly, it imported the recipe and everything it imports (TRL, transformers, the models'
    configs) only to pass them on: about 14 s of a 2-core machine before any worker started. Packed, it
    holds bytes."""
    import os

    from ray import cloudpickle

    train_fn, kwargs, launch_dir = cloudpickle.loads(config["packed"])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Ray Train starts workers in a directory of its own: relative paths in the config (policy.path,
    # output_dir, data files) mean what they meant where `brl grpo` was launched.
    if Path(launch_dir).is_dir():
        os.chdir(launch_dir)
    else:  # another node without that directory: only absolute (shared) paths can work there
        log.warning(
            "learner worker: the launch directory %s does not exist on this node; relative paths in the "
            "config resolve against %s",
            launch_dir,
            os.getcwd(),
        )
    import ray.train.torch

    visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d]
    train_fn(**kwargs, learner_gpus=rank_gpus(visible, ray.train.torch.get_device()))


def rank_gpus(visible: list[str], device: Any) -> list[str]:
    """The GPU id a learner worker trains on. Ray Train shows each worker every GPU its node gives the run's
    workers (so NCCL can reach them all) and assigns each rank one of them (`ray.train.torch.get_device()`,
    an index into that list): the rank's own id, not the node's first. A worker on the CPU: none."""
    if getattr(device, "type", "cpu") != "cuda":
        return []
    return [visible[device.index or 0]] if visible else [str(device.index or 0)]


def run_workers(
    train_fn: Callable[..., Any],
    kwargs: dict[str, Any],
    learner: Any,
    gpus_per_worker: float,
    backend: str,
    storage: Path,
    name: str,
) -> None:
    """Run `train_fn(**kwargs, learner_gpus=<this worker's GPU ids>)` on `learner.num_workers` Ray Train
    workers in one torch.distributed group, from the directory this process runs in.

    A worker that fails ends the run: re-raised here as the error it raised (RewardFailureError,
    NonFiniteStepError, ActorFailureError) or as LearnerWorkerError for anything else, a dead process
    included; so does a worker group Ray cannot place within `learner.ready_timeout_s`."""
    import os

    import ray
    from ray import cloudpickle
    from ray.train import ControllerError, FailureConfig, RunConfig, ScalingConfig, WorkerGroupError
    from ray.train.torch import TorchConfig, TorchTrainer

    resources = {
        "CPU": learner.num_cpus_per_worker,
        **({"GPU": gpus_per_worker} if gpus_per_worker else {}),
        **learner.resources,
    }
    trainer = TorchTrainer(
        _run_packed,
        train_loop_config={"packed": cloudpickle.dumps((train_fn, kwargs, os.getcwd()))},
        scaling_config=ScalingConfig(
            num_workers=learner.num_workers, use_gpu=gpus_per_worker > 0, resources_per_worker=resources
        ),
        torch_config=TorchConfig(backend=backend),
        run_config=RunConfig(
            name=name,
            storage_path=str(storage.resolve()),
            failure_config=FailureConfig(max_failures=0, controller_failure_limit=0),
        ),
    )
    log.info("learner: %d Ray Train workers (%s, %s each)", learner.num_workers, learner.strategy, resources)
    try:
        trainer.fit()
    except WorkerGroupError as e:
        failures = getattr(e, "worker_failures", {}) or {}
        raise _worker_error(failures, str(e)) from e
    except ControllerError as e:  # the worker group could not be started (placed) in time
        raise LearnerWorkerError(
            f"the {learner.num_workers} learner workers ({resources} each) could not be started: "
            f"{e}; the cluster has {ray.available_resources()} free (learner.ready_timeout_s="
            f"{learner.ready_timeout_s:g})"
        ) from e


def _worker_error(failures: dict[int, BaseException], message: str) -> BaseException:
    """The error to raise for failed workers: the type a worker raised when it is one the run stops on
    on purpose (so the CLI explains it as it does for one learner), else LearnerWorkerError."""
    from reward.failures import RewardFailureError
    from rl.errors import ActorFailureError, NonFiniteStepError

    for rank, error in sorted(failures.items()):
        cause = error
        while cause is not None and not isinstance(cause, (RewardFailureError, NonFiniteStepError, ActorFailureError)):
            cause = cause.__cause__
        if cause is not None:
            return type(cause)(f"learner worker {rank}: {cause}")
    ranks = ", ".join(str(r) for r in sorted(failures)) or "?"
    return LearnerWorkerError(f"learner worker(s) {ranks} failed: {message.strip()[-2000:]}")
