"""``irepa study``: a tiny spatial-vs-global study end to end, and its correlation arithmetic."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from scipy import stats

from irepa.experiments import study
from irepa.experiments.study import Condition, correlate, pick_conditions

# 16 px synthetic images, 4 px patches: a 4x4 token grid (the metrics' distances are capped to it)
TINY = {
    "data.source": "synthetic",
    "data.resolution": 16,
    "data.synthetic_size": 40,
    "data.num_classes": 4,
    "data.limit": None,
    "model.input_size": 16,
    "model.in_channels": 3,
    "model.num_classes": 4,
    "model.depth": 2,
    "model.hidden_size": 32,
    "model.num_heads": 2,
    "align.depth": 1,
    "align.projector_hidden_dim": 32,
    "train.batch_size": 8,
    "train.lr": 1e-2,
    "train.log_every": 1,
    "sample.steps": 2,
}


def mean_pixel_scorer(images: np.ndarray) -> dict:
    """A cheap stand-in for FID here: the samples' mean pixel value, x1000 so that a step's change shows."""
    return {"fid": 1000 * float(images.astype(np.float64).mean())}


def test_the_study_names_its_conditions_and_rejects_unknown_ones():
    labels = [c.label for c in pick_conditions("spatial-vs-global")]
    for needed in ("vanilla", "REPA DINOv2-S", "iREPA DINOv2-S", "iREPA +shuffle", "iREPA +global=0.1",
                   "iREPA +blur=1", "iREPA HOG", "iREPA random-init DINOv2-S"):
        assert needed in labels
    assert [c.encoder for c in pick_conditions("spatial-vs-global", ["iREPA +shuffle"])] == ["dinov2-vit-s+shuffle"]
    jit = pick_conditions("spatial-vs-global", ["vanilla", "iREPA HOG"], family="jit")
    assert [c.spec for c in jit] == ["jit-vanilla", "jit-irepa+align.encoders=hog"]
    with pytest.raises(ValueError, match="unknown condition"):
        pick_conditions("spatial-vs-global", ["iREPA +swirl"])


def test_correlation_is_the_plain_one_on_seed_means_with_an_interval_around_it():
    x = {"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.5}
    quality = {"a": [40.0, 42.0], "b": [38.0, 37.0], "c": [30.0, 33.0], "d": [31.0, 29.0]}
    row = correlate(x, quality, n_boot=500)
    means = [41.0, 37.5, 31.5, 30.0]
    assert row["pearson_r"] == pytest.approx(stats.pearsonr([0.1, 0.2, 0.3, 0.5], means).statistic)
    assert row["spearman_r"] == pytest.approx(-1.0) and row["n_conditions"] == 4
    assert row["pearson_ci_low"] <= row["pearson_r"] <= row["pearson_ci_high"]
    assert math.isnan(correlate({"a": 1.0, "b": 2.0}, {"a": [1.0], "b": [2.0]})["pearson_r"])  # two points


def test_tiny_study_runs_end_to_end_and_resumes(tmp_path, monkeypatch):
    conditions = [
        Condition("HOG", "irepa+align.encoders=hog", "hog"),
        Condition("HOG +shuffle", "irepa+align.encoders=hog+shuffle", "hog+shuffle"),
    ]
    out = tmp_path / "study"
    args = dict(out=out, seeds=[0, 1], steps=1, fid_samples=8, extra=TINY, scorer=mean_pixel_scorer,
                conditions=conditions)
    result = study.run_study(**args)
    table = {e["condition"]: e for e in result["conditions"]}
    assert set(table) == {"HOG", "HOG +shuffle"}
    assert all(e["n_seeds"] == 2 for e in table.values())
    for e in table.values():  # FID: the mean over the two seeds' rows of runs.csv
        assert e["fid_mean"] == pytest.approx(np.mean([float(f) for f in e["fid_per_seed"].split()]))
    # the shuffled target: the same global feature, so the same probe accuracy, and its local structure gone
    assert table["HOG +shuffle"]["probe"] == pytest.approx(table["HOG"]["probe"], abs=1e-6)
    assert table["HOG +shuffle"]["rmsc"] == pytest.approx(table["HOG"]["rmsc"], rel=1e-4)
    assert abs(table["HOG +shuffle"]["lds"]) < 0.5 * abs(table["HOG"]["lds"])
    with open(out / "conditions.csv") as f:
        assert len(list(csv.DictReader(f))) == 2
    corr = {c["property"]: c for c in result["correlations"]}
    assert corr["lds"]["n_conditions"] == 2 and math.isnan(corr["lds"]["pearson_r"])  # two points: no correlation
    assert (out / "quality_vs_properties.png").stat().st_size > 0
    assert "| HOG +shuffle |" in (out / "study.md").read_text()

    # a rerun trains nothing and measures nothing again
    monkeypatch.setattr(study.compare, "train", lambda *a, **k: pytest.fail("a finished cell trained again"))
    monkeypatch.setattr(study, "encoder_properties", lambda *a, **k: pytest.fail("properties measured again"))
    again = study.run_study(**args)
    assert [e["fid_mean"] for e in again["conditions"]] == [e["fid_mean"] for e in result["conditions"]]
