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
from pipeline.weight_sync import Location, check_transport, choose_weight_sync
from pipeline.weight_sync.export import PolicyWeights, Staging, aligned, as_weights, bucket_bytes_for
from pipeline.weight_sync.shared_memory import SharedMemorySync, SharedTensors


def test_auto_picks_shared_memory_on_one_device_broadcast_between_gpus_else_the_object_store():
    cpu = Location("node-a")
    assert choose_weight_sync(cpu, [Location("node-a"), Location("node-a")]) == "shared_memory"  # CPU, one node
    assert choose_weight_sync(cpu, [Location("node-b")]) == "object_store"  # CPU, another node
    gpu0 = Location("node-a", "GPU-0")
    assert choose_weight_sync(gpu0, [Location("node-a", "GPU-0")]) == "shared_memory"  # colocated: CUDA IPC
    assert choose_weight_sync(gpu0, [Location("node-a", "GPU-0"), Location("node-a", "GPU-1")]) == "broadcast"
    assert choose_weight_sync(gpu0, [Location("node-b", "GPU-7")]) == "broadcast"  # NCCL across nodes
    assert choose_weight_sync(gpu0, [Location("node-a")]) == "object_store"  # a CPU actor beside a GPU learner
    assert choose_weight_sync(cpu, [Location("node-a", "GPU-0")]) == "object_store"


def test_a_config_naming_two_transports_or_an_unknown_one_is_refused():
    check_transport("auto", "gloo", "vllm")
    with pytest.raises(ValueError, match="leave weight_sync at auto"):
        check_transport("broadcast", "nccl", "vllm")
    with pytest.raises(ValueError, match="rollout.weight_sync must be one of"):
        check_transport("nvlink", None, "hf")


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
    assert len(cast) > 1 and [n for b in cast for n in b.handles] == list(model.state_dict())
    plain = list(sync.buckets(as_weights({"x": torch.ones(2)})))  # a dict's tensors are not the learner's: staged
    staging = share_cpu_storage(sync._staging[torch.device("cpu")].buffer)[1]
    assert plain[0].handles["x"][2] == staging


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
