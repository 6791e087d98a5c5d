"""Fine-tune a site adapter and a light segmentation decoder (``task: segmentation`` in a finetune config).

    tpp run finetune --config recipes/configs/breast_us/busi_seg_lora_finetune.yaml data.label_fraction=0.1
    tpp run finetune --config ... adapter.init_from=runs/busi_seg/lora_tpp/adapter   # from TPP

The decoder upsamples the frozen encoder's patch tokens to the input size; predictions are compared
with the masks at their stored size. Writes ``config.yaml``, ``log.jsonl``, and on success
``metrics.json`` (Dice, IoU, HD95, empty predictions), ``overlays/`` (test images with the ground
truth outlined in green and the prediction tinted) and ``adapter/`` (target parameters + decoder).
"""
from __future__ import annotations

import torch

from tpp.adapter_dir import dir_size, make_card, write_adapter_dir
from tpp.backbones import load_backbone
from tpp.builders import attach_target_parameters, input_rule, record_skipped, tensors
from tpp.data.build import load_data
from tpp.data.segmentation import joint_augment
from tpp.data.subsets import label_fraction_index
from tpp.errors import ConfigError
from tpp.model import trainable_parameters
from tpp.seg_metrics import quick_dice, segmentation_metrics, write_overlays
from tpp.segmentation import SegmentationModel, build_decoder, decoder_spec, segmentation_loss, to_mask_size
from tpp.training import (build_accelerator, checkpointer, make_loader, make_optimizer, make_scheduler, plan_steps,
                          predict, train_loop)


def segmentation_task(dataset, seg_cfg, mask_size, info) -> dict:
    return {"type": "segmentation", "num_classes": dataset.num_classes, "label_names": list(dataset.class_names),
            "decoder": decoder_spec(seg_cfg, dataset.num_classes), "mask_size": list(mask_size),
            "resolution": info.resolution_note() + f"; logits resized (bilinear) to the {mask_size[0]}x"
                                                   f"{mask_size[1]} stored masks for loss and metrics"}


def check(cfg) -> None:
    """What this recipe needs of the config alone (``tpp validate`` runs it too)."""
    if not cfg.data.source.startswith("seg_"):
        raise ConfigError(f"task=segmentation needs masks: data.source={cfg.data.source} has none "
                          "(use seg_npz or seg_folder).")


def run(cfg, run) -> dict:
    accelerator = build_accelerator(cfg.train.mixed_precision, cfg.seed, run, log_with=cfg.train.log_with)
    encoder, info, _ = load_backbone(cfg.backbone.path, cfg.backbone.mean, cfg.backbone.std,
                                     input_size=cfg.backbone.input_size)
    dataset = load_data(cfg.data, cfg.seed, info.input_size)
    record_skipped([dataset], run)

    method, typed, targets, parent = attach_target_parameters(cfg, encoder, info, dataset, run, "decoder")
    torch.manual_seed(cfg.seed)
    decoder = build_decoder(cfg.segmentation, info.hidden_size, dataset.num_classes, info.channels, info.patch_size)
    model = SegmentationModel(encoder, decoder)

    # data: a stratified, nested fraction of the training masks; masks stay at their stored size
    train = dataset.split("train")
    train = train.subset(label_fraction_index(train.labels, cfg.data.label_fraction, dataset.name, cfg.seed))
    val, test = dataset.split("val"), dataset.split("test")
    if cfg.data.val_label_fraction is not None:
        val = val.subset(label_fraction_index(val.labels, cfg.data.val_label_fraction, f"{dataset.name}/val", cfg.seed))
    x_train, m_train = tensors(train.images, info), torch.from_numpy(train.masks).long()
    x_val, m_val = tensors(val.images, info), torch.from_numpy(val.masks).long()
    x_test, m_test = tensors(test.images, info), torch.from_numpy(test.masks).long()
    mask_size = tuple(m_train.shape[-2:])
    decoder_parameters = trainable_parameters(decoder)
    run.log(event="data", dataset=dataset.name, train=len(train), val=len(val), test=len(test),
            label_fraction=cfg.data.label_fraction, mask_size=list(mask_size), input_size=info.input_size,
            trainable_parameters=trainable_parameters(model), decoder_parameters=decoder_parameters)

    plan = plan_steps(cfg.train, len(train), accelerator.num_processes)
    optimizer = make_optimizer(model, cfg.train.lr, cfg.train.weight_decay, cfg.train.head_lr_scale,
                               beta2=cfg.train.adam_beta2)
    scheduler = make_scheduler(optimizer, cfg.train.warmup_ratio, plan.num_steps)
    loader = make_loader(x_train, m_train, batch_size=cfg.train.batch_size, shuffle=True, seed=cfg.seed)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)

    def loss_fn(model, batch):
        images, masks = batch
        images, masks = joint_augment(images, masks, tuple(cfg.segmentation.augment_scale), flip=cfg.data.hflip)
        return segmentation_loss(model(images), masks, cfg.segmentation.dice_weight)

    def predict_masks(model, x):
        return predict(accelerator, model, x, cfg.train.eval_batch_size,
                       lambda logits: to_mask_size(logits.float(), mask_size).argmax(dim=1).to(torch.uint8))

    def evaluate(model):
        dice = quick_dice(predict_masks(model, x_val), m_val, dataset.num_classes)
        return dice, {"val_dice": dice}

    result = train_loop(accelerator, model, loss_fn, loader, optimizer, scheduler, plan.num_steps, run.log,
                        evaluate if cfg.train.select_best else None, plan.eval_every, desc=f"segment {dataset.name}",
                        accum_steps=cfg.train.grad_accum_steps, checkpoints=checkpointer(cfg.train, run))
    model = accelerator.unwrap_model(model)
    test_pred = predict_masks(model, x_test)
    metrics = {
        "val": segmentation_metrics(predict_masks(model, x_val), m_val, dataset.class_names),
        "test": segmentation_metrics(test_pred, m_test, dataset.class_names),
        "best_step": result.best_step or plan.num_steps, "steps": plan.num_steps, "train_examples": len(train),
        "trainable_parameters": trainable_parameters(model), "decoder_parameters": decoder_parameters,
        "adapter_parameters": trainable_parameters(model) - decoder_parameters,
        "wall_time_s": round(run.elapsed(), 1),
    }
    if cfg.segmentation.overlays:
        run.publish_dir("overlays", lambda tmp: write_overlays(tmp, test.images, test_pred.numpy(), test.masks,
                                                               cfg.segmentation.overlays))
    card = make_card(
        method=method.name, options=dict(vars(typed)), targets=targets, backbone=info,
        input_rule=input_rule(dataset, info), site=cfg.site, modality=dataset.modality,
        task=segmentation_task(dataset, cfg.segmentation, mask_size, info), stage="finetune",
        data=dataset.describe({"split": "train", "label_fraction": cfg.data.label_fraction, "images": len(train)}),
        metrics={f"{k}_dice": metrics[k]["dice"] for k in ("val", "test")}, parent=parent,
        trainable_parameters=metrics["trainable_parameters"], kind=method.kind)
    adapter = run.publish_dir("adapter", lambda tmp: write_adapter_dir(tmp, model.encoder, model.head, card))
    metrics["adapter_bytes"] = dir_size(adapter)  # the whole directory: adapter tensors, decoder, card
    metrics["decoder_bytes"] = (adapter / "head.safetensors").stat().st_size if run.main else 0
    run.publish_json("metrics.json", metrics)
    return metrics


def report(summary: dict) -> list[str]:
    """Lines ``tpp run`` prints at the end."""
    t = summary["test"]
    hd95 = "n/a" if t["hd95"] is None else f"{t['hd95']:.1f} px"
    return [f"test Dice {t['dice']:.3f}  IoU {t['iou']:.3f}  HD95 {hd95}  empty predictions "
            f"{t['empty_predictions']}/{t['n']}  trainable {summary['adapter_parameters']:,} (+ decoder "
            f"{summary['decoder_parameters']:,})  saved {summary['adapter_bytes'] / 1024:.0f} KiB"]
