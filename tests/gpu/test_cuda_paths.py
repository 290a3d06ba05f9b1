"""The CUDA paths: bf16 sampling against fp32, full-float32 feature extraction, uint8 images to float."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from irepa.codecs import PixelCodec, unit_images
from irepa.data.transforms import to_chw_float
from irepa.diffusion.samplers import SamplerConfig
from irepa.evaluate.features import FeatureExtractor
from irepa.models import create_model
from irepa.objectives import ObjectiveConfig, build_objective
from irepa.precision import no_tf32, tf32_enabled
from irepa.sample.pipeline import Generator

DEVICE = "cuda"
NUM_CLASSES = 10


@pytest.fixture
def tf32_allowed():
    """TF32 on for matmuls and convolutions, as many training scripts set it; torch's defaults after."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    yield
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = True


def random_sit() -> nn.Module:
    torch.manual_seed(0)
    model = create_model("SiT-B/2", input_size=32, in_channels=3, num_classes=NUM_CLASSES)
    with torch.no_grad():  # DiT initialisation zeroes the output and modulation layers: give them weights
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model.to(DEVICE).eval()


@pytest.mark.parametrize(("kind", "steps"), [("ode-heun", 50), ("sde", 250)])
def test_bf16_sampling_stays_close_to_fp32(kind, steps):
    model = random_sit()
    cfg = SamplerConfig(kind=kind, steps=steps, cfg_scale=1.8, guidance_high=0.7)
    labels, seeds = torch.arange(8) % NUM_CLASSES, list(range(100, 108))
    objective = build_objective(ObjectiveConfig(), NUM_CLASSES)
    exact = Generator(model, objective, PixelCodec(3), 32, precision="fp32").sample_latents(labels, seeds, cfg)
    generator = Generator(model, objective, PixelCodec(3), 32)
    assert generator.precision == "bf16"  # the default on CUDA
    mixed = generator.sample_latents(labels, seeds, cfg)
    assert mixed.dtype == torch.float32 and torch.isfinite(mixed).all()
    rel = float((mixed - exact).norm() / exact.norm())
    assert 0 < rel < 3e-2, rel


class ConvFeatures(FeatureExtractor):
    """Convolutions and a matmul, the operations TF32 changes, on uint8 images."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 128, 3, stride=2),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 256))
        self.flags: list[dict] = []

    def extract(self, images):
        self.flags.append(tf32_enabled())
        x = images.to(self.device).permute(0, 3, 1, 2).to(self.net[0].weight.dtype) / 255
        return {"pool": self.net(x)}


def test_feature_extraction_on_gpu_matches_float64_despite_tf32(tf32_allowed):
    images = torch.randint(0, 256, (16, 64, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    ex = ConvFeatures()
    exact = ex.double()(images)["pool"]  # float64 on the CPU: the truth
    ex.float().to(DEVICE)
    got = ex(images)["pool"].double().cpu()
    assert ex.flags[-1] == {"matmul": False, "conv": False}
    assert tf32_enabled() == {"matmul": True, "conv": True}  # restored for the caller
    err = float((got - exact).abs().max() / exact.abs().max())
    assert err < 1e-5, err
    x = images.to(DEVICE).permute(0, 3, 1, 2).float() / 255  # the same network with TF32: visibly off
    tf32 = ex.net(x).double().cpu()
    if torch.cuda.get_device_capability() >= (8, 0):  # GPUs before Ampere have no TF32
        assert float((tf32 - exact).abs().max() / exact.abs().max()) > 10 * err
    with no_tf32():
        assert tf32_enabled() == {"matmul": False, "conv": False}


def test_uint8_batches_become_the_same_floats_on_the_gpu():
    values = np.arange(256, dtype=np.uint8).reshape(16, 16)
    picture = np.stack([values, values.T, values[::-1]], axis=-1)
    rng = np.random.default_rng(0)
    pictures = [picture] + [rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8) for _ in range(7)]
    dataset_side = torch.stack([to_chw_float(p) for p in pictures])
    batch = torch.stack([torch.from_numpy(p).permute(2, 0, 1) for p in pictures]).pin_memory()
    on_gpu = unit_images(batch, DEVICE)
    assert on_gpu.device.type == "cuda" and on_gpu.dtype == torch.float32
    torch.cuda.synchronize()
    assert torch.equal(on_gpu.cpu().view(torch.int32), dataset_side.view(torch.int32))  # every bit
    floats = torch.rand(2, 3, 8, 8)
    assert torch.equal(unit_images(floats, DEVICE).cpu(), floats)
