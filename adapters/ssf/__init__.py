"""SSF: scale and shift the features after chosen Linear layers (tpp's own).

``y = base(x) * tpp_scale + tpp_shift`` with scale ones and shift zeros at init (the identity);
shapes: (..., D_out) per-channel vectors.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from tpp.adapters import Method, register
from tpp.adapters.wrapping import method_tensors, wrap_modules
from tpp.backbones import resolve_targets


@dataclass
class SsfOptions:
    target_modules: list = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2"],
                                 metadata={"help": "leaf names of encoder Linear layers whose outputs are "
                                                   "scaled and shifted"})


class ScaleShift(nn.Module):
    """Wraps a Linear layer: (..., D_in) -> (..., D_out) scaled and shifted per output channel."""

    def __init__(self, base_layer: nn.Linear):
        super().__init__()
        self.base_layer = base_layer
        self.tpp_scale = nn.Parameter(torch.ones(base_layer.out_features))
        self.tpp_shift = nn.Parameter(torch.zeros(base_layer.out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x) * self.tpp_scale + self.tpp_shift


def resolve(encoder, options: SsfOptions) -> list[str]:
    return resolve_targets(encoder, options.target_modules)


def attach(model: nn.Module, options: SsfOptions, target_names: list[str]) -> nn.Module:
    return wrap_modules(model, target_names, lambda linear, _: ScaleShift(linear))


METHOD = register(Method(
    name="ssf", options_cls=SsfOptions, attach=attach, identity_at_init=True, pretrainable=True,
    summary="scale and shift of the outputs of attention and MLP Linear layers (SSF)",
    inherited=("target_modules",), state=method_tensors, resolve=resolve))
