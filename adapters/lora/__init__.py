"""LoRA (with DoRA and rsLoRA options) through peft."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

import torch.nn as nn

from tpp.adapters import Method, register
from tpp.errors import ConfigError

if TYPE_CHECKING:  # peft (and transformers under it) load when a model is built, not for `tpp ls`
    from peft import LoraConfig


@dataclass
class LoraOptions:
    r: int = field(default=8, metadata={"help": "LoRA rank"})
    alpha: float = field(default=16.0, metadata={"help": "LoRA scaling numerator (scale = alpha / r)"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the LoRA input"})
    target_modules: Optional[list] = field(
        default=None, metadata={"help": "leaf names of encoder Linear layers; default per backbone family"})
    use_dora: bool = field(default=False, metadata={"help": "weight-decomposed LoRA (DoRA)"})
    use_rslora: bool = field(default=False, metadata={"help": "rank-stabilised scaling alpha / sqrt(r)"})
    bias: str = field(default="none", metadata={"help": "only 'none': biases belong to the shared backbone"})

    def __post_init__(self):
        if self.r < 1:
            raise ConfigError(f"adapter.r must be at least 1, got {self.r}.")
        if not math.isfinite(self.alpha) or self.alpha <= 0:
            raise ConfigError(f"adapter.alpha must be a positive number (updates are scaled by alpha / r: at 0 the "
                              f"adapter would never train), got {self.alpha}.")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"adapter.dropout must be in [0, 1), got {self.dropout}.")
        if self.bias != "none":
            raise ConfigError(f"adapter.bias={self.bias!r} is not supported: peft would train the backbone's own "
                              "biases, which every site and concurrent request shares. Use adapter.bias=none, and "
                              "method bitfit for per-site bias terms.")


def lora_config(options: LoraOptions, target_names: list[str]) -> LoraConfig:
    """peft's config for LoRA on exactly ``target_names`` (full module paths inside the encoder).

    Bias stays ``"none"``: training a bias would write into the shared backbone.
    """
    from peft import LoraConfig

    return LoraConfig(
        r=options.r, lora_alpha=options.alpha, lora_dropout=options.dropout,
        target_modules=list(target_names), bias="none",
        use_dora=options.use_dora, use_rslora=options.use_rslora,
    )


def mixed_batch_config(options: LoraOptions, target_names: list[str]) -> LoraConfig | None:
    """Plain LoRA sites share one forward with per-row ``adapter_names``; peft has no mixed batches for DoRA."""
    return None if options.use_dora else lora_config(options, target_names)


def attach(encoder: nn.Module, options: LoraOptions, target_names: list[str]) -> nn.Module:
    """Wrap ``encoder`` with LoRA on exactly ``target_names``."""
    from peft import get_peft_model

    return get_peft_model(encoder, lora_config(options, target_names))


METHOD = register(Method(
    name="lora", options_cls=LoraOptions, attach=attach, identity_at_init=True, pretrainable=True,
    summary="low-rank updates of attention projections (peft LoRA; DoRA / rsLoRA options)",
    inherited=("r", "alpha", "target_modules", "use_dora", "use_rslora"),
    tensor_keys=r"\.lora_[AB]\.weight|\.lora_magnitude_vector", prefix="lora_", mixed_batch=mixed_batch_config,
    touches=("linear",),
))
