"""Target parameter pre-training: train only the adapter's own weights on unlabeled images.

    tpp run tpp --config recipes/configs/breast_us/mae_vit_tiny_lora_tpp.yaml
    tpp run tpp --config recipes/configs/breast_us/mae_vit_tiny_lora_tpp.yaml pretext.name=dino

Pretexts: ``mae`` (masked image modeling; the checkpoint's frozen ViT-MAE decoder, or a fresh one for
ViT / DINOv2) and ``dino`` (self-distillation with an EMA teacher). The backbone stays frozen; a
fresh decoder or projection head trains alongside and is discarded. Labels never reach the pretext:
MedMNIST files and .npz files with their own splits are read without their label arrays; only a source
split here (or filtered by class) reads labels, to form the same stratified training split as fine-tuning:
the split is drawn by ``data.split_seed`` (default 0), not by ``seed``, so a TPP adapter of any seed hands
off to fine-tunes of every seed with the same split settings (the leakage check compares split hashes).
Only the training split's images are used unless ``data.use_eval_splits=true`` (recorded in the card;
such a parent is then refused for fine-tuning on the same data, whose val/test it has seen).
Writes ``adapter/`` (no head) whose card records the pretext, its settings, the data it saw and
the loss curve. Fine-tune from it with ``adapter.init_from=OUTPUT/adapter``.
"""
from __future__ import annotations

import torch

from tpp.adapters import all_methods, get_method
from tpp.adapter_dir import dir_size, make_card, write_adapter_dir
from tpp.backbones import backbone_config, decoder_weights, load_backbone
from tpp.builders import input_rule, record_skipped
from tpp.data.build import load_data, random_hflip
from tpp.data.stream import ModelInputs, concat_images, stream_loader
from tpp.errors import ConfigError, TppError
from tpp.model import attach_adapter, input_frame, trainable_parameters
from tpp.pretext import get_pretext
from tpp.training import (build_accelerator, checkpointer, loss_curve, make_optimizer, make_scheduler, plan_steps,
                          train_loop)


DATA_LABELS = False  # the pretext reads images only: `tpp validate` loads the data as the run does


def pretext_splits(dataset, use_eval_splits: bool) -> list[str]:
    """The splits pre-trained on: train (plus val/test when explicitly allowed and not empty)."""
    return ["train"] + ([s for s in ("val", "test") if len(dataset.splits.get(s, ()))] if use_eval_splits else [])


def unlabeled_images(dataset, use_eval_splits: bool) -> tuple:
    """Images only, as stored, of :func:`pretext_splits`. Labels are not returned."""
    names = pretext_splits(dataset, use_eval_splits)
    return concat_images([dataset.split(s).images for s in names]), names


def check_data(cfg, dataset) -> dict:
    """What this recipe needs of its loaded data, before any training (``tpp validate`` loads the data without
    labels, as the run does, and runs it too): images to pre-train on. Returns {split: images pre-trained on}."""
    used = {s: len(dataset.splits.get(s, ())) for s in pretext_splits(dataset, cfg.data.use_eval_splits)}
    if not sum(used.values()):
        raise TppError(f"dataset '{dataset.name}': the training split holds no image: nothing to pre-train on "
                       f"({dataset.source}).")
    return used


def check(cfg) -> None:
    """What this recipe needs of the config alone (``tpp validate`` runs it too)."""
    if not get_method(cfg.adapter.method).pretrainable:
        raise ConfigError(f"adapter.method={cfg.adapter.method} has no target parameters to pre-train; TPP applies "
                          f"to: {', '.join(m.name for m in all_methods() if m.pretrainable)}.")
    if getattr(cfg.pretext.resolved(), "decoder", None) == "checkpoint":
        check_checkpoint_decoder(cfg.backbone.path)


def check_checkpoint_decoder(path: str) -> None:
    """``pretext.decoder=checkpoint`` needs a ViT-MAE checkpoint saved with its decoder: told from its config.json
    and safetensors headers before the run (a backbone that does not resolve is named by validate's backbone
    check; one that cannot be told without loading, a hub id, is checked when the run loads it)."""
    try:
        model_type = getattr(backbone_config(path), "model_type", None)
    except TppError:
        return
    report = decoder_weights(path) if model_type == "vit_mae" else None
    if model_type == "vit_mae" and (report is None or report.whole):
        return
    what = (f"a {model_type} checkpoint" if model_type != "vit_mae" else
            "a ViT-MAE saved without its decoder" if not report.present else
            f"a ViT-MAE saved with part of its decoder ({report.describe()})")
    raise ConfigError(f"pretext.decoder=checkpoint needs a ViT-MAE checkpoint with its decoder weights; "
                      f"backbone.path '{path}' is {what}. Use pretext.decoder=fresh (or auto).")


def run(cfg, run) -> dict:
    accelerator = build_accelerator(cfg.train.mixed_precision, cfg.seed, run, log_with=cfg.train.log_with,
                                    device=cfg.device)
    pretext_kind, pretext_options = get_pretext(cfg.pretext.name), cfg.pretext.resolved()
    encoder, info, decoder = load_backbone(cfg.backbone.path, cfg.backbone.mean, cfg.backbone.std,
                                           with_decoder=pretext_kind.uses_checkpoint_decoder(pretext_options),
                                           input_size=cfg.backbone.input_size)
    dataset = load_data(cfg.data, cfg.seed, info.input_size, labels=DATA_LABELS)
    record_skipped([dataset], run)
    check_data(cfg, dataset)
    images, splits_used = unlabeled_images(dataset, cfg.data.use_eval_splits)
    torch.manual_seed(cfg.seed)
    method, typed, targets = attach_adapter(encoder, cfg.adapter.method, cfg.adapter.typed())
    info.frame = input_frame(encoder.model)  # a padding prompt's frame: the pipeline puts the image inside it
    pretext = pretext_kind.build(encoder, decoder, pretext_options)
    x = ModelInputs.for_backbone(images, info)  # converted one batch at a time
    adapter_parameters = trainable_parameters(encoder)
    pretext_head_parameters = trainable_parameters(pretext) - adapter_parameters  # fresh decoder / projection head
    run.log_data(bool(cfg.train.resume), dataset=dataset.name, images=len(x), splits=splits_used,
            trainable_parameters=adapter_parameters, pretext_head_parameters=pretext_head_parameters)

    plan = plan_steps(cfg.train, len(x), accelerator.num_processes)
    optimizer = make_optimizer(pretext, cfg.train.lr, cfg.train.weight_decay, beta2=cfg.train.adam_beta2)
    scheduler = make_scheduler(optimizer, cfg.train.warmup_ratio, plan.num_steps)
    loader = stream_loader(x, batch_size=cfg.train.batch_size, shuffle=True, seed=cfg.seed,
                           num_workers=cfg.data.num_workers)
    pretext, optimizer, loader, scheduler = accelerator.prepare(pretext, optimizer, loader, scheduler)

    def loss_fn(model, batch):
        (images,) = batch
        if cfg.data.hflip:
            images = random_hflip(images)
        return model(images)

    result = train_loop(accelerator, pretext, loss_fn, loader, optimizer, scheduler, plan.num_steps, run.log,
                        desc=f"tpp {cfg.pretext.name} {dataset.name}", accum_steps=cfg.train.grad_accum_steps,
                        checkpoints=checkpointer(cfg.train, run))
    pretext = accelerator.unwrap_model(pretext)
    curve = loss_curve(result.losses)
    card = make_card(
        method=method.name, options=dict(vars(typed)), targets=targets, backbone=info,
        input_rule=input_rule(dataset, info), site=cfg.site, modality=dataset.modality,
        task={"type": "none", "note": "pre-trained target parameters; no task head"}, stage="tpp",
        data=dataset.describe({"splits": splits_used, "images": len(x), "labels_read": False,
                               "use_eval_splits": cfg.data.use_eval_splits, "split_seed": cfg.data.split_seed},
                              labels=False),
        metrics={"final_loss": curve[-1][1]}, parent=None, trainable_parameters=adapter_parameters,
        extra={"pretext": dict(pretext.card_entry(), steps=plan.num_steps, batch_size=cfg.train.batch_size,
                               head_parameters_discarded=pretext_head_parameters,
                               lr=cfg.train.lr, loss_curve=curve)})
    adapter = run.publish_dir("adapter", lambda tmp: write_adapter_dir(tmp, encoder, None, card))
    summary = {"final_loss": curve[-1][1], "first_loss": curve[0][1], "steps": plan.num_steps,
               "images": len(x), "trainable_parameters": adapter_parameters,
               "pretext_head_parameters": pretext_head_parameters,
               "adapter_bytes": dir_size(adapter), "wall_time_s": round(run.elapsed(), 1)}
    summary["device"] = str(accelerator.device)
    run.publish_json("metrics.json", summary)
    return summary


def report(summary: dict) -> list[str]:
    """Lines ``tpp run`` prints at the end."""
    return [f"pretext loss {summary['first_loss']:.4f} -> {summary['final_loss']:.4f} over {summary['steps']} "
            f"steps on {summary['images']} images; adapter {summary['trainable_parameters']:,} parameters"]


def compare_row(run) -> dict:
    """Its row of `tpp compare` (column key -> raw value)."""
    from tpp.compare import card_of, dig

    m, card = run.metrics, card_of(run.path / "adapter")
    pretext = dig(card, "pretext", "name") or run.cfg("pretext", "name")
    return {"task": f"{pretext} pretext" if pretext else None,
            "method": card.get("method") or run.cfg("adapter", "method"), "data": run.cfg("data", "name"),
            "pretext_loss": m.get("final_loss"),
            "trainable_parameters": m.get("trainable_parameters"), "saved_bytes": m.get("adapter_bytes")}
