"""Released checkpoints imported as runs: the imported network equals the reference code's on fixed inputs.

The fixtures under tests/assets/interop/ were written once by tools/make_interop_fixtures.py with the
reference code bases (REPA, iREPA ldm/ and jit/, REPA-E, JiT, the MeanFlow PyTorch port): a tiny model
with seeded random weights in the reference's checkpoint format, fixed inputs, and the reference
forward's outputs for the raw and EMA weights (and its projector outputs). These tests read only those files and irepa.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from irepa.cli import main
from irepa.config import config_from_checkpoint, load_config
from irepa.errors import CheckpointError
from irepa.interop import import_checkpoint
from irepa.sample.pipeline import build_model_from_config
from irepa.train.checkpoint import load_checkpoint

ASSETS = Path(__file__).parent / "assets" / "interop"
OPTIONS = {
    "repa": {"num_heads": 2},
    "irepa-ldm": {"num_heads": 2, "vae": "stabilityai/sd-vae-ft-mse",
                  "latent_stats": str(ASSETS / "irepa-ldm-latents-stats.pt")},
    "repa-e": {"num_heads": 2, "vae": "E2E-VAE-folder"},
    "jit": {"in_context_start": 2},
    "irepa-jit": {"in_context_start": 2},
}
TOLERANCE = 1e-5  # relative, ||ours - reference|| / ||reference||


def _relative(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return float((ours - reference).norm() / reference.norm())


def _import(source: str, tmp_path: Path, **extra) -> tuple[dict, dict]:
    path = import_checkpoint(source, ASSETS / f"{source}.pt", tmp_path / source, **{**OPTIONS[source], **extra})
    return load_checkpoint(path), torch.load(ASSETS / f"{source}-golden.pt")


def _network_time(source: str, t: torch.Tensor) -> torch.Tensor:
    """The fixtures' t is the reference's; JiT's is 1 - irepa's t."""
    return 1 - t if "jit" in source else t


@pytest.mark.parametrize("source", list(OPTIONS))
def test_imported_network_equals_the_reference_output(source, tmp_path):
    ckpt, golden = _import(source, tmp_path)
    model = build_model_from_config(ckpt["config"]).eval()
    t = _network_time(source, golden["t"])
    pairs = [("model", "out_raw"), ("ema", "out_ema")]
    pairs += [(("extra_ema", i), f"out_ema{i + 2}") for i in range(len(ckpt["extra_ema"]))]
    for key, ref in pairs:
        state = ckpt[key[0]][key[1]] if isinstance(key, tuple) else ckpt[key]
        model.load_state_dict(state)
        with torch.no_grad():
            out = model(golden["x"], t, golden["y"])
        assert out.shape == golden[ref].shape
        assert _relative(out, golden[ref]) <= TOLERANCE, (source, key)
    assert ckpt["optimizer"] is None  # optimiser state is never imported


@pytest.mark.parametrize("source", ["repa", "irepa-ldm", "repa-e", "irepa-jit"])
def test_imported_projectors_equal_the_reference_projector_outputs(source, tmp_path):
    from irepa.align import Aligner
    from irepa.encoders.registry import get_spec

    ckpt, golden = _import(source, tmp_path)
    cfg = config_from_checkpoint(ckpt)
    model = build_model_from_config(ckpt["config"]).eval()
    model.load_state_dict(ckpt["model"])
    a = cfg.align
    aligner = Aligner(model.hidden_size, {e.name: get_spec(e.name).embed_dim for e in a.encoders}, model.grid,
                      projector=a.projector, kernel_size=a.kernel_size, projector_hidden_dim=a.projector_hidden_dim)
    aligner.load_state_dict(ckpt["aligner"])
    with torch.no_grad():
        _, hidden = model(golden["x"], _network_time(source, golden["t"]), golden["y"], return_hidden_at=a.depth)
        for name, reference in zip(aligner.names, golden["zs_raw"]):
            assert _relative(aligner.projectors[name.replace(".", "_")](hidden, aligner.grid), reference) <= TOLERANCE


def test_settings_come_from_the_checkpoint_arguments(tmp_path):
    ckpt, _ = _import("irepa-ldm", tmp_path)
    cfg = config_from_checkpoint(ckpt)
    assert (cfg.align.projector, cfg.align.kernel_size, cfg.align.norm) == ("conv", 3, "zscore")
    assert (cfg.align.depth, cfg.align.coeff, cfg.align.zscore_alpha) == (2, 1.0, 0.6)
    assert [e.name for e in cfg.align.encoders] == ["hog"]
    stats = torch.load(ASSETS / "irepa-ldm-latents-stats.pt")  # the model sees (z - bias) * scale
    np.testing.assert_allclose(ckpt["codec"]["mean"], stats["latents_bias"].flatten().double(), rtol=1e-12)
    np.testing.assert_allclose(ckpt["codec"]["std"], 1 / stats["latents_scale"].flatten().double(), rtol=1e-12)

    jit = config_from_checkpoint(_import("irepa-jit", tmp_path)[0])
    # JiT's numbers are in its own time (t = 0 noise): P_mean -0.8 and the CFG interval (0.1, 1) become
    assert jit.objective.p_mean == pytest.approx(0.8)
    assert (jit.sample.guidance_low, jit.sample.guidance_high) == pytest.approx((0.0, 0.9))
    assert (jit.sample.kind, jit.sample.steps, jit.sample.cfg_scale) == ("ode-heun", 50, 2.9)
    assert jit.train.extra_ema_decays == [0.9996] and jit.align.zscore_alpha == 0.8


def test_repa_e_latent_statistics_are_its_batch_norm_running_statistics(tmp_path):
    ckpt, _ = _import("repa-e", tmp_path)
    ema = torch.load(ASSETS / "repa-e.pt", weights_only=False)["ema"]
    np.testing.assert_allclose(ckpt["codec"]["mean"], ema["bn.running_mean"].double(), rtol=1e-12)
    np.testing.assert_allclose(np.square(ckpt["codec"]["std"]), ema["bn.running_var"].double(), rtol=1e-12)
    assert ckpt["codec"]["vae"] == "E2E-VAE-folder"


def test_a_released_bare_ema_state_dict_imports_as_raw_and_ema(tmp_path):
    released = tmp_path / "last.pt"
    # REPA's release is the EMA state dict alone
    torch.save(torch.load(ASSETS / "repa.pt", weights_only=False)["ema"], released)
    with pytest.raises(CheckpointError, match="--num-heads"):  # no arguments, no standard size: heads unknown
        import_checkpoint("repa", released, tmp_path / "refused", encoders="sift", align_depth=2)
    assert not (tmp_path / "refused").exists()
    path = import_checkpoint("repa", released, tmp_path / "run", encoders="sift", align_depth=2, num_heads=2)
    ckpt, golden = load_checkpoint(path), torch.load(ASSETS / "repa-golden.pt")
    model = build_model_from_config(ckpt["config"]).eval()
    for key in ("model", "ema"):
        model.load_state_dict(ckpt[key])
        with torch.no_grad():
            assert _relative(model(golden["x"], golden["t"], golden["y"]), golden["out_ema"]) <= TOLERANCE


@pytest.mark.parametrize("source, file, says", [
    ("repa", "repa-e", "use --from repa-e"),
    ("repa-e", "repa", "use --from repa or --from irepa-ldm"),
    ("repa", "irepa-ldm", "use --from irepa-ldm"),
    ("irepa-ldm", "repa", "use --from repa"),
    ("jit", "irepa-jit", "use --from irepa-jit"),
    ("irepa-jit", "jit", "use --from jit"),
    ("jit", "repa", "a SiT of the REPA code"),
    ("repa", "jit", "a JiT checkpoint"),
    ("meanflow", "repa", "not a checkpoint of the MeanFlow PyTorch port"),
    ("repa", "meanflow", "use --from meanflow"),
])
def test_a_checkpoint_of_the_wrong_kind_is_refused_in_one_line(source, file, says, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["import", "--from", source, str(ASSETS / f"{file}.pt"), "--out", str(out), "--num-heads", "2",
                 "--vae", "v", "--latent-stats", str(ASSETS / "irepa-ldm-latents-stats.pt")])
    err = capsys.readouterr().err.strip()
    assert code == CheckpointError.exit_code
    assert len(err.splitlines()) == 1 and err.startswith(f"irepa import: --from {source}:") and says in err
    assert not out.exists()


def test_the_meanflow_ports_u_net_imports_and_equals_its_network_output(tmp_path):
    # written by the port's own MeanFlow module: {"model": net / net_ema / net_ema1 / num_updates, ..., "args"}
    path = import_checkpoint("meanflow", ASSETS / "meanflow.pt", tmp_path / "run")
    ckpt, golden = load_checkpoint(path), torch.load(ASSETS / "meanflow-golden.pt")
    model = build_model_from_config(ckpt["config"]).eval()
    y = torch.zeros(len(golden["t"]), dtype=torch.long)  # an unconditional release: its one class
    for state, ref in [(ckpt["model"], "out_raw"), (ckpt["ema"], "out_ema"), (ckpt["extra_ema"][0], "out_ema2")]:
        model.load_state_dict(state)
        with torch.no_grad():
            out = model(golden["x"], golden["t"], y, r=golden["r"])
            null = model(golden["x"], golden["t"], torch.ones_like(y), r=golden["r"])
        assert _relative(out, golden[ref]) <= TOLERANCE, ref
        torch.testing.assert_close(null, out, rtol=0, atol=0)  # the class embedding is zero
    assert ckpt["optimizer"] is None and ckpt["step"] == 8000  # the port's EMA update count


def test_meanflow_settings_come_from_the_ports_arguments(tmp_path):
    cfg = config_from_checkpoint(load_checkpoint(import_checkpoint("meanflow", ASSETS / "meanflow.pt", tmp_path / "r")))
    m = cfg.objective.meanflow
    assert (cfg.objective.kind, cfg.objective.time_sampling, cfg.objective.p_mean, cfg.objective.p_std) == (
        "meanflow", "lognormal", -0.6, 1.6)
    assert (m.r_p_mean, m.r_p_std, m.pairing, m.ratio, m.adaptive_p, m.adaptive_c) == (-4.0, 1.6, "clamped", 0.75,
                                                                                       0.75, 1e-3)
    assert (cfg.sample.kind, cfg.sample.steps) == ("meanflow", 1)
    assert (cfg.train.ema_decay, cfg.train.extra_ema_decays, cfg.model.dropout) == (0.9999, [0.99995], 0.2)
    assert (cfg.model.base_channels, cfg.model.channel_mult, cfg.model.attention_levels) == (8, [1, 2], [1])


@pytest.mark.parametrize("change, says", [
    (lambda c: c["model"].update({"net.map_noise.freqs": torch.ones(8)}), "Fourier embedding"),
    (lambda c: setattr(c["args"], "dataset", "cifar10"), "dataset cifar10 (32 px) but the weights are 8 px"),
    (lambda c: setattr(c["args"], "ema_decays", []), "0 extra EMA decay(s) but the file has 1"),
    (lambda c: setattr(c["args"], "arch", "dit"), "'dit' is not one irepa can rebuild"),
])
def test_a_meanflow_checkpoint_irepa_cannot_rebuild_is_refused_in_one_line(change, says, tmp_path, capsys):
    bad = torch.load(ASSETS / "meanflow.pt", weights_only=False)
    change(bad)
    torch.save(bad, tmp_path / "bad.pt")
    code = main(["import", "--from", "meanflow", str(tmp_path / "bad.pt"), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == CheckpointError.exit_code and len(err.splitlines()) == 1 and says in err, err
    assert not (tmp_path / "run").exists()
    with pytest.raises(CheckpointError, match="use --from meanflow"):  # and a SiT importer names the right source
        import_checkpoint("repa", ASSETS / "meanflow.pt", tmp_path / "run")


def test_an_imported_meanflow_run_samples_in_one_step_diagnoses_and_fine_tunes(tmp_path):
    from irepa.train.trainer import train

    run = tmp_path / "run"
    assert main(["import", "--from", "meanflow", str(ASSETS / "meanflow.pt"), "--out", str(run)]) == 0
    images = []
    for attempt in ("a", "b"):
        out = tmp_path / attempt
        assert main(["sample", "--ckpt", str(run), "--num-samples", "2", "--seed", "3", "--out", str(out),
                     "--no-progress"]) == 0
        images.append(np.load(next(out.glob("*.npz")))["arr_0"])
    assert images[0].shape == (2, 8, 8, 3)
    np.testing.assert_array_equal(images[0], images[1])
    assert main(["diagnose", str(run), "--images", "synthetic", "--n-train", "24", "--n-test", "12", "--encoder",
                 "hog", "--t", "0.5"]) == 0  # at the stage align.depth names (down.1)
    ckpt = load_checkpoint(next((run / "checkpoints").glob("*.pt")))
    cfg = load_config(run / "config.yaml", {
        "out": str(tmp_path / "tuned"), "data.source": "synthetic", "data.resolution": 8, "data.num_classes": 1,
        "data.num_workers": 0, "train.steps": 1, "train.batch_size": 4, "train.warmup_steps": 0,
        "train.sample_every": 0, "train.report_to": ["none"], "train.ckpt_every": 1, "train.mixed_precision": "fp32",
        "train.compile": False,
    })
    tuned = load_checkpoint(train(cfg, init_from=str(run)).checkpoint)
    moved = max((tuned["model"][k] - v).abs().max().item() for k, v in ckpt["model"].items())
    assert 0 < moved < 1e-2  # one Adam step from the imported weights


def test_arguments_that_contradict_the_weights_are_refused(tmp_path):
    bad = torch.load(ASSETS / "repa.pt", weights_only=False)
    bad["args"].model = "SiT-B/2"  # depth 12, width 768: not these weights
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="name SiT-B/2 .* but its weights have depth 4, width 16"):
        import_checkpoint("repa", tmp_path / "bad.pt", tmp_path / "run")
    with pytest.raises(CheckpointError, match="--latent-stats"):
        import_checkpoint("irepa-ldm", ASSETS / "irepa-ldm.pt", tmp_path / "run2", num_heads=2)


def test_import_never_overwrites_a_run(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="not empty"):
        import_checkpoint("jit", ASSETS / "jit.pt", tmp_path / "run", in_context_start=2)
    assert (tmp_path / "run" / "keep.txt").read_text() == "mine"


def test_import_then_sample_with_a_fixed_seed_gives_the_same_images_twice(tmp_path):
    run = tmp_path / "run"
    assert main(["import", "--from", "irepa-jit", str(ASSETS / "irepa-jit.pt"), "--out", str(run),
                 "--in-context-start", "2"]) == 0
    images = []
    for attempt in ("a", "b"):
        out = tmp_path / attempt
        assert main(["sample", "--ckpt", str(run), "--num-samples", "4", "--sampler", "ode-heun", "--steps", "3",
                     "--cfg-scale", "1.5", "--seed", "7", "--batch-size", "2", "--out", str(out),
                     "--no-progress"]) == 0
        (npz,) = out.glob("*.npz")
        images.append(np.load(npz)["arr_0"])
    assert images[0].shape == (4, 16, 16, 3) and images[0].std() > 0
    np.testing.assert_array_equal(images[0], images[1])


def test_a_latent_run_samples_latents_without_its_vae(tmp_path):
    from irepa.codecs import codec_from_checkpoint
    from irepa.diffusion.samplers import SamplerConfig
    from irepa.objectives import build_objective
    from irepa.sample.pipeline import Generator

    ckpt, _ = _import("repa", tmp_path)  # decodes with stabilityai/sd-vae-ft-ema, which is not on this machine
    cfg = config_from_checkpoint(ckpt)
    model = build_model_from_config(ckpt["config"]).eval()
    model.load_state_dict(ckpt["ema"])
    codec = codec_from_checkpoint(ckpt)
    gen = Generator(model, build_objective(cfg.objective, cfg.model.num_classes), codec, cfg.model.input_size)
    latents = gen.sample_latents(torch.tensor([1, 2]), [0, 1], SamplerConfig(kind="ode-euler", steps=2))
    assert latents.shape == (2, 4, 8, 8) and torch.isfinite(latents).all()
    assert codec._vae is None  # nothing loaded it


def test_init_from_loads_weights_ema_and_projectors_with_a_fresh_optimizer(tmp_path):
    from irepa.train.trainer import train

    run = tmp_path / "imported"
    import_checkpoint("irepa-jit", ASSETS / "irepa-jit.pt", run, in_context_start=2)
    source = load_checkpoint(run)
    lr, decay = 1e-9, 0.5
    cfg = load_config(run / "config.yaml", {
        "out": str(tmp_path / "tuned"), "data.source": "synthetic", "data.resolution": 16, "data.num_classes": 10,
        "data.num_workers": 0, "data.flip": False, "train.steps": 1, "train.batch_size": 2, "train.lr": lr,
        "train.warmup_steps": 0, "train.ema_decay": decay, "train.extra_ema_decays": [decay],
        "train.sample_every": 0, "train.report_to": ["none"], "train.ckpt_every": 1, "train.mixed_precision": "no",
        "train.compile": False,
    })
    result = train(cfg, init_from=str(run))
    tuned = load_checkpoint(result.checkpoint)
    # one Adam step of lr 1e-9 moves each weight by about 1e-9: the weights are the imported ones
    for key, value in source["model"].items():
        torch.testing.assert_close(tuned["model"][key], value, atol=1e-7, rtol=0)
    for key, value in source["aligner"].items():
        torch.testing.assert_close(tuned["aligner"][key], value, atol=1e-7, rtol=0)
    # the EMAs continued from the imported EMAs: shadow = decay * imported EMA + (1 - decay) * weights
    for tuned_ema, source_ema in [(tuned["ema"], source["ema"]), (tuned["extra_ema"][0], source["extra_ema"][0])]:
        for key, value in source_ema.items():
            expected = decay * value + (1 - decay) * source["model"][key]
            torch.testing.assert_close(tuned_ema[key], expected, atol=1e-6, rtol=1e-6)
    steps = {int(s["step"]) for s in tuned["optimizer"]["state"].values()}
    assert steps == {1}  # a fresh optimiser: its first step


def test_init_from_trains_with_the_runs_own_config_from_any_of_its_paths(tmp_path):
    from irepa.train.init_from import run_config_of

    path = import_checkpoint("jit", ASSETS / "jit.pt", tmp_path / "run", in_context_start=2)
    for given in (tmp_path / "run", path.parent, path):
        assert run_config_of(given) == tmp_path / "run" / "config.yaml"
    assert load_config(run_config_of(path)).model.in_context_start == 2


def test_resuming_an_imported_run_is_refused_with_the_fine_tuning_fix(tmp_path, capsys):
    run = tmp_path / "run"
    import_checkpoint("jit", ASSETS / "jit.pt", run, in_context_start=2)
    before = {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()}
    code = main(["train", "--config", str(run / "config.yaml"), "--out", str(run), "--resume",
                 "--data.source", "synthetic", "--data.resolution", "16", "--train.steps", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 5
    assert len(err) == 1 and "no optimizer state" in err[0] and "--init-from" in err[0]
    assert {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()} == before
