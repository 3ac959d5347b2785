import json

import numpy as np
import pytest
import torch
from PIL import Image

from hf_mltm.evaluation import markdown_table, plot_results, result_rows, save_report, write_json
from hf_mltm.evaluation.report import to_jsonable


def metrics(r1, r5, r10, med, mean, map10, mrr):
    return {"R@1": r1, "R@5": r5, "R@10": r10, "medR": med, "meanR": mean, "mAP@10": map10, "MRR@10": mrr}


@pytest.fixture
def results():
    return {
        "distance": {
            "text_to_audio": metrics(12.5, 40.0, 55.25, 8, 20.125, 0.25, 0.2),
            "audio_to_text": metrics(15.0, 42.0, 60.0, 6, 18.5, 0.125, 0.3),
            "rsum": 224.75,
        },
        "ot": {
            "text_to_audio": metrics(20.0, 50.0, 70.0, 4, 10.0, 0.33333, 0.35),
            "audio_to_text": metrics(22.5, 51.0, 71.0, 3, 9.0, 0.2, 0.4),
            "rsum": 284.5,
        },
        "modality_gap": 0.8125,
        "num_items": 8,
        "num_captions": 40,
        "settings": {"ot_epsilon": 0.05, "cost_normalization": "batch_max"},
        "embeddings": {"audio_embeds": torch.ones(8, 4), "text_embeds": torch.zeros(40, 4)},
    }


def test_rows_keep_ranking_modes_apart(results):
    rows = result_rows(results)
    assert [(row["ranking"], row["direction"]) for row in rows] == [
        ("distance", "text_to_audio"), ("distance", "audio_to_text"), ("ot", "text_to_audio"), ("ot", "audio_to_text")
    ]
    assert rows[2]["R@1"] == 20.0 and rows[1]["medR"] == 6


def test_markdown_table_has_one_row_per_mode_and_direction(results):
    table = markdown_table(results)
    lines = table.strip().splitlines()
    assert lines[0] == "| ranking | direction | R@1 | R@5 | R@10 | medR | meanR | mAP@10 | MRR@10 | rsum |"
    assert lines[1] == "|---|---|---|---|---|---|---|---|---|---|"
    assert lines[2] == "| distance | text_to_audio | 12.50 | 40.00 | 55.25 | 8 | 20.12 | 0.25 | 0.20 | 224.75 |"
    assert lines[5] == "| ot | audio_to_text | 22.50 | 51.00 | 71.00 | 3 | 9.00 | 0.20 | 0.40 | 284.50 |"
    assert len(lines) == 6
    assert "0.333" in markdown_table(results, digits=3)


def test_zero_shot_results_tabulate_without_rsum():
    table = markdown_table({"distance": {"audio_to_label": metrics(50.0, 100.0, 100.0, 2, 1.75, 0.7, 0.7)},
                            "accuracy": 0.5, "predictions": [0, 1]})
    assert table.splitlines()[2] == "| distance | audio_to_label | 50.00 | 100.00 | 100.00 | 2 | 1.75 | 0.70 | 0.70 |"


def test_markdown_without_metrics_raises():
    with pytest.raises(ValueError, match="No metrics to tabulate"):
        markdown_table({"modality_gap": 0.5})


def test_json_round_trip_drops_embeddings(results, tmp_path):
    path = write_json(results, tmp_path / "out" / "metrics.json")
    loaded = json.loads(path.read_text())
    assert "embeddings" not in loaded
    assert loaded["ot"]["audio_to_text"]["R@1"] == 22.5 and loaded["distance"]["rsum"] == 224.75
    assert loaded["settings"] == {"ot_epsilon": 0.05, "cost_normalization": "batch_max"}
    with_embeddings = json.loads(write_json(results, tmp_path / "all.json", include_embeddings=True).read_text())
    assert with_embeddings["embeddings"]["audio_embeds"] == [[1.0] * 4] * 8


def test_to_jsonable_converts_arrays_and_scalars():
    value = {"a": np.float32(0.5), "b": np.arange(3), "c": torch.tensor([1, 2]), "d": (np.int64(4),), "e": float("inf")}
    assert to_jsonable(value) == {"a": 0.5, "b": [0, 1, 2], "c": [1, 2], "d": [4], "e": "inf"}
    json.dumps(to_jsonable(value))


def test_plot_is_a_png_of_the_requested_size(results, tmp_path):
    similarity = -torch.cdist(torch.randn(6, 3), torch.randn(12, 3))
    path = plot_results(results, tmp_path / "plot.png", similarity=similarity, size_px=(900, 400), dpi=100)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (900, 400)
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.std() > 0  # something was drawn
    with Image.open(plot_results(results, tmp_path / "curves.png")) as image:
        assert image.size == (1200, 500)
    with pytest.raises(ValueError, match="2-D"):
        plot_results(results, tmp_path / "bad.png", similarity=np.zeros(3))


def test_save_report_writes_the_three_files(results, tmp_path):
    paths = save_report(results, tmp_path / "report", title="tiny model")
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == ["metrics.json", "metrics.md", "plot.png"]
    assert json.loads(paths["json"].read_text())["modality_gap"] == 0.8125
    markdown = paths["markdown"].read_text()
    assert markdown.startswith("# tiny model\n\n| ranking |") and "| ot | text_to_audio | 20.00 |" in markdown
    with Image.open(paths["plot"]) as image:
        image.verify()
