"""GPU memory of a GRPO config, estimated per GPU before anything loads (`brl plan`, and `brl grpo`'s
first check).

Every item is worked out from the model's dimensions (counted on the meta device, so exactly and
without memory) and the config: the learner's weights, gradients and AdamW state (in the trained
weights' dtype), its activations for one micro-batch (one checkpointed input per layer plus one
layer recomputed, with gradient checkpointing; every layer's otherwise), the completion logits TRL
turns into log-probabilities, a reference model when `beta > 0`; each rollout engine's weights and
KV cache (vLLM: the share of the GPU it reserves); the reward model's weights and scoring
activations. GPUs are assigned as `pipeline.placement.pack` assigns them, so items sharing a GPU add up.
Activations are estimated at (8 x hidden + 4 x intermediate) values per token and layer: the tensors
a transformer block keeps for backward (projections, norms, the gated MLP's three intermediates).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from pipeline.layout import Layout
from pipeline.placement import Request, gpu_requests, pack
from policies.known_models import config_dtype, model_config
from rl.config import SHARDED_STRATEGIES, ConfigError

GiB = 2**30
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
CUDA_CONTEXT = int(1.5 * GiB)  # CUDA context, cuBLAS workspaces, allocator slack: per process on a GPU
DEFAULT_TEXT_TOKENS = 256  # prompt text, without its images
PIXELS_PER_TOKEN = 28 * 28  # Qwen2-VL family: 14-px patches merged 2 x 2 into one LLM token


@dataclass(frozen=True)
class Shape:
    """What memory depends on in a (vision-)language model."""

    params: int
    vision_params: int
    layers: int
    hidden: int
    intermediate: int
    kv_heads: int
    head_dim: int
    vocab: int
    vision_layers: int = 0
    vision_hidden: int = 0
    vision_intermediate: int = 0
    dtype: str | None = None  # what the checkpoint stores
    linear_shapes: tuple[tuple[str, int, int], ...] = ()  # (name, in, out) of every nn.Linear: LoRA sizing


def shape_of(config: Any, backbone_only: bool = False) -> Shape:
    """Count a config's parameters on the meta device (exact, no memory)."""
    import torch
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText

    vision = getattr(config, "vision_config", None)
    auto = AutoModel if backbone_only else AutoModelForImageTextToText if vision is not None else AutoModelForCausalLM
    with torch.device("meta"):
        model = auto.from_config(config)
    inner = getattr(model, "model", model)
    tower = getattr(inner, "visual", None) or getattr(model, "visual", None)
    text = getattr(config, "text_config", None) or config
    return Shape(
        params=sum(p.numel() for p in model.parameters()),
        vision_params=sum(p.numel() for p in tower.parameters()) if tower is not None else 0,
        layers=text.num_hidden_layers,
        hidden=text.hidden_size,
        intermediate=text.intermediate_size,
        kv_heads=text.num_key_value_heads,
        head_dim=getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads,
        vocab=text.vocab_size,
        vision_layers=getattr(vision, "depth", 0) if vision is not None else 0,
        vision_hidden=getattr(vision, "hidden_size", 0) if vision is not None else 0,
        vision_intermediate=getattr(vision, "intermediate_size", 0) if vision is not None else 0,
        dtype=config_dtype(config),
        linear_shapes=tuple(
            (n, m.in_features, m.out_features) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
        ),
    )


@dataclass
class Item:
    name: str
    bytes: int
    knob: str  # the setting that shrinks it

    @property
    def gib(self) -> float:
        return self.bytes / GiB


@dataclass
class GPUPlan:
    index: int
    occupants: list[str]
    capacity: int  # bytes
    items: list[Item] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(i.bytes for i in self.items)

    @property
    def fits(self) -> bool:
        return self.total <= self.capacity


@dataclass
class Workload:
    """Token counts of one step."""

    prompt_tokens: int  # text + image tokens of one prompt
    image_patches: int  # vision-tower patches of one prompt's images
    completion_tokens: int
    micro_batch: int  # rollouts per learner forward/backward
    rollouts_per_step: int  # rollouts generated for one optimizer step
    group: int  # samples per prompt (num_generations)


def workload(cfg: Any, args: Any, text_tokens: int = DEFAULT_TEXT_TOKENS, images_per_prompt: int = 1) -> Workload:
    """`cfg`: a GRPORecipeConfig; `args`: its GRPOConfig."""
    pixels = cfg.policy.max_pixels or 1003520  # Qwen2.5-VL recipes bound images to 28*28*1280 pixels
    image_tokens = images_per_prompt * math.ceil(pixels / PIXELS_PER_TOKEN)
    return Workload(
        prompt_tokens=text_tokens + image_tokens,
        image_patches=image_tokens * 4,
        completion_tokens=args.max_completion_length,
        micro_batch=args.per_device_train_batch_size,
        rollouts_per_step=args.per_device_train_batch_size
        * args.steps_per_generation
        * cfg.learner.num_workers,  # every worker's rollouts come from the same engines
        group=args.num_generations,
    )


def _lora_params(shape: Shape, lora: dict[str, Any]) -> int:
    targets = lora.get("target_modules") or ["q_proj", "v_proj"]
    targets = [targets] if isinstance(targets, str) else targets
    r = int(lora.get("r", 8))
    return sum(r * (i + o) for name, i, o in shape.linear_shapes if name.rsplit(".", 1)[-1] in targets)


def _block(tokens: int, hidden: int, intermediate: int, nbytes: int) -> int:
    """What one transformer block keeps for backward, for `tokens` tokens."""
    return tokens * (8 * hidden + 4 * intermediate) * nbytes


def learner_items(cfg: Any, args: Any, shape: Shape, load: Workload) -> list[Item]:
    w = BYTES.get(cfg.policy.dtype if cfg.policy.dtype != "auto" else shape.dtype or "bfloat16", 4)
    c = 2 if (args.bf16 or args.fp16) else w  # compute dtype under autocast
    lora = bool(cfg.policy.lora)
    trained = (
        _lora_params(shape, cfg.policy.lora)
        if lora
        else shape.params - (shape.vision_params if cfg.policy.freeze_vision else 0)
    )
    tw = 4 if lora else w  # PEFT keeps adapters in float32
    fewer = "policy.freeze_vision: true or policy.lora (fewer trained weights)"
    batch = (
        "a smaller trainer.per_device_train_batch_size, with trainer.gradient_accumulation_steps raised "
        "to keep the batch"
    )
    b, seq = load.micro_batch, load.prompt_tokens + load.completion_tokens
    per_layer_inputs = shape.layers * b * seq * shape.hidden * c
    if args.gradient_checkpointing:
        text_act = per_layer_inputs + 2 * _block(b * seq, shape.hidden, shape.intermediate, c)
    else:
        text_act = shape.layers * _block(b * seq, shape.hidden, shape.intermediate, c)
    vision_act = 0
    if shape.vision_layers and not cfg.policy.freeze_vision:
        patches = b * load.image_patches
        one = _block(patches, shape.vision_hidden, shape.vision_intermediate, c)
        vision_act = (
            shape.vision_layers * patches * shape.vision_hidden * c + 2 * one
            if args.gradient_checkpointing
            else shape.vision_layers * one
        )
    workers, strategy = cfg.learner.num_workers, cfg.learner.strategy
    shards = workers if workers > 1 and strategy in SHARDED_STRATEGIES else 1
    sharder = "FSDP" if strategy == "fsdp" else "ZeRO-3"
    per = f" (1/{shards}: {sharder} shard)" if shards > 1 else ""
    sharding = strategy if strategy in SHARDED_STRATEGIES else "fsdp"
    more = (
        f" or more learner workers with learner.strategy: {sharding}"
        if strategy in SHARDED_STRATEGIES or workers > 1
        else ""
    )
    # ZeRO-3 under bf16 holds the module itself in bf16 and keeps float32 masters in its optimizer
    # (FSDP2 and DDP train the float32 weights directly under autocast).
    zero3_masters = shards > 1 and strategy == "deepspeed" and c == 2 and not lora
    weights = (
        f"policy weights (1/{shards}: ZeRO-3 shard, the bf16 compute copy)" if zero3_masters else f"policy weights{per}"
    )
    items = [
        Item(
            weights,
            (shape.params * (c if zero3_masters else w) + (trained * tw if lora else 0)) // shards,
            f"policy.lora (a frozen base){more}",
        ),
        *(
            [Item(f"float32 master weights, kept by the optimizer{per}", trained * 4 // shards, fewer + more)]
            if zero3_masters
            else []
        ),
        Item(f"gradients{per}", trained * tw // shards, fewer + more),
        Item(f"AdamW state (2 per trained weight){per}", 2 * trained * tw // shards, fewer + more),
        Item(
            f"activations (micro-batch {b} x {seq} tokens"
            f"{', gradient checkpointing' if args.gradient_checkpointing else ''})",
            text_act + vision_act,
            f"trainer.gradient_checkpointing: true, or {batch}",
        ),
        # TRL keeps the completion's logits [B, T, V] (compute dtype), divides them by the temperature
        # (a copy), and log-softmaxes them in fp32 for the log-probabilities and the entropy.
        Item(
            f"completion logits ({b} x {load.completion_tokens} x {shape.vocab} vocabulary)",
            b * load.completion_tokens * shape.vocab * (2 * c + 4),
            f"{batch}, or trainer.max_completion_length",
        ),
    ]
    if args.beta > 0 and not lora:
        items.append(
            Item(f"reference model (beta > 0){per}", shape.params * w // shards, "trainer.beta: 0, or policy.lora")
        )
    if shards > 1:
        # FSDP gathers one unit (a decoder layer, or the embedding) to compute, and prefetches the next;
        # ZeRO-3 gathers the parameters of the module computing and prefetches about as much.
        layer = (shape.params - shape.vision_params - shape.vocab * shape.hidden) // max(1, shape.layers)
        items.append(
            Item(
                f"{sharder}: gathered {'units' if strategy == 'fsdp' else 'parameters'} "
                "(the one computing and the one prefetched)",
                2 * max(layer, shape.vocab * shape.hidden) * c,
                "more learner workers do not shrink it",
            )
        )
    elif workers > 1:
        items.append(
            Item(
                "DDP gradient buckets (a second copy of the gradients)",
                trained * tw,
                "learner.strategy: fsdp or deepspeed (shards instead of copying)",
            )
        )
    if Layout.of(cfg).rollout_actors and cfg.rollout.weight_sync != "object_store":
        sent = shape.params * BYTES.get(cfg.rollout.dtype or cfg.policy.dtype, 2)  # a smaller policy: its size
        items.append(
            Item(
                "weight sync: one staging bucket (cast weights on their way to the engines)",
                min(int(cfg.rollout.bucket_mb * 2**20), sent),
                "rollout.bucket_mb",
            )
        )
    return items


def rollout_items(cfg: Any, shape: Shape, load: Workload, capacity: int) -> list[Item]:
    ew = BYTES.get(cfg.rollout.dtype or cfg.policy.dtype, 2)
    if cfg.rollout.backend == "vllm":
        kv_bytes = cfg.rollout.vllm.get("kv_cache_memory_bytes")
        if kv_bytes is not None:  # a fixed KV cache: vLLM then ignores gpu_memory_utilization for its size
            return [
                Item("vLLM engine weights", shape.params * ew, "rollout.dtype: bfloat16"),
                Item("vLLM KV cache (kv_cache_memory_bytes)", int(kv_bytes), "rollout.vllm.kv_cache_memory_bytes"),
            ]
        util = float(cfg.rollout.vllm.get("gpu_memory_utilization", 0.9))
        return [
            Item(
                f"vLLM engine (gpu_memory_utilization {util:g} of the GPU: weights + KV cache)",
                int(util * capacity),
                "rollout.vllm.gpu_memory_utilization",
            )
        ]
    prompts = math.ceil(load.rollouts_per_step / load.group / cfg.rollout.actors.num_actors)
    seqs = prompts * load.group
    seq = load.prompt_tokens + load.completion_tokens
    fewer = "more rollout.actors.num_actors (fewer prompts each) or trainer.max_completion_length"
    return [
        Item("rollout engine weights", shape.params * ew, "rollout.dtype: bfloat16"),
        Item(
            f"KV cache ({seqs} sequences x {seq} tokens)",
            seqs * seq * shape.layers * 2 * shape.kv_heads * shape.head_dim * ew,
            fewer,
        ),
        Item("sampling logits and log-probabilities (one step)", seqs * shape.vocab * (ew + 8), fewer),
    ]


def colocated_items(cfg: Any, shape: Shape, load: Workload, learner: list[Item]) -> list[Item]:
    """A colocated engine (pipeline/colocated.py) shares the learner's weights; its KV cache and sampling
    logits exist only while it generates, before the learner's forward: what they need beyond the
    learner's activations and logits (freed by then) is what they add to the peak."""
    ew = BYTES.get(cfg.rollout.dtype or cfg.policy.dtype, 2)
    seqs, seq = load.rollouts_per_step, load.prompt_tokens + load.completion_tokens
    generation = seqs * seq * shape.layers * 2 * shape.kv_heads * shape.head_dim * ew + seqs * shape.vocab * (ew + 8)
    transient = sum(i.bytes for i in learner if i.name.startswith(("activations", "completion logits")))
    return [
        Item(
            f"colocated generation beyond the learner's activations (KV cache of {seqs} x {seq} tokens, "
            "sampling logits)",
            max(0, generation - transient),
            "trainer.max_completion_length, or fewer rollouts per step (trainer.steps_per_generation)",
        )
    ]


def reward_model_items(cfg: Any, shape: Shape, load: Workload) -> list[Item]:
    w = BYTES.get(shape.dtype or "bfloat16", 2)
    tokens = cfg.reward.model.batch_size * (load.prompt_tokens + load.completion_tokens)
    return [
        Item("reward model weights", shape.params * w, "reward.actors.model.num_gpus: 1 (a GPU of its own)"),
        Item(
            f"scoring activations (batch {cfg.reward.model.batch_size})",
            tokens * 2 * shape.hidden * w + _block(tokens, shape.hidden, shape.intermediate, w),
            "reward.model.batch_size",
        ),
    ]


def judge_items(cfg: Any, shape: Shape, load: Workload, capacity: int) -> list[Item]:
    """A generative judge: its weights (LM head included) and what writing a batch of verdicts needs (the
    KV cache of its prompts: the question, the completion and the reference, plus what it writes; one
    step's logits), or, on vLLM, the GPU share vLLM reserves."""
    judge = cfg.reward.judge
    if judge.backend == "vllm":
        util = float(judge.vllm.get("gpu_memory_utilization", 0.9))
        return [
            Item(
                f"vLLM judge (gpu_memory_utilization {util:g} of the GPU: weights + KV cache)",
                int(util * capacity),
                "reward.judge.vllm.gpu_memory_utilization",
            )
        ]
    w = BYTES.get(shape.dtype or "bfloat16", 2)
    seq = load.prompt_tokens + 2 * load.completion_tokens + JUDGE_TEMPLATE_TOKENS + judge.max_tokens
    seqs = judge.batch_size
    return [
        Item("judge weights", shape.params * w, "reward.actors.judge.num_gpus: 1 (a GPU of its own)"),
        Item(
            f"judge KV cache ({seqs} prompts x {seq} tokens)",
            seqs * seq * shape.layers * 2 * shape.kv_heads * shape.head_dim * w,
            "reward.judge.batch_size",
        ),
        Item("judge logits (one step)", seqs * shape.vocab * (w + 8), "reward.judge.batch_size"),
    ]


def plan(
    cfg: Any,
    args: Any,
    policy: Shape,
    reward: Shape | None,
    num_gpus: int,
    capacity: int,
    load: Workload,
    judge: Shape | None = None,
) -> list[GPUPlan]:
    """Per-GPU memory of `cfg` on `num_gpus` GPUs of `capacity` bytes each (`reward`: the scalar reward
    model's shape; `judge`: the generative judge's)."""
    requests = gpu_requests(cfg, num_gpus)
    placed = pack(requests, num_gpus)
    layout = Layout.of(cfg)
    parts: dict[str, list[Item]] = {}
    for r in requests:
        kind = r.who.split(" ")[0]
        if kind == "learner":
            items = learner_items(cfg, args, policy, load)
            if layout.colocate:
                items += colocated_items(cfg, policy, load, items)
            if reward is not None and layout.in_learner("model", cfg):
                items += reward_model_items(cfg, reward, load)  # scored in the learner's process
            if judge is not None and layout.in_learner("judge", cfg):
                items += judge_items(cfg, judge, load, capacity)
        elif kind == "rollout":
            items = rollout_items(cfg, policy, load, capacity)
        elif kind == "judge":
            items = judge_items(cfg, judge, load, capacity) if judge is not None else []
        else:
            items = reward_model_items(cfg, reward, load) if reward is not None else []
        parts[r.who] = items
    plans = []
    for i, occupants in enumerate(placed):
        if not occupants:
            continue
        gpu = GPUPlan(i, [_share(r) for r in occupants], capacity)
        for r in occupants:
            label = r.who if len(occupants) > 1 else ""
            gpu.items += [
                Item(f"{label}: {it.name}" if label else it.name, _per_gpu(it.bytes, r), it.knob) for it in parts[r.who]
            ]
        # vLLM's reservation already counts its process's own overhead.
        processes = sum(1 for r in occupants if not (r.who.startswith("rollout") and cfg.rollout.backend == "vllm"))
        if processes:
            gpu.items.append(
                Item(
                    f"CUDA context and allocator reserve ({processes} process(es))",
                    CUDA_CONTEXT * processes,
                    "fewer processes on this GPU",
                )
            )
        plans.append(gpu)
    return plans


def _share(r: Request) -> str:
    return f"{r.who} ({r.gpus:g} GPU)"


def _per_gpu(nbytes: int, r: Request) -> int:
    """A request of several whole GPUs spreads its memory over them (tensor parallelism, sharding)."""
    return nbytes // max(1, int(r.gpus)) if r.gpus > 1 else nbytes


def check_fits(plans: list[GPUPlan]) -> None:
    """Refuse a plan in which a GPU overflows, naming its largest item and the setting that shrinks it."""
    for gpu in plans:
        if not gpu.fits:
            big = max(gpu.items, key=lambda i: i.bytes)
            raise ConfigError(
                f"GPU {gpu.index} ({', '.join(gpu.occupants)}) would need {gpu.total / GiB:.1f} GiB "
                f"of its {gpu.capacity / GiB:.0f} GiB. The largest item is {big.name}: "
                f"{big.gib:.1f} GiB; to shrink it: {big.knob}. (`brl plan CONFIG` shows every item.)"
            )


def format_plan(plans: list[GPUPlan], header: str) -> str:
    lines = [header]
    for gpu in plans:
        lines.append(f"\nGPU {gpu.index}: {', '.join(gpu.occupants)}")
        lines += [f"  {it.gib:8.2f} GiB  {it.name}" for it in gpu.items]
        verdict = (
            f"fits, {(gpu.capacity - gpu.total) / GiB:.1f} GiB free"
            if gpu.fits
            else f"DOES NOT FIT, {(gpu.total - gpu.capacity) / GiB:.1f} GiB over"
        )
        lines.append(f"  {gpu.total / GiB:8.2f} GiB  total of {gpu.capacity / GiB:.0f} GiB: {verdict}")
    if not plans:
        lines.append("\nno GPU is asked for (a CPU run)")
    return "\n".join(lines)


ASSUMED_REWARD_MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"  # the paper's BaseReward backbone


ASSUMED_JUDGE = "yifanzhang114/R1-Reward"  # the paper's generative reward model (a Qwen2.5-VL-7B)
JUDGE_TEMPLATE_TOKENS = 256  # R1-Reward's prompt around the question and the two responses


def judge_shape(cfg: Any) -> tuple[Shape | None, str]:
    """The generative judge's shape and where it came from (None when the scheme has no judge): its
    checkpoint (a local one, or a hub id known offline), else R1-Reward's."""
    from pathlib import Path

    if "judge" not in cfg.reward.components():
        return None, "no judge"
    path = cfg.reward.judge.path
    if path and ((Path(path) / "config.json").is_file() or not Path(path).is_absolute()):
        try:
            return shape_of(model_config(path)), path
        except ValueError:  # a hub id neither cached nor known offline
            pass
    assumed = f"{ASSUMED_JUDGE} assumed ({path or 'reward.judge.path'} unknown here)"
    return shape_of(model_config(ASSUMED_JUDGE)), assumed


def reward_shape(cfg: Any, override: str | None = None) -> tuple[Shape | None, str]:
    """The reward model's shape and where it came from (None when the scheme has no reward model).

    Its checkpoint (or `override`), else, for a checkpoint not trained yet, the paper's backbone."""

    if "model" not in cfg.reward.components():
        return None, "no reward model"
    path = override or (cfg.reward.model.paths[0] if cfg.reward.model.paths else None)
    if path:
        try:  # a local checkpoint, the hub cache, or a published model whose shape is known offline
            return shape_of(model_config(path), backbone_only=True), path
        except ValueError:
            if override:
                raise
    return shape_of(
        model_config(ASSUMED_REWARD_MODEL), backbone_only=True
    ), f"{ASSUMED_REWARD_MODEL} assumed ({path or 'reward.model.paths'} is not there yet)"


def fewest_gpus(cfg: Any) -> int:
    """The fewest GPUs the config's requests pack into (what a config 'names')."""
    for n in range(1, 1025):
        try:
            pack(gpu_requests(cfg, n), n)
            return n
        except ConfigError:
            continue
    raise ConfigError("the config asks for more than 1024 GPUs")


def plan_for(
    cfg: Any,
    args: Any,
    num_gpus: int,
    capacity: int,
    reward_model: str | None = None,
    text_tokens: int = DEFAULT_TEXT_TOKENS,
    images_per_prompt: int = 1,
) -> tuple[list[GPUPlan], str]:
    """The per-GPU plan of a GRPO config and a header describing what it assumed."""
    policy = shape_of(model_config(cfg.policy.path, cfg.policy.trust_remote_code))
    reward, reward_from = reward_shape(cfg, reward_model)
    judge, judge_from = judge_shape(cfg)
    load = workload(cfg, args, text_tokens, images_per_prompt)
    plans = plan(cfg, args, policy, reward, num_gpus, capacity, load, judge)
    trained = (
        "LoRA adapter"
        if cfg.policy.lora
        else f"{(policy.params - (policy.vision_params if cfg.policy.freeze_vision else 0)) / 1e9:.2f}B trained"
    )
    header = (
        f"{num_gpus} GPU(s) of {capacity / GiB:.0f} GiB. Policy {cfg.policy.path}: {policy.params / 1e9:.2f}B "
        f"parameters ({policy.vision_params / 1e9:.2f}B vision), {trained}, {cfg.policy.dtype} weights, "
        f"{'bf16' if args.bf16 else 'fp16' if args.fp16 else cfg.policy.dtype} compute. Reward model: "
        f"{reward_from}{f' ({reward.params / 1e9:.2f}B)' if reward else ''}"
        f"{f'. Judge: {judge_from} ({judge.params / 1e9:.2f}B)' if judge else ''}. A step: "
        f"{load.rollouts_per_step} rollouts ({load.rollouts_per_step // load.group} prompts x {load.group}), "
        f"{load.prompt_tokens} prompt tokens ({text_tokens} text + {images_per_prompt} image(s)), "
        f"{load.completion_tokens} completion tokens, micro-batch {load.micro_batch}."
    )
    return plans, header
