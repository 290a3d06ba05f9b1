import math

import pytest
import torch

from irepa.diffusion import SamplerConfig, get_interpolant, sample, sample_time
from irepa.objectives import ObjectiveConfig, build_objective


@pytest.mark.parametrize("path", ["linear", "cosine"])
def test_interpolant_endpoints_and_velocity_is_time_derivative(path):
    it = get_interpolant(path)
    x0, eps = torch.randn(4, 3, 5, 5, dtype=torch.float64), torch.randn(4, 3, 5, 5, dtype=torch.float64)
    zeros, ones = torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
    torch.testing.assert_close(it.sample_xt(x0, eps, zeros), x0)
    torch.testing.assert_close(it.sample_xt(x0, eps, ones), eps, atol=1e-12, rtol=0)
    t, h = torch.full((4,), 0.37, dtype=torch.float64), 1e-6
    fd = (it.sample_xt(x0, eps, t + h) - it.sample_xt(x0, eps, t - h)) / (2 * h)
    torch.testing.assert_close(it.velocity(x0, eps, t), fd, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("path", ["linear", "cosine"])
def test_score_from_velocity_recovers_noise(path):
    it = get_interpolant(path)
    x0, eps = torch.randn(3, 8, dtype=torch.float64), torch.randn(3, 8, dtype=torch.float64)
    t = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    x, v = it.sample_xt(x0, eps, t), it.velocity(x0, eps, t)
    score = it.score_from_velocity(v, x, t)
    torch.testing.assert_close(score, -eps / it.sigma(t)[:, None])


def test_time_sampling_distributions():
    g = torch.Generator().manual_seed(0)
    u = sample_time(20000, "uniform", generator=g)
    assert 0 <= u.min() and u.max() <= 1 and abs(u.mean().item() - 0.5) < 0.01
    ln = sample_time(20000, "lognormal", p_mean=-0.5, p_std=1.0, generator=g)
    logit = torch.log(ln / (1 - ln))  # t = sigma / (1 + sigma)  =>  logit(t) = log(sigma) ~ N(-0.5, 1)
    assert abs(logit.mean().item() + 0.5) < 0.03 and abs(logit.std().item() - 1.0) < 0.03
    with pytest.raises(ValueError, match="uniform, lognormal"):
        sample_time(3, "beta")


def test_objective_draw_label_dropout_rate_and_determinism():
    labels = torch.zeros(10000, dtype=torch.long)
    x0 = torch.zeros(10000, 1)
    objective = build_objective(ObjectiveConfig(label_dropout=0.1), num_classes=7)
    d = objective.draw(x0, labels, torch.Generator().manual_seed(1))
    rate = (d.labels == 7).float().mean().item()
    assert abs(rate - 0.1) < 0.01 and set(d.labels.unique().tolist()) == {0, 7}
    d2 = objective.draw(x0, labels, torch.Generator().manual_seed(1))
    assert torch.equal(d.noise, d2.noise) and torch.equal(d.t, d2.t)


def gaussian_velocity(mu: float, s: float):
    """Exact marginal velocity of the linear path for data N(mu, s^2)."""

    def v(x, t, y):
        t = t.view(-1, *([1] * (x.ndim - 1))).double()
        x = x.double()
        a, sig = 1 - t, t
        var = a**2 * s**2 + sig**2
        e_x0 = mu + a * s**2 / var * (x - a * mu)
        e_eps = sig / var * (x - a * mu)
        return (-e_x0 + e_eps).float()

    return v


@pytest.mark.parametrize("kind,steps,tol", [("ode-euler", 200, 0.03), ("ode-heun", 40, 0.02), ("sde", 250, 0.05)])
def test_samplers_recover_a_gaussian_target(kind, steps, tol):
    mu, s = 2.0, 0.5
    n = 4000
    gens = [torch.Generator().manual_seed(i) for i in range(n)]
    noise = torch.stack([torch.randn(1, generator=g) for g in gens])
    out = sample(
        gaussian_velocity(mu, s),
        noise,
        torch.zeros(n, dtype=torch.long),
        SamplerConfig(kind=kind, steps=steps),
        null_label=1,
        generators=gens,
    )
    assert out.mean().item() == pytest.approx(mu, abs=tol)
    assert out.std().item() == pytest.approx(s, abs=tol)


def test_cfg_is_applied_only_inside_the_guidance_interval():
    seen = []

    def model(x, t, y):
        seen.append((round(t[0].item(), 6), x.shape[0]))
        return torch.where((y == 3).view(-1, 1), torch.ones_like(x), torch.zeros_like(x))

    cfg = SamplerConfig(kind="ode-euler", steps=10, cfg_scale=4.0, guidance_low=0.0, guidance_high=0.5)
    out = sample(model, torch.zeros(2, 1), torch.tensor([0, 1]), cfg, null_label=3)
    doubled = [t for t, b in seen if b == 4]
    assert doubled and all(t <= 0.5 for t in doubled)
    assert all(b == 2 for t, b in seen if t > 0.5)
    # v_cond = 0, v_uncond = 1: guided v = 1 + 4 (0 - 1) = -3 for t in [0, 0.5] (steps at 0.5..0.1), else 0
    guided_steps = sum(1 for t in doubled)
    assert out[0, 0].item() == pytest.approx(-0.1 * -3.0 * guided_steps, abs=1e-6)


def test_sampler_config_errors():
    with pytest.raises(ValueError, match="sde, ode-euler, ode-heun"):
        SamplerConfig(kind="ddim").validate()
    with pytest.raises(ValueError, match="guidance interval"):
        SamplerConfig(guidance_low=0.8, guidance_high=0.2).validate()
    with pytest.raises(ValueError, match="Generator per sample"):
        sample(lambda x, t, y: x, torch.zeros(2, 1), torch.zeros(2, dtype=torch.long), SamplerConfig(steps=2), 1)


def test_sde_sample_does_not_depend_on_batch_composition():
    v = gaussian_velocity(0.0, 1.0)
    cfg = SamplerConfig(kind="sde", steps=20)

    def run(seeds):
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        noise = torch.stack([torch.randn(3, generator=g) for g in gens])
        return sample(v, noise, torch.zeros(len(seeds), dtype=torch.long), cfg, 1, gens)

    both = run([11, 12])
    alone = run([12])
    torch.testing.assert_close(both[1], alone[0])
    assert not math.isclose(both[0, 0].item(), both[1, 0].item())


@pytest.mark.parametrize("path", ["linear", "cosine"])
def test_lognormal_time_quantiles_follow_the_path(path):
    """t is the path's time whose noise-to-signal ratio s_t / a_t is sigma = exp(N(mu, s))."""
    mu, s, n = 0.3, 0.7, 200_000
    t = sample_time(n, "lognormal", p_mean=mu, p_std=s, generator=torch.Generator().manual_seed(3), path=path)
    qs = torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95], dtype=torch.float64)
    sigma = torch.exp(mu + s * math.sqrt(2) * torch.erfinv(2 * qs - 1))  # quantiles of sigma, analytic
    expected = sigma / (1 + sigma) if path == "linear" else 2 / math.pi * torch.atan(sigma)
    it = get_interpolant(path)
    ratio = it.sigma(expected) / it.alpha(expected)
    torch.testing.assert_close(ratio, sigma)  # the mapping really inverts s_t / a_t
    torch.testing.assert_close(torch.quantile(t.double(), qs), expected, atol=4e-3, rtol=0)


@pytest.mark.parametrize("rule", ["reference", "per-evaluation"])
def test_heun_guidance_rules_match_a_hand_written_integrator(rule):
    """v_cond = -x + 1, v_uncond = -x - 1 (analytic fields); CFG 3 on [0, 0.45]; 10 Heun steps."""

    def model(x, t, y):
        return torch.where((y == 2).view(-1, 1), -x - 1, -x + 1)

    cfg = SamplerConfig(kind="ode-heun", steps=10, cfg_scale=3.0, guidance_low=0.0, guidance_high=0.45,
                        guidance_rule=rule)
    x0 = torch.tensor([[0.5]], dtype=torch.float64)
    ours = sample(model, x0, torch.tensor([0]), cfg, null_label=2)

    def v(x, guided):
        cond, uncond = -x + 1, -x - 1
        return uncond + 3.0 * (cond - uncond) if guided else cond

    x, times = 0.5, [1 - i / 10 for i in range(11)]
    for i in range(10):
        t0, t1 = times[i], times[i + 1]
        g0 = t0 <= 0.45
        d0 = v(x, g0)
        x_pred = x + (t1 - t0) * d0
        if i < 9:
            g1 = g0 if rule == "reference" else t1 <= 0.45
            x = x + (t1 - t0) * 0.5 * (d0 + v(x_pred, g1))
        else:
            x = x_pred
    assert ours.item() == pytest.approx(x, abs=1e-12)


def test_the_two_heun_guidance_rules_differ_where_a_step_straddles_the_interval():
    def model(x, t, y):
        return torch.where((y == 2).view(-1, 1), -x - 1, -x + 1)

    kw = dict(kind="ode-heun", steps=10, cfg_scale=3.0, guidance_low=0.0, guidance_high=0.45)
    x0, y = torch.tensor([[0.5]], dtype=torch.float64), torch.tensor([0])
    a = sample(model, x0, y, SamplerConfig(**kw, guidance_rule="reference"), null_label=2)
    b = sample(model, x0, y, SamplerConfig(**kw, guidance_rule="per-evaluation"), null_label=2)
    assert abs(a.item() - b.item()) > 1e-3  # the step from t = 0.5 to 0.4 guides its corrector only per-evaluation
