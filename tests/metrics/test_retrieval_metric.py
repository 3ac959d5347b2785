import json
import os
import subprocess
import sys
from pathlib import Path

import evaluate
import pytest
import torch

from hf_mltm.evaluation import retrieval_metrics, retrieval_ranks
from hf_mltm.ot import cosine_cost

METRIC_DIR = str(Path(__file__).resolve().parents[2] / "hf_mltm" / "metrics" / "retrieval")


@pytest.fixture(scope="module")
def metric():
    return evaluate.load(METRIC_DIR)


@pytest.fixture(scope="module")
def ranks_metric():
    return evaluate.load(METRIC_DIR, "ranks")


def test_hand_checked_scores_with_one_positive(metric):
    # 4 queries over 12 items; the positive is ranked 0, 2, 5 and 11 (0-based)
    scores = [
        [0.9, 0.1, 0.2, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # positive 0: rank 0
        [0.5, 0.6, 0.7, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # positive 0: rank 2
        [0.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.0, 0.0, 0.0, 0.0, 0.0],  # positive 6: rank 5
        [0.1] * 11 + [0.05],  # positive 11: rank 11
    ]
    result = metric.compute(predictions=scores, references=[[0], [0], [6], [11]])
    assert result["R@1"] == pytest.approx(25.0)
    assert result["R@5"] == pytest.approx(50.0)
    assert result["R@10"] == pytest.approx(75.0)
    assert result["medR"] == 4  # floor(median(0, 2, 5, 11) = 3.5) + 1
    assert result["meanR"] == pytest.approx(18 / 4 + 1)
    assert result["MRR@10"] == pytest.approx((1 + 1 / 3 + 1 / 6 + 0) / 4)
    assert result["mAP@10"] == pytest.approx(result["MRR@10"])


def test_hand_checked_several_positives_and_ties(metric):
    # query 0: items 1 and 3 are positives; scores rank 1 first, then 0, then 3 (0 and 3 tie: lower index first)
    # query 1: items 2, 3 and 4 are positives (a different, disjoint set); ranked 4, 2, 0, 3, 1 -> ranks 0, 1, 3
    scores = [[0.5, 0.9, 0.1, 0.5, 0.0], [0.3, 0.1, 0.8, 0.2, 0.9]]
    result = metric.compute(predictions=scores, references=[[3, 1], [2, 3, 4]])
    assert result["R@1"] == pytest.approx(100.0)
    assert result["mAP@10"] == pytest.approx(((1 + 2 / 3) / 2 + (1 + 1 + 3 / 4) / 3) / 2)
    # costs instead of scores: query 0 ranks 4, 2, 0, 3, 1 -> positives at 3, 4
    costs = metric.compute(predictions=scores, references=[[3, 1], [2, 3, 4]], greater_is_better=False)
    # and query 1 ranks 1, 3, 0, 2, 4 -> positives at 1, 3, 4: best ranks 3 and 1
    assert costs["R@1"] == pytest.approx(0.0) and costs["meanR"] == pytest.approx((3 + 1) / 2 + 1)


def test_overlapping_positive_sets(metric):
    # multi-label: the positive sets {0, 2} and {1, 2} overlap on item 2
    result = metric.compute(predictions=[[0.9, 0.1, 0.5], [0.2, 0.8, 0.3]], references=[[0, 2], [1, 2]])
    assert result["mAP@10"] == pytest.approx(1.0) and result["R@1"] == pytest.approx(100.0)
    result = metric.compute(predictions=[[0.1, 0.9, 0.5], [0.2, 0.8, 0.3]], references=[[0, 2], [2]])
    # query 0 positives at ranks 2 and 1 -> AP (1/2 + 2/3) / 2; query 1 item 2 at rank 1 -> AP 1/2
    assert result["mAP@10"] == pytest.approx(((1 / 2 + 2 / 3) / 2 + 1 / 2) / 2)


def test_ranks_config_hand_checked(ranks_metric):
    result = ranks_metric.compute(predictions=[[3, 0], [2], [12, 1, 40], [20]])
    # best ranks 0, 2, 1, 20
    assert result["R@1"] == pytest.approx(25.0) and result["R@5"] == pytest.approx(75.0)
    assert result["medR"] == 2 and result["meanR"] == pytest.approx(23 / 4 + 1)
    expected_map = ((1 + 2 / 4) / 2 + 1 / 3 + (1 / 2) / 3 + 0) / 4
    assert result["mAP@10"] == pytest.approx(expected_map)


def test_equals_hf_mltm_evaluation_on_random_embeddings(metric, ranks_metric):
    generator = torch.Generator().manual_seed(3)
    audio = torch.randn(15, 8, generator=generator)
    text = audio.repeat_interleave(3, 0) + torch.randn(45, 8, generator=generator)
    text_ids, audio_ids = torch.arange(15).repeat_interleave(3), torch.arange(15)
    similarity = torch.nn.functional.normalize(audio, dim=-1) @ torch.nn.functional.normalize(text, dim=-1).T
    # audio -> text: three positives per clip
    expected = retrieval_metrics(retrieval_ranks(audio, text, audio_ids, text_ids, cost_fn=cosine_cost))
    references = [[3 * i, 3 * i + 1, 3 * i + 2] for i in range(15)]
    assert metric.compute(predictions=similarity.double().tolist(), references=references) == pytest.approx(
        expected
    )
    # text -> audio through add_batch, in two batches
    expected = retrieval_metrics(retrieval_ranks(text, audio, text_ids, audio_ids, cost_fn=torch.cdist))
    distances = torch.cdist(text.double(), audio.double())
    metric.add_batch(predictions=distances[:20].tolist(), references=[[int(i)] for i in text_ids[:20]])
    metric.add_batch(predictions=distances[20:].tolist(), references=[[int(i)] for i in text_ids[20:]])
    assert metric.compute(greater_is_better=False) == pytest.approx(expected)
    ranks = retrieval_ranks(text, audio, text_ids, audio_ids, cost_fn=torch.cdist)
    assert ranks_metric.compute(predictions=ranks.tolist()) == pytest.approx(expected)


def test_recall_at_is_configurable(metric):
    result = metric.compute(predictions=[[0.1, 0.2, 0.3]], references=[[0]], recall_at=(1, 2, 3))
    assert (result["R@1"], result["R@2"], result["R@3"]) == (0.0, 0.0, 100.0)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (
            {"predictions": [[0.1, 0.2], [0.3, 0.4]], "references": [[0]]},
            r"predictions \(2\) and references \(1\)",
        ),
        ({"predictions": [[0.1, 0.2], [0.3]], "references": [[0], [0]]}, "different lengths"),
        ({"predictions": [[0.1, 0.2]], "references": [[2]]}, r"outside \[0, 2\)"),
        ({"predictions": [[0.1, 0.2]], "references": [[]]}, "at least one positive"),
        ({"predictions": [[0.1, float("nan")]], "references": [[0]]}, "NaN or inf"),
    ],
)
def test_bad_inputs_raise(metric, kwargs, match):
    with pytest.raises(ValueError, match=match):
        metric.compute(**kwargs)


def test_ranks_config_rejects_empty_and_negative(ranks_metric):
    with pytest.raises(ValueError, match="at least one positive"):
        ranks_metric.compute(predictions=[[0], []])
    with pytest.raises(ValueError, match=r"predictions\[0\] = \[-3\] holds negative ranks"):
        ranks_metric.compute(predictions=[[-3]])
    with pytest.raises(ValueError, match=r"predictions\[1\] = \[2, -1\] holds negative ranks"):
        ranks_metric.compute(predictions=[[0], [2, -1]])  # -1 is padding only inside hf_mltm.evaluation


def test_ranks_config_rejects_a_duplicated_rank_instead_of_map_above_one(ranks_metric):
    # before: mAP@10 = (1/1 + 2/1) / 2 = 1.5
    with pytest.raises(
        ValueError, match=r"predictions\[0\] = \[0, 0\] repeats \[0\]: list each rank of a query once"
    ):
        ranks_metric.compute(predictions=[[0, 0]])
    result = ranks_metric.compute(predictions=[[1, 0]])  # the same positives without the repeat, in any order
    assert result["mAP@10"] == pytest.approx(1.0) and result["R@1"] == pytest.approx(100.0)


def test_scores_config_rejects_a_duplicated_positive_index(metric):
    with pytest.raises(ValueError, match=r"references\[1\] = \[2, 2\] repeats \[2\]"):
        metric.compute(predictions=[[0.9, 0.1, 0.5], [0.2, 0.8, 0.3]], references=[[0], [2, 2]])


@pytest.mark.parametrize("recall_at", [(0,), (-5,), (1, 1), (2.5,), 10])
def test_recall_at_must_be_distinct_positive_integers(metric, ranks_metric, recall_at):
    with pytest.raises(ValueError, match="recall_at"):
        metric.compute(predictions=[[0.1, 0.2, 0.3]], references=[[0]], recall_at=recall_at)
    with pytest.raises(ValueError, match="recall_at"):
        ranks_metric.compute(predictions=[[0]], recall_at=recall_at)


@pytest.mark.parametrize("flag", ["no", "False", 0, 1, None])
def test_greater_is_better_must_be_a_bool(metric, flag):
    with pytest.raises(ValueError, match=rf"greater_is_better must be True or False, got {flag!r}"):
        metric.compute(predictions=[[0.1, 0.2, 0.3]], references=[[0]], greater_is_better=flag)


def test_greater_is_better_false_hand_checked(metric):
    # costs 0.1, 0.2, 0.3: ascending order puts item 0 first; scores (descending) put it last
    scores = metric.compute(predictions=[[0.1, 0.2, 0.3]], references=[[0]], recall_at=(1, 3))
    costs = metric.compute(
        predictions=[[0.1, 0.2, 0.3]], references=[[0]], recall_at=(1, 3), greater_is_better=False
    )
    assert (scores["R@1"], scores["R@3"], scores["meanR"]) == (0.0, 100.0, 3.0)
    assert (costs["R@1"], costs["meanR"], costs["mAP@10"]) == (100.0, 1.0, 1.0)


def test_unknown_config_is_rejected():
    with pytest.raises(ValueError, match="Unknown config_name 'scoress'"):
        evaluate.load(METRIC_DIR, "scoress")


def test_loads_offline_in_a_fresh_process(tmp_path):
    code = (
        "import evaluate, json, sys\n"
        f"metric = evaluate.load({METRIC_DIR!r})\n"
        "print(json.dumps(metric.compute(predictions=[[0.9, 0.1, 0.5], [0.2, 0.8, 0.3]], references=[[2], [1]])))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["R@1"] == 50.0 and result["meanR"] == 1.5 and result["MRR@10"] == 0.75
