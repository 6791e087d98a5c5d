"""Plug-in discovery shared by the adapter methods and the pretext tasks."""
from __future__ import annotations

import importlib
import pkgutil


def import_submodules(package: str, path) -> None:
    """Import every module or sub-package of ``package`` (folder list ``path``, i.e. its ``__path__``):
    each registers itself on import, so adding a method or a pretext is one file or folder."""
    for module in pkgutil.iter_modules(path):
        importlib.import_module(f"{package}.{module.name}")
