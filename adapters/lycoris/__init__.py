"""LoHa and LoKr (the LyCORIS family in peft): thin wrappers, peft does the work.

Both start as the identity (peft zero-initialises one factor) and adapt the same encoder Linear
layers as LoRA by default. peft 0.21 has no per-row ``adapter_names`` for them: deployment runs
their sites as sub-batches.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch.nn as nn

from tpp.adapters import Method, register
from tpp.errors import ConfigError


@dataclass
class LycorisOptions:
    r: int = field(default=8, metadata={"help": "rank of the low-rank factors"})
    alpha: float = field(default=16.0, metadata={"help": "scaling numerator (scale = alpha / r)"})
    rank_dropout: float = field(default=0.0, metadata={"help": "dropout on the rank dimension while training"})
    module_dropout: float = field(default=0.0, metadata={"help": "probability of skipping the adapter per step"})
    target_modules: Optional[list] = field(
        default=None, metadata={"help": "leaf names of encoder Linear layers; default per backbone family"})

    def __post_init__(self):
        if self.r < 1:
            raise ConfigError(f"adapter.r must be at least 1, got {self.r}.")
        if not math.isfinite(self.alpha) or self.alpha <= 0:
            raise ConfigError(f"adapter.alpha must be a positive number (updates are scaled by alpha / r: at 0 the "
                              f"adapter would never train), got {self.alpha}.")
        for key in ("rank_dropout", "module_dropout"):
            if not 0 <= getattr(self, key) < 1:
                raise ConfigError(f"adapter.{key} must be in [0, 1), got {getattr(self, key)}.")


@dataclass
class LokrOptions(LycorisOptions):
    decompose_both: bool = field(default=False, metadata={"help": "also decompose the left Kronecker factor"})


def _attach(config_name: str, extra_keys: tuple = ()):
    """An attach function for peft's ``config_name`` (``LoHaConfig`` / ``LoKrConfig``; peft loads on first use)."""
    def attach(encoder: nn.Module, options: LycorisOptions, target_names: list[str]) -> nn.Module:
        """Wrap ``encoder`` on exactly ``target_names``; starts as the backbone."""
        import peft

        config = getattr(peft, config_name)(r=options.r, alpha=options.alpha, rank_dropout=options.rank_dropout,
                            module_dropout=options.module_dropout, target_modules=list(target_names),
                            **{k: getattr(options, k) for k in extra_keys})
        return peft.get_peft_model(encoder, config)
    return attach


LOHA = register(Method(
    name="loha", options_cls=LycorisOptions, attach=_attach("LoHaConfig"), identity_at_init=True, pretrainable=True,
    summary="low-rank Hadamard-product updates of attention projections (peft LoHa)",
    inherited=("r", "alpha", "target_modules"), tensor_keys=r"\.hada_(w[12]_[ab]|t[12])",
    prefix="hada_", touches=("linear",)))

LOKR = register(Method(
    name="lokr", options_cls=LokrOptions, attach=_attach("LoKrConfig", ("decompose_both",)), identity_at_init=True,
    pretrainable=True, summary="low-rank Kronecker-product updates of attention projections (peft LoKr)",
    inherited=("r", "alpha", "target_modules", "decompose_both"),
    tensor_keys=r"\.lokr_(w[12](_[ab])?|t2)", prefix="lokr_", touches=("linear",)))
