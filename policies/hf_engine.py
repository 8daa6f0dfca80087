"""A RolloutEngine on transformers' `generate`: CPU or one GPU, any image-text-to-text model."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from transformers import LogitsProcessor

from policies.chat import images_of, is_vlm_processor, render_prompt, tokenizer_of, vision_token_ids
from policies.rollout_engine import Rollout, RolloutRequest, SamplingParams, indexed_device

log = logging.getLogger(__name__)


class TokenLogprobs(LogitsProcessor):
    """Each generated token's log-probability under softmax(logits / temperature), as TRL computes
    them (over the whole vocabulary, before top-k/top-p and token suppression), streamed.

    A forward hook on the output head keeps the step's log-probabilities [B, V]; at the next step the
    token sampled from them is the last input id, so one step is held at a time. (`generate`'s
    `output_logits=True` keeps every step: [B, T, V] in fp32, 40 GB for 64 rollouts x 1,024 tokens x
    151,936 vocabulary.) Passed to `generate` as a logits processor that leaves the scores alone.
    """

    def __init__(self, head: torch.nn.Module, temperature: float, top_k: int = 0):
        self.temperature = temperature
        self.top_k = top_k
        self.latest: torch.Tensor | None = None  # [B, V] of the step just computed
        self.previous: torch.Tensor | None = None  # [B, V] of the step whose token is being sampled
        self.chosen: list[torch.Tensor] = []  # [B] per generated token
        self.top: list[tuple[torch.Tensor, torch.Tensor]] = []  # (values [B, k], ids [B, k]) per generated token
        self._hook = head.register_forward_hook(self._record)

    def _record(self, module: torch.nn.Module, args: Any, output: torch.Tensor) -> None:
        logits = output[:, -1, :].float()  # [B, V]; prefill computes the last position only, or all
        if self.temperature > 0:
            logits = logits / self.temperature
        self.latest = torch.log_softmax(logits, dim=-1)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.previous is not None:  # input_ids[:, -1] was sampled from `previous`
            self.chosen.append(self.previous.gather(-1, input_ids[:, -1:]).squeeze(-1))
        self.previous = self.latest
        if self.top_k:
            self.top.append(self.previous.topk(self.top_k, dim=-1))  # the distribution this step samples from
        return scores

    def close(self) -> None:
        self._hook.remove()

    def result(self, sequences: torch.Tensor) -> torch.Tensor:
        """[B, T_new] log-probabilities, given the finished sequences (for the last token)."""
        chosen = [*self.chosen, self.previous.gather(-1, sequences[:, -1:]).squeeze(-1)]
        return torch.stack(chosen, dim=1)


class HFEngine:
    """Holds a policy and its processor; generates batched, with per-token log-probabilities.

    `model` is a checkpoint (hub id or local directory: the policy and its processor are loaded
    from it, as a rollout actor does) or a live model (with its `processor`: e.g. the learner's own
    model, for held-out evaluation without a copy)."""

    def __init__(
        self,
        model: torch.nn.Module | str,
        processor: Any = None,
        *,
        dtype: str = "float32",
        device: str | None = None,
        max_pixels: int | None = None,
        trust_remote_code: bool = False,
        version: int = 0,
    ):
        if isinstance(model, str):
            from policies.loading import load_policy, load_processor

            processor = load_processor(model, max_pixels, trust_remote_code)
            model = load_policy(model, dtype, trust_remote_code)
            device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        elif processor is None:
            raise ValueError("HFEngine(model=<a live model>) needs its processor")
        if device is not None:  # a live model without one stays where its owner put it
            model = model.to(indexed_device(device))
        self.model = model.eval()
        self.processor = processor
        self.tokenizer = tokenizer_of(processor)
        self.version = version
        self.is_vlm = is_vlm_processor(processor)
        self.suppress = vision_token_ids(processor)

    def _encode(self, requests: list[RolloutRequest]) -> dict[str, torch.Tensor]:
        texts = [render_prompt(self.processor, r.messages) for r in requests]
        if self.is_vlm:
            flat = [img for r in requests for img in images_of(r)]
            inputs = self.processor(
                text=texts, images=flat or None, padding=True, padding_side="left", return_tensors="pt"
            )
        else:
            inputs = self.tokenizer(
                texts, padding=True, padding_side="left", return_tensors="pt", add_special_tokens=False
            )
        return {k: v.to(self.device) for k, v in inputs.items() if isinstance(v, torch.Tensor)}

    @torch.inference_mode()
    def generate(self, requests: list[RolloutRequest], sampling: SamplingParams) -> list[list[Rollout]]:
        if not requests:
            return []
        if sampling.n > 1 and sampling.greedy:
            raise ValueError("n > 1 needs temperature > 0 (greedy decoding gives n identical completions)")
        inputs = self._encode(requests)
        if sampling.seed is not None:  # one stream for the batch: the call's first request's seed
            torch.manual_seed(sampling.seed)
        recorder = (
            TokenLogprobs(self.model.get_output_embeddings(), sampling.temperature, sampling.top_logprobs)
            if sampling.logprobs or sampling.top_logprobs
            else None
        )
        gen_kwargs: dict[str, Any] = dict(
            max_new_tokens=sampling.max_tokens,
            min_new_tokens=sampling.min_tokens or None,
            num_return_sequences=sampling.n,
            do_sample=not sampling.greedy,
            return_dict_in_generate=True,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
            suppress_tokens=self.suppress or None,
            logits_processor=[recorder] if recorder else None,
        )
        if not sampling.greedy:
            gen_kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k or None)
        if sampling.stop:
            gen_kwargs.update(stop_strings=list(sampling.stop), tokenizer=self.tokenizer)
        try:
            out = self.model.generate(**inputs, **gen_kwargs)
        finally:
            if recorder:
                recorder.close()
        prompt_len = inputs["input_ids"].shape[1]
        completions = out.sequences[:, prompt_len:]  # [B*n, T_new]
        token_logps = recorder.result(out.sequences) if recorder else None  # [B*n, T_new]

        results: list[list[Rollout]] = []
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        for i, _ in enumerate(requests):
            mask = inputs["attention_mask"][i].bool()
            prompt_ids = inputs["input_ids"][i][mask].tolist()
            group = []
            for j in range(sampling.n):
                row = i * sampling.n + j
                ids = completions[row].tolist()
                # Keep tokens up to and including EOS. Rows that finished early (EOS elsewhere in the
                # batch, or a stop string) are padded by `generate`: drop that tail.
                end = ids.index(eos) + 1 if eos in ids else len(ids)
                finish = "stop" if eos in ids else "length"
                if finish == "length" and pad != eos:
                    while end > 0 and ids[end - 1] == pad:
                        end -= 1
                    finish = "stop" if end < len(ids) else "length"
                ids = ids[:end]
                text = self.tokenizer.decode(ids, skip_special_tokens=True)
                logps = token_logps[row, :end].tolist() if token_logps is not None and sampling.logprobs else []
                top = (
                    [dict(zip(ids_[row].tolist(), values[row].tolist())) for values, ids_ in recorder.top[:end]]
                    if recorder is not None and sampling.top_logprobs
                    else []
                )
                group.append(Rollout(prompt_ids, ids, logps, text, self.version, finish, top))
            results.append(group)
        return results

    def load_weights(self, named_tensors: Mapping[str, torch.Tensor], version: int) -> None:
        state = self.model.state_dict()
        unknown = [k for k in named_tensors if k not in state]
        if unknown:
            raise KeyError(f"weights for unknown parameters {unknown[:5]} (version {version})")
        with torch.no_grad():
            for name, tensor in named_tensors.items():
                state[name].copy_(tensor.to(state[name].device, state[name].dtype))
        self.version = version

    def loaded_version(self) -> int:
        return self.version

    @property
    def device(self) -> torch.device:
        """Where the model is now: a live model its owner moves (the Trainer puts the learner's on
        `args.device` after a colocated engine was built on it) takes the engine along."""
        return next(self.model.parameters()).device

    def weights_device(self) -> str:
        return str(self.device)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def weight(self, name: str) -> torch.Tensor:
        """One tensor of the engine's weights, on the CPU (checks of a sync without shipping them all)."""
        return self.model.state_dict()[name].cpu()


@torch.no_grad()  # not inference_mode: a sharded (FSDP2) learner's gathered weights must stay ordinary tensors
def completion_logprobs(
    model: torch.nn.Module,
    processor: Any,
    request: RolloutRequest,
    prompt_ids: list[int],
    completion_ids: list[int],
    temperature: float = 1.0,
) -> list[float]:
    """Per-token log-probabilities the given model assigns to a completion (teacher forcing).

    Used to measure the gap between what a rollout engine reported and what the learner computes
    for the same tokens (the mismatch TRL's importance-sampling correction is about)."""
    device = next(model.parameters()).device
    ids = torch.tensor([prompt_ids + completion_ids], device=device)  # [1, T]
    inputs: dict[str, Any] = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    images = images_of(request)
    if images:
        vision = processor.image_processor(images=images, return_tensors="pt")
        inputs.update({k: v.to(device) for k, v in vision.items()})
        image_token = getattr(model.config, "image_token_id", None)
        inputs["mm_token_type_ids"] = (ids == image_token).long()  # transformers 5 Qwen-VL wants it
    logits = model(**inputs).logits[0, len(prompt_ids) - 1 : -1].float()  # [T_completion, V]
    if temperature > 0:
        logits = logits / temperature
    target = torch.tensor(completion_ids, device=device)
    return torch.log_softmax(logits, dim=-1).gather(-1, target[:, None]).squeeze(-1).tolist()
