"""Pretext tasks for target parameter pre-training: one file + one registration each.

A pretext file defines an options dataclass (help text per field, checks in ``__post_init__``; set
flat as ``pretext.<option>``) and a builder registered with :func:`register`. The builder makes an
``nn.Module`` whose ``forward(pixel_values (B, C, H, W)) -> scalar loss`` runs the adapted encoder and
whose ``card_entry()`` says what the adapter card records.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

from tpp.errors import ConfigError
from tpp.registry import import_submodules


@dataclass(frozen=True)
class Pretext:
    """A registered pretext: ``build(encoder, decoder, options) -> module``; ``options_cls`` its options;
    ``uses_checkpoint_decoder(options)`` whether the recipe loads the checkpoint's ViT-MAE decoder for it."""
    name: str
    options_cls: type
    build: Callable
    uses_checkpoint_decoder: Callable = lambda options: False

    @property
    def summary(self) -> str:
        """First line of the pretext file's docstring (``tpp ls``)."""
        import sys

        doc = sys.modules[self.build.__module__].__doc__ or ""
        return doc.strip().splitlines()[0] if doc.strip() else ""


_PRETEXTS: dict[str, Pretext] = {}


def register(name: str, options_cls: type, uses_checkpoint_decoder: Callable | None = None):
    """Decorator for a pretext builder; the name must be new."""
    def wrap(builder):
        if name in _PRETEXTS:
            raise ValueError(f"pretext '{name}' is registered twice")
        extra = {"uses_checkpoint_decoder": uses_checkpoint_decoder} if uses_checkpoint_decoder else {}
        _PRETEXTS[name] = Pretext(name, options_cls, builder, **extra)
        return builder
    return wrap


def get_pretext(name: str) -> Pretext:
    _load_builtin()
    if name not in _PRETEXTS:
        raise ConfigError(f"unknown pretext.name '{name}'. Known: {', '.join(sorted(_PRETEXTS))}.")
    return _PRETEXTS[name]


def all_pretexts() -> list[Pretext]:
    _load_builtin()
    return [_PRETEXTS[k] for k in sorted(_PRETEXTS)]


def build_pretext(name: str, encoder, checkpoint_decoder, /, **options):
    """The pretext module with ``options`` (keyword values for its ``options_cls``; defaults otherwise);
    ``checkpoint_decoder`` is the checkpoint's ViT-MAE decoder or None."""
    pretext = get_pretext(name)
    return pretext.build(encoder, checkpoint_decoder, pretext.options_cls(**options))


@functools.cache  # once per process, not a directory listing per lookup
def _load_builtin() -> None:
    """Import every module of this package: each pretext registers itself, so adding one is one file."""
    import_submodules(__name__, __path__)
