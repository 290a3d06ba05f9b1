"""``irepa diagnose``: what alignment did to a model's hidden states.

Alignment can only speed training up if the target carries something the model would not learn
quickly by itself. This compares trained runs on held-out images: each image is noised to time
``t``, the hidden tokens after block ``k`` are read with the *null* class (so the class label
cannot leak into the probe), and we report

- ``probe``: linear-probe accuracy of the mean-pooled tokens (global information),
- ``cka``: linear CKA between the hidden tokens and the encoder's tokens of the same clean images
  (how much of the target's structure the representation holds, aligned or not),
- ``lds`` / ``cds``: the spatial-structure metrics of the hidden tokens,

with two reference rows: the encoder's own tokens, and the raw pixels cut into the model's patches
(their probe is on the whole flattened image: what a linear classifier gets with no network at all).
"""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from irepa.align.target_cache import encode_dataset
from irepa.codecs import Codec, PixelCodec, codec_from_checkpoint
from irepa.config import config_from_checkpoint
from irepa.data import DataConfig, build_dataset
from irepa.diffusion.interpolants import get_interpolant
from irepa.metrics.probe import train_linear_probe
from irepa.metrics.spatial import cds, lds
from irepa.sample.pipeline import build_model_from_config
from irepa.train.checkpoint import latest_checkpoint, load_checkpoint
from irepa.utils.io import atomic_open

COLUMNS = ["run", "step", "t", "depth", "probe", "cka", "lds", "cds"]


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of two representations ``(n, d1)`` and ``(n, d2)`` of the same n items (Kornblith et al.)."""
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y):
        raise ValueError(f"need (n, d1) and (n, d2) with the same n, got {tuple(x.shape)} and {tuple(y.shape)}")
    x = x.double() - x.double().mean(dim=0)
    y = y.double() - y.double().mean(dim=0)
    cross = torch.linalg.matrix_norm(x.T @ y) ** 2
    return float(cross / (torch.linalg.matrix_norm(x.T @ x) * torch.linalg.matrix_norm(y.T @ y)))


def _images(source: str, split: str, n: int, resolution: int, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images in ``[0, 1]`` and their labels; ``synthetic`` draws the test split from another seed."""
    if source == "synthetic":
        cfg = DataConfig(
            source="synthetic",
            resolution=resolution,
            flip=False,
            synthetic_size=n,
            num_classes=num_classes,
            seed=0 if split == "train" else 1,
        )
    elif source == "fashion-mnist":
        cfg = DataConfig(source="fashion-mnist", resolution=resolution, flip=False, split=split, limit=n)
    else:
        raise ValueError(f"diagnose reads fashion-mnist or synthetic images, not {source!r}")
    data = build_dataset(cfg)
    items = [data[i] for i in range(len(data))]
    return torch.stack([it["image"] for it in items]), torch.tensor([int(it["label"]) for it in items])


@torch.no_grad()
def hidden_tokens(
    model: torch.nn.Module,
    images: torch.Tensor,
    t: float,
    depth: int,
    path: str = "linear",
    in_channels: int = 1,
    seed: int = 0,
    batch_size: int = 250,
    codec: Codec | None = None,
) -> torch.Tensor:
    """Tokens ``(N, T, C)`` after block ``depth`` for ``[0, 1]`` images noised to time ``t`` (null class).

    ``codec`` brings the images into the model's space (default: pixels with ``in_channels``); a latent
    run's codec encodes them with its VAE (posterior means' samples from a fixed seed).
    """
    interpolant = get_interpolant(path)
    codec = codec or PixelCodec(in_channels)
    x0 = torch.cat([codec.encode({"image": images[i : i + batch_size]}, torch.Generator().manual_seed(seed + i))
                    for i in range(0, len(images), batch_size)]).float()
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    out = []
    for start in range(0, len(x0), batch_size):
        sl = slice(start, start + batch_size)
        tt = torch.full((len(x0[sl]),), float(t))
        xt = interpolant.sample_xt(x0[sl], noise[sl], tt)
        null = torch.full((len(xt),), model.num_classes, dtype=torch.long)
        _, hidden = model(xt, tt, null, return_hidden_at=depth)
        out.append(hidden.float())
    return torch.cat(out)


def pixel_tokens(images: torch.Tensor, grid: int, in_channels: int) -> torch.Tensor:
    """``[0, 1]`` images as ``(N, grid*grid, patch*patch*C)`` tokens, in the model's channels and patches."""
    x = images.float().mean(dim=1, keepdim=True) if in_channels == 1 else images.float()
    patch = x.shape[-1] // grid
    return torch.nn.functional.unfold(x, kernel_size=patch, stride=patch).transpose(1, 2)


def _token_metrics(tokens: torch.Tensor, grid: int) -> dict[str, float]:
    """LDS and CDS at their default distances, shortened to what a small grid has."""
    longest = 2 * grid - 2
    return {
        "lds": float(lds(tokens, grid, grid, far_dist=min(6, longest)).mean()),
        "cds": float(cds(tokens, grid, grid, dmax=min(8, longest)).mean()),
    }


def _probe(train: torch.Tensor, train_y, test: torch.Tensor, test_y, n_classes: int) -> float:
    return train_linear_probe(train.mean(dim=1), train_y, test.mean(dim=1), test_y, n_classes=n_classes).accuracy


def diagnose_runs(
    run_dirs: list[str | Path],
    times: tuple[float, ...] = (0.25, 0.5, 0.75),
    depth: int | None = None,
    encoder: str = "dinov2-vit-s",
    encoder_weights: str | None = None,
    n_train: int = 2000,
    n_test: int = 1000,
    source: str = "fashion-mnist",
) -> list[dict]:
    """One row per (run, t), plus the encoder's own row; see the module docstring."""
    from irepa.encoders import load_encoder

    runs = []  # (folder, checkpoint, model with its EMA weights, codec), all checked before any encoding
    for run in run_dirs:
        ckpt_path = latest_checkpoint(Path(run) / "checkpoints")
        if ckpt_path is None:
            raise FileNotFoundError(f"{run}: no checkpoints/step_*.pt; train the run first")
        ckpt = load_checkpoint(ckpt_path)
        codec = codec_from_checkpoint(ckpt).prepare_decoder()  # the run's own pixels -> model space
        model = build_model_from_config(ckpt["config"])
        model.load_state_dict(ckpt["ema"] if ckpt.get("ema") is not None else ckpt["model"])
        runs.append((Path(run), ckpt, model.eval(), codec))
    m, grid_hw = runs[0][1]["config"]["model"], tuple(runs[0][2].grid)
    resolution = m["input_size"] * runs[0][3].factor
    for run, ckpt, model, codec in runs:
        if ckpt["config"]["model"]["input_size"] * codec.factor != resolution:
            raise ValueError(f"{run}: runs must see images of one resolution to be compared on the same images")
        if tuple(model.grid) != grid_hw:
            raise ValueError(f"{run}: token grid {model.grid} differs from {grid_hw}; compare runs with one grid")
    n_classes, grid = m["num_classes"], grid_hw[0]
    train_x, train_y = _images(source, "train", n_train, resolution, n_classes)
    test_x, test_y = _images(source, "test", n_test, resolution, n_classes)

    enc = load_encoder(encoder, weights=encoder_weights, grid=grid_hw).freeze()
    target_train = encode_dataset(_AsItems(train_x), enc, desc=f"encode {encoder}").float()
    target_test = encode_dataset(_AsItems(test_x), enc, desc=f"encode {encoder}").float()
    flat_target = target_test.flatten(0, 1)
    rows = [
        {
            "run": f"encoder:{encoder}",
            "step": "",
            "t": 0.0,
            "depth": "",
            "probe": _probe(target_train, train_y, target_test, test_y, n_classes),
            "cka": 1.0,
            **_token_metrics(target_test, grid),
        }
    ]
    channels = int(m["in_channels"])
    px_train, px_test = pixel_tokens(train_x, grid, channels), pixel_tokens(test_x, grid, channels)
    rows.append(
        {
            "run": "pixels",
            "step": "",
            "t": 0.0,
            "depth": "",
            "probe": train_linear_probe(
                px_train.flatten(1), train_y, px_test.flatten(1), test_y, n_classes=n_classes
            ).accuracy,
            "cka": linear_cka(px_test.flatten(0, 1), flat_target),
            **_token_metrics(px_test, grid),
        }
    )
    for run, ckpt, model, codec in runs:
        cfg = config_from_checkpoint(ckpt)
        k = depth or cfg.align.depth
        path, channels = cfg.objective.path, cfg.model.in_channels
        for t in times:
            h_train = hidden_tokens(model, train_x, t, k, path, channels, seed=1, codec=codec)
            h_test = hidden_tokens(model, test_x, t, k, path, channels, seed=2, codec=codec)
            rows.append(
                {
                    "run": run.name,
                    "step": int(ckpt["step"]),
                    "t": t,
                    "depth": k,
                    "probe": _probe(h_train, train_y, h_test, test_y, n_classes),
                    "cka": linear_cka(h_test.flatten(0, 1), flat_target),
                    **_token_metrics(h_test, grid),
                }
            )
    return rows


class _AsItems(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i]}


def write_rows(rows: list[dict], path: Path) -> None:
    with atomic_open(path, "w") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)


def markdown(rows: list[dict]) -> str:
    lines = ["| run | step | t | depth | probe acc | CKA to target | LDS | CDS |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['run']} | {r['step']} | {r['t']} | {r['depth']} | {r['probe']:.3f} | {r['cka']:.3f} "
            f"| {r['lds']:.3f} | {r['cds']:.3f} |"
        )
    return "\n".join(lines) + "\n"
