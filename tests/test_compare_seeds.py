"""``irepa compare --seeds``: Student-t intervals over training seeds, and resumption cell by cell."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from scipy import stats

from irepa.experiments import compare
from irepa.experiments.cli import parse_seeds
from irepa.metrics.stats import t_interval

# A tiny pixel SiT on 8 px synthetic images (2x2 tokens), a second per training chunk on a CPU.
TINY = {
    "data.source": "synthetic",
    "data.resolution": 8,
    "data.synthetic_size": 32,
    "data.num_classes": 10,
    "data.limit": None,
    "model.input_size": 8,
    "model.in_channels": 3,
    "model.depth": 2,
    "model.hidden_size": 32,
    "model.num_heads": 2,
    "align.depth": 1,
    "align.encoders": "hog",
    "align.projector_hidden_dim": 32,
    "train.batch_size": 8,
    "train.log_every": 1,
    "sample.steps": 2,
}


def mean_pixel_scorer(images: np.ndarray) -> dict:
    """A cheap stand-in for FID in these tests: the samples' mean pixel value (depends on the weights)."""
    return {"fid": float(images.astype(np.float64).mean())}


def test_t_interval_matches_the_textbook_formula():
    values = [3.0, 5.0, 10.0]
    est = t_interval(values)
    s = math.sqrt(((3 - 6) ** 2 + (5 - 6) ** 2 + (10 - 6) ** 2) / 2)  # sample sd, divisor n - 1
    half = 4.302652729749464 * s / math.sqrt(3)  # t_{0.975, 2} from the tables
    assert est.value == pytest.approx(6.0) and est.n == 3
    assert (est.ci_low, est.ci_high) == pytest.approx((6 - half, 6 + half), rel=1e-9)
    lo, hi = stats.t.interval(0.9, 2, loc=6.0, scale=stats.sem(values))
    assert (t_interval(values, 0.9).ci_low, t_interval(values, 0.9).ci_high) == pytest.approx((lo, hi))
    one = t_interval([4.0, float("nan")])
    assert one.value == 4.0 and one.n == 1 and math.isnan(one.ci_low)


def test_summary_gives_mean_and_interval_of_every_figure_per_recipe_and_step():
    rows = [
        {"recipe": "a", "seed": s, "step": 10, "fid": f, "loss_diffusion": ld, "loss_align": ""}
        for s, f, ld in [(0, 30.0, 0.5), (1, 34.0, 0.7)]
    ] + [{"recipe": "b", "seed": 0, "step": 10, "fid": 20.0, "loss_diffusion": 0.4, "loss_align": -0.5}]
    by = {r["recipe"]: r for r in compare.summarise(rows)}
    half = 12.706204736174707 * math.sqrt(8.0) / math.sqrt(2)  # t_{0.975, 1} * s / sqrt(n), s^2 = 8
    assert by["a"]["fid_mean"] == pytest.approx(32.0) and by["a"]["n_seeds"] == 2
    assert by["a"]["fid_ci_high"] == pytest.approx(32.0 + half)
    assert by["a"]["loss_diffusion_mean"] == pytest.approx(0.6) and "loss_align_mean" not in by["a"]
    assert by["b"]["loss_align_mean"] == -0.5 and math.isnan(by["b"]["fid_ci_low"])
    table = compare.markdown_table(rows, ["a", "b"]).splitlines()
    assert table[2] == f"| a | 32.00 ± {half:.2f} (n=2) |" and table[3] == "| b | 20.00 |"


def test_seeds_parse_and_bad_ones_say_how():
    assert parse_seeds("0,1,2") == [0, 1, 2] and parse_seeds(None) is None
    for bad in ("0,x", "1,1", "-1", ""):
        with pytest.raises(ValueError, match="--seeds"):
            parse_seeds(bad)


def test_seeded_compare_trains_each_seed_and_resumes_only_what_is_missing(tmp_path, monkeypatch):
    from irepa.train.trainer import train as real_train

    out = tmp_path / "cmp"
    args = dict(steps=2, eval_every=1, out=out, extra=TINY, seeds=[0, 1], fid_samples=10, scorer=mean_pixel_scorer)

    def killed_in_seed1_chunk2(cfg, **kw):
        if cfg.out.endswith("seed1") and kw["resume"] == "auto":
            raise KeyboardInterrupt  # the machine goes down while seed 1 trains its second chunk
        return real_train(cfg, **kw)

    monkeypatch.setattr(compare, "train", killed_in_seed1_chunk2)
    with pytest.raises(KeyboardInterrupt):
        compare.run_compare(["vanilla"], **args)
    assert len((out / compare.TABLE).read_text().splitlines()) == 1 + 3  # header and the three finished chunks

    calls = []
    monkeypatch.setattr(compare, "train", lambda cfg, **kw: calls.append((cfg.out, kw)) or real_train(cfg, **kw))
    rows = compare.run_compare(["vanilla"], **args)
    # only the missing chunk trains, from seed 1's step-1 checkpoint
    assert [(c[0].endswith("seed1"), c[1]["stop_after"], c[1]["resume"]) for c in calls] == [(True, 1, "auto")]
    assert sorted((r["seed"], int(r["step"])) for r in rows) == [("0", 1), ("0", 2), ("1", 1), ("1", 2)]
    assert (out / "vanilla" / "seed0" / "checkpoints").is_dir() and (out / "vanilla" / "seed1").is_dir()
    final = {r["seed"]: r for r in rows if int(r["step"]) == 2}
    assert final["0"]["loss_diffusion"] != final["1"]["loss_diffusion"]  # another seed, another run
    with open(out / "summary.csv") as f:
        summary = {int(r["step"]): r for r in csv.DictReader(f)}
    fids = [float(final[s]["fid"]) for s in ("0", "1")]
    assert float(summary[2]["fid_mean"]) == pytest.approx(np.mean(fids), abs=1e-6)
    half = stats.t.ppf(0.975, 1) * np.std(fids, ddof=1) / math.sqrt(2)
    assert float(summary[2]["fid_ci_high"]) - float(summary[2]["fid_mean"]) == pytest.approx(half, abs=1e-6)
    assert (out / "fid_vs_steps.png").stat().st_size > 0

    # a finished study: nothing trains again, the same rows come back
    def no_training(*a, **kw):
        raise AssertionError("a finished cell was trained again")

    monkeypatch.setattr(compare, "train", no_training)
    again = compare.run_compare(["vanilla"], **args)
    assert sorted(map(str, again)) == sorted(map(str, rows))
