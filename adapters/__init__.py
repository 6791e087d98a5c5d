"""Adapter methods and their registry (installed as ``tpp.adapters``).

A method is one folder with an options dataclass (help text per field, checks in ``__post_init__``)
and an ``attach`` function, registered with :func:`register`. Methods peft already has are thin
wrappers around peft configs.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Callable, Optional

from tpp.errors import ConfigError, TppError
from tpp.registry import import_submodules


@dataclass(frozen=True)
class Method:
    """A registered adapter method.

    ``attach(encoder, options, target_names) -> module`` adds the target parameters to a frozen
    encoder (or, for the baselines, changes what trains); ``identity_at_init`` says whether the
    adapted encoder starts equal to the backbone; ``pretrainable`` whether target parameter
    pre-training applies. ``state(module) -> {name: tensor}`` gives the tensors the method saves
    (``None``: peft's adapter state). ``kind`` is ``"adapter"``, or ``"full_model"`` for full
    fine-tuning, which is a baseline and never accepted where an adapter is expected.

    ``tensor_keys`` is the method's key rule: a regular expression that the end of every tensor name
    it saves matches (``\\.lora_[AB]\\.weight`` ...). A stored file with any other name is refused before
    a tensor is copied, so a forged file cannot name a backbone weight. The default matches nothing
    (a method that saves no tensors); ``None`` for ``full_model``, which is never loaded as an adapter.
    """
    name: str
    options_cls: type
    attach: Callable
    identity_at_init: bool
    pretrainable: bool
    summary: str
    # options that must be inherited from a parent adapter (a conflicting override is an error)
    inherited: tuple = ()
    state: Optional[Callable] = None
    kind: str = "adapter"
    # resolve(encoder, options) -> full module names the method adapts (default: Linear layers by
    # the options' target_modules leaf names)
    resolve: Optional[Callable] = None
    tensor_keys: Optional[str] = r"(?!)"
    # the marker in the names of the modules and tensors the method adds (peft's tensor prefix, ``tpp_``
    # for tpp's own methods): how a backbone tensor is told from an adapter's (``is_adapter_key``)
    prefix: Optional[str] = None
    # mixed_batch(options, target_names) -> a peft config whose adapters share one forward with per-row
    # ``adapter_names`` (peft's mixed-batch inference), or None: the method's sites run as sub-batches
    mixed_batch: Optional[Callable] = None
    # what the method adapts (``input`` pixels, prompt ``tokens``, ``linear`` layers, ``norm`` layers ...):
    # methods that declare it and adapt different things compose (``adapters/compose.py``); None: never composed
    touches: Optional[tuple] = None
    # a composed method: its parts, and load(model, tensors) putting the saved tensors back into every part
    parts: tuple = ()
    load: Optional[Callable] = None

    def owns_key(self, name: str) -> bool:
        """True if ``name`` is a tensor this method saves (by its key rule; never a backbone weight)."""
        return self.tensor_keys is not None and re.search(f"(?:{self.tensor_keys})$", name) is not None

    @property
    def uses_peft(self) -> bool:
        return self.state is None


_REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add a method to the registry; the name must be new."""
    if method.name in _REGISTRY:
        raise ValueError(f"adapter method '{method.name}' is registered twice")
    _REGISTRY[method.name] = method
    adapter_marker.cache_clear()
    return method


@functools.cache
def adapter_marker() -> re.Pattern:
    """A pattern found in every tensor name a registered method adds (their ``prefix``), in none of a
    backbone's."""
    _load_builtin()
    prefixes = sorted({m.prefix for m in _REGISTRY.values() if m.prefix})
    return re.compile("|".join(re.escape(p) for p in prefixes))


def check_tensor_names(method: Method, names, source: str) -> None:
    """Every saved tensor name must be one of ``method``'s target parameters (its key rule), never a backbone
    weight: checked before any tensor is copied anywhere. TppError naming ``source`` and the first strays."""
    # a composed method's part may sit inside another's wrapper (``layers.0.base_layer...lora_A.weight``); its keys
    # are still held to the parts' key rules and, when loaded, to exactly the model's own set
    foreign = sorted(k for k in names if not method.owns_key(k) or (".base_layer." in f".{k}." and not method.parts))
    if foreign:
        more = f" (+{len(foreign) - 3} more)" if len(foreign) > 3 else ""
        raise TppError(f"'{source}': the weights hold tensors that are not {method.name} target parameters: "
                       f"{', '.join(foreign[:3])}{more}. Refused before loading: an adapter never carries "
                       "backbone weights.")


def get_method(name) -> Method:
    """Look up a method by name, with a config error listing the known ones. ``"a+b"`` or ``[a, b]``: the
    composition of registered methods ``a`` and ``b`` (``adapters/compose.py``; incompatible: a config error)."""
    from tpp.adapters.compose import canonical, composed, part_names

    _load_builtin()
    parts = part_names(name) if isinstance(name, (str, list, tuple)) else [name]
    if not parts or "" in parts:  # [], "" or "lora+"
        raise ConfigError(f"adapter.method {str(name)[:60]!r} leaves a method name empty: give one method (lora) or "
                          f"two or more to compose ([visual_prompt, lora]). Known: {', '.join(sorted(_REGISTRY))}.")
    if isinstance(name, (list, tuple)) or len(parts) > 1:
        return composed(canonical(name))
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ConfigError(f"unknown adapter.method {str(name)[:60]!r}. Known methods: {', '.join(sorted(_REGISTRY))}.")
    return _REGISTRY[name]


def all_methods() -> list[Method]:
    _load_builtin()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


@functools.cache  # once per process, not a directory listing per lookup
def _load_builtin() -> None:
    """Import every method package of this folder: each registers itself."""
    import_submodules(__name__, __path__)
