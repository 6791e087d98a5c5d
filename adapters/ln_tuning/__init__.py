"""LayerNorm tuning through peft's ``LNTuningConfig``: peft trains copies of the chosen LayerNorms,
so the shared backbone's own LayerNorm weights are never written."""
from __future__ import annotations

import warnings

from dataclasses import dataclass, field
from typing import Optional

import torch.nn as nn

from tpp.adapters import Method, register
from tpp.backbones import resolve_modules


@dataclass
class LnTuningOptions:
    target_modules: Optional[list] = field(
        default=None, metadata={"help": "leaf names of LayerNorms to tune; default: every LayerNorm in the layers"})


def resolve(encoder, options: LnTuningOptions) -> list[str]:
    leaves = options.target_modules

    def wanted(name, module):
        return isinstance(module, nn.LayerNorm) and (leaves is None or name.rsplit(".", 1)[-1] in leaves)
    return resolve_modules(encoder, wanted, f"LayerNorm targets {leaves or 'every LayerNorm'}", leaves=leaves)


def attach(model: nn.Module, options: LnTuningOptions, target_names: list[str]) -> nn.Module:
    from peft import LNTuningConfig, get_peft_model

    with warnings.catch_warnings():  # peft looks for in/out features on every target: LayerNorms have none
        warnings.filterwarnings("ignore", message="Unsupported layer type")
        return get_peft_model(model, LNTuningConfig(target_modules=list(target_names)))


METHOD = register(Method(
    name="ln_tuning", options_cls=LnTuningOptions, attach=attach, identity_at_init=True, pretrainable=True,
    summary="LayerNorm weights and biases of every layer (peft LN tuning: copies, the backbone is untouched)",
    inherited=("target_modules",), resolve=resolve, tensor_keys=r"\.ln_tuning_layers\.(weight|bias)",
    prefix="ln_tuning_layers.", touches=("norm",)))
