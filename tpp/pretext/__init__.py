"""Pretext tasks for target parameter pre-training: one file + one registration each.

A pretext builds ``module`` (an ``nn.Module`` whose ``forward(pixel_values) -> loss`` runs the
adapted encoder) and says what it records in the card.
"""
from __future__ import annotations

import functools
from typing import Callable

from tpp.errors import ConfigError
from tpp.registry import import_submodules

_PRETEXTS: dict[str, Callable] = {}


def register(name: str):
    def wrap(builder):
        _PRETEXTS[name] = builder
        return builder
    return wrap


def build_pretext(name: str, encoder, decoder, pretext_cfg):
    """``builder(encoder, decoder, cfg) -> nn.Module`` with ``forward(pixel_values) -> scalar loss``."""
    _load_builtin()
    if name not in _PRETEXTS:
        raise ConfigError(f"unknown pretext.name '{name}'. Known: {', '.join(sorted(_PRETEXTS))}.")
    return _PRETEXTS[name](encoder, decoder, pretext_cfg)


@functools.cache  # once per process, not a directory listing per lookup
def _load_builtin() -> None:
    """Import every module of this package: each pretext registers itself, so adding one is one file."""
    import_submodules(__name__, __path__)
