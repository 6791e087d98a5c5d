"""Training loop pieces shared by the recipes: Accelerate setup, batches, AdamW + warm-up/cosine,
a step loop with periodic validation and best-on-validation selection."""
from __future__ import annotations

import contextlib
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from tpp.checkpoint import (Checkpointer, applying, check_state, check_tensors, resync_learning_rate, restore_tensors,
                            rng_state, set_rng_state)
from tpp.devices import describe as describe_device
from tpp.devices import resolve as resolve_device
from tpp.errors import TppError
from tpp.trackers import TRACKER_PACKAGES, tracker_problem
from tpp.model import restore_trainable, trainable_state


def build_accelerator(mixed_precision: str, seed: int, run=None, find_unused_parameters: bool = False,
                      log_with: str | None = None, device: str = "auto") -> Accelerator:
    """An Accelerator on the config's ``device`` (see :mod:`tpp.devices`); mixed precision from the config.

    ``auto`` takes a GPU when there is one. Without a GPU, ``cpu=True`` lets several processes
    (``tpp run --num-processes N``, torchrun) form a gloo group: Accelerate would otherwise run each of them
    as an independent single process. With several processes each takes the GPU of its local rank, so only
    ``auto``, ``cpu`` and ``cuda`` fit there. ``find_unused_parameters`` is for models whose heads do not all
    see every batch (pretrain_backbone). The device is printed, logged (``log.jsonl``: event ``device``) and
    is ``accelerator.device`` for the recipe's ``metrics.json``.
    """
    from accelerate.utils import DistributedDataParallelKwargs

    kwargs = [DistributedDataParallelKwargs(find_unused_parameters=True)] if find_unused_parameters else []
    problem = tracker_problem(log_with)
    if problem:
        raise TppError(problem)
    tracker = {"log_with": log_with, "project_dir": str(run.path)} if log_with and run is not None else {}
    with _placed_on(device):
        accelerator = Accelerator(mixed_precision=mixed_precision, cpu=resolve_device(device).type == "cpu",
                                  kwargs_handlers=kwargs, **tracker)
    if tracker:
        try:
            accelerator.init_trackers("tracker")
        except (ImportError, ModuleNotFoundError) as exc:
            raise TppError(f"train.log_with={log_with} needs its package ({exc}): pip install "
                           f"{TRACKER_PACKAGES.get(log_with, log_with)}.") from None
    set_seed(seed)
    if accelerator.num_processes > 1:
        print(f"[tpp] process rank {accelerator.process_index} of world size {accelerator.num_processes} "
              f"({accelerator.distributed_type.value})", file=sys.stderr, flush=True)
    if accelerator.is_main_process:
        print(f"[tpp] device {describe_device(accelerator.device)}, mixed precision {mixed_precision}"
              f"{f', {accelerator.num_processes} processes' if accelerator.num_processes > 1 else ''}",
              file=sys.stderr, flush=True)
    if run is not None:
        run.log(event="processes", world_size=accelerator.num_processes,
                backend=str(accelerator.distributed_type.value))
        run.log(event="device", device=str(accelerator.device), requested=device,
                name=describe_device(accelerator.device), mixed_precision=mixed_precision)
    return accelerator


def _distributed() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 or "LOCAL_RANK" in os.environ


@contextlib.contextmanager
def _placed_on(device: str):
    """Make the Accelerator built inside the block use ``device``.

    One process: Accelerate takes an explicit device from ``ACCELERATE_TORCH_DEVICE`` (set for the block
    only), and its process-wide state from an earlier run in this process is reset when it sits elsewhere.
    Several processes: Accelerate places each on its local rank's GPU; a fixed ``cuda:N`` is refused."""
    from accelerate.state import AcceleratorState, PartialState

    target = resolve_device(device)
    if _distributed():
        if device.strip().lower().startswith("cuda:"):
            raise TppError(f"device={device} fixes one GPU, but this run has several processes (each takes the "
                           "GPU of its local rank): use device=cuda or auto, and CUDA_VISIBLE_DEVICES to choose GPUs.")
        yield
        return
    if PartialState._shared_state and PartialState._shared_state.get("device") != target:
        AcceleratorState._reset_state(reset_partial_state=True)  # an earlier run in this process, elsewhere
    saved = os.environ.get("ACCELERATE_TORCH_DEVICE")
    os.environ["ACCELERATE_TORCH_DEVICE"] = str(target)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("ACCELERATE_TORCH_DEVICE", None)
        else:
            os.environ["ACCELERATE_TORCH_DEVICE"] = saved


def make_loader(*tensors: torch.Tensor, batch_size: int, shuffle: bool, seed: int = 0) -> DataLoader:
    """Batches of in-memory tensors; shuffling uses its own seeded generator."""
    gen = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(TensorDataset(*tensors), batch_size=batch_size, shuffle=shuffle, generator=gen,
                      drop_last=False)


@dataclass
class StepPlan:
    num_steps: int
    steps_per_epoch: int
    eval_every: int


def plan_steps(train, num_examples: int, processes: int = 1) -> StepPlan:
    """``train.max_steps`` wins over ``train.epochs``; with epochs the run takes at least ``train.min_steps``
    steps (when set), so the budget scales with the labelled images down to a floor. Validation runs every
    ``train.eval_every`` steps, by default once per epoch but at most about 20 times per run (tiny label sets
    have 1-step epochs). With several processes an epoch takes fewer steps: each process sees its shard."""
    per_epoch = max(1, math.ceil(num_examples / (train.batch_size * processes)))
    if train.max_steps is not None:
        num_steps = train.max_steps
    else:
        num_steps = max(train.epochs * per_epoch, train.min_steps or 0)
    eval_every = train.eval_every or min(max(per_epoch, num_steps // 20), num_steps)
    return StepPlan(num_steps, per_epoch, eval_every)


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, head_lr_scale: float = 1.0,
                   head_prefix: str = "head.", beta2: float = 0.999) -> torch.optim.AdamW:
    """AdamW over trainable parameters only; the task head may get a scaled learning rate."""
    head, body = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (head if name.startswith(head_prefix) else body).append(param)
    groups = [g for g in ({"params": body, "lr": lr}, {"params": head, "lr": lr * head_lr_scale}) if g["params"]]
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, betas=(0.9, beta2))


def make_scheduler(optimizer, warmup_ratio: float, num_steps: int):
    return get_cosine_schedule_with_warmup(optimizer, int(warmup_ratio * num_steps), num_steps)


class Batches:
    """Endless batches, epoch after epoch (the loader reshuffles each pass). Counts what it handed out,
    so a resumed run replays the same seeded loader and skips exactly that many."""

    def __init__(self, loader):
        self.loader, self.consumed, self._it = loader, 0, None

    def __next__(self):
        while True:
            if self._it is None:
                self._it = iter(self.loader)
            try:
                batch = next(self._it)
            except StopIteration:
                self._it = None
                continue
            self.consumed += 1
            return batch

    def skip(self, n: int) -> None:
        for _ in range(n):
            next(self)


def checkpointer(train, run) -> Checkpointer:
    """The run's Checkpointer from ``train.checkpoint_every`` / ``keep_checkpoints`` / ``resume``."""
    return Checkpointer(run.path, train.checkpoint_every, train.keep_checkpoints, train.resume, run.main)


@dataclass
class LoopResult:
    best_score: float | None = None
    best_step: int | None = None
    losses: list = field(default_factory=list)  # (step, loss)


def micro_batches(batch: list, parts: int) -> list[list]:
    """Split a loader batch (a list of tensors with a common first dimension) into ``parts`` chunks."""
    if parts == 1:
        return [batch]
    return [list(chunk) for chunk in zip(*(t.tensor_split(parts) for t in batch)) if len(chunk[0])]


def accumulated_loss(accelerator: Accelerator, model, loss_fn: Callable, batch: list, parts: int, step: int) -> float:
    """Backward ``loss_fn`` over ``parts`` micro-batches of ``batch``, each weighted by its share of the
    batch, so the summed gradient equals the full batch's (mean-reduced losses, no random augmentation).
    Gradients are synchronised across processes only on the last micro-batch. Returns the batch loss."""
    chunks = micro_batches(batch, parts)
    total, value = len(batch[0]), 0.0
    for i, chunk in enumerate(chunks):
        sync = contextlib.nullcontext() if i == len(chunks) - 1 else accelerator.no_sync(model)
        with sync:
            with accelerator.autocast():
                loss = loss_fn(model, chunk) * (len(chunk[0]) / total)
            if not torch.isfinite(loss):
                raise TppError(f"the loss became {loss.item()} at step {step}; lower train.lr or check the data.")
            accelerator.backward(loss)
        value += loss.item()
    return value


def step_bar(first: int, num_steps: int, desc: str, main: bool = True):
    """The progress bar over training steps ``first..num_steps``: cleared when done on a terminal; in a log
    (stderr not a terminal) updated every 10 s and left as its last line, so what is printed next starts a line."""
    terminal = sys.stderr.isatty()
    return tqdm(range(first, num_steps + 1), desc=desc, disable=not main, leave=not terminal, initial=first - 1,
                total=num_steps, mininterval=0.5 if terminal else 10.0)


def train_loop(accelerator: Accelerator, model: torch.nn.Module, loss_fn: Callable, loader, optimizer,
               scheduler, num_steps: int, log: Callable, eval_fn: Callable | None = None,
               eval_every: int = 0, desc: str = "train", accum_steps: int = 1,
               checkpoints: Checkpointer | None = None) -> LoopResult:
    """Run ``num_steps`` optimiser steps of ``loss_fn(model, batch) -> loss``, each over ``accum_steps``
    micro-batches of the loader's batch (same result as one pass, less activation memory).

    Every ``eval_every`` steps (and at the end) ``eval_fn(model) -> (score, metrics)`` is called; the
    trainable tensors of the best score are restored at the end (a NaN score, e.g. AUROC on a validation split
    with one class, is never best: with no finite score the last step is kept). A non-finite loss stops the run (the
    last checkpoint stays). With ``checkpoints``, state is saved every ``checkpoint_every`` steps and a
    resumed run continues from its checkpoint exactly as if it had never stopped.
    """
    result = LoopResult()
    best_state = None
    after_step = getattr(accelerator.unwrap_model(model), "after_optimizer_step", None)
    batches = Batches(loader)
    first = 1
    if checkpoints is not None and checkpoints.resume_from is not None:
        first, best_state = resume(checkpoints, accelerator, model, optimizer, scheduler, batches, result, num_steps)
        log(event="resumed", step=first - 1, checkpoint=checkpoints.resume_from.name, steps=num_steps)
    elif checkpoints is not None and checkpoints.asked and accelerator.is_main_process:  # e.g. killed before one
        print(f"[tpp] train.resume={checkpoints.asked}: no checkpoint in '{checkpoints.dir}' yet; training starts "
              "at step 1", file=sys.stderr, flush=True)
        log(event="resume_found_no_checkpoint", steps=num_steps)
    model.train()
    bar = step_bar(first, num_steps, desc, accelerator.is_main_process)
    for step in bar:
        value = accumulated_loss(accelerator, model, loss_fn, next(batches), accum_steps, step)
        optimizer.step()
        if after_step is not None:  # e.g. DINO's EMA teacher: once per optimiser step
            after_step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        result.losses.append((step, value))
        bar.set_postfix(loss=f"{value:.4f}", refresh=False)
        log(event="step", step=step, loss=value, lr=scheduler.get_last_lr()[0])
        # no-op without trackers
        accelerator.log({"train/loss": value, "train/lr": scheduler.get_last_lr()[0]}, step=step)
        if eval_fn is not None and (step % eval_every == 0 or step == num_steps):
            model.eval()
            score, metrics = eval_fn(model)
            model.train()
            log(event="eval", step=step, **metrics)
            accelerator.log({f"val/{k.removeprefix('val_')}": v for k, v in metrics.items()}, step=step)
            if math.isfinite(score) and (result.best_score is None or score > result.best_score):
                result.best_score, result.best_step = score, step
                best_state = best_snapshot(model)
        if checkpoints is not None and checkpoints.due(step, num_steps):
            save_checkpoint(checkpoints, step, accelerator, model, optimizer, scheduler, batches, result, best_state)
    model.eval()
    for tracker in accelerator.trackers:  # flush; not end_training(), which also ends the process group
        tracker.finish()
    if best_state is not None:
        restore_best(model, best_state)
    return result


LOOP = "loop:"  # key prefix of a module's loop state among trainable tensors (best state) or extra (checkpoint)


def loop_state(model: torch.nn.Module, full: bool = True) -> dict[str, torch.Tensor]:
    """What submodules change in training outside their parameters (``loop_state(full)``, e.g. a label-mapping
    head's mapping; with ``full`` also its step counter and history), keyed ``loop:<module name>:<key>``."""
    return {f"{LOOP}{name}:{key}": value for name, module in model.named_modules()
            if callable(getattr(module, "loop_state", None)) for key, value in module.loop_state(full).items()}


def check_loop_keys(model: torch.nn.Module, state: dict[str, torch.Tensor], source) -> None:
    """Refuse loop-state entries of ``state`` (a checkpoint's) naming a module this model lacks or that keeps
    none, before anything is applied."""
    modules = dict(model.named_modules())
    for key in state:
        name = key[len(LOOP):].rpartition(":")[0] if key.startswith(LOOP) else None
        if name is not None and not callable(getattr(modules.get(name), "load_loop_state", None)):
            raise TppError(f"checkpoint '{source}' holds loop state of module '{name}', which this model lacks or "
                           "which keeps none: was the config changed?")


def load_loop_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Give each submodule back its :func:`loop_state` entries (keys without the ``loop:`` prefix are ignored)."""
    modules, own = dict(model.named_modules()), {}
    for key, value in state.items():
        if key.startswith(LOOP):
            name, _, sub = key[len(LOOP):].rpartition(":")
            own.setdefault(name, {})[sub] = value
    for name, entries in own.items():
        if name not in modules or not callable(getattr(modules[name], "load_loop_state", None)):
            raise TppError(f"saved training state names module '{name}', which this model lacks or which keeps no "
                           "loop state: was the config changed?")
        modules[name].load_loop_state(entries)


def best_snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Copies of every trainable tensor and of the state selected with them (a label mapping): the best step."""
    return {**trainable_state(model), **loop_state(model, full=False)}


def restore_best(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Put :func:`best_snapshot`'s tensors back: the parameters and the mapping that scored together."""
    restore_trainable(model, {k: v for k, v in state.items() if not k.startswith(LOOP)})
    load_loop_state(model, state)


@torch.no_grad()
def predict_probs(accelerator: Accelerator, model: torch.nn.Module, images, batch_size: int,
                  num_workers: int = 0) -> torch.Tensor:
    """Softmax probabilities (N, K) for images (see :func:`predict`), in order."""
    return predict(accelerator, model, images, batch_size, lambda logits: torch.softmax(logits.float(), dim=-1),
                   num_workers)


def predict(accelerator: Accelerator, model: torch.nn.Module, images, batch_size: int, postprocess,
            num_workers: int = 0) -> torch.Tensor:
    """``postprocess(model(batch))`` for every image, concatenated in order. ``images``: normalised
    (N, C, H, W), or :class:`tpp.data.stream.ModelInputs` (stored images converted one batch at a time, in
    ``num_workers`` processes).

    With several processes each computes its slice of each block of images and the slices are gathered
    (:func:`predict_batches`), so every image is evaluated once (a few of the last block's twice, dropped) and
    every process returns all N rows.
    """
    return torch.cat([rows for _, rows in predict_batches(accelerator, model, images, batch_size, postprocess,
                                                          num_workers)])


def predict_batches(accelerator: Accelerator, model: torch.nn.Module, images, batch_size: int, postprocess,
                    num_workers: int = 0) -> Iterator[tuple[int, torch.Tensor]]:
    """``(start, postprocess(model(images[start:start + B])))`` for each batch of ``batch_size`` images, in order, on
    the CPU: what :func:`predict` concatenates, handed over as it is computed, so a caller that scores and writes
    each batch holds one batch of outputs (B, ...), never N.

    With P processes the split is stepped over in blocks of ``batch_size * P`` images: each process predicts its
    contiguous slice of the block (:func:`block_slices`), the slices are gathered and every process hands over the
    block's rows ``batch_size`` at a time (a block of outputs (B * P, ...) held, never N). Every process makes the
    same gathers, of the same size: the last, uneven block's slices are padded with its last image, whose extra
    rows are dropped."""
    world = accelerator.num_processes
    if world == 1:
        start = 0
        for out in _outputs(accelerator, model, images, torch.arange(len(images)), batch_size, postprocess,
                            num_workers):
            yield start, out
            start += len(out)
        return
    blocks = block_slices(len(images), batch_size, world, accelerator.process_index)
    mine = torch.cat([index for _, _, index in blocks]) if blocks else torch.arange(0)
    outputs = _outputs(accelerator, model, images, mine, batch_size, postprocess, num_workers)
    for (start, stop, _), out in zip(blocks, outputs):  # a block's slice is one batch of ``mine``
        rows = accelerator.gather(out.to(accelerator.device)).cpu()[:stop - start]  # (P * slice, ...) by rank
        for offset in range(0, stop - start, batch_size):
            yield start + offset, rows[offset:offset + batch_size]


def block_slices(count: int, batch_size: int, world: int, rank: int) -> list[tuple[int, int, torch.Tensor]]:
    """(start, stop, indices) of each block of ``batch_size * world`` of ``count`` images: ``indices`` (S,) is
    process ``rank``'s contiguous slice of the block, ``S = ceil((stop - start) / world)`` images on every
    process (at most ``batch_size``), the last block's slices padded with the block's last image. Gathered in
    rank order, the first ``stop - start`` rows of the slices are the block's images in order."""
    blocks = []
    for start in range(0, count, batch_size * world):
        stop = min(start + batch_size * world, count)
        size = -(-(stop - start) // world)
        blocks.append((start, stop, (start + rank * size + torch.arange(size)).clamp(max=stop - 1)))
    return blocks


def _outputs(accelerator: Accelerator, model: torch.nn.Module, images, index: torch.Tensor, batch_size: int,
             postprocess, num_workers: int) -> Iterator[torch.Tensor]:
    """``postprocess(model(batch))`` on the CPU for the images at ``index`` (in order), ``batch_size`` at a time."""
    from tpp.data.stream import index_batches

    model = accelerator.unwrap_model(model).eval()  # no collective calls inside the forward
    if isinstance(images, torch.Tensor):
        batches = (images[chunk] for chunk in index.split(batch_size))
    else:
        batches = index_batches(images, index, batch_size, num_workers)
    count = -(-len(index) // batch_size)
    shown = accelerator.is_main_process and sys.stderr.isatty() and count >= 20  # a long pass, on a terminal
    for batch in tqdm(batches, desc="predict", total=count, leave=False, disable=not shown):
        with accelerator.autocast(), torch.no_grad():
            out = postprocess(model(batch.to(accelerator.device))).cpu()
        yield out


def loss_curve(losses: list, points: int = 50) -> list:
    """(step, loss) pairs averaged over windows: a short curve for the card."""
    window = max(1, len(losses) // points)
    return [[losses[min(i + window, len(losses)) - 1][0], float(np.mean([v for _, v in losses[i:i + window]]))]
            for i in range(0, len(losses), window)]


def save_checkpoint(checkpoints: Checkpointer, step: int, accelerator, model, optimizer, scheduler, batches: Batches,
                    result: LoopResult, best_state: dict | None) -> None:
    unwrapped = accelerator.unwrap_model(model)
    trainable = {n: p for n, p in unwrapped.named_parameters() if p.requires_grad}
    bad = [n for n, p in trainable.items() if not torch.isfinite(p).all()]
    if bad:  # never let a broken state push a good checkpoint out
        raise TppError(f"trainable tensors became non-finite at step {step} ({', '.join(bad[:3])}); lower train.lr. "
                       f"The last good checkpoint is kept in {checkpoints.dir}.")
    extra = {**(unwrapped.extra_state() if hasattr(unwrapped, "extra_state") else {}), **loop_state(unwrapped)}
    state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state(),
             "batches": batches.consumed, "losses": result.losses, "best_score": result.best_score,
             "best_step": result.best_step, "world_size": accelerator.num_processes}
    checkpoints.save(step, trainable, best_state, extra, state)


def resume(checkpoints: Checkpointer, accelerator, model, optimizer, scheduler, batches: Batches,
           result: LoopResult, num_steps: int | None = None) -> tuple[int, dict | None]:
    """Load the checkpoint into model, optimiser, scheduler, data position, RNG and history, once its state and
    tensors are checked (:func:`tpp.checkpoint.check_state`, :func:`tpp.checkpoint.restore_tensors`; anything that
    still does not fit is a :class:`TppError` naming the checkpoint).

    ``num_steps``: the run's total now, which may exceed the one the checkpoint was written under (a run
    extended with a larger ``train.max_steps``). The scheduler's position is restored but its curve is this
    run's (``make_scheduler`` for ``num_steps``): an extended run continues on the warm-up + cosine schedule
    planned for the new total, from the checkpoint's step (the learning rate steps up to that curve).

    Returns (first step to run, best-on-validation tensors or None)."""
    trainable, best, extra, state = checkpoints.load()
    source = checkpoints.resume_from
    check_state(state, source, ("optimizer", "scheduler", "rng", "batches", "losses", "best_score", "best_step"),
                max_batches_per_step=1)  # one loader batch per step (accumulation splits it)
    if num_steps is not None and state["step"] > num_steps:
        raise TppError(f"checkpoint '{source}' is at step {state['step']}, beyond this run's "
                       f"{num_steps} steps; set train.max_steps={state['step']} or more.")
    if state.get("world_size", 1) != accelerator.num_processes:
        raise TppError(f"checkpoint '{source}' was written by {state.get('world_size', 1)} "
                       f"process(es); resume it with --num-processes {state.get('world_size', 1)}.")
    unwrapped = accelerator.unwrap_model(model)
    params = {n: p for n, p in unwrapped.named_parameters() if p.requires_grad}
    if set(params) != set(trainable):
        diff = sorted(set(params) ^ set(trainable))
        raise TppError(f"checkpoint '{source}' does not fit this run's trainable tensors "
                       f"(differing: {', '.join(diff[:5])}{' ...' if len(diff) > 5 else ''}); was the config changed?")
    if best is not None:
        best_params = {k: v for k, v in best.items() if not k.startswith(LOOP)}
        if set(best_params) != set(params):
            raise TppError(f"checkpoint '{source}': best.safetensors does not hold this run's trainable tensors; "
                           "was the config changed?")
        check_tensors(params, best_params, source, "best-step tensor")
        check_loop_keys(unwrapped, best, source)  # applied only at the end of the run: checked now
    restore_tensors(params, trainable, source)
    with applying(source):
        own = {k: v for k, v in extra.items() if not k.startswith(LOOP)}
        if own:
            unwrapped.load_extra_state(own)
        load_loop_state(unwrapped, extra)  # e.g. the ILM mapping, its step counter and history
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        resync_learning_rate(optimizer, scheduler)
        batches.skip(state["batches"])
        set_rng_state(state["rng"])
        result.losses = [(int(step), float(loss)) for step, loss in state["losses"]]
        result.best_score, result.best_step = state["best_score"], state["best_step"]
    return state["step"] + 1, best
