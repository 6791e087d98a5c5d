"""BitFit as a per-adapter overlay: the biases of the encoder's Linear layers, never the backbone's own.

Each targeted Linear is wrapped; the wrapper holds ``tpp_bias``, a copy of the backbone bias made at
attach time, and computes ``F.linear(x, base.weight, tpp_bias)``. The shared backbone bias is never
written, so other sites and concurrent requests are unaffected; the adapter directory holds only the
``tpp_bias`` tensors. LayerNorm parameters are tuned by the ``ln_tuning`` method instead.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from tpp.adapters import Method, register
from tpp.adapters.wrapping import method_tensors, wrap_modules
from tpp.backbones import resolve_modules


@dataclass
class BitfitOptions:
    target_modules: Optional[list] = field(
        default=None,
        metadata={"help": "leaf names of Linear layers whose bias trains; default: every one with a bias"})


class BiasOverlay(nn.Module):
    """Wraps a Linear layer with bias: (..., D_in) -> (..., D_out) with its own bias copy."""

    def __init__(self, base_layer: nn.Linear):
        super().__init__()
        self.base_layer = base_layer
        self.tpp_bias = nn.Parameter(base_layer.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.base_layer.weight, self.tpp_bias)


def resolve(encoder, options: BitfitOptions) -> list[str]:
    leaves = options.target_modules

    def wanted(name, module):
        return (isinstance(module, nn.Linear) and module.bias is not None
                and (leaves is None or name.rsplit(".", 1)[-1] in leaves))
    return resolve_modules(encoder, wanted, f"BitFit targets {leaves or 'Linear layers with a bias'}", leaves=leaves)


def attach(model: nn.Module, options: BitfitOptions, target_names: list[str]) -> nn.Module:
    return wrap_modules(model, target_names, lambda linear, _: BiasOverlay(linear))


METHOD = register(Method(
    name="bitfit", options_cls=BitfitOptions, attach=attach, identity_at_init=True, pretrainable=True,
    summary="bias terms only, as a per-adapter overlay (the backbone's biases are never written)",
    inherited=("target_modules",), state=method_tensors, resolve=resolve,
    tensor_keys=r"\.tpp_bias", prefix="tpp_", touches=("linear",)))
