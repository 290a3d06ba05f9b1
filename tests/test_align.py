import math

import numpy as np
import pytest
import torch

from irepa.align import Aligner, alignment_loss, build_projector, resample_tokens, spatial_zscore


def test_spatial_zscore_matches_numpy():
    y = torch.randn(3, 20, 7) * 3 + 1.5
    for alpha in (0.0, 0.6, 1.0):
        got = spatial_zscore(y, alpha=alpha).numpy()
        a = y.numpy().astype(np.float64)
        mean = a.mean(axis=1, keepdims=True)
        std = a.std(axis=1, ddof=1, keepdims=True)
        want = (a - alpha * mean) / (std + 1e-6)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_spatial_zscore_full_is_unit_variance_per_channel_and_fp32():
    y = (torch.randn(2, 64, 5) * 10).half()
    z = spatial_zscore(y)
    assert z.dtype == torch.float32
    torch.testing.assert_close(z.mean(1), torch.zeros(2, 5), atol=1e-3, rtol=0)
    torch.testing.assert_close(z.std(1), torch.ones(2, 5), atol=1e-3, rtol=0)


def test_spatial_zscore_rejects_bad_shape():
    with pytest.raises(ValueError, match="B, T, D"):
        spatial_zscore(torch.randn(4, 5))


def test_alignment_loss_matches_manual_cosine():
    p, t = torch.randn(2, 9, 4), torch.randn(2, 9, 4)
    pn, tn = p.numpy(), t.numpy()
    cos = (pn * tn).sum(-1) / (np.linalg.norm(pn, axis=-1) * np.linalg.norm(tn, axis=-1))
    assert alignment_loss(p, t).item() == pytest.approx(-cos.mean(), abs=1e-6)
    assert alignment_loss(p, p * 3).item() == pytest.approx(-1.0, abs=1e-6)
    assert alignment_loss(p.bfloat16(), t.bfloat16()).dtype == torch.float32


@pytest.mark.parametrize(
    "kind,expected",
    [
        ("linear", 384 * 768 + 768),
        ("mlp", (384 * 2048 + 2048) + (2048 * 2048 + 2048) + (2048 * 768 + 768)),
        ("conv", 384 * 768 * 9 + 768),
    ],
)
def test_projector_parameter_counts_and_shapes(kind, expected):
    proj = build_projector(kind, 384, 768, kernel_size=3, hidden_dim=2048)
    assert sum(p.numel() for p in proj.parameters()) == expected
    assert proj(torch.randn(2, 16, 384)).shape == (2, 16, 768)


def test_conv_projector_uses_neighbours_on_a_non_square_grid():
    proj = build_projector("conv", 3, 2, kernel_size=3)
    h = torch.zeros(1, 4 * 6, 3)
    h[0, 2 * 6 + 3] = 1.0  # one token on a 4x6 grid
    out = proj(h, (4, 6)) - proj(torch.zeros_like(h), (4, 6))
    changed = (out.abs().sum(-1) > 0).reshape(4, 6)
    expected = torch.zeros(4, 6, dtype=torch.bool)
    expected[1:4, 2:5] = True  # the 3x3 neighbourhood
    assert torch.equal(changed, expected)
    with pytest.raises(ValueError, match="square"):
        proj(torch.randn(1, 24, 3))
    with pytest.raises(ValueError, match="odd"):
        build_projector("conv", 3, 2, kernel_size=2)


def test_unknown_projector_lists_valid_names():
    with pytest.raises(ValueError, match="mlp, linear, conv"):
        build_projector("transformer", 3, 3)


def test_resample_tokens_matches_interpolate():
    tok = torch.randn(2, 8 * 8, 5)
    out = resample_tokens(tok, (8, 8), (4, 4))
    grid = tok.transpose(1, 2).reshape(2, 5, 8, 8)
    want = torch.nn.functional.avg_pool2d(grid, 2).flatten(2).transpose(1, 2)  # bilinear x0.5 == 2x2 mean
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)


def test_aligner_weights_encoders_and_checks_grid():
    al = Aligner(8, {"a": 4, "b": 6}, grid=(2, 2), coeffs={"a": 0.5, "b": 2.0}, projector="linear", norm="none")
    hidden = torch.randn(3, 4, 8)
    targets = {"a": torch.randn(3, 4, 4), "b": torch.randn(3, 4, 6)}
    out = al(hidden, targets)
    pa = alignment_loss(al.projectors["a"](hidden), targets["a"])
    pb = alignment_loss(al.projectors["b"](hidden), targets["b"])
    assert out.loss.item() == pytest.approx((0.5 * pa.item() + 2.0 * pb.item()) / 2, abs=1e-6)
    with pytest.raises(ValueError, match="grid"):
        al.prepare_target(torch.randn(3, 9, 4), "a")
    resampled = al.prepare_target(torch.randn(3, 16, 4), "a", src_grid=(4, 4))
    assert resampled.shape == (3, 4, 4)


def test_aligner_gradient_reaches_hidden_state():
    al = Aligner(8, {"a": 4}, grid=(3, 3), projector="conv", norm="zscore", alpha=0.6)
    hidden = torch.randn(2, 9, 8, requires_grad=True)
    target = al.prepare_target(torch.randn(2, 9, 4), "a")
    al(hidden, {"a": target}).loss.backward()
    assert hidden.grad is not None and math.isfinite(hidden.grad.norm().item()) and hidden.grad.abs().sum() > 0


def test_aligner_defaults_are_irepa_on_latent_sit():
    """3x3 conv projector, z-score with alpha 0.6 and eps 1e-6 (method.md sections 2-3)."""
    al = Aligner(8, {"a": 5}, grid=(4, 4))
    assert tuple(al.projectors["a"].conv.weight.shape) == (5, 8, 3, 3)
    tokens = torch.randn(2, 16, 5, dtype=torch.float64)
    y = tokens.numpy()
    want = (y - 0.6 * y.mean(axis=1, keepdims=True)) / (y.std(axis=1, ddof=1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(al.prepare_target(tokens, "a").numpy(), want, rtol=1e-5, atol=1e-6)


def _uniform_stats(w: torch.Tensor) -> tuple[float, float]:
    return w.abs().max().item(), w.double().var().item()


@pytest.mark.parametrize("kind", ["mlp", "linear"])
def test_token_wise_projectors_start_xavier_uniform_with_zero_biases(kind):
    """As the reference SiT's initialiser: U(-b, b) with b = sqrt(6 / (fan_in + fan_out)), biases 0."""
    torch.manual_seed(0)
    proj = build_projector(kind, 384, 768, hidden_dim=512)
    linears = [m for m in proj.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == (3 if kind == "mlp" else 1)
    for lin in linears:
        fan_out, fan_in = lin.weight.shape
        bound = math.sqrt(6 / (fan_in + fan_out))
        top, var = _uniform_stats(lin.weight)
        assert 0.99 * bound < top <= bound
        # >= 196K draws: the sample variance of a uniform is within ~0.2% (1 sigma) of b^2 / 3;
        # PyTorch's default (kaiming, a = sqrt 5) would give about 0.4-0.8 of it.
        assert var == pytest.approx(2 / (fan_in + fan_out), rel=0.02)
        assert torch.count_nonzero(lin.bias) == 0


def test_conv_projector_keeps_pytorch_default_init_as_the_reference():
    """The reference initialiser skips ``nn.Conv2d``: kaiming-uniform (a = sqrt 5), i.e. U(+-1/sqrt(fan_in))."""
    torch.manual_seed(0)
    conv = build_projector("conv", 64, 96, kernel_size=3).conv
    fan_in = 64 * 9
    bound = 1 / math.sqrt(fan_in)
    top, var = _uniform_stats(conv.weight)
    assert 0.99 * bound < top <= bound
    assert var == pytest.approx(bound**2 / 3, rel=0.03)  # 55K draws
    assert conv.bias.abs().max() <= bound and torch.count_nonzero(conv.bias) == 96


def test_one_token_cache_keyed_by_encoder_grid_items_fingerprint_and_seed(tmp_path):
    """The trainer's and the small-scale experiments' cache: tokens stored once per key, read back, and
    equal to running the encoder on the unflipped images."""
    from irepa.align.target_cache import with_cached_targets
    from irepa.codecs import unit_images
    from irepa.config import load_config
    from irepa.data import build_dataset
    from irepa.encoders import load_encoder
    from irepa.errors import ConfigError

    def setup(**extra):
        cfg = load_config(None, {"data.source": "synthetic", "data.resolution": 16, "data.synthetic_size": 6,
                                 "data.num_classes": 2, "data.flip": False, "align.encoders": "hog", **extra})
        return cfg, build_dataset(cfg.data)

    encoder = load_encoder("hog", weights="random", grid=(2, 2))
    built = []

    def lazy():
        built.append(1)
        return encoder

    cfg, data = setup()
    first = with_cached_targets(data, cfg, (2, 2), {"hog": lazy}, tmp_path)
    images = torch.stack([data[i]["image"] for i in range(len(data))])
    expected = encoder.encode(unit_images(images))
    assert torch.equal(torch.stack([first[i]["target.hog"] for i in range(len(data))]), expected)
    again = with_cached_targets(data, cfg, (2, 2), {"hog": lazy}, tmp_path)
    assert torch.equal(again.tokens["hog"], first.tokens["hog"]) and built == [1]  # read back, not encoded
    assert len(list(tmp_path.glob("tokens-*.pt"))) == 1

    other_cfg, other_data = setup(**{"data.seed": 1})  # other images: another key, encoded anew
    other = with_cached_targets(other_data, other_cfg, (2, 2), {"hog": lazy}, tmp_path)
    assert built == [1, 1] and len(list(tmp_path.glob("tokens-*.pt"))) == 2
    assert not torch.equal(other.tokens["hog"], first.tokens["hog"])
    with pytest.raises(ConfigError, match="data.flip"):
        flip_cfg, flip_data = setup(**{"data.flip": True})
        with_cached_targets(flip_data, flip_cfg, (2, 2), {"hog": lazy}, tmp_path)
