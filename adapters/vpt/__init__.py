"""Visual prompt tuning (VPT; tpp's own, peft has none, see peft issue #1563).

``length`` learned prompt tokens enter the sequence after the prefix tokens (CLS, registers):
*shallow* inserts one set before the first layer; *deep* also replaces them with a fresh set before
every later layer; ``layers`` names the layers that get a set (the first of them inserts, later ones
replace, layers in between carry the previous set). The last layer drops them again, so the encoder's
output keeps its shape
(B, P + N, D): heads, pretexts and decoders see exactly the patch tokens. Prompts take part in
attention, so VPT does not start as the identity.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from tpp.adapters import Method, register
from tpp.adapters.wrapping import method_tensors, wrap_modules
from tpp.errors import ConfigError, TppError


@dataclass
class VptOptions:
    length: int = field(default=8, metadata={"help": "prompt tokens per layer"})
    deep: bool = field(default=False,
                       metadata={"help": "fresh prompts before every layer (deep VPT), not only the first"})
    layers: list = field(default_factory=list,
                         metadata={"help": "indices of the encoder layers that get fresh prompts, e.g. [0, 1, 2] "
                                           "(overrides deep); empty: the first layer, or every layer with deep"})

    def __post_init__(self):
        if self.length < 1:
            raise ConfigError(f"adapter.length must be at least 1, got {self.length}.")
        if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in self.layers) \
                or len(set(self.layers)) != len(self.layers):
            raise ConfigError(f"adapter.layers must list distinct layer indices 0, 1, ..., got {self.layers}.")

    def prompted(self, num_layers: int) -> list[int]:
        """The layer indices that get fresh prompts, in order."""
        if self.layers:
            return sorted(self.layers)
        return list(range(num_layers)) if self.deep else [0]


class PromptedLayer(nn.Module):
    """Wraps transformer layer ``index``: (B, T, D) -> (B, T', D) with prompts inserted / replaced / dropped.
    Layers before the first prompted one see no prompts; layers after the last (but the last) carry them."""

    def __init__(self, base_layer: nn.Module, index: int, last: int, prefix: int, hidden: int, options: VptOptions):
        super().__init__()
        self.base_layer = base_layer
        prompted = options.prompted(last + 1)
        self.insert, self.prefix, self.length = index == prompted[0], prefix, options.length
        self.drop = index == last
        self.tpp_prompt = None
        if index in prompted:
            self.tpp_prompt = nn.Parameter(torch.empty(options.length, hidden).uniform_(-0.02, 0.02))

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        k, p = self.prefix, self.length
        if self.tpp_prompt is not None:
            prompts = self.tpp_prompt.to(hidden_states.dtype).expand(hidden_states.shape[0], -1, -1)
            rest = hidden_states[:, k:] if self.insert else hidden_states[:, k + p:]
            hidden_states = torch.cat([hidden_states[:, :k], prompts, rest], dim=1)
        out = self.base_layer(hidden_states, *args, **kwargs)
        if not self.drop:
            return out
        if isinstance(out, tuple):
            return (torch.cat([out[0][:, :k], out[0][:, k + p:]], dim=1),) + out[1:]
        return torch.cat([out[:, :k], out[:, k + p:]], dim=1)


def resolve(encoder, options: VptOptions) -> list[str]:
    """The transformer layer modules themselves (``layers.3``, ``encoder.layer.3``), in order."""
    layer_re = re.compile(encoder.family.layer_pattern)
    names = [n for n, _ in encoder.model.named_modules()
             if (m := layer_re.match(n + ".")) and m.end() == len(n) + 1]
    if len(names) != encoder.model.config.num_hidden_layers:
        raise TppError(f"VPT found {len(names)} transformer layers in the {encoder.family.model_type} encoder, "
                       f"expected {encoder.model.config.num_hidden_layers}.")
    outside = [i for i in options.layers if i >= len(names)]
    if outside:
        raise TppError(f"adapter.layers {outside}: the {encoder.family.model_type} encoder has layers "
                       f"0..{len(names) - 1}.")
    return names


def attach(model: nn.Module, options: VptOptions, target_names: list[str]) -> nn.Module:
    prefix = 1 + int(getattr(model.config, "num_register_tokens", 0) or 0)
    index = {name: i for i, name in enumerate(target_names)}
    last = len(target_names) - 1
    hidden = model.config.hidden_size
    return wrap_modules(model, target_names,
                        lambda layer, name: PromptedLayer(layer, index[name], last, prefix, hidden, options))


METHOD = register(Method(
    name="vpt", options_cls=VptOptions, attach=attach, identity_at_init=False, pretrainable=True,
    summary="visual prompt tuning: learned prompt tokens, shallow (input), deep (every layer) or chosen layers",
    inherited=("length", "deep", "layers"), state=method_tensors, resolve=resolve,
    tensor_keys=r"\.tpp_prompt", prefix="tpp_", touches=("tokens",)))
