"""IA3 (learned rescaling vectors, peft): a thin wrapper.

IA3 scales the outputs of the attention key / value projections and the input of the second MLP
layer by learned vectors initialised to ones, so the adapted encoder starts as the backbone.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn as nn

from tpp.adapters import Method, register
from tpp.errors import ConfigError


@dataclass
class Ia3Options:
    target_modules: list = field(default_factory=lambda: ["k_proj", "v_proj", "fc2"],
                                 metadata={"help": "leaf names of encoder Linear layers to rescale"})
    feedforward_modules: list = field(default_factory=lambda: ["fc2"],
                                      metadata={"help": "targets whose input (not output) is rescaled"})

    def __post_init__(self):
        stray = sorted(set(self.feedforward_modules) - set(self.target_modules))
        if stray:
            raise ConfigError(f"adapter.feedforward_modules {stray} must also be in adapter.target_modules.")


def attach(encoder: nn.Module, options: Ia3Options, target_names: list[str]) -> nn.Module:
    """Wrap ``encoder`` with IA3 on exactly ``target_names`` (full names); feed-forward ones by leaf name."""
    from peft import IA3Config, get_peft_model

    feedforward = [n for n in target_names if n.rsplit(".", 1)[-1] in options.feedforward_modules]
    return get_peft_model(encoder, IA3Config(target_modules=list(target_names), feedforward_modules=feedforward))


METHOD = register(Method(
    name="ia3", options_cls=Ia3Options, attach=attach, identity_at_init=True, pretrainable=True,
    summary="learned rescaling of key / value outputs and MLP inputs (peft IA3)",
    inherited=("target_modules", "feedforward_modules"), tensor_keys=r"\.ia3_l",
    prefix="ia3_", touches=("linear",)))
