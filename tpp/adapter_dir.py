"""The adapter directory: the unit users move between hospitals.

Layout: peft's ``adapter_config.json`` + ``adapter_model.safetensors`` (target parameters, keys
relative to the encoder), ``head.safetensors`` (task head, when there is one) and ``tpp_card.json``.
No backbone weights. Baselines: a linear probe saves only its head; full fine-tuning saves the whole
encoder as ``model.safetensors`` under ``kind: full_model`` (never accepted as an adapter). Data is
described by name, content hash and counts, never by paths.

This module writes the folder and checks its card; :mod:`tpp.adapter_read` reads and verifies it, and
:mod:`tpp.capped_read` holds the capped file reads.
"""
from __future__ import annotations

import copy
import datetime
import json
import platform
from pathlib import Path

import torch
from safetensors.torch import save_file

from tpp.backbones import MAX_PATCH_TOKENS, BackboneInfo
from tpp.errors import TppError
from tpp.model import adapter_state
from tpp.model_card import README, portable_backbone_id, render
from tpp.safe_write import ESCAPED_BYTES, finite_json

CARD = "tpp_card.json"
WEIGHTS = "adapter_model.safetensors"
HEAD = "head.safetensors"
FULL_WEIGHTS = "model.safetensors"
PEFT_CONFIG = "adapter_config.json"
FORMAT = "tpp-adapter/1"
# what a store version may hold: nothing else is ever copied into a store. README.md (the Hugging Face model card,
# when the adapter has one) is covered by the version's content hash like every other file, so an edited README is
# refused as tampering; tpp never parses it (tpp_card.json is the card tpp reads).
ADAPTER_FILES = (CARD, HEAD, WEIGHTS, FULL_WEIGHTS, PEFT_CONFIG, README)


def versions() -> dict:
    import accelerate
    import peft
    import transformers

    import tpp

    return {"tpp": tpp.__version__, "torch": torch.__version__, "peft": peft.__version__,
            "transformers": transformers.__version__, "accelerate": accelerate.__version__,
            "python": platform.python_version()}


def make_card(*, method: str, options: dict, targets: list, backbone: BackboneInfo, input_rule: dict,
              site: str, modality: str, task: dict, data: dict, metrics: dict, parent: dict | None,
              trainable_parameters: int, stage: str, extra: dict | None = None, kind: str = "adapter") -> dict:
    """Assemble a card; every field is plain JSON."""
    card = {
        "format": FORMAT, "kind": kind, "stage": stage, "site": site, "modality": modality,
        "method": method, "options": options, "target_modules": list(targets),
        "backbone": {"id": backbone.id, "hash": backbone.hash, "model_type": backbone.model_type,
                     "image_size": backbone.image_size, "patch_size": backbone.patch_size,
                     "channels": backbone.channels},
        "input": input_rule, "task": task, "data": data, "metrics": metrics, "parent": parent,
        "trainable_parameters": trainable_parameters, "versions": versions(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    card.update(extra or {})
    return card


def write_adapter_dir(path: Path, encoder, head: torch.nn.Module | None, card: dict) -> None:
    """Write ``encoder``'s method tensors, the head, the card and the Hugging Face model card (``README.md``,
    :mod:`tpp.model_card`) into ``path`` (a fresh temp folder the caller renames into place). The card records
    which file holds the method's tensors. No file names the backbone by a path of this machine: a local
    backbone is named by its folder name (its hash identifies it). The ``full`` baseline's encoder is saved in
    transformers' format (``config.json`` with ViT-MAE's ``mask_ratio`` 0.0 + ``model.safetensors``)."""
    path.mkdir(parents=True, exist_ok=True)
    card = finite_json(card)  # an undefined metric (AUROC of a one-class split) is null, never NaN
    backbone = card.get("backbone")
    if isinstance(backbone, dict) and backbone.get("id"):
        card = dict(card, backbone=dict(backbone, id=portable_backbone_id(backbone["id"])))
    weights = None
    if encoder.method.uses_peft:
        _save_peft(encoder.model, path, card.get("backbone", {}).get("id"))
        weights = WEIGHTS
    elif state := adapter_state(encoder):
        weights = FULL_WEIGHTS if card["kind"] == "full_model" else WEIGHTS
        save_file(state, str(path / weights), metadata={"format": "pt"})
        if card["kind"] == "full_model":
            _save_encoder_config(encoder.model.config, path)
    if head is not None:
        save_file({k: v.detach().contiguous() for k, v in head.state_dict().items()}, str(path / HEAD))
    card = dict(card, weights_file=weights)
    (path / README).write_text(render(card, encoder.method.uses_peft), encoding="utf-8",  # replaces peft's
                               errors=ESCAPED_BYTES)  # template; a label name that is no UTF-8 written escaped
    card["size_bytes"] = dir_size(path)
    (path / CARD).write_text(json.dumps(card, indent=2, allow_nan=False))


def _save_peft(model, path: Path, base_id: str | None) -> None:
    """peft's ``save_pretrained`` with ``base_model_name_or_path`` = ``base_id`` (a hub id or folder name, never
    this machine's path; without one, the portable form of what peft recorded) in ``adapter_config.json``; the
    live model's configs are left as they were."""
    configs = list(model.peft_config.values())
    before = [c.base_model_name_or_path for c in configs]
    try:
        for config, value in zip(configs, before):
            config.base_model_name_or_path = base_id or (portable_backbone_id(value) if value else value)
        # no embedding layer is ever adapted: without this, peft looks the backbone's config up on the Hub
        model.save_pretrained(str(path), save_embedding_layers=False)
    finally:
        for config, value in zip(configs, before):
            config.base_model_name_or_path = value


def _save_encoder_config(config, path: Path) -> None:
    """The encoder's transformers ``config.json``; ViT-MAE's with ``mask_ratio`` 0.0, so plain ``AutoModel`` gives
    deterministic outputs (it masks and shuffles patches on every call otherwise)."""
    config = copy.deepcopy(config)
    if getattr(config, "model_type", None) == "vit_mae":
        config.mask_ratio = 0.0
    config.save_pretrained(str(path))


def dir_size(path: Path) -> int:
    """Bytes of an adapter directory's files, without ``README.md`` (documentation rendered from the card), so
    sizes stay comparable with adapters saved before tpp wrote model cards."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file() and f.name != README)


def card_json(text: str):
    """A card's JSON; ``NaN`` and ``Infinity``, which tpp never writes into a card (``allow_nan=False``), are a
    :class:`json.JSONDecodeError` (a forged option such as ``alpha: NaN`` would give NaN outputs)."""
    def refuse(constant: str):
        raise json.JSONDecodeError(f"{constant} is not a JSON number", constant, 0)

    return json.loads(text, parse_constant=refuse)


def check_card(card, card_path: str | Path, kinds: tuple = ("adapter",)) -> None:
    """The card's shape, format and kind (see :func:`~tpp.adapter_read.read_adapter_dir`); errors name ``card_path``."""
    path = Path(card_path).parent
    _check_shape(card, card_path)
    if card.get("format") != FORMAT:
        raise TppError(f"'{card_path}' has format {_short_value(card.get('format'))}; this tpp reads {FORMAT}.")
    if card.get("kind") not in kinds:
        if card.get("kind") == "full_model":
            raise TppError(f"'{path}' holds a fully fine-tuned model (kind full_model), a baseline kept for "
                           "comparison; it cannot be used where an adapter is expected. Evaluate it with "
                           "`tpp run evaluate`, or train an adapter method.")
        raise TppError(f"'{path}' holds a {_short_value(card.get('kind'))}, not an adapter.")
    _check_method(card, card_path)


def _check_method(card: dict, card_path) -> None:
    """The card's method is registered, produces what the card's ``kind`` says (an ``adapter`` card naming the
    ``full`` baseline would replace every backbone weight), and its options and fields fit it."""
    from tpp.adapters import get_method
    from tpp.errors import ConfigError

    for key in ("method", "site", "created"):
        if not isinstance(card.get(key), str):
            raise TppError(f"'{card_path}': field '{key}' must be a string, not {_short_value(card.get(key))}.")
    try:
        method = get_method(card["method"])
    except ConfigError as exc:
        raise TppError(f"'{card_path}': {exc}") from None
    if method.kind != card.get("kind"):
        raise TppError(f"'{card_path}': method {method.name!r} produces a {method.kind}, but the card says "
                       f"{_short_value(card.get('kind'))}; it was edited. Refused.")
    targets = card.get("target_modules")  # module names; a composed method's: one list per part
    parts = [p for p in targets if isinstance(p, list)] if isinstance(targets, list) else None
    names = lambda values: isinstance(values, list) and all(isinstance(t, str) for t in values)  # noqa: E731
    shaped = (len(parts) == len(targets) == len(method.parts) and all(map(names, parts))) if method.parts and \
        parts is not None else names(targets)
    if not shaped:
        raise TppError(f"'{card_path}': target_modules must be a list of module names (a composed method's: one "
                       f"list per part, {len(method.parts)} for {method.name!r}).")
    if not isinstance(card.get("options"), dict):
        raise TppError(f"'{card_path}': field 'options' (the method's options) must be an object.")
    missing = [p.name for p in method.parts if not isinstance(card["options"].get(p.name), dict)]
    if missing:  # tpp writes every part's options; one left out would load with its defaults
        raise TppError(f"'{card_path}': options lack the section of part {', '.join(map(repr, missing))} of the "
                       f"composed method {method.name!r} (tpp records every part's options); it was edited. Refused.")
    try:
        method.options_cls(**card["options"])
    except (TypeError, ValueError, ConfigError) as exc:
        raise TppError(f"'{card_path}': its options do not fit method {method.name!r} ({str(exc)[:160]}).") from None


def _short_value(value) -> str:
    """A card value for an error message, cut short (a message never echoes a whole file)."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _check_shape(card, card_path: Path) -> None:
    """The fields tpp reads have the types it expects; the weights file is one of the known names."""
    if not isinstance(card, dict):
        raise TppError(f"'{card_path}' must hold a JSON object, not {type(card).__name__}.")
    for key in ("backbone", "task", "metrics", "data", "input", "options"):
        if key in card and not isinstance(card[key], dict):
            raise TppError(f"'{card_path}': field '{key}' must be an object, not {type(card[key]).__name__}.")
    for outer, key in (("data", "used"), ("data", "split_sha256"), (None, "multitask")):
        value = (card.get(outer) or {}).get(key) if outer else card.get(key)
        if value is not None and not isinstance(value, dict):
            raise TppError(f"'{card_path}': field '{f'{outer}.' if outer else ''}{key}' must be an object, not "
                           f"{type(value).__name__}.")
    tasks = (card.get("multitask") or {}).get("tasks", [])
    if not isinstance(tasks, list) or not all(isinstance(t, dict) and isinstance(t.get("data", {}), dict)
                                              for t in tasks):
        raise TppError(f"'{card_path}': multitask.tasks must be a list of objects.")
    if not isinstance(card.get("backbone", {}).get("hash", ""), str):
        raise TppError(f"'{card_path}': backbone.hash must be a string.")
    if card.get("weights_file") not in (None, WEIGHTS, FULL_WEIGHTS):
        raise TppError(f"'{card_path}': weights_file {card.get('weights_file')!r} is not one of "
                       f"{WEIGHTS}, {FULL_WEIGHTS}.")
    labels = card.get("task", {}).get("label_names", [])
    if not isinstance(labels, list) or not all(isinstance(n, str) for n in labels):
        raise TppError(f"'{card_path}': task.label_names must be a list of strings.")
    if len(set(labels)) != len(labels):  # one name for two classes: a probability column would be lost
        twice = sorted({n for n in labels if labels.count(n) > 1})
        raise TppError(f"'{card_path}': task.label_names names a class twice ({', '.join(map(repr, twice[:3]))}).")
    from tpp.threshold import check_task_entry  # the binary decision chosen on validation: threshold, positive class

    if problem := check_task_entry(card.get("task", {})):
        raise TppError(f"'{card_path}': {problem}. Re-run the fine-tune that made this adapter, or delete the "
                       "entry to decide at 0.5 with the second label name positive.")


def verify_backbone(card: dict, backbone: BackboneInfo, source: str) -> None:
    """Refuse an adapter trained on another backbone (by weight hash)."""
    expected = card.get("backbone", {}).get("hash")
    if expected != backbone.hash:
        raise TppError(
            f"adapter '{source}' was trained on backbone '{card.get('backbone', {}).get('id')}' "
            f"(hash {str(expected)[:12]}), but the loaded backbone '{backbone.id}' has hash {backbone.hash[:12]}. "
            "Load the adapter with the backbone it was trained on (backbone.path in a config, --backbone on the "
            "command line, backbone= in Python).")
    size, patch = card.get("input", {}).get("image_size"), backbone.patch_size
    if isinstance(size, int) and isinstance(patch, int) and patch > 0 and (size // patch) ** 2 > MAX_PATCH_TOKENS:
        raise TppError(f"adapter '{source}': its input size {size} px gives {(size // patch) ** 2:,} patch tokens per "
                       f"image on this backbone (patch {patch}), more than the {MAX_PATCH_TOKENS:,} tpp loads "
                       "adapters at. Refused.")


def parent_summary(card: dict, path: str | Path) -> dict:
    """What a child card records of its parent."""
    return {"stage": card.get("stage"), "site": card.get("site"), "method": card.get("method"),
            "modality": card.get("modality"), "pretext": card.get("pretext"),
            "data": {k: card.get("data", {}).get(k) for k in ("name", "content_sha256", "used")},
            "created": card.get("created"), "dir_name": Path(path).name}

