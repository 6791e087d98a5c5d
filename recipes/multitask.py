"""Multi-task pre-training across datasets and label types (UMedPT-style), memory flat in the number of tasks.

    tpp run multitask --config recipes/configs/multitask/tpp_pool.yaml        # target parameters (multi-task TPP)
    tpp run multitask --config recipes/configs/multitask/backbone_pool.yaml   # the whole backbone

Tasks are the ``pool`` entries: each a data section, a ``kind`` (classification, segmentation, mae, dino), its
``head`` options and a ``weight``. The schedule (:mod:`tpp.multitask`): each task's batch runs forward and
backward at once (activations freed), shared gradients accumulate over one cycle, then one shared optimiser
step; each head has its own AdamW and steps right after its task. ``multitask.schedule=summed`` is the naive
single-loss step, for comparison. Scope ``target``: only the adapter's target parameters train on the frozen
backbone; writes ``adapter/`` (usable as ``adapter.init_from``; its card lists every task with its data hashes
and licence). Scope ``backbone``: every weight of a ViT-MAE backbone trains (continued pre-training from
``backbone.path``); writes ``backbone/`` in transformers' format, loadable by every recipe (as
``pretrain_backbone``'s). Both write ``heads/`` (one safetensors file per task + ``heads.json``). A task from
the same images as a ``multitask.eval_targets`` entry is refused. One epoch = one pass over the largest task.
"""
from __future__ import annotations

import dataclasses
import json
import types

import torch

from tpp.adapters.visual_prompt import declared_frame
from tpp.adapter_dir import dir_size, make_card, versions, write_adapter_dir
from tpp.backbones import backbone_hash, load_backbone
from tpp.builders import input_rule, record_skipped
from tpp.data.build import data_license, load_data
from tpp.data.stream import ModelInputs, stream_loader
from tpp.errors import ConfigError, TppError
from tpp.model import attach_adapter, trainable_parameters
from tpp.multitask import Schedule, TaskSampler, Unit, refuse_batchnorm, set_mmap_threshold, split_parameters
from tpp.multitask_build import (FINAL_LOSS_STEPS, SUPERVISED, PretextTask, SupervisedTask, check_entries,
                                 check_eval_targets, head_state, load_state, options_of, pretext_entry, save_state,
                                 task_name)
from tpp.training import (Batches, build_accelerator, checkpointer, loss_curve, make_scheduler, plan_steps,
                          step_bar)


def check(cfg) -> None:
    """What this recipe needs of the config alone (``tpp validate`` runs it too)."""
    from tpp.adapters import all_methods, get_method

    problems = check_entries(cfg.pool)
    if cfg.train.mixed_precision == "fp16":
        problems.append("multitask: train.mixed_precision=fp16 is not supported (one loss scaler cannot serve the "
                        "shared and per-head optimisers); use bf16 or no.")
    if cfg.multitask.scope == "target" and not get_method(cfg.adapter.method).pretrainable:
        problems.append(f"adapter.method={cfg.adapter.method} has no target parameters to pre-train; multi-task TPP "
                        f"applies to: {', '.join(m.name for m in all_methods() if m.pretrainable)}.")
    if cfg.multitask.scope == "backbone":
        problems += _backbone_scope_problems(cfg.backbone.path)
    if cfg.multitask.scope == "target" and declared_frame(cfg.adapter.method, cfg.adapter.resolved_options()):
        problems.append(f"multitask: adapter.mode=pad (a padding visual prompt: the default of {cfg.adapter.method}) "
                        "is not supported yet: the multi-task cycle does not place its images inside the frame, so "
                        "the prompt would overwrite their border and the card would record no frame. Set "
                        "adapter.mode=full (composed: adapter.visual_prompt.mode=full).")
    if problems:
        raise ConfigError(problems[0] if len(problems) == 1 else
                          f"{len(problems)} multitask config problems:\n" + "\n".join(f"  - {p}" for p in problems))
    check_eval_targets([(task_name(e), e.kind, e.data.name, e.data.origin) for e in cfg.pool],
                       cfg.multitask.eval_targets)


def _backbone_scope_problems(path: str) -> list[str]:
    """Scope ``backbone`` trains and saves a ViT-MAE (encoder and decoder): the checkpoint's config must say so,
    and its weights must hold the decoder, whatever the pool's tasks: the saved backbone carries it, and a later
    MAE pretext (``pretext.decoder=auto``) uses it frozen as a pre-trained decoder, so transformers' random one
    must never be saved in its place. Only config.json and the safetensors headers are read; a checkpoint that
    does not resolve is named by `tpp validate`'s backbone check, and one whose weights cannot be told without
    loading (a hub id) is checked when the run loads it."""
    from tpp.backbones import backbone_config, decoder_weights

    try:
        model_type = getattr(backbone_config(path), "model_type", None)
    except TppError:
        return []
    if model_type != "vit_mae":
        return [f"multitask.scope=backbone trains and saves a ViT-MAE checkpoint; backbone.path '{path}' is "
                f"{model_type}. Use multitask.scope=target (adapters) on it."]
    report = decoder_weights(path)
    return [decoder_refusal(path, report)] if report and not report.whole else []


def decoder_refusal(path: str, report) -> str:
    """Why scope ``backbone`` refuses ViT-MAE ``path`` whose weights lack some or all of its decoder (``report``:
    :class:`tpp.backbones.DecoderWeights`, None when not known: as none)."""
    if report is None or not report.present:
        return no_decoder(path)
    return (f"multitask.scope=backbone trains and saves a ViT-MAE checkpoint with its decoder; backbone.path "
            f"'{path}' holds part of it: {report.describe()}; transformers would complete it with random "
            "weights. Use the checkpoint saved with its whole decoder, or multitask.scope=target (adapters).")


def no_decoder(path: str) -> str:
    """Why scope ``backbone`` refuses a ViT-MAE checkpoint saved without its decoder."""
    return (f"multitask.scope=backbone trains and saves a ViT-MAE checkpoint with its decoder; backbone.path "
            f"'{path}' holds no decoder weights (an encoder-only save, e.g. ViTMAEModel), so the saved decoder would "
            "be a random one passed off as pre-trained. Use the checkpoint saved with its decoder "
            "(ViTMAEForPreTraining), or multitask.scope=target (adapters) on this one.")


def _optimizer(params: list, lr: float, cfg) -> torch.optim.AdamW:
    return torch.optim.AdamW(params or [torch.nn.Parameter(torch.zeros(1))], lr=lr,
                             weight_decay=cfg.train.weight_decay, betas=(0.9, cfg.train.adam_beta2))


def load_tasks(cfg, info) -> list[tuple]:
    """Every task's data: (entry, dataset, training images as ModelInputs, targets or None). Only the
    training split is read; pretexts read no labels. Each dataset's origin is checked against the targets."""
    return [(entry, dataset, ModelInputs.for_backbone(train.images, info), targets)
            for entry, dataset, train, targets in checked_tasks(cfg, info.input_size)]


def checked_tasks(cfg, input_size: int) -> list[tuple]:
    """(entry, dataset, training split, targets or None) of every task, loaded at ``input_size`` and checked as
    the run checks them: an evaluation target's images refused, a training split with images, the supervised
    task's needs of its data (labels or masks, two classes at least)."""
    out = []
    for entry in cfg.pool:
        data = dataclasses.replace(entry.data, root=entry.data.root or cfg.data.root)
        dataset = load_data(data, cfg.seed, input_size, labels=entry.kind in SUPERVISED)
        check_eval_targets([(task_name(entry), entry.kind, dataset.name, dataset.origin)], cfg.multitask.eval_targets)
        train = dataset.split("train")
        if len(train) == 0:
            raise TppError(f"multitask: task '{task_name(entry)}': dataset '{dataset.name}' has no training images.")
        targets = None
        if entry.kind in SUPERVISED:
            from tpp.tasks import get_task

            try:
                get_task(entry.kind).check_data(dataset)
            except TppError as exc:
                raise TppError(f"multitask: task '{task_name(entry)}': {exc}") from None
            targets = get_task(entry.kind).targets(train)
        out.append((entry, dataset, train, targets))
    return out


def check_pool_data(cfg) -> dict:
    """What ``tpp validate`` checks of the pool's data: every task loaded and checked as the run does
    (:func:`checked_tasks`, at the run's input size). Returns {task name: training images}."""
    from tpp.recipes import run_input_size

    return {task_name(entry): len(train) for entry, _, train, _ in checked_tasks(cfg, run_input_size(cfg))}


def build_module(entry, dataset, targets, encoder, info, decoder, scope: str, hflip: bool):
    """The task module (``forward(*batch) -> loss``) and its ``heads.json`` entry."""
    options = options_of(entry)
    if entry.kind in SUPERVISED:
        from tpp.tasks import get_task

        task = get_task(entry.kind)
        head = task.build_head(options, info, dataset)
        return SupervisedTask(encoder, head, task, options, hflip), task.card_entry(options, dataset, info, targets)
    from tpp.pretext import get_pretext

    kind = get_pretext(entry.kind)
    pretext = kind.build(encoder, decoder if kind.uses_checkpoint_decoder(options) else None, options)
    if scope == "backbone" and getattr(pretext, "decoder", None) is decoder and decoder is not None:
        decoder.requires_grad_(True)  # whole-backbone MAE: the checkpoint decoder trains too
    return PretextTask(pretext, hflip), dict(pretext.card_entry(), type=entry.kind)


def run(cfg, run) -> dict:
    accelerator = build_accelerator(cfg.train.mixed_precision, cfg.seed, run, log_with=cfg.train.log_with,
                                    device=cfg.device)
    scope = cfg.multitask.scope
    encoder, info, decoder = load_backbone(cfg.backbone.path, cfg.backbone.mean, cfg.backbone.std,
                                           with_decoder=True, input_size=cfg.backbone.input_size)
    if scope == "backbone":
        if info.model_type != "vit_mae":
            raise TppError(f"multitask.scope=backbone trains and saves a ViT-MAE checkpoint; backbone.path "
                           f"'{cfg.backbone.path}' is {info.model_type}. Use scope=target (adapters) on it.")
        if decoder is None:  # a hub id, whose weights the pre-run check could not read
            raise TppError(decoder_refusal(cfg.backbone.path, encoder.decoder_weights))
        encoder.model.requires_grad_(True)
        method = typed = targets = None
    else:
        torch.manual_seed(cfg.seed)
        method, typed, targets = attach_adapter(encoder, cfg.adapter.method, cfg.adapter.typed())
    refuse_batchnorm(encoder.model)
    if cfg.multitask.allocator == "mmap":
        set_mmap_threshold()  # large tensors in their own mmap: a task's freed activations go back to the system
    tasks = load_tasks(cfg, info)
    record_skipped([t[1] for t in tasks], run)

    torch.manual_seed(cfg.seed)
    modules, entries = {}, {}
    for entry, dataset, _, labels in tasks:
        modules[task_name(entry)], entries[task_name(entry)] = build_module(
            entry, dataset, labels, encoder, info, decoder, scope, cfg.data.hflip)
    root = torch.nn.ModuleDict({"encoder": encoder, **modules}).to(accelerator.device)
    if decoder is not None:
        decoder.to(accelerator.device)
    shared, heads = split_parameters(encoder, modules)
    plan = plan_steps(cfg.train, max(len(t[2]) for t in tasks), accelerator.num_processes)
    optimizer = _optimizer(shared, cfg.train.lr, cfg)
    units = []
    for name, module in modules.items():
        opt = _optimizer(heads[name], cfg.multitask.head_lr or cfg.train.lr, cfg)
        after = getattr(getattr(module, "pretext", None), "after_optimizer_step", None)
        units.append(Unit(name, module, heads[name], opt, make_scheduler(opt, cfg.train.warmup_ratio, plan.num_steps),
                          after))
    schedule = Schedule(shared, units, optimizer, make_scheduler(optimizer, cfg.train.warmup_ratio, plan.num_steps),
                        cfg.multitask.schedule, accelerator.autocast, cfg.train.grad_accum_steps,
                        accelerator.num_processes, release_memory=cfg.multitask.allocator != "default")
    sampler = TaskSampler([e.weight for e, *_ in tasks], cfg.multitask.sampler, cfg.multitask.tasks_per_cycle,
                          cfg.seed)
    loaders = [accelerator.prepare(stream_loader(x, *([] if y is None else [y]), batch_size=cfg.train.batch_size,
                                                 shuffle=True, seed=cfg.seed + i, num_workers=cfg.data.num_workers))
               for i, (_, _, x, y) in enumerate(tasks)]
    batches = [Batches(loader) for loader in loaders]
    run.log_data(bool(cfg.train.resume),
                 tasks=[{"name": task_name(e), "kind": e.kind, "dataset": d.name, "images": len(x),
                         "weight": e.weight} for e, d, x, _ in tasks],
                 shared_parameters=sum(p.numel() for p in shared),
                 head_parameters={n: sum(p.numel() for p in ps) for n, ps in heads.items()})

    checkpoints = checkpointer(cfg.train, run)
    first, losses, per_task = 1, [], {u.name: [] for u in units}
    if checkpoints.resume_from is not None:
        first, losses, per_task = load_state(checkpoints, root, schedule, units, batches, plan.num_steps,
                                             accelerator.num_processes, sampler.per_cycle)
        run.log(event="resumed", step=first - 1, checkpoint=checkpoints.resume_from.name, steps=plan.num_steps)
    root.train()
    bar = step_bar(first, plan.num_steps, f"multitask ({len(units)} tasks)", accelerator.is_main_process)
    for step in bar:
        order = sampler.cycle(step - 1)
        values = schedule.step(order, [next(batches[t]) for t in order], [sampler.loss_weight(t) for t in order],
                               step)
        loss = sum(values.values())
        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        losses.append((step, loss))
        for name, value in values.items():
            per_task[name].append(value)
        run.log(event="step", step=step, loss=loss, tasks=values, lr=schedule.scheduler.get_last_lr()[0])
        accelerator.log({"train/loss": loss, **{f"train/{k}": v for k, v in values.items()}}, step=step)
        if checkpoints.due(step, plan.num_steps):
            save_state(checkpoints, step, root, schedule, units, batches, losses, accelerator.num_processes,
                       per_task)
    root.eval()
    for tracker in accelerator.trackers:
        tracker.finish()
    return _publish(cfg, run, accelerator, tasks, modules, entries, encoder, decoder, info, units, plan, losses,
                    per_task, (method, typed, targets) if method else None, schedule, shared)


def _final_loss(values: list[float]) -> float:
    """The mean of a task's last :data:`FINAL_LOSS_STEPS` losses."""
    last = values[-FINAL_LOSS_STEPS:]
    return float(sum(last) / max(1, len(last)))


def _task_cards(cfg, tasks, entries, units, per_task) -> list[dict]:
    """Every task as the card lists it: kind, weight, head, steps, final loss, data (hashes) and licence."""
    steps = {u.name: u.steps for u in units}
    return [{"name": task_name(e), "kind": e.kind, "weight": e.weight, "head": entries[task_name(e)],
             "head_steps": steps[task_name(e)],
             "final_loss": _final_loss(per_task[task_name(e)]),
             "data": d.describe({"split": "train", "images": len(x), "labels_read": e.kind in SUPERVISED},
                                labels=e.kind in SUPERVISED),
             "license": data_license(e.data)} for e, d, x, _ in tasks]


def _publish(cfg, run, accelerator, tasks, modules, entries, encoder, decoder, info, units, plan, losses, per_task,
             adapter, schedule, shared) -> dict:
    """Write heads/, then adapter/ (scope target) or backbone/ (scope backbone), then metrics.json."""
    from safetensors.torch import save_file

    curve = loss_curve(losses)
    task_cards = _task_cards(cfg, tasks, entries, units, per_task)
    licenses = sorted({t["license"] for t in task_cards})
    multitask = {"name": "multitask", "scope": cfg.multitask.scope, "schedule": cfg.multitask.schedule,
                 "sampler": cfg.multitask.sampler, "eval_targets": list(cfg.multitask.eval_targets),
                 "steps": plan.num_steps, "batch_size": cfg.train.batch_size, "lr": cfg.train.lr,
                 "tasks": task_cards, "licenses": licenses, "loss_curve": curve}

    def write_heads(tmp):
        tmp.mkdir(parents=True, exist_ok=True)
        for name, module in modules.items():
            save_file(head_state(module, encoder), str(tmp / f"{name}.safetensors"))
        (tmp / "heads.json").write_text(json.dumps({"format": "tpp-multitask-heads/1", "tasks": [
            {k: t[k] for k in ("name", "kind", "head")} | {"file": f"{t['name']}.safetensors"} for t in task_cards]},
            indent=2))

    run.publish_dir("heads", write_heads)
    summary = {"steps": plan.num_steps, "first_loss": curve[0][1], "final_loss": curve[-1][1],
               "tasks": {t["name"]: t["final_loss"] for t in task_cards}, "shared_steps": schedule.shared_steps,
               "head_steps": {u.name: u.steps for u in units}, "schedule": cfg.multitask.schedule,
               "scope": cfg.multitask.scope, "shared_parameters": sum(p.numel() for p in shared)}
    modalities = sorted({str(d.modality) for _, d, _, _ in tasks})
    if adapter:
        method, typed, targets = adapter
        card = make_card(
            method=method.name, options=dict(vars(typed)), targets=targets, backbone=info,
            input_rule=input_rule(tasks[0][1], info), site=cfg.site,
            modality=modalities[0] if len(modalities) == 1 else "mixed",
            task={"type": "none", "note": "multi-task pre-trained target parameters; heads in the run's heads/"},
            stage="tpp", data={"name": "multitask:" + "+".join(t["name"] for t in task_cards), "origin": None,
                               "used": {"splits": ["train"]}, "licenses": licenses},
            metrics={"final_loss": curve[-1][1]}, parent=None, trainable_parameters=trainable_parameters(encoder),
            extra={"pretext": pretext_entry(multitask), "multitask": multitask})
        out = run.publish_dir("adapter", lambda tmp: write_adapter_dir(tmp, encoder, None, card))
        summary.update(adapter_bytes=dir_size(out), trainable_parameters=trainable_parameters(encoder))
    else:
        from transformers import ViTMAEForPreTraining

        from tpp.recipes.pretrain_backbone import license_note, write_backbone

        full = ViTMAEForPreTraining(encoder.model.config)
        full.vit, full.decoder = encoder.model, decoder
        card = {"format": "tpp-backbone/1", "kind": "backbone", "hash": backbone_hash(encoder.model),
                "parent": {"id": info.id, "hash": info.hash}, "objective": {"multitask": multitask},
                "pool": task_cards, "licenses": licenses, "license_note": license_note(licenses),
                "train": {"steps": plan.num_steps, "batch_size": cfg.train.batch_size, "lr": cfg.train.lr,
                          "seed": cfg.seed}, "versions": versions()}
        processor = types.SimpleNamespace(image_size=info.image_size, mean=info.mean, std=info.std)
        out = run.publish_dir("backbone", lambda tmp: write_backbone(tmp, full.cpu(), processor, card))
        summary.update(backbone_bytes=dir_size(out), trainable_parameters=sum(p.numel() for p in shared))
    summary["device"] = str(accelerator.device)
    run.publish_json("metrics.json", summary)
    return summary


def report(summary: dict) -> list[str]:
    """Lines ``tpp run`` prints at the end."""
    tasks = ", ".join(f"{k} {v:.4f}" for k, v in summary["tasks"].items())
    return [f"multi-task ({summary['scope']}, {summary['schedule']}): loss {summary['first_loss']:.4f} -> "
            f"{summary['final_loss']:.4f} over {summary['steps']} cycles; per task: {tasks}"]


def compare_row(run) -> dict:
    """Its row of `tpp compare` (column key -> raw value)."""
    m = run.metrics
    return {"task": "multitask", "method": run.cfg("adapter", "method") if m.get("scope") == "target" else None,
            "data": "+".join(m.get("tasks", {})) or None, "pretext_loss": m.get("final_loss"),
            "trainable_parameters": m.get("trainable_parameters"),
            "saved_bytes": m.get("adapter_bytes", m.get("backbone_bytes"))}
