"""The metric commands end to end, with a tiny patch encoder standing in for the zoo."""

from __future__ import annotations

import argparse
import csv
import math
import os
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import irepa.encoders
from irepa.cli import run_command
from irepa.encoders.base import Encoder
from irepa.metrics import compute_metrics, srss
from irepa.metrics.sources import skimage_image, skimage_source

TINY_NAMES = ("tiny-a", "tiny-b", "tiny-c")
SKIMAGE_FIRST8 = ["astronaut", "chelsea", "coffee", "rocket", "motorcycle", "camera", "coins", "horse"]


# ---------------------------------------------------------------- shared pieces (also used by test_viz_spatial_norm)
class TinyEncoder(Encoder):
    """Conv patch embedding + LayerNorm: real spatial structure from the image, cheap on CPU."""

    def __init__(self, name: str, grid: tuple[int, int], dim: int = 16, patch: int = 4) -> None:
        super().__init__()
        self.name = name
        self.embed_dim = dim
        self.patch_size = patch
        self.resolution = (grid[0] * patch, grid[1] * patch)
        self.interpolation = "bilinear"
        self.proj = nn.Conv2d(3, dim, patch, patch)
        self.images_seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.images_seen += x.shape[0]
        y = self.proj(x).flatten(2).transpose(1, 2)
        return F.layer_norm(y, (self.embed_dim,))


class FakeZoo:
    """Stands in for ``irepa.encoders.load_encoder``; records every load."""

    def __init__(self) -> None:
        self.loads: list[tuple[str, str | None, tuple[int, int]]] = []
        self.encoders: list[TinyEncoder] = []

    def __call__(self, name, weights=None, resolution=None, grid=None, device="cpu", dtype=torch.float32):
        if name not in TINY_NAMES:
            raise ValueError(f"unknown encoder {name!r}; valid: {', '.join(TINY_NAMES)}")
        self.loads.append((name, weights, tuple(grid)))
        torch.manual_seed(zlib.crc32(name.encode()))  # same name -> same weights
        enc = TinyEncoder(name, tuple(grid))
        self.encoders.append(enc)
        return enc

    def images_encoded(self) -> int:
        return sum(e.images_seen for e in self.encoders)


def run_cli(argv: list[str]) -> int:
    """Parse with only the metrics and viz commands (independent of the other areas) and run."""
    from irepa.metrics import cli as metrics_cli
    from irepa.metrics import viz_cli

    parser = argparse.ArgumentParser(prog="irepa")
    sub = parser.add_subparsers(dest="command")
    metrics_cli.add_parser(sub)
    viz_cli.add_parser(sub)
    args = parser.parse_args(argv)
    return run_command(args)


@pytest.fixture
def zoo(monkeypatch: pytest.MonkeyPatch) -> FakeZoo:
    fake = FakeZoo()
    monkeypatch.setattr(irepa.encoders, "load_encoder", fake, raising=False)
    return fake


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def header(path: Path) -> list[str]:
    with open(path, newline="") as fh:
        return next(csv.reader(fh))


def spatial_args(tmp_path: Path, out: str = "res.csv", n: int = 8, extra: tuple[str, ...] = ()) -> list[str]:
    return [
        "metrics",
        "spatial",
        "--encoders",
        "tiny-a,tiny-b",
        "--images",
        "skimage",
        "--n",
        str(n),
        "--grid",
        "8",
        "--batch-size",
        "8",
        "--cache",
        str(tmp_path / "cache"),
        "--n-boot",
        "200",
        "--no-progress",
        "--out",
        str(tmp_path / out),
        *extra,
    ]


def naive_token_mask(mask: np.ndarray, g: int) -> np.ndarray:
    """Token (i, j) is foreground if any pixel overlapping its share of the image is."""
    H, W = mask.shape
    out = np.zeros((g, g), dtype=bool)
    for i in range(g):
        for j in range(g):
            r0, r1 = math.floor(i * H / g), math.ceil((i + 1) * H / g)
            c0, c1 = math.floor(j * W / g), math.ceil((j + 1) * W / g)
            out[i, j] = mask[r0:r1, c0:c1].any()
    return out.reshape(-1)


# ---------------------------------------------------------------- spatial
def test_spatial_on_skimage_writes_expected_tables(tmp_path: Path, zoo: FakeZoo) -> None:
    assert run_cli(spatial_args(tmp_path)) == 0
    out = tmp_path / "res.csv"
    want = ["encoder", "n_images"]
    for m in ("lds", "cds", "srss", "rmsc"):
        want += [f"{m}_mean", f"{m}_ci_low", f"{m}_ci_high"] + (["srss_n_skipped"] if m == "srss" else [])
    assert header(out) == want
    rows = read_rows(out)
    assert [r["encoder"] for r in rows] == ["tiny-a", "tiny-b"]
    assert all(int(r["n_images"]) == 8 for r in rows)
    assert all(int(r["srss_n_skipped"]) == 7 for r in rows)  # only horse has a silhouette
    assert (tmp_path / "res.png").stat().st_size > 0

    per_image = read_rows(tmp_path / "res.per_image.csv")
    assert len(per_image) == 16
    assert [r["image"] for r in per_image[:8]] == SKIMAGE_FIRST8
    # Independent recomputation: same encoder, same images, same float16 storage.
    enc = FakeZoo()("tiny-a", grid=(8, 8))
    src = skimage_source()
    x = torch.cat([enc.preprocess(src.image(i)[None]) for i in range(8)])
    with torch.no_grad():
        tokens = enc(x).half().float()
    ref = compute_metrics(tokens, 8, 8, ["lds", "cds", "rmsc"])
    for name in ("lds", "cds", "rmsc"):
        got = np.array([float(r[name]) for r in per_image[:8]])
        np.testing.assert_allclose(got, ref[name].numpy(), atol=1e-5)
        for row in rows[:1]:
            assert float(row[f"{name}_mean"]) == pytest.approx(got.mean(), abs=1e-9)
            assert float(row[f"{name}_ci_low"]) <= got.mean() <= float(row[f"{name}_ci_high"])
    horse_mask = torch.from_numpy(naive_token_mask(~skimage_image("horse"), 8))
    want_srss = srss(tokens[7:8], 8, 8, horse_mask[None]).item()
    assert float(per_image[7]["srss"]) == pytest.approx(want_srss, abs=1e-5)
    assert [r["srss_status"] for r in per_image[:8]] == ["no-mask"] * 7 + ["ok"]
    assert all(math.isnan(float(r["srss"])) for r in per_image[:7])


def test_feature_cache_is_reused(tmp_path: Path, zoo: FakeZoo) -> None:
    assert run_cli(spatial_args(tmp_path, "first.csv", n=4)) == 0
    assert zoo.images_encoded() == 8  # 2 encoders x 4 images
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2
    assert run_cli(spatial_args(tmp_path, "second.csv", n=4, extra=("--only", "lds,rmsc"))) == 0
    assert zoo.images_encoded() == 8 and len(zoo.loads) == 2  # no encoder built the second time
    first = {(r["encoder"], r["image"]): r for r in read_rows(tmp_path / "first.per_image.csv")}
    for r in read_rows(tmp_path / "second.per_image.csv"):
        assert float(r["lds"]) == float(first[(r["encoder"], r["image"])]["lds"])
    # A different image count is a different cache entry.
    assert run_cli(spatial_args(tmp_path, "third.csv", n=3)) == 0
    assert len(zoo.loads) == 4
    # --no-cache always encodes.
    assert run_cli(spatial_args(tmp_path, "fourth.csv", n=4, extra=("--no-cache",))) == 0
    assert len(zoo.loads) == 6


def test_cached_tokens_are_float16_with_metadata(tmp_path: Path, zoo: FakeZoo) -> None:
    assert run_cli(spatial_args(tmp_path, n=2, extra=("--only", "lds"))) == 0
    arrays = sorted((tmp_path / "cache").glob("*.npy"))
    data = np.load(arrays[0])
    assert data.dtype == np.float16 and data.shape == (2, 64, 16)
    assert arrays[0].with_suffix(".json").is_file()
    assert not list((tmp_path / "cache").glob(".*"))  # no temporary files left


def write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_folder_with_masks_counts_skipped_images(tmp_path: Path, zoo: FakeZoo) -> None:
    rng = np.random.default_rng(0)
    imgs, masks = tmp_path / "imgs", tmp_path / "masks"
    square = np.zeros((40, 40), np.uint8)
    square[10:26, 12:30] = 255
    for k in range(3):
        write_png(imgs / "sub" / f"im{k}.png", rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
    write_png(masks / "im0.png", square)
    write_png(masks / "im1.png", np.zeros((40, 40), np.uint8))  # no foreground: skipped
    write_png(masks / "im2.png", np.full((40, 40), 255, np.uint8))  # no background: skipped
    argv = [
        "metrics",
        "spatial",
        "--encoders",
        "tiny-a",
        "--images",
        str(imgs),
        "--masks",
        str(masks),
        "--grid",
        "8",
        "--no-cache",
        "--no-progress",
        "--no-plot",
        "--out",
        str(tmp_path / "f.csv"),
    ]
    assert run_cli(argv) == 0
    row = read_rows(tmp_path / "f.csv")[0]
    assert int(row["n_images"]) == 3 and int(row["srss_n_skipped"]) == 2
    per = read_rows(tmp_path / "f.per_image.csv")
    assert [r["image"] for r in per] == ["sub/im0.png", "sub/im1.png", "sub/im2.png"]
    assert [r["srss_status"] for r in per] == ["ok", "too-few-foreground-tokens", "too-few-background-tokens"]
    assert math.isfinite(float(per[0]["srss"]))
    # A missing mask is an error naming the image.
    (masks / "im2.png").unlink()
    assert run_cli(argv) == 3  # input data


@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz").exists()
    and not os.environ.get("IREPA_FASHION_MNIST"),
    reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)",
)
def test_fashion_mnist_masks_from_pixels(tmp_path: Path, zoo: FakeZoo) -> None:
    argv = [
        "metrics",
        "spatial",
        "--encoders",
        "tiny-a",
        "--images",
        "fashion-mnist",
        "--n",
        "6",
        "--grid",
        "8",
        "--d-neg",
        "4",
        "--no-cache",
        "--no-progress",
        "--no-plot",
        "--out",
        str(tmp_path / "fm.csv"),
    ]
    assert run_cli(argv) == 0
    per = read_rows(tmp_path / "fm.per_image.csv")
    assert len(per) == 6
    from irepa.data.fashion_mnist import read_fashion_mnist

    images, _ = read_fashion_mnist(split="test")
    for k, r in enumerate(per):
        m = naive_token_mask(images[k] > 0, 8)
        usable = 4 <= m.sum() <= 64 - 4
        assert (
            r["srss_status"] != "too-few-background-tokens" and r["srss_status"] != "too-few-foreground-tokens"
        ) == usable


def test_bad_input_is_a_clear_error(tmp_path: Path, zoo: FakeZoo, capsys: pytest.CaptureFixture) -> None:
    assert run_cli(spatial_args(tmp_path, extra=("--only", "lds,nope"))) == 2
    assert "unknown metric 'nope'" in capsys.readouterr().err
    argv = spatial_args(tmp_path)
    argv[argv.index("tiny-a,tiny-b")] = "tiny-a,dinosaur"
    assert run_cli(argv) == 2
    assert "dinosaur" in capsys.readouterr().err
    assert run_cli(spatial_args(tmp_path, extra=("--weights", "other=x.pt"))) == 2
    assert "not among the encoders" in capsys.readouterr().err


def test_weights_are_passed_per_encoder(tmp_path: Path, zoo: FakeZoo) -> None:
    assert run_cli(spatial_args(tmp_path, n=1, extra=("--weights", "tiny-b=random", "--only", "rmsc"))) == 0
    assert sorted(zoo.loads) == [("tiny-a", None, (8, 8)), ("tiny-b", "random", (8, 8))]


# ---------------------------------------------------------------- rank
def write_table(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def test_rank_from_table_is_sign_aware(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    table = write_table(
        tmp_path / "m.csv",
        [
            {"encoder": e, "lds_mean": v, "lds_ci_low": v - 0.1, "lds_ci_high": v + 0.1}
            for e, v in [("a", 0.2), ("b", 0.5), ("c", float("nan")), ("d", 0.3)]
        ],
    )
    assert run_cli(["metrics", "rank", "--metrics", str(table), "--by", "lds", "--out", str(tmp_path / "r.csv")]) == 0
    assert [r["encoder"] for r in read_rows(tmp_path / "r.csv")] == ["b", "d", "a", "c"]
    assert "higher is better" in capsys.readouterr().out
    assert (
        run_cli(
            [
                "metrics",
                "rank",
                "--metrics",
                str(table),
                "--by",
                "lds",
                "--order",
                "lower",
                "--out",
                str(tmp_path / "r.csv"),
            ]
        )
        == 0
    )
    assert [r["encoder"] for r in read_rows(tmp_path / "r.csv")] == ["a", "d", "b", "c"]
    assert run_cli(["metrics", "rank", "--metrics", str(table), "--by", "cds"]) == 2
    assert "metrics there: lds" in capsys.readouterr().err


def test_rank_on_the_fly(tmp_path: Path, zoo: FakeZoo) -> None:
    argv = [
        "metrics",
        "rank",
        "--encoders",
        "tiny-a,tiny-b,tiny-c",
        "--images",
        "skimage",
        "--n",
        "2",
        "--grid",
        "8",
        "--by",
        "cds",
        "--only",
        "lds",
        "--no-cache",
        "--no-progress",
        "--out",
        str(tmp_path / "r.csv"),
    ]
    assert run_cli(argv) == 0
    ranked = read_rows(tmp_path / "r.csv")
    values = [float(r["cds"]) for r in ranked]
    assert sorted(r["encoder"] for r in ranked) == list(TINY_NAMES)
    assert values == sorted(values, reverse=True)


# ---------------------------------------------------------------- correlate
def naive_kendall(x: np.ndarray, y: np.ndarray) -> float:
    s = 0.0
    n = len(x)
    for i in range(n):
        for j in range(i + 1, n):
            s += np.sign(x[i] - x[j]) * np.sign(y[i] - y[j])
    return s / (n * (n - 1) / 2)


def test_correlate_reproduces_numpy(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rng = np.random.default_rng(3)
    encs = [f"enc{k}" for k in range(7)]
    fid = rng.uniform(5, 30, 7)
    lds_v = -0.02 * fid + rng.normal(0, 0.05, 7)
    rmsc_v = rng.uniform(0.2, 0.9, 7)
    metrics = write_table(
        tmp_path / "m.csv",
        [
            {
                "encoder": e,
                "n_images": 10,
                "lds_mean": a,
                "lds_ci_low": a,
                "lds_ci_high": a,
                "rmsc_mean": b,
                "rmsc_ci_low": b,
                "rmsc_ci_high": b,
            }
            for e, a, b in zip(encs, lds_v, rmsc_v)
        ],
    )
    fid_csv = write_table(tmp_path / "fid.csv", [{"encoder": e, "fid": f} for e, f in zip(encs[::-1], fid[::-1])])
    probe_v = rng.uniform(0.5, 0.8, 7)
    probe = write_table(tmp_path / "p.csv", [{"encoder": e, "accuracy": p} for e, p in zip(encs, probe_v)])
    out = tmp_path / "corr"
    assert (
        run_cli(
            [
                "metrics",
                "correlate",
                "--metrics",
                str(metrics),
                "--fid",
                str(fid_csv),
                "--probe",
                str(probe),
                "--out",
                str(out),
                "--n-boot",
                "300",
            ]
        )
        == 0
    )
    rows = {r["metric"]: r for r in read_rows(out / "correlations.csv")}
    assert set(rows) == {"lds", "rmsc", "probe_accuracy"}
    for name, x in (("lds", lds_v), ("rmsc", rmsc_v), ("probe_accuracy", probe_v)):
        r = rows[name]
        assert float(r["pearson_r"]) == pytest.approx(np.corrcoef(x, fid)[0, 1], abs=1e-9)
        ranks_x, ranks_y = np.argsort(np.argsort(x)), np.argsort(np.argsort(fid))
        assert float(r["spearman_r"]) == pytest.approx(np.corrcoef(ranks_x, ranks_y)[0, 1], abs=1e-9)
        assert float(r["kendall_r"]) == pytest.approx(naive_kendall(x, fid), abs=1e-9)
        for kind in ("pearson", "spearman", "kendall"):
            assert -1 <= float(r[f"{kind}_ci_low"]) <= float(r[f"{kind}_ci_high"]) <= 1
    assert (out / "metrics_vs_fid.png").stat().st_size > 0
    assert (out / "metrics_vs_fid.pdf").read_bytes()[:4] == b"%PDF"
    assert "pearson" in capsys.readouterr().out


def test_correlate_lists_missing_encoders(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    metrics = write_table(
        tmp_path / "m.csv", [{"encoder": e, "lds_mean": v} for e, v in [("a", 1), ("b", 2), ("c", 3)]]
    )
    fid = write_table(tmp_path / "fid.csv", [{"encoder": e, "fid": v} for e, v in [("a", 1), ("b", 2), ("z", 3)]])
    assert run_cli(["metrics", "correlate", "--metrics", str(metrics), "--fid", str(fid), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "lacks z" in err and "lacks c" in err


# ---------------------------------------------------------------- probe
def test_probe_cli_on_labelled_folder(tmp_path: Path, zoo: FakeZoo) -> None:
    rng = np.random.default_rng(0)
    colours = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}
    for cls, rgb in colours.items():
        for k in range(8):
            img = np.clip(np.array(rgb)[None, None] + rng.integers(-40, 40, (24, 24, 3)), 0, 255).astype(np.uint8)
            write_png(tmp_path / "data" / cls / f"{k}.png", img)
    out = tmp_path / "probe.csv"
    write_table(
        out,
        [
            {
                "encoder": "other",
                "weights": "default",
                "images": "x",
                "n_train": 1,
                "n_test": 1,
                "n_classes": 2,
                "accuracy": 0.5,
                "train_accuracy": 0.5,
            }
        ],
    )
    argv = [
        "metrics",
        "probe",
        "--encoder",
        "tiny-a",
        "--images",
        str(tmp_path / "data"),
        "--n-train",
        "15",
        "--n-test",
        "9",
        "--grid",
        "4",
        "--no-cache",
        "--no-progress",
        "--out",
        str(out),
    ]
    assert run_cli(argv) == 0
    rows = {r["encoder"]: r for r in read_rows(out)}
    assert set(rows) == {"other", "tiny-a"}
    assert int(rows["tiny-a"]["n_train"]) == 15 and int(rows["tiny-a"]["n_test"]) == 9
    assert int(rows["tiny-a"]["n_classes"]) == 3
    assert float(rows["tiny-a"]["accuracy"]) > 0.8  # chance is 1/3


def test_top_level_cli_knows_the_commands() -> None:
    from irepa.cli import build_parser

    args = build_parser().parse_args(["metrics", "rank", "--metrics", "x.csv", "--by", "cds"])
    assert args.by == "cds" and args.func.__name__ == "run_rank"
    args = build_parser().parse_args(
        ["viz", "spatial-norm", "--encoders", "a", "--image", "skimage:astronaut", "--anchor", "3,4", "--out", "f.png"]
    )
    assert args.anchor == (3, 4) and args.func.__name__ == "run_spatial_norm"
