"""The README's first commands, run in-process: a smoke training run, then sampling from it."""

from pathlib import Path

import numpy as np
import pytest

import irepa
from irepa.cli import build_parser, main
from irepa.sample.labels import LABEL_STREAM

CONFIGS = Path(irepa.__file__).parent / "configs"


def test_smoke_train_then_sample(tmp_path):
    run = tmp_path / "smoke"
    assert (
        main(["train", "--config", str(CONFIGS / "irepa.yaml"), "--model", "SiT-S/2", "--smoke", "--out", str(run)])
        == 0
    )
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == [f"step_00000{s}.pt{m}" for s in ("05", "10") for m in ("", ".manifest.json")]
    assert (run / "samples" / "step_0000010.png").is_file()
    assert "zscore" in (run / "config.yaml").read_text()

    out = tmp_path / "samples"
    assert (
        main(
            [
                "sample",
                "--ckpt",
                str(run / "checkpoints"),
                "--num-samples",
                "8",
                "--sampler",
                "ode-euler",
                "--steps",
                "4",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    npz = np.load(next(out.glob("samples_8.npz")))
    assert npz["arr_0"].shape == (8, 16, 16, 3) and npz["arr_0"].dtype == np.uint8
    expected = [np.random.default_rng([LABEL_STREAM, 0, i]).integers(10) for i in range(8)]  # random labels
    assert list(npz["labels"]) == expected
    assert list(out.glob("*.png"))

    # a second train into the same folder without --resume refuses instead of overwriting
    assert main(["train", "--config", str(CONFIGS / "irepa.yaml"), "--smoke", "--out", str(run)]) == 5


def test_unknown_names_fail_with_the_valid_list(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["sample", "--ckpt", "x", "--sampler", "ddim"])
    assert "ode-heun" in capsys.readouterr().err


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for command in (
        "train",
        "sample",
        "eval",
        "encoders",
        "prepare-latents",
        "metrics",
        "viz",
        "quickstart",
        "compare",
    ):
        assert command in text
