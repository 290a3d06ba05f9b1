"""Numeric precision: autocast for the model call only (state and time stay float32), TF32 off in evaluation."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from irepa.codecs import PixelCodec
from irepa.diffusion.samplers import SamplerConfig
from irepa.errors import ConfigError
from irepa.evaluate.evaluator import Activations, Evaluator, ReferenceStats
from irepa.evaluate.features import FeatureExtractor
from irepa.models import create_model
from irepa.objectives import ObjectiveConfig, build_objective
from irepa.precision import autocast_model, no_tf32, resolve_precision, tf32_enabled
from irepa.sample.pipeline import Generator

NUM_CLASSES = 4


def make_generator(model: nn.Module, size: int, precision: str = "auto", prediction: str = "velocity") -> Generator:
    """A pixel-space (3-channel) generator of ``size`` px around ``model``."""
    objective = build_objective(ObjectiveConfig(prediction=prediction), NUM_CLASSES)
    return Generator(model, objective, PixelCodec(3), size, precision=precision)


def test_resolve_precision():
    assert resolve_precision("auto", "cpu") == "fp32" and resolve_precision(None, "cpu") == "fp32"
    assert resolve_precision("auto", "cuda") == "bf16" and resolve_precision("auto", torch.device("cuda", 1)) == "bf16"
    assert resolve_precision("fp16", "cpu") == "fp16"
    with pytest.raises(ConfigError, match="unknown precision 'half'; valid: auto, fp32, bf16, fp16"):
        resolve_precision("half", "cpu")
    with pytest.raises(ConfigError, match="unknown precision"):
        make_generator(nn.Linear(2, 2), 4, precision="int8")


class Probe(nn.Module):
    """A velocity model that records what it is called with: dtypes, autocast state and the times."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Conv2d(3, 3, 1)
        self.calls: list[dict] = []

    def forward(self, x, t, y):
        autocast = torch.is_autocast_enabled("cpu")
        self.calls.append({"x": x.dtype, "t": t.dtype, "t_values": t.clone(), "autocast": autocast})
        return self.proj(x) * t[:, None, None, None]


def test_autocast_model_lowers_the_model_only():
    probe = Probe()
    assert autocast_model(probe, "fp32") is probe  # fp32: the model itself, bit for bit as before
    velocity = autocast_model(probe, "bf16")
    x, t = torch.randn(2, 3, 4, 4), torch.full((2,), 0.999)
    v = velocity(x, t, torch.zeros(2, dtype=torch.long))
    call = probe.calls[-1]
    assert call["autocast"] and call["x"] == torch.float32 and call["t"] == torch.float32
    assert torch.equal(call["t_values"], t)  # not rounded: 0.999 in bf16 would be 1.0
    assert torch.tensor(0.999).bfloat16().item() == 1.0  # what a bf16 t would have been
    assert v.dtype == torch.float32  # the integrator gets float32 back
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = probe.proj(x).float() * t[:, None, None, None]
    torch.testing.assert_close(v, expected, rtol=0, atol=0)


def test_autocast_model_passes_extra_arguments_and_casts_every_floating_output():
    lin = nn.Linear(4, 4)

    def model(x, t, y, r=None):  # e.g. an average-velocity model taking a second time, returning extras
        assert t.dtype == r.dtype == torch.float32 and torch.is_autocast_enabled("cpu")
        h = lin(x)
        return h * (t - r)[:, None], (h, y)

    x, t, r = torch.randn(3, 4), torch.rand(3), torch.rand(3)
    out, (hidden, labels) = autocast_model(model, "fp16")(x, t, torch.arange(3), r=r)
    assert out.dtype == hidden.dtype == torch.float32 and labels.dtype == torch.int64
    x64 = x.double()
    assert autocast_model(lambda x, t: lin.double()(x) * t[:, None], "bf16")(x64, t.double()).dtype == torch.float64


def test_sampling_in_bf16_keeps_state_and_time_in_float32():
    probe = Probe()
    generator = make_generator(probe, 4, precision="bf16")
    assert generator.precision == "bf16"
    steps = 250
    latents = generator.sample_latents(torch.tensor([0, 1]), [0, 1], SamplerConfig(kind="sde", steps=steps))
    assert latents.dtype == torch.float32
    assert all(c["autocast"] and c["t"] == torch.float32 and c["x"] == torch.float32 for c in probe.calls)
    times = [float(c["t_values"][0]) for c in probe.calls]
    grid = torch.linspace(1.0, 0.04, steps, dtype=torch.float64).float().tolist()  # the SDE grid, independently
    assert times == grid
    assert len(set(times)) == steps  # no two steps share a time (bf16 would merge those near t = 1)
    assert len(set(torch.tensor(grid).bfloat16().tolist())) < steps  # ... as these bf16 times show


def random_sit() -> nn.Module:
    torch.manual_seed(0)
    model = create_model("SiT-S/2", input_size=8, in_channels=3, num_classes=NUM_CLASSES, depth=2,
                         hidden_size=64, num_heads=2)
    with torch.no_grad():  # DiT initialisation zeroes the output and modulation layers: give them weights
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize(("kind", "prediction"), [("ode-heun", "velocity"), ("sde", "velocity"), ("ode-heun", "x")])
def test_bf16_sampling_stays_close_to_fp32(kind, prediction):
    model = random_sit()
    cfg = SamplerConfig(kind=kind, steps=8, cfg_scale=1.5)
    labels, seeds = torch.tensor([0, 1, 2, 3]), [10, 11, 12, 13]
    exact = make_generator(model, 8, "fp32", prediction).sample_latents(labels, seeds, cfg)
    mixed = make_generator(model, 8, "bf16", prediction).sample_latents(labels, seeds, cfg)
    assert mixed.dtype == torch.float32
    rel = float((mixed - exact).norm() / exact.norm())
    assert 0 < rel < 1e-2  # bf16 did run (not bit-identical), and the final state stays close


# ---------------------------------------------------------------- TF32


def set_legacy_tf32(enabled: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


@pytest.fixture
def tf32_on():
    """TF32 allowed for matmuls and convolutions (a common training setting), reset to torch's defaults after."""
    set_legacy_tf32(True)
    yield
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = True


def test_no_tf32_turns_tf32_off_inside_and_restores_it_even_on_error(tf32_on):
    assert tf32_enabled() == {"matmul": True, "conv": True}
    with no_tf32():
        assert tf32_enabled() == {"matmul": False, "conv": False}
        assert torch.backends.cuda.matmul.allow_tf32 is False and torch.backends.cudnn.allow_tf32 is False
        assert torch.get_float32_matmul_precision() == "highest"
    assert tf32_enabled() == {"matmul": True, "conv": True}
    assert torch.get_float32_matmul_precision() == "high"
    with pytest.raises(KeyError), no_tf32():
        raise KeyError("boom")
    assert tf32_enabled() == {"matmul": True, "conv": True}
    set_legacy_tf32(False)
    with no_tf32():
        assert tf32_enabled() == {"matmul": False, "conv": False}
    assert tf32_enabled() == {"matmul": False, "conv": False}


SETTINGS_SCRIPT = """
import torch
from irepa.precision import no_tf32, tf32_enabled

def flags():
    out = {}
    for name, read in {
        "matmul.allow_tf32": lambda: torch.backends.cuda.matmul.allow_tf32,
        "cudnn.allow_tf32": lambda: torch.backends.cudnn.allow_tf32,
        "matmul_precision": torch.get_float32_matmul_precision,
        "fp32_precision": lambda: getattr(torch.backends, "fp32_precision", None),
        "matmul.fp32_precision": lambda: getattr(torch.backends.cuda.matmul, "fp32_precision", None),
        "conv.fp32_precision": lambda: getattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision", None),
    }.items():
        try:
            out[name] = read()
        except RuntimeError:
            out[name] = "refused"
    return out

{setup}
before = flags()
with no_tf32():
    inside, enabled = flags(), tf32_enabled()
assert flags() == before, (before, flags())
assert enabled == {"matmul": False, "conv": False}, enabled
assert "refused" not in inside.values(), inside
print("ok")
"""


@pytest.mark.parametrize("setup", [
    "torch.backends.fp32_precision = 'tf32'",  # the newer per-operation settings, set globally
    "torch.backends.cuda.matmul.fp32_precision = 'tf32'",  # one operation through the newer settings
])
def test_no_tf32_restores_settings_made_through_the_newer_api(setup):
    if not hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        pytest.skip("this torch has only the legacy TF32 flags")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    script = SETTINGS_SCRIPT.replace("{setup}", setup)
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                         timeout=120)  # a fresh process: these settings are global
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr


class RecordingExtractor(FeatureExtractor):
    """Records the numeric settings its ``extract`` runs under."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3, 4)
        self.seen: list[dict] = []

    def extract(self, images):
        self.seen.append({**tf32_enabled(), "autocast": torch.is_autocast_enabled("cpu")})
        x = images.float().mean(dim=(1, 2))
        return {"pool": self.proj(x)}


def test_feature_extraction_runs_in_full_float32(tf32_on):
    ex = RecordingExtractor()
    images = torch.randint(0, 256, (5, 6, 6, 3), dtype=torch.uint8)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # e.g. an evaluation inside a training step
        feats = ex(images)
    assert ex.seen == [{"matmul": False, "conv": False, "autocast": False}]
    assert feats["pool"].dtype == torch.float32
    assert tf32_enabled() == {"matmul": True, "conv": True}  # the caller's settings are back
    with pytest.raises(ValueError, match="uint8"):
        ex(images.float())
    assert tf32_enabled() == {"matmul": True, "conv": True}


def test_precision_recall_distances_run_without_tf32(tf32_on, monkeypatch):
    from irepa.evaluate import evaluator as evaluator_module

    seen = []

    def fake_precision_recall(*args, **kwargs):
        seen.append(tf32_enabled())
        return 0.5, 0.5

    monkeypatch.setattr(evaluator_module, "precision_recall", fake_precision_recall)
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(20, 4)).astype(np.float32)
    ev = Evaluator(RecordingExtractor(), progress=False)
    ref = ReferenceStats.from_activations(Activations(feats))
    result = ev.evaluate(Activations(rng.normal(size=(20, 4)).astype(np.float32)), ref)
    assert result["metrics"]["precision"] == 0.5 and seen == [{"matmul": False, "conv": False}]
    assert tf32_enabled() == {"matmul": True, "conv": True}


def test_one_set_of_precision_names_reads_the_old_training_spelling(tmp_path):
    from irepa.config import load_config
    from irepa.precision import accelerate_mixed_precision, precision_name

    names = [precision_name(p) for p in ("fp32", "bf16", "fp16", "no", False)]
    assert names == ["fp32", "bf16", "fp16", "fp32", "fp32"]
    assert [accelerate_mixed_precision(p) for p in ("fp32", "no", "bf16", "fp16")] == ["no", "no", "bf16", "fp16"]
    with pytest.raises(ConfigError, match="train.mixed_precision must be one of fp32, bf16, fp16, got 'fp8'"):
        load_config(None, {"train.mixed_precision": "fp8"})
    assert load_config(None, {"train.mixed_precision": "no"}).train.mixed_precision == "fp32"
    (tmp_path / "old.yaml").write_text("train:\n  mixed_precision: no\n")  # YAML reads a bare no as false
    assert load_config(tmp_path / "old.yaml").train.mixed_precision == "fp32"
    assert load_config(None).train.mixed_precision == "fp32"
