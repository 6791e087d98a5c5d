"""Composed methods: ``adapter.method: [visual_prompt, lora]`` (or ``visual_prompt+lora``) is one method.

A composed method attaches every part to the same encoder and saves their tensors together in one adapter
directory (``adapter_model.safetensors``), so TPP hand-off, save / load, per-site swapping in the bank and
``tpp predict`` treat it like any single method. Each part's options are a sub-section named after it
(``adapter.lora.r: 8``, ``adapter.visual_prompt.pad: 4``).

Compatibility is declared in the registry: each method lists what it ``touches`` (``input`` pixels, prompt
``tokens``, ``linear`` layers, ``norm`` layers, ``sublayers`` (modules wrapped whole, e.g. a layer's mlp) ...;
``()`` for the linear probe, which adds nothing). Two parts are compatible when both declare it, touch
different things, and at most one is a peft method (peft wraps the whole model once). A peft part attaches
first; tpp's own parts then wrap modules inside peft's base model.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import field, make_dataclass

import torch
import torch.nn as nn

from tpp.config.parse import build_dataclass
from tpp.errors import ConfigError

SEPARATOR = "+"


def part_names(name) -> list[str]:
    """``[a, b]`` or ``"a+b"`` -> ``["a", "b"]`` (stripped; a single method gives one name)."""
    if isinstance(name, (list, tuple)):
        return [str(n).strip() for n in name]
    return [n.strip() for n in str(name).split(SEPARATOR)]


def canonical(name) -> str:
    """The registry name of a method or composition: ``"visual_prompt+lora"``."""
    return SEPARATOR.join(part_names(name))


def check_compatible(parts: list) -> None:
    """ConfigError naming both methods of the first incompatible pair (or a repeated method)."""
    names = [p.name for p in parts]
    if len(set(names)) != len(names):
        raise ConfigError(f"adapter.method {SEPARATOR.join(names)} names a method twice.")
    for i, a in enumerate(parts):
        for b in parts[i + 1:]:
            why = _conflict(a, b)
            if why:
                raise ConfigError(f"adapter methods '{a.name}' and '{b.name}' cannot be composed: {why}. "
                                  "Compose methods that adapt different parts of the model (e.g. visual_prompt or "
                                  "vpt with lora).")


def _conflict(a, b) -> str | None:
    for m in (a, b):
        if m.kind != "adapter":
            return f"'{m.name}' is a baseline that trains every weight ({m.kind}), never a part of an adapter"
        if m.touches is None:
            return f"'{m.name}' does not declare what it adapts (touches) in the registry"
        if not m.touches:
            return f"'{m.name}' adds no target parameters (the task head trains with every method): use the other alone"
    if a.uses_peft and b.uses_peft:
        return "both are peft methods (peft wraps the model once)"
    shared = sorted(set(a.touches) & set(b.touches))
    if shared:
        return f"both adapt the same {', '.join(shared)}"
    return None


def options_class(parts: list) -> type:
    """A dataclass with one field per part: the part's options as a plain dict, defaults filled in and checked
    by the part's own options class (so cards hold JSON and ``asdict`` gives nested sections)."""

    def post_init(self):
        for part in parts:
            given = getattr(self, part.name)
            if dataclasses.is_dataclass(given):
                given = dataclasses.asdict(given)
            if not isinstance(given, dict):
                raise ConfigError(f"adapter.{part.name} must be a section of {part.name}'s options "
                                  f"(e.g. adapter.{part.name}.<option>), got {given!r:.60}.")
            # every key and type checked as the config checks a section (unknown keys, close names suggested)
            setattr(self, part.name, dataclasses.asdict(build_dataclass(part.options_cls, given,
                                                                        f"adapter.{part.name}")))

    def typed(self, name: str):
        part = next(p for p in parts if p.name == name)
        return part.options_cls(**getattr(self, name))

    fields = [(p.name, dict, field(default_factory=dict, metadata={"help": f"options of {p.name}"}))
              for p in parts]
    return make_dataclass("ComposedOptions_" + "_".join(p.name for p in parts), fields,
                          namespace={"__post_init__": post_init, "typed": typed})


def attach_order(parts: list) -> list:
    """A peft part first (it wraps the whole model), tpp's own parts after it."""
    return sorted(parts, key=lambda p: not p.uses_peft)


def attach_parts(encoder, method, options, targets: list | None, attach_adapter) -> list[list[str]]:
    """Attach every part of the composed ``method`` to ``encoder`` in place with ``attach_adapter``
    (``tpp.model``'s, passed in: no import cycle); returns each part's targets (in the order of
    ``method.parts``, what the card records). Own parts after a peft part wrap modules of peft's base model
    (their names stay relative to it, as when attached alone)."""

    given = dict(zip((p.name for p in method.parts), targets)) if targets else {}
    done: dict[str, list[str]] = {}
    trainable: set[int] = set()  # by tensor identity: a later part's wrapper renames an earlier part's tensors
    for part in attach_order(method.parts):
        view = encoder
        if not part.uses_peft and hasattr(encoder.model, "get_base_model"):
            view = type(encoder)(encoder.model.get_base_model(), encoder.family)  # an Encoder on peft's base
        _, _, done[part.name] = attach_adapter(view, part.name, options.typed(part.name), given.get(part.name))
        trainable |= {id(p) for p in encoder.model.parameters() if p.requires_grad}
    encoder.method = method
    for param in encoder.model.parameters():  # an own part's wrap_modules froze the parts attached before it
        param.requires_grad_(id(param) in trainable)
    return [done[p.name] for p in method.parts]


def state(parts: list, model: nn.Module) -> dict[str, torch.Tensor]:
    """Every part's tensors, keyed relative to the encoder: peft's adapter state for the peft part, the own
    parts' parameters by their key rules."""
    out: dict[str, torch.Tensor] = {}
    if any(p.uses_peft for p in parts):
        from peft import get_peft_model_state_dict

        out.update(get_peft_model_state_dict(model))
    own = [p for p in parts if not p.uses_peft]
    out.update({n: t for n, t in model.named_parameters() if any(p.owns_key(n) for p in own)})
    return out


def load(parts: list, model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Load ``tensors`` (checked by the caller against :func:`state`'s keys) into every part."""
    peft = [p for p in parts if p.uses_peft]
    own = {k: v for k, v in tensors.items() if any(p.owns_key(k) for p in parts if not p.uses_peft)}
    if peft:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, {k: v for k, v in tensors.items() if k not in own})
    model.load_state_dict(own, strict=False)


@functools.cache
def composed(name: str):
    """The Method for ``"a+b"`` (built once per process; never in the registry's list of methods)."""
    from tpp.adapters import Method, get_method

    parts = tuple(get_method(n) for n in part_names(name))
    check_compatible(list(parts))
    keys = "|".join(f"(?:{p.tensor_keys})" for p in parts)
    return Method(
        name=canonical(name), options_cls=options_class(list(parts)), attach=None,
        identity_at_init=all(p.identity_at_init for p in parts), pretrainable=all(p.pretrainable for p in parts),
        summary=" + ".join(p.summary for p in parts), inherited=tuple(p.name for p in parts),
        state=functools.partial(state, parts), tensor_keys=keys, prefix=None,
        touches=tuple(t for p in parts for t in p.touches), parts=parts, load=functools.partial(load, parts))
