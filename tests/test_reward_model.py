import math

import pytest
import torch
from transformers import AutoConfig

from reward.model import BaseRewardModel, HeadConfig, ScoreStats, build_head, last_token_index
from reward.train import PairCollator, accuracy_by_group, bt_loss, held_out_breakdown, pair_metrics


@pytest.mark.parametrize(
    "layers,act,expected",
    [
        (2, "silu", [torch.nn.Linear, torch.nn.SiLU, torch.nn.Linear]),
        (1, "silu", [torch.nn.Linear]),
        (3, "tanh", [torch.nn.Linear, torch.nn.Tanh, torch.nn.Linear, torch.nn.Tanh, torch.nn.Linear]),
        (2, "relu", [torch.nn.Linear, torch.nn.ReLU, torch.nn.Linear]),
    ],
)
def test_head_shapes(layers, act, expected):
    head = build_head(16, HeadConfig(num_layers=layers, hidden_size=8, activation=act))
    assert [type(m) for m in head] == expected
    assert head(torch.zeros(5, 16)).shape == (5, 1)
    assert head[0].in_features == 16 and head[-1].out_features == 1


def test_bad_head_configs():
    with pytest.raises(ValueError, match="at least 1 layer"):
        HeadConfig(num_layers=0)
    with pytest.raises(ValueError, match="activation"):
        HeadConfig(activation="swish")


def test_last_token_index_left_and_right_padding():
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    left = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1], [0, 0, 0, 1]])
    assert last_token_index(right).tolist() == [2, 3, 0]
    assert last_token_index(left).tolist() == [3, 3, 3]


def test_bt_loss_matches_a_hand_computation():
    c, r = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])
    expected = (-math.log(1 / (1 + math.exp(-1.0))) - math.log(1 / (1 + math.exp(1.0)))) / 2
    assert math.isclose(bt_loss(c, r).item(), expected, rel_tol=1e-6)
    # zero-mean penalty: + lambda * (c + r)^2, averaged
    reg = 0.1 * ((3.0**2) + (1.0**2)) / 2
    assert math.isclose(bt_loss(c, r, zero_mean_weight=0.1).item(), expected + reg, rel_tol=1e-6)
    # length normalisation divides each score by its response length
    ln = bt_loss(c, r, chosen_len=torch.tensor([2, 1]), rejected_len=torch.tensor([1, 4]))
    assert math.isclose(ln.item(), bt_loss(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.25])).item(), rel_tol=1e-6)


def test_pair_metrics_count_ties_and_nan_as_wrong():
    m = pair_metrics([2.0, 1.0, float("nan"), 3.0], [1.0, 1.0, 0.0, 4.0])
    assert m["accuracy"] == 0.25
    assert math.isclose(m["margin"], (1.0 + 0.0 - 1.0) / 3)


def test_accuracy_by_group_scores_each_group_apart_and_leaves_unnamed_pairs_out():
    groups = ["near_miss", "degenerate", None, "near_miss"]
    got = accuracy_by_group(groups, [1.0, 2.0, 0.0, 0.0], [0.0, 1.0, 5.0, 1.0])
    assert got == {"degenerate": 1.0, "near_miss": 0.5} and list(got) == ["degenerate", "near_miss"]


def test_held_out_breakdown_by_kind_and_by_task_within_kind():
    from datasets import Dataset

    rows = Dataset.from_dict(
        {
            "kind": ["near_miss", "near_miss", "near_miss", "degenerate"],
            "task": ["color", "position", "position", "color"],
        }
    )
    got = held_out_breakdown(rows, [1.0, 0.0, 1.0, 1.0], [0.0, 1.0, 0.0, 0.0])
    assert got["eval_accuracy_by_kind"] == {"degenerate": 1.0, "near_miss": 2 / 3}
    assert got["eval_accuracy_by_kind_and_task"] == {
        "degenerate/color": 1.0,
        "near_miss/color": 1.0,
        "near_miss/position": 0.5,
    }
    plain = held_out_breakdown(Dataset.from_dict({"chosen": ["a"], "rejected": ["b"]}), [1.0], [0.0])
    assert plain == {"eval_accuracy_by_kind": {}, "eval_accuracy_by_kind_and_task": {}}  # real pairs name no kind


@pytest.fixture(scope="module")
def rm(tiny_vl):
    return BaseRewardModel.from_backbone(tiny_vl, HeadConfig(hidden_size=32), seed=0)


def test_save_load_round_trip_is_bit_exact(tmp_path, rm, tiny_vl, shapes_small):
    from policies.loading import load_processor

    proc = load_processor(tiny_vl)
    rm.stats = ScoreStats(0.25, 2.0)
    path = rm.save_pretrained(tmp_path / "rm", proc)
    loaded = BaseRewardModel.from_pretrained(path)
    a, b = rm.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert loaded.head_cfg == rm.head_cfg and loaded.stats == rm.stats
    rows = [
        {"prompt": r["prompt"], "images": r["images"], "chosen": r["answer"], "rejected": "no"}
        for r in shapes_small[0].select(range(4))
    ]
    batch = PairCollator(proc)(rows)
    rm.eval()
    with torch.no_grad():
        assert torch.equal(rm(**batch), loaded(**batch))


def test_loading_refuses_a_directory_that_is_not_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="reward_head.json"):
        (tmp_path / "config.json").write_text("{}")
        BaseRewardModel.from_pretrained(tmp_path)


def test_pooling_ignores_padding(rm, tiny_vl, shapes_small):
    """A row's score must not change when a longer row pads it in the same batch."""
    from policies.loading import load_processor

    proc = load_processor(tiny_vl)
    row = shapes_small[0][0]
    short = {"prompt": row["prompt"], "images": row["images"], "chosen": "red", "rejected": "blue"}
    long = {**short, "chosen": "red " * 20, "rejected": "blue " * 20}
    rm.eval()
    with torch.no_grad():
        alone = rm(**PairCollator(proc)([short]))
        padded = rm(**PairCollator(proc)([short, long]))
    assert torch.allclose(alone, padded[[0, 2]], atol=1e-5)


def test_text_only_reward_model(tiny_lm):
    from policies.loading import load_processor

    model = BaseRewardModel.from_backbone(tiny_lm, HeadConfig(), seed=0)
    assert not model.is_multimodal
    tok = load_processor(tiny_lm)
    batch = PairCollator(tok)(
        [{"prompt": [{"role": "user", "content": "2+2?"}], "images": [], "chosen": "4", "rejected": "5"}]
    )
    assert model(**batch).shape == (2,)


def test_scores_change_when_only_the_image_changes(untrained_rm):
    """Proof that pixels reach the reward model: same text, different image, different score."""
    from PIL import Image

    from reward.scorer import RewardModelScorer

    scorer = RewardModelScorer.from_paths([untrained_rm])
    prompt = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What color is it?"}]}]
    red, blue = Image.new("RGB", (56, 56), "red"), Image.new("RGB", (56, 56), "blue")
    scores = scorer([prompt, prompt, prompt], ["red", "red", "red"], images=[[red], [blue], [red]])
    assert scores[0] != scores[1] and scores[0] == pytest.approx(scores[2], abs=1e-6)


def test_the_scorers_throughput_options_change_nothing_but_speed(untrained_rm):
    """Prefetching, length-sorted batches and one vision pass per distinct image give the scores of
    the plain path, in the caller's order; the vision tower really sees each distinct image once."""
    from PIL import Image

    from reward.scorer import RewardModelScorer

    colors = ["red", "blue", "green"]
    prompts, completions, images = [], [], []
    for c in colors:  # 3 prompts x 4 completions of different lengths, as GRPO scores them
        for k in range(4):
            prompts.append([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": f"Color {c}?"}]}])
            completions.append("It is " + "very " * (3 * k % 5) + c)
            images.append([Image.new("RGB", (56, 56), c)])
    plain = RewardModelScorer.from_paths(
        [untrained_rm], batch_size=5, prefetch=False, sort_by_length=False, encode_images_once=False
    )
    fast = RewardModelScorer.from_paths([untrained_rm], batch_size=5)
    visual = fast.backends[0].model.backbone.visual
    seen = []
    visual.register_forward_hook(
        lambda module, args, kwargs, out: seen.append(len(kwargs["grid_thw"])), with_kwargs=True
    )
    expected = plain(prompts, completions, images=images)
    got = fast(prompts, completions, images=images)
    assert got == pytest.approx(expected, abs=1e-5)
    # Batches of 5 over 3 groups of 4 (sorted, groups kept together): distinct images per batch only.
    assert sum(seen) < len(images) and len(seen) == 3


def test_an_image_that_several_rows_show_is_resized_once():
    """bound_rows: rows whose images are equal copies (each decoded on its own) get one resized image;
    different pixels stay apart; an image within the bound is only converted to RGB."""
    from PIL import Image

    from reward.scorer import bound_pixels, bound_rows

    photo, other = Image.new("RGB", (64, 48), "red"), Image.new("RGB", (64, 48), "blue")
    small = Image.new("L", (8, 8), 7)
    rows = bound_rows([[photo.copy()], [photo.copy(), small], [other], [photo.copy()]], max_pixels=16 * 12)
    assert rows[0][0] is rows[1][0] is rows[3][0] and rows[2][0] is not rows[0][0]
    assert rows[0][0].size == (16, 12) and list(rows[0][0].tobytes()) == list(bound_pixels(photo, 16 * 12).tobytes())
    assert rows[2][0].getpixel((0, 0)) == (0, 0, 255) and rows[1][1].mode == "RGB" and rows[1][1].size == (8, 8)
    assert bound_rows([[photo]], max_pixels=None)[0][0].size == (64, 48)
    shared = bound_rows([[small], [small]], max_pixels=16 * 12)  # one object in two rows: converted once
    assert shared[0][0] is shared[1][0]


def test_batching_order_follows_lengths_and_arrival_never_memory_addresses():
    """length_order: shorter prompts first, a prompt's rows together, shorter completions first; prompts
    of equal length in the order they come. It used to sort by the prompts' repr, which carries each
    image's address: the same rows were batched in another order in another run (the hybrid demo's scores
    then differed in their last bits from run to run). Here the first prompt's image sits at the higher
    address, so an address order would put it second."""
    from PIL import Image

    from policies.chat import embedded_images
    from reward.scorer import RewardModelScorer, length_order

    a, b = Image.new("RGB", (8, 8), "red"), Image.new("RGB", (8, 8), "blue")
    first, second = (a, b) if id(a) > id(b) else (b, a)

    def question(image):  # as TRL passes prompts: the image inside its part
        return [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "Color?"}]}]

    rows = [
        (question(first), "a longer answer"),
        (question(second), "long answer"),
        ([{"role": "user", "content": "Hi"}], "x"),
        (question(first), "short"),
        (question(second), "shortest"),
    ]
    convs = [RewardModelScorer._conversation(p, c, len(embedded_images(p))) for p, c in rows]
    images = [embedded_images(p) for p, _ in rows]
    assert length_order(convs, images) == [2, 3, 0, 4, 1]


def test_equal_images_of_a_column_become_one_object_and_are_pickled_once():
    import pickle

    from PIL import Image

    from policies.chat import share_equal_images

    red = [Image.new("RGB", (64, 64), "red") for _ in range(8)]  # 8 rows, each its own decoded copy
    blue = Image.new("RGB", (64, 64), "blue")
    rows = share_equal_images([[im] for im in red] + [[blue, red[0].copy()], None])
    assert all(row[0] is rows[0][0] for row in rows[:8]) and rows[8][0] is blue and rows[8][1] is rows[0][0]
    assert rows[9] is None
    assert len(pickle.dumps(rows)) < 3 * len(pickle.dumps(red[0])) < len(pickle.dumps([[im] for im in red]))


def test_distinct_images_are_processed_once_into_what_the_processor_gives(untrained_rm):
    """process_distinct_images: the processor's own tokens, token types and grids for every occurrence,
    with each distinct image's pixels once; expanded back, its pixels equal the processor's."""
    from PIL import Image

    from policies.chat import render_conversation
    from reward.scorer import RewardModelScorer, process_distinct_images

    scorer = RewardModelScorer.from_paths([untrained_rm])
    processor = scorer.backends[0].processor
    prompt = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Color?"}]}]
    red, blue = Image.new("RGB", (56, 56), "red"), Image.new("RGB", (112, 56), "blue")
    images = [red, blue, red.copy(), red]
    texts = [render_conversation(processor, scorer._conversation(prompt, f"it is {k}", 1)) for k in range(4)]
    mine, occurrence = process_distinct_images(processor, texts, images, torch.device("cpu"))
    theirs = processor(text=texts, images=images, padding=True, padding_side="right", return_tensors="pt")
    assert occurrence == [0, 1, 0, 0] and mine["pixel_values"].shape[0] < theirs["pixel_values"].shape[0]
    for key in ("input_ids", "attention_mask", "mm_token_type_ids", "image_grid_thw"):
        assert torch.equal(mine[key], theirs[key]), key
    patches = mine["distinct_grid_thw"].prod(-1).tolist()
    starts = [0, patches[0]]
    expanded = torch.cat([mine["pixel_values"][starts[j] : starts[j] + patches[j]] for j in occurrence])
    assert torch.equal(expanded, theirs["pixel_values"])


def test_a_backbone_without_precomputed_image_features_gets_every_occurrences_pixels(untrained_rm):
    from PIL import Image

    from reward.scorer import RewardModelScorer

    class WithoutEncoderOutputs(torch.nn.Module):  # a VLM whose forward takes pixels only
        def __init__(self, inner):
            super().__init__()
            self.inner, self.config = inner, inner.config

        def forward(
            self,
            input_ids,
            attention_mask,
            use_cache=False,
            pixel_values=None,
            image_grid_thw=None,
            mm_token_type_ids=None,
        ):
            return self.inner(
                input_ids=input_ids,
                attention_mask=attention_mask,
                pixel_values=pixel_values,
                image_grid_thw=image_grid_thw,
                mm_token_type_ids=mm_token_type_ids,
            )

    prompt = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Color?"}]}]
    images = [[Image.new("RGB", (56, 56), c)] for c in ("red", "red", "blue", "red")]
    plain = RewardModelScorer.from_paths([untrained_rm], encode_images_once=False)
    expected = plain([prompt] * 4, ["a", "bb", "a", "ccc"], images=images)
    other = RewardModelScorer.from_paths([untrained_rm])
    other.backends[0].model.backbone = WithoutEncoderOutputs(other.backends[0].model.backbone)
    assert other([prompt] * 4, ["a", "bb", "a", "ccc"], images=images) == pytest.approx(expected, abs=1e-5)


def test_ensemble_averages_and_text_rows_route_to_the_text_model(untrained_rm, tiny_lm, tmp_path):
    from PIL import Image

    from reward.scorer import RewardModelScorer

    text_rm = BaseRewardModel.from_backbone(tiny_lm, HeadConfig(), seed=1)
    from policies.loading import load_processor

    text_path = str(text_rm.save_pretrained(tmp_path / "text_rm", load_processor(tiny_lm)))
    single = RewardModelScorer.from_paths([untrained_rm])
    pair = RewardModelScorer.from_paths([untrained_rm, untrained_rm])
    routed = RewardModelScorer.from_paths([untrained_rm], text_path=text_path)
    img_prompt = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "q"}]}]
    text_prompt = [{"role": "user", "content": "2+2?"}]
    img = Image.new("RGB", (56, 56), "green")
    assert pair([img_prompt], ["a"], images=[[img]]) == pytest.approx(single([img_prompt], ["a"], images=[[img]]))
    only_text = RewardModelScorer.from_paths([text_path])
    got = routed([img_prompt, text_prompt], ["a", "4"], images=[[img], []])
    assert got[0] == pytest.approx(single([img_prompt], ["a"], images=[[img]])[0])
    assert got[1] == pytest.approx(only_text([text_prompt], ["4"])[0])


@pytest.mark.slow
def test_tiny_reward_model_training_beats_chance_on_held_out_pairs(tmp_path, warm_policy):
    from pathlib import Path

    from recipes import train_reward_model

    config = Path(__file__).parent.parent / "recipes" / "configs" / "tiny_cpu_rm.yaml"
    cfg = train_reward_model.load(
        str(config),
        [f"output_dir={tmp_path}", f"backbone.path={warm_policy}", "trainer.report_to=[]", "data.eval_size=400"],
    )  # the recipe's steps
    summary = train_reward_model.main(cfg)
    after = summary["eval_after"]["eval_accuracy"]
    print(
        f"held-out pairwise accuracy {after:.3f} (before {summary['eval_before']['eval_accuracy']:.3f}), "
        f"by kind {summary['eval_accuracy_by_kind']}"
    )
    assert after >= 0.65
    assert summary["eval_accuracy_by_kind"]["hallucination"] >= 0.8
    assert set(summary["eval_accuracy_by_kind_and_task"]) >= {"near_miss/color", "wrong_attribute/description"}
    reloaded = BaseRewardModel.from_pretrained(summary["checkpoint"])
    assert reloaded.stats.std > 0
    # The shipped recipe deepens the backbone: the checkpoint keeps the depth.
    policy_depth = AutoConfig.from_pretrained(warm_policy).text_config.num_hidden_layers
    assert cfg.backbone.extra_layers > 0
    assert reloaded.backbone.config.text_config.num_hidden_layers == policy_depth + cfg.backbone.extra_layers


def test_calibrate_standardises_scores_with_the_checkpoints_statistics(tmp_path, tiny_vl):
    """`reward.model.calibrate` reaches the scorer from the config and gives (raw - mean) / std with the
    statistics the checkpoint stores."""
    import asyncio

    from PIL import Image

    from policies.loading import load_processor
    from recipes import grpo
    from reward.scorer import RewardModelScorer
    from rl.rewards import build_rewards

    model = BaseRewardModel.from_backbone(tiny_vl, HeadConfig(), seed=0)
    model.stats = ScoreStats(mean=1.5, std=4.0)
    path = str(model.save_pretrained(tmp_path / "rm", load_processor(tiny_vl)))
    prompt = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What color is it?"}]}]
    images = [[Image.new("RGB", (56, 56), c)] for c in ("red", "blue")]
    raw = RewardModelScorer.from_paths([path], calibrate=False)([prompt, prompt], ["red", "blue"], images=images)
    cfg = grpo.load(None, ["reward.scheme=model", f"reward.model.paths=[{path}]", "reward.model.calibrate=true"])
    (reward,), _ = build_rewards(cfg.reward)
    calibrated = asyncio.run(reward([prompt, prompt], ["red", "blue"], images=images))
    assert calibrated == pytest.approx([(r - 1.5) / 4.0 for r in raw], abs=1e-6)
    assert calibrated != pytest.approx(raw, abs=1e-3)


def test_a_checkpoint_in_the_earlier_single_file_format_still_loads_bit_exact(tmp_path, rm, tiny_vl):
    """Before the backbone was saved by transformers, every weight was in one model.safetensors under
    our own key names; such checkpoints load (strictly) into the same model."""
    import json
    from dataclasses import asdict

    from safetensors.torch import save_file

    old = tmp_path / "old"
    old.mkdir()
    rm.backbone.config.save_pretrained(old)
    save_file({k: v.contiguous() for k, v in rm.state_dict().items()}, old / "model.safetensors")
    (old / "reward_head.json").write_text(json.dumps({**asdict(rm.head_cfg), "score_mean": 0.5, "score_std": 3.0}))
    loaded = BaseRewardModel.from_pretrained(old)
    a, b = rm.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert loaded.stats == ScoreStats(0.5, 3.0)


def test_large_checkpoints_are_written_in_shards_and_read_back(tmp_path, rm, monkeypatch):
    from reward import model as model_module

    monkeypatch.setattr(model_module, "MAX_SHARD_SIZE", "200KB")  # the tiny model, cut like a 7B one at 5GB
    path = rm.save_pretrained(tmp_path / "sharded")
    assert (path / "model.safetensors.index.json").is_file() and len(list(path.glob("model-*.safetensors"))) > 1
    loaded = BaseRewardModel.from_pretrained(path)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in rm.state_dict().items())


def test_a_reward_model_saved_in_float32_is_scored_in_the_dtype_asked_for(untrained_rm):
    """reward.model.dtype: a BaseReward trained with float32 masters is saved in float32 (31 GB for the 7B);
    bfloat16 scoring loads it in half the memory, with scores close to the float32 ones."""
    import torch

    from reward.options import RewardModelOptions
    from reward.scorer import RewardModelScorer

    prompts, answers = [[{"role": "user", "content": "What color?"}]] * 2, ["red", "a blue square"]
    full = RewardModelScorer(RewardModelOptions(paths=[untrained_rm], calibrate=False))
    half = RewardModelScorer(RewardModelOptions(paths=[untrained_rm], calibrate=False, dtype="bfloat16"))
    assert next(full.backends[0].model.parameters()).dtype == torch.float32
    assert {p.dtype for p in half.backends[0].model.parameters()} == {torch.bfloat16}
    assert half(prompts, answers) == pytest.approx(full(prompts, answers), abs=0.05)
    with pytest.raises(ValueError, match="reward.model.dtype must be one of"):
        RewardModelOptions(dtype="fp8")
