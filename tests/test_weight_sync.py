"""Weight-sync logic without Ray: which transport reaches which actors, what a sync sends (PolicyWeights:
lazy, cast, LoRA merged), staging buckets, and shared-memory handles rebuilt in another process. The
transports themselves run against real actors in test_ray_pipeline.py (greedy equality per path)."""

from __future__ import annotations

import pickle
import subprocess
import sys

import pytest
import torch

from adapters.torch import share_cpu_storage
from pipeline.weight_sync import Location, choose_weight_sync
from pipeline.weight_sync.export import PolicyWeights, Staging, aligned, as_weights, bucket_bytes_for
from pipeline.weight_sync.shared_memory import SharedMemorySync, SharedTensors


def test_auto_picks_shared_memory_on_one_device_broadcast_between_gpus_else_the_object_store():
    cpu = Location("node-a")
    assert choose_weight_sync(cpu, [Location("node-a"), Location("node-a")]) == "shared_memory"  # CPU, one node
    assert choose_weight_sync(cpu, [Location("node-b")]) == "object_store"  # CPU, another node
    gpu0 = Location("node-a", "GPU-0")
    assert choose_weight_sync(gpu0, [Location("node-a", "GPU-0")]) == "shared_memory"  # colocated: CUDA IPC
    assert choose_weight_sync(gpu0, [Location("node-a", "GPU-1"), Location("node-a", "GPU-2")]) == "broadcast"
    # An actor on the learner's GPU (fractions), or two actors on one GPU: NCCL refuses two ranks on one device.
    assert choose_weight_sync(gpu0, [Location("node-a", "GPU-0"), Location("node-a", "GPU-1")]) == "object_store"
    assert choose_weight_sync(gpu0, [Location("node-a", "GPU-1"), Location("node-a", "GPU-1")]) == "object_store"
    assert choose_weight_sync(gpu0, [Location("node-b", "GPU-7")]) == "broadcast"  # NCCL across nodes
    assert choose_weight_sync(gpu0, [Location("node-a")]) == "object_store"  # a CPU actor beside a GPU learner
    assert choose_weight_sync(cpu, [Location("node-a", "GPU-0")]) == "object_store"


def test_one_key_names_every_transport_and_the_old_spelling_is_refused_with_the_new_one():
    from recipes import grpo
    from rl.config import ConfigError, RolloutConfig

    assert RolloutConfig(backend="vllm", weight_sync="vllm_gloo").vllm_transfer == "gloo"
    assert RolloutConfig(weight_sync="broadcast").vllm_transfer is None
    with pytest.raises(ConfigError, match="vllm_nccl is vLLM's weight-transfer engine: it needs rollout.backend=vllm"):
        RolloutConfig(backend="hf", weight_sync="vllm_nccl")
    with pytest.raises(ConfigError, match="rollout.weight_sync must be one of"):
        RolloutConfig(weight_sync="nvlink")
    with pytest.raises(ConfigError, match="merged into rollout.weight_sync: write weight_sync: vllm_nccl"):
        grpo.load(None, ["rollout.backend=vllm", "rollout.weight_transfer=nccl"])


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))


def test_policy_weights_are_the_models_own_tensors_until_a_cast_is_asked_for():
    model = _model()
    weights = PolicyWeights(model)
    assert list(weights) == list(model.state_dict()) and weights.persistent("0.weight")
    assert weights["0.weight"].data_ptr() == model[0].weight.data_ptr()  # no copy
    half = PolicyWeights(model, torch.bfloat16)
    assert half["0.weight"].dtype == torch.bfloat16 and torch.equal(half["0.weight"], model[0].weight.bfloat16())
    assert half.source("0.weight").dtype == torch.float32  # transports cast while copying, from the source
    assert [m[1] for m in half.meta()] == [torch.bfloat16] * 4


def test_lora_weights_are_merged_per_tensor_and_not_persistent():
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(_model(), peft.LoraConfig(r=2, target_modules=["0"], init_lora_weights=False))
    weights = PolicyWeights(model)
    assert set(weights) == {"0.weight", "0.bias", "2.weight", "2.bias"}  # base names, no adapters
    assert not weights.persistent("0.weight") and weights.persistent("2.weight")
    merged = weights["0.weight"]
    layer = model.base_model.model[0]
    assert torch.allclose(merged, layer.base_layer.weight + layer.get_delta_weight("default"))
    assert not torch.equal(merged, layer.base_layer.weight)


def test_staging_packs_aligned_views_and_casts_while_copying():
    staging = Staging(1024, torch.device("cpu"))
    a = staging.put(torch.arange(3, dtype=torch.float32), torch.bfloat16)
    b = staging.put(torch.ones(2, 2), torch.float32)
    assert a.dtype == torch.bfloat16 and a.tolist() == [0.0, 1.0, 2.0]
    assert b.data_ptr() - staging.buffer.data_ptr() == 256 and staging.used == 256 + 16
    assert staging.fits(1024 - 512) and not staging.fits(1024 - 256 - 16 + 1)


def test_shared_memory_buckets_share_the_learners_tensors_in_place_and_stage_the_rest():
    model = _model()
    sync = SharedMemorySync(calls=None, bucket_bytes=64)  # 64 bytes: the cast tensors take a bucket each
    same = list(sync.buckets(PolicyWeights(model)))
    assert len(same) == 1 and model[0].weight.is_shared()  # moved to shared memory in place, still the model's
    cast = list(sync.buckets(PolicyWeights(model, torch.bfloat16)))
    assert len(cast) > 1 and [n for b in cast for n in b.views] == list(model.state_dict())
    plain = list(sync.buckets(as_weights({"x": torch.ones(2)})))  # a dict's tensors are not the learner's: staged
    staging = share_cpu_storage(sync._staging[torch.device("cpu")].buffer)[1]
    assert plain[0].storages[plain[0].views["x"][0]][2] == staging


def test_a_staging_bucket_is_never_larger_than_the_policy_it_stages():
    """The default bucket is 512 MiB; a small policy gets a buffer of its own size, not a 512 MiB file in
    /dev/shm (or on the GPU) for as long as the run lasts."""
    model = _model()
    weights = PolicyWeights(model, torch.bfloat16)
    policy_bytes = sum(aligned(t.numel() * 2) for t in weights.values())
    assert bucket_bytes_for(weights, 512 << 20) == policy_bytes
    assert bucket_bytes_for(weights, 64) == 64  # a policy larger than the bucket: the bucket's size
    sync = SharedMemorySync(calls=None)  # the default bucket
    buckets = list(sync.buckets(weights))
    assert len(buckets) == 1 and sync._staging[torch.device("cpu")].nbytes == policy_bytes


def test_each_storage_is_shared_once_per_session_and_opened_once_per_receiver(monkeypatch):
    """Sync after sync, the sender names the same storages (the learner's tensors, its staging buffer):
    it shares each once per session and a receiver opens each once, while every sync still reads the
    values of that sync. (Finding 9 of the GPU reading: per tensor per sync, a CUDA IPC handle is made,
    its memory registered and mapped again in every actor; these lines are the same on CUDA, where
    only `_opener` and `_open` differ: tests/gpu/ runs them there.)"""
    from pipeline.weight_sync import shared_memory

    shared, opened = [], []
    share, attach = shared_memory.share_cpu_storage, shared_memory.attach_cpu_storage
    monkeypatch.setattr(shared_memory, "share_cpu_storage", lambda t: shared.append(1) or share(t))
    monkeypatch.setattr(shared_memory, "attach_cpu_storage", lambda *a: opened.append(a[1]) or attach(*a))
    model = _model()
    sync = SharedMemorySync(calls=None, bucket_bytes=64)  # the cast weights: several buckets through one buffer
    mapped: dict = {}
    for step in range(3):
        with torch.no_grad():
            model[0].weight.add_(1.0)  # the optimizer's in-place step
        for weights in (PolicyWeights(model), PolicyWeights(model, torch.bfloat16)):
            for bucket in sync.buckets(weights):
                got = pickle.loads(pickle.dumps(bucket)).attach(mapped)
                assert all(torch.equal(got[k], weights[k]) and got[k].dtype == weights[k].dtype for k in got), step
    storages = len(list(model.parameters())) + 1  # each parameter's own storage, and the staging buffer
    assert len(shared) == storages and sorted(opened) == sorted(set(opened)) and len(opened) == storages


_READER = """
import pickle, sys, torch
shared = pickle.load(sys.stdin.buffer)
torch.save({name: t.clone() for name, t in shared.attach({}).items()}, sys.argv[1])
"""


def test_another_process_reads_the_tensors_a_shared_memory_bucket_names(tmp_path):
    """What an actor sees: the pickled handles, a few bytes each, rebuilt over the sender's memory."""
    model = _model()
    sync = SharedMemorySync(calls=None, bucket_bytes=1 << 20)
    for weights in (PolicyWeights(model), PolicyWeights(model, torch.bfloat16)):
        bucket = next(iter(sync.buckets(weights)))
        blob = pickle.dumps(bucket)
        assert isinstance(bucket, SharedTensors) and len(blob) < 2000
        out = tmp_path / "read.pt"
        subprocess.run([sys.executable, "-c", _READER, str(out)], input=blob, check=True)
        read = torch.load(out)
        assert read.keys() == weights.keys()
        assert all(torch.equal(read[k], weights[k]) and read[k].dtype == weights[k].dtype for k in read)


def test_a_bucket_never_splits_a_layer_an_engine_fuses():
    """vLLM fuses q/k/v and gate/up into one layer and reloads each bucket in its own session; a fused layer
    loaded in part would be materialised with uninitialised memory for the rest. Buckets far smaller than
    a layer still keep each fused layer's parameters together, in the state dict's order."""
    from pipeline.weight_sync.export import fused_layer, fused_runs

    names = [
        f"model.layers.{i}.{part}"
        for i in range(2)
        for part in (
            "self_attn.q_proj.weight",
            "self_attn.q_proj.bias",
            "self_attn.k_proj.weight",
            "self_attn.v_proj.weight",
            "mlp.gate_proj.weight",
            "mlp.up_proj.weight",
            "mlp.down_proj.weight",
        )
    ]
    state = {name: torch.randn(8, 8) for name in [*names, "lm_head.weight"]}
    assert fused_layer("model.layers.3.self_attn.q_proj.weight") == "model.layers.3.self_attn"
    runs = [run for run, _ in fused_runs(as_weights(state))]
    assert [len(r) for r in runs] == [4, 3, 4, 3, 1] and sum(runs, []) == list(state)
    sync = SharedMemorySync(calls=None, bucket_bytes=300)  # one 8x8 float32 tensor (256 bytes) per bucket
    seen: dict[str, int] = {}
    buckets = list(sync.buckets(as_weights(state)))
    for i, bucket in enumerate(buckets):
        for name in bucket.views:
            assert seen.setdefault(fused_layer(name), i) == i, f"{fused_layer(name)} split across buckets"
    # Each bucket as large as its largest run needs (a layer never waits for a second bucket), small runs
    # sharing one: the last layer's MLP and the head.
    assert [sorted({fused_layer(n) for n in b.views}) for b in buckets][-1] == ["lm_head", "model.layers.1.mlp"]
    assert len(buckets) == 4


def test_a_broadcast_receiver_pins_an_indexed_gpu_even_when_the_engine_says_just_cuda(monkeypatch):
    """torch.cuda.set_device refuses a device without an index (torch/_utils.py `_get_device_index`: the
    same ValueError on a CPU build): engines say "cuda", the receiver asks CUDA which one it is on."""
    from torch._utils import _get_device_index

    from pipeline.weight_sync.receiver import receive_device

    with pytest.raises(ValueError, match="Expected a torch.device with a specified index"):
        _get_device_index(torch.device("cuda"))  # what joining an NCCL group did with the engine's "cuda"
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)  # this actor's one visible GPU
    assert _get_device_index(receive_device("cuda", "nccl")) == 0
    assert receive_device("cuda:1", "nccl") == torch.device("cuda", 1)
    assert receive_device("cuda", "gloo") == torch.device("cpu")  # gloo receives on the CPU


def test_a_broken_round_aborts_its_group_and_a_group_without_abort_is_shut_down():
    """NCCL: dropping a group whose peer died leaves its kernels queued on the learner's stream (the stopping
    run's checkpoint waits behind them until the watchdog kills the process); abort() ends them."""
    from pipeline.weight_sync.collective import abort_group

    calls = []

    class NCCLLike:
        def abort(self):
            calls.append("abort")

        def shutdown(self):
            calls.append("shutdown")

    class GlooLike:
        def abort(self):
            raise RuntimeError("not implemented for this backend")

        def shutdown(self):
            calls.append("gloo shutdown")

    abort_group(NCCLLike())
    abort_group(GlooLike())
    assert calls == ["abort", "gloo shutdown"]
