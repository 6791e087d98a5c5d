"""Fine-tune a site adapter and a classification head on a frozen backbone.

    tpp run finetune --config recipes/configs/breast_us/mae_vit_tiny_lora_finetune.yaml data.label_fraction=0.1

Writes ``config.yaml``, ``log.jsonl``, and on success ``metrics.json`` and ``adapter/``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from tpp.adapter_dir import dir_size, make_card, write_adapter_dir
from tpp.backbones import load_backbone
from tpp.builders import (attach_target_parameters, classification_task, input_rule, record_skipped,
                          require_labels, tensors)
from tpp.data.build import load_data, random_hflip
from tpp.data.subsets import label_fraction_index
from tpp.errors import ConfigError
from tpp.metrics import classification_metrics, quick_metrics
from tpp.model import ClassificationHead, TaskModel, trainable_parameters
from tpp.training import (build_accelerator, checkpointer, make_loader, make_optimizer, make_scheduler, plan_steps,
                          predict_probs, train_loop)


def check(cfg) -> None:
    """What this recipe needs of the config alone (``tpp validate`` runs it too)."""
    if cfg.task == "segmentation":
        from tpp.recipes import segment

        return segment.check(cfg)
    if cfg.data.source.startswith("seg_"):
        raise ConfigError(f"data.source={cfg.data.source} holds segmentation masks; set task=segmentation.")


def run(cfg, run) -> dict:
    if cfg.task == "segmentation":
        from tpp.recipes import segment

        return segment.run(cfg, run)
    accelerator = build_accelerator(cfg.train.mixed_precision, cfg.seed, run, log_with=cfg.train.log_with)
    encoder, info, _ = load_backbone(cfg.backbone.path, cfg.backbone.mean, cfg.backbone.std,
                                      input_size=cfg.backbone.input_size)
    dataset = load_data(cfg.data, cfg.seed, info.input_size)
    record_skipped([dataset], run)
    require_labels(dataset)

    # target parameters: fresh, or inherited from a (TPP) parent adapter
    method, typed, targets, parent = attach_target_parameters(cfg, encoder, info, dataset, run, "task head")
    torch.manual_seed(cfg.seed)
    model = TaskModel(encoder, ClassificationHead(info.hidden_size, dataset.num_classes))

    # data: a stratified, nested label fraction of the training split
    train = dataset.split("train")
    train = train.subset(label_fraction_index(train.labels, cfg.data.label_fraction, dataset.name, cfg.seed))
    x_train, y_train = tensors(train.images, info), torch.from_numpy(train.labels)
    val = dataset.split("val")  # a few-label site has a small labelled val set too: data.val_label_fraction
    if cfg.data.val_label_fraction is not None:
        val = val.subset(label_fraction_index(val.labels, cfg.data.val_label_fraction, f"{dataset.name}/val", cfg.seed))
    x_val, y_val = tensors(val.images, info), torch.from_numpy(val.labels)
    x_test, y_test = tensors(dataset.split("test").images, info), torch.from_numpy(dataset.split("test").labels)
    run.log(event="data", dataset=dataset.name, train=len(train), val=len(y_val), test=len(y_test),
            label_fraction=cfg.data.label_fraction, trainable_parameters=trainable_parameters(model))

    plan = plan_steps(cfg.train, len(train), accelerator.num_processes)
    optimizer = make_optimizer(model, cfg.train.lr, cfg.train.weight_decay, cfg.train.head_lr_scale,
                               beta2=cfg.train.adam_beta2)
    scheduler = make_scheduler(optimizer, cfg.train.warmup_ratio, plan.num_steps)
    loader = make_loader(x_train, y_train, batch_size=cfg.train.batch_size, shuffle=True, seed=cfg.seed)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)

    def loss_fn(model, batch):
        images, labels = batch
        if cfg.data.hflip:
            images = random_hflip(images)
        return F.cross_entropy(model(images), labels)

    def evaluate(model):
        m = quick_metrics(predict_probs(accelerator, model, x_val, cfg.train.eval_batch_size), y_val)
        return m["auroc"], {"val_auroc": m["auroc"], "val_accuracy": m["accuracy"]}

    result = train_loop(accelerator, model, loss_fn, loader, optimizer, scheduler, plan.num_steps, run.log,
                        evaluate if cfg.train.select_best else None, plan.eval_every, desc=f"finetune {dataset.name}",
                        accum_steps=cfg.train.grad_accum_steps,
                        checkpoints=checkpointer(cfg.train, run))
    model = accelerator.unwrap_model(model)
    metrics = {
        "val": classification_metrics(predict_probs(accelerator, model, x_val, cfg.train.eval_batch_size), y_val,
                                      seed=cfg.seed),
        "test": classification_metrics(predict_probs(accelerator, model, x_test, cfg.train.eval_batch_size), y_test,
                                       seed=cfg.seed),
        "best_step": result.best_step or plan.num_steps, "steps": plan.num_steps, "train_examples": len(train),
        "trainable_parameters": trainable_parameters(model), "wall_time_s": round(run.elapsed(), 1),
    }
    card = make_card(
        method=method.name, options=dict(vars(typed)), targets=targets, backbone=info,
        input_rule=input_rule(dataset, info), site=cfg.site, modality=dataset.modality,
        task=classification_task(dataset), stage="finetune",
        data=dataset.describe({"split": "train", "label_fraction": cfg.data.label_fraction, "images": len(train)}),
        metrics={k: metrics[k]["auroc"] for k in ("val", "test")}, parent=parent,
        trainable_parameters=metrics["trainable_parameters"], kind=method.kind)
    adapter = run.publish_dir("adapter", lambda tmp: write_adapter_dir(tmp, model.encoder, model.head, card))
    metrics["adapter_bytes"] = dir_size(adapter)
    run.publish_json("metrics.json", metrics)
    return metrics


def report(summary: dict) -> list[str]:
    """Lines ``tpp run`` prints at the end."""
    if "dice" in summary["test"]:
        from tpp.recipes import segment

        return segment.report(summary)
    t = summary["test"]
    return [f"test AUROC {t['auroc']:.3f} [{t['auroc_ci95'][0]:.3f}, {t['auroc_ci95'][1]:.3f}]  accuracy "
            f"{t['accuracy']:.3f}  trainable {summary['trainable_parameters']:,}  "
            f"saved {summary['adapter_bytes'] / 1024:.0f} KiB"]
