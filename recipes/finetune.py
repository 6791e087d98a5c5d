"""Fine-tune a site adapter and a task head on a frozen backbone: any registered task (``task:``,
classification by default; ``task: segmentation`` trains a light decoder; ``tpp ls`` lists them).

    tpp run finetune --config recipes/configs/breast_us/mae_vit_tiny_lora_finetune.yaml data.label_fraction=0.1
    tpp run finetune --config recipes/configs/breast_us/busi_seg_lora_finetune.yaml adapter.init_from=runs/x/adapter

The task supplies the head, targets, augmentation, loss, predictions, the validation score that selects
the best step, metrics, the card entry, what is chosen on the validation split (classification: the
decision threshold, ``classification.threshold``) and extra outputs (segmentation: ``overlays/``). Writes
``config.yaml``, ``log.jsonl``, and on success ``metrics.json``, ``predictions.csv`` (val and test, one row
per image) and ``adapter/``.
"""
from __future__ import annotations

import inspect

import torch

from tpp.adapters.visual_prompt import auxiliary_loss, encoder_output
from tpp.adapter_dir import dir_size, make_card, write_adapter_dir
from tpp.backbones import load_backbone
from tpp.builders import (attach_target_parameters, check_leakage, check_parent_modality, input_rule, parent_read,
                          label_fraction_of, record_skipped)
from tpp.data.build import load_data
from tpp.errors import ConfigError, TppError, TppProblems
from tpp.data.stream import ModelInputs, stream_loader
from tpp.label_mapping import prepare_output_mapping
from tpp.data.subsets import label_fraction_index, selection_rule, val_fraction_used, val_subset_index
from tpp.model import TaskModel, trainable_parameters
from tpp.predictions_csv import publish_predictions, split_rows
from tpp.tasks import get_task
from tpp.training import (build_accelerator, checkpointer, make_optimizer, make_scheduler, plan_steps, predict,
                          train_loop)


def check(cfg) -> None:
    """What this recipe needs of the config alone (``tpp validate`` runs it too)."""
    task = get_task(cfg.task)
    task.check_config(cfg)
    if configured_frame(cfg) and not takes_frame(task.augment):
        where = (f"the parent adapter '{cfg.adapter.init_from}' has one (use a parent without it)"
                 if cfg.adapter.init_from else "use adapter.mode=full (composed: adapter.visual_prompt.mode=full)")
        raise ConfigError(f"task {task.name} cannot train with a padding visual prompt: its augment() takes no frame, "
                          f"so it would move the prompt's border with the image; {where}, or give the task's "
                          "augment a frame keyword.")


def configured_frame(cfg) -> int:
    """The input frame (px) the run's method will keep: a padding visual prompt's, configured or inherited from
    ``adapter.init_from`` (an unreadable parent counts as none: ``tpp validate`` reports it)."""
    from tpp.adapters.visual_prompt import declared_frame
    from tpp.builders import effective_adapter

    try:
        return declared_frame(*effective_adapter(cfg))
    except TppError:
        return 0


def takes_frame(augment) -> bool:
    """Whether a task's ``augment`` accepts ``frame=`` (by name or ``**kwargs``)."""
    parameters = inspect.signature(augment).parameters.values()
    return any(p.name == "frame" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def check_data(cfg, dataset) -> dict:
    """What this recipe needs of its loaded data, before any training (``tpp validate`` loads the data and runs
    it too): the task's needs (labels or masks, ``classification.positive_class`` among the classes), splits
    that are not empty once the label fraction is taken, a label mapping's source classifier (saved with the
    backbone, enough classes) and, with ``adapter.init_from``, a parent that cannot
    have seen this run's validation or test images, pre-trained on this modality (a warning; an error with
    ``adapter.require_same_modality``). Every problem found is raised at once, as one TppError (the task's own
    checks first: the others read what they check). Returns {split: images the run uses}."""
    get_task(cfg.task).check_data(dataset, cfg.task_options)
    problems, used = [], {}

    def attempt(check) -> None:
        try:
            check()
        except TppError as exc:
            problems.append(str(exc))

    if getattr(cfg.task_options, "output_mapping", "probe") != "probe":  # label mapping: a source classifier to map
        from tpp.tasks.classification import mappable_source

        attempt(lambda: mappable_source(cfg.backbone.path, cfg.task_options.source_head, dataset.num_classes))

    def count_splits() -> None:
        train, val, test, _ = labelled_splits(cfg, dataset)
        used.update(train=len(train), val=len(val), test=len(test))

    attempt(count_splits)
    if cfg.adapter.init_from:
        attempt(lambda: check_parent(cfg, dataset))
    if problems:
        raise TppProblems(problems, "problems with the data")
    return used


def check_parent(cfg, dataset) -> None:
    """The parent adapter (``adapter.init_from``) cannot have seen this run's val / test images, and was pre-trained
    on this modality (a warning; an error with ``adapter.require_same_modality``)."""
    card = parent_read(cfg, files=False).card
    check_leakage(card, dataset, cfg.adapter.init_from, label_fraction_of(cfg))
    check_parent_modality(card, cfg.adapter.init_from, dataset.modality, cfg.adapter.require_same_modality)


def labelled_splits(cfg, dataset):
    """(train, val, test, val_index) splits: a stratified, nested label fraction of train, and of val: by
    default the same fraction (a site with 10% of its labels has 10% of its validation labels too; at least
    one image per class), or ``data.val_label_fraction`` when given; ``val_index``: the kept val images'
    positions in the dataset's val split (None: all of them)."""
    train = dataset.split("train")
    train = train.subset(label_fraction_index(train.labels, cfg.data.label_fraction, dataset.name, cfg.seed))
    val = dataset.split("val")
    val_index = None
    fraction = val_fraction_used(cfg.data.label_fraction, cfg.data.val_label_fraction)
    if fraction < 1:
        val_index = val_subset_index(val.labels, len(val), fraction, dataset.name, cfg.seed)
        val = val.subset(val_index)
    return train, val, dataset.split("test"), val_index


def run(cfg, run) -> dict:
    task, options = get_task(cfg.task), cfg.task_options
    accelerator = build_accelerator(cfg.train.mixed_precision, cfg.seed, run, log_with=cfg.train.log_with,
                                    device=cfg.device)
    encoder, info, _ = load_backbone(cfg.backbone.path, cfg.backbone.mean, cfg.backbone.std,
                                     input_size=cfg.backbone.input_size)
    dataset = load_data(cfg.data, cfg.seed, info.input_size)
    record_skipped([dataset], run)
    check_data(cfg, dataset)

    # target parameters: fresh, or inherited from a (TPP) parent adapter
    method, typed, targets, parent = attach_target_parameters(cfg, encoder, info, dataset, run, task.head_noun)
    torch.manual_seed(cfg.seed)
    head = task.build_head(options, info, dataset)
    model = TaskModel(encoder, head)

    train, val, test, val_index = labelled_splits(cfg, dataset)
    # images stay as stored (arrays or files) and become model input one batch at a time
    x_train, y_train = ModelInputs.for_backbone(train.images, info), task.targets(train)
    x_val, y_val = ModelInputs.for_backbone(val.images, info), task.targets(val)
    x_test, y_test = ModelInputs.for_backbone(test.images, info), task.targets(test)
    entry = task.card_entry(options, dataset, info, y_train)
    head_parameters = trainable_parameters(head)
    val_fraction = val_fraction_used(cfg.data.label_fraction, cfg.data.val_label_fraction)
    select, selection = selection_rule(cfg.train.select_best, len(val))
    run.log_data(bool(cfg.train.resume), dataset=dataset.name, train=len(train), val=len(val), test=len(test),
            label_fraction=cfg.data.label_fraction, val_label_fraction=val_fraction, split_id=dataset.split_id,
            trainable_parameters=trainable_parameters(model), head_parameters=head_parameters)
    run.log(event="selection", select_best=select, val_images=len(val), note=selection)

    plan = plan_steps(cfg.train, len(train), accelerator.num_processes)
    optimizer = make_optimizer(model, cfg.train.lr, cfg.train.weight_decay, cfg.train.head_lr_scale,
                               beta2=cfg.train.adam_beta2)
    scheduler = make_scheduler(optimizer, cfg.train.warmup_ratio, plan.num_steps)
    loader = stream_loader(x_train, y_train, batch_size=cfg.train.batch_size, shuffle=True, seed=cfg.seed,
                           num_workers=cfg.data.num_workers)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)

    def loss_fn(model, batch):
        images, y = task.augment(*batch, options, cfg.data.hflip, **({"frame": info.frame} if info.frame else {}))
        with encoder_output(model) as seen:
            logits = model(images)
        return task.loss(logits, y, options) + auxiliary_loss(model, images, seen.get("tokens"))  # MoVL's term, or 0

    def predictions(model, x):
        return predict(accelerator, model, x, cfg.train.eval_batch_size,
                       lambda logits: task.predictions(logits, entry), cfg.data.num_workers)

    def evaluate(model):
        return task.score(predictions(model, x_val), y_val, dataset)

    prepare_output_mapping(model, x_train, y_train, plan.steps_per_epoch, cfg.train.eval_batch_size)  # FLM / ILM
    result = train_loop(accelerator, model, loss_fn, loader, optimizer, scheduler, plan.num_steps, run.log,
                        evaluate if select else None, plan.eval_every,
                        desc=f"finetune {dataset.name}", accum_steps=cfg.train.grad_accum_steps,
                        checkpoints=checkpointer(cfg.train, run))
    model = accelerator.unwrap_model(model)
    if getattr(model.head, "history", None):  # label mapping: every mapping FLM / ILM computed, by step
        run.log(event="output_mapping", kind=model.head.kind, history=model.head.history)
    val_pred, test_pred = predictions(model, x_val), predictions(model, x_test)
    entry = task.choose_on_validation(options, entry, val_pred, y_val)  # classification: the threshold
    decided = task.for_card(entry)  # decides as evaluate, predict and serve will from the card
    note = decided.decision_line()
    if note:
        run.log(event="decision", note=note, **entry.get("decision", {}))
        if run.main:
            print(f"decision: {note}")
    metrics = {
        "val": decided.metrics(val_pred, y_val, dataset, cfg.seed),
        "test": decided.metrics(test_pred, y_test, dataset, cfg.seed),
        "best_step": result.best_step or plan.num_steps, "steps": plan.num_steps, "train_examples": len(train),
        "val_examples": len(val), "val_label_fraction": val_fraction, "selection": selection,
        "split_id": dataset.split_id, "definitions": decided.definitions(),
        "trainable_parameters": trainable_parameters(model), "head_parameters": head_parameters,
        **task.summary_extras(model, head_parameters), "wall_time_s": round(run.elapsed(), 1),
    }
    task.publish_extras(run, options, test, test_pred)
    card = make_card(
        method=method.name, options=dict(vars(typed)), targets=targets, backbone=info,
        input_rule=input_rule(dataset, info), site=cfg.site, modality=dataset.modality, task=entry,
        stage="finetune",
        data=dataset.describe({"split": "train", "label_fraction": cfg.data.label_fraction, "images": len(train),
                               "val_images": len(val), "val_label_fraction": val_fraction,
                               "split_seed": cfg.data.split_seed, "selection": selection}),
        metrics=task.card_metrics(metrics), parent=parent,
        trainable_parameters=metrics["trainable_parameters"], kind=method.kind)
    adapter = run.publish_dir("adapter", lambda tmp: write_adapter_dir(tmp, model.encoder, model.head, card))
    metrics["adapter_bytes"] = dir_size(adapter)  # the whole directory: adapter tensors, head, card
    metrics["head_bytes"] = (adapter / "head.safetensors").stat().st_size if run.main else 0
    names = list(dataset.class_names)
    publish_predictions(run, split_rows(decided, "val", val, val_index, val_pred, y_val, names)
                        + split_rows(decided, "test", test, None, test_pred, y_test, names))
    metrics["device"] = str(accelerator.device)
    run.publish_json("metrics.json", metrics)
    return metrics


def report(summary: dict) -> list[str]:
    """Lines ``tpp run`` prints at the end."""
    from tpp.tasks import task_of_result

    task = task_of_result(summary.get("test"))
    if not task:
        return []
    selection = summary.get("selection")  # runs written before it have none
    return [task.report(summary) + (f"  ({selection})" if selection else "")]


def compare_row(run) -> dict:
    """Its row of `tpp compare` (column key -> raw value)."""
    from tpp.compare import card_of, init_label, task_metrics

    m, card = run.metrics, card_of(run.path / "adapter")
    return {"method": card.get("method") or run.cfg("adapter", "method"), "data": run.cfg("data", "name"),
            "label_fraction": run.cfg("data", "label_fraction"),
            "adapter_init": init_label(card, run.cfg("adapter", "init_from")),
            "split": "test", **task_metrics(m.get("test")),
            "trainable_parameters": m.get("trainable_parameters", card.get("trainable_parameters")),
            "saved_bytes": m.get("adapter_bytes")}
