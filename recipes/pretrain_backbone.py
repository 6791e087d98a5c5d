"""Pre-train a whole small ViT-MAE backbone from scratch on a pool of datasets.

    tpp run pretrain_backbone --config recipes/configs/backbones/mae_vit_tiny_med_pool.yaml

Objective per batch: masked image modeling (ViT-MAE encoder on the visible patches, decoder predicts
the masked pixels) plus, with ``supervised_weight > 0``, one linear head per labelled pool dataset on
the mean patch tokens of the unmasked encoder (UMedPT-style; the mean over the datasets present in
the batch, so memory does not grow with the number of tasks beyond one small head each). Only the
training splits are used. Writes ``backbone/`` in transformers' format (``config.json`` with ``mask_ratio`` 0.0,
``model.safetensors``, ``preprocessor_config.json`` with mean/std) plus ``tpp_backbone_card.json``
listing the pool, its content hashes and its licences. The supervised heads are kept as the backbone's source
classifier (``tpp_source_heads.safetensors``, described in the card's ``source_classifier`` with the pooling they
read: mean patch tokens), which label mapping (``classification.output_mapping``) maps to a target's classes.
"""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from tpp.adapter_dir import versions
from tpp.backbones import FAMILIES, MAX_PATCH_TOKENS, Encoder, backbone_hash
from tpp.data.build import data_license, load_data, random_hflip
from tpp.data.stream import ConcatInputs, ModelInputs, stream_loader
from tpp.errors import ConfigError, TppError
from tpp.pretext.mae import decode, encode_visible, mask_noise, masked_mse, patchify
from tpp.source_classifier import HEADS_FILE
from tpp.tasks import get_task
from tpp.safe_write import finite_json
from tpp.training import (build_accelerator, checkpointer, loss_curve, make_optimizer, make_scheduler, plan_steps,
                          train_loop)

BACKBONE_CARD = "tpp_backbone_card.json"


def build_model(model_cfg, mask_ratio: float, norm_pix_loss: bool, seed: int):
    """A freshly initialised transformers ``ViTMAEForPreTraining`` from the ``model`` section."""
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    fields = {k: v for k, v in vars(model_cfg).items() if k not in ("mean", "std")}
    torch.manual_seed(seed)
    return ViTMAEForPreTraining(ViTMAEConfig(**fields, mask_ratio=mask_ratio, norm_pix_loss=norm_pix_loss))


RECENT = 50  # final_mae_loss / final_supervised_loss: the mean of the last losses


class PoolObjective(nn.Module):
    """``forward(pixel_values (B, C, H, W), source (B,), labels (B,)) -> loss``.

    ``labels`` are -1 for images whose dataset is not supervised. Heads: one linear layer per
    supervised dataset, indexed by ``source``, on the mean patch tokens (B, D) of the unmasked encoder.
    """

    def __init__(self, model, classes_per_source: list[int], mask_ratio: float, supervised_weight: float):
        super().__init__()
        self.encoder, self.decoder = Encoder(model.vit, FAMILIES["vit_mae"]), model.decoder
        hidden = model.config.hidden_size
        self.heads = nn.ModuleList(nn.Linear(hidden, k) if k else nn.Identity() for k in classes_per_source)
        self.mask_ratio, self.supervised_weight = mask_ratio, supervised_weight
        self.norm_pix_loss, self.last = model.config.norm_pix_loss, {}
        self.recent: list[tuple[float, float]] = []  # the last RECENT (MAE, supervised) losses: the final ones

    def mae_loss(self, pixel_values: torch.Tensor) -> torch.Tensor:
        noise = mask_noise(len(pixel_values), self.encoder.num_patches(pixel_values), pixel_values.device)
        latent, mask, ids_restore = encode_visible(self.encoder, pixel_values, noise, self.mask_ratio)
        target = patchify(pixel_values, self.encoder.base_config.patch_size)
        return masked_mse(decode(self.decoder, latent, ids_restore).float(), target.float(), mask, self.norm_pix_loss)

    def supervised_loss(self, pixel_values: torch.Tensor, source: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean over the supervised datasets present in the batch of their cross-entropy."""
        labelled = labels >= 0
        if self.supervised_weight == 0 or not labelled.any():
            return pixel_values.new_zeros(())
        features = self.encoder.patch_tokens(self.encoder(pixel_values[labelled])).mean(dim=1)
        losses = [F.cross_entropy(self.heads[s](features[source[labelled] == s]),
                                  labels[labelled][source[labelled] == s])
                  for s in source[labelled].unique().tolist()]
        return torch.stack(losses).mean()

    def forward(self, pixel_values, source, labels):
        mae, sup = self.mae_loss(pixel_values), self.supervised_loss(pixel_values, source, labels)
        self.last = {"mae": mae.detach().item(), "supervised": sup.detach().item()}
        self.recent = (self.recent + [(self.last["mae"], self.last["supervised"])])[-RECENT:]
        return mae + self.supervised_weight * sup

    def loop_state(self, full: bool = True) -> dict[str, torch.Tensor]:
        """In a checkpoint (``full``): ``recent`` (n, 2) float64, the last losses, so a resumed run reports the
        final losses the uninterrupted one does (:mod:`tpp.training` keeps it)."""
        return {"recent": torch.tensor(self.recent, dtype=torch.float64).reshape(-1, 2)} if full else {}

    def load_loop_state(self, state: dict[str, torch.Tensor]) -> None:
        if "recent" in state:
            self.recent = [(float(a), float(b)) for a, b in state["recent"].reshape(-1, 2).tolist()][-RECENT:]


def load_pool(cfg) -> tuple[ConcatInputs, torch.Tensor, torch.Tensor, list[dict], list[int]]:
    """Training images of every pool dataset as model input converted per batch (``inputs[index]`` ->
    (B, C, S, S); the images stay as stored: arrays, or files read when a batch needs them), with source index
    and label (N,) each (-1 when unsupervised). Returns (inputs, source, labels, card entries, classes per
    source). An entry without its own ``data.root`` uses the top-level ``data.root`` (else TPP_DATA_ROOT)."""
    m = cfg.model
    images, sources, labels, entries, classes = [], [], [], [], []
    for index, entry in enumerate(cfg.pool):
        dataset, train, supervised = pool_dataset(cfg, index, entry)
        images.append(ModelInputs(train.images, m.num_channels, m.image_size, m.mean, m.std))
        sources.append(torch.full((len(train),), index))
        labels.append(torch.from_numpy(train.labels) if supervised else torch.full((len(train),), -1))
        classes.append(dataset.num_classes if supervised else 0)
        entries.append(dict(dataset.describe({"split": "train", "images": len(train)}, labels=supervised),
                            supervised=supervised, license=data_license(entry.data),
                            skipped_files=len(dataset.skipped)))
    return ConcatInputs(images), torch.cat(sources), torch.cat(labels).long(), entries, classes


def pool_dataset(cfg, index: int, entry) -> tuple:
    """Pool entry ``index`` loaded at the model's size and checked: (dataset, training split, whether its labels
    train a head: at least two classes and no masks, else a TppError naming the entry)."""
    data = dataclasses.replace(entry.data, root=entry.data.root or cfg.data.root)  # data.root applies to all
    dataset = load_data(data, cfg.seed, cfg.model.image_size)
    train = dataset.split("train")
    supervised = entry.supervised and train.labels is not None
    if supervised:  # at least two classes (a one-class head learns nothing), no masks
        try:
            get_task("classification").check_data(dataset)
        except TppError as exc:
            raise TppError(f"pool[{index}]: {exc} Set pool[{index}].supervised=false to use its images for "
                           "MAE only.") from None
    return dataset, train, supervised


def check_pool_data(cfg) -> dict:
    """What ``tpp validate`` checks of the pool's data: every entry loaded and checked as the run does
    (:func:`pool_dataset`). Returns {entry: training images}."""
    return {f"pool[{i}] {d.name}": len(train) for i, (d, train, _) in
            enumerate(pool_dataset(cfg, i, entry) for i, entry in enumerate(cfg.pool))}


def source_heads(objective: PoolObjective, entries: list[dict], classes: list[int]) -> tuple[dict, dict]:
    """The trained supervised heads as tensors (``<dataset>.weight`` (K, D), ``<dataset>.bias`` (K,)) and the card's
    ``source_classifier`` entry (pooling and label names per head); ({}, {}) when no head trained."""
    tensors, heads = {}, {}
    for index, (entry, k) in enumerate(zip(entries, classes)):
        if not k:
            continue
        name = entry["name"] if entry["name"] not in heads else f"{entry['name']}_{index}"
        linear = objective.heads[index]
        tensors[f"{name}.weight"] = linear.weight.detach().cpu().contiguous()
        tensors[f"{name}.bias"] = linear.bias.detach().cpu().contiguous()
        heads[name] = {"label_names": list(entry.get("classes", [])), "num_classes": k, "pool_index": index}
    if not heads:
        return {}, {}
    return tensors, {"file": HEADS_FILE, "pooling": "mean_patch_tokens", "heads": heads,
                     "pooling_note": "linear heads on the mean of the patch tokens (CLS excluded) of the final-"
                                     "layernormed encoder output, unmasked (mask_ratio 0); transformers' "
                                     "ViTForImageClassification reads the CLS token instead"}


def write_backbone(path, model, model_cfg, card: dict, heads: dict | None = None) -> None:
    """transformers format + image-processor config + card, into a fresh folder.

    ``config.json`` says ``mask_ratio: 0.0``: transformers' ViT-MAE masks and shuffles patches on every call
    otherwise, so a plain ``AutoModel`` of the saved backbone would give random outputs. The pretext's own mask
    ratio is in the card (``objective.mae.mask_ratio``); tpp's MAE pretext always passes its ratio explicitly."""
    model.config.mask_ratio = 0.0
    model.save_pretrained(str(path))
    processor = {"image_processor_type": "ViTImageProcessor", "do_resize": True,
                 "size": {"height": model_cfg.image_size, "width": model_cfg.image_size},
                 "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
                 "image_mean": list(model_cfg.mean), "image_std": list(model_cfg.std)}
    (path / "preprocessor_config.json").write_text(json.dumps(processor, indent=2))
    if heads:
        from safetensors.torch import save_file

        save_file(heads, str(path / HEADS_FILE))
    (path / BACKBONE_CARD).write_text(json.dumps(finite_json(card), indent=2))


def check(cfg) -> None:
    """What this recipe needs of the config alone (``tpp validate`` runs it too)."""
    if cfg.pretext.name != "mae":
        raise ConfigError(f"pretrain_backbone trains a ViT-MAE: pretext.name must be mae, got {cfg.pretext.name!r}.")
    if not cfg.pool:
        raise ConfigError("pretrain_backbone needs a non-empty pool: a list of {data: {...}, supervised: bool}.")
    problems = model_problems(cfg.model) + pool_problems(cfg)
    if problems:
        raise ConfigError("\n".join(problems))


def pool_problems(cfg) -> list[str]:
    """The supervised part of the pool: a finite, non-negative ``supervised_weight`` (a negative one ascended the
    classification loss) and no supervised entry on a source of masks (its images all got the label 0)."""
    from tpp.data.sources import get_source

    problems = []
    if not math.isfinite(cfg.supervised_weight) or cfg.supervised_weight < 0:
        problems.append(f"supervised_weight must be a finite number, 0 or more (0: MAE only), got "
                        f"{cfg.supervised_weight}.")
    for i, entry in enumerate(cfg.pool):
        if entry.supervised and get_source(entry.data.source).masks:
            problems.append(f"pool[{i}]: data.source={entry.data.source} holds segmentation masks, no class labels "
                            f"for a supervised head; set pool[{i}].supervised=false (MAE on its images).")
    return problems


def model_problems(m) -> list[str]:
    """Architectures transformers would build but that fail at the first step (or at once): sizes at least 1,
    the image a whole number of patches, widths a whole number of heads."""
    sizes = ("image_size", "patch_size", "num_channels", "hidden_size", "num_hidden_layers", "num_attention_heads",
             "intermediate_size", "decoder_hidden_size", "decoder_num_hidden_layers", "decoder_num_attention_heads",
             "decoder_intermediate_size")
    problems = [f"model.{k} must be at least 1, got {getattr(m, k)}." for k in sizes if getattr(m, k) < 1]
    if problems:
        return problems
    if (m.image_size // m.patch_size) ** 2 > MAX_PATCH_TOKENS:
        problems.append(f"model.image_size={m.image_size} with model.patch_size={m.patch_size} gives "
                        f"{(m.image_size // m.patch_size) ** 2:,} patch tokens per image, more than the "
                        f"{MAX_PATCH_TOKENS:,} tpp trains adapters on or loads: no other recipe could use it.")
    if m.image_size % m.patch_size:
        problems.append(f"model.image_size={m.image_size} is not a whole number of model.patch_size={m.patch_size} "
                        "patches; choose a patch size that divides it (28 px: 2, 4, 7, 14).")
    widths = (("hidden_size", "num_attention_heads"), ("decoder_hidden_size", "decoder_num_attention_heads"))
    for width, heads in widths:
        if getattr(m, width) % getattr(m, heads):
            problems.append(f"model.{width}={getattr(m, width)} is not a multiple of model.{heads}="
                            f"{getattr(m, heads)}.")
    if len(m.mean) != m.num_channels or len(m.std) != m.num_channels or not all(
            isinstance(v, (int, float)) and v > 0 for v in m.std):
        problems.append(f"model.mean and model.std need one value per channel (model.num_channels={m.num_channels}), "
                        "std positive.")
    return problems


def run(cfg, run) -> dict:
    accelerator = build_accelerator(cfg.train.mixed_precision, cfg.seed, run, log_with=cfg.train.log_with,
                                    find_unused_parameters=True, device=cfg.device)
    mae = cfg.pretext.resolved()
    x, source, labels, entries, classes = load_pool(cfg)
    model = build_model(cfg.model, mae.mask_ratio, mae.norm_pix_loss, cfg.seed)
    objective = PoolObjective(model, classes, mae.mask_ratio, cfg.supervised_weight)
    run.log_data(bool(cfg.train.resume), images=len(x),
                 pool=[{k: e[k] for k in ("name", "supervised", "license")} for e in entries],
                 parameters=sum(p.numel() for p in model.vit.parameters()))

    plan = plan_steps(cfg.train, len(x), accelerator.num_processes)
    optimizer = make_optimizer(objective, cfg.train.lr, cfg.train.weight_decay, beta2=cfg.train.adam_beta2)
    scheduler = make_scheduler(optimizer, cfg.train.warmup_ratio, plan.num_steps)
    loader = stream_loader(x, source, labels, batch_size=cfg.train.batch_size, shuffle=True, seed=cfg.seed,
                           num_workers=cfg.data.num_workers)
    objective, optimizer, loader, scheduler = accelerator.prepare(objective, optimizer, loader, scheduler)

    def loss_fn(objective, batch):
        images, src, lab = batch
        return objective(random_hflip(images) if cfg.data.hflip else images, src, lab)

    result = train_loop(accelerator, objective, loss_fn, loader, optimizer, scheduler, plan.num_steps, run.log,
                        desc="pretrain_backbone", accum_steps=cfg.train.grad_accum_steps,
                        checkpoints=checkpointer(cfg.train, run))
    model.eval()
    tensors, heads = source_heads(accelerator.unwrap_model(objective), entries, classes)
    if cfg.supervised_weight == 0:
        tensors, heads = {}, {}  # untrained heads are no classifier
    licenses = sorted({e["license"] for e in entries})
    curve, recent = loss_curve(result.losses), accelerator.unwrap_model(objective).recent
    summary = {"steps": plan.num_steps, "images": len(x), "final_loss": curve[-1][1],
               "final_mae_loss": float(np.mean([mae for mae, _ in recent])),
               "final_supervised_loss": float(np.mean([sup for _, sup in recent])),
               "encoder_parameters": sum(p.numel() for p in model.vit.parameters()),
               "wall_time_s": round(run.elapsed(), 1)}
    card = {"format": "tpp-backbone/1", "kind": "backbone", "hash": backbone_hash(model.vit),
            "objective": {"mae": {"mask_ratio": mae.mask_ratio, "norm_pix_loss": mae.norm_pix_loss,
                                  "config_mask_ratio": 0.0, "note": "config.json says mask_ratio 0.0 (no random "
                                  "masking when loaded by plain transformers); the pretext masked mask_ratio"},
                          "supervised_heads": cfg.supervised_weight > 0, "supervised_weight": cfg.supervised_weight,
                          "heads": "one linear head per supervised dataset on mean patch tokens, kept as the "
                                   "source classifier (source_classifier)" if heads else "none trained"},
            "pool": entries, "licenses": licenses,
            "license_note": license_note(licenses),
            "train": {"steps": plan.num_steps, "batch_size": cfg.train.batch_size, "lr": cfg.train.lr,
                      "seed": cfg.seed},
            "summary": summary, "loss_curve": curve, "versions": versions()}
    if heads:
        card["source_classifier"] = heads
    run.publish_dir("backbone", lambda tmp: write_backbone(tmp, model, cfg.model, card, tensors))
    summary["device"] = str(accelerator.device)
    run.publish_json("metrics.json", summary)
    return summary


def report(summary: dict) -> list[str]:
    """Lines ``tpp run`` prints at the end."""
    return [f"MAE loss {summary['final_mae_loss']:.4f}, supervised loss {summary['final_supervised_loss']:.4f} after "
            f"{summary['steps']} steps on {summary['images']} images; "
            f"encoder {summary['encoder_parameters']:,} parameters"]


def license_note(licenses: list[str]) -> str:
    notes = []
    if any("NC" in lic for lic in licenses):
        notes.append("includes non-commercial (NC) data: the weights may not be usable commercially")
    if any("SA" in lic for lic in licenses):
        notes.append("includes share-alike (SA) data: derived works may have to carry the same licence")
    if "unknown" in licenses:
        notes.append("some pool data has no declared licence (data.license)")
    return "; ".join(notes) or "all pool data under the listed licences"


def compare_row(run) -> dict:
    """A backbone from scratch: every encoder weight trains; its loss here is the MAE (reconstruction) part."""
    from tpp.compare import dig, dir_size_or_none

    m = run.metrics
    pool = run.cfg("pool")
    names = [dig(entry, "data", "name") for entry in pool] if isinstance(pool, list) else []
    pretext = run.cfg("pretext", "name") or "mae"
    return {"task": f"{pretext} pretext", "method": None, "data": "+".join(str(n) for n in names) or None,
            "pretext_loss": m.get("final_mae_loss", m.get("final_loss")),
            "trainable_parameters": m.get("encoder_parameters"),
            "saved_bytes": dir_size_or_none(run.path / "backbone")}
