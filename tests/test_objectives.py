"""The training recipes (SiT flow matching, JiT x-prediction, MeanFlow), each against an independent computation.

Every test writes the reference math itself: JiT's own formulas in JiT's time convention, closed forms for
Gaussian data, finite differences, hand-written samplers. Tiny models (depth 2, width 32) on 8 px data.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from tiny import perturbed_sit, tiny_overrides

import irepa
from irepa.config import load_config, to_dict
from irepa.diffusion.samplers import SamplerConfig, sample
from irepa.experiments.diagnose import diagnose_runs, hidden_tokens
from irepa.objectives import Draw, FlowMatching, MeanFlow, MeanFlowConfig, ObjectiveConfig, build_objective
from irepa.recipes import recipe_overrides, split_recipe_name
from irepa.sample.pipeline import load_generator
from irepa.train.aligned_model import AlignedModel
from irepa.train.checkpoint import load_checkpoint
from irepa.train.trainer import train

T_EPS = 0.05
CONFIGS = Path(irepa.__file__).parent / "configs"
IMAGENET_TRAIN_IMAGES = 1_281_167


pytestmark = pytest.mark.usefixtures("one_thread")


def standardized(n: int, shape=(1,), seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    """``n`` normal draws rescaled to sample mean 0 and sample std 1 per element, so that an affine sampler's
    output moments measure its integration error alone (no Monte-Carlo error)."""
    x = torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    return (x - x.mean(0)) / x.std(0)


def bcast(c: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return c.view(-1, *([1] * (like.ndim - 1))).to(like.dtype)


# ---------------------------------------------------------------------------------------------- JiT


def test_x_prediction_velocity_is_jits_conversion_with_its_t_eps_clamp():
    """v from x̂ equals JiT's ``(x̂ - z) / max(1 - t_jit, t_eps)`` with t_jit = 1 - t, and dz/dt = -dz/dt_jit."""
    objective = build_objective(ObjectiveConfig(prediction="x", t_eps=T_EPS), num_classes=4)
    t = torch.tensor([0.01, 0.04, 0.05, 0.2, 0.9])  # two below t_eps, one at it, two above
    x_hat, z = torch.randn(5, 3, 4, 4), torch.randn(5, 3, 4, 4)
    v = objective.velocity(lambda x, tt, y: x_hat, z, t, torch.zeros(5, dtype=torch.long))
    for i, ti in enumerate(t.tolist()):
        t_jit = 1.0 - ti
        v_jit = (x_hat[i] - z[i]) / max(1.0 - t_jit, T_EPS)  # JiT's sampler, in JiT's time
        torch.testing.assert_close(v[i], -v_jit, rtol=1e-5, atol=1e-6)
    # below t_eps the clamp is what acts: the unclamped velocity is 5x (t = 0.01) larger
    unclamped = (z[0] - x_hat[0]) / 0.01
    assert (v[0] - unclamped).abs().max() > 1.0


def test_x_prediction_loss_is_jits_v_loss():
    """The loss equals JiT's: z = t x + (1 - t) e, v = (x - z) / clamp(1 - t, t_eps), mean (v - v̂)^2, in JiT's time."""
    objective = build_objective(ObjectiveConfig(prediction="x", t_eps=T_EPS), num_classes=4)
    x0 = torch.randn(6, 3, 4, 4)
    weight = torch.randn(3, 3)

    def net(xt, t, y, targets=None):  # a toy denoiser: x̂ depends on x_t, t and y
        x_hat = torch.einsum("ij,bjhw->bihw", weight, xt).tanh() * bcast(1 - t, xt) + bcast(y.float() / 10, xt)
        return x_hat, None

    labels = torch.tensor([0, 1, 2, 3, 4, 1])
    d = Draw(t=torch.tensor([0.01, 0.03, 0.2, 0.5, 0.8, 0.99]), noise=torch.randn_like(x0), labels=labels)
    got = objective.loss(net, x0, labels, draw=d)["loss"]

    t_jit = bcast(1 - d.t, x0)
    z = t_jit * x0 + (1 - t_jit) * d.noise
    x_hat = net(z, d.t, labels)[0]
    denom = (1 - t_jit).clamp_min(T_EPS)
    v, v_hat = (x0 - z) / denom, (x_hat - z) / denom
    want = ((v - v_hat) ** 2).mean(dim=(1, 2, 3)).mean()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=0)


def gaussian_x_predictor(mu: float, s: float):
    """The exact denoiser E[x0 | x_t] for data N(mu, s^2) on x_t = (1 - t) x0 + t eps:
    ``mu + (1 - t) s^2 / ((1 - t)^2 s^2 + t^2) * (x_t - (1 - t) mu)``."""

    def model(x, t, y):
        a, tt = 1 - bcast(t, x).double(), bcast(t, x).double()
        x = x.double()
        return (mu + a * s**2 / (a**2 * s**2 + tt**2) * (x - a * mu)).float()

    return model


def jit_sampler_moments(mu: float, s: float, steps: int, t_eps: float) -> tuple[float, float]:
    """JiT's sampler on the exact Gaussian denoiser, written in JiT's time (t_jit: 0 noise, 1 data) as a map of
    ``z = A xi + B`` (xi the standardised noise): x̂ and v are affine in z, so every step is an affine map.
    Returns the output's (mean, std) = (B, |A|)."""
    ts = [i / steps for i in range(steps + 1)]

    def v_coeffs(t_jit):  # v = alpha z + beta, from x̂ = mu + g (z - a mu) and v = (x̂ - z) / max(1 - t_jit, t_eps)
        a, sigma = t_jit, 1.0 - t_jit
        g = a * s**2 / (a**2 * s**2 + sigma**2)
        tau = max(1.0 - t_jit, t_eps)
        return (g - 1.0) / tau, mu * (1.0 - g * a) / tau

    A, B = 1.0, 0.0
    for i, (t, t_next) in enumerate(zip(ts[:-1], ts[1:])):
        h = t_next - t
        al, be = v_coeffs(t)
        vA, vB = al * A, al * B + be
        if i < steps - 1:  # Heun, then a last Euler step
            al2, be2 = v_coeffs(t_next)
            v2A, v2B = al2 * (A + h * vA), al2 * (B + h * vB) + be2
            vA, vB = 0.5 * (vA + v2A), 0.5 * (vB + v2B)
        A, B = A + h * vA, B + h * vB
    return B, abs(A)


@pytest.mark.parametrize("steps", [20, 50])
def test_heun_on_the_exact_gaussian_x_predictor_recovers_the_data(steps):
    """JiT's sampler (Heun, x̂ -> v with the t_eps clamp) on the exact denoiser E[x0 | x_t] of N(mu, s^2).

    * It equals JiT's sampler written in JiT's time (an affine recursion on the moments) to 1e-4.
    * Without the clamp it reaches the data: mean mu to 1e-5, std s to 3e-3 (the last Euler step lands on the
      posterior mean, whose std is s * a s / sqrt(a^2 s^2 + t^2) at t = 1/steps: 0.4973 for 20 steps).
    * The clamp: the grid's last evaluation is at t = 1/steps. With 20 steps that is t_eps itself, so the clamp
      never acts. With JiT's 50 steps the evaluations at t = 0.04 and 0.02 are clamped (JiT's own sampler does
      the same): the velocity is under-estimated there and the sample stops short, shrunk towards 0 by ~2 %
      (mean 0.700 -> 0.685, std 0.500 -> 0.490 here).
    """
    mu, s = 0.7, 0.5
    noise = standardized(4000).float()
    labels = torch.zeros(4000, dtype=torch.long)
    model = gaussian_x_predictor(mu, s)

    def run(t_eps):
        objective = build_objective(ObjectiveConfig(prediction="x", t_eps=t_eps), num_classes=1)
        return sample(objective.field(model), noise, labels, SamplerConfig(kind="ode-heun", steps=steps), 1)

    clamped, unclamped = run(T_EPS), run(1e-9)
    for out, t_eps in ((clamped, T_EPS), (unclamped, 1e-9)):
        mean, std = jit_sampler_moments(mu, s, steps, t_eps)
        assert out.mean().item() == pytest.approx(mean, abs=1e-4)
        assert out.std().item() == pytest.approx(std, abs=1e-4)
    assert unclamped.mean().item() == pytest.approx(mu, abs=1e-5)
    assert unclamped.std().item() == pytest.approx(s, abs=3e-3)
    if 1.0 / steps >= T_EPS:
        torch.testing.assert_close(clamped, unclamped, rtol=0, atol=1e-6)
    else:
        assert clamped.mean().item() < mu - 0.01 and clamped.std().item() < s - 0.005


def test_jit_time_sampling_is_the_mirror_of_jits_logit_normal():
    """JiT draws t_jit = sigmoid(N(-0.8, 0.8)); the jit preset's t (= 1 - t_jit) must have the same law."""
    cfg = load_config(None, {"recipe": "jit"})
    objective = build_objective(cfg.objective, num_classes=1000)
    ours = objective.sample_t(200_000, torch.Generator().manual_seed(0))
    theirs = 1 - torch.sigmoid(torch.randn(200_000, generator=torch.Generator().manual_seed(1)) * 0.8 - 0.8)
    q = torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95])
    torch.testing.assert_close(ours.quantile(q), theirs.quantile(q), rtol=0, atol=5e-3)
    assert abs(ours.median().item() - (1 - 1 / (1 + math.exp(0.8)))) < 5e-3  # 0.69: mostly noisy inputs


# ---------------------------------------------------------------------------------------------- MeanFlow


def test_meanflow_target_matches_a_finite_difference_of_the_network():
    """u_tgt = v - (t - r) du/dt, with du/dt the derivative of u(z + h v, r, t + h) at h = 0 (central difference)."""
    model = perturbed_sit()
    objective = MeanFlow(ObjectiveConfig(kind="meanflow"), num_classes=4)
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(4, 3, 8, 8, generator=gen, dtype=torch.float64)
    v = torch.randn(4, 3, 8, 8, generator=gen, dtype=torch.float64)
    t = torch.tensor([0.6, 0.7, 0.8, 0.95], dtype=torch.float64)
    r = torch.tensor([0.1, 0.3, 0.2, 0.5], dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 4])  # 4 = the null class

    def u(z_, t_, y, r=None):
        return model(z_, t_, y, r=r)

    target = objective.mean_flow_target(u, z, r, t, v, labels)
    h = 1e-3  # the sinusoidal time features are computed in float32, so h is not smaller (at 1e-3: ~4e-5 off)
    with torch.no_grad():
        dudt = (u(z + h * v, t + h, labels, r=r) - u(z - h * v, t - h, labels, r=r)) / (2 * h)
    jvp_term = bcast(t - r, v) * dudt
    assert jvp_term.norm() > 0.1 * v.norm()  # the network's derivative matters in this target
    rel = (target - (v - jvp_term)).norm() / jvp_term.norm()
    assert rel < 1e-3, rel.item()


class GaussianFlow:
    """Exact fields of the linear path for data N(mu, s^2) (every element independent).

    Marginal of z_t = (1 - t) x + t eps: N(m(t), sig(t)^2) with m(t) = (1 - t) mu and
    sig(t)^2 = (1 - t)^2 s^2 + t^2. Its probability-flow map keeps the standardised coordinate
    (z - m(t)) / sig(t) fixed, so the flow map from t back to r is affine:

        z_r(z_t) = m(r) + sig(r) / sig(t) * (z_t - m(t)).

    The instantaneous (marginal) velocity is its derivative, v(z, t) = m'(t) + sig'(t) / sig(t) (z - m(t)), and
    the average velocity over [r, t] is the displacement over the time taken:

        u(z_t, r, t) = (z_t - z_r(z_t)) / (t - r)     (r < t),     u(z_t, t, t) = v(z_t, t).
    """

    def __init__(self, mu: float, s: float):
        self.mu, self.s = mu, s

    def m(self, t):
        return (1 - t) * self.mu

    def sig(self, t):
        return ((1 - t) ** 2 * self.s**2 + t**2).sqrt()

    def velocity(self, z, t):
        t = bcast(t, z)
        dsig = (-(1 - t) * self.s**2 + t) / self.sig(t)
        return -self.mu + dsig / self.sig(t) * (z - self.m(t))

    def average_velocity(self, z, t, y=None, r=None):
        """As a network: ``(z, t, y, r=)``; r = None means r = t."""
        if r is None:
            return self.velocity(z, t)
        gap = bcast(t - r, z)
        tt, rr = bcast(t, z), bcast(r, z)
        z_r = self.m(rr) + self.sig(rr) / self.sig(tt) * (z - self.m(tt))
        safe = torch.where(gap > 0, gap, torch.ones_like(gap))
        return torch.where(gap > 0, (z - z_r) / safe, self.velocity(z, t))


def test_meanflow_identity_and_loss_on_the_exact_average_velocity_of_gaussian_data():
    """With the exact u of a Gaussian toy problem:

    * the MeanFlow target built from the marginal velocity is u itself (the identity, to float64 precision);
    * the training loss, whose target uses the conditional velocity v_c = eps - x, is not 0 but its closed form:
      u_tgt - u = (1 - (t - r) du/dz) (v_c - v) = sig(r) / sig(t) (v_c - v), so the p = 0 loss is
      mean_b sum (sig(r) / sig(t))^2 (v_c - v)^2 — flow matching's irreducible loss when r = t.
    """
    flow = GaussianFlow(mu=0.7, s=0.5)
    objective = MeanFlow(ObjectiveConfig(kind="meanflow", meanflow=MeanFlowConfig(ratio=0.5, adaptive_p=0.0)), 1)
    gen = torch.Generator().manual_seed(0)
    x0 = 0.7 + 0.5 * torch.randn(64, 1, 2, 2, generator=gen, dtype=torch.float64)
    labels = torch.zeros(64, dtype=torch.long)
    d = objective.draw(x0, labels, gen)
    assert (d.r < d.t).sum() == 32 and (d.r == d.t).sum() == 32
    z = (1 - bcast(d.t, x0)) * x0 + bcast(d.t, x0) * d.noise

    target = objective.mean_flow_target(flow.average_velocity, z, d.r, d.t, flow.velocity(z, d.t), labels)
    torch.testing.assert_close(target, flow.average_velocity(z, d.t, r=d.r), rtol=1e-10, atol=1e-10)

    def net(x, t, y, targets=None, r=None):
        return flow.average_velocity(x, t, y, r=r), None

    got = objective.loss(net, x0, labels, draw=d)["loss"]
    v_c = d.noise - x0
    ratio = bcast(flow.sig(d.r) / flow.sig(d.t), x0)
    want = (ratio**2 * (v_c - flow.velocity(z, d.t)) ** 2).flatten(1).sum(1).mean()
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=0)


@pytest.mark.parametrize("steps", [1, 2])
def test_meanflow_sampler_on_the_exact_average_velocity_reproduces_the_data(steps):
    """x = z_1 - u(z_1, 0, 1) (and the 2-step chain through t = 1/2) maps N(0, 1) noise to N(mu, s^2) exactly."""
    flow = GaussianFlow(mu=0.7, s=0.5)
    objective = MeanFlow(ObjectiveConfig(kind="meanflow"), num_classes=1)
    noise = standardized(1000)
    out = sample(objective.field(flow.average_velocity), noise, torch.zeros(1000, dtype=torch.long),
                 SamplerConfig(kind="meanflow", steps=steps), null_label=1)
    assert out.mean().item() == pytest.approx(0.7, abs=1e-9)
    assert out.std().item() == pytest.approx(0.5, abs=1e-9)
    torch.testing.assert_close(out, 0.7 + 0.5 * noise)  # the exact flow map, sample by sample


def test_meanflow_with_r_equal_t_is_flow_matching():
    """r = t: the target is v bit for bit (the JVP is multiplied by an exact 0) and the prediction is the same
    call; with p = 0 the loss is flow matching's mean squared error times C*H*W. The two losses agree to float
    rounding, not bit for bit: MeanFlow sums each sample then averages the batch, flow matching takes one mean."""
    net = AlignedModel(perturbed_sit(torch.float32), None, 1)
    flow = FlowMatching(ObjectiveConfig(), num_classes=4)
    mean_flow = MeanFlow(ObjectiveConfig(kind="meanflow", meanflow=MeanFlowConfig(adaptive_p=0.0)), num_classes=4)
    gen = torch.Generator().manual_seed(3)
    x0 = torch.randn(8, 3, 8, 8, generator=gen)
    labels = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    d = flow.draw(x0, labels, gen)
    d_mf = Draw(t=d.t, noise=d.noise, labels=d.labels, r=d.t.clone())

    z = flow.path.sample_xt(x0, d.noise, d.t)
    v = flow.path.velocity(x0, d.noise, d.t)
    target = mean_flow.mean_flow_target(lambda x, t, y, r=None: net(x, t, y, None, r=r)[0], z, d.t, d.t, v, d.labels)
    assert torch.equal(target, v)
    fm = flow.loss(net, x0, labels, draw=d)["loss"]
    mf = mean_flow.loss(net, x0, labels, draw=d_mf)["loss"]
    torch.testing.assert_close(mf, fm * x0[0].numel(), rtol=1e-6, atol=0)


def toy_average_velocity(z, t, y, r=None):
    """A smooth toy u(z, r, t | y) = a_y z t + b (t - r) with a_y = 1 + y / 10, b = 0.3 (r = None: r = t)."""
    r = t if r is None else r
    a = bcast(1 + y.double() / 10, z)
    return a * z * bcast(t, z) + 0.3 * bcast(t - r, z)


def hand_guided_velocity(v, z, t, labels, null, omega, kappa, low, high):
    """The reference guided field, per sample: w v + k u(z,t,t|c) + (1 - w - k) u(z,t,t|null) for kept labels with
    low <= t <= high; the plain v otherwise (dropped labels and times outside the interval)."""
    out = v.clone()
    for i in range(v.shape[0]):
        if labels[i] != null and low <= t[i] <= high:
            zi, ti = z[i : i + 1], t[i : i + 1]
            u_c = toy_average_velocity(zi, ti, labels[i : i + 1])
            u_n = toy_average_velocity(zi, ti, torch.full_like(labels[i : i + 1], null))
            out[i] = omega * v[i] + kappa * u_c[0] + (1 - omega - kappa) * u_n[0]
    return out


def test_training_time_guidance_is_a_no_op_at_omega_1_kappa_0():
    calls = []

    def model(*args, **kwargs):
        calls.append(1)
        return toy_average_velocity(*args, **kwargs)

    objective = MeanFlow(ObjectiveConfig(kind="meanflow", meanflow=MeanFlowConfig(cfg_omega=1.0, cfg_kappa=0.0)), 4)
    z, v = torch.randn(4, 1, 2, 2, dtype=torch.float64), torch.randn(4, 1, 2, 2, dtype=torch.float64)
    t = torch.tensor([0.1, 0.4, 0.6, 0.9], dtype=torch.float64)
    out = objective.guided_velocity(model, z, t, v, torch.tensor([0, 1, 2, 4]))
    assert torch.equal(out, v) and not calls


def test_training_time_guidance_and_the_guided_target_match_the_reference_formula():
    omega, kappa, low, high = 0.6, 0.3, 0.2, 0.7
    m = MeanFlowConfig(ratio=0.5, adaptive_p=1.0, cfg_omega=omega, cfg_kappa=kappa, cfg_t_low=low, cfg_t_high=high)
    objective = MeanFlow(ObjectiveConfig(kind="meanflow", label_dropout=0.3, meanflow=m), num_classes=4)

    # the guided field: t outside / inside the interval, a dropped label, and every class
    z, v = torch.randn(5, 1, 2, 2, dtype=torch.float64), torch.randn(5, 1, 2, 2, dtype=torch.float64)
    t = torch.tensor([0.1, 0.3, 0.5, 0.65, 0.9], dtype=torch.float64)
    labels = torch.tensor([0, 1, 4, 3, 2])
    got = objective.guided_velocity(toy_average_velocity, z, t, v, labels)
    want = hand_guided_velocity(v, z, t, labels, 4, omega, kappa, low, high)
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got[1], v[1]) and torch.equal(got[2], v[2]) and torch.equal(got[0], v[0])

    # the whole loss: target = v_g - (t - r) d/dt u along (v_g, 0, 1), where for the toy u
    # du/dt = a_y (t v_g + z) + b; adaptive weight 1 / (e + c) on e = ||u - target||^2
    def net(x, tt, y, targets=None, r=None):
        return toy_average_velocity(x, tt, y, r=r), None

    gen = torch.Generator().manual_seed(5)
    x0 = torch.randn(16, 1, 2, 2, generator=gen, dtype=torch.float64)
    y = torch.arange(16) % 4
    d = objective.draw(x0, y, gen)
    assert 0 < (d.labels == 4).sum() < 16 and ((d.t >= low) & (d.t <= high)).any()
    got_loss = objective.loss(net, x0, y, draw=d)["loss"]
    tt, rr = bcast(d.t, x0), bcast(d.r, x0)
    z = (1 - tt) * x0 + tt * d.noise
    v_g = hand_guided_velocity(d.noise - x0, z, d.t, d.labels, 4, omega, kappa, low, high)
    a = bcast(1 + d.labels.double() / 10, x0)
    target = v_g - (tt - rr) * (a * (tt * v_g + z) + 0.3)
    e = ((toy_average_velocity(z, d.t, d.labels, r=d.r) - target) ** 2).flatten(1).sum(1)
    want_loss = (e / (e + m.adaptive_c)).mean()
    torch.testing.assert_close(got_loss.double(), want_loss, rtol=1e-5, atol=0)


def test_meanflow_draw_has_the_reference_share_of_r_not_equal_t():
    """As the reference: two logit-normal draws sorted so t >= r, then exactly floor(B (1 - ratio)) rows get r = t."""
    objective = MeanFlow(ObjectiveConfig(kind="meanflow", time_sampling="lognormal", p_mean=-0.4, p_std=1.0), 1)
    for batch in (8, 10, 256):
        d = objective.draw(torch.zeros(batch, 1), torch.zeros(batch, dtype=torch.long), torch.Generator())
        assert (d.r <= d.t).all() and int((d.r == d.t).sum()) == math.floor(batch * 0.75)
    d = objective.draw(torch.zeros(20_000, 1), torch.zeros(20_000, dtype=torch.long), torch.Generator().manual_seed(0))
    both = torch.cat([d.t[d.r < d.t], d.r[d.r < d.t]])  # the unsorted pair of draws: each logit-normal(-0.4, 1)
    logits = torch.logit(both)
    assert abs(logits.mean().item() + 0.4) < 0.03 and abs(logits.std().item() - 1.0) < 0.03


@pytest.mark.parametrize("pairing", ["sorted", "clamped"])
def test_meanflow_draw_with_rs_own_distribution_matches_a_numpy_simulation(pairing):
    """r from its own logit-normal (the PyTorch port's -4.0, 1.6), paired either way: the quantiles of t and of
    r (rows with r != t share) against an independent NumPy simulation of the same rule."""
    import numpy as np

    m = MeanFlowConfig(ratio=0.75, r_p_mean=-4.0, r_p_std=1.6, pairing=pairing)
    objective = MeanFlow(ObjectiveConfig(kind="meanflow", time_sampling="lognormal", p_mean=-0.6, p_std=1.6,
                                         meanflow=m), 1)
    n = 40_000
    d = objective.draw(torch.zeros(n, 1), torch.zeros(n, dtype=torch.long), torch.Generator().manual_seed(1))
    equal = math.floor(n * 0.25)
    assert (d.r[:equal] == d.t[:equal]).all() and (d.r <= d.t).all()
    rng = np.random.default_rng(2)
    a = 1 / (1 + np.exp(-rng.normal(-0.6, 1.6, n)))
    b = 1 / (1 + np.exp(-rng.normal(-4.0, 1.6, n)))
    t, r = (np.maximum(a, b), np.minimum(a, b)) if pairing == "sorted" else (a, np.minimum(a, b))
    q = np.array([0.02, 0.05, 0.5, 0.9])  # the low quantiles of t tell the pairings apart (by ~0.01)
    np.testing.assert_allclose(np.quantile(d.t.numpy(), q), np.quantile(t, q), atol=0.004)
    np.testing.assert_allclose(np.quantile(d.r[equal:].numpy(), q), np.quantile(r[equal:], q), atol=0.004)


# ---------------------------------------------------------------------------------------------- runs


def tiny_run_config(out: Path, family: str, **extra):
    overrides = tiny_overrides(
        out,
        **{
            "recipe": family,
            "data.synthetic_size": 64,
            "data.pin_memory": False,
            "align.enabled": False,
            "train.lr": 2e-3,
            "train.steps": 40,
            "train.log_every": 1,
            "train.ckpt_every": 20,
            "train.ema_decay": 0.9,
            "train.extra_ema_decays": [],
        },
    )
    if family == "jit":
        overrides.update({"model.name": "JiT-B/16", "model.patch_size": 2, "model.bottleneck_dim": 8,
                          "model.in_context_start": 1, "model.in_context_len": 4})
    overrides.update(extra)
    return load_config(None, overrides)


def noise_for(seeds: list[int], shape) -> torch.Tensor:
    """The sampler's starting noise: one standard normal draw per sample from ``Generator().manual_seed(seed)``."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds])


def test_sde_sampling_a_cosine_path_model_uses_the_cosine_score(tmp_path):
    """A SiT trained on the cosine path is SDE-sampled with the cosine path's score (hand-written Euler-Maruyama).

    On x = cos(pi t/2) x0 + sin(pi t/2) eps with v = dx/dt: cos v + (pi/2) sin x = (pi/2) eps, so
    score = -eps / sin = -(cos v + (pi/2) sin x) / ((pi/2) sin). Diffusion 2t, grid linspace(1, 0.04, N) then 0.
    """
    cfg = tiny_run_config(tmp_path / "run", "sit", **{"objective.path": "cosine", "sample.kind": "sde",
                                                      "train.steps": 4, "train.ckpt_every": 4})
    train(cfg)
    gen = load_generator(tmp_path / "run" / "checkpoints")
    assert gen.objective.path.name == "cosine"
    seeds, labels, steps = [3, 4, 5], torch.tensor([0, 1, 4]), 8
    got = gen.sample_latents(labels, seeds, SamplerConfig(kind="sde", steps=steps))

    def euler_maruyama(score_of):
        rngs = [torch.Generator().manual_seed(s) for s in seeds]
        x = torch.stack([torch.randn(3, 8, 8, generator=g) for g in rngs])
        times = torch.linspace(1.0, 0.04, steps, dtype=torch.float64).tolist() + [0.0]
        for i, (t, t_next) in enumerate(zip(times[:-1], times[1:])):
            dt = t_next - t
            with torch.no_grad():
                v = gen.model(x, torch.full((3,), t), labels)
            drift = v.double() - t * score_of(v.double(), x.double(), t)  # v - (1/2)(2t) score
            x = (x.double() + drift * dt).float()
            if i < len(times) - 2:
                eps = torch.stack([torch.randn(3, 8, 8, generator=g) for g in rngs])
                x = x + math.sqrt(2 * t) * math.sqrt(-dt) * eps
        return x

    def cosine_score(v, x, t):
        c, s = math.cos(math.pi * t / 2), math.sin(math.pi * t / 2)
        return -(c * v + math.pi / 2 * s * x) / (math.pi / 2 * s)

    def linear_score(v, x, t):  # what the sampler used to apply whatever the path
        return (-(1 - t) * v - x) / t

    torch.testing.assert_close(got, euler_maruyama(cosine_score), rtol=1e-4, atol=1e-4)
    assert (got - euler_maruyama(linear_score)).abs().max() > 0.1


def read_column(run_dir: Path, key: str) -> list[float]:
    with open(run_dir / "metrics.csv") as f:
        return [float(row[key]) for row in csv.DictReader(f)]


@torch.no_grad()
def hand_sample(family: str, model, noise: torch.Tensor, labels: torch.Tensor, steps: int) -> torch.Tensor:
    """Each family's sampler written out in its own paper's convention."""
    b = noise.shape[0]
    x = noise.clone()
    if family == "sit":  # Euler on dx/dt = v from t = 1 to 0
        ts = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64).tolist()
        for t, t_next in zip(ts[:-1], ts[1:]):
            x = x + (t_next - t) * model(x, torch.full((b,), t), labels)
    elif family == "jit":  # JiT: t_jit from 0 (noise) to 1, v = (x̂ - z) / clamp(1 - t_jit), Heun then a last Euler
        ts = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64).tolist()

        def v_jit(z, t_jit):  # the network is conditioned on irepa's time 1 - t_jit
            return (model(z, torch.full((b,), 1.0 - t_jit), labels) - z) / max(1.0 - t_jit, T_EPS)

        for i, (t, t_next) in enumerate(zip(ts[:-1], ts[1:])):
            v = v_jit(x, t)
            if i < steps - 1:
                v = 0.5 * (v + v_jit(x + (t_next - t) * v, t_next))
            x = x + (t_next - t) * v
    else:  # MeanFlow: z_r = z_t - (t - r) u(z_t, r, t)
        ts = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64).tolist()
        for t, r in zip(ts[:-1], ts[1:]):
            x = x - (t - r) * model(x, torch.full((b,), t), labels, r=torch.full((b,), r))
    return x


FAMILY_SAMPLERS = {  # family -> (objective class, prediction, [(sampler kind, steps)])
    "sit": (FlowMatching, "velocity", [("ode-euler", 6)]),
    "jit": (FlowMatching, "x", [("ode-heun", 6)]),
    "meanflow": (MeanFlow, "velocity", [("meanflow", 1), ("meanflow", 2)]),
}


@pytest.mark.parametrize("family", ["sit", "jit", "meanflow"])
def test_recipe_learns_resumes_exactly_and_samples_from_its_checkpoint(tmp_path, family):
    full = train(tiny_run_config(tmp_path / "full", family))
    first = train(tiny_run_config(tmp_path / "split", family), stop_after=20)
    second = train(tiny_run_config(tmp_path / "split", family), resume=True)
    assert first.losses + second.losses == full.losses  # bit for bit on CPU
    a, b = load_checkpoint(tmp_path / "full" / "checkpoints"), load_checkpoint(tmp_path / "split" / "checkpoints")
    for key in a["ema"]:
        assert torch.equal(a["ema"][key], b["ema"][key]), key

    # it learns: MeanFlow's adaptively weighted loss sits near 1 by construction, so read its raw error
    series = read_column(tmp_path / "full", "meanflow/mse" if family == "meanflow" else "loss")
    early, late = sum(series[:8]) / 8, sum(series[-8:]) / 8
    assert late < 0.8 * early, (early, late)

    # the checkpoint carries the objective; the generator rebuilds it and samples with the family's sampler
    cfg = tiny_run_config(tmp_path / "full", family)
    assert a["config"]["objective"] == to_dict(cfg)["objective"]
    gen = load_generator(tmp_path / "full" / "checkpoints")
    cls, prediction, samplers = FAMILY_SAMPLERS[family]
    assert type(gen.objective) is cls and gen.objective.cfg == cfg.objective
    assert gen.objective.cfg.prediction == prediction and gen.info["recipe"] == family
    seeds, labels = [11, 12], torch.tensor([1, 4])
    for kind, steps in samplers:
        got = gen.sample_latents(labels, seeds, SamplerConfig(kind=kind, steps=steps))
        want = hand_sample(family, gen.model, noise_for(seeds, (3, 8, 8)), labels, steps)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    if family != "meanflow":
        with pytest.raises(ValueError, match="meanflow"):
            gen.sample_latents(labels, seeds, SamplerConfig(kind="meanflow", steps=1))

    # irepa diagnose reads the run: tokens on the 4 x 4 image grid after block 2 (JiT's in-context class
    # tokens, prepended before block 2, stripped), the noised input built on the run's own path
    images = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    tokens = hidden_tokens(gen.model, images, 0.5, 2, in_channels=3, seed=6)
    x0, eps = images * 2 - 1, torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(6))
    _, expected = gen.model(0.5 * x0 + 0.5 * eps, torch.full((3,), 0.5), torch.full((3,), 4), return_hidden_at=2)
    assert tokens.shape == (3, 16, 32)
    torch.testing.assert_close(tokens, expected)
    rows = diagnose_runs([tmp_path / "full"], times=(0.5,), depth=2, encoder_weights="random", n_train=24, n_test=12,
                         source="synthetic")
    assert rows[-1]["run"] == "full" and rows[-1]["step"] == 40 and 0.0 <= rows[-1]["probe"] <= 1.0


@pytest.mark.parametrize("name", ["jit-vanilla", "jit-repa", "jit-irepa", "meanflow-vanilla", "meanflow-irepa"])
def test_shipped_family_configs_follow_their_recipe_and_the_papers_schedules(name):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    family, _ = split_recipe_name(name)
    from_recipe = load_config(None, recipe_overrides(name))
    assert cfg.recipe == family and cfg.align.enabled == from_recipe.align.enabled
    if cfg.align.enabled:
        for key in ("projector", "kernel_size", "coeff", "norm", "zscore_alpha"):
            assert getattr(cfg.align, key) == getattr(from_recipe.align, key), key
    for key in ("kind", "path", "prediction", "time_sampling", "p_mean", "p_std", "t_eps"):
        assert getattr(cfg.objective, key) == getattr(from_recipe.objective, key), key
    assert cfg.train.betas == (0.9, 0.95) and cfg.train.grad_clip == 0.0 and cfg.train.weight_decay == 0.0
    if family == "jit":  # blr 5e-5 scaled by batch / 256; 5 warm-up epochs of 200, in steps of ImageNet
        per_epoch = IMAGENET_TRAIN_IMAGES // cfg.train.batch_size
        assert cfg.train.batch_size == 1024 and cfg.train.lr == pytest.approx(5e-5 * 1024 / 256)
        assert (cfg.train.warmup_steps, cfg.train.steps) == (5 * per_epoch, 200 * per_epoch)
        assert (cfg.sample.kind, cfg.sample.steps, cfg.sample.guidance_high) == ("ode-heun", 50, 0.9)
        assert not cfg.align.enabled or cfg.align.depth == 4
    else:  # 240 epochs at batch 256, lr 1e-4 constant; B/2's training guidance w = 1, k = 0.5 on all t
        assert cfg.train.steps == 240 * (IMAGENET_TRAIN_IMAGES // 256) and cfg.train.lr == 1e-4
        m = cfg.objective.meanflow
        assert (m.ratio, m.adaptive_p, m.cfg_omega, m.cfg_kappa, m.cfg_t_low, m.cfg_t_high) == (0.25, 1, 1, 0.5, 0, 1)
        assert (cfg.sample.kind, cfg.sample.steps, cfg.sample.cfg_scale) == ("meanflow", 1, 1.0)
