"""Reading an adapter folder, each file once and verified: :func:`read_adapter_dir` (the one reader; its card parsed
by :func:`parse_card`), held per run config by :func:`read_once` / :func:`take_read`; the store version-folder checks
(:func:`check_version_folder`, :func:`read_version_folder`, :func:`content_hash`); and its safetensors files, loaded
and checked (:func:`read_tensors`, :func:`check_values`). Writing the folder and checking its card:
:mod:`tpp.adapter_dir`; the capped file reads: :mod:`tpp.capped_read`."""
from __future__ import annotations

import hashlib
import json
import os
import re
import weakref
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import load_file

from tpp.adapter_dir import ADAPTER_FILES, CARD, HEAD, WEIGHTS, card_json, check_card
from tpp.capped_read import file_limit, list_folder, read_regular
from tpp.errors import TppError


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
    card names / ``head.safetensors``, those present, capped by :func:`~tpp.capped_read.file_limit`. ``follow``: a
    symbolic link to one of these files (in a folder that is no version) is followed; False (publishing, serving):
    refused, as a store refuses them. Hand ``files`` to :func:`read_weights` / :func:`read_head` as often as needed:
    what is checked and what is loaded are these bytes, never a second read that could find others (a file swapped in
    between)."""
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
    """The file ``name`` of an adapter folder that is no store version, capped by
    :func:`~tpp.capped_read.file_limit`; a link to it followed when ``follow``."""
    file = folder / name
    return read_regular(file.resolve() if follow else file, file_limit(name), shown=file)


def parse_card(data: bytes | None, folder: str | Path, kinds: tuple = ("adapter",)) -> dict:
    """The card of the adapter folder ``folder`` from its bytes (None: it has none), checked by
    :func:`~tpp.adapter_dir.check_card`: the one card parser, for a folder read by :func:`read_adapter_dir` and a
    store's version (:mod:`tpp.serve.store`) alike."""
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
    regular file (no link) among :data:`~tpp.adapter_dir.ADAPTER_FILES` and their content hash is ``version``
    (default: the folder's name), so a byte flipped after publishing is caught before anything is used. The one check
    of a version's files: the store's loads, ``tpp adapters push`` and :func:`read_adapter_dir` of a folder named
    like a version all use it."""
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
