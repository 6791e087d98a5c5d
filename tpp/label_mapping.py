"""Output label mapping for visual reprogramming (ILM-VP, Chen et al., CVPR 2023): source-class logits of a
backbone's classification head -> target-class logits, one-to-one.

- RLM: a random one-to-one map (a seeded draw of distinct source classes);
- FLM: frequency-based: the source class the (prompted) model predicts most often for each target class,
  assigned greedily on the largest count so no source class serves two targets;
- ILM: FLM recomputed every epoch on the current prompted model's predictions (:func:`iterative_mapping`).

A mapping is an integer array ``m`` of length T (target classes) holding distinct source indices: target class
``t`` reads source logit ``m[t]``. Shapes: logits (N, S), labels (N,), mapped logits (N, T).

:class:`LabelMappingHead` is the classification head for ``classification.output_mapping: rlm | flm | ilm``: the
backbone's frozen source classifier (``tpp/source_classifier.py``) read through the mapping. Nothing of it trains
(the prompt does: visual reprogramming); FLM is computed once before training and ILM again after every epoch
from the current model's source predictions on the (labelled) training images (:func:`prepare_output_mapping`).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

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


MAPPINGS = ("probe", "rlm", "flm", "ilm")


class LabelMappingHead(nn.Module):
    """Frozen source classifier + one-to-one mapping: encoder tokens -> target logits (B, T).

    Mean-patch pooling reads the patch tokens (B, N, D) every head gets; CLS pooling (``reads_prefix_tokens``)
    gets the whole output (B, P + N, D) from :class:`tpp.model.TaskModel`. ``mapping`` (T,) int64 is a buffer,
    saved in ``head.safetensors`` with the classifier."""

    def __init__(self, num_source: int, hidden_size: int, pooling: str, kind: str, mapping, num_prefix: int = 1):
        super().__init__()
        self.source = nn.Linear(hidden_size, num_source)
        self.source.requires_grad_(False)
        self.register_buffer("mapping", torch.as_tensor(np.asarray(mapping), dtype=torch.int64))
        self.pooling, self.kind, self.num_prefix = pooling, kind, num_prefix
        self.reads_prefix_tokens = pooling == "cls_token"
        self.remap = None  # set by prepare_output_mapping (flm / ilm): () -> new mapping
        self.steps_per_epoch, self.steps, self.history = 0, 0, []

    def source_logits(self, tokens: torch.Tensor, grid=None) -> torch.Tensor:
        """(B, N, D) patch tokens, or (B, P + N, D) for CLS pooling -> (B, S) source logits."""
        if self.reads_prefix_tokens:
            if grid is not None and tokens.shape[1] != grid[0] * grid[1] + self.num_prefix:
                raise TppError("this label-mapping head reads the CLS token, but it was given patch tokens only "
                               f"({tokens.shape[1]} tokens for a {grid[0]} x {grid[1]} grid); run it through "
                               "tpp.model.TaskModel (tpp evaluate / predict) rather than the adapter bank.")
            return self.source(tokens[:, 0])
        return self.source(tokens.mean(dim=1))

    def forward(self, tokens: torch.Tensor, grid=None, pixel_values=None) -> torch.Tensor:
        return apply_mapping(self.source_logits(tokens, grid), self.mapping.cpu().numpy())

    def set_mapping(self, mapping) -> None:
        mapping = np.asarray(mapping, dtype=np.int64)
        changed = not np.array_equal(mapping, self.mapping.cpu().numpy())
        self.mapping.copy_(torch.as_tensor(mapping))
        self.history.append({"step": self.steps, "mapping": mapping.tolist(), "changed": bool(changed)})

    def loop_state(self, full: bool = True) -> dict[str, torch.Tensor]:
        """What training changes outside the parameters (:mod:`tpp.training` keeps it with them): ``mapping``
        (T,) int64 in the best-on-validation state; with ``full`` (a checkpoint) also ``steps`` (1,) int64 and
        ``history`` (H, 2 + T) int64 rows ``[step, changed, *mapping]``, so a resumed ILM run continues exactly."""
        state = {"mapping": self.mapping.detach().cpu().clone()}
        if full:
            rows = [[h["step"], int(h["changed"]), *h["mapping"]] for h in self.history]
            state["steps"] = torch.tensor([self.steps], dtype=torch.int64)
            state["history"] = torch.tensor(rows, dtype=torch.int64).reshape(len(rows), 2 + len(self.mapping))
        return state

    def load_loop_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`loop_state`'s tensors (those present): the mapping, and the step counter and history."""
        mapping = state["mapping"]
        if tuple(mapping.shape) != tuple(self.mapping.shape):
            raise TppError(f"the saved label mapping has shape {tuple(mapping.shape)}, this head's "
                           f"{tuple(self.mapping.shape)}: was the config changed?")
        self.mapping.copy_(mapping.to(self.mapping.device, torch.int64))
        if "steps" in state:
            self.steps = int(state["steps"][0])
        if "history" in state:
            self.history = [{"step": int(r[0]), "changed": bool(r[1]), "mapping": r[2:].tolist()}
                            for r in state["history"]]

    def after_optimizer_step(self) -> None:
        """ILM: a new mapping from the current model after every epoch of optimiser steps."""
        self.steps += 1
        if self.kind == "ilm" and self.remap is not None and self.steps_per_epoch and \
                self.steps % self.steps_per_epoch == 0:
            self.set_mapping(self.remap())


@torch.no_grad()
def _all_source_logits(model, inputs, batch_size: int) -> torch.Tensor:
    """The model's source logits (N, S) on every image of ``inputs`` (a ModelInputs), in eval mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    try:
        for start in range(0, len(inputs), batch_size):
            x = inputs[np.arange(start, min(start + batch_size, len(inputs)))].to(device)
            tokens = model.encoder(x)
            if not model.head.reads_prefix_tokens:
                tokens = model.encoder.patch_tokens(tokens)
            out.append(model.head.source_logits(tokens, model.encoder.grid(x)).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out)


def prepare_output_mapping(model, inputs, labels: torch.Tensor, steps_per_epoch: int, eval_batch_size: int) -> None:
    """For a :class:`LabelMappingHead` with FLM / ILM: the frequency mapping of the model as it starts on the
    training images ``inputs`` (labels (N,)), and for ILM the hook recomputing it after every epoch of
    ``steps_per_epoch`` optimiser steps (the run's plan: ``ceil(N / (batch_size x processes))``). Any other head:
    nothing. A resumed run then gets its checkpoint's mapping, step counter and history back
    (:meth:`LabelMappingHead.load_loop_state`)."""
    inner = getattr(model, "module", model)
    head = getattr(inner, "head", None)
    if not isinstance(head, LabelMappingHead) or head.kind not in ("flm", "ilm"):
        return
    num_target = len(head.mapping)
    head.remap = lambda: frequency_mapping(_all_source_logits(inner, inputs, eval_batch_size), labels, num_target)
    head.steps_per_epoch = steps_per_epoch
    head.set_mapping(head.remap())
