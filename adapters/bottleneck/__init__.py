"""Bottleneck adapters on sub-modules of each transformer layer (tpp's own; peft has none, see peft issue #244).

- ``parallel`` (AdaptFormer): ``mlp'(x) = mlp(x) + s * up(relu(down(x)))`` on the module's input x (the
  layer-normed tokens, as in the paper's equation; AdaptFormer's code feeds the residual stream instead).
- ``sequential`` (Houlsby): ``mlp'(x) = h + s * up(relu(down(h)))``, h = mlp(x). Houlsby et al. adapt both
  sub-layers: ``target_modules: [attention, mlp]``; the default adapts the MLP only.

``up`` starts at zero, so the adapted encoder starts as the backbone. Shapes: x (B, T, D) -> (B, T, D),
``down`` D -> ``dim``, ``up`` ``dim`` -> D. A wrapped module returning a tuple (attention) is adapted on
its first element.
"""
from __future__ import annotations

import re
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
    target_modules: list = field(default_factory=lambda: ["mlp"],
                                 metadata={"help": "sub-modules of every encoder layer to adapt: mlp, attention "
                                                   "or both (output width = encoder width)"})

    def __post_init__(self):
        if not self.target_modules or not all(isinstance(t, str) for t in self.target_modules):
            raise ConfigError(f"adapter.target_modules must be a non-empty list of module names (mlp, attention), "
                              f"got {self.target_modules!r}.")
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

    def forward(self, x: torch.Tensor, *args, **kwargs):
        out = self.base_layer(x, *args, **kwargs)
        h = out[0] if isinstance(out, tuple) else out
        h = h + self.scale * self.tpp_up(F.relu(self.tpp_down(x if self.parallel else h)))
        return (h, *out[1:]) if isinstance(out, tuple) else h


def resolve(encoder, options: BottleneckOptions) -> list[str]:
    """The named sub-modules (direct children) of every encoder layer, e.g. ``layers.3.mlp``."""
    layer = re.compile(encoder.family.layer_pattern + r"(\w+)$")

    def is_target(name, module):
        match = layer.match(name)
        return bool(match) and match.group(2) in options.target_modules

    return resolve_modules(encoder, is_target, f"adapter.target_modules {options.target_modules}",
                           "Bottleneck adapters wrap sub-modules of each layer, such as mlp or attention.",
                           leaves=options.target_modules)


def attach(model: nn.Module, options: BottleneckOptions, target_names: list[str]) -> nn.Module:
    hidden = model.config.hidden_size
    return wrap_modules(model, target_names, lambda mlp, _: BottleneckAdapter(mlp, hidden, options))


METHOD = register(Method(
    name="bottleneck", options_cls=BottleneckOptions, attach=attach, identity_at_init=True, pretrainable=True,
    summary="bottleneck adapter on each MLP (and/or attention), parallel (AdaptFormer) or sequential (Houlsby)",
    inherited=("dim", "style", "scale", "target_modules"), state=method_tensors, resolve=resolve,
    tensor_keys=r"\.tpp_(down|up)\.(weight|bias)", prefix="tpp_", touches=("sublayers",)))
