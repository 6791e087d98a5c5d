"""Bottleneck adapters on each transformer layer's MLP (tpp's own; peft has none, see peft issue #244).

- ``parallel`` (AdaptFormer): ``mlp'(x) = mlp(x) + s * up(relu(down(x)))`` on the MLP's input x.
- ``sequential`` (Houlsby-style, on the MLP only): ``mlp'(x) = h + s * up(relu(down(h)))``, h = mlp(x).

``up`` starts at zero, so the adapted encoder starts as the backbone. Shapes: x (B, T, D) -> (B, T, D),
``down`` D -> ``dim``, ``up`` ``dim`` -> D.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from tpp.adapters import Method, register
from tpp.adapters.wrapping import method_tensors, wrap_modules
from tpp.backbones import resolve_modules
from tpp.errors import ConfigError


@dataclass
class BottleneckOptions:
    dim: int = field(default=16, metadata={"help": "bottleneck width"})
    style: str = field(default="parallel", metadata={"help": "parallel (AdaptFormer) or sequential (Houlsby-style)"})
    scale: float = field(default=0.1, metadata={"help": "fixed scale s of the adapter branch"})

    def __post_init__(self):
        if self.dim < 1:
            raise ConfigError(f"adapter.dim must be at least 1, got {self.dim}.")
        if self.style not in ("parallel", "sequential"):
            raise ConfigError(f"adapter.style must be parallel or sequential, got {self.style!r}.")


class BottleneckAdapter(nn.Module):
    """Wraps an MLP module: (B, T, D) -> (B, T, D)."""

    def __init__(self, base_layer: nn.Module, hidden: int, options: BottleneckOptions):
        super().__init__()
        self.base_layer = base_layer
        self.parallel = options.style == "parallel"
        self.scale = options.scale
        self.tpp_down = nn.Linear(hidden, options.dim)
        self.tpp_up = nn.Linear(options.dim, hidden)
        nn.init.zeros_(self.tpp_up.weight)
        nn.init.zeros_(self.tpp_up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.base_layer(x)
        return h + self.scale * self.tpp_up(F.relu(self.tpp_down(x if self.parallel else h)))


def resolve(encoder, options: BottleneckOptions) -> list[str]:
    """Every layer's MLP module (``...mlp``)."""
    return resolve_modules(encoder, lambda name, m: name.endswith(".mlp"), "bottleneck adapters (MLP modules)")


def attach(model: nn.Module, options: BottleneckOptions, target_names: list[str]) -> nn.Module:
    hidden = model.config.hidden_size
    return wrap_modules(model, target_names, lambda mlp, _: BottleneckAdapter(mlp, hidden, options))


METHOD = register(Method(
    name="bottleneck", options_cls=BottleneckOptions, attach=attach, identity_at_init=True, pretrainable=True,
    summary="bottleneck adapter on each MLP, parallel (AdaptFormer) or sequential (Houlsby-style)",
    inherited=("dim", "style", "scale"), state=method_tensors, resolve=resolve))
