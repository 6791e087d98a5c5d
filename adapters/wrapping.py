"""Helpers for tpp's own (non-peft) methods: wrap encoder submodules without touching their weights.

A wrapper keeps the original module as ``base_layer`` (so backbone tensor names read the same once
``.base_layer`` is dropped, as peft's do) and names its own parameters ``tpp_*``, which is how
:func:`tpp.backbones.is_adapter_key` tells them from the backbone's. The backbone's tensors are never
written: they stay frozen and are shared with every other site.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from tpp.backbones import is_adapter_key


def wrap_modules(model: nn.Module, names: list[str], make: Callable[[nn.Module, str], nn.Module]) -> nn.Module:
    """Replace each named submodule ``m`` of ``model`` by ``make(m, name)``; freeze everything else."""
    model.requires_grad_(False)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, make(getattr(parent, child), name))
    return model


def method_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The ``tpp_*`` parameters of a wrapped model (what its adapter directory saves)."""
    return {n: p for n, p in model.named_parameters() if is_adapter_key(n)}
