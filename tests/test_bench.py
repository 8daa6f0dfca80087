import json
import math

import pytest

from evaluation.rm_benchmarks import evaluate_file
from evaluation.rm_metrics import (
    length_scorer,
    mm_rlhf_category,
    mm_rlhf_metrics,
    pairs_metrics,
    random_scorer,
    scalar_pairs,
    vl_reward_group,
    vl_reward_metrics,
)
from recipes.cli import main as cli

NAN = float("nan")


def test_mm_rlhf_acc_and_acc_plus_by_hand():
    rows = [
        {"id": 1, "image": "a/mcq/1.png"},
        {"id": 1, "image": "a/mcq/1.png"},
        {"id": 2, "image": "b/long/2.png"},
        {"id": 3, "video": "c/video/3.mp4"},
        {"id": 3, "video": "c/video/3.mp4"},
    ]
    chosen = [2.0, 1.0, 5.0, NAN, 1.0]
    rejected = [1.0, 1.0, 4.0, 0.0, 0.0]  # pair 2 ties -> wrong; pair 4 NaN -> wrong
    m = mm_rlhf_metrics(rows, chosen, rejected)
    assert m["acc"] == 3 / 5
    assert m["acc_plus"] == 1 / 3  # only id 2 has every pair right
    assert m["per_category"]["mcq"] == {"pairs": 2, "acc": 0.5}
    assert m["per_category"]["video"] == {"pairs": 2, "acc": 0.5}


def test_mm_rlhf_category_takes_the_first_listed_that_appears():
    assert mm_rlhf_category({"image": "x/long/mcq_1.png"}) == "mcq"
    assert mm_rlhf_category({"image": "x/other.png"}) == "other"


def test_vl_reward_metrics_by_hand():
    rows = [
        {"id": "wildvision_1", "human_ranking": [0, 1]},
        {"id": "RLAIF-V_7", "human_ranking": [1, 0]},
        {"id": "mathverse_3", "human_ranking": [0, 1]},
        {"id": "mmmu_pro_9", "human_ranking": [0, 1]},
    ]
    scores = [[1.0, 0.0], [1.0, 2.0], [0.5, 0.5], [NAN, 1.0]]
    m = vl_reward_metrics(rows, scores)
    assert m["overall_acc"] == 0.5
    assert m["per_group"] == {
        "general": {"pairs": 1, "acc": 1.0},
        "hallucination": {"pairs": 1, "acc": 1.0},
        "reasoning": {"pairs": 2, "acc": 0.0},
    }
    assert math.isclose(m["macro_avg"], (1.0 + 1.0 + 0.0) / 3)


def test_vl_reward_group_prefers_an_explicit_category():
    assert vl_reward_group({"id": "wildvision_1", "category": "Reasoning"}) == "reasoning"
    assert vl_reward_group({"id": "povid_2"}) == "hallucination"


def test_pairs_metrics():
    assert pairs_metrics([1.0, 1.0, 3.0], [0.0, 1.0, 4.0]) == {"pairs": 3, "acc": 1 / 3}


def test_random_scorer_is_seeded_and_order_free():
    items = [{"response": r, "prompt_text": "q"} for r in ("a", "b", "c")]
    s = random_scorer(3)
    assert s(items) == s(items) and s(items[::-1]) == s(items)[::-1]
    assert s(items) != random_scorer(4)(items)


def _independent_acc(rows):
    """A second, deliberately naive implementation of MM-RLHF Acc/Acc+ with the length scorer."""
    pairs = [(r["id"], len(r["chosen"]) > len(r["rejected"])) for r in rows]
    acc = sum(ok for _, ok in pairs) / len(pairs)
    ids = {i for i, _ in pairs}
    acc_plus = sum(all(ok for j, ok in pairs if j == i) for i in ids) / len(ids)
    return acc, acc_plus


def test_eval_rm_cli_with_the_length_baseline_matches_an_independent_count(tmp_path, capsys):
    rows = [
        {"id": "q1", "image": "imgs/mcq/1.png", "prompt": "p", "chosen": "long answer", "rejected": "short"},
        {"id": "q1", "image": "imgs/mcq/1.png", "prompt": "p", "chosen": "tiny", "rejected": "much longer"},
        {"id": "q2", "image": "imgs/safety/2.png", "prompt": "p", "chosen": "abcdef", "rejected": "abc"},
        {"id": "q3", "video": "vids/video/3.mp4", "prompt": "p", "chosen": "same", "rejected": "size"},
    ]
    data = tmp_path / "mm.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "result.json"
    assert cli(["eval-rm", "--format", "mm-rlhf", "--data", str(data), "--scorer", "length", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    acc, acc_plus = _independent_acc(rows)
    assert (result["acc"], result["acc_plus"]) == (acc, acc_plus) == (0.5, 1 / 3)
    assert result["video_rows_scored_without_frames"] == 1
    assert json.loads(capsys.readouterr().out)["acc"] == 0.5


def test_eval_rm_with_a_model_sees_images(tmp_path, untrained_rm):
    """The benchmark runner hands the model each row's image: two rows alike but for their image
    (red vs blue) get different scores, and rows with the same image get the same."""
    from PIL import Image

    from evaluation.rm_metrics import model_scorer

    (tmp_path / "imgs" / "short").mkdir(parents=True)
    for i, color in enumerate(("red", "blue", "red")):
        Image.new("RGB", (56, 56), color).save(tmp_path / "imgs" / "short" / f"{i}.png")
    rows = [
        {"id": i, "image": f"imgs/short/{i}.png", "prompt": "What color?", "chosen": "red", "rejected": "blue"}
        for i in range(3)
    ]
    data = tmp_path / "mm.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    seen = []
    score = model_scorer([untrained_rm])

    def recording(items):
        scores = score(items)
        seen.append(scores)
        return scores

    result = evaluate_file(str(data), "mm-rlhf", scalar_pairs(recording))
    assert result["pairs"] == 3
    chosen = seen[0]  # the "red" answers: rows 0 and 2 show a red image, row 1 a blue one
    assert chosen[0] != chosen[1] and chosen[0] == pytest.approx(chosen[2], abs=1e-6)


def test_unknown_format_is_an_error(tmp_path):
    data = tmp_path / "x.jsonl"
    data.write_text('{"id": 1}\n')
    with pytest.raises(ValueError, match="unknown benchmark format"):
        evaluate_file(str(data), "rewardbench2", scalar_pairs(length_scorer), needs_images=False)


def test_multimodal_rewardbench_per_category_with_the_safety_and_reasoning_sub_splits(tmp_path):
    """Its published all_data.json (images as paths under the data folder), the length baseline, and
    the same accuracies counted by hand the way its accuracy script counts them."""
    from PIL import Image

    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8), "red").save(tmp_path / "images" / "a.png")
    rows = [  # Output1 is the longer one in each row; Better says which is right
        {
            "ID": "nocaps_1",
            "Text": "q",
            "Image": "images/a.png",
            "Output1": "long answer",
            "Output2": "short",
            "Better": "Output1",
            "Category": "open_generation/correctness_task",
        },
        {
            "ID": "pairs_2",
            "Text": "q",
            "Image": "images/a.png",
            "Output1": "long answer",
            "Output2": "short",
            "Better": "Output2",
            "Category": "safety",
        },
        {
            "ID": "hateful_3",
            "Text": "q",
            "Image": "images/a.png",
            "Output1": "long answer",
            "Output2": "short",
            "Better": "Output1",
            "Category": "safety",
        },
        {
            "ID": "mathvista_4",
            "Text": "q",
            "Image": "images/a.png",
            "Output1": "long answer",
            "Output2": "short",
            "Better": "Output1",
            "Category": "reasoning",
        },
        {
            "ID": "emma-coding_5",
            "Text": "q",
            "Image": "images/a.png",
            "Output1": "long answer",
            "Output2": "short",
            "Better": "Output2",
            "Category": "reasoning",
        },
    ]
    data = tmp_path / "all_data.json"
    data.write_text(json.dumps(rows))
    result = evaluate_file(str(data), "multimodal-rewardbench", scalar_pairs(length_scorer), needs_images=False)
    by_hand = {
        "general correctness": 1.0,
        "safety/bias": 0.0,
        "safety/toxicity": 1.0,
        "reasoning/math": 1.0,
        "reasoning/coding": 0.0,
    }
    assert {k: v["acc"] for k, v in result["per_category"].items()} == by_hand
    assert result["overall_acc"] == 3 / 5 and result["category_mean"] == (1.0 + 0.5 + 0.5) / 3


def test_rewardbench_sections_are_weighted_like_the_official_scores(tmp_path):
    rows = (
        [{"subset": "alpacaeval-easy", "prompt": "p", "chosen": "good long", "rejected": "bad"}] * 2
        + [{"subset": "mt-bench-easy", "prompt": "p", "chosen": "x", "rejected": "longer"}]
        + [
            {"subset": "math-prm", "prompt": "p", "chosen": "right answer", "rejected": "wrong"},
            {"subset": "hep-python", "prompt": "p", "chosen": "a", "rejected": "longer"},
        ]
    )
    data = tmp_path / "rb.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    result = evaluate_file(str(data), "rewardbench", scalar_pairs(length_scorer), needs_images=False)
    chat = (1.0 * 100 + 0.0 * 28) / (100 + 28)  # alpacaeval-easy (100 examples) right, mt-bench-easy (28) wrong
    reasoning = (1.0 * 984 + 0.0 * 164) / (984 + 164)  # math-prm upweighted to the code subsets' total
    assert result["sections"] == pytest.approx({"Chat": chat, "Reasoning": reasoning})
    assert result["score"] == pytest.approx((chat + reasoning) / 2) and result["pairs"] == 5


def test_vl_reward_bench_in_its_hub_schema_with_embedded_images(tmp_path, untrained_rm):
    """VL-RewardBench as the hub ships it (parquet, images embedded): groups from the id prefix, and the
    model scores each response with its own row's image."""
    import io

    from datasets import Dataset, Features, Image, Sequence, Value
    from PIL import Image as PILImage

    from evaluation.rm_metrics import model_scorer

    def png(color):
        buf = io.BytesIO()
        PILImage.new("RGB", (56, 56), color).save(buf, format="PNG")
        return {"bytes": buf.getvalue(), "path": None}

    features = Features(
        {
            "id": Value("string"),
            "query": Value("string"),
            "response": Sequence(Value("string")),
            "image": Image(),
            "human_ranking": Sequence(Value("int64")),
            "models": Sequence(Value("string")),
            "judge": Value("string"),
            "rationale": Value("string"),
            "query_source": Value("string"),
            "ground_truth": Value("string"),
        }
    )
    base = {
        "query": "What color?",
        "response": ["red", "blue"],
        "models": ["a", "b"],
        "judge": "human",
        "rationale": "",
        "query_source": "x",
        "ground_truth": "",
    }
    rows = [
        {**base, "id": "RLAIF-V_1", "image": png("red"), "human_ranking": [0, 1]},
        {**base, "id": "wildvision-battle_2", "image": png("blue"), "human_ranking": [1, 0]},
        {**base, "id": "mathverse_3", "image": png("red"), "human_ranking": [0, 1]},
    ]
    data = tmp_path / "test.parquet"
    Dataset.from_list(rows, features=features).to_parquet(str(data))
    seen = []
    score = model_scorer([untrained_rm])
    result = evaluate_file(str(data), "vl-reward", scalar_pairs(lambda items: seen.append(score(items)) or seen[-1]))
    assert result["pairs"] == 3 and set(result["per_group"]) == {"hallucination", "general", "reasoning"}
    first = seen[0]  # each row's first response, "red": on a red, a blue and a red image
    assert first[0] != first[1] and first[0] == pytest.approx(first[2], abs=1e-6)  # the image differs / agrees
