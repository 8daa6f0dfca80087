"""Typed recipe configs: dataclass defaults, then a YAML file, then `key=value` overrides.

Every recipe declares its schema here as OmegaConf structured dataclasses, so a typo or a wrong type
is an error that names the key and where it came from, before any model is loaded. A section is a
plain dataclass of options; a component is built from its section, and a component's options are
declared once, as its own dataclass (reward/options.py): `reward.rule:` is `RuleOptions`,
`reward.model:` `RewardModelOptions`, `head:` `HeadConfig`. Where components run (Ray actor groups) is
configured beside them (`rollout.actors`, `reward.actors`). The `trainer:` section of a recipe is
passed through to a TRL / transformers config class (GRPOConfig, SFTConfig, TrainingArguments) and
checked against that class's fields, so every knob those libraries document works from YAML without
being copied here. Nothing here imports torch: a config loads (and is refused) before any model library.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from reward.options import HeadConfig, JudgeOptions, RewardModelOptions, RuleOptions

T = TypeVar("T")


class ConfigError(ValueError):
    """A config problem a user can fix: names the key and the file (or the command line)."""


# ---------------------------------------------------------------------------------------------
# Shared sections
# ---------------------------------------------------------------------------------------------


@dataclass
class ActorGroupConfig:
    """A group of Ray actors: how many, what each needs, where they go."""

    num_actors: int = 1
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    # Custom resource labels that pin actors to nodes started with them, e.g. {rollout_node: 1}
    # for nodes started with `ray start --resources='{"rollout_node": 4}'`.
    resources: dict[str, float] = field(default_factory=dict)
    # A placement-group strategy for the group's bundles: PACK, SPREAD, STRICT_PACK, STRICT_SPREAD.
    placement: str | None = None
    max_restarts: int = 3  # Ray restarts a dead actor's process this many times over the run
    # A call whose actor died is re-issued on the restarted actor at most this many times per step;
    # beyond, the run stops with a checkpoint.
    max_retries: int = 2
    ready_timeout_s: float = 600.0  # actor construction (model load) must finish within this


@dataclass
class RayConfig:
    enabled: bool = False  # false: everything in this process (TRL generates itself)
    # None: start a new local cluster (even if another runs on this machine); "auto" / "host:6379" /
    # "ray://host:10001": join an existing one.
    address: str | None = None
    num_cpus: int | None = None  # for a local cluster (None: all cores)
    # GPUs of a local cluster (None: the GPUs this machine has). Set on a machine without GPUs, they are
    # logical GPUs: placement runs as on a GPU node (what the CPU tests of placement do).
    num_gpus: int | None = None


LEARNER_STRATEGIES = ("ddp", "fsdp", "deepspeed")
SHARDED_STRATEGIES = ("fsdp", "deepspeed")  # no learner worker holds the whole policy


@dataclass
class LearnerConfig:
    # Learner processes; 1 = TRL's GRPOTrainer in this process (the driver). N > 1: N Ray Train workers,
    # each running TRL's GRPOTrainer in one torch.distributed group (pipeline/distributed.py), placed by Ray
    # on this node or across the cluster (ray.address).
    num_workers: int = 1
    # ddp: every worker holds the whole policy and optimizer, gradients are averaged (DistributedDataParallel);
    # fsdp: weights, gradients and optimizer state are sharded across the workers (FSDP2 through accelerate,
    # as TRL runs it), a layer gathered only while it computes: what a policy that does not fit one GPU needs;
    # deepspeed: the same sharding by DeepSpeed ZeRO-3 through accelerate (trainer.deepspeed, a ZeRO config
    # file or dict, replaces the default one: pipeline/distributed.py DEEPSPEED_ZERO3).
    strategy: str = "ddp"
    # GPUs each learner process trains on (a fraction shares its GPU with actors). None: 1 on a machine
    # (or Ray cluster) with GPUs, 0 without.
    gpus_per_worker: float | None = None
    num_cpus_per_worker: float = 1.0  # (num_workers > 1) CPUs Ray reserves for each learner worker
    # (num_workers > 1) Custom resource labels that pin the learner workers to nodes, e.g. {learner_node: 1}.
    resources: dict[str, float] = field(default_factory=dict)
    # (num_workers > 1) The workers must be placed and started within this; else the run ends, naming what
    # they asked for and what the cluster has free (Ray Train would otherwise keep trying, silently).
    ready_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        if self.num_workers < 1:
            raise ConfigError(f"learner.num_workers must be >= 1, got {self.num_workers}")
        if self.strategy not in LEARNER_STRATEGIES:
            raise ConfigError(f"learner.strategy must be one of {LEARNER_STRATEGIES}, got {self.strategy!r}")


@dataclass
class BenchmarkOptions:
    """What to run and how (the `benchmarks:` section of `brl compare`; `brl eval-bench`'s flags), for
    evaluation/policy_benchmarks.py."""

    tasks: list[str] = field(default_factory=list)  # lmms-eval task names (none: no benchmark columns)
    include_path: str | None = None  # a folder of extra lmms-eval task definitions (local copies, your own)
    limit: int | None = None  # documents per task (None: all)
    batch_size: int = 16
    backend: str = "hf"  # the engine that generates: hf | vllm
    max_tokens: int = 1024  # the most any task may generate per answer
    max_pixels: int | None = None  # per image (None: the checkpoint's processor setting)
    device: str | None = None
    log_samples: bool = False  # keep each document's response and target in the results


ROLLOUT_BACKENDS = ("hf", "vllm")  # rollout.backend: transformers' generate, vLLM
# rollout.weight_sync: this project's transports (any engine; auto picks among them) ...
WEIGHT_SYNCS = ("auto", "shared_memory", "broadcast", "object_store")
# ... and vLLM's weight-transfer engine (vLLM engines), by its backend (vllm_transfer.TRAINER_INIT_INFO's keys).
VLLM_WEIGHT_SYNCS = {"vllm_nccl": "nccl", "vllm_gloo": "gloo"}
# Keys that were renamed: a config that still uses one is refused with its new spelling.
RENAMED_KEYS = {
    "weight_transfer": "rollout.weight_transfer was merged into rollout.weight_sync: write "
    "weight_sync: vllm_nccl (or vllm_gloo) instead"
}


@dataclass
class RolloutConfig:
    backend: str = "hf"  # hf (transformers generate) | vllm
    actors: ActorGroupConfig = field(default_factory=ActorGroupConfig)
    device: str | None = None  # None: cuda if the actor has a GPU, else cpu
    # The engines' weights (None: policy.dtype). On GPUs: bfloat16 engines beside a float32 learner
    # (whose master weights must stay float32; see policy.dtype).
    dtype: str | None = None
    # Generate on the learner's own model, in its process and on its GPU (transformers backend): no
    # rollout actors, no second copy of the weights, no sync; the KV cache is freed after each
    # generation (pipeline/colocated.py). Needs sync_every=1 and overlap=false.
    colocate: bool = False
    sync_every: int = 1  # push learner weights to the actors every k optimizer steps
    max_staleness: int = 0  # abort if a rollout is more policy versions behind than this
    # Generate step t+1's rollouts while the learner trains on step t (one-step-off-policy; needs
    # max_staleness >= sync_every).
    overlap: bool = False
    # When rollouts can be stale (overlap, or sync_every > 1), use the rollout engine's logprobs as
    # the PPO "old" policy, so the clipped ratio is the importance weight pi_theta / pi_behaviour.
    correct_off_policy: bool = True
    timeout_s: float = 600.0  # a generate or weight-sync call that takes longer is an error
    # How learner weights reach the engines (pipeline/weight_sync/, one module per transport): auto = the
    # fastest of the next three that reaches every actor; shared_memory (actors on the learner's node and
    # device: the CPU, or its GPU through CUDA IPC); broadcast (NCCL from the learner's GPU to actors on
    # other GPUs; gloo between CPUs); object_store (Ray's object store: any engine, any node); vllm_nccl
    # (vLLM engines only: vLLM's own weight-transfer engine, learner and vLLM workers in one NCCL group);
    # vllm_gloo (the same path over gloo: CPU machines, what CI runs).
    weight_sync: str = "auto"
    bucket_mb: float = 512  # shared_memory / broadcast: tensors are cast and sent in buckets of this size
    # Rollouts per step re-scored by the learner to report the engine/learner logprob gap (0: off).
    logprob_gap_samples: int = 4
    vllm: dict[str, Any] = field(default_factory=dict)  # vllm.LLM keyword arguments

    def __post_init__(self) -> None:
        if self.backend not in ROLLOUT_BACKENDS:
            raise ConfigError(f"rollout.backend must be one of {ROLLOUT_BACKENDS}, got {self.backend!r}")
        if self.weight_sync not in (*WEIGHT_SYNCS, *VLLM_WEIGHT_SYNCS):
            raise ConfigError(
                f"rollout.weight_sync must be one of {(*WEIGHT_SYNCS, *VLLM_WEIGHT_SYNCS)}, got {self.weight_sync!r}"
            )
        if self.weight_sync in VLLM_WEIGHT_SYNCS and self.backend != "vllm":
            raise ConfigError(
                f"rollout.weight_sync={self.weight_sync} is vLLM's weight-transfer engine: it needs "
                f"rollout.backend=vllm (got {self.backend!r})"
            )
        if self.sync_every < 1:
            raise ConfigError(f"rollout.sync_every must be >= 1, got {self.sync_every}")
        lag = self.sync_every - 1 + int(self.overlap)  # how many versions behind a rollout can be
        if self.max_staleness < lag:
            raise ConfigError(
                f"rollout.max_staleness={self.max_staleness} is below the lag that rollout.sync_every="
                f"{self.sync_every}{' with rollout.overlap' if self.overlap else ''} causes ({lag}): "
                f"set rollout.max_staleness: {lag}"
            )
        if self.bucket_mb <= 0:
            raise ConfigError(f"rollout.bucket_mb must be > 0, got {self.bucket_mb}")

    @property
    def vllm_transfer(self) -> str | None:
        """The backend of vLLM's weight-transfer engine this config names ("nccl", "gloo"), else None."""
        return VLLM_WEIGHT_SYNCS.get(self.weight_sync)


@dataclass
class PolicyConfig:
    # Hub id (Qwen/Qwen2.5-VL-3B-Instruct), a local directory, or "tiny" to build the offline tiny
    # Qwen2.5-VL under <output_dir>/tiny-policy.
    path: str = "tiny"
    # The trained weights' dtype: float32 (master weights; compute in bf16 with trainer.bf16: true) |
    # bfloat16 | float16 | auto. 16-bit trained weights lose small updates and are refused (LoRA aside).
    dtype: str = "float32"
    trust_remote_code: bool = False
    # Upper bound on pixels per image given to the processor (None: the checkpoint's own setting).
    max_pixels: int | None = None
    # Keep the vision encoder's weights fixed (memory, and stability of small models).
    freeze_vision: bool = False
    # The vision encoder's learning rate, when it trains (None: the trainer's learning_rate). A fresh or small
    # encoder wants less than the language model: the tiny policy's collapses to a constant output at the
    # 1e-3 its language model needs, and learns to see at 1e-4 (recipes/configs/tiny_cpu_sft.yaml).
    vision_lr: float | None = None
    # LoRA through PEFT (TRL's peft_config): peft.LoraConfig keyword arguments, e.g.
    # {r: 16, lora_alpha: 32, target_modules: [q_proj, k_proj, v_proj, o_proj]}. Empty: full fine-tuning.
    # Rollout engines receive the merged weights (base + adapter) at every sync.
    lora: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.vision_lr is not None and (self.vision_lr <= 0 or self.freeze_vision):
            raise ConfigError(
                f"vision_lr={self.vision_lr} needs a vision encoder that trains: a positive rate and "
                "freeze_vision: false"
            )


@dataclass
class RewardBackboneConfig(PolicyConfig):
    """The reward model's backbone: a policy checkpoint (or hub id), optionally deepened."""

    # Decoder layers appended on top of the backbone's, copies of its last layer with zero output
    # projections (block expansion, policies/expansion.py): the model starts out computing exactly what the
    # backbone did and gains depth to check the response against the image. 0: the backbone as it is.
    extra_layers: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.extra_layers < 0:
            raise ConfigError(f"backbone.extra_layers must be >= 0, got {self.extra_layers}")


@dataclass
class ValidationConfig:
    # What to do with a row that fails validation: "skip" (count and report) or "abort".
    on_bad_row: str = "skip"
    max_image_pixels: int = 4096 * 4096  # larger images are errors (decompression-bomb guard)
    max_prompt_chars: int = 16_384
    # Decode every image while checking rows (about 1 ms each); false for very large sets (MMPR's 2M):
    # headers and file integrity (PIL's verify) are checked, pixels only decoded when a batch needs them.
    decode_images: bool = True


@dataclass
class SourceConfig:
    """Where a dataset is, and where the project's fields are in it."""

    # "shapes" (the synthetic task), a .jsonl/.json/.parquet file, a downloaded dataset folder with a
    # meta.json (MMPR's layout), or a hub dataset name. Unset with a preset: the preset's hub id;
    # unset without one: "shapes".
    source: str | None = None
    split: str | None = None  # None: the preset's split, else "train"
    # A published dataset by name (rlaif-v, mmpr-v1.2, omnialign-v-dpo, r1-reward, tulu3-preference,
    # olmo2-preference, ultrafeedback-binarized, shp, geometry3k, multimodal-open-r1-8k): its mapping.
    preset: str | None = None
    # The project's field -> the dataset's column, e.g. {prompt: question, images: image, answer: solution}
    # (added to, and winning over, the preset's).
    columns: dict[str, str] = field(default_factory=dict)
    image_root: str | None = None  # relative image paths are relative to this (default: the data file's folder)


@dataclass
class DataConfig(SourceConfig):
    # Held-out data: same kinds as `source`; for "shapes" a disjoint seed is used automatically.
    eval_source: str | None = None
    eval_split: str = "test"
    train_size: int = 256  # synthetic task only
    eval_size: int = 64  # synthetic task only
    seed: int = 0
    # Synthetic task only: its task families and their weights in the mix (equal weights: an even cycle;
    # null: all five evenly). color / shape / count / position are closed questions (the rule can judge
    # them); description is open-ended (no matchable answer: only a reward model or a judge can). A dict
    # given here replaces the default, it is not merged into it: {color: 1} means colour questions only.
    tasks: dict[str, float] | None = None
    validation: ValidationConfig = field(default_factory=ValidationConfig)


@dataclass
class PreferenceSourceConfig(SourceConfig):
    # (source: "shapes" are synthetic pairs from the shapes task)
    weight: float = 1.0  # share of this source in the training mixture
    size: int = 1024  # synthetic source only
    seed: int = 0  # synthetic source only
    # Synthetic source only: the kinds of rejected answer and their shares (None: rl/tasks/shapes.py's
    # REJECTION_KINDS). near_miss needs the image; hallucination, off_task and degenerate do not.
    kinds: dict[str, float] | None = None
    # Synthetic source only: the task families of the pairs and their weights (None: all five evenly).
    tasks: dict[str, float] | None = None
    # Synthetic source only: a description with one wrong attribute worded exactly as its right one, so that
    # attribute is all that differs: hard negatives. Held-out pairs stay worded independently.
    same_wording: bool = False


@dataclass
class PreferenceDataConfig:
    sources: list[PreferenceSourceConfig] = field(default_factory=lambda: [PreferenceSourceConfig()])
    # Mixture size; None = until every source is used up once (datasets' "all_exhausted").
    total_size: int | None = None
    eval_source: str | None = "shapes"  # "shapes" uses a held-out seed
    eval_split: str = "test"
    eval_size: int = 256  # synthetic eval only
    validation: ValidationConfig = field(default_factory=ValidationConfig)


@dataclass
class BTLossConfig:
    # Both off by default: the paper found that each of them lowers accuracy.
    zero_mean_weight: float = 0.0  # lambda * (r_w + r_l)^2
    length_normalize: bool = False  # divide each score by its response length in tokens


@dataclass
class RewardActorsConfig:
    """Where each reward component runs with `ray.enabled`: its own Ray actor group, or (num_actors: 0) the
    learner's process. Only the components the scheme uses are started."""

    rule: ActorGroupConfig = field(default_factory=lambda: ActorGroupConfig(num_actors=0, num_cpus=0.5))
    model: ActorGroupConfig = field(default_factory=ActorGroupConfig)
    judge: ActorGroupConfig = field(default_factory=ActorGroupConfig)


@dataclass
class CustomRewardConfig:
    fn: str = "???"  # "package.module:function" or "path/to/file.py:function"
    name: str | None = None
    weight: float = 1.0
    kwargs: dict[str, Any] = field(default_factory=dict)


SCHEMES = ("rule", "model", "judge", "hybrid", "none")  # reward.scheme values
HYBRID_BRANCHES = ("model", "judge")  # reward.hybrid_with values
# Each scheme's default reward.min_group_std, on its reward's own scale. rule: 0/1 rewards, so any spread
# is a right answer among wrong ones (one in eight: std 0.33). judge: verdict probabilities, where two points
# are below any verdict worth following (the untrained tiny judge's groups spread by 1e-4). model: calibrated
# scores (the reward model's standard deviation is 1), a twentieth of it. hybrid: 1, or sigmoid(calibrated
# score) (or a verdict probability): about what the model's 0.05 becomes through the sigmoid (0.0125 at 0.5).
FLAT_GROUP_STD = {"rule": 0.0, "judge": 0.02, "model": 0.05, "hybrid": 0.01, "none": 0.0}


@dataclass
class RewardConfig:
    # The paper's schemes: rule (exact match), model (the reward model's score), judge (a generative
    # reward model's verdict probability), hybrid (1 if the rule matches, else the model branch:
    # sigmoid(score), or the judge's probability); "none" uses only `extra` rewards.
    scheme: str = "rule"
    weight: float = 1.0
    hybrid_with: str = "model"  # the hybrid's model branch: model | judge
    rule: RuleOptions = field(default_factory=RuleOptions)
    model: RewardModelOptions = field(default_factory=RewardModelOptions)
    judge: JudgeOptions = field(default_factory=JudgeOptions)
    actors: RewardActorsConfig = field(default_factory=RewardActorsConfig)
    extra: list[CustomRewardConfig] = field(default_factory=list)
    # Groups of completions whose summed rewards spread (population std) by no more than this get zero
    # advantages (DAPO's filter: a reward model's noise over answers it cannot tell apart is not a learning
    # signal; GRPO's per-group standardisation would blow it up to full-size advantages). The share of such
    # groups is logged per step as rewards/flat_groups. null: the scheme's own tolerance, on its scale
    # (FLAT_GROUP_STD); 0 turns the filter off but for exactly equal rewards.
    min_group_std: float | None = None
    # A reward call that takes longer than this is abandoned; its samples count as failures.
    timeout_s: float = 120.0
    # Abort when more than this share of a step's samples could not be scored.
    max_failure_rate: float = 0.25

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ConfigError(f"reward.scheme must be one of {SCHEMES}, got {self.scheme!r}")
        if self.hybrid_with not in HYBRID_BRANCHES:
            raise ConfigError(f"reward.hybrid_with must be one of {HYBRID_BRANCHES}, got {self.hybrid_with!r}")
        if self.min_group_std is not None and not self.min_group_std >= 0:
            raise ConfigError(
                f"reward.min_group_std must be >= 0 (or null: the scheme's default), got {self.min_group_std!r}"
            )

    def flat_group_std(self) -> float:
        """The spread below which a group's rewards count as flat: min_group_std, else the scheme's own."""
        return FLAT_GROUP_STD[self.scheme] if self.min_group_std is None else self.min_group_std

    def components(self) -> tuple[str, ...]:
        """The reward components the scheme runs, by their `reward.actors` names: one place that knows
        which scheme needs what (placement, the memory plan, the actors, the reward functions ask it)."""
        return {
            "rule": ("rule",),
            "model": ("model",),
            "judge": ("judge",),
            "hybrid": ("rule", self.hybrid_with),
            "none": (),
        }[self.scheme]


# ---------------------------------------------------------------------------------------------
# Recipe schemas
# ---------------------------------------------------------------------------------------------


@dataclass
class CheckpointConfig:
    # Write a resumable checkpoint every N optimizer steps (0: only the final policy is saved).
    every_steps: int = 0
    keep_last: int = 2  # older checkpoints are deleted (the newest complete one never is)


@dataclass
class GRPORecipeConfig:
    output_dir: str = "runs/grpo"
    seed: int = 0
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    # "auto": continue from <output_dir>/checkpoints/latest if there is one; a path: that checkpoint.
    resume: str | None = None
    # Optimizer steps skipped for a non-finite gradient (NaN/inf loss, advantages or gradients)
    # before the run stops with a checkpoint.
    max_skipped_steps: int = 3
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    data: DataConfig = field(default_factory=DataConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    # Any field of trl.GRPOConfig (num_generations, beta, epsilon, loss_type, learning_rate, ...).
    trainer: dict[str, Any] = field(default_factory=dict)


@dataclass
class SFTRecipeConfig:
    output_dir: str = "runs/sft"
    seed: int = 0
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    data: DataConfig = field(default_factory=DataConfig)
    # Any field of trl.SFTConfig.
    trainer: dict[str, Any] = field(default_factory=dict)


PARADIGMS = ("naive", "generative")  # brl train-rm's paradigm values


@dataclass
class GenerativeRMConfig:
    """(paradigm: generative) The judge's prompts and what it is trained on besides the pairs."""

    template: str | None = None  # the pairwise prompt file ({question} {answer1} {answer2}); None: R1-Reward's
    pointwise_template: str | None = None  # the single-response prompt ({question} {answer}); None: the project's
    pointwise: bool = True  # also train verdicts on single responses (chosen: 1, rejected: 2): rows without a reference
    eval_batch_size: int = 64  # judge prompts per generate call when scoring the held-out pairs
    # Fields of transformers' TrainingArguments that replace the shared `trainer:` section's for this paradigm
    # (its learning rate and steps, which SFT of a verdict wants otherwise than a scalar head).
    trainer: dict[str, Any] = field(default_factory=dict)


@dataclass
class RMRecipeConfig:
    output_dir: str = "runs/reward_model"
    seed: int = 0
    # naive: the paper's Naive-RM (a scalar head, Bradley-Terry loss); generative: the same backbone trained
    # by SFT to write R1-Reward's verdict (<answer>1</answer> / <answer>2</answer>) on the same pairs.
    paradigm: str = "naive"
    backbone: RewardBackboneConfig = field(default_factory=RewardBackboneConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    loss: BTLossConfig = field(default_factory=BTLossConfig)
    generative: GenerativeRMConfig = field(default_factory=GenerativeRMConfig)
    data: PreferenceDataConfig = field(default_factory=PreferenceDataConfig)
    # Any field of transformers.TrainingArguments.
    trainer: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.paradigm not in PARADIGMS:
            raise ConfigError(f"paradigm must be one of {PARADIGMS}, got {self.paradigm!r}")


@dataclass
class CompareEvalConfig:
    size: int | None = None  # held-out rows to use (None: all of grpo.data's held-out split)
    every: int = 5  # evaluate the live policy every k optimizer steps (for the curve)
    max_tokens: int = 16
    samples: int = 4  # sampled answers per row (at the training temperature) besides the greedy one


@dataclass
class CompareRecipeConfig:
    output_dir: str = "runs/compare"
    schemes: list[str] = field(default_factory=lambda: ["rule", "model", "hybrid"])  # reward.scheme of each run
    seeds: list[int] = field(default_factory=lambda: [0])
    eval: CompareEvalConfig = field(default_factory=CompareEvalConfig)
    # lmms-eval benchmarks (the paper's columns: mmbench, mme, mmstar, mathvista_testmini, ...) run on the
    # starting policy and every final one (extra `eval`); none by default.
    benchmarks: BenchmarkOptions = field(default_factory=BenchmarkOptions)
    # The GRPO recipe every scheme runs (its reward.scheme, seed and output_dir are set per run).
    grpo: GRPORecipeConfig = field(default_factory=GRPORecipeConfig)


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def _describe(err: OmegaConfBaseException) -> str:
    key = getattr(err, "full_key", None)
    msg = str(err).split("\n")[0]
    renamed = RENAMED_KEYS.get(str(key).rsplit(".", 1)[-1]) if key else None
    return (f"key '{key}': {msg}" if key else msg) + (f"; {renamed}" if renamed else "")


def load_config(
    schema: type[T],
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    passthrough: dict[str, type] | None = None,
) -> T:
    """Build a `schema` instance from its defaults, a YAML file and `key=value` overrides.

    `passthrough` maps a dict-valued section (e.g. "trainer", or "grpo.trainer") to the config class
    its keys must be fields of (e.g. `trl.GRPOConfig`); unknown keys there are errors too.
    """
    cfg = OmegaConf.structured(schema)
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            layer = OmegaConf.load(p)
        except Exception as e:  # YAML syntax errors come in several exception types
            raise ConfigError(f"{p}: not valid YAML: {e}") from None
        try:
            cfg = OmegaConf.merge(cfg, layer)
        except OmegaConfBaseException as e:
            raise ConfigError(f"{p}: {_describe(e)}") from None
        for section, cls in (passthrough or {}).items():
            _check_passthrough(OmegaConf.select(layer, section) or {}, section, cls, str(p))
    for override in overrides:
        # One at a time through OmegaConf.update, so list items can be addressed (data.sources.0.size=9).
        key, sep, raw = override.partition("=")
        if not sep or not key:
            raise ConfigError(f"command line: overrides must look like key=value, got {override!r}")
        value = OmegaConf.to_container(OmegaConf.from_dotlist([f"v={raw}"]))["v"]  # OmegaConf's YAML typing
        try:
            OmegaConf.update(cfg, key, value, merge=True)
        except OmegaConfBaseException as e:
            raise ConfigError(f"command line: {_describe(e)}") from None
        for section, cls in (passthrough or {}).items():
            if key.startswith(section + "."):
                _check_passthrough({key[len(section) + 1 :].split(".")[0]: None}, section, cls, "command line")
    try:
        out = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as e:  # e.g. a required "???" value left unset
        raise ConfigError(f"{path or 'config'}: {_describe(e)}") from None
    except ValueError as e:  # a component's own check of its options (e.g. an unknown extract mode)
        raise ConfigError(f"{path or 'command line'}: {e}") from None
    for section, cls in (passthrough or {}).items():
        _restore_no(_select(out, section), cls)
    return out


def _select(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _restore_no(section: dict[str, Any], cls: type) -> None:
    """YAML reads a bare `no` as false, so `save_strategy: no` (or `trainer.save_strategy=no`) arrives as
    False, which transformers refuses ("False is not a valid SaveStrategy"). A False given to a field
    whose type is an enum with a "no" member (the save / eval / logging strategies) is that "no"."""
    import enum
    import typing

    hints = typing.get_type_hints(cls)
    for key, value in section.items():
        if (
            value is False
            and key in hints
            and any(
                isinstance(t, type) and issubclass(t, enum.Enum) and "no" in {m.value for m in t}
                for t in typing.get_args(hints[key]) or (hints[key],)
            )
        ):
            section[key] = "no"


def _check_passthrough(section_cfg: Any, section: str, cls: type, source: str) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    for key in section_cfg:
        if key not in known:
            import difflib

            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"{source}: key '{section}.{key}' is not a field of {cls.__name__}.{hint}")


def to_yaml(cfg: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_container(cfg: Any) -> dict[str, Any]:
    """Plain dicts/lists (for JSON), e.g. the config a checkpoint records."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
