"""LoHa (low-rank Hadamard product, peft) — a thin wrapper: peft does the work."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch.nn as nn
from peft import LoHaConfig, get_peft_model

from tpp.adapters import Method, register
from tpp.errors import ConfigError


@dataclass
class LohaOptions:
    r: int = field(default=8, metadata={"help": "rank of each Hadamard factor"})
    alpha: float = field(default=16.0, metadata={"help": "scaling numerator (scale = alpha / r)"})
    rank_dropout: float = field(default=0.0, metadata={"help": "dropout on the rank dimension while training"})
    module_dropout: float = field(default=0.0, metadata={"help": "probability of skipping the adapter per step"})
    target_modules: Optional[list] = field(
        default=None, metadata={"help": "leaf names of encoder Linear layers; default per backbone family"})

    def __post_init__(self):
        if self.r < 1:
            raise ConfigError(f"adapter.r must be at least 1, got {self.r}.")
        for key in ("rank_dropout", "module_dropout"):
            if not 0 <= getattr(self, key) < 1:
                raise ConfigError(f"adapter.{key} must be in [0, 1), got {getattr(self, key)}.")


def attach(encoder: nn.Module, options: LohaOptions, target_names: list[str]) -> nn.Module:
    """Wrap ``encoder`` with LoHa on exactly ``target_names``; peft zero-initialises one factor, so the
    adapted encoder starts as the backbone."""
    config = LoHaConfig(r=options.r, alpha=options.alpha, rank_dropout=options.rank_dropout,
                        module_dropout=options.module_dropout, target_modules=list(target_names))
    return get_peft_model(encoder, config)


METHOD = register(Method(
    name="loha", options_cls=LohaOptions, attach=attach, identity_at_init=True, pretrainable=True,
    summary="low-rank Hadamard-product updates of attention projections (peft LoHa)",
    inherited=("r", "alpha", "target_modules"),
))
