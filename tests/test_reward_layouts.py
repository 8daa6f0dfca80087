"""Bring-your-own reward models: the published layouts, built tiny and offline, read by the scorer.

- TRL's value-head layout, as Skywork-VL-Reward-7B ships it: a causal-LM checkpoint (here the tiny
  Qwen2.5-VL) beside `value_head.safetensors` holding `v_head.summary.weight` [1, H] and `.bias` [1]
  (the keys LLaMA-Factory writes and TRL's `AutoModelForCausalLMWithValueHead` loads). The reference
  is that wrapper's forward (trl/experimental/ppo/modeling_value_head.py: the head on the causal LM's
  `hidden_states[-1]`) read at the last token, as the model card does: TRL 1.16's wheel no longer ships
  the wrapper, so its three lines are written out here.
- A one-label sequence classifier (a tiny Qwen2ForSequenceClassification, what TRL's RewardTrainer and
  the Skywork-Reward-V2 series are): the reference is transformers' own forward, row by row.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from reward.layouts import layout_of
from reward.scorer import RewardModelScorer
from rl.tasks.shapes import make_shapes_dataset

ROWS = make_shapes_dataset(6, seed=11)
PROMPTS, IMAGES = list(ROWS["prompt"]), [list(x) for x in ROWS["images"]]
ANSWERS = ["red", "It is blue.", "3", "top left", "a red circle in the top left", "square"]


@pytest.fixture(scope="module")
def value_head_rm(tmp_path_factory, tiny_vl) -> str:
    """The tiny Qwen2.5-VL saved as a causal LM plus a value head, in Skywork-VL-Reward's layout."""
    from policies.loading import load_policy, load_processor

    out = tmp_path_factory.mktemp("value-head")
    load_policy(tiny_vl).save_pretrained(out)
    load_processor(tiny_vl).save_pretrained(out)
    torch.manual_seed(3)
    hidden = json.loads((out / "config.json").read_text())["text_config"]["hidden_size"]
    save_file(
        {"v_head.summary.weight": torch.randn(1, hidden) * 0.5, "v_head.summary.bias": torch.tensor([0.25])},
        out / "value_head.safetensors",
    )
    return str(out)


@pytest.fixture(scope="module")
def seq_cls_rm(tmp_path_factory, tiny_lm) -> str:
    """The tiny Qwen2 as a one-label sequence classifier (a text reward model)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path_factory.mktemp("seq-cls")
    config = AutoConfig.from_pretrained(tiny_lm, num_labels=1)
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(4)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


def _conversations(processor, answers):
    from policies.chat import render_conversation

    return [
        render_conversation(processor, RewardModelScorer._conversation(p, a, len(i)))
        for p, a, i in zip(PROMPTS, answers, IMAGES)
    ]


def test_each_layout_is_told_apart_by_its_files_with_a_clear_error_for_none(
    value_head_rm, seq_cls_rm, untrained_rm, tiny_vl, tmp_path
):
    assert [layout_of(p) for p in (untrained_rm, value_head_rm, seq_cls_rm, tiny_vl)] == [
        "basereward",
        "value_head",
        "sequence_classification",
        "generative",
    ]
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        layout_of(str(tmp_path))
    two = tmp_path / "two-labels"
    two.mkdir()
    (two / "config.json").write_text(json.dumps({"architectures": ["Qwen2ForSequenceClassification"], "num_labels": 2}))
    with pytest.raises(ValueError, match="2 labels; a reward model has one"):
        layout_of(str(two))
    from recipes import grpo
    from rl.rewards import resolve_reward_models

    cfg = grpo.load(None, ["reward.scheme=model", f"reward.model.paths=[{tiny_vl}]"])
    with pytest.raises(ValueError, match="is a generative model .* reward.judge.path"):
        resolve_reward_models(cfg.reward)


def test_value_head_scores_equal_trls_value_head_on_the_same_inputs_and_see_the_images(value_head_rm):
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText

    from policies.loading import load_processor

    scorer = RewardModelScorer.from_paths([value_head_rm], batch_size=4, calibrate=False)
    got = scorer(PROMPTS, ANSWERS, images=IMAGES)
    # The reference, row by row: TRL's ValueHead on the causal LM's last hidden state, at the last token.
    processor = load_processor(value_head_rm)
    lm = AutoModelForImageTextToText.from_pretrained(value_head_rm).eval()
    head = load_file(f"{value_head_rm}/value_head.safetensors")
    texts = _conversations(processor, ANSWERS)
    expected = []
    with torch.no_grad():
        for text, images in zip(texts, IMAGES):
            inputs = processor(text=[text], images=images, return_tensors="pt")
            hidden = lm(**inputs, output_hidden_states=True).hidden_states[-1]  # [1, T, H]
            values = hidden @ head["v_head.summary.weight"].T + head["v_head.summary.bias"]  # [1, T, 1]
            expected.append(values[0, inputs["attention_mask"].sum() - 1, 0].item())
    assert got == pytest.approx(expected, abs=1e-4)
    other = scorer(PROMPTS[:1], ANSWERS[:1], images=[[IMAGES[1][0]]])  # the same text, another image
    assert other[0] != pytest.approx(got[0], abs=1e-4)


def test_sequence_classification_scores_equal_transformers_forward(seq_cls_rm):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    scorer = RewardModelScorer.from_paths([seq_cls_rm], batch_size=4, calibrate=False)
    got = scorer(PROMPTS, ANSWERS, images=IMAGES)  # a text model: the images are not its to see
    tokenizer = AutoTokenizer.from_pretrained(seq_cls_rm)
    model = AutoModelForSequenceClassification.from_pretrained(seq_cls_rm).eval()
    with torch.no_grad():
        expected = [
            model(**tokenizer(text, return_tensors="pt", add_special_tokens=False)).logits[0, 0].item()
            for text in _conversations(tokenizer, ANSWERS)
        ]
    assert got == pytest.approx(expected, abs=1e-4)


def test_an_ensemble_of_layouts_averages_standardised_scores(value_head_rm, untrained_rm, seq_cls_rm):
    """The BaseReward ships its statistics; the value head ships none, so its first call's scores give
    them. Image rows go to the two models that see images; the text model gets the image-free row."""
    base = RewardModelScorer.from_paths([untrained_rm], calibrate=False)
    vhead = RewardModelScorer.from_paths([value_head_rm], calibrate=False)
    text = RewardModelScorer.from_paths([seq_cls_rm], calibrate=False)
    ensemble = RewardModelScorer.from_paths([untrained_rm, value_head_rm, seq_cls_rm])
    prompts = [*PROMPTS[:4], "What is 2 + 2?"]  # the last row has no image
    images = [*IMAGES[:4], []]
    answers = [*ANSWERS[:4], "4"]
    got = ensemble(prompts, answers, images=images)
    b, v, t = (s(prompts, answers, images=images) for s in (base, vhead, text))
    stats = ensemble.backends[0].model.stats
    v_mean = sum(v) / len(v)  # the value head's first call: every row (the text row included) it scored
    v_std = (sum((x - v_mean) ** 2 for x in v) / len(v)) ** 0.5
    t_stats = ensemble.estimated[2]
    assert t_stats.mean == pytest.approx(t[4])  # the text model's first call was the one image-free row
    for i in range(4):
        assert got[i] == pytest.approx(((b[i] - stats.mean) / stats.std + (v[i] - v_mean) / v_std) / 2, abs=1e-4)
    assert got[4] == pytest.approx(
        ((b[4] - stats.mean) / stats.std + (v[4] - v_mean) / v_std + t_stats.standardize(t[4])) / 3, abs=1e-4
    )


@pytest.mark.parametrize("layout", ["value_head", "sequence_classification"])
def test_grpo_trains_with_a_published_layout_as_its_reward_model(
    layout, tmp_path, warm_policy, value_head_rm, seq_cls_rm
):
    from pathlib import Path

    from recipes import grpo

    path = value_head_rm if layout == "value_head" else seq_cls_rm
    config = Path(__file__).parent.parent / "recipes" / "configs" / "tiny_cpu_rule.yaml"
    summary = grpo.main(
        grpo.load(
            str(config),
            [
                f"output_dir={tmp_path}",
                f"policy.path={warm_policy}",
                "reward.scheme=hybrid",
                f"reward.model.paths=[{path}]",
                "trainer.max_steps=2",
                "trainer.report_to=[]",
            ],
        )
    )
    assert summary["global_step"] == 2 and summary["reward_failures"] == {"hybrid": 0}
    assert summary["reward_samples"]["hybrid"] == 2 * 8


@pytest.mark.ray
def test_scorer_actors_of_a_checkpoint_without_statistics_standardise_alike(ray_local, value_head_rm):
    """The value head ships no score statistics: with two scorer actors, the first call goes whole to one
    of them and its estimate to the other (each would otherwise estimate from its own half), and to an
    actor Ray restarts; the scores are those of one local scorer making the same calls."""
    import os
    import signal

    from pipeline.actors import start_group
    from pipeline.remote_reward import RemoteReward
    from reward.options import RewardModelOptions
    from rl.config import ActorGroupConfig

    options = RewardModelOptions(paths=[value_head_rm], calibrate=True)
    actors = start_group(
        "reward model",
        RewardModelScorer,
        {"options": options},
        ActorGroupConfig(num_actors=2, num_cpus=0.5, max_restarts=1),
    ).ready()
    try:
        remote = RemoteReward(actors, "model", 120, calibrates=True)
        local = RewardModelScorer(options)
        first = remote(PROMPTS, ANSWERS, images=IMAGES)
        assert first == pytest.approx(local(PROMPTS, ANSWERS, images=IMAGES), abs=1e-5)
        assert set(remote.calibration) == {0} and remote.calibration[0] == local.estimated[0]
        os.kill(ray_local.get(actors[1].pid.remote()), signal.SIGKILL)
        later = remote(PROMPTS[::-1], ANSWERS, images=IMAGES[::-1])  # actor 1's share: restarted, then retried
        assert remote.calls.restarts == 1
        assert later == pytest.approx(local(PROMPTS[::-1], ANSWERS, images=IMAGES[::-1]), abs=1e-5)
    finally:
        for actor in actors:
            ray_local.kill(actor)
