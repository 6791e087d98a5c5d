"""From the ``data`` config section to a Dataset and model-ready tensors."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tpp.data import Dataset
from tpp.data.folders import load_folder, load_unlabeled_folder
from tpp.data.segmentation import load_seg_folder, load_seg_npz
from tpp.data.sources import MEDMNIST_ORIGINS, load_medmnist, load_npz, resolve_root
from tpp.errors import TppError


def load_data(data, seed: int, image_size: int, labels: bool = True) -> Dataset:
    """Dispatch on ``data.source``; ``image_size`` is used to decode folders of mixed sizes.

    ``labels=False`` (pre-training): MedMNIST files and .npz files with their own splits are read
    without their label arrays; sources split here by seed still read labels to stratify."""
    if data.source == "medmnist":
        dataset = load_medmnist(data.name, data.root, data.download, labels)
        dataset.origin = MEDMNIST_ORIGINS.get(data.name)
    elif data.source == "npz":
        dataset = load_npz(data.name, data.root, data.file, data.image_key, data.label_key, data.class_names_key,
                           data.classes, data.modality, data.val_fraction, data.test_fraction, seed, labels)
    elif data.source == "folder":
        dataset = load_folder(data.name, data.root, data.file, data.modality, image_size, data.classes,
                              data.group_key, data.val_fraction, data.test_fraction, seed, data.on_bad_file)
    elif data.source == "seg_npz":
        dataset = load_seg_npz(data, seed)
    elif data.source == "seg_folder":
        dataset = load_seg_folder(data, seed, image_size)
    else:
        dataset = load_unlabeled_folder(data.name, data.root, data.file, data.modality, image_size, data.on_bad_file)
        dataset.split_id = "all images"
    dataset.origin = data.origin or dataset.origin
    if dataset.source is None:  # image folders: where they were read, for error messages (never in cards)
        dataset.source = f"folder '{Path(data.root or os.environ.get('TPP_DATA_ROOT', '')) / (data.file or '')}'"
    return dataset


FOLDER_SOURCES = ("folder", "unlabeled_folder", "seg_folder")  # no modality inside: data.modality is required


def preflight(data, root: str | None = None) -> list[str]:
    """What can be checked of a data section before any image is read: the data root exists, ``data.file``
    exists under it, and the modality is set where the source cannot know it (``root``: a default root,
    e.g. the run's ``data.root`` for a pool entry). Returns the problems found."""
    problems = []
    if data.source in FOLDER_SOURCES and (not data.modality or data.modality == "unknown"):
        problems.append(f"dataset '{data.name}': data.source={data.source} needs data.modality (a DICOM modality "
                        "code such as US, CR, CT, MR).")
    try:
        base = resolve_root(data.root or root)
    except TppError as exc:
        return problems + [str(exc)]
    if data.file and not (base / data.file).exists():
        problems.append(f"data.file '{data.file}' does not exist under the data root '{base}'.")
    if data.source == "medmnist" and not data.download and not any(
            (base / sub / f"{data.name}.npz").is_file() for sub in ("", "medmnist")):
        problems.append(f"MedMNIST file '{data.name}.npz' is not in '{base}' or '{base / 'medmnist'}' "
                        "(data.download=true fetches it through the medmnist package).")
    return problems


def channel_rule(image_channels: int, model_channels: int) -> str:
    """How image channels become model channels; recorded in the card."""
    if image_channels == model_channels:
        return "as-is"
    if image_channels == 1:
        return f"replicate gray to {model_channels} channels"
    if model_channels == 1:
        return "RGB to luma (ITU-R 601: 0.299 R + 0.587 G + 0.114 B)"
    raise ValueError(f"cannot map {image_channels} image channels to {model_channels} model channels")


def to_model_tensor(images: np.ndarray, channels: int, image_size: int, mean: list, std: list) -> torch.Tensor:
    """uint8 (N, H, W[, C]) -> float32 (N, channels, image_size, image_size), normalised.

    Pixels are scaled to [0, 1], gray is replicated / RGB turned to luma as the backbone needs,
    images are resized (bilinear, antialiased) when their size differs, then ``(x - mean) / std``.
    """
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    if x.shape[1] == 1 and channels > 1:
        x = x.expand(-1, channels, -1, -1)
    elif x.shape[1] == 3 and channels == 1:
        x = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    if x.shape[-1] != image_size or x.shape[-2] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
    mean_t = torch.tensor(mean).view(1, -1, 1, 1)
    std_t = torch.tensor(std).view(1, -1, 1, 1)
    return ((x - mean_t) / std_t).contiguous()


def image_channels(images: np.ndarray) -> int:
    return 1 if images.ndim == 3 else images.shape[-1]


def random_hflip(images: torch.Tensor) -> torch.Tensor:
    """Flip each image (B, C, H, W) left-right with probability 0.5 (training augmentation)."""
    flip = torch.rand(len(images), device=images.device) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
