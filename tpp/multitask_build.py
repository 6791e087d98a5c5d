"""Pieces of the multitask recipe around the schedule (:mod:`tpp.multitask`): what each task kind needs of
its config entry, the task modules (``forward(*batch) -> loss``), the evaluation-target leakage check, the
heads' saved state and the run's checkpoints."""
from __future__ import annotations

import math
import re

import torch
import torch.nn as nn

from tpp.data.build import random_hflip
from tpp.errors import ConfigError, TppError

SUPERVISED = ("classification", "segmentation")  # tasks of tpp.tasks
PRETEXTS = ("mae", "dino")  # pretexts of tpp.pretext
KINDS = SUPERVISED + PRETEXTS
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def task_name(entry) -> str:
    """The task's name: ``name`` or ``DATA.NAME-KIND``."""
    return entry.name or f"{entry.data.name}-{entry.kind}"


def options_cls_of(entry) -> type:
    """The options dataclass of the entry's task or pretext."""
    if entry.kind in SUPERVISED:
        from tpp.tasks import get_task

        return get_task(entry.kind).options_cls
    from tpp.pretext import get_pretext

    return get_pretext(entry.kind).options_cls


def options_of(entry):
    """The options dataclass of the entry's task or pretext, built from its ``head`` mapping."""
    return options_cls_of(entry)(**entry.head)


def check_entries(pool, skip=()) -> list[str]:
    """Problems of the task list (``pool``), each naming its key: kind, weight, name, head options, data keys the
    recipe never reads. ``skip``: indices of entries left unchecked (built from nothing after their own problems)."""
    problems, names = [], {}
    if not pool:
        return ["multitask needs tasks: pool=[{data: {...}, kind: classification | segmentation | mae | dino, "
                "weight: 1, head: {...}}, ...]."]
    for i, entry in enumerate(pool):
        where = f"pool[{i}]"
        if i in skip:
            continue
        if entry.kind not in KINDS:
            problems.append(f"{where}.kind must be one of {', '.join(KINDS)}, got {entry.kind!r}.")
            continue
        if not _usable_weight(entry.weight):
            problems.append(f"{where}.weight must be a finite number >= 0 (0: the task is left out), got "
                            f"{entry.weight}.")
        name = task_name(entry)
        if not _NAME.fullmatch(name):
            problems.append(f"{where}: task name {name!r} must be letters, digits, '-' or '_' (set {where}.name).")
        elif name in names:
            problems.append(f"{where}: task name {name!r} is also pool[{names[name]}]'s; set {where}.name.")
        names.setdefault(name, i)
        problems += _unread_data_keys(entry, where) + _masks_problems(entry, where)
        unknown = _unknown_head_keys(entry, where)
        if unknown:
            problems += unknown
            continue
        try:
            options = options_of(entry)
        except TypeError as exc:
            problems.append(f"{where}.head: {exc} (options of {entry.kind}; `tpp validate --keys` lists them).")
        except ConfigError as exc:
            problems.append(f"{where}.head: {exc}")
        else:
            problems += _unread_head_options(entry, options, where)
    weights = [e.weight for e in pool]
    if not skip and all(_usable_weight(w) for w in weights) and sum(weights) <= 0:
        problems.append("multitask: every pool[i].weight is 0; at least one task must have a positive weight.")
    return problems


def _usable_weight(weight) -> bool:
    """A task weight is a finite number >= 0 (NaN compares False with everything: it passed ``weight < 0``)."""
    return isinstance(weight, (int, float)) and math.isfinite(weight) and weight >= 0


def _masks_problems(entry, where: str) -> list[str]:
    """A segmentation task needs a data source with masks, a classification task one without (what each task's
    ``check_data`` refuses once the data is loaded, known from the source alone)."""
    from tpp.data.sources import all_sources, get_source

    source = getattr(entry.data, "source", None)
    if entry.kind not in SUPERVISED or not isinstance(source, str):
        return []
    try:
        masks = get_source(source, f"{where}.data.source").masks
    except ConfigError:
        return []  # an unknown source: named where the data section is built
    if entry.kind == "segmentation" and not masks:
        with_masks = " or ".join(s.name for s in all_sources() if s.masks)
        return [f"{where}: kind segmentation needs masks, but {where}.data.source={source} has none (use "
                f"{with_masks}, or kind mae / dino for its images)."]
    if entry.kind == "classification" and masks:
        return [f"{where}: {where}.data.source={source} holds segmentation masks; set {where}.kind=segmentation."]
    return []


def _unread_data_keys(entry, where: str) -> list[str]:
    """A problem line per key of the entry's data section that the recipe never reads, set off its default
    (:data:`tpp.config.schema.MULTITASK_UNREAD_DATA_KEYS`)."""
    import dataclasses

    from tpp.config.schema import MULTITASK_UNREAD_DATA_KEYS, DataConfig

    defaults = {f.name: f.default for f in dataclasses.fields(DataConfig)}
    found = []
    for key in MULTITASK_UNREAD_DATA_KEYS:
        value = getattr(entry.data, key, defaults[key])
        if value == defaults[key]:
            continue
        shared = key in ("hflip", "num_workers")
        why = (f"data.{key} sets it for every task" if shared else
               "it trains on each dataset's whole training split")
        found.append(f"{where}.data.{key}={value!r}: the multitask recipe never reads {where}.data.{key} ({why}); "
                     f"drop it{f', or set data.{key}' if shared else ''}.")
    return found


# a supervised task's options the recipe never reads: it trains heads and evaluates none (no threshold, interval
# or overlays), and its classification heads are linear probes (output_mapping's frozen source classifier would
# train nothing here, and its label mapping is never prepared from the data)
UNREAD_HEAD_OPTIONS = {"classification": ("output_mapping", "source_head", "threshold", "bootstrap_resamples"),
                       "segmentation": ("overlays",)}


def _unread_head_options(entry, options, where: str) -> list[str]:
    """A problem line per option of :data:`UNREAD_HEAD_OPTIONS` the entry's ``head`` sets off its default."""
    import dataclasses

    defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
                for f in dataclasses.fields(options)}
    found = []
    for key in UNREAD_HEAD_OPTIONS.get(entry.kind, ()):
        value = getattr(options, key)
        if key not in entry.head or value == defaults[key]:
            continue
        if key in ("output_mapping", "source_head"):
            why = ("a multitask classification head is a linear probe trained with the shared encoder; the "
                   "backbone's own classifier read through a label mapping (rlm, flm, ilm) is not supported here")
        else:
            why = "the multitask recipe trains heads and evaluates none"
        found.append(f"{where}.head.{key}={value!r}: {why}; drop it (set {entry.kind}.{key} when fine-tuning).")
    return found


def _unknown_head_keys(entry, where: str) -> list[str]:
    """A problem line (with the close option, as for any config key) per ``head`` key the task or pretext lacks."""
    import dataclasses

    from tpp.config.parse import unknown_key

    if not isinstance(entry.head, dict):
        return [f"{where}.head must be a mapping of {entry.kind}'s options, got {type(entry.head).__name__}."]
    known = {f.name for f in dataclasses.fields(options_cls_of(entry))}
    return [unknown_key(f"{where}.head.{key}", known) for key in entry.head if key not in known]


def origin_of(name: str) -> str:
    """The image collection of a dataset name or origin (``breastmnist`` -> ``BUSI``)."""
    from tpp.data.arrays import known_origin

    return known_origin(name) or name


def check_target_names(targets: list[str]) -> None:
    """An evaluation target that is no MedMNIST dataset or origin but one letter or two off one (``breastmnst``)
    is a typo that would turn the leakage refusal off: a ConfigError with the name meant. Other names (a site's
    own dataset, ``hospital_c`` beside a pool of ``hospital_a`` and ``hospital_b``) pass."""
    import difflib

    from tpp.data.arrays import MEDMNIST_ORIGINS

    known = {n.lower(): n for n in [*MEDMNIST_ORIGINS, *MEDMNIST_ORIGINS.values()]}
    for target in targets:
        close = [c for c in difflib.get_close_matches(target.lower(), list(known), n=3, cutoff=0.8)
                 if abs(len(c) - len(target)) <= 2]  # a letter or two off, not a variant (breastmnist_224)
        if target.lower() not in known and close:
            raise ConfigError(f"multitask.eval_targets: '{target}' is no dataset or origin tpp knows; did you mean "
                              f"'{known[close[0]]}'? A misspelt target turns the leakage check off for it.")


def check_eval_targets(tasks: list[tuple[str, str, str, str | None]], targets: list[str]) -> None:
    """Refuse a task whose data comes from an evaluation target's image collection. ``tasks``: (task name, kind,
    data.name, origin or None) each. One exception, as for TPP: a pretext (no labels) on the target dataset
    itself (same data.name; the recipe reads training splits only). The message names both."""
    check_target_names(targets)
    wanted = {origin_of(t).lower(): t for t in targets} | {t.lower(): t for t in targets}
    for name, kind, data_name, origin in tasks:
        for key in (origin, data_name, origin_of(data_name)):
            if not key or key.lower() not in wanted:
                continue
            target = wanted[key.lower()]
            if kind in PRETEXTS and data_name.lower() == target.lower():
                continue  # the target's own unlabeled training images, as TPP uses them
            raise TppError(
                f"multitask: task '{name}' (data '{data_name}', origin {origin or origin_of(data_name)}) comes "
                f"from the same images as the evaluation target '{target}' (origin {origin_of(target)}): the "
                f"pool must never contain an evaluation target's source. Remove task '{name}' from pool, or "
                f"'{target}' from multitask.eval_targets if you will not evaluate on it.")


class SupervisedTask(nn.Module):
    """``forward(images (B, C, S, S), targets) -> loss`` of a registered task (classification: labels (B,);
    segmentation: masks (B, h, w)) through the shared encoder and this task's head."""

    def __init__(self, encoder, head: nn.Module, task, options, hflip: bool):
        super().__init__()
        self.encoder, self.head, self.task, self.options, self.hflip = encoder, head, task, options, hflip

    def forward(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        images, targets = self.task.augment(images, targets, self.options, self.hflip)
        tokens = self.encoder.patch_tokens(self.encoder(images))
        return self.task.loss(self.head(tokens, self.encoder.grid(images), images), targets, self.options)


class PretextTask(nn.Module):
    """``forward(images (B, C, S, S)) -> loss`` of a pretext (MAE, DINO), with its own flips."""

    def __init__(self, pretext: nn.Module, hflip: bool):
        super().__init__()
        self.pretext, self.hflip = pretext, hflip

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.pretext(random_hflip(images) if self.hflip else images)


def pretext_entry(multitask: dict) -> dict:
    """The card's ``pretext`` entry of a multi-task TPP adapter: the run's ``multitask`` record named
    ``multi-task``, so `tpp compare` labels its children's init "TPP (multi-task)" as it labels "TPP (mae)"."""
    return dict(multitask, name="multi-task")


def card_modalities(card: dict) -> list[str]:
    """The modalities an adapter card's pre-training saw: each task's of a multi-task card (``multitask.tasks``,
    in pool order, each once), else the card's ``modality`` (``unknown`` without one)."""
    tasks = (card.get("multitask") or {}).get("tasks") if isinstance(card.get("multitask"), dict) else None
    seen = [str((t.get("data") or {}).get("modality") or "unknown") for t in tasks or [] if isinstance(t, dict)]
    return list(dict.fromkeys(seen)) or [str(card.get("modality") or "unknown")]


def head_state(module: nn.Module, encoder: nn.Module) -> dict[str, torch.Tensor]:
    """A task module's tensors minus the shared encoder's (its head: classifier, decoder, DINO projection
    head and centre ...), contiguous copies for safetensors."""
    shared = {id(t) for t in encoder.state_dict(keep_vars=True).values()}
    return {k: v.detach().contiguous().clone() for k, v in module.state_dict(keep_vars=True).items()
            if id(v) not in shared}


FINAL_LOSS_STEPS = 10  # a task's final_loss: the mean of its last losses


def save_state(checkpoints, step: int, root: nn.Module, schedule, units, batches, losses: list,
               processes: int, per_task: dict[str, list] | None = None) -> None:
    """One checkpoint: trainable tensors of every task, extra state (DINO teachers), every optimiser and
    scheduler, the RNG, each task's data position, the loss history and each task's last losses (its
    ``final_loss`` after a resume is the uninterrupted run's)."""
    from tpp.checkpoint import rng_state

    trainable = {n: p for n, p in root.named_parameters() if p.requires_grad}
    bad = [n for n, p in trainable.items() if not torch.isfinite(p).all()]
    if bad:
        raise TppError(f"trainable tensors became non-finite at step {step} ({', '.join(bad[:3])}); lower train.lr. "
                       f"The last good checkpoint is kept in {checkpoints.dir}.")
    extra = {}
    for unit in units:
        inner = getattr(unit.module, "pretext", None)
        if hasattr(inner, "extra_state"):
            extra.update({f"{unit.name}.{k}": v for k, v in inner.extra_state().items()})
    state = {"optimizer": schedule.optimizer.state_dict(), "scheduler": schedule.scheduler.state_dict(),
             "heads": {u.name: {"optimizer": u.optimizer.state_dict(), "scheduler": u.scheduler.state_dict(),
                                "steps": u.steps} for u in units},
             "rng": rng_state(), "batches": [b.consumed for b in batches], "losses": losses,
             "world_size": processes,
             "task_losses": {k: [float(v) for v in vs[-FINAL_LOSS_STEPS:]] for k, vs in (per_task or {}).items()}}
    checkpoints.save(step, trainable, None, extra, state)


def load_state(checkpoints, root: nn.Module, schedule, units, batches, num_steps: int, processes: int,
               draws_per_cycle: int) -> tuple:
    """Restore what :func:`save_state` wrote, once its state and tensors are checked (anything that does not fit
    is a TppError naming the checkpoint; ``draws_per_cycle``: the most batches one task can take in a cycle);
    returns (first step to run, loss history, {task: its last losses})."""
    from tpp.checkpoint import applying, check_state, restore_tensors, resync_learning_rate, set_rng_state

    trainable, _, extra, state = checkpoints.load()
    source = checkpoints.resume_from
    check_state(state, source, ("optimizer", "scheduler", "heads", "rng", "batches", "losses"),
                max_batches_per_step=max(draws_per_cycle, 1))
    if state["step"] > num_steps:
        raise TppError(f"checkpoint '{source}' is at step {state['step']}, beyond this run's {num_steps} steps; set "
                       f"train.max_steps={state['step']} or more.")
    if state.get("world_size", 1) != processes:
        raise TppError(f"checkpoint '{source}' was written by {state.get('world_size', 1)} process(es); resume it "
                       f"with --num-processes {state.get('world_size', 1)}.")
    params = {n: p for n, p in root.named_parameters() if p.requires_grad}
    heads = state["heads"] if isinstance(state["heads"], dict) else {}
    if (set(params) != set(trainable) or set(heads) != {u.name for u in units}
            or not isinstance(state["batches"], list) or len(state["batches"]) != len(batches)):
        diff = sorted(set(params) ^ set(trainable)) or sorted(set(heads) ^ {u.name for u in units}) or ["batches"]
        raise TppError(f"checkpoint '{source}' does not fit this run's tasks and trainable tensors (differing: "
                       f"{', '.join(diff[:5])}); was the config changed?")
    restore_tensors(params, trainable, source)
    with applying(source):
        for unit in units:
            own = {k.removeprefix(f"{unit.name}."): v for k, v in extra.items() if k.startswith(f"{unit.name}.")}
            if own:
                unit.module.pretext.load_extra_state(own)
            saved = heads[unit.name]
            unit.optimizer.load_state_dict(saved["optimizer"])
            unit.scheduler.load_state_dict(saved["scheduler"])
            resync_learning_rate(unit.optimizer, unit.scheduler)
            unit.steps = int(saved["steps"])
        schedule.optimizer.load_state_dict(state["optimizer"])
        schedule.scheduler.load_state_dict(state["scheduler"])
        resync_learning_rate(schedule.optimizer, schedule.scheduler)
        schedule.shared_steps = state["step"]
        for b, consumed in zip(batches, state["batches"]):
            b.skip(consumed)
        set_rng_state(state["rng"])
        losses = [(int(step), float(loss)) for step, loss in state["losses"]]
        saved = state.get("task_losses")  # absent in checkpoints written before it was kept
        task_losses = {u.name: [float(v) for v in saved.get(u.name, [])] if isinstance(saved, dict) else []
                       for u in units}
    return state["step"] + 1, losses, task_losses
