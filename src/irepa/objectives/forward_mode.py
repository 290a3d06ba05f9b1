"""A cheaper forward-mode rule for the network's linear layers, for MeanFlow's JVP.

MeanFlow differentiates the network along ``(z, r, t)`` only: its parameters are constants of the JVP.
PyTorch's stock forward-mode formula for ``linear`` / ``addmm`` does not know that: it also multiplies
the input by the weight's tangent, a materialised tensor of zeros, so every linear layer costs three
matrix products instead of two (measured on CPU: the JVP of a SiT at about 3.5 forwards).

:func:`constant_weight_linears` routes ``F.linear`` calls whose weight (and bias) are parameters through
:class:`_ConstantWeightLinear`, whose forward-mode rule is ``dy = dx W^T`` and whose backward is the
linear map's usual one, so the primal output stays trainable (MeanFlow's single-pass form). Other calls,
and every call under autocast (where the backward would mix dtypes), keep PyTorch's own rules.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode


class _ConstantWeightLinear(torch.autograd.Function):
    """``F.linear(x, weight, bias)`` with the forward-mode rule of a constant weight and bias."""

    @staticmethod
    def forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return F.linear(x, weight, bias)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, weight, bias = inputs
        ctx.save_for_backward(x, weight)
        ctx.save_for_forward(weight)
        ctx.has_bias = bias is not None

    @staticmethod
    def jvp(ctx, dx, dweight, dbias):  # the weight and bias tangents are zero by construction: not used
        (weight,) = ctx.saved_tensors
        return F.linear(dx, weight)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad_x = grad @ weight if ctx.needs_input_grad[0] else None
        flat = grad.reshape(-1, grad.shape[-1])
        grad_w = flat.t() @ x.reshape(-1, x.shape[-1]) if ctx.needs_input_grad[1] else None
        grad_b = flat.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b


class constant_weight_linears(TorchFunctionMode):  # noqa: N801 - used as a context manager, like torch's modes
    """Inside: ``F.linear`` with parameter weights uses the constant-weight forward-mode rule (autocast off)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear and not _autocast_on(args[0]):
            x, weight = args[0], args[1] if len(args) > 1 else kwargs["weight"]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            if isinstance(weight, nn.Parameter) and (bias is None or isinstance(bias, nn.Parameter)):
                return _ConstantWeightLinear.apply(x, weight, bias)
        return func(*args, **kwargs)


def _autocast_on(x: torch.Tensor) -> bool:
    return torch.is_autocast_enabled(x.device.type)
