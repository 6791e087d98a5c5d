"""Train a learned in-context model on episodes of many tasks (Neuralizer / UniverSeg style).

    tpp run incontext --config recipes/configs/incontext/classification.yaml
    tpp run incontext --config recipes/configs/incontext/segmentation.yaml

``incontext.kind=classification``: a set model (:class:`tpp.incontext.learned.SetClassifier`) on the frozen
backbone's features, episodes of class subsets and one-vs-rest tasks of every MedMNIST dataset not held out.
``incontext.kind=segmentation``: a CrossConv network (:class:`tpp.incontext.learned.CrossConvNet`) at 64 px,
episodes of BUSI masks (unless held out) and synthetic segmentation and image-to-image tasks
(:mod:`tpp.incontext.episodes`). ``incontext.holdout`` (default breastmnist, pneumoniamnist, busi) is never read;
a name that is no dataset (one under the data root, a MedMNIST flag, MedNIST, BUSI) is refused before the run
starts: a misspelt one would hold out nothing.

One optimiser step = ``train.batch_size`` episodes, drawn from a generator seeded by (seed, step index), so a
run resumed with ``train.resume=auto`` draws exactly the episodes the uninterrupted run would. Writes
``model/`` (``model.safetensors`` + ``icl_card.json``: architecture, task distribution, held-out datasets,
backbone for classification) and ``metrics.json`` (with the CPU time of this invocation).
"""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from tpp.data.arrays import resolve_root
from tpp.errors import ConfigError
from tpp.incontext import episodes, learned
from tpp.training import (build_accelerator, checkpointer, loss_curve, make_loader, make_optimizer, make_scheduler,
                          train_loop)

EPISODE_INDICES = 10**6  # the loader hands out step indices; episodes are drawn from (seed, index)


def check(cfg) -> None:
    """What this recipe needs of the config alone (``tpp validate`` runs it too)."""
    if cfg.train.max_steps is None:
        raise ConfigError("incontext trains for a number of episode batches: set train.max_steps (train.epochs does "
                          "not apply: the episodes are endless).")
    if cfg.train.max_steps < 1:
        raise ConfigError(f"train.max_steps must be at least 1, got {cfg.train.max_steps}.")
    check_architecture(cfg.incontext)
    root = resolve_root(cfg.data.root)  # no data root: an error before output_dir is touched
    episodes.check_holdout(cfg.incontext.holdout, root)  # a misspelt holdout would hold out nothing


def check_architecture(ic) -> None:
    """The model of ``incontext.kind`` passes the checks its card meets when loaded (:mod:`learned_card`), so a
    run never trains a model that cannot be built (``hidden`` not a multiple of ``heads``: an AssertionError in
    the attention layers, after output_dir was made) or loaded (a field out of the card's range)."""
    from tpp.incontext import learned_card

    try:
        if ic.kind == "classification":
            learned_card.check_classifier({"feature_dim": 1, "hidden": ic.hidden, "layers": ic.layers,
                                           "heads": ic.heads, "max_classes": ic.max_classes})
        else:
            learned_card.check_image_size(ic.image_size, learned_card.check_segmenter({"channels": ic.channels}))
    except ValueError as exc:
        message = str(exc).replace("architecture.", "incontext.").replace("task_distribution.", "incontext.")
        raise ConfigError(f"{message}: the in-context model could not be built or loaded.") from None


def _classification_loss(model, batch, device) -> tuple[torch.Tensor, dict]:
    logits = model(batch.context.to(device), batch.labels.to(device), batch.queries.to(device), batch.num_classes)
    targets = batch.targets.to(device)
    loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
    return loss, {"accuracy": float((logits.argmax(-1) == targets).float().mean())}


def _segmentation_loss(model, batch, device) -> tuple[torch.Tensor, dict]:
    """Segmentation episodes: BCE + soft Dice on the foreground logit; image-to-image: MSE of its sigmoid."""
    logits = model(batch.target.to(device), batch.support_images.to(device), batch.support_labels.to(device))
    truth, regression = batch.truth.to(device), batch.regression.to(device)
    prob = torch.sigmoid(logits)
    bce = F.binary_cross_entropy_with_logits(logits, truth, reduction="none").mean((1, 2, 3))
    inter = (prob * truth).sum((1, 2, 3))
    dice = 1 - (2 * inter + 1) / (prob.sum((1, 2, 3)) + truth.sum((1, 2, 3)) + 1)
    mse = ((prob - truth) ** 2).mean((1, 2, 3))
    per_episode = torch.where(regression, 10 * mse, bce + dice)
    seg = ~regression
    hard = ((prob >= 0.5).float() * truth).sum((1, 2, 3))
    hard_dice = (2 * hard + 1) / ((prob >= 0.5).float().sum((1, 2, 3)) + truth.sum((1, 2, 3)) + 1)
    return per_episode.mean(), {"dice": float(hard_dice[seg].mean()) if seg.any() else float("nan")}


def build_task(cfg, device, log) -> tuple[torch.nn.Module, callable, dict]:
    """(fresh model, ``draw(rng) -> batch``, the card's ``tasks`` entry) for ``incontext.kind``."""
    ic, root = cfg.incontext, resolve_root(cfg.data.root)
    episodes.check_holdout(ic.holdout, root)  # run() called without check(): still never train on a typo
    torch.manual_seed(cfg.seed)
    if ic.kind == "classification":
        from tpp.incontext.features import load_extractor

        extractor = load_extractor(cfg.backbone.path, str(device))
        pool = episodes.classification_pool(root, ic.holdout, extractor, ic.per_class, cfg.seed, log)
        model = learned.SetClassifier(pool[0].features.shape[1], ic.hidden, ic.layers, ic.heads, ic.max_classes)

        def draw(rng):
            return episodes.classification_batch(rng, pool, cfg.train.batch_size, ic.max_classes, ic.max_context,
                                                 ic.queries, ic.one_vs_rest)

        info = extractor.info
        tasks = {"datasets": {d.name: {"images": len(d.labels), "classes": len(d.classes)} for d in pool},
                 "episodes": "class subsets (2..max_classes, half binary) and one-vs-rest of each dataset; K per "
                             "class 1..max_context (log-uniform); label ids permuted per episode",
                 "backbone": {"id": cfg.backbone.path, "hash": info.hash, "image_size": info.input_size or
                              info.image_size}}
        return model, draw, tasks
    pool = episodes.segmentation_pool(root, ic.holdout, ic.pool_images, ic.image_size, cfg.seed, log)
    names, p = episodes.task_weights(ic.tasks, pool)
    model = learned.CrossConvNet(tuple(ic.channels))

    def draw(rng):
        return episodes.segmentation_batch(rng, pool, cfg.train.batch_size, ic.max_context, ic.tasks)

    tasks = {"images": pool.describe(), "tasks": dict(zip(names, p.round(4).tolist())), "image_size": ic.image_size,
             "episodes": "S support pairs 1..max_context, one target each; segmentation tasks: BCE + Dice, "
                         "image-to-image tasks (denoise, inpaint): MSE of the sigmoid output"}
    if pool.busi_images is None:
        tasks["note"] = ("BUSI (the only real segmentation set here) is held out: segmentation was learned from "
                         "synthetic tasks only")
    return model, draw, tasks


def run(cfg, run) -> dict:
    cpu_start = time.process_time()
    accelerator = build_accelerator(cfg.train.mixed_precision, cfg.seed, run, log_with=cfg.train.log_with,
                                    device=cfg.device)
    ic = cfg.incontext
    model, draw, tasks = build_task(cfg, accelerator.device, lambda line: run.log(event="data", line=line))
    parameters = sum(p.numel() for p in model.parameters())
    run.log(event="model", kind=ic.kind, parameters=parameters, holdout=ic.holdout)
    num_steps = cfg.train.max_steps
    optimizer = make_optimizer(model, cfg.train.lr, cfg.train.weight_decay, beta2=cfg.train.adam_beta2)
    scheduler = make_scheduler(optimizer, cfg.train.warmup_ratio, num_steps)
    loader = make_loader(torch.arange(EPISODE_INDICES), batch_size=1, shuffle=False)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    loss_of = _classification_loss if ic.kind == "classification" else _segmentation_loss
    scores = []

    def loss_fn(model, batch):
        rng = np.random.default_rng([cfg.seed, int(batch[0][0])])
        loss, score = loss_of(model, draw(rng), accelerator.device)
        scores.append(score)
        return loss

    result = train_loop(accelerator, model, loss_fn, loader, optimizer, scheduler, num_steps, run.log,
                        desc=f"incontext {ic.kind}", checkpoints=checkpointer(cfg.train, run))
    model = accelerator.unwrap_model(model).eval()
    curve = loss_curve(result.losses)
    metric = "accuracy" if ic.kind == "classification" else "dice"
    recent = [s[metric] for s in scores[-50:] if not np.isnan(s[metric])]
    cpu_s = time.process_time() - cpu_start
    summary = {"kind": ic.kind, "steps": num_steps, "episodes_per_step": cfg.train.batch_size,
               "parameters": parameters, "final_loss": curve[-1][1] if curve else None,
               f"train_episode_{metric}": float(np.mean(recent)) if recent else None,
               "holdout": list(ic.holdout), "cpu_seconds": round(cpu_s, 1), "cpu_hours": round(cpu_s / 3600, 3),
               "cpu_note": "CPU time of this invocation (all threads); a resumed run counts its own part only",
               "device": str(accelerator.device)}
    card = {"task_distribution": tasks, "holdout": list(ic.holdout), "seed": cfg.seed,
            "train": {"steps": num_steps, "episodes_per_step": cfg.train.batch_size, "lr": cfg.train.lr,
                      "max_context": ic.max_context},
            "summary": summary, "loss_curve": curve}
    run.publish_dir("model", lambda tmp: learned.save(model, ic.kind, tmp, card))
    run.publish_json("metrics.json", summary)
    return summary


def report(summary: dict) -> list[str]:
    """Lines ``tpp run`` prints at the end."""
    metric = "accuracy" if summary["kind"] == "classification" else "dice"
    value = summary.get(f"train_episode_{metric}")
    shown = f"{value:.3f}" if value is not None else "n/a"
    return [f"learned in-context {summary['kind']} model ({summary['parameters']:,} parameters): loss "
            f"{summary['final_loss']:.4f} after {summary['steps']} steps, training-episode {metric} {shown}; "
            f"held out: {', '.join(summary['holdout'])}; {summary['cpu_hours']:.3f} CPU-hours"]


def compare_row(run) -> dict:
    """Its row of `tpp compare` (column key -> raw value): a learned in-context model of ``incontext.kind``; data:
    the datasets its classification episodes came from, or the segmentation tasks drawn (from ``model/``'s card);
    its final training loss in the loss column (a training-episode score is no test metric, so no split)."""
    import json

    from tpp.compare import dig, dir_size_or_none

    m = run.metrics
    kind = m.get("kind") if isinstance(m.get("kind"), str) else run.cfg("incontext", "kind")
    try:
        card = json.loads((run.path / "model" / learned.CARD).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # no model/ (moved away) or a damaged card: no data column
        card = None
    tasks = dig(card, "task_distribution", "datasets" if kind == "classification" else "tasks")
    used = sorted(k for k, w in tasks.items() if kind == "classification" or (isinstance(w, (int, float)) and w > 0)) \
        if isinstance(tasks, dict) else []
    return {"task": f"in-context {kind}" if isinstance(kind, str) else "in-context", "method": "learned",
            "data": "+".join(map(str, used)) or None, "pretext_loss": m.get("final_loss"),
            "trainable_parameters": m.get("parameters"), "saved_bytes": dir_size_or_none(run.path / "model")}
