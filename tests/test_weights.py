"""Packing state dicts for the object store: lossless for every dtype a policy uses."""

import torch

from policies.weights import PackedState, as_tensors, pack_state


def test_pack_round_trip_is_bit_exact_for_every_dtype():
    torch.manual_seed(0)
    state = {"w32": torch.randn(3, 4), "wbf16": torch.randn(5).to(torch.bfloat16), "w16": torch.randn(2).half(),
             "steps": torch.arange(4), "mask": torch.tensor([True, False]), "t": torch.randn(4, 3).t()}
    packed = pack_state(state)
    assert isinstance(packed, PackedState) and all(type(a).__module__ == "numpy" for a, _ in packed.values())
    back = as_tensors(packed)
    for name, tensor in state.items():
        assert back[name].dtype == tensor.dtype and torch.equal(back[name], tensor), name
    assert as_tensors(state) is state  # plain tensors pass through
