"""Numeric precision in one place: its names, mixed precision for a model call, exact float32 where it matters.

* One set of names everywhere (training's ``train.mixed_precision``, sampling's ``--precision``):
  ``fp32``, ``bf16``, ``fp16`` (:data:`PRECISIONS`), plus ``auto`` where a command picks for the
  device. ``no``, the name training used for fp32 before, is still read (:func:`precision_name`).

* :func:`autocast_model` runs a model ``(x, t, y, ...) -> prediction`` under autocast (bf16 / fp16)
  while its inputs and its output stay float32, so an integrator's state and times never lose
  precision (a bf16 ``t`` near 1 is only good to ~0.004, which merges neighbouring SDE steps).
* :func:`no_tf32` turns TensorFloat-32 off for CUDA matmuls and cuDNN convolutions inside a block and
  restores the caller's settings afterwards, so features computed on a GPU match CPU-computed
  reference statistics (TF32 keeps only 10 mantissa bits).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from irepa.errors import ConfigError

PRECISIONS = ("fp32", "bf16", "fp16")
AUTO = "auto"
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
OLD_NAMES = {"no": "fp32", False: "fp32"}  # train.mixed_precision's fp32 once (YAML reads a bare no as false)


def precision_name(value: Any, where: str = "precision") -> str:
    """``value`` as one of :data:`PRECISIONS` (old spellings accepted); a one-line ``ConfigError`` otherwise."""
    if isinstance(value, (str, bool)) and value in OLD_NAMES:
        return OLD_NAMES[value]
    if value not in PRECISIONS:
        raise ConfigError(f"{where} must be one of {', '.join(PRECISIONS)}, got {value!r}",
                          fix=f"e.g. --{where} bf16" if "." in where else None)
    return value


def accelerate_mixed_precision(value: Any) -> str:
    """accelerate's name (``no``, ``bf16``, ``fp16``) for a precision."""
    name = precision_name(value)
    return "no" if name == "fp32" else name


def default_precision(device: str | torch.device) -> str:
    """bf16 on CUDA (tensor cores, no loss scaling needed), fp32 elsewhere (CPU autocast rarely pays off)."""
    return "bf16" if torch.device(device).type == "cuda" else "fp32"


def resolve_precision(precision: str | None, device: str | torch.device) -> str:
    """``"auto"``/None -> :func:`default_precision` of ``device``; otherwise checked against :data:`PRECISIONS`."""
    if precision in (None, AUTO):
        return default_precision(device)
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; valid: {AUTO}, {', '.join(PRECISIONS)}")
    return precision


def _cast_floats(out: Any, dtype: torch.dtype) -> Any:
    """Floating tensors in ``out`` (a tensor, or a tuple / list of them) as ``dtype``."""
    if isinstance(out, torch.Tensor):
        return out.to(dtype) if out.is_floating_point() else out
    if isinstance(out, (tuple, list)):
        return type(out)(_cast_floats(o, dtype) for o in out)
    return out


def autocast_model(model: Callable[..., Any], precision: str) -> Callable[..., Any]:
    """``model`` with its call run under autocast at ``precision``; ``fp32`` returns ``model`` itself.

    The arguments (the state ``x`` first, then ``t``, labels, ...) are passed on untouched: autocast
    lowers only the matmuls and convolutions inside the model. Floating outputs come back in ``x``'s
    dtype, so everything computed from them (a velocity from an x-prediction, the integrator's
    steps) stays in float32.
    """
    if precision == "fp32":
        return model
    if precision not in AUTOCAST_DTYPES:
        raise ConfigError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    dtype = AUTOCAST_DTYPES[precision]

    def lowered(x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        with torch.autocast(device_type=x.device.type, dtype=dtype):
            out = model(x, *args, **kwargs)
        return _cast_floats(out, x.dtype)

    lowered.precision = precision  # type: ignore[attr-defined]  # for introspection and tests
    lowered.wrapped = model  # type: ignore[attr-defined]
    return lowered


# ---------------------------------------------------------------- TensorFloat-32

# torch >= 2.9 keeps TF32 settings twice: the legacy flags (``allow_tf32``, the float32 matmul
# precision) and per-operation ``fp32_precision`` strings. Reading a legacy flag raises when the two
# disagree, and so can a CUDA matmul, so both are switched off together and both are restored.
_NEW_API_OPS = (("generic", "all"), ("cuda", "all"), ("cuda", "matmul"), ("cuda", "conv"), ("cuda", "rnn"))


def _has_new_tf32_api() -> bool:
    return hasattr(torch._C, "_get_fp32_precision_getter") and hasattr(torch.backends.cuda.matmul, "fp32_precision")


def _try(read: Callable[[], Any]) -> Any:
    """A flag's value, or None where torch refuses to report it (settings mixed through both APIs)."""
    try:
        return read()
    except RuntimeError:
        return None


def _tf32_settings() -> dict[str, Any]:
    """The current settings, in the form :func:`_apply_tf32_settings` restores.

    torch reports an operation's effective ``fp32_precision`` (its own, else its parent's); one equal
    to its parent's is saved as ``"none"`` (inherit), which keeps a global setting global.
    """
    state = {
        "matmul_precision": _try(torch.get_float32_matmul_precision),
        "cudnn_allow_tf32": _try(torch._C._get_cudnn_allow_tf32),
    }
    if _has_new_tf32_api():
        effective = {f"{b}.{o}": _try(lambda b=b, o=o: torch._C._get_fp32_precision_getter(b, o))
                     for b, o in _NEW_API_OPS}
        for backend, op in _NEW_API_OPS:
            key = f"{backend}.{op}"
            parent = "generic.all" if op == "all" else f"{backend}.all"
            inherited = key != parent and effective[key] is not None and effective[key] == effective[parent]
            state[key] = "none" if inherited else effective[key]
    return state


def _apply_tf32_settings(state: dict[str, Any]) -> None:
    """Legacy flags first (they overwrite the per-operation strings), then the strings themselves."""
    if state.get("matmul_precision") is not None:
        torch.set_float32_matmul_precision(state["matmul_precision"])
    if state.get("cudnn_allow_tf32") is not None:
        torch._C._set_cudnn_allow_tf32(state["cudnn_allow_tf32"])
    for backend, op in _NEW_API_OPS:
        value = state.get(f"{backend}.{op}")
        if value is not None:
            try:
                torch._C._set_fp32_precision_setter(backend, op, value)
            except RuntimeError:  # a value name this torch build does not know
                pass


def tf32_disabled_settings() -> dict[str, Any]:
    """The settings :func:`no_tf32` applies: full float32 for CUDA matmuls, convolutions and RNNs."""
    state: dict[str, Any] = {"matmul_precision": "highest", "cudnn_allow_tf32": False}
    if _has_new_tf32_api():
        state.update({"cuda.matmul": "ieee", "cuda.conv": "ieee", "cuda.rnn": "ieee"})
    return state


@contextmanager
def no_tf32() -> Iterator[None]:
    """No TensorFloat-32 inside (CUDA matmuls and cuDNN convolutions in full float32); restored after.

    The previous settings come back even when the block raises. Setting the flags is harmless on
    machines without CUDA (they only steer CUDA kernels), which is how the CPU tests check it.
    """
    saved = _tf32_settings()
    try:
        _apply_tf32_settings(tf32_disabled_settings())
        yield
    finally:
        _apply_tf32_settings(saved)


def tf32_enabled() -> dict[str, bool]:
    """Whether CUDA matmuls and cuDNN convolutions may use TF32 now (what the kernels will see)."""
    if _has_new_tf32_api():
        return {
            "matmul": torch._C._get_fp32_precision_getter("cuda", "matmul") == "tf32",
            "conv": torch._C._get_fp32_precision_getter("cuda", "conv") == "tf32",
        }
    return {"matmul": bool(torch.backends.cuda.matmul.allow_tf32), "conv": bool(torch.backends.cudnn.allow_tf32)}
