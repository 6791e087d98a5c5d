"""Baselines with the same recipe interface as the adapter methods.

- ``linear_probe``: the backbone stays frozen and only the task head trains (no target parameters,
  so target parameter pre-training does not apply).
- ``full``: every encoder weight trains. The result is a whole model (``kind: full_model``), kept for
  comparison only: it is refused wherever an adapter is expected (``adapter.init_from``, the adapter
  store, deployment).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from tpp.adapters import Method, register


@dataclass
class NoOptions:
    """These baselines take no options."""


def _freeze_all(encoder: nn.Module, options: NoOptions, target_names: list[str]) -> nn.Module:
    return encoder.requires_grad_(False)


def _no_tensors(encoder: nn.Module) -> dict[str, torch.Tensor]:
    return {}


def _unfreeze_all(encoder: nn.Module, options: NoOptions, target_names: list[str]) -> nn.Module:
    return encoder.requires_grad_(True)


def _all_tensors(encoder: nn.Module) -> dict[str, torch.Tensor]:
    return dict(encoder.state_dict())


LINEAR_PROBE = register(Method(
    name="linear_probe", options_cls=NoOptions, attach=_freeze_all, identity_at_init=True, pretrainable=False,
    summary="baseline: frozen backbone, only the task head trains", state=_no_tensors, touches=()))

FULL = register(Method(
    name="full", options_cls=NoOptions, attach=_unfreeze_all, identity_at_init=True, pretrainable=False,
    summary="baseline: full fine-tuning of every encoder weight (saved as kind full_model, not an adapter)",
    state=_all_tensors, kind="full_model", tensor_keys=None, touches=("all",)))
