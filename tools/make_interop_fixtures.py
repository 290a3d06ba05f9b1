"""Write the golden fixtures of ``tests/test_interop.py`` with the reference code bases themselves.

For each source this builds a tiny model with the reference's own module (imported from the checkout
given on the command line), gives every weight a seeded random value (the references zero their
modulation and output layers at initialisation, which would make every output 0), saves it in the
reference's checkpoint format, and saves fixed inputs with the reference's outputs for the raw and
the EMA weights (and the projector outputs at the encoder depth). The tests then need only these
files and irepa.

    python tools/make_interop_fixtures.py --repa ../REPA --irepa ../iREPA --repa-e ../REPA-E \
        --jit ../JiT --meanflow ../py-meanflow --out tests/assets/interop

``--jit`` is a JiT checkout (``model_jit.py`` + ``util/model_util.py``): LTH14/JiT, or iREPA's ``jit/``
folder, whose ``model_jit.py`` is JiT's network with optional projectors (built here without them).

Stubs, only where the reference cannot run on a CPU-only machine as written:
* ``einops`` (imported by JiT's ``util/model_util.py``) when it is not installed: the three
  ``rearrange`` / ``repeat`` patterns that file uses, nothing else;
* JiT allocates its RoPE tables and attention bias with ``.cuda()``: without a GPU ``Tensor.cuda``
  returns the tensor unchanged while the reference runs;
* JiT decorates its blocks with ``torch.compile``: compilation is disabled (same math, eager).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import sys
import types
from pathlib import Path

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import torch  # noqa: E402

SIT = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=16, depth=4, num_heads=2, num_classes=10,
           encoder_depth=2)
JIT = dict(input_size=16, patch_size=4, in_channels=3, hidden_size=16, depth=4, num_heads=2, num_classes=10,
           bottleneck_dim=8, in_context_len=4, in_context_start=2)
BATCH = 3


def load_module(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def randomize(model: torch.nn.Module, seed: int, skip: tuple[str, ...] = ("pos_embed",)) -> None:
    """Every parameter N(0, 0.1²) from ``seed``, except the fixed position tables."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.split(".")[-1] in skip:
                continue
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)


def perturbed_copy(state: dict, seed: int) -> dict:
    """An 'EMA': the same weights plus a little seeded noise (position tables, statistics and fixed filters kept)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in state.items():
        if v.is_floating_point() and not k.endswith(("pos_embed", "resample_filter")) and not k.startswith("bn."):
            out[k] = v + torch.randn(v.shape, generator=gen) * 0.02
        else:
            out[k] = v.clone()
    return out


def inputs(channels: int, size: int, num_classes: int, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {"x": torch.randn(BATCH, channels, size, size, generator=gen),
            "t": torch.tensor([0.07, 0.5, 0.93]),
            "y": torch.tensor([0, 3, num_classes])}  # the last is the null class


def hidden_hook(block: torch.nn.Module) -> tuple[list, object]:
    store: list = []
    handle = block.register_forward_hook(lambda m, a, out: store.append(out))
    return store, handle


def sit_args(**extra) -> argparse.Namespace:
    base = dict(model="SiT-T/2", num_classes=SIT["num_classes"], encoder_depth=SIT["encoder_depth"], qk_norm=False,
                resolution=64, batch_size=256, learning_rate=1e-4, adam_beta1=0.9, adam_beta2=0.999,
                adam_weight_decay=0.0, adam_epsilon=1e-8, max_grad_norm=1.0, seed=0, path_type="linear",
                prediction="v", cfg_prob=0.1, weighting="uniform")
    base.update(extra)
    return argparse.Namespace(**base)


def save(out: Path, name: str, checkpoint: dict, golden: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, out / f"{name}.pt")
    torch.save(golden, out / f"{name}-golden.pt")
    print(f"{name}: {(out / f'{name}.pt').stat().st_size / 1024:.0f} KB checkpoint, "
          f"{(out / f'{name}-golden.pt').stat().st_size / 1024:.0f} KB golden")


def make_sit(out: Path, name: str, module: types.ModuleType, seed: int, z_dims: list[int], args, build: dict,
             forward) -> None:
    """A tiny reference SiT: checkpoint ``{"model", "ema", "opt", "args", "steps"}`` plus golden outputs."""
    torch.manual_seed(seed)
    c = SIT
    model = module.SiT(input_size=c["input_size"], patch_size=c["patch_size"], in_channels=c["in_channels"],
                       hidden_size=c["hidden_size"], decoder_hidden_size=c["hidden_size"], depth=c["depth"],
                       num_heads=c["num_heads"], num_classes=c["num_classes"], encoder_depth=c["encoder_depth"],
                       class_dropout_prob=0.1, z_dims=z_dims, projector_dim=16, **build).eval()
    randomize(model, seed)
    if hasattr(model, "bn"):  # REPA-E: the latent statistics its batch-norm tracked
        gen = torch.Generator().manual_seed(seed + 7)
        model.bn.running_mean.copy_(torch.randn(c["in_channels"], generator=gen))
        model.bn.running_var.copy_(torch.rand(c["in_channels"], generator=gen) * 3 + 0.5)
    raw = {k: v.clone() for k, v in model.state_dict().items()}
    ema = perturbed_copy(raw, seed + 1)
    data = inputs(c["in_channels"], c["input_size"], c["num_classes"], seed + 2)
    golden = dict(data)
    with torch.no_grad():
        for tag, state in (("raw", raw), ("ema", ema)):
            model.load_state_dict(state)
            output, zs = forward(model, data)
            golden[f"out_{tag}"] = output
            golden[f"zs_{tag}"] = zs
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    checkpoint = {"model": raw, "ema": ema, "opt": opt.state_dict(), "args": args, "steps": 4000}
    save(out, name, checkpoint, golden)


def repa_forward(model, data):
    out, zs = model(data["x"], data["t"], data["y"])
    return out, zs


def irepa_ldm_forward(model, data):
    out, zs, _ = model(data["x"], data["t"], data["y"])
    return out, zs


def repa_e_forward(model, data):
    """REPA-E's sampling entry (``inference``) and its projectors on the hidden state at the encoder depth."""
    store, handle = hidden_hook(model.blocks[model.encoder_depth - 1])
    out = model.inference(data["x"], data["t"], data["y"])
    handle.remove()
    h = store[0]
    n, t, d = h.shape
    return out, [p(h.reshape(-1, d)).reshape(n, t, -1) for p in model.projectors]


@contextlib.contextmanager
def cpu_jit_stubs():
    """JiT's ``.cuda()`` calls become no-ops while the reference runs on a machine without a GPU."""
    original = torch.Tensor.cuda
    if not torch.cuda.is_available():
        torch.Tensor.cuda = lambda self, *a, **k: self
    try:
        yield
    finally:
        torch.Tensor.cuda = original


def einops_stub() -> None:
    """The patterns JiT's util/model_util.py uses, for machines without einops."""
    if "einops" in sys.modules or importlib.util.find_spec("einops") is not None:
        return
    stub = types.ModuleType("einops")

    def rearrange(x, pattern, **sizes):
        if pattern == "... (d r) -> ... d r":
            return x.unflatten(-1, (-1, sizes["r"]))
        if pattern == "... d r -> ... (d r)":
            return x.flatten(-2)
        raise NotImplementedError(pattern)

    def repeat(x, pattern, **sizes):
        if pattern == "... n -> ... (n r)":
            return x.repeat_interleave(sizes["r"], dim=-1)
        raise NotImplementedError(pattern)

    stub.rearrange, stub.repeat = rearrange, repeat
    sys.modules["einops"] = stub


def make_jit(out: Path, name: str, jit_dir: Path, seed: int, projectors: dict | None) -> None:
    """A tiny reference JiT in the denoiser's checkpoint format, with golden outputs at JiT's own times."""
    einops_stub()
    sys.path.insert(0, str(jit_dir))
    try:
        with cpu_jit_stubs():
            module = load_module(f"reference_model_jit_{name.replace('-', '_')}", jit_dir / "model_jit.py")
            c = JIT
            kwargs = dict(input_size=c["input_size"], patch_size=c["patch_size"], in_channels=c["in_channels"],
                          hidden_size=c["hidden_size"], depth=c["depth"], num_heads=c["num_heads"],
                          num_classes=c["num_classes"], bottleneck_dim=c["bottleneck_dim"],
                          in_context_len=c["in_context_len"], in_context_start=c["in_context_start"])
            if projectors is not None:
                kwargs.update(projectors)
            torch.manual_seed(seed)
            net = module.JiT(**kwargs).eval()
            randomize(net, seed)
            raw = {f"net.{k}": v.clone() for k, v in net.state_dict().items()}
            ema1 = perturbed_copy(raw, seed + 1)
            ema2 = perturbed_copy(raw, seed + 3)
            data = inputs(c["in_channels"], c["input_size"], c["num_classes"], seed + 2)
            golden = dict(data)  # t is JiT's time (0 = noise)
            with torch.no_grad():
                for tag, state in (("raw", raw), ("ema", ema1), ("ema2", ema2)):
                    net.load_state_dict({k[4:]: v for k, v in state.items()})
                    store, handle = hidden_hook(net.blocks[(projectors or {}).get("encoder_depth", 1) - 1])
                    result = net(data["x"], data["t"], data["y"])
                    handle.remove()
                    golden[f"out_{tag}"] = result[0] if isinstance(result, tuple) else result
                    if projectors is not None:
                        golden[f"zs_{tag}"] = result[1]
    finally:
        sys.path.remove(str(jit_dir))
        for mod in [m for m in sys.modules if m == "util" or m.startswith("util.") or m == "projectors"]:
            del sys.modules[mod]
    args = argparse.Namespace(model="JiT-T/4", img_size=c["input_size"], class_num=c["num_classes"], P_mean=-0.8,
                              P_std=0.8, t_eps=0.05, noise_scale=1.0, label_drop_prob=0.1, sampling_method="heun",
                              num_sampling_steps=50, cfg=2.9, interval_min=0.1, interval_max=1.0, ema_decay1=0.9999,
                              ema_decay2=0.9996, blr=5e-5, weight_decay=0.0, epochs=200, seed=0)
    if projectors is not None:
        vars(args).update(enc_type="hog", encoder_depth=projectors["encoder_depth"], proj_coeff="0.5",
                          projection_layer_type=projectors["projection_layer_type"],
                          proj_kwargs_kernel_size=projectors["proj_kwargs_kernel_size"],
                          projector_dim=projectors["projector_dim"], spnorm_method="zscore", zscore_alpha=0.8)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    checkpoint = {"model": raw, "model_ema1": ema1, "model_ema2": ema2, "optimizer": opt.state_dict(),
                  "epoch": 199, "args": args}
    save(out, name, checkpoint, golden)


MEANFLOW = dict(img_resolution=8, in_channels=3, out_channels=3, model_channels=8, channel_mult=[1, 2], num_blocks=1,
                attn_resolutions=[4], dropout=0.0, channel_mult_noise=2, resample_filter=[1, 3, 3, 1])


def make_meanflow(out: Path, port_dir: Path) -> None:
    """A tiny DDPM++ U-Net of the MeanFlow PyTorch port in its checkpoint format, with golden outputs of its
    network, EMA and extra EMA at fixed ``(x, t, h = t - r)`` (EDM augmentation conditioning built, not used)."""
    sys.path.insert(0, str(port_dir / "meanflow"))
    try:
        from models.meanflow import MeanFlow
        from models.unet import SongUNet

        # the port's arguments (cifar10_v1.sh) but no dataset: its datasets are 32 px, this model 8 px
        args = argparse.Namespace(arch="unet", ema_decay=0.9999, ema_decays=[0.99995], dropout=0.2, use_edm_aug=True,
                                  epochs=16000, batch_size=128, lr=6e-4, norm_p=0.75,
                                  norm_eps=1e-3, ratio=0.75, tr_sampler="v1", P_mean_t=-0.6, P_std_t=1.6,
                                  P_mean_r=-4.0, P_std_r=1.6, warmup_epochs=200, seed=0)
        torch.manual_seed(60)
        model = MeanFlow(arch=SongUNet, net_configs={**MEANFLOW, "augment_dim": 6}, args=args).eval()
        randomize(model.net, 60)
        raw = {k: v.clone() for k, v in model.net.state_dict().items()}
        emas = [perturbed_copy(raw, 61), perturbed_copy(raw, 63)]
        model.net_ema.load_state_dict(emas[0])
        model.net_ema1.load_state_dict(emas[1])
        model.num_updates.fill_(8000)
        gen = torch.Generator().manual_seed(62)
        data = {"x": torch.randn(BATCH, 3, 8, 8, generator=gen), "t": torch.tensor([0.07, 0.5, 1.0]),
                "r": torch.tensor([0.07, 0.2, 0.0])}
        golden = dict(data)
        with torch.no_grad():
            for tag, net in (("raw", model.net), ("ema", model.net_ema), ("ema2", model.net_ema1)):
                golden[f"out_{tag}"] = net(data["x"], (data["t"], data["t"] - data["r"]), aug_cond=None)
        opt = torch.optim.Adam(model.net.parameters(), lr=6e-4)
        checkpoint = {"model": model.state_dict(), "optimizer": opt.state_dict(), "lr_schedule": {},
                      "epoch": 499, "args": args}
    finally:
        sys.path.remove(str(port_dir / "meanflow"))
        for mod in [m for m in sys.modules if m == "models" or m.startswith("models.")]:
            del sys.modules[mod]
    save(out, "meanflow", checkpoint, golden)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repa", type=Path, help="sihyun-yu/REPA checkout")
    p.add_argument("--irepa", type=Path, help="End2End-Diffusion/iREPA checkout")
    p.add_argument("--repa-e", type=Path, help="End2End-Diffusion/REPA-E checkout")
    p.add_argument("--jit", type=Path, help="JiT checkout (LTH14/JiT, or iREPA's jit/ folder)")
    p.add_argument("--meanflow", type=Path, help="Gsunshine/py-meanflow checkout (the MeanFlow PyTorch port)")
    p.add_argument("--out", type=Path, default=Path("tests/assets/interop"))
    a = p.parse_args()
    if a.repa:
        module = load_module("reference_repa_sit", a.repa / "models" / "sit.py")
        make_sit(a.out, "repa", module, 10, [128], sit_args(enc_type="sift", proj_coeff=0.5),
                 {"qk_norm": False, "fused_attn": False}, repa_forward)
    if a.irepa:
        module = load_module("reference_irepa_ldm_sit", a.irepa / "ldm" / "models" / "sit.py")
        args = sit_args(enc_type="hog", proj_coeff="1.0", projection_layer_type="conv", proj_kwargs_kernel_size=3,
                        spnorm_method="zscore", zscore_alpha=0.6, zscore_proj_skip_std=False, repa_loss=True,
                        ema_decay=0.9999)
        make_sit(a.out, "irepa-ldm", module, 20, [36], args,
                 {"qk_norm": False, "fused_attn": False, "projection_layer_type": "conv",
                  "proj_kwargs_kernel_size": 3}, irepa_ldm_forward)
        gen = torch.Generator().manual_seed(21)
        torch.save({"latents_scale": (torch.rand(1, 4, 1, 1, generator=gen) + 0.5),
                    "latents_bias": torch.randn(1, 4, 1, 1, generator=gen)},
                   a.out / "irepa-ldm-latents-stats.pt")
        make_jit(a.out, "irepa-jit", a.irepa / "jit", 40,
                 dict(encoder_depth=3, z_dims=[36], projector_dim=16, projection_layer_type="conv",
                      proj_kwargs_kernel_size=3))
    if a.repa_e:
        module = load_module("reference_repa_e_sit", a.repa_e / "models" / "sit.py")
        make_sit(a.out, "repa-e", module, 30, [128], sit_args(enc_type="sift", proj_coeff=0.5, vae="f8d4"),
                 {"qk_norm": False, "fused_attn": False}, repa_e_forward)
    if a.jit:
        make_jit(a.out, "jit", a.jit, 50, None)
    if a.meanflow:
        make_meanflow(a.out, a.meanflow)


if __name__ == "__main__":
    main()
