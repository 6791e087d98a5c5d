"""Data sources and their registry: one file + one registration each.

A source file defines an options dataclass (help text per field, checks in ``__post_init__`` raising
:class:`tpp.errors.ConfigError`; set flat as ``data.<option>`` beside the keys every source shares, which
:class:`tpp.config.DataConfig` holds) and a ``load`` function, registered with :func:`register`. The first
line of the file's docstring is what ``tpp ls`` prints for it.

``load(common, options, seed, image_size, labels) -> Dataset``: ``common`` is the data section
(:class:`tpp.config.DataConfig`: name, root, modality, split fractions ...), ``options`` the source's own
dataclass, ``seed`` the split seed (``data.split_seed``, never the run's seed) for sources that split
the data themselves, ``image_size`` the side files of mixed sizes are decoded
to, ``labels=False`` (pre-training) lets a source leave label arrays unread. Images come back uint8
(N, H, W) or (N, H, W, C) per split, labels int64 (N,) or None, masks uint8 (N, H, W) or None.

An option whose field metadata holds ``"meaning": TAG`` means the same in every source whose option of that name
carries the same TAG (``data.slice`` of folder, csv and unlabeled_folder: "image files"), so ``data.source=X`` on
the command line carries the file's value over (:func:`carried_options`); one without it, or with another TAG
(seg_npz's ``group_key`` names an array, seg_folder's a metadata.csv column), is not.
"""
from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from tpp.errors import ConfigError
from tpp.registry import import_submodules


def no_problems(common, options, base: Path) -> list[str]:
    """The default preflight: nothing to check beyond the data root."""
    return []


def no_license(name: str) -> Optional[str]:
    """The default: no licence known for a dataset of this source (``data.license`` declares it)."""
    return None


@dataclass(frozen=True)
class Source:
    """A registered data source.

    ``preflight(common, options, base) -> [problem]``: what ``tpp validate`` checks before any image is read
    (``base``: the resolved data root; files exist ...). ``masks``: the data carries segmentation masks
    (``task=segmentation`` needs such a source, classification refuses one). ``needs_modality``: the files
    cannot tell their modality, so ``data.modality`` must be set. ``license(name) -> str | None``: the licence
    known for a dataset of this source (MedMNIST's), recorded in cards unless ``data.license`` declares one.
    """
    name: str
    options_cls: type
    load: Callable
    preflight: Callable = no_problems
    masks: bool = False
    needs_modality: bool = False
    license: Callable = no_license

    @property
    def summary(self) -> str:
        """First line of the source file's docstring (``tpp ls``)."""
        doc = (sys.modules[self.load.__module__].__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""


_SOURCES: dict[str, Source] = {}


def register(source: Source) -> Source:
    """Add a source to the registry; the name must be new."""
    if source.name in _SOURCES:
        raise ValueError(f"data source '{source.name}' is registered twice")
    _SOURCES[source.name] = source
    return source


def get_source(name: str, key: str = "data.source") -> Source:
    """Look up a source by name (``key``: the config key that named it), with a config error listing the
    known ones."""
    _load_builtin()
    if name not in _SOURCES:
        raise ConfigError(f"unknown {key} '{name}'. Known sources: {', '.join(sorted(_SOURCES))} (`tpp ls`).")
    return _SOURCES[name]


def all_sources() -> list[Source]:
    _load_builtin()
    return [_SOURCES[k] for k in sorted(_SOURCES)]


def carried_options(old: str, new: str) -> frozenset[str]:
    """The options of source ``old`` that source ``new`` reads alike (both fields marked with the same
    ``meaning``): a config file's value for ``old`` holds for ``new`` too. Empty when either is no source."""
    import dataclasses

    _load_builtin()
    if not (isinstance(old, str) and isinstance(new, str) and old in _SOURCES and new in _SOURCES):
        return frozenset()
    theirs = {f.name: f.metadata.get("meaning") for f in dataclasses.fields(_SOURCES[new].options_cls)}
    return frozenset(f.name for f in dataclasses.fields(_SOURCES[old].options_cls)
                     if f.metadata.get("meaning") is not None and theirs.get(f.name) == f.metadata["meaning"])


def missing_file(file: Optional[str], base: Path, what: str = "data.file") -> list[str]:
    """A preflight piece: ``[problem]`` when ``file`` (relative to the data root ``base``, or absolute) is set
    but does not exist."""
    if file and not (base / file).exists():
        where = "" if Path(file).is_absolute() else f" under the data root '{base}'"
        return [f"{what} '{file}' does not exist{where}."]
    return []


def check_classes(classes: Optional[list]) -> None:
    """An options check: ``data.classes``, when set, lists distinct, non-empty class names (strings)."""
    if classes is None:
        return
    if not all(isinstance(c, str) for c in classes):
        raise ConfigError(f"data.classes must list class names (strings), got {classes!r}; quote numeric names "
                          "('0').")
    if not all(c.strip() for c in classes):
        raise ConfigError(f"data.classes holds an empty class name: {classes!r}; name every class.")
    if len(set(classes)) != len(classes):
        raise ConfigError(f"data.classes names a class twice: {classes!r}.")


def check_mask_classes(mask_classes: str, classes: Optional[list]) -> None:
    """An options check: ``data.classes`` fits ``data.mask_classes`` (``from_label`` is checked against the
    labels when the data is read)."""
    from tpp.data.segmentation import mask_class_names
    from tpp.errors import TppError

    check_classes(classes)
    if mask_classes != "from_label":
        try:
            mask_class_names(mask_classes, classes, None)
        except TppError as exc:
            raise ConfigError(str(exc)) from None


@functools.cache  # once per process, not a directory listing per lookup
def _load_builtin() -> None:
    """Import every module of this package: each source registers itself, so adding one is one file."""
    import_submodules(__name__, __path__)
