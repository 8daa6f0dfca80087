"""Block expansion (policies/expansion.py): a deeper backbone that starts out computing what the original did."""

import pytest
import torch

from policies.expansion import decoder_layers, expand_decoder
from policies.loading import load_policy, load_processor
from reward.model import BaseRewardModel, HeadConfig
from reward.train import PairCollator, bt_loss


def _pairs(shapes_small, n=4):
    return [
        {"prompt": r["prompt"], "images": r["images"], "chosen": r["answer"], "rejected": "a blue square"}
        for r in shapes_small[0].select(range(n))
    ]


def test_an_expanded_reward_model_scores_exactly_as_before_and_reloads_deeper(tmp_path, tiny_vl, shapes_small):
    rm = BaseRewardModel.from_backbone(tiny_vl, HeadConfig(), seed=0).eval()
    batch = PairCollator(load_processor(tiny_vl))(_pairs(shapes_small))
    with torch.no_grad():
        before = rm(**batch)
    depth = len(decoder_layers(rm.backbone))
    assert expand_decoder(rm.backbone, 2) == depth + 2 == rm.backbone.config.text_config.num_hidden_layers
    assert len(rm.backbone.config.text_config.layer_types) == depth + 2
    with torch.no_grad():
        assert torch.equal(rm(**batch), before)

    reloaded = BaseRewardModel.from_pretrained(rm.save_pretrained(tmp_path / "rm", load_processor(tiny_vl))).eval()
    assert len(decoder_layers(reloaded.backbone)) == depth + 2
    with torch.no_grad():
        assert torch.equal(reloaded(**batch), before)


def test_the_new_layers_learn(tiny_vl, shapes_small):
    """Zero output projections must not be a dead end: one step of the Bradley-Terry loss moves them, and
    then the scores differ from the original backbone's."""
    rm = BaseRewardModel.from_backbone(tiny_vl, HeadConfig(), seed=0)
    expand_decoder(rm.backbone, 1)
    new = decoder_layers(rm.backbone)[-1]
    batch = PairCollator(load_processor(tiny_vl))(_pairs(shapes_small))
    optimizer = torch.optim.SGD(rm.parameters(), lr=1e-1)
    with torch.no_grad():
        before = rm(**batch)
    bt_loss(*rm(**batch).chunk(2)).backward()
    assert new.self_attn.o_proj.weight.grad.abs().sum() > 0 and new.mlp.down_proj.weight.grad.abs().sum() > 0
    optimizer.step()
    assert new.self_attn.o_proj.weight.abs().sum() > 0
    with torch.no_grad():
        assert not torch.allclose(rm(**batch), before)


def test_a_generative_backbone_and_a_text_only_one_expand_with_unchanged_logits(tiny_vl, tiny_lm, shapes_small):
    vl = load_policy(tiny_vl).eval()
    batch = PairCollator(load_processor(tiny_vl))(_pairs(shapes_small, 2))
    with torch.no_grad():
        before = vl(**batch).logits
        expand_decoder(vl, 2)
        assert torch.equal(vl(**batch).logits, before)

    lm = load_policy(tiny_lm).eval()
    ids = torch.tensor([[1, 7, 9, 11, 13]])
    with torch.no_grad():
        before = lm(input_ids=ids).logits
        expand_decoder(lm, 1)
        assert torch.equal(lm(input_ids=ids).logits, before)
    assert lm.config.num_hidden_layers == len(decoder_layers(lm))


def test_bad_expansions_are_refused():
    from rl.config import ConfigError, RMRecipeConfig, load_config

    with pytest.raises(ValueError, match="one stack of decoder layers"):
        expand_decoder(torch.nn.Linear(2, 2), 1)
    with pytest.raises(ConfigError, match="backbone.extra_layers"):
        load_config(RMRecipeConfig, None, ["backbone.extra_layers=-1"])
