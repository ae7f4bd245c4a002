"""How the native engine runs one linear layer on the CPU.

:func:`linear` picks the fastest kernel measured for the product's shape: oneDNN on weights
reordered once (:class:`PackedWeights`) for passes of 16+ rows and for the LM head, MKL's GEMM with
the operands transposed at 2-15 rows, ``F.linear`` otherwise. :func:`apply_linear` runs a model's
layer through it, including the base product of a peft LoRA layer, whose adapters are added as
peft adds them (:func:`lora_adapters`). All of it gives ``F.linear``'s result up to float rounding.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

# Passes of at most this many rows compute a linear layer as (W @ x^T)^T (see linear).
TRANSPOSED_LINEAR_ROWS = 128
# Passes of at least this many rows, and layers with at least this many outputs (an LM head),
# run oneDNN's linear on weights reordered once (see linear).
PACKED_LINEAR_MIN_ROWS = 16
PACKED_LINEAR_MIN_OUT = 8192
# PyTorch's oneDNN linear on a weight reordered once into oneDNN's own layout: the private ops
# that torch.compile's CPU weight prepacking uses; absent from builds without oneDNN.
_ONEDNN_REORDER = getattr(torch.ops.mkldnn, "_reorder_linear_weight", None)
_ONEDNN_LINEAR = getattr(torch.ops.mkldnn, "_linear_pointwise", None)


class PackedWeights:
    """oneDNN copies of float32 CPU weights, made on first use and remade when a weight changes.

    A weight counts as changed when its storage moved (``data_ptr``) or its version counter moved
    (an in-place update: an optimizer step, ``copy_``, ``load_state_dict``). An update through
    ``.data`` moves no counter: call :meth:`clear` after one (``NativePolicy.weights_changed``
    does). Entries go when their weight is freed. ``enabled`` turns the packed path off (it also
    goes off by itself if oneDNN refuses a weight).
    """

    def __init__(self) -> None:
        self.enabled = (
            _ONEDNN_REORDER is not None and _ONEDNN_LINEAR is not None and torch.backends.mkldnn.is_available()
        )
        self._entries: dict[int, tuple[weakref.ref, tuple[int, ...], torch.Tensor]] = {}

    def clear(self) -> None:
        """Drop every copy (they are remade on next use)."""
        self._entries.clear()

    def get(self, weight: torch.Tensor, members: Sequence[torch.Tensor] = ()) -> torch.Tensor | None:
        """The oneDNN copy of ``weight: (out, in)``, or None when the packed path is off.

        ``members``: tensors whose in-place updates change ``weight`` without touching its own
        version counter (the modules' weights that are views of a fused tensor, see
        :meth:`LlamaFamilyForward.fuse_projections`).
        """
        if not self.enabled:
            return None
        key = id(weight)
        stamp = (weight.data_ptr(), *(_version(t) for t in (weight, *members)))
        entry = self._entries.get(key)
        if entry is not None and entry[0]() is weight and entry[1] == stamp:
            return entry[2]
        try:
            packed = _ONEDNN_REORDER(weight.detach())
        except RuntimeError:
            self.enabled = False
            logger.warning("oneDNN refused a weight of shape %s; linear layers run on F.linear", tuple(weight.shape))
            return None
        entries = self._entries
        self._entries[key] = (weakref.ref(weight, lambda _, key=key: entries.pop(key, None)), stamp, packed)
        return packed


def _version(t: torch.Tensor) -> int:
    """``t``'s version counter (bumped by every in-place update); -1 for an inference tensor,
    which has none (and cannot be updated outside inference mode)."""
    try:
        return t._version
    except RuntimeError:
        return -1


def linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    members: Sequence[torch.Tensor] = (),
    packed: PackedWeights | None = None,
) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for ``x: (rows, in)``, ``weight: (out, in)`` -> ``(rows, out)``.

    In float32 on the CPU, without autograd, the product takes the fastest form measured for its
    shape (docs/BENCHMARKS.md, sessions 16 and 18; bench/linear_forms.py):
    - from PACKED_LINEAR_MIN_ROWS rows on, and at any row count for a layer of at least
      PACKED_LINEAR_MIN_OUT outputs (the LM head), oneDNN's linear on a copy of the weight
      reordered once into oneDNN's layout, kept in ``packed`` (when given and enabled): on the
      AVX2 EPYC we measured, faster than ``F.linear`` (MKL) by 1.05-1.2x on the narrower layers
      at 64-600 rows, 1.15-2.3x on the gate/up product at 16-600 rows and 1.2-5x on the LM head
      at any row count;
    - at 2..15 rows, the transposed product ``weight @ x^T`` transposed back: the same MKL GEMM
      with the operands in the other order, 1.7-4x faster than ``F.linear`` at 4 rows there;
    - otherwise (one row, other dtypes, GPUs, autograd) ``F.linear`` itself.
    Both fast forms give ``F.linear``'s result up to float rounding (the sums run in another
    order). ``members``: see :meth:`PackedWeights.get`.
    """
    rows = x.shape[0]
    if not (rows > 0 and x.dim() == 2 and x.dtype == torch.float32 and x.device.type == "cpu") or (
        torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    ):
        return F.linear(x, weight, bias)
    if packed is not None and (rows >= PACKED_LINEAR_MIN_ROWS or weight.shape[0] >= PACKED_LINEAR_MIN_OUT):
        reordered = packed.get(weight, members)
        if reordered is not None:
            return _ONEDNN_LINEAR(x, reordered, bias, "none", [], "")
    if rows == 1 or rows > TRANSPOSED_LINEAR_ROWS:
        return F.linear(x, weight, bias)
    if bias is None:
        return torch.mm(weight, x.t()).t().contiguous()
    return torch.addmm(bias[:, None], weight, x.t()).t().contiguous()


# One active LoRA adapter of a layer: (A weight (r, in), B weight (out, r), B bias (out,) or None, scale).
Adapter = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, float]


def lora_adapters(module: Any, dtype: torch.dtype) -> list[Adapter] | None:
    """The active adapters of a peft LoRA-wrapped ``nn.Linear``, when its forward on an input of
    ``dtype`` is exactly ``base(x) + sum_a B_a(A_a(x)) * scale_a``: plain LoRA (no DoRA or other
    variant), dropout off (eval mode or p = 0), no dtype cast. ``[]`` when the adapters are off
    or merged into the base weights. ``None`` when the module is not such a layer or its forward
    does more than that now (a layer in training mode with LoRA dropout, say): run ``module(x)``.
    """
    base = getattr(module, "base_layer", None)
    if type(base) is not torch.nn.Linear or not hasattr(module, "lora_A") or base.weight.dtype != dtype:
        return None
    if module.disable_adapters:
        return None if module.merged else []  # (merged and disabled: peft unmerges on the call)
    if module.merged:
        return []
    adapters: list[Adapter] = []
    for name in module.active_adapters:
        if name not in module.lora_A:
            continue
        if name in getattr(module, "lora_variant", {}) or getattr(module, "use_dora", {}).get(name, False):
            return None
        a, b, dropout = module.lora_A[name], module.lora_B[name], module.lora_dropout[name]
        dropout_off = type(dropout) is torch.nn.Identity or (
            type(dropout) is torch.nn.Dropout and (not dropout.training or dropout.p == 0)
        )
        if type(a) is not torch.nn.Linear or type(b) is not torch.nn.Linear or a.bias is not None or not dropout_off:
            return None
        if a.weight.dtype != dtype:
            return None
        adapters.append((a.weight, b.weight, b.bias, module.scaling[name]))
    return adapters


def add_adapters(out: torch.Tensor, x: torch.Tensor, adapters: Sequence[Adapter]) -> torch.Tensor:
    """``out + sum B(A(x)) * scale`` in peft's own order of operations (``x: (rows, in)``,
    ``out: (rows, out)``)."""
    for a, b, b_bias, scale in adapters:
        out = out + F.linear(F.linear(x, a), b, b_bias) * scale
    return out


def base_linear(module: Any) -> torch.nn.Linear | None:
    """The plain ``nn.Linear`` holding a layer's (base) weights: the layer itself, or the base
    layer of a peft LoRA wrapper; ``None`` for anything else."""
    if type(module) is torch.nn.Linear:
        return module
    base = getattr(module, "base_layer", None)
    return base if type(base) is torch.nn.Linear and hasattr(module, "lora_A") else None


def apply_linear(module: Any, x: torch.Tensor, packed: PackedWeights | None = None) -> torch.Tensor:
    """``module(x)`` through :func:`linear` (``packed``: its oneDNN copies) for a plain
    ``nn.Linear`` and for the base product of a peft LoRA layer (its adapters added as peft does,
    see :func:`lora_adapters`); any other layer runs its own forward."""
    if type(module) is torch.nn.Linear:
        return linear(x, module.weight, module.bias, packed=packed)
    adapters = lora_adapters(module, x.dtype)
    if adapters is None:
        return module(x)
    base = module.base_layer
    return add_adapters(linear(x, base.weight, base.bias, packed=packed), x, adapters)
