"""MeanFlow's precision and its two JVP forms, each against an independent computation.

* ``precision: fp32`` (the default): the training error computed inside CPU bf16 autocast equals the float32
  one, while ``precision: autocast`` moves it (the check can fail).
* ``jvp: single`` (the prediction is the JVP's primal output) and ``jvp: two-pass`` (no-grad JVP, then an
  ordinary forward) give the same loss and parameter gradients in float64, alignment head and training-time
  guidance included; both targets match a central finite difference of the network.
"""

from __future__ import annotations

import copy

import pytest
import torch
from tiny import perturbed_sit

from irepa.align.aligner import Aligner
from irepa.objectives import Draw, MeanFlow, MeanFlowConfig, ObjectiveConfig
from irepa.train.aligned_model import AlignedModel

pytestmark = pytest.mark.usefixtures("one_thread")


def objective(**meanflow) -> MeanFlow:
    return MeanFlow(ObjectiveConfig(kind="meanflow", meanflow=MeanFlowConfig(**meanflow)), num_classes=4)


def batch(dtype: torch.dtype, n: int = 6, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, 3, 8, 8, generator=gen, dtype=dtype)
    t = torch.tensor([0.9, 0.75, 0.6, 0.45, 0.3, 0.2], dtype=dtype)[:n]
    r = torch.tensor([0.1, 0.75, 0.2, 0.0, 0.3, 0.05], dtype=dtype)[:n]  # two rows with r = t
    labels = torch.tensor([0, 1, 2, 3, 4, 1])[:n]  # 4 = the null class
    draw = Draw(t=t, r=r, noise=torch.randn(x0.shape, generator=gen, dtype=dtype), labels=labels)
    return x0, labels, draw


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def test_default_precision_keeps_the_error_float32_under_bf16_autocast():
    model = perturbed_sit(torch.float32)
    net = AlignedModel(model, None, 1)
    x0, labels, d = batch(torch.float32)
    obj = objective(cfg_kappa=0.5)  # the default precision, with training-time guidance forwards too
    plain = obj.loss(net, x0, labels, draw=d)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lowered = obj.loss(net, x0, labels, draw=d)
    for key in ("loss", "meanflow/mse"):
        assert lowered[key].dtype == torch.float32
        assert relative(lowered[key], plain[key]) < 1e-5, key

    # precision: autocast (today's speed option) leaves the JVP to bf16: its target moves by percents
    fast = objective(precision="autocast")
    z, v = fast.path.sample_xt(x0, d.noise, d.t), fast.path.velocity(x0, d.noise, d.t)

    def u(z_, t_, y, r=None):
        return model(z_, t_, y, r=r)

    exact = fast.mean_flow_target(u, z, d.r, d.t, v, d.labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with fast.precision_context(z.device):
            bf16 = fast.mean_flow_target(u, z, d.r, d.t, v, d.labels)
        with objective().precision_context(z.device):
            kept = objective().mean_flow_target(u, z, d.r, d.t, v, d.labels)
    assert relative(bf16.float(), exact) > 1e-2
    torch.testing.assert_close(kept, exact, rtol=0, atol=0)


@pytest.mark.parametrize("aligned", [False, True])
def test_single_pass_and_two_pass_give_the_same_loss_and_gradients(aligned):
    backbone = perturbed_sit(torch.float64)
    aligner, targets = None, None
    if aligned:  # the alignment head reads block 1 of the same forward; its loss trains the backbone too
        aligner = Aligner(32, {"enc": 5}, grid=(4, 4), projector="conv", norm="zscore").double()
        targets = {"enc": aligner.prepare_target(torch.randn(6, 16, 5, dtype=torch.float64), "enc")}
    x0, labels, d = batch(torch.float64)
    losses, grads = {}, {}
    for form in ("single", "two-pass"):
        net = AlignedModel(copy.deepcopy(backbone), copy.deepcopy(aligner), 1)
        out = objective(jvp=form, cfg_kappa=0.5, cfg_t_high=0.8).loss(net, x0, labels, targets=targets, draw=d)
        out["loss"].backward()
        losses[form] = out
        grads[form] = {name: p.grad for name, p in net.named_parameters()}
    for key in losses["single"]:
        assert relative(losses["single"][key].detach(), losses["two-pass"][key].detach()) < 1e-6, key
    assert ("loss_align" in losses["single"]) == aligned
    assert grads["single"].keys() == grads["two-pass"].keys()
    for name, g in grads["two-pass"].items():
        assert g is not None and g.abs().max() > 0, name
        assert relative(grads["single"][name], g) < 1e-6, name


@pytest.mark.parametrize("form", ["single", "two-pass"])
def test_both_forms_build_the_target_of_a_central_finite_difference(form):
    """u_tgt = v - (t - r) du/dt, du/dt the derivative of u(z + h v, r, t + h) at h = 0 (central difference)."""
    model = perturbed_sit(torch.float64).eval()
    obj = objective(jvp=form)
    gen = torch.Generator().manual_seed(2)
    z = torch.randn(4, 3, 8, 8, generator=gen, dtype=torch.float64)
    v = torch.randn(4, 3, 8, 8, generator=gen, dtype=torch.float64)
    t = torch.tensor([0.6, 0.7, 0.8, 0.95], dtype=torch.float64)
    r = torch.tensor([0.1, 0.3, 0.2, 0.5], dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 4])

    def u(z_, t_, y, r=None):
        return model(z_, t_, y, r=r)

    if form == "single":
        pred, aux, target = obj.prediction_and_target(lambda *a, r=None: (u(*a[:3], r=r), None), z, r, t, v, labels)
        assert aux is None and pred.requires_grad
        torch.testing.assert_close(pred.detach(), u(z, t, labels, r=r).detach(), rtol=1e-12, atol=1e-12)
    else:
        target = obj.mean_flow_target(u, z, r, t, v, labels)
    h = 1e-3  # the sinusoidal time features are float32: a smaller h only adds their rounding
    with torch.no_grad():
        dudt = (u(z + h * v, t + h, labels, r=r) - u(z - h * v, t - h, labels, r=r)) / (2 * h)
    jvp_term = (t - r).view(-1, 1, 1, 1) * dudt
    assert jvp_term.norm() > 0.1 * v.norm()  # the network's derivative matters in this target
    assert ((target - (v - jvp_term)).norm() / jvp_term.norm()).item() < 1e-3


def test_two_pass_under_ddp_gives_the_single_process_gradients_and_single_pass_refuses_it(tmp_path):
    """One-process gloo group: DDP's forward (buffer broadcast) cannot run inside torch.func.jvp, so the JVP
    runs on the bare network; the gradient pass goes through the wrapper (its all-reduce)."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        base = AlignedModel(perturbed_sit(torch.float64), None, 1)
        x0, labels, d = batch(torch.float64)
        grads = []
        for wrap in (False, True):
            net = copy.deepcopy(base)
            objective(cfg_kappa=0.5).loss(DistributedDataParallel(net) if wrap else net, x0, labels,
                                          draw=d)["loss"].backward()
            grads.append(torch.cat([p.grad.flatten() for p in net.parameters()]))
        assert relative(grads[1], grads[0]) < 1e-12
        with pytest.raises(ValueError, match="two-pass"):
            objective(jvp="single").loss(DistributedDataParallel(copy.deepcopy(base)), x0, labels, draw=d)
    finally:
        dist.destroy_process_group()


def test_unknown_precision_or_form_is_a_config_error():
    with pytest.raises(ValueError, match="precision"):
        objective(precision="bf16")
    with pytest.raises(ValueError, match="jvp"):
        objective(jvp="double")
