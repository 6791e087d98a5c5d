"""The backbones shipped inside the package (``tpp/models/NAME``, named ``builtin:NAME``): their folders and the
encoder hash each card records. No torch here: ``tpp ls`` lists them without loading a model."""
from __future__ import annotations

import re
from pathlib import Path

from tpp.errors import TppError

BUILTIN_PREFIX = "builtin:"  # a hub id has no ':' and a local path given as ./builtin:x stays a path
MODELS_DIR = Path(__file__).resolve().parent / "models"  # tpp/models
DEFAULT_BACKBONE = "builtin:mae-vit-tiny-med"


def builtin_backbones() -> dict[str, Path]:
    """The checkpoints shipped in the package: name -> folder (``tpp/models/<name>`` with a config.json)."""
    if not MODELS_DIR.is_dir():
        return {}
    return {d.name: d for d in sorted(MODELS_DIR.iterdir()) if (d / "config.json").is_file()}


def resolve_backbone(path: str) -> str:
    """The directory or hub id a backbone name stands for: ``builtin:NAME`` -> the shipped folder; any other
    value (hub id, local directory) is returned unchanged."""
    if not (isinstance(path, str) and path.startswith(BUILTIN_PREFIX)):
        return path
    name = path[len(BUILTIN_PREFIX):]
    shipped = builtin_backbones()
    if name not in shipped:
        known = ", ".join(BUILTIN_PREFIX + n for n in shipped) or "none (the package's tpp/models folder is missing)"
        raise TppError(f"backbone '{path}' is not shipped with tpp. Shipped backbones: {known} (`tpp ls`). "
                       "For a folder of that name write ./" + path + ".")
    return str(shipped[name])


def builtin_hash(name: str) -> str | None:
    """The encoder hash recorded in a shipped backbone's card (``encoder_hash:`` in README.md's front matter)."""
    card = MODELS_DIR / name / "README.md"
    if not card.is_file():
        return None
    match = re.search(r"^encoder_hash:\s*([0-9a-f]{64})\s*$", card.read_text(), re.M)
    return match.group(1) if match else None
