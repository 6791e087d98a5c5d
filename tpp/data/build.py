"""From the ``data`` config section to a Dataset and model-ready tensors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tpp.data import Dataset
from tpp.data.arrays import known_origin, medmnist_fallback_problems, no_data_root, resolve_root
from tpp.data.sources import get_source
from tpp.data.tensors import to_model_tensor  # noqa: F401  (its home before; imported from here)
from tpp.errors import TppError


def load_data(data, seed: int | None, image_size: int, labels: bool = True) -> Dataset:
    """The data section ``data`` (:class:`tpp.config.DataConfig`) -> Dataset, read by its registered source;
    ``image_size`` is used to decode folders of mixed sizes.

    Sources without their own split are split by ``data.split_seed``, never by the run's ``seed`` (kept in
    the signature for callers, unused), so runs of different seeds, TPP and fine-tuning alike, share one
    split. ``labels=False`` (pre-training): MedMNIST files and .npz files with their own splits are read
    without their label arrays; sources split here still read labels to stratify."""
    options = data.resolved()
    dataset = get_source(data.source).load(data, options, data.split_seed, image_size, labels)
    dataset.hash_labels = labels  # one hash pass may cover the labels too; never for a run that reads none
    dataset.origin = data.origin or dataset.origin or named_origin(options, dataset.name)
    dataset.source = dataset.source or f"data.source={data.source}"  # for error messages (never in cards)
    return dataset


def named_origin(options, name: str) -> str | None:
    """The known collection a file's name says it holds (``breastmnist_224.npz``, ``seg/busi_64.npz`` -> BUSI),
    from the file the source reads, else from the dataset name. Never from a ``data.name`` given to a file of
    another name: one's own ``hospital.npz`` run with ``data.name=breastmnist`` (as runs from before 2026-12-02
    split) holds no BUSI images."""
    file = getattr(options, "file", None)
    if isinstance(file, str) and file.strip():
        path = Path(file.strip().rstrip("/\\"))
        return known_origin(path.stem if path.suffix.lower() == ".npz" else path.name)
    return known_origin(name)


def preflight(data, root: str | None = None) -> list[str]:
    """What can be checked of a data section before any image is read: the data root exists, the modality is
    set where the source cannot know it, and what the source checks itself (its files exist ...). ``root``:
    a default root, e.g. the run's ``data.root`` for a pool entry. Returns the problems found."""
    source = get_source(data.source)
    problems = []
    if source.needs_modality and (not data.modality or data.modality == "unknown"):
        problems.append(f"dataset '{data.name}': data.source={data.source} needs data.modality (a DICOM modality "
                        "code such as US, CR, CT, MR).")
    if data.source == "medmnist" and no_data_root(data.root or root):  # ~/.medmnist, downloaded into if absent
        return problems + medmnist_fallback_problems(data.name)
    options = data.resolved()
    file = getattr(options, "file", None)
    try:
        base = resolve_root(data.root or root)
    except TppError as exc:
        if not (isinstance(file, str) and Path(file).is_absolute()):
            return problems + [str(exc)]
        base = Path(file).parent  # an absolute data.file needs no data root (the loaders never join it to one)
    return problems + source.preflight(data, options, base)


def data_license(data) -> str:
    """The licence to record for a data section: declared (data.license), known (MedMNIST), or unknown."""
    return data.license or get_source(data.source).license(data.name) or "unknown"


def channel_rule(image_channels: int, model_channels: int) -> str:
    """How image channels become model channels; recorded in the card."""
    if image_channels == model_channels:
        return "as-is"
    if image_channels == 1:
        return f"replicate gray to {model_channels} channels"
    if model_channels == 1:
        return "RGB to luma (ITU-R 601: 0.299 R + 0.587 G + 0.114 B)"
    raise ValueError(f"cannot map {image_channels} image channels to {model_channels} model channels")


def image_channels(images: np.ndarray) -> int:
    return 1 if images.ndim == 3 else images.shape[-1]


def random_hflip(images: torch.Tensor) -> torch.Tensor:
    """Flip each image (B, C, H, W) left-right with probability 0.5 (training augmentation)."""
    flip = torch.rand(len(images), device=images.device) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
