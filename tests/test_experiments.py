from pathlib import Path

import pytest
import torch

import irepa
from irepa.align.target_cache import TokenCachedDataset, cached_tokens
from irepa.config import load_config
from irepa.data import DataConfig, build_dataset
from irepa.encoders.base import Encoder
from irepa.experiments.compare import markdown_table
from irepa.experiments.small_scale import Timer, format_time_table
from irepa.recipes import ALIGNMENTS, recipe_overrides


class CountingEncoder(Encoder):
    """Mean colour of each 4x4 patch: cheap, deterministic, and counts its calls."""

    def __init__(self):
        super().__init__()
        self.embed_dim, self.patch_size, self.resolution = 3, 4, (8, 8)
        self.mean, self.std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return torch.nn.functional.avg_pool2d(x, 4).flatten(2).transpose(1, 2)


def test_cached_tokens_equal_direct_encoding_and_are_reused(tmp_path):
    ds = build_dataset(DataConfig(source="synthetic", resolution=8, synthetic_size=10, num_classes=2, flip=False))
    enc = CountingEncoder()
    key = {"encoder": "count", "n": 10}
    tokens = cached_tokens(ds, enc, tmp_path, key, batch_size=4)
    direct = enc.encode(torch.stack([ds[i]["image"] for i in range(10)]))
    torch.testing.assert_close(tokens.float(), direct, atol=1e-3, rtol=1e-3)
    calls = enc.calls
    again = cached_tokens(ds, enc, tmp_path, key, batch_size=4)
    assert enc.calls == calls and torch.equal(again, tokens)
    wrapped = TokenCachedDataset(ds, {"count": tokens})
    assert torch.equal(wrapped[3]["target.count"], tokens[3])


def test_cached_tokens_refuse_flipped_items(tmp_path):
    ds = build_dataset(DataConfig(source="synthetic", resolution=8, synthetic_size=4, num_classes=2, flip=True))
    wrapped = TokenCachedDataset(ds, {"c": torch.zeros(4, 4, 3)})
    with pytest.raises(ValueError, match="flip"):
        wrapped[(1, True)]
    with pytest.raises(ValueError, match="4 items"):
        TokenCachedDataset(ds, {"c": torch.zeros(3, 4, 3)})


def test_recipes_agree_with_shipped_configs():
    configs = Path(irepa.__file__).parent / "configs"
    for name in ALIGNMENTS:
        from_yaml = load_config(configs / f"{name}.yaml")
        from_recipe = load_config(configs / "vanilla.yaml", recipe_overrides(name))
        if from_yaml.align.enabled:
            for key in ("projector", "kernel_size", "coeff", "norm", "zscore_alpha"):
                assert getattr(from_recipe.align, key) == getattr(from_yaml.align, key), (name, key)
        assert from_recipe.align.enabled == from_yaml.align.enabled
    with pytest.raises(ValueError, match="jit-irepa"):
        recipe_overrides("repa-x")


def test_markdown_table_layout():
    rows = [
        {"recipe": "repa", "step": "100", "fid": "50.5"},
        {"recipe": "irepa", "step": "100", "fid": "40.25"},
        {"recipe": "irepa", "step": "200", "fid": "30"},
    ]
    table = markdown_table(rows, ["repa", "irepa"]).splitlines()
    assert table[0] == "| recipe | FID @ 100 | FID @ 200 |"
    assert table[2] == "| repa | 50.50 |  |" and table[3] == "| irepa | 40.25 | 30.00 |"


def test_recipe_spec_changes_override_common_changes_and_recipe():
    out = recipe_overrides("irepa+align.depth=3+align.coeff=0.25", {"align.coeff": 2.0, "train.lr": 5e-4})
    assert out["align.depth"] == 3 and out["align.coeff"] == 0.25  # the spec's own change wins
    assert out["train.lr"] == 5e-4 and out["align.projector"] == "conv"
    assert recipe_overrides("repa", {"align.coeff": 2.0})["align.coeff"] == 2.0  # common beats the recipe
    for bad in ("irepa+depth=3", "irepa+align.depth", "irepa+"):
        with pytest.raises(ValueError, match="section.field=value"):
            recipe_overrides(bad)


def _hsic(k: torch.Tensor, l_: torch.Tensor) -> torch.Tensor:
    n = len(k)
    h = torch.eye(n, dtype=torch.float64) - 1.0 / n
    return torch.trace(k @ h @ l_ @ h)


def test_linear_cka_matches_the_gram_matrix_definition():
    from irepa.experiments.diagnose import linear_cka

    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 7, generator=g, dtype=torch.float64)
    y = x[:, :5] @ torch.randn(5, 9, generator=g, dtype=torch.float64) + 0.5 * torch.randn(40, 9, generator=g)
    k, l_ = x @ x.T, y.double() @ y.double().T
    expected = _hsic(k, l_) / torch.sqrt(_hsic(k, k) * _hsic(l_, l_))
    assert linear_cka(x, y) == pytest.approx(float(expected), rel=1e-9)
    q, _ = torch.linalg.qr(torch.randn(7, 7, generator=g, dtype=torch.float64))
    assert linear_cka(x, 3.0 * x @ q + 1.0) == pytest.approx(1.0, abs=1e-9)  # rotation, scale, shift
    assert linear_cka(x, torch.randn(40, 9, generator=g)) < linear_cka(x, y)
    with pytest.raises(ValueError, match="same n"):
        linear_cka(x, y[:10])


def test_diagnose_reads_null_class_hidden_states_of_trained_runs(tmp_path):
    from test_train import tiny_config

    from irepa.experiments.diagnose import diagnose_runs, hidden_tokens
    from irepa.sample.pipeline import build_model_from_config
    from irepa.train.checkpoint import load_checkpoint
    from irepa.train.trainer import train

    runs = []
    for name, align in (("vanilla", False), ("irepa", True)):
        cfg = tiny_config(tmp_path / name, align=align, **{"train.steps": 2, "train.ckpt_every": 2})
        train(cfg)
        runs.append(tmp_path / name)
    rows = diagnose_runs(runs, times=(0.5,), encoder_weights="random", n_train=24, n_test=12, source="synthetic")
    assert [r["run"] for r in rows] == ["encoder:dinov2-vit-s", "pixels", "vanilla", "irepa"]
    assert all(0.0 <= r["probe"] <= 1.0 and 0.0 <= r["cka"] <= 1.0 + 1e-9 for r in rows)
    assert rows[2]["depth"] == 1 and rows[2]["step"] == 2

    ckpt = load_checkpoint(tmp_path / "irepa" / "checkpoints")
    model = build_model_from_config(ckpt["config"]).eval()
    model.load_state_dict(ckpt["ema"])
    images = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    whole = hidden_tokens(model, images, 0.5, 1, in_channels=3, seed=4)
    split = hidden_tokens(model, images, 0.5, 1, in_channels=3, seed=4, batch_size=2)
    torch.testing.assert_close(whole, split)  # batching does not change the noise or the tokens
    x0 = images * 2 - 1
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(4))
    t = torch.full((5,), 0.5)
    null = torch.full((5,), model.num_classes)
    _, expected = model(0.5 * x0 + 0.5 * noise, t, null, return_hidden_at=1)  # linear path: x_t = (1-t) x + t eps
    torch.testing.assert_close(whole, expected)


def test_pixel_tokens_are_the_model_patches():
    from irepa.experiments.diagnose import pixel_tokens

    images = torch.rand(2, 3, 8, 8)
    tokens = pixel_tokens(images, grid=4, in_channels=1)
    assert tokens.shape == (2, 16, 4)
    grey = images.mean(dim=1)
    # token (row 1, col 2) is the 2x2 patch at rows 2..3, cols 4..5, row-major inside the patch
    torch.testing.assert_close(tokens[:, 1 * 4 + 2], grey[:, 2:4, 4:6].flatten(1))
    assert pixel_tokens(images, grid=2, in_channels=3).shape == (2, 4, 3 * 16)


def test_cached_tokens_build_a_lazy_encoder_only_on_a_cache_miss(tmp_path):
    ds = build_dataset(DataConfig(source="synthetic", resolution=8, synthetic_size=6, num_classes=2, flip=False))
    built = []

    def make_encoder():
        built.append(CountingEncoder())
        return built[-1]

    key = {"encoder": "count", "n": 6}
    first = cached_tokens(ds, make_encoder, tmp_path, key, batch_size=4)
    again = cached_tokens(ds, make_encoder, tmp_path, key, batch_size=4)
    assert len(built) == 1 and built[0].calls == 2 and torch.equal(first, again)


class FakeClock:
    """A clock the test advances by hand."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_timer_rows_exclude_nested_phases_and_add_up_to_the_total():
    wall, cpu = FakeClock(), FakeClock()
    timer = Timer(wall_clock=wall, cpu_clock=cpu)

    def work(w: float, c: float, inner=None):
        wall.now += w
        cpu.now += c
        if inner:
            timer.run("inner", inner)

    timer.run("outer", work, 3.0, 5.0, lambda: work(1.0, 2.0))
    timer.run("outer", work, 1.0, 1.0)
    timer.add("startup", 0.5, 0.5)
    rows = {r["phase"]: r for r in timer.table()}
    assert [r["phase"] for r in timer.table()] == ["outer", "inner", "startup", "total"]  # order of first start
    assert (rows["outer"]["wall_s"], rows["outer"]["cpu_s"]) == (4.0, 6.0)  # 3 + 1 s, without inner's 1 s
    assert (rows["inner"]["wall_s"], rows["inner"]["cpu_s"]) == (1.0, 2.0)
    assert (rows["total"]["wall_s"], rows["total"]["cpu_s"]) == (5.5, 8.5)  # 4 + 1 + 0.5 and 6 + 2 + 0.5
    text = format_time_table(timer.table())
    assert text.splitlines()[0] == "| phase | wall s | CPU s |" and "| total | 5.5 | 8.5 |" in text


def test_timer_records_a_phase_that_raises():
    wall, cpu = FakeClock(), FakeClock()
    timer = Timer(wall_clock=wall, cpu_clock=cpu)

    def fail():
        wall.now += 2.0
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        timer.run("broken", fail)
    assert timer.wall["broken"] == 2.0 and not timer._inner
