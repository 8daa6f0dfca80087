"""Typed recipe configs: dataclass defaults, then a YAML file, then `key=value` overrides.

Every recipe declares its schema here as OmegaConf structured dataclasses, so a typo or a wrong type
is an error that names the key and where it came from, before any model is loaded. A component's
options are declared once, by the component: the `reward.rule:` section is the rule matcher's own
dataclass, `reward.model:` the scorer's options, `head:` the reward head's; this module adds only
where their actors run. The `trainer:` section of a recipe is passed through to a TRL /
transformers config class (GRPOConfig, SFTConfig, TrainingArguments) and checked against that
class's fields, so every knob those libraries document works from YAML without being copied here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from reward.model import HeadConfig
from reward.rule import RuleMatcher
from reward.scorer import ScorerOptions

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
    # each running TRL's GRPOTrainer in one torch.distributed group (rl/distributed.py), placed by Ray
    # on this node or across the cluster (ray.address).
    num_workers: int = 1
    # ddp: every worker holds the whole policy and optimizer, gradients are averaged (DistributedDataParallel);
    # fsdp: weights, gradients and optimizer state are sharded across the workers (FSDP2 through accelerate,
    # as TRL runs it), a layer gathered only while it computes: what a policy that does not fit one GPU needs;
    # deepspeed: the same sharding by DeepSpeed ZeRO-3 through accelerate (trainer.deepspeed, a ZeRO config
    # file or dict, replaces the default one: rl/distributed.py DEEPSPEED_ZERO3).
    strategy: str = "ddp"
    # GPUs each learner process trains on (a fraction shares its GPU with actors). None: 1 on a machine
    # (or Ray cluster) with GPUs, 0 without.
    gpus_per_worker: float | None = None
    num_cpus_per_worker: float = 1.0  # (num_workers > 1) CPUs Ray reserves for each learner worker
    # (num_workers > 1) Custom resource labels that pin the learner workers to nodes, e.g. {learner_node: 1}.
    resources: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.num_workers < 1:
            raise ConfigError(f"learner.num_workers must be >= 1, got {self.num_workers}")
        if self.strategy not in LEARNER_STRATEGIES:
            raise ConfigError(f"learner.strategy must be one of {LEARNER_STRATEGIES}, got {self.strategy!r}")


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
    # generation (rl/colocated.py). Needs sync_every=1 and overlap=false.
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
    # How learner weights reach the engines (rl/weight_sync/): auto = the fastest that reaches every
    # actor: shared_memory (actors on the learner's node and device: the CPU, or its GPU through CUDA
    # IPC), broadcast (NCCL from the learner's GPU to actors on other GPUs; gloo between CPUs),
    # object_store (Ray's object store: any engine, any node). vLLM engines: see weight_transfer.
    weight_sync: str = "auto"
    bucket_mb: float = 512  # shared_memory / broadcast: tensors are cast and sent in buckets of this size
    # vLLM's own weight-transfer engine: "nccl" (GPUs: learner and engines in one NCCL group), "gloo"
    # (the same path over gloo: CPU machines, what CI runs); null: weight_sync decides.
    weight_transfer: str | None = None
    # Rollouts per step re-scored by the learner to report the engine/learner logprob gap (0: off).
    logprob_gap_samples: int = 4
    vllm: dict[str, Any] = field(default_factory=dict)  # vllm.LLM keyword arguments


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
    # LoRA through PEFT (TRL's peft_config): peft.LoraConfig keyword arguments, e.g.
    # {r: 16, lora_alpha: 32, target_modules: [q_proj, k_proj, v_proj, o_proj]}. Empty: full fine-tuning.
    # Rollout engines receive the merged weights (base + adapter) at every sync.
    lora: dict[str, Any] = field(default_factory=dict)


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
    tasks: list[str] = field(default_factory=lambda: ["color", "shape", "count", "position"])
    validation: ValidationConfig = field(default_factory=ValidationConfig)


@dataclass
class PreferenceSourceConfig(SourceConfig):
    # (source: "shapes" are synthetic pairs from the shapes task)
    weight: float = 1.0  # share of this source in the training mixture
    size: int = 1024  # synthetic source only
    seed: int = 0  # synthetic source only


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
class RuleConfig(RuleMatcher):
    """The rule matcher's options (reward/rule.py), and where it runs."""

    in_actor: bool = False  # with ray.enabled: run the matcher on its own actor instead of the driver


@dataclass
class ScorerConfig(ScorerOptions):
    """The BaseReward scorer's options (reward/scorer.py), and its actors."""

    # With ray.enabled: scorer actors (0 = score in the driver process).
    actors: ActorGroupConfig = field(default_factory=lambda: ActorGroupConfig(num_actors=1))


@dataclass
class CustomRewardConfig:
    fn: str = "???"  # "package.module:function" or "path/to/file.py:function"
    name: str | None = None
    weight: float = 1.0
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class RewardConfig:
    # The paper's three schemes: rule (exact match), model (BaseReward score), hybrid
    # (1 if the rule matches, else sigmoid(score)); "none" uses only `extra` rewards.
    scheme: str = "rule"
    weight: float = 1.0
    rule: RuleConfig = field(default_factory=RuleConfig)
    model: ScorerConfig = field(default_factory=ScorerConfig)
    extra: list[CustomRewardConfig] = field(default_factory=list)
    # A reward call that takes longer than this is abandoned; its samples count as failures.
    timeout_s: float = 120.0
    # Abort when more than this share of a step's samples could not be scored.
    max_failure_rate: float = 0.25


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


@dataclass
class RMRecipeConfig:
    output_dir: str = "runs/reward_model"
    seed: int = 0
    backbone: PolicyConfig = field(default_factory=PolicyConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    loss: BTLossConfig = field(default_factory=BTLossConfig)
    data: PreferenceDataConfig = field(default_factory=PreferenceDataConfig)
    # Any field of transformers.TrainingArguments.
    trainer: dict[str, Any] = field(default_factory=dict)


@dataclass
class CompareEvalConfig:
    size: int | None = None  # held-out rows to use (None: all of grpo.data's held-out split)
    every: int = 5  # evaluate the live policy every k optimizer steps (for the curve)
    max_tokens: int = 16
    samples: int = 4  # sampled answers per row (at the training temperature) besides the greedy one


@dataclass
class CompareRecipeConfig:
    output_dir: str = "runs/compare"
    schemes: list[str] = field(default_factory=lambda: ["rule", "model", "hybrid"])
    seeds: list[int] = field(default_factory=lambda: [0])
    eval: CompareEvalConfig = field(default_factory=CompareEvalConfig)
    # The GRPO recipe every scheme runs (its reward.scheme, seed and output_dir are set per run).
    grpo: GRPORecipeConfig = field(default_factory=GRPORecipeConfig)


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def _describe(err: OmegaConfBaseException) -> str:
    key = getattr(err, "full_key", None)
    msg = str(err).split("\n")[0]
    return f"key '{key}': {msg}" if key else msg


def load_config(schema: type[T], path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                passthrough: dict[str, type] | None = None) -> T:
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
                _check_passthrough({key[len(section) + 1:].split(".")[0]: None}, section, cls, "command line")
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
        if value is False and key in hints and any(
                isinstance(t, type) and issubclass(t, enum.Enum) and "no" in {m.value for m in t}
                for t in typing.get_args(hints[key]) or (hints[key],)):
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
