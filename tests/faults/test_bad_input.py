"""Bad input to every command: missing files, wrong types, impossible values, unknown names.

Each case must end with a non-zero exit status, no traceback, and one line that names the
offending argument (or file). The two commands a fresh clone is checked with also run as real
processes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from faultkit import TINY_TRAIN, cli
from PIL import Image

import irepa
from irepa.evaluate import save_npz

CONFIGS = Path(irepa.__file__).parent / "configs"

# (id, argv from the fixtures, expected exit code, text the message must contain)
CASES = [
    # train: files, types, values, names, shapes
    ("train-missing-config", lambda f: ["train", "--config", f.tmp / "nope.yaml", "--out", f.tmp / "r"], 2,
     "nope.yaml"),
    ("train-bad-yaml", lambda f: ["train", "--config", f.bad_yaml, "--out", f.tmp / "r"], 2, "bad.yaml"),
    ("train-lr-not-a-number", lambda f: [*TINY_TRAIN, "--train.lr", "abc", "--out", f.tmp / "r"], 2, "train.lr"),
    ("train-steps-not-a-number", lambda f: [*TINY_TRAIN, "--steps", "ten", "--out", f.tmp / "r"], 2, "--steps"),
    ("train-negative-steps", lambda f: [*TINY_TRAIN, "--train.steps", "-5", "--out", f.tmp / "r"], 2, "train.steps"),
    ("train-zero-batch", lambda f: [*TINY_TRAIN, "--train.batch_size", "0", "--out", f.tmp / "r"], 2,
     "train.batch_size"),
    ("train-batch-not-divisible", lambda f: [*TINY_TRAIN, "--train.batch_size", "6", "--train.grad_accum", "4",
                                             "--out", f.tmp / "r"], 2, "train.batch_size"),
    ("train-negative-lr", lambda f: [*TINY_TRAIN, "--train.lr", "-1e-3", "--out", f.tmp / "r"], 2, "train.lr"),
    ("train-bad-precision", lambda f: [*TINY_TRAIN, "--train.mixed_precision", "fp8", "--out", f.tmp / "r"], 2,
     "train.mixed_precision"),
    ("train-unknown-field", lambda f: [*TINY_TRAIN, "--train.nope", "1", "--out", f.tmp / "r"], 2, "--train.nope"),
    ("train-unknown-encoder", lambda f: [*TINY_TRAIN, "--align.encoders", "no-such-encoder", "--out", f.tmp / "r"],
     2, "no-such-encoder"),
    ("train-unknown-model", lambda f: [*TINY_TRAIN, "--model", "SiT-Q/3", "--out", f.tmp / "r"], 2, "SiT-Q/3"),
    ("train-unknown-source", lambda f: [*TINY_TRAIN, "--data.source", "nope", "--out", f.tmp / "r"], 2, "nope"),
    ("train-unknown-norm", lambda f: [*TINY_TRAIN, "--align.norm", "l2", "--out", f.tmp / "r"], 2, "align.norm"),
    ("train-depth-too-deep", lambda f: [*TINY_TRAIN, "--align.depth", "5", "--out", f.tmp / "r"], 2, "align.depth"),
    ("train-grid-mismatch", lambda f: [*TINY_TRAIN, "--data.resolution", "16", "--out", f.tmp / "r"], 2,
     "model.input_size"),
    ("train-missing-image-folder", lambda f: [*TINY_TRAIN, "--data.source", "folder", "--data.path", f.tmp / "none",
                                              "--out", f.tmp / "r"], 3, str(Path("none"))),
    ("train-resume-nothing", lambda f: [*TINY_TRAIN, "--resume", "--out", f.tmp / "r"], 5, "no checkpoint"),
    ("train-resume-missing-file", lambda f: [*TINY_TRAIN, "--resume", f.tmp / "x.pt", "--out", f.tmp / "r"], 5,
     "x.pt"),
    ("train-over-existing-run", lambda f: [*TINY_TRAIN, "--out", f.run], 5, "--resume"),
    # sample
    ("sample-missing-ckpt", lambda f: ["sample", "--ckpt", f.tmp / "nope", "--num-samples", "1"], 5, "nope"),
    ("sample-not-a-checkpoint", lambda f: ["sample", "--ckpt", f.text, "--num-samples", "1"], 5, "notes.txt"),
    ("sample-negative-count", lambda f: ["sample", "--ckpt", f.ckpt, "--num-samples", "-1"], 2, "--num-samples"),
    ("sample-zero-steps", lambda f: ["sample", "--ckpt", f.ckpt, "--steps", "0"], 2, "steps"),
    ("sample-unknown-sampler", lambda f: ["sample", "--ckpt", f.ckpt, "--sampler", "ddim"], 2, "--sampler"),
    ("sample-batch-not-a-number", lambda f: ["sample", "--ckpt", f.ckpt, "--batch-size", "abc"], 2, "--batch-size"),
    ("sample-class-out-of-range", lambda f: ["sample", "--ckpt", f.ckpt, "--classes", "99", "--num-samples", "2",
                                             "--out", f.tmp / "s"], 2, "classes"),
    ("sample-bad-guidance", lambda f: ["sample", "--ckpt", f.ckpt, "--guidance-low", "0.8", "--guidance-high", "0.2"],
     2, "guidance"),
    # eval
    ("eval-missing-samples", lambda f: ["eval", "--samples", f.tmp / "none.npz", "--ref", "fashion-mnist"], 3,
     "--samples"),
    ("eval-junk-samples", lambda f: ["eval", "--samples", f.junk, "--ref", "fashion-mnist"], 3, "junk.npz"),
    ("eval-missing-reference", lambda f: ["eval", "--samples", f.samples, "--ref", f.tmp / "none"], 3, "--ref"),
    ("eval-zero-batch", lambda f: ["eval", "--samples", f.samples, "--ref", "fashion-mnist", "--batch-size", "0"], 2,
     "--batch-size"),
    ("eval-unknown-features", lambda f: ["eval", "--samples", f.samples, "--ref", "x", "--features", "clip"], 2,
     "--features"),
    ("eval-no-gpu", lambda f: ["eval", "--samples", f.samples, "--ref", "fashion-mnist", "--device", "cuda:7"]
     if not f.cuda else ["eval", "--samples", f.samples, "--ref", "fashion-mnist", "--device", "tpu"], 2, "--device"),
    # prepare-latents
    ("latents-no-data", lambda f: ["prepare-latents", "--vae", f.vae, "--out", f.tmp / "l"], 2, "--data"),
    ("latents-missing-folder", lambda f: ["prepare-latents", "--data", f.tmp / "none", "--vae", f.vae,
                                          "--out", f.tmp / "l"], 3, "--data"),
    ("latents-offline-vae", lambda f: ["prepare-latents", "--source", "synthetic", "--vae", "org/no-such-vae",
                                       "--out", f.tmp / "l"], 4, "org/no-such-vae"),
    ("latents-not-a-vae-folder", lambda f: ["prepare-latents", "--source", "synthetic", "--vae", f.tmp,
                                            "--out", f.tmp / "l"], 4, "--vae"),
    ("latents-grid-mismatch", lambda f: ["prepare-latents", "--source", "synthetic", "--vae", f.vae, "--resolution",
                                         "15", "--num-workers", "0", "--out", f.tmp / "l"], 2, "resolution"),
    ("latents-zero-shard", lambda f: ["prepare-latents", "--source", "synthetic", "--vae", f.vae, "--shard-size", "0",
                                      "--out", f.tmp / "l"], 2, "--shard-size"),
    ("latents-unknown-source", lambda f: ["prepare-latents", "--source", "web", "--vae", f.vae, "--out", f.tmp], 2,
     "--source"),
    # encoders, metrics, viz, experiments
    ("encoders-unknown", lambda f: ["encoders", "info", "no-such-encoder"], 2, "no-such-encoder"),
    ("metrics-unknown-encoder", lambda f: ["metrics", "spatial", "--encoders", "no-such-encoder", "--images",
                                           f.images, "--out", f.tmp / "m.csv", "--no-progress"], 2,
     "no-such-encoder"),
    ("metrics-missing-images", lambda f: ["metrics", "spatial", "--encoders", "hog", "--images", f.tmp / "none",
                                          "--out", f.tmp / "m.csv", "--no-progress"], 3, "none"),
    ("viz-missing-image", lambda f: ["viz", "spatial-norm", "--encoders", "hog", "--image", f.tmp / "none.png",
                                     "--out", f.tmp / "v.png"], 3, "none.png"),
    ("diagnose-missing-run", lambda f: ["diagnose", f.tmp / "none"], 3, "none"),
    ("diagnose-bad-noise-level", lambda f: ["diagnose", f.run, "--t", "2"], 2, "--t"),
    ("compare-unknown-recipe", lambda f: ["compare", "--recipes", "irepa,nope", "--out", f.tmp / "c"], 2, "nope"),
    ("quickstart-bad-set", lambda f: ["quickstart", "--set", "train.lr", "--out", f.tmp / "q"], 2, "--set"),
]  # fmt: skip


@pytest.fixture(scope="module")
def inputs(reference_run, tiny_vae, tmp_path_factory):
    import torch

    tmp = tmp_path_factory.mktemp("bad-input")
    (tmp / "bad.yaml").write_text("train: [unclosed\n")
    (tmp / "junk.npz").write_bytes(b"not a zip file at all")
    (tmp / "notes.txt").write_text("not a checkpoint\n")
    save_npz(tmp / "samples_4.npz", arr_0=np.zeros((4, 8, 8, 3), np.uint8))
    (tmp / "images").mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp / "images" / "a.png")
    run = reference_run[0]
    return SimpleNamespace(tmp=tmp, run=run, ckpt=run / "checkpoints", vae=tiny_vae, bad_yaml=tmp / "bad.yaml",
                           junk=tmp / "junk.npz", text=tmp / "notes.txt", samples=tmp / "samples_4.npz",
                           images=tmp / "images", cuda=torch.cuda.is_available())


@pytest.mark.parametrize(("case", "argv", "code", "names"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_clear_line(case, argv, code, names, inputs, capsys):
    args = [str(a) for a in argv(inputs)]
    try:
        got = cli(*args)
    except SystemExit as stop:  # argparse usage errors leave through SystemExit, as for any CLI
        got = stop.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("irepa")]
    assert got == code, err
    assert "Traceback" not in err
    assert len(lines) == 1 and names in lines[0], err
    assert any(mark in lines[0] for mark in (" — ", "; ", "valid", "Valid")), f"no fix offered: {lines[0]}"


@pytest.mark.parametrize(
    "argv",
    [["train", "--config", "does-not-exist.yaml", "--out", "runs/x"],
     ["sample", "--ckpt", "does-not-exist", "--num-samples", "1"]],
    ids=["train", "sample"],
)
def test_fresh_clone_commands_print_one_line(argv, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(irepa.__file__).parents[1]), env.get("PYTHONPATH")) if p)
    proc = subprocess.run([sys.executable, "-m", "irepa.cli", *argv], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode in (2, 5)
    assert proc.stdout == "" and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "does-not-exist" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()  # nothing was created


def test_debug_shows_the_traceback_as_well(tmp_path, capsys, monkeypatch):
    assert cli("train", "--config", tmp_path / "nope.yaml", "--debug") == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "ConfigError" in err and err.rstrip().splitlines()[-1].startswith("irepa train:")
    monkeypatch.setenv("IREPA_DEBUG", "1")
    assert cli("sample", "--ckpt", tmp_path / "nope") == 5
    assert "Traceback" in capsys.readouterr().err
