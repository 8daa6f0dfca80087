"""Weight sync: bytes per second from the learner to rollout actors (Ray object store, the CPU path)
versus a plain in-memory copy of the same tensors on this machine (the physical ceiling).

With --vllm (needs vLLM): into one vLLM engine actor, the two paths side by side, interleaved:
the object store + vLLM's in-place reload, and vLLM's weight-transfer engine (`rollout.weight_transfer`;
gloo here, the CPU twin of the NCCL path).

    python -m benchmarks.weight_sync [--hidden 512] [--layers 8] [--actors 1 2] [--vllm]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from benchmarks.common import best_of, report


def build_model(path: str, hidden: int, layers: int):
    """A text-only Qwen2 of a few tens of millions of parameters (enough bytes to measure)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from policies.tiny import build_tokenizer
    from rl.tasks.shapes import vocabulary_corpus

    tok = build_tokenizer(vocabulary_corpus())
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 3, num_hidden_layers=layers,
                      num_attention_heads=hidden // 64, num_key_value_heads=2, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg).float()
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--vllm", action="store_true", help="also time both paths into a vLLM engine actor")
    args = parser.parse_args()

    import ray

    from policies.hf_engine import HFEngine
    from rl.actors import spawn_group
    from rl.config import ActorGroupConfig
    from rl.rollout_pool import RolloutPool

    path = tempfile.mkdtemp()
    model = build_model(path, args.hidden, args.layers)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    nbytes = sum(v.numel() * v.element_size() for v in state.values())

    t_copy = best_of(lambda: {k: v.clone() for k, v in state.items()}, repeats=5)
    rows = [{"path": "in-memory copy (ceiling)", "actors": 0, "seconds": t_copy, "GB_per_s": nbytes / t_copy / 1e9,
             "slowdown_vs_copy": 1.0}]
    ray.init(address="local", num_cpus=max(args.actors) + 1, include_dashboard=False, log_to_driver=False)
    try:
        # A fresh cluster's first syncs are several times slower than the rest (measured: ~5x on
        # this machine, in whichever group came first, warm-up rounds or not: the object store's
        # first use). A long run pays that once; it is reported as its own row, then the groups
        # are timed warm.
        for n, phase in [(args.actors[0], "cold (first syncs of a new cluster)")] + \
                [(n, "warm") for n in args.actors]:
            actors = spawn_group("rollout", HFEngine, {"model": path},
                                 ActorGroupConfig(num_actors=n, num_cpus=1))
            pool = RolloutPool(actors, timeout_s=600)
            version = iter(range(1, 10_000))
            t = best_of(lambda: pool.load_weights(state, next(version)), repeats=5, warmup=1)
            # Each actor receives the full state dict: bytes moved = n * model size.
            rows.append({"path": f"RolloutPool.load_weights (object store), {phase}", "actors": n, "seconds": t,
                         "GB_per_s": n * nbytes / t / 1e9, "slowdown_vs_copy": t / (n * t_copy)})
            for a in actors:
                ray.kill(a)
        if args.vllm:
            rows += vllm_rows(path, state, nbytes, t_copy)
    finally:
        ray.shutdown()
    report("weight_sync", rows, {"model_bytes": nbytes, "hidden": args.hidden, "layers": args.layers,
                                 "targets": {"slowdown_vs_copy": "<= 3x"}})


def vllm_rows(path: str, state: dict, nbytes: int, t_copy: float, repeats: int = 5) -> list[dict]:
    """One vLLM engine actor (started with the gloo transfer backend), synced both ways in turn."""
    import ray

    from policies.vllm_engine import VLLMEngine
    from rl.actors import spawn_group
    from rl.config import ActorGroupConfig
    from rl.rollout_pool import RolloutPool
    from rl.weight_sync import engine_options

    engine = {"path": path, "dtype": "float32", **engine_options("gloo"),
              "engine_kwargs": {"max_model_len": 512, "enforce_eager": True, "gpu_memory_utilization": 0.15}}
    actors = spawn_group("rollout", VLLMEngine, engine, ActorGroupConfig(num_actors=1, num_cpus=1))
    paths = {"vLLM actor: object store + reload_weights": RolloutPool(actors, timeout_s=600),
             "vLLM actor: weight transfer (gloo)": RolloutPool(actors, timeout_s=600, weight_transfer="gloo")}
    times: dict[str, list[float]] = {name: [] for name in paths}
    try:
        for round_ in range(repeats + 1):  # round 0 warms both paths up (and forms the gloo group)
            for name, pool in paths.items():
                start = time.perf_counter()
                pool.load_weights(state, round_ + 1)
                if round_:
                    times[name].append(time.perf_counter() - start)
    finally:
        paths["vLLM actor: weight transfer (gloo)"].close()
        for a in actors:
            ray.kill(a)
    rows = []
    for name, ts in times.items():
        t = statistics.median(ts)
        rows.append({"path": name, "actors": 1, "seconds": t, "GB_per_s": nbytes / t / 1e9,
                     "slowdown_vs_copy": t / t_copy})
    return rows


if __name__ == "__main__":
    main()
