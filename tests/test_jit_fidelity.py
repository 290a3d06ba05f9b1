"""JiT as its reference code: the guidance interval's strict bounds, float32 attention logits and RMSNorms,
balanced evaluation labels. Each check is against an independent computation written here (JiT's sampler in
JiT's own time convention, float32 formulas)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from irepa.config import load_config
from irepa.diffusion.samplers import SamplerConfig, sample
from irepa.models import create_model
from irepa.models.layers import Float32RMSNorm, float32_logits_attention
from irepa.objectives import ObjectiveConfig, build_objective
from irepa.recipes import recipe_overrides

T_EPS = 0.05
NULL = 4  # num_classes of the toy model: its null label


def toy_x_predictor(calls: list | None = None):
    """A smooth class-conditional x̂(z, t, y) in irepa's time; records the batch size of every call."""

    def model(z, t, y):
        if calls is not None:
            calls.append(z.shape[0])
        a = (1.0 + y.double() / 5).view(-1, 1, 1, 1)
        tt = t.double().view(-1, 1, 1, 1)
        return (torch.tanh(a * z.double()) * (1 - 0.5 * tt) + 0.1 * a).to(z.dtype)

    return model


def jit_sampler(model, noise, labels, steps: int, cfg: float, interval: tuple[float, float]):
    """JiT's ``generate`` written in its own convention: t_JiT = linspace(0, 1) in float32 from noise (0) to
    data (1), v = (x̂ - z) / clamp(1 - t_JiT, t_eps), CFG on v inside its interval test
    ``t < max and (min == 0 or t > min)``, Heun on all steps but the last, then Euler.
    Returns the samples and how many evaluations were guided. The network sees irepa's time 1 - t_JiT."""
    low, high = interval
    times = torch.linspace(0, 1, steps + 1)  # float32, as JiT's
    guided = 0

    def velocity(z, t_jit):
        nonlocal guided
        t_irepa = torch.full((z.shape[0],), 1.0 - t_jit.item(), dtype=torch.float64)
        denom = max(1.0 - t_jit.item(), T_EPS)
        v_cond = (model(z, t_irepa, labels) - z) / denom
        v_uncond = (model(z, t_irepa, torch.full_like(labels, NULL)) - z) / denom
        inside = bool((t_jit < high) & ((low == 0) | (t_jit > low)))
        guided += inside
        return v_uncond + (cfg if inside else 1.0) * (v_cond - v_uncond)

    z = noise.clone()
    for i in range(steps - 1):
        t, t_next = times[i], times[i + 1]
        dt = (t_next - t).item()
        v = velocity(z, t)
        v_next = velocity(z + dt * v, t_next)
        z = z + dt * 0.5 * (v + v_next)
    dt = (times[-1] - times[-2]).item()
    return z + dt * velocity(z, times[-2]), guided


@pytest.mark.parametrize("interval", [(0.1, 1.0), (0.0, 0.7), (0.1, 0.7)])
def test_jit_guidance_rule_guides_the_same_evaluations_and_samples_as_jits_sampler(interval):
    """The default 50-step Heun grid, where t = 0.9 (JiT's 0.1) is a node: JiT's (0.1, 1) guides 88 of the 99
    evaluations; the inclusive rule would guide 90."""
    jit_low, jit_high = interval
    noise = torch.randn(2, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    labels = torch.tensor([0, 3])
    want, want_guided = jit_sampler(toy_x_predictor(), noise, labels, 50, 2.9, interval)

    objective = build_objective(ObjectiveConfig(prediction="x", t_eps=T_EPS), num_classes=NULL)
    kw = dict(kind="ode-heun", steps=50, cfg_scale=2.9, guidance_low=1 - jit_high, guidance_high=1 - jit_low)
    calls: list[int] = []
    got = sample(objective.field(toy_x_predictor(calls)), noise, labels, SamplerConfig(**kw, guidance_rule="jit"),
                 null_label=NULL)
    assert len(calls) == 99 and calls.count(4) == want_guided
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)

    calls.clear()
    sample(objective.field(toy_x_predictor(calls)), noise, labels,
           SamplerConfig(**kw, guidance_rule="per-evaluation"), null_label=NULL)
    if interval == (0.1, 1.0):
        assert (want_guided, calls.count(4)) == (88, 90)  # the inclusive bound adds the two evaluations at t = 0.9


def test_jit_preset_guides_strictly_and_evaluates_with_balanced_labels():
    for name in ("jit", "jit-irepa"):
        cfg = load_config(None, recipe_overrides(name))
        assert (cfg.sample.guidance_rule, cfg.sample.labels) == ("jit", "balanced")
        assert (cfg.sample.guidance_low, cfg.sample.guidance_high) == (0.0, 0.9)
    assert load_config(None, recipe_overrides("irepa")).sample.labels == "random"  # SiT's protocol


def test_float32_rmsnorm_and_attention_logits_under_autocast_are_float32_computations():
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 3, 16, 8, generator=gen).bfloat16() for _ in range(3))
    norm = Float32RMSNorm(8, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.1 * torch.randn(8, generator=gen))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        normed = norm(q)
        out = float32_logits_attention(q, k, v)
    manual = q.float() * torch.rsqrt(q.float().pow(2).mean(-1, keepdim=True) + 1e-6) * norm.weight
    torch.testing.assert_close(normed, manual, rtol=1e-6, atol=1e-6)
    weights = torch.softmax(q.float() @ k.float().transpose(-2, -1) / 8**0.5, dim=-1)
    torch.testing.assert_close(out, weights.bfloat16() @ v, rtol=0, atol=0)


def test_jit_attention_under_bf16_autocast_stays_closer_to_float32_with_fp32_ops():
    """JiT's attention block (qk-RMSNorm with large gains: sharp softmaxes) under bf16 autocast: with fp32_ops
    (as JiT) its output is nearer the float32 output than with everything in bf16 and the fused kernel; without
    autocast the two settings are the same function. And a whole tiny JiT keeps the same parameters."""
    from irepa.models.layers import Attention

    torch.manual_seed(0)
    ref = Attention(64, 4, qk_norm=True, fp32=True)
    with torch.no_grad():
        ref.q_norm.weight.fill_(3.0)
        ref.k_norm.weight.fill_(3.0)
    fast = Attention(64, 4, qk_norm=True, fp32=False)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(2, 48, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        exact = ref(x)
        torch.testing.assert_close(fast(x), exact, rtol=1e-5, atol=1e-6)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            err_ref = ((ref(x).float() - exact).norm() / exact.norm()).item()
            err_fast = ((fast(x).float() - exact).norm() / exact.norm()).item()
    assert err_ref < err_fast, (err_ref, err_fast)  # 1.09e-2 against 1.21e-2: the projections stay bf16 in both

    kw = dict(depth=2, hidden_size=32, num_heads=2, patch_size=2, bottleneck_dim=8, input_size=8,
              in_context_start=1, in_context_len=4, num_classes=4)
    a, b = create_model("JiT-B/16", **kw), create_model("JiT-B/16", **kw, fp32_ops=False)
    assert a.config.fp32_ops and a.state_dict().keys() == b.state_dict().keys()
    assert any(isinstance(m, Float32RMSNorm) for m in a.modules())
    assert not any(isinstance(m, Float32RMSNorm) for m in b.modules())


def test_sit_keeps_its_fused_attention_and_plain_norms():
    sit = create_model("SiT-S/2", depth=1, input_size=8)
    assert not any(isinstance(m, Float32RMSNorm) for m in sit.modules())
    assert all(not block.attn.fp32 for block in sit.blocks)
    with pytest.raises(ValueError, match="fp32_ops"):
        create_model("SiT-S/2", depth=1, fp32_ops=True)


def test_float32_attention_matches_sdpa_in_float32():
    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 3, 10, 8, generator=gen, dtype=torch.float64) for _ in range(3))
    torch.testing.assert_close(float32_logits_attention(q, k, v), F.scaled_dot_product_attention(q, k, v))


@pytest.mark.parametrize("run_sample, want_labels, want_rule", [
    ({"guidance_rule": "jit", "labels": "balanced"}, [0, 1, 2, 0, 1, 2], "jit"),  # a JiT run
    (None, None, "reference"),  # a run recorded before the sample section was passed on: random, REPA's rule
])
def test_irepa_sample_uses_the_runs_guidance_rule_and_evaluation_labels(tmp_path, monkeypatch, run_sample,
                                                                        want_labels, want_rule):
    import json

    import numpy as np
    from test_sample_large import tiny_generator

    from irepa.cli import main
    from irepa.sample import pipeline
    from irepa.sample.labels import sample_labels

    def load(ckpt, use_ema=True, device="cpu", vae=None, precision="auto"):
        info = {"checkpoint": str(ckpt), "step": 1, "model": "tiny", "ema": use_ema, "vae": None, "space": "pixel"}
        if run_sample is not None:
            info["run_sampler"] = run_sample
        return tiny_generator(info, precision)

    monkeypatch.setattr(pipeline, "load_generator", load)
    out = tmp_path / "out"
    assert main(["sample", "--ckpt", str(tmp_path / "step_0000001.pt"), "--num-samples", "6", "--out", str(out),
                 "--sampler", "ode-heun", "--steps", "2", "--cfg-scale", "2", "--guidance-high", "0.9",
                 "--no-progress"]) == 0
    labels = np.load(out / "samples_6.npz")["labels"].tolist()
    want = want_labels or sample_labels("random", [0, 1, 2], 0, range(6)).tolist()
    assert labels == want
    settings = json.loads((out / "samples_6.json").read_text())
    assert settings["sampler"]["guidance_rule"] == want_rule and "labels" not in settings["sampler"]
