"""Checks of a learned in-context model folder before anything is allocated: ``icl_card.json`` is read as hostile
input (types and sane ranges of every architecture field and of the segmentation image size), and the tensor
shapes in ``model.safetensors``'s header are compared with the architecture's, built on the meta device (no
memory), before any tensor is read. Every problem is a ``ValueError`` saying which field or tensor is wrong;
:func:`tpp.incontext.learned.load` turns it into one TppError naming the folder.
"""
from __future__ import annotations

import json
from pathlib import Path

# (low, high) per architecture field; wide enough for any real backbone (feature_dim: ViT-g is 1536) and a
# set model far larger than the recipe trains, small enough that no card can make tpp allocate gigabytes
CLASSIFIER_FIELDS = {"feature_dim": (1, 8192), "hidden": (1, 2048), "layers": (1, 24), "heads": (1, 64),
                     "max_classes": (2, 1000)}
MAX_LEVELS, MAX_CHANNELS = 8, 1024
IMAGE_SIZE = (8, 1024)  # segmentation pixels per side
MAX_PARAMETERS = 300_000_000
WEIGHT_DTYPES = ("F16", "BF16", "F32", "F64")
HEADER_BYTES = 1 << 20  # a safetensors header of a few hundred tensors is a few KiB
MAX_HOLDOUT = 1000  # names in a card's holdout list


def _int(value, field: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{field} must be a whole number, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{field} must be between {low} and {high}, got {value}")
    return value


def read_card(file: Path, formats: dict[str, tuple[str, ...]]) -> dict:
    """The parsed card, checked: a JSON object with a ``kind`` of ``formats`` ({kind: formats read}) and one of
    that kind's formats, a valid ``architecture`` for that kind and, for segmentation, a valid
    ``task_distribution.image_size``."""
    try:
        card = json.loads(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"{file.name} is not UTF-8 text ({exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{file.name} is not valid JSON ({exc})") from None
    if not isinstance(card, dict):
        raise ValueError(f"{file.name} must hold a JSON object, got a {type(card).__name__}")
    if card.get("kind") not in formats:
        raise ValueError(f"kind {card.get('kind')!r} is not one of {', '.join(formats)}")
    if card.get("format") not in formats[card["kind"]]:
        old = card.get("format") == "tpp-incontext/1"
        raise ValueError(f"format {card.get('format')!r}, expected {' or '.join(formats[card['kind']])}"
                         + ("; a tpp-incontext/1 classifier let the queries of one call attend to each other (an "
                            "image's answer depended on the images sent with it): re-train it with `tpp run "
                            "incontext`" if old else ""))
    if "weights_sha256" in card and not isinstance(card["weights_sha256"], str):
        raise ValueError("weights_sha256 must be a string")
    holdout = card.get("holdout", [])
    if not isinstance(holdout, list) or len(holdout) > MAX_HOLDOUT or \
            not all(isinstance(h, str) and len(h) <= 200 for h in holdout):
        raise ValueError(f"holdout must be a list of at most {MAX_HOLDOUT} dataset names (strings)")
    distribution = card.get("task_distribution", {})
    if not isinstance(distribution, dict):
        raise ValueError(f"task_distribution must be an object, got {type(distribution).__name__}")
    backbone = distribution.get("backbone", {})
    if not isinstance(backbone, dict) or not all(isinstance(backbone.get(k, ""), str) for k in ("id", "hash")):
        raise ValueError("task_distribution.backbone must be an object with string id and hash")
    architecture = card.get("architecture")
    if not isinstance(architecture, dict):
        raise ValueError(f"architecture must be an object, got {type(architecture).__name__}")
    if card["kind"] == "classification":
        check_classifier(architecture)
    else:
        levels = check_segmenter(architecture)
        check_image_size(distribution.get("image_size", 64), levels)
    return card


def _fields(architecture: dict, expected) -> None:
    missing, unknown = sorted(set(expected) - set(architecture)), sorted(set(architecture) - set(expected))
    if missing or unknown:
        raise ValueError("architecture " + "; ".join(
            part for part in (f"lacks {', '.join(missing)}" if missing else "",
                              f"has unknown fields {', '.join(unknown)}" if unknown else "") if part))


def check_classifier(architecture: dict) -> None:
    """A :class:`SetClassifier` architecture: every field a whole number in range, hidden a multiple of heads."""
    _fields(architecture, CLASSIFIER_FIELDS)
    for field, (low, high) in CLASSIFIER_FIELDS.items():
        _int(architecture[field], f"architecture.{field}", low, high)
    if architecture["hidden"] % architecture["heads"]:
        raise ValueError(f"architecture.hidden ({architecture['hidden']}) must be a multiple of architecture.heads "
                         f"({architecture['heads']})")


def check_segmenter(architecture: dict) -> int:
    """A :class:`CrossConvNet` architecture: 1 to 8 levels of channels, each a multiple of 4 (GroupNorm of 4
    groups) up to 1024. Returns the number of levels."""
    _fields(architecture, ("channels",))
    channels = architecture["channels"]
    if not isinstance(channels, list) or not 1 <= len(channels) <= MAX_LEVELS:
        raise ValueError(f"architecture.channels must be a list of 1 to {MAX_LEVELS} numbers, got {channels!r}")
    for i, c in enumerate(channels):
        _int(c, f"architecture.channels[{i}]", 4, MAX_CHANNELS)
        if c % 4:
            raise ValueError(f"architecture.channels[{i}] must be a multiple of 4, got {c}")
    return len(channels)


def check_image_size(size, levels: int) -> int:
    """The segmenter's pixels per side: a whole number in range that each of the ``levels - 1`` halvings divides."""
    _int(size, "task_distribution.image_size", *IMAGE_SIZE)
    if size % 2 ** (levels - 1):
        raise ValueError(f"task_distribution.image_size must be a multiple of {2 ** (levels - 1)} (one halving per "
                         f"level of architecture.channels), got {size}")
    return size


def read_weights(file: Path, expected: dict) -> bytes:
    """The weights file's bytes, once the header fitted (:func:`check_header`): a regular file no larger than its
    tensors (at 8 bytes per value) plus a header allowance, so no file can make tpp read gigabytes of padding."""
    if not file.is_file():
        raise ValueError(f"{file.name} is not a regular file")
    limit = 8 * sum(_numel(shape) for shape in expected.values()) + HEADER_BYTES
    size = file.stat().st_size
    if size > limit:
        raise ValueError(f"{file.name} has {size:,} bytes, more than its tensors need ({limit:,} at most)")
    with open(file, "rb") as fh:
        return fh.read(limit + 1)


def check_hash(recorded: str | None, actual: str, name: str) -> None:
    """The weights file's sha256 equals the card's ``weights_sha256`` (a changed byte inside a tensor passes every
    shape check)."""
    if recorded != actual:
        raise ValueError(f"{name} has sha256 {actual[:12]}..., the card records "
                         f"{(recorded or 'none')[:12]}...: the weights were changed after training")


def check_header(file: Path, expected: dict) -> None:
    """``file``'s safetensors header names exactly the tensors of ``expected`` ({name: shape tuple}), each with
    that shape and a floating dtype; nothing but the header is read. Also bounds the total parameter count."""
    from safetensors import safe_open

    total = sum(_numel(shape) for shape in expected.values())
    if total > MAX_PARAMETERS:
        raise ValueError(f"the architecture has {total:,} parameters, more than the {MAX_PARAMETERS:,} tpp loads")
    with safe_open(str(file), framework="pt") as fh:
        names = set(fh.keys())
        missing, unexpected = sorted(set(expected) - names), sorted(names - set(expected))
        if missing or unexpected:
            raise ValueError(f"{file.name} does not fit the card's architecture: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
        for name, shape in expected.items():
            piece = fh.get_slice(name)
            found = tuple(piece.get_shape())
            if found != tuple(shape):
                raise ValueError(f"{file.name}: tensor {name} has shape {found}, the card's architecture needs "
                                 f"{tuple(shape)}")
            if piece.get_dtype() not in WEIGHT_DTYPES:
                raise ValueError(f"{file.name}: tensor {name} has dtype {piece.get_dtype()}, expected a float")


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n
