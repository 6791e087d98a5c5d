"""What a stored adapter must prove before it comes near the shared backbone, and the guard that notices
if something wrote into it anyway.

- :func:`check_adapter`: from the bytes of an adapter directory alone (nothing loaded into a model): the
  card parses, its method is registered and is an adapter (the kind comes from the registry, never from
  the card), every weight tensor is named by the method's key rule (so no file can name a backbone
  weight), tensors are finite floats, and the head fits the card's labels.
- :class:`BackboneGuard`: the version counter of every backbone tensor, compared after each load; a
  change restores the weights from the checkpoint on disk and refuses the adapter that caused it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors

from tpp.adapter_checks import check_frame, check_head
from tpp.adapter_dir import CARD, HEAD
from tpp.adapter_read import INTEGER_HEAD_TENSORS, check_values, parse_card
from tpp.adapters import check_tensor_names, get_method
from tpp.adapters.visual_prompt import declared_frame
from tpp.data.images import rule_frame
from tpp.errors import ConfigError, TppError
from tpp.model import check_head_frame
from tpp.data.file_reading import recorded_reading
from tpp.tasks import task_of_card



@dataclass
class CheckedAdapter:
    """An adapter directory that passed :func:`check_adapter`: its card, method, weights and head tensors."""
    card: dict
    method: object  # tpp.adapters.Method
    state: dict[str, torch.Tensor]
    head_state: dict[str, torch.Tensor]


def check_adapter(files: dict[str, bytes], source: str) -> CheckedAdapter:
    """Structural checks of an adapter directory's files (name -> bytes); its task must be a registered one."""
    card = parse_card(files.get(CARD), source)
    if task_of_card(card) is None or "input" not in card:
        raise TppError(f"'{source}' has no task head (stage {card.get('stage')!r}): only fine-tuned adapters are "
                       "served. Fine-tune it first (tpp run finetune ... adapter.init_from=...).")
    check_input_rule(card, source)
    recorded_reading(card.get("data") or {}, f"'{source}/{CARD}'")  # how its inputs are decoded: checked first
    method = adapter_method(card, source)
    check_frame(card, declared_frame(card["method"], card["options"]), source)  # as loading it would, backbone-free
    check_head_frame(card, f"{source}/{CARD}")
    weights = card.get("weights_file")
    state = parse_tensors(files, weights, source) if weights else {}
    check_tensor_names(method, state, source)
    head_state = parse_tensors(files, HEAD, source, integer=INTEGER_HEAD_TENSORS)
    check_head(card, head_state, source)
    return CheckedAdapter(card, method, state, head_state)


MAX_INPUT_SIDE = 4096  # pixels a card may ask images to be resized to (or masks to be drawn at)


def check_input_rule(card: dict, source: str) -> None:
    """The card's input pipeline and mask size are sane (a forged card cannot ask for 10^5-px inputs)."""
    rule, task = card["input"], card["task"]
    problems = []
    if rule.get("image_channels") not in (1, 3) or rule.get("channels") not in (1, 3):
        problems.append("image_channels and channels must be 1 or 3")
    size = rule.get("image_size")
    if not isinstance(size, int) or not 2 <= size <= MAX_INPUT_SIDE:
        problems.append(f"image_size must be an integer in 2..{MAX_INPUT_SIDE}")
    for key in ("mean", "std"):
        values = rule.get(key)
        if not isinstance(values, list) or len(values) != rule.get("channels") or \
                not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            problems.append(f"{key} must list one finite number per channel")
    if isinstance(rule.get("std"), list) and any(isinstance(v, (int, float)) and v <= 0 for v in rule["std"]):
        problems.append("std must be positive")
    if isinstance(size, int):
        try:
            rule_frame(rule)
        except TppError as exc:
            problems.append(str(exc).removeprefix("input."))
    problems += task_of_card(card).check_entry(task)  # e.g. a sane mask size
    if problems:
        raise TppError(f"'{source}/{CARD}': the input rule or task entry is malformed: {'; '.join(problems)}.")


def adapter_method(card: dict, source: str):
    """The card's registered method, which must be an adapter method (its kind is the registry's)."""
    try:
        method = get_method(str(card.get("method")))
    except ConfigError as exc:
        raise TppError(f"'{source}': {exc}") from None
    if method.kind != "adapter":
        raise TppError(f"'{source}': method {method.name!r} produces a {method.kind}, not an adapter; its card "
                       "says otherwise, so it was edited. Refused.")
    if not isinstance(card.get("options", {}), dict) or not isinstance(card.get("target_modules", []), list):
        raise TppError(f"'{source}': the card's options / target_modules are malformed.")
    return method


def parse_tensors(files: dict[str, bytes], name: str, source: str,
                  integer: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """A safetensors file of the directory from its bytes (never pickle); finite floating tensors only, except
    the names in ``integer``, which must be int64 (:func:`tpp.adapter_read.check_values`)."""
    if name not in files:
        raise TppError(f"adapter directory '{source}' lacks {name}.")
    try:
        state = load_safetensors(files[name])
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise TppError(f"'{source}/{name}' is not a readable safetensors file ({type(exc).__name__}).") from None
    check_values(state, f"{source}/{name}", integer)
    return state


class BackboneGuard:
    """Notices any in-place write into the backbone's tensors (their autograd version counters) and
    restores them from the checkpoint.

    ``restore_from()`` loads a pristine copy of the same model (same tensor names); ``expected_hash``
    is the checkpoint's content hash, re-checked after a restore.
    """

    def __init__(self, model: nn.Module, restore_from: Callable[[], nn.Module], expected_hash: str):
        self.model, self.restore_from, self.expected_hash = model, restore_from, expected_hash
        self.restores = 0
        self._snapshot()

    def _snapshot(self) -> None:
        self.tensors = dict(self.model.state_dict(keep_vars=True))
        self.versions = {name: self._stamp(t) for name, t in self.tensors.items()}

    @staticmethod
    def _stamp(tensor: torch.Tensor) -> tuple[int, int]:
        """In-place writes bump ``_version``; replacing ``.data`` changes the storage pointer."""
        return tensor._version, tensor.data_ptr()

    def changed(self) -> list[str]:
        """Names of backbone tensors written since the last snapshot."""
        return [name for name, t in self.tensors.items() if self._stamp(t) != self.versions[name]]

    def check(self, source: str) -> None:
        """Raise (after restoring the backbone) if anything wrote into it since the last check."""
        changed = self.changed()
        if not changed:
            return
        self.restore()
        raise TppError(f"adapter '{source}' wrote into the shared backbone ({', '.join(changed[:3])}); the backbone "
                       "was restored from its checkpoint and the adapter refused.")

    @torch.no_grad()
    def restore(self) -> None:
        """Copy every backbone tensor back from the checkpoint (in place: every site shares them)."""
        from tpp.backbones import backbone_hash

        pristine = self.restore_from().state_dict()
        for name, tensor in self.tensors.items():
            tensor.copy_(pristine[name])
        self.restores += 1
        self._snapshot()
        if backbone_hash(self.model) != self.expected_hash:
            raise RuntimeError("the backbone could not be restored to its checkpoint's content; restart the service")
