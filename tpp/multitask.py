"""The multi-task schedule (UMedPT-style): memory flat in the number of tasks. One *cycle* visits the tasks its
sampler draws. Each task's batch runs forward and backward at once, so its activations are freed before the
next task runs; the shared parameters' gradients accumulate over the cycle and ONE optimiser step for them
follows it. Each task head has its own optimiser and steps right after its task's last backward of the cycle
(once per cycle, also when the weighted sampler draws a task twice: a head never changes between two batches
of one cycle). ``schedule="summed"`` is the naive step for comparison: one loss, the weighted sum over every
task batch of the cycle, one backward (every task's activations alive at once), then the same optimiser steps.
Both give the same gradients for the same batches.

After each task's backward the schedule hands the freed heap memory back to the operating system
(:func:`release_freed_memory`, glibc's ``malloc_trim``): without it glibc keeps the freed activations of one
task in its heap, where the next task's differently shaped tensors reuse them only in part, and the cycle's
peak grew to 1.2x the largest single task's (benchmarks/README.md, "Multi-task memory").

Shapes: a task batch is ``[images (B, C, S, S), *targets]`` (targets: labels (B,), masks (B, h, w), none
for a pretext); each task module's ``forward(*batch) -> scalar loss``.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import math
import os
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn

from tpp.errors import ConfigError, TppError


def refuse_batchnorm(shared: nn.Module, what: str = "the shared backbone") -> None:
    """BatchNorm in shared blocks would mix normalisation statistics across tasks (and their batches):
    refuse it, naming the modules. LayerNorm / GroupNorm normalise per sample and are fine."""
    bad = [name for name, module in shared.named_modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
    if bad:
        raise ConfigError(f"multitask: {what} has BatchNorm layers ({', '.join(bad[:3])}"
                          f"{' ...' if len(bad) > 3 else ''}), which would mix statistics across tasks; shared blocks "
                          "must use LayerNorm or GroupNorm (a ViT backbone; an adapter method without BatchNorm).")


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none (macOS, Windows, musl)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    trim = getattr(libc, "malloc_trim", None) if libc is not None else None
    if trim is not None:
        trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_freed_memory() -> bool:
    """Return the heap memory freed so far (a task's activations and gradients) to the operating system:
    glibc's ``malloc_trim(0)`` (an allocator setting, not a change to what is computed). Without it glibc
    keeps freed chunks for reuse, and tensors of the next task's other shapes fit them only in part, so the
    resident memory of a cycle grows past its largest task's. True if memory was released; False where the
    C library has no ``malloc_trim`` (a no-op there). GPU memory is the caching allocator's and untouched."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False


M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
MMAP_THRESHOLD_BYTES = 1 << 20


def set_mmap_threshold(nbytes: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Serve every heap allocation of ``nbytes`` or more (activations, gradients: a (64, 50, 192) float32
    tensor is 2.4 MiB) from its own ``mmap``, returned to the operating system when freed: glibc's
    ``mallopt(M_MMAP_THRESHOLD)``, an allocator setting for the whole process. glibc's default threshold
    starts at 128 KiB but rises to the size of each freed mmapped chunk (up to 32 MiB), after which a task's
    large tensors come from the heap, whose free holes the next task's other shapes fit only in part. Measured
    (benchmarks/README.md, "Multi-task memory"): BUSI segmentation alone 356 -> 236 MiB above baseline, with
    BloodMNIST before it in the cycle 402 -> 236 MiB. It costs time (a zeroed mapping per large tensor: 2.0 ->
    2.8-3.1 s per task batch measured on CPU); glibc's own setting wins when given (``MALLOC_MMAP_THRESHOLD_`` or
    ``GLIBC_TUNABLES=glibc.malloc.mmap_threshold=...``), e.g. ``MALLOC_MMAP_THRESHOLD_=33554432`` for speed.
    True if set; False where the C library has no mallopt or the environment sets the threshold."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "glibc.malloc.mmap_threshold" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    name = ctypes.util.find_library("c")
    try:
        mallopt = getattr(ctypes.CDLL(name), "mallopt", None) if name else None
    except OSError:
        return False
    if mallopt is None or _malloc_trim() is None:  # mallopt's parameter numbers are glibc's
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, int(nbytes)))


class TaskSampler:
    """Which tasks one cycle visits, in order. ``cyclic``: every task once, its loss times its weight.
    ``weighted``: ``per_cycle`` draws with replacement, probability proportional to the weights, losses
    unweighted (the weight is spent on the draw, not twice). A cycle's draw depends on (seed, cycle) only,
    so a resumed run draws what the uninterrupted one would."""

    def __init__(self, weights: list[float], kind: str = "cyclic", per_cycle: int | None = None, seed: int = 0):
        if not weights or not all(math.isfinite(w) and w >= 0 for w in weights) or sum(weights) <= 0:
            raise ConfigError(f"multitask: task weights must be finite numbers >= 0 with a positive sum, got "
                              f"{weights}.")
        if kind not in ("cyclic", "weighted"):
            raise ConfigError(f"multitask.sampler must be cyclic or weighted, got {kind!r}.")
        self.weights, self.kind, self.seed = list(weights), kind, seed
        self.per_cycle = per_cycle or len(weights)

    def cycle(self, index: int) -> list[int]:
        """Task indices of cycle ``index`` (0-based)."""
        if self.kind == "cyclic":
            return [t for t, w in enumerate(self.weights) if w > 0]
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        return torch.multinomial(torch.tensor(self.weights, dtype=torch.float64), self.per_cycle, replacement=True,
                                 generator=gen).tolist()

    def loss_weight(self, task: int) -> float:
        return self.weights[task] if self.kind == "cyclic" else 1.0


@dataclass
class Unit:
    """One task: its module (``forward(*batch) -> loss``, holding the shared encoder), its head's parameters
    (trainable, not shared), the head's own optimiser and scheduler, and what runs after the shared step
    (DINO's EMA teacher)."""
    name: str
    module: nn.Module
    head_params: list
    optimizer: torch.optim.Optimizer | None = None
    scheduler: object = None
    after_shared_step: Callable | None = None
    steps: int = field(default=0)


def split_parameters(shared: nn.Module, modules: dict[str, nn.Module]) -> tuple[list, dict[str, list]]:
    """(trainable shared parameters, {task: its own trainable parameters}). The shared ones: the shared
    module's, and any that several task modules hold (e.g. one checkpoint decoder used by two MAE tasks):
    they accumulate over the cycle and step once with the shared optimiser."""
    count: dict[int, int] = {}
    for module in modules.values():
        for p in {id(p): p for p in module.parameters() if p.requires_grad}.values():
            count[id(p)] = count.get(id(p), 0) + 1
    shared_params = [p for p in shared.parameters() if p.requires_grad]
    seen = {id(p) for p in shared_params}
    for module in modules.values():
        for p in module.parameters():
            if p.requires_grad and count.get(id(p), 0) > 1 and id(p) not in seen:
                shared_params.append(p)
                seen.add(id(p))
    heads = {name: [p for p in module.parameters() if p.requires_grad and id(p) not in seen]
             for name, module in modules.items()}
    return shared_params, heads


def _sync(params: list, processes: int) -> None:
    """Average gradients over processes (each computed its shard of the task batch)."""
    if processes <= 1:
        return
    for p in params:
        if p.grad is not None:
            torch.distributed.all_reduce(p.grad)
            p.grad /= processes


def _micro(batch: list, parts: int) -> list[tuple[list, float]]:
    """(micro-batch, its share of the batch) pairs: gradient accumulation inside one task batch."""
    from tpp.training import micro_batches

    total = len(batch[0])
    return [(chunk, len(chunk[0]) / total) for chunk in micro_batches(list(batch), parts)]


class Schedule:
    """Runs cycles over ``units`` with the shared ``optimizer`` (and ``scheduler``).

    ``autocast``: a context-manager factory for the forward passes (mixed precision; default none).
    ``accum_steps``: each task batch in that many micro-batches (same gradients, less activation memory).
    ``processes``: data-parallel processes; gradients are averaged before each optimiser step.
    ``release_memory``: after each task batch's backward (summed: after the one backward), return the freed
    heap memory to the operating system (:func:`release_freed_memory`); what keeps the cycle's peak at its
    largest task's on CPU."""

    def __init__(self, shared_params: list, units: list[Unit], optimizer, scheduler=None, schedule: str = "cycle",
                 autocast: Callable = contextlib.nullcontext, accum_steps: int = 1, processes: int = 1,
                 release_memory: bool = True):
        if schedule not in ("cycle", "summed"):
            raise ConfigError(f"multitask.schedule must be cycle or summed, got {schedule!r}.")
        self.shared_params, self.units, self.optimizer, self.scheduler = shared_params, units, optimizer, scheduler
        self.schedule, self.autocast, self.accum, self.processes = schedule, autocast, accum_steps, processes
        self.release_memory, self.shared_steps = release_memory, 0

    def _loss(self, unit: Unit, chunk: list, scale: float, step: int) -> torch.Tensor:
        with self.autocast():
            loss = unit.module(*chunk) * scale
        if not torch.isfinite(loss):
            raise TppError(f"task '{unit.name}': the loss became {loss.item()} at step {step}; lower train.lr or "
                           "check its data.")
        return loss

    def _head_step(self, unit: Unit) -> None:
        _sync(unit.head_params, self.processes)
        if unit.optimizer is not None and unit.head_params:
            unit.optimizer.step()
            unit.optimizer.zero_grad(set_to_none=True)
        unit.steps += 1

    def _release(self) -> None:
        if self.release_memory:
            release_freed_memory()

    def step(self, order: list[int], batches: list[list], weights: list[float], step: int = 0) -> dict[str, float]:
        """One cycle: task ``order[i]`` on ``batches[i]`` with loss weight ``weights[i]``; then one shared
        optimiser step. Returns {task name: weighted loss} (a task drawn twice: summed)."""
        losses: dict[str, float] = {}
        if self.schedule == "cycle":
            last = {t: i for i, t in enumerate(order)}  # a head steps after its task's last batch of the cycle
            for i, (t, batch, w) in enumerate(zip(order, batches, weights)):
                unit, value = self.units[t], 0.0
                for chunk, share in _micro(batch, self.accum):
                    loss = self._loss(unit, chunk, w * share, step)
                    loss.backward()  # this task's activations are freed here
                    value += loss.item()
                losses[unit.name] = losses.get(unit.name, 0.0) + value
                if last[t] == i:
                    self._head_step(unit)
                self._release()
        else:
            for part in range(self.accum):
                total, values = 0.0, []
                for t, batch, w in zip(order, batches, weights):
                    chunks = _micro(batch, self.accum)
                    if part < len(chunks):
                        loss = self._loss(self.units[t], chunks[part][0], w * chunks[part][1], step)
                        total, values = total + loss, values + [(t, loss.item())]
                if values:  # every chunk of this part may be empty (batches smaller than accum)
                    total.backward()  # every task's activations alive until here
                for t, value in values:
                    losses[self.units[t].name] = losses.get(self.units[t].name, 0.0) + value
            for unit in _unique(self.units, order):
                self._head_step(unit)
            self._release()
        _sync(self.shared_params, self.processes)
        if self.shared_params:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            if self.scheduler is not None:
                self.scheduler.step()
        self.shared_steps += 1
        for unit in self.units:  # every head's learning rate follows the shared schedule: once per cycle
            if unit.scheduler is not None and unit.head_params:
                unit.scheduler.step()
        for unit in _unique(self.units, order):
            if unit.after_shared_step is not None:
                unit.after_shared_step()
        return losses


def _unique(units: list[Unit], order: list[int]) -> list[Unit]:
    """The units of ``order``, each once, in order of first appearance."""
    return list({t: units[t] for t in order}.values())
