"""SSF: scale and shift the features after chosen Linear and LayerNorm layers (tpp's own).

``y = base(x) * tpp_scale + tpp_shift`` with scale ones and shift zeros at init (the identity);
shapes: (..., D_out) per-channel vectors. The SSF paper places them after attention, MLP and LayerNorm;
the default here is the Linear layers of attention and MLP, ``norms`` in ``target_modules`` adds every
LayerNorm of the encoder layers (``layernorm_before/after`` in ViT, ``norm1/2`` in DINOv2).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from tpp.adapters import Method, register
from tpp.adapters.wrapping import method_tensors, wrap_modules
from tpp.backbones import resolve_modules

NORMS = "norms"  # every LayerNorm inside the encoder layers, whatever the family calls them


@dataclass
class SsfOptions:
    target_modules: list = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2"],
                                 metadata={"help": "leaf names of encoder Linear or LayerNorm layers whose "
                                                   "outputs are scaled and shifted; 'norms' = every LayerNorm"})


class ScaleShift(nn.Module):
    """Wraps a Linear or LayerNorm layer: (..., D_in) -> (..., D_out) scaled and shifted per output channel."""

    def __init__(self, base_layer: nn.Linear | nn.LayerNorm):
        super().__init__()
        self.base_layer = base_layer
        features = base_layer.out_features if isinstance(base_layer, nn.Linear) else base_layer.normalized_shape[-1]
        self.tpp_scale = nn.Parameter(torch.ones(features))
        self.tpp_shift = nn.Parameter(torch.zeros(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x) * self.tpp_scale + self.tpp_shift


def resolve(encoder, options: SsfOptions) -> list[str]:
    """Full names of the Linear / LayerNorm modules to wrap; an error when a name matches nothing."""
    leaves = tuple(options.target_modules)

    def wanted(name: str, module: nn.Module) -> bool:
        leaf = name.rsplit(".", 1)[-1]
        if isinstance(module, nn.LayerNorm):
            return NORMS in leaves or leaf in leaves
        return isinstance(module, nn.Linear) and leaf in leaves

    return resolve_modules(encoder, wanted, f"adapter.target_modules {list(leaves)}",
                           f"Use leaf names of Linear or LayerNorm layers such as q_proj, fc1, or '{NORMS}'.",
                           leaves=[leaf for leaf in leaves if leaf != NORMS])


def attach(model: nn.Module, options: SsfOptions, target_names: list[str]) -> nn.Module:
    return wrap_modules(model, target_names, lambda linear, _: ScaleShift(linear))


METHOD = register(Method(
    name="ssf", options_cls=SsfOptions, attach=attach, identity_at_init=True, pretrainable=True,
    summary="scale and shift of the outputs of attention and MLP Linear layers and/or LayerNorms (SSF)",
    inherited=("target_modules",), state=method_tensors, resolve=resolve,
    tensor_keys=r"\.tpp_(scale|shift)", prefix="tpp_", touches=("linear", "norm")))
