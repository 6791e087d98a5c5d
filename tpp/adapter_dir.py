"""The adapter directory: the unit users move between hospitals.

Layout: peft's ``adapter_config.json`` + ``adapter_model.safetensors`` (target parameters, keys
relative to the encoder), ``head.safetensors`` (task head, when there is one) and ``tpp_card.json``.
No backbone weights. Baselines: a linear probe saves only its head; full fine-tuning saves the whole
encoder as ``model.safetensors`` under ``kind: full_model`` (never accepted as an adapter). Data is
described by name, content hash and counts, never by paths.
"""
from __future__ import annotations

import copy
import datetime
import hashlib
import json
import os
import platform
import re
import stat
import weakref
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import load_file, save_file

from tpp.backbones import MAX_PATCH_TOKENS, BackboneInfo
from tpp.errors import TppError
from tpp.model import adapter_state, build_head
from tpp.model_card import README, portable_backbone_id, render
from tpp.rundir import ESCAPED_BYTES, finite_json

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
MIB = 2**20
# the most bytes read from one metadata file of an adapter or context folder, a store or a Hub snapshot: the card,
# adapter_config.json, README.md, a context set's context.json (tpp writes them at tens of KiB at most)
METADATA_LIMIT = MIB
WEIGHTS_LIMIT = 4096 * MIB  # one safetensors file of an adapter (see file_limit)


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


def read_weights(path: str | Path, card: dict, files: dict[str, bytes] | None = None) -> dict[str, torch.Tensor]:
    """The method's saved tensors ({} for a linear probe, which saves only its head); from ``files``, bytes already
    read (:func:`read_adapter_dir`; a store version folder's as its content hash verified them), when given, else
    from the file."""
    name = card.get("weights_file", WEIGHTS)
    return _file_tensors(path, name, files) if name else {}


def read_head(path: str | Path, files: dict[str, bytes] | None = None) -> dict[str, torch.Tensor]:
    """The task head's tensors (``head.safetensors``); from ``files``, bytes already read (:func:`read_adapter_dir`),
    when given, else from the file."""
    return _file_tensors(path, HEAD, files)


def _file_tensors(path: str | Path, name: str, files: dict[str, bytes] | None) -> dict[str, torch.Tensor]:
    if files is not None and name not in files:
        raise TppError(f"adapter directory '{path}' lacks {name}.")
    return read_tensors(path, name, data=None if files is None else files[name])


class AdapterRead(NamedTuple):
    """An adapter folder as :func:`read_adapter_dir` read it, each file once (``files`` and ``card_bytes`` None in
    a read :func:`take_read` handed over)."""
    card: dict  # parsed from ``card_bytes`` and checked (:func:`parse_card`)
    files: dict[str, bytes]  # name -> bytes: a store version folder's every file, as its content hash verified them;
    # another folder's card and the tensor files asked for, those present
    card_bytes: bytes  # the card's bytes, the ones parsed


def read_adapter_dir(path: str | Path, kinds: tuple = ("adapter",), *, weights: bool = False, head: bool = False,
                     follow: bool = True) -> AdapterRead:
    """The one read of an adapter folder: its card checked (``kinds``: what the caller accepts; only evaluation
    accepts a ``full_model`` baseline) and its files' bytes, each file read once. A folder named like a store version
    (16 hex digits) has every file read and their content hash checked (:func:`check_version_folder`), and the card is
    parsed from those bytes; another folder has its card read and, with ``weights`` / ``head``, the weights file the
    card names / ``head.safetensors``, those present, capped by :func:`file_limit`. ``follow``: a symbolic link to
    one of these files (in a folder that is no version) is followed; False (publishing, serving): refused, as a store
    refuses them. Hand ``files`` to :func:`read_weights` / :func:`read_head` as often as needed: what is checked
    and what is loaded are these bytes, never a second read that could find others (a file swapped in between)."""
    path = Path(path)
    _is_adapter_folder(path)
    files = check_version_folder(path)
    if files is not None:
        if CARD not in files:  # removed since it was seen
            raise TppError(f"'{path}' is not a tpp adapter directory (no {CARD}).")
        return AdapterRead(parse_card(files[CARD], path, kinds), files, files[CARD])
    data = _read_file(path, CARD, follow)
    card = parse_card(data, path, kinds)
    files = {CARD: data}
    for name in (card.get("weights_file", WEIGHTS) if weights else None, HEAD if head else None):
        if name and (path / name).is_file():  # a missing one is said where it is needed (read_weights, read_head)
            files[name] = _read_file(path, name, follow)
    return AdapterRead(card, files, data)


def _is_adapter_folder(path: Path) -> None:
    """A TppError unless ``path`` is a folder holding a card (naming a run folder's ``adapter/`` if it is one)."""
    if path.is_file():
        raise TppError(f"'{path}' is a file; an adapter is the folder holding {CARD}"
                       f"{f' (here {path.parent})' if path.name == CARD else ''}.")
    if not path.is_dir():
        raise TppError(f"adapter directory '{path}' does not exist.")
    if not (path / CARD).is_file():
        hint = f" It is a run folder: did you mean '{path / 'adapter'}'?" if (path / "adapter" / CARD).is_file() else ""
        raise TppError(f"'{path}' is not a tpp adapter directory (no {CARD}).{hint}")


def _read_file(folder: Path, name: str, follow: bool) -> bytes:
    """The file ``name`` of an adapter folder that is no store version, capped by :func:`file_limit`; a link to it
    followed when ``follow``."""
    file = folder / name
    return read_regular(file.resolve() if follow else file, file_limit(name), shown=file)


def parse_card(data: bytes | None, folder: str | Path, kinds: tuple = ("adapter",)) -> dict:
    """The card of the adapter folder ``folder`` from its bytes (None: it has none), checked by :func:`check_card`:
    the one card parser, for a folder read by :func:`read_adapter_dir` and a store's version
    (:mod:`tpp.serve.store`) alike."""
    card_path = Path(folder) / CARD
    if data is None:
        raise TppError(f"'{folder}' is not a tpp adapter directory (no {CARD}).")
    try:
        card = card_json(data.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TppError(f"'{card_path}' is not valid JSON ({exc}).") from None
    check_card(card, card_path, kinds)
    return card


# id(owner) -> {(path, kinds, weights, head): the read, its files None once taken}: what read_once read for owner
_HELD: dict[int, dict[tuple, AdapterRead]] = {}


def read_once(owner, path: str | Path, kinds: tuple = ("adapter",), *, weights: bool = False, head: bool = False,
              files: bool = True) -> AdapterRead:
    """:func:`read_adapter_dir` of ``path``, read once for ``owner`` (a run config: ``tpp validate``'s checks, a run's
    checks and its load then parse the same bytes; a store version folder's as its content hash verified them).
    Held while ``owner`` lives; the files' bytes only until :func:`take_read` (read again if asked for after that;
    ``files=False``: the card alone will do, and a read whose bytes were taken is not read again)."""
    held = _HELD.get(id(owner))
    if held is None:  # dropped with owner; one that cannot be weakly referenced is a TypeError before anything is held
        weakref.finalize(owner, _HELD.pop, id(owner), None)
        held = _HELD[id(owner)] = {}
    key = (str(path), tuple(kinds), weights, head)
    read = held.get(key)
    if read is None or (files and read.files is None):
        read = held[key] = read_adapter_dir(path, kinds, weights=weights, head=head)
    return read


def take_read(owner, path: str | Path, kinds: tuple = ("adapter",), *, weights: bool = False,
              head: bool = False) -> AdapterRead:
    """:func:`read_once`'s read, handed to the load that uses its bytes last: they are not held beyond it (a full
    model's weights can be hundreds of MiB), the card is."""
    read = read_once(owner, path, kinds, weights=weights, head=head)
    _HELD[id(owner)][(str(path), tuple(kinds), weights, head)] = read._replace(files=None, card_bytes=None)
    return read


def dir_size(path: Path) -> int:
    """Bytes of an adapter directory's files, without ``README.md`` (documentation rendered from the card), so
    sizes stay comparable with adapters saved before tpp wrote model cards."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file() and f.name != README)


VERSION_RE = re.compile(r"[0-9a-f]{16}")  # an adapter store's version folder: its files' content hash


def content_hash(files: dict[str, bytes]) -> str:
    """First 16 hex digits of sha256 over (file name, bytes) of the adapter's files, by name."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0")
        digest.update(files[name])
    return digest.hexdigest()[:16]


def check_version_folder(path: Path) -> dict[str, bytes] | None:
    """A folder named like a store version (16 hex digits: a store's, or a copy of one) must hold the files that
    name hashes, as serving checks them (:func:`read_version_folder`): publishing, loading or evaluating it after a
    byte changed would sign or use what the store refuses. The folder's name is taken both as given and as the
    folder it is (:func:`version_names`: a symbolic link to a version, or ``.`` inside one, is checked as the version
    itself). Returns those files' verified bytes; other folders pass (None)."""
    names = version_names(path)
    if not names:
        return None
    files = read_version_folder(Path(path), names[0])
    if len(names) > 1:  # a link named like one version to the folder of another: its files cannot match both
        raise TppError(f"'{path}' is named like version {names[1]} but is the folder of version {names[0]} "
                       f"('{os.path.realpath(path)}'); refused.")
    return files


def version_names(path: str | Path) -> list[str]:
    """The store versions (16 hex digits) ``path`` is named by: the name of the folder it is (a link followed, ``.``
    or ``..`` resolved), then its own name, each once; [] for a folder that is no version by either name."""
    names = (Path(os.path.realpath(path)).name, Path(path).name)
    return [name for name in dict.fromkeys(names) if VERSION_RE.fullmatch(name)]


def is_version_folder(path: Path) -> bool:
    """Whether ``path`` is named like a store version (16 hex digits; :func:`version_names`), so that its files are
    checked against that content hash whenever it is read."""
    return bool(version_names(path))


def read_version_folder(folder: Path, version: str | None = None) -> dict[str, bytes]:
    """The files of a store version folder (or a copy of one), read once: {name: bytes}. Refused unless each is a
    regular file (no link) among :data:`ADAPTER_FILES` and their content hash is ``version`` (default: the folder's
    name), so a byte flipped after publishing is caught before anything is used. The one check of a version's files:
    the store's loads, ``tpp adapters push`` and :func:`read_adapter_dir` of a folder named like a version all use
    it."""
    version = folder.name if version is None else version
    files = {}
    for entry in list_folder(folder):
        if entry.is_symlink() or not entry.is_file(follow_symlinks=False):
            raise TppError(f"'{entry.path}' is a symbolic link or no regular file, which a published version never "
                           "holds; refused.")
        if entry.name not in ADAPTER_FILES:
            raise TppError(f"'{folder}' holds '{entry.name[:64]}', which is not part of an adapter; refused.")
        files[entry.name] = read_regular(Path(entry.path))
    if content_hash(files) != version:
        raise TppError(f"'{folder}': the files' content hash does not match version {version}; they changed after "
                       "publishing (tampering or disk corruption). Refused; publish the adapter again from its run "
                       "folder (a folder named by 16 hex digits is taken for a store version: rename a copy that is "
                       "none).")
    return files


def list_folder(folder: Path) -> list[os.DirEntry]:
    """The entries of ``folder``, sorted by name; one that cannot be listed (no permission to read it, gone, no
    folder) is a :class:`TppError` naming it, never a raw ``OSError`` (a 500 through the service)."""
    try:
        with os.scandir(folder) as entries:
            return sorted(entries, key=lambda e: e.name)
    except OSError as exc:
        raise TppError(f"'{folder}' cannot be listed ({exc.strerror or type(exc).__name__}); refused.") from None


def file_limit(name: str) -> int:
    """The most bytes :func:`read_regular` reads from the adapter file ``name``: :data:`METADATA_LIMIT` for the card,
    ``adapter_config.json`` and ``README.md``; :data:`WEIGHTS_LIMIT` for a safetensors file.

    A weights file is not bounded by anything else before it is read: its bytes are read whole, then its tensor
    names are checked against the method's key rule (:func:`tpp.serve.integrity.check_adapter`) and their shapes
    against the backbone only when it loads, so without this cap a forged store or Hub repo could make every load
    read gigabytes into memory before the refusal. No backbone is known where a store is read (the shapes a method
    allows depend on it), so the cap is one generous bound: LoRA on a ViT-L is tens of MiB, and a Hub pull screens
    its files with the same numbers."""
    return WEIGHTS_LIMIT if name.endswith(".safetensors") else METADATA_LIMIT


def read_regular(path: Path, limit: int | None = None, shown: str | Path | None = None) -> bytes:
    """The bytes of a regular file, never through a symbolic link (O_NOFOLLOW) and never waiting for a FIFO's
    writer (O_NONBLOCK: it is opened at once, then refused as no regular file); at most ``limit`` bytes (default:
    :func:`file_limit` of its name): a larger file is refused from its size, unread. The one capped read of the
    files of adapter folders, stores and Hub snapshots. ``shown``: how messages name the file (default: ``path``)."""
    shown = path if shown is None else shown
    limit = file_limit(Path(path).name) if limit is None else limit
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise TppError(f"'{shown}' cannot be read ({exc.strerror}; symbolic links are refused).") from None
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise TppError(f"'{shown}' is not a regular file; refused.")
        if info.st_size > limit:
            raise TppError(f"'{shown}' has {info.st_size:,} bytes, larger than the {limit:,} bytes such a file may "
                           "have; refused.")
        # the size found and a byte more, never ``limit + 1`` at once: a read allocates its whole buffer first (4 GiB
        # for every weights file); a file grown since its size was taken is read on in chunks, up to the cap
        parts = [fh.read(info.st_size + 1)]
        size = len(parts[0])
        while info.st_size < size <= limit and (part := fh.read(min(MIB, limit + 1 - size))):
            parts.append(part)
            size += len(part)
        data = b"".join(parts)
    if len(data) > limit:
        raise TppError(f"'{shown}' grew larger than the {limit:,} bytes such a file may have while it was read; "
                       "refused.")
    return data


def card_json(text: str):
    """A card's JSON; ``NaN`` and ``Infinity``, which tpp never writes into a card (``allow_nan=False``), are a
    :class:`json.JSONDecodeError` (a forged option such as ``alpha: NaN`` would give NaN outputs)."""
    def refuse(constant: str):
        raise json.JSONDecodeError(f"{constant} is not a JSON number", constant, 0)

    return json.loads(text, parse_constant=refuse)


def check_card(card, card_path: str | Path, kinds: tuple = ("adapter",)) -> None:
    """The card's shape, format and kind (see :func:`read_adapter_dir`); errors name ``card_path``."""
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


INTEGER_HEAD_TENSORS = ("mapping",)  # a label-mapping head's (T,) int64 source indices (its check bounds them)


def read_tensors(path: Path, name: str, integer: tuple[str, ...] | None = None,
                 data: bytes | None = None) -> dict[str, torch.Tensor]:
    """Load a safetensors file of the adapter directory (never pickle), checked by :func:`check_values`
    (``integer`` default: :data:`INTEGER_HEAD_TENSORS` for the head file, none for the others); ``data``: the
    file's bytes, already read (nothing is read again)."""
    file = Path(path) / name
    if data is None and not file.is_file():
        raise TppError(f"adapter directory '{path}' lacks {name}.")
    try:
        state = load_file(str(file)) if data is None else load_safetensors(data)
    except (SafetensorError, OSError) as exc:
        raise TppError(f"'{file}' is not a readable safetensors file ({exc}).") from None
    check_values(state, str(file), (INTEGER_HEAD_TENSORS if name == HEAD else ()) if integer is None else integer)
    return state


def check_values(state: dict[str, torch.Tensor], where: str, integer: tuple[str, ...] = ()) -> None:
    """Finite floating-point tensors only (a NaN adapter would publish NaN predictions with metrics beside
    them), except the names in ``integer``, which must be int64 (the task's head check bounds their values)."""
    for key, tensor in state.items():
        if key in integer:
            if tensor.dtype != torch.int64:
                raise TppError(f"'{where}': tensor '{key}' has dtype {tensor.dtype}; it holds int64 indices.")
        elif not tensor.is_floating_point():
            raise TppError(f"'{where}': tensor '{key}' has dtype {tensor.dtype}; adapters hold floats.")
        elif not torch.isfinite(tensor).all():
            raise TppError(f"'{where}': tensor '{key}' holds NaN or infinite values.")


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


def load_head(path, card: dict, hidden_size: int) -> torch.nn.Module:
    """The task head of an adapter directory (classification head or segmentation decoder), checked
    against its card."""
    return build_head(card, hidden_size, read_tensors(path, HEAD), f"{path}/{HEAD}")
