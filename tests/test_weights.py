"""Packing state dicts for the object store: lossless for every dtype a policy uses."""

import pickle

import torch

from pipeline.weight_sync.export import PackedState


def test_pack_round_trip_is_bit_exact_for_every_dtype():
    torch.manual_seed(0)
    state = {
        "w32": torch.randn(3, 4),
        "wbf16": torch.randn(5).to(torch.bfloat16),
        "w16": torch.randn(2).half(),
        "steps": torch.arange(4),
        "mask": torch.tensor([True, False]),
        "t": torch.randn(4, 3).t(),
    }
    packed = PackedState.pack(state)
    assert all(type(array).__module__ == "numpy" for array, _ in packed._arrays.values())  # what Ray ships zero-copy
    back = pickle.loads(pickle.dumps(packed, protocol=5))  # as an actor receives it
    assert list(back) == list(state) and len(back) == len(state)
    for name, tensor in back.items():
        assert tensor.dtype == state[name].dtype and torch.equal(tensor, state[name]), name
