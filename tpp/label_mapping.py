"""Output label mapping for visual reprogramming (ILM-VP, Chen et al., CVPR 2023): source-class logits of a
backbone's classification head -> target-class logits, one-to-one.

- RLM: a random one-to-one map (a seeded draw of distinct source classes);
- FLM: frequency-based: the source class the (prompted) model predicts most often for each target class,
  assigned greedily on the largest count so no source class serves two targets;
- ILM: FLM recomputed every epoch on the current prompted model's predictions (:func:`iterative_mapping`).

A mapping is an integer array ``m`` of length T (target classes) holding distinct source indices: target class
``t`` reads source logit ``m[t]``. Shapes: logits (N, S), labels (N,), mapped logits (N, T).

Only the mapping functions live here: wiring them into fine-tuning needs a backbone whose card keeps a source
classification head (and the pooling it reads), which no tpp recipe saves yet.
"""
from __future__ import annotations

import numpy as np
import torch

from tpp.errors import TppError


def _check(num_source: int, num_target: int) -> None:
    if num_target > num_source:
        raise TppError(f"a one-to-one label mapping needs at least as many source classes as target classes "
                       f"({num_source} source < {num_target} target).")


def random_mapping(num_source: int, num_target: int, seed: int = 0) -> np.ndarray:
    """RLM: ``num_target`` distinct source classes drawn at random (seeded). (T,) int64."""
    _check(num_source, num_target)
    return np.random.default_rng(seed).permutation(num_source)[:num_target].astype(np.int64)


def frequency_matrix(source_logits: torch.Tensor, labels: torch.Tensor, num_target: int) -> np.ndarray:
    """(S, T) counts: how often an image of target class t gets source class s as its top prediction."""
    top = source_logits.argmax(dim=1).cpu().numpy()
    counts = np.zeros((source_logits.shape[1], num_target), dtype=np.int64)
    np.add.at(counts, (top, labels.cpu().numpy().astype(np.int64)), 1)
    return counts


def frequency_mapping(source_logits: torch.Tensor, labels: torch.Tensor, num_target: int) -> np.ndarray:
    """FLM: repeatedly take the largest remaining count (s, t), map t -> s and drop row s and column t; ties go
    to the lower indices. (T,) int64 of distinct source classes."""
    _check(source_logits.shape[1], num_target)
    counts = frequency_matrix(source_logits, labels, num_target).astype(np.float64)
    mapping = np.full(num_target, -1, dtype=np.int64)
    for _ in range(num_target):
        s, t = np.unravel_index(np.argmax(counts), counts.shape)
        mapping[t] = s
        counts[s, :] = -1
        counts[:, t] = -1
    return mapping


def iterative_mapping(source_logits: torch.Tensor, labels: torch.Tensor, num_target: int) -> np.ndarray:
    """ILM: the frequency mapping of the current epoch's predictions (call it once per epoch with the prompted
    model's source logits on the training images)."""
    return frequency_mapping(source_logits, labels, num_target)


def apply_mapping(source_logits: torch.Tensor, mapping: np.ndarray) -> torch.Tensor:
    """(N, S) source logits -> (N, T) target logits under a one-to-one ``mapping``."""
    mapping = np.asarray(mapping)
    if len(set(mapping.tolist())) != len(mapping):
        raise TppError(f"label mapping {mapping.tolist()} maps two target classes to one source class.")
    return source_logits[:, torch.as_tensor(mapping, device=source_logits.device)]
