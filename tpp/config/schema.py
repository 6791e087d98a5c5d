"""The typed config schema: the single source of keys, types, defaults and help.

One dataclass per section (``backbone``, ``adapter``, ``data``, ``train``, ``pretext``, ``model``, a ``pool``
entry, ``multitask``) and :class:`RunConfig`, the whole config; each key's help text is its field's metadata
(``tpp validate --keys``). Plug-in options (a method's ``r``, a pretext's ``mask_ratio``, a data source's
``file``, a task's section) are no fields here: the plug-in's own options dataclass checks them
(:mod:`tpp.config.plugins`).

Precedence: ``train.max_steps`` (when set) fixes the number of optimiser steps and ``train.epochs``
is then ignored; otherwise the run lasts ``train.epochs`` passes over the training split, and at least
``train.min_steps`` steps when that is set.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Optional


def _f(default, help: str, **kw):
    """A dataclass field with help text stored in its metadata."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


@dataclass
class BackboneConfig:
    path: str = _f("builtin:mae-vit-tiny-med",
                   "hub id, local directory or builtin:NAME (shipped with tpp) of a ViT / ViT-MAE / DINOv2 checkpoint")
    mean: Optional[list] = _f(None, "per-channel mean; default: the checkpoint's preprocessor_config.json")
    std: Optional[list] = _f(None, "per-channel std; default: the checkpoint's preprocessor_config.json")
    input_size: Optional[int] = _f(None, "pixels fed to the encoder (multiple of the patch size); default: the "
                                         "checkpoint's image size; other sizes interpolate position embeddings")


@dataclass
class AdapterConfig:
    """Keys common to every method. Method options (``r``, ``alpha`` ...) are checked by the method's
    own dataclass from the adapter registry and kept in ``options``.

    With ``init_from``, the method and its inherited options come from the parent adapter: values from the
    config file give way to the parent's, values given on the command line (``explicit``, set by
    :func:`tpp.config.load_config`; ``None`` = every key counts as explicit) must agree with it."""
    explicit: typing.ClassVar[Optional[frozenset]] = None
    method: str = _f("lora", "adapter method from the registry (`tpp ls` lists them)")
    path: Optional[str] = _f(None, "adapter directory to load (evaluate)")
    init_from: Optional[str] = _f(None, "adapter directory whose target parameters start fine-tuning (TPP)")
    require_same_modality: bool = _f(False, "fail instead of warn when init_from was pre-trained on another modality")
    options: dict = _f({}, "method options given by the user, flat as adapter.<option>")

    def typed(self):
        """The method's options dataclass (defaults filled in), built once and handed on as it is (to
        ``tpp.model.attach_adapter`` and into the card)."""
        from tpp.adapters import get_method

        if self.__dict__.get("_typed") is None:
            self.__dict__["_typed"] = get_method(self.method).options_cls(**self.options)
        return self.__dict__["_typed"]

    def resolved_options(self) -> dict:
        """The method's options with its defaults filled in."""
        return dataclasses.asdict(self.typed())


@dataclass
class DataConfig:
    """Keys common to every data source. The source's own options (``file``, ``image_key``, ``mask_key`` ...)
    are checked by its options dataclass from the source registry (``tpp.data.sources``), set flat as
    ``data.<option>`` and kept in ``options``; :meth:`resolved` gives them typed, defaults filled in."""
    name: str = _f("breastmnist", "dataset name: a MedMNIST flag (breastmnist, pneumoniamnist ...) or your own; "
                                  "default: breastmnist for data.source=medmnist, else data.file's stem (or the "
                                  "data root's folder name)")
    source: str = _f("medmnist", "where images come from: a source from the registry (`tpp ls`); each one's "
                                 "options are listed below, tagged")
    root: Optional[str] = _f(None, "data root; default: env TPP_DATA_ROOT")
    origin: Optional[str] = _f(None, "image collection the data comes from (e.g. BUSI); an adapter pre-trained "
                                     "on the same collection under another split is refused (leakage)")
    modality: Optional[str] = _f(None, "DICOM modality code (US, CR, DX, CT, MR, SM, XC, OP ...); required for folders")
    label_fraction: float = _f(1.0, "stratified, nested fraction of training labels used (drawn by seed)")
    val_label_fraction: Optional[float] = _f(
        None, "finetune: stratified fraction of the val split used for model selection, the decision threshold and "
              "val metrics (at least one image per class; drawn by seed); default: data.label_fraction (a "
              "few-label site has few validation labels too); 1: the whole val split")
    split_seed: int = _f(0, "seed of the train/val/test split of sources without their own (segmentation .npz, "
                            "folders, CSV, .npz without split keys); fixed by default, apart from seed, so seeds "
                            "vary training and not the test set")
    split: str = _f("test", "split evaluated by the evaluate recipe")
    val_fraction: float = _f(0.1, "seeded split when the data has none: fraction for val")
    test_fraction: float = _f(0.2, "seeded split when the data has none: fraction for test")
    hflip: bool = _f(True, "random horizontal flips during training")
    use_eval_splits: bool = _f(False, "TPP only: also pre-train on val/test images (recorded in the card)")
    license: Optional[str] = _f(None, "licence of the data, recorded in cards (known for MedMNIST; else declare it)")
    num_workers: int = _f(0, "worker processes that read (files), convert, resize and normalise batches while the "
                             "model computes; 0: in the main process")
    options: dict = _f({}, "source options given by the user, flat as data.<option>")

    def resolved(self):
        """The source's options dataclass, defaults filled in."""
        from tpp.data.sources import get_source

        return get_source(self.source).options_cls(**self.options)

    def flat(self) -> dict:
        """The section as a plain dict, the source's resolved options flat beside the common keys."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "options"}
        return out | dataclasses.asdict(self.resolved())


@dataclass
class TrainConfig:
    epochs: int = _f(10, "passes over the (labelled) training split: steps = epochs x ceil(images / batch_size), "
                         "so the budget scales with the labels; ignored when max_steps is set")
    max_steps: Optional[int] = _f(None, "a fixed number of optimiser steps, whatever the number of labelled images; "
                                        "takes precedence over epochs")
    min_steps: Optional[int] = _f(None, "with epochs: at least this many optimiser steps (a few labels make epochs "
                                        "of a step or two); steps = max(min_steps, epochs x steps per epoch)")
    batch_size: int = _f(64, "images per optimiser step")
    log_with: Optional[str] = _f(None, "also log through an Accelerate tracker: tensorboard, wandb, mlflow, aim, "
                                       "comet_ml, clearml, dvclive, swanlab or trackio (its package must be installed; "
                                       "local files go into output_dir)")
    checkpoint_every: Optional[int] = _f(None, "save trainable tensors + optimiser/scheduler/RNG/data position "
                                               "every N steps")
    keep_checkpoints: int = _f(2, "how many of the newest checkpoints to keep")
    resume: Optional[str] = _f(None, "auto: continue from the newest checkpoint in output_dir (a run that "
                                                "already succeeded is left as it is); or a checkpoint folder")
    grad_accum_steps: int = _f(1, "split each step's batch into this many micro-batches: same gradients, less "
                                  "activation memory (random augmentation and masking draw differently)")
    lr: float = _f(1e-3, "peak learning rate (AdamW)")
    weight_decay: float = _f(0.01, "AdamW weight decay")
    warmup_ratio: float = _f(0.05, "fraction of steps with linear warm-up before cosine decay")
    mixed_precision: Literal["no", "bf16", "fp16"] = _f("no", "Accelerate mixed precision (fp16 needs a GPU)")
    eval_every: Optional[int] = _f(None, "validate every N steps; default: once per epoch, at most ~20 times a run")
    eval_batch_size: int = _f(256, "images per evaluation batch")
    head_lr_scale: float = _f(1.0, "learning-rate multiplier for the task head")
    adam_beta2: float = _f(0.999, "AdamW beta2 (MAE pre-training uses 0.95)")
    select_best: bool = _f(True, "finetune: keep the weights of the best validation score (AUROC, Dice); false: "
                                 "the last step's, without validating during training. Off by itself when fewer "
                                 "than 10 validation images are used (the run's summary line says so)")


@dataclass
class PretextConfig:
    """The pretext task of ``tpp run tpp`` (and the MAE settings of ``pretrain_backbone``). Its options
    (``mask_ratio``, ``dino_ema`` ...) are checked by the pretext's own dataclass from the pretext
    registry and kept in ``options``."""
    name: str = _f("mae", "pretext task from the pretext registry (each one's options are listed below, tagged)")
    options: dict = _f({}, "pretext options given by the user, flat as pretext.<option>")

    def resolved(self):
        """The pretext's options dataclass, defaults filled in."""
        from tpp.pretext import get_pretext

        return get_pretext(self.name).options_cls(**self.options)


@dataclass
class ModelConfig:
    """Architecture of a backbone built from scratch (pretrain_backbone): a transformers ViT-MAE."""
    image_size: int = _f(28, "input size in pixels")
    patch_size: int = _f(4, "patch size in pixels")
    num_channels: int = _f(3, "input channels (gray images are replicated)")
    hidden_size: int = _f(192, "encoder width")
    num_hidden_layers: int = _f(6, "encoder depth")
    num_attention_heads: int = _f(3, "encoder heads")
    intermediate_size: int = _f(768, "encoder MLP width")
    decoder_hidden_size: int = _f(128, "MAE decoder width")
    decoder_num_hidden_layers: int = _f(2, "MAE decoder depth")
    decoder_num_attention_heads: int = _f(4, "MAE decoder heads")
    decoder_intermediate_size: int = _f(512, "MAE decoder MLP width")
    mean: list = _f([0.5, 0.5, 0.5], "per-channel mean written to preprocessor_config.json")
    std: list = _f([0.25, 0.25, 0.25], "per-channel std written to preprocessor_config.json")


@dataclass
class PoolEntry:
    """One dataset of a pre-training pool: a data section, and whether its labels train a head. For the
    multitask recipe each entry is one task: ``kind``, ``weight``, ``head`` options and an optional ``name``."""
    data: DataConfig = field(default_factory=DataConfig)
    supervised: bool = _f(True, "pretrain_backbone: train a linear head on this dataset's labels (UMedPT-style)")
    kind: Optional[str] = _f(None, "multitask: classification, segmentation (a task), mae or dino (a pretext)")
    weight: float = _f(1.0, "multitask: the task's loss weight (cyclic sampler) or its draw weight (weighted)")
    head: dict = _f({}, "multitask: the task's or pretext's own options (dice_weight, mask_ratio, dino_ema ...)")
    name: Optional[str] = _f(None, "multitask: the task's name (its head file heads/NAME.safetensors); default "
                                   "DATA.NAME-KIND")


MULTITASK_ENTRY_KEYS = ("kind", "weight", "head", "name")  # pool-entry keys only the multitask recipe reads
# keys of a pool entry's data section the multitask recipe never reads (each task trains on its dataset's whole
# training split; data.hflip and data.num_workers apply to every task): refused off their default, not recorded
MULTITASK_UNREAD_DATA_KEYS = ("split", "label_fraction", "val_label_fraction", "use_eval_splits", "hflip",
                              "num_workers")


@dataclass
class MultitaskConfig:
    """The multitask recipe: the schedule over the tasks listed in ``pool`` (UMedPT-style)."""
    scope: Literal["target", "backbone"] = _f(
        "target", "target: train the adapter's target parameters on the frozen backbone (multi-task TPP); backbone: "
                  "train every weight of a ViT-MAE backbone and save it in transformers format")
    schedule: Literal["cycle", "summed"] = _f(
        "cycle", "cycle: each task's batch runs forward + backward at once (its activations freed), shared gradients "
                 "accumulate over the cycle, one shared optimiser step; summed: one loss over all task batches "
                 "(memory grows with the tasks; for comparison)")
    sampler: Literal["cyclic", "weighted"] = _f("cyclic", "cyclic: every task once per cycle, its loss times its "
                                                          "weight; weighted: tasks_per_cycle draws by weight "
                                                          "(with replacement), losses unweighted")
    tasks_per_cycle: Optional[int] = _f(None, "weighted sampler: task batches per cycle; default: the number of tasks")
    eval_targets: list = _f([], "datasets (MedMNIST names or origins, e.g. breastmnist, BUSI) the result will be "
                                "evaluated on: a task from the same image collection is refused")
    head_lr: Optional[float] = _f(None, "learning rate of each task head's own optimiser; default: train.lr")
    allocator: Literal["mmap", "trim", "default"] = _f(
        "mmap", "CPU heap between tasks (glibc; process-wide): mmap: tensors of 1 MiB or more in their own mmap, "
                "freed to the system (peak flat in the tasks, ~40% slower per task batch on CPU); trim: "
                "malloc_trim after each task (1.05-1.11x the largest task, faster); default: glibc's own "
                "behaviour (1.2x and more)")

    def __post_init__(self):
        import math

        from tpp.errors import ConfigError

        problems = []
        if self.tasks_per_cycle is not None and self.tasks_per_cycle < 1:
            problems.append(f"multitask.tasks_per_cycle must be at least 1, got {self.tasks_per_cycle}.")
        if not all(isinstance(t, str) and t for t in self.eval_targets):
            problems.append(f"multitask.eval_targets must be a list of dataset names or origins, got "
                            f"{self.eval_targets!r}.")
        if self.head_lr is not None and not (math.isfinite(self.head_lr) and self.head_lr > 0):
            problems.append(f"multitask.head_lr must be a positive finite number (the learning rate of each task "
                            f"head's optimiser; unset: train.lr), got {self.head_lr}.")
        if problems:
            raise ConfigError("\n".join(problems))


# -- out-of-distribution evaluation (issue 24: corruption shift) --------------------------------------------

@dataclass
class EvaluateConfig:
    """The evaluate recipe's out-of-distribution options: the split evaluated again under MedMNIST-C
    corruptions (``tpp.data.corruptions``), metrics per corruption and severity in ``metrics.json``."""
    corruption: Optional[str] = _f(None, "also evaluate under this MedMNIST-C corruption (e.g. speckle_noise), "
                                         "or 'all' of the preset's; default: none")
    severity: Optional[int] = _f(None, "corruption severity 1..5; default: every severity")
    corruption_preset: Optional[str] = _f(None, "dataset whose MedMNIST-C corruptions and severity parameters "
                                                "apply (breastmnist, pneumoniamnist, chestmnist, octmnist, "
                                                "organamnist ...); default: data.name")


# -- the learned in-context model (issue 25) --------------------------------------------------------------

INCONTEXT_TASKS = ("busi", "shapes", "threshold", "superpixel", "denoise", "inpaint")


@dataclass
class IncontextConfig:
    """The incontext recipe: a learned in-context model trained on episodes (``tpp.incontext.episodes``)."""
    kind: Literal["classification", "segmentation"] = _f(
        "classification", "classification: a set model on frozen backbone features; segmentation: a CrossConv "
                          "network on 64 px images (also image-to-image tasks)")
    holdout: list = _f(["breastmnist", "pneumoniamnist", "busi"],
                       "datasets never read in training (leave-one-dataset-out); breastmnist and busi are the same "
                       "images, so either holds out both")
    max_classes: int = _f(16, "classification: most classes a context may hold")
    max_context: int = _f(16, "most context examples per class (classification) or support pairs (segmentation) "
                              "an episode draws; the model itself takes any K")
    queries: int = _f(8, "classification: query examples per class and episode")
    one_vs_rest: float = _f(0.3, "classification: share of the binary episodes that are one class against the rest")
    per_class: int = _f(200, "classification: training images per class and dataset whose features are sampled")
    pool_images: int = _f(600, "segmentation: unlabeled training images per dataset for the synthetic tasks")
    image_size: int = _f(64, "segmentation: pixels per side")
    hidden: int = _f(128, "classification: width of the set model")
    layers: int = _f(2, "classification: attention layers over the context (and as many query layers)")
    heads: int = _f(4, "classification: attention heads")
    channels: list = _f([8, 16, 32, 32], "segmentation: channels of the CrossConv levels (64 -> 8 px)")
    tasks: dict = _f({"busi": 1.0, "shapes": 1.0, "threshold": 1.0, "superpixel": 1.0, "denoise": 0.5,
                      "inpaint": 0.5}, "segmentation: draw weight of each task (busi is skipped when held out)")

    def __post_init__(self):
        from tpp.errors import ConfigError

        problems = []
        if not all(isinstance(h, str) and h for h in self.holdout):
            problems.append(f"incontext.holdout must be a list of dataset names, got {self.holdout!r}.")
        for key in ("max_classes", "max_context", "queries", "per_class", "pool_images", "hidden", "layers", "heads"):
            if getattr(self, key) < 1:
                problems.append(f"incontext.{key} must be at least 1, got {getattr(self, key)}.")
        if self.max_classes < 2:
            problems.append(f"incontext.max_classes must be at least 2, got {self.max_classes}.")
        if not 0 <= self.one_vs_rest <= 1:
            problems.append(f"incontext.one_vs_rest is a share in [0, 1], got {self.one_vs_rest}.")
        levels = len(self.channels)
        if levels < 1 or not all(isinstance(c, int) and c >= 4 and c % 4 == 0 for c in self.channels):
            problems.append(f"incontext.channels must be a list of multiples of 4, got {self.channels!r}.")
        elif self.image_size < 8 or self.image_size % 2 ** (levels - 1):
            problems.append(f"incontext.image_size must be a multiple of {2 ** (levels - 1)} (one halving per "
                            f"level of incontext.channels), got {self.image_size}.")
        unknown = sorted(set(self.tasks) - set(INCONTEXT_TASKS))
        if unknown or not all(isinstance(w, (int, float)) and w >= 0 for w in self.tasks.values()):
            problems.append(f"incontext.tasks maps tasks ({', '.join(INCONTEXT_TASKS)}) to weights >= 0, got "
                            f"{self.tasks!r}.")
        if problems:
            raise ConfigError("\n".join(problems))


@dataclass
class RunConfig:
    recipe: str = _f("finetune", "recipe the config is written for; it may set only the sections that recipe reads "
                                 "(recipes/registry.py)")
    task: str = _f("classification", "finetune: what the head predicts, a task from the registry (`tpp ls`); its "
                                     "options are the config section named after it (segmentation.dice_weight ...)")
    site: str = _f("default", "hospital / site name recorded in the adapter card")
    seed: int = _f(0, "seed for label subsets (data.label_fraction, data.val_label_fraction), initialisation, "
                      "shuffling and augmentation; the split itself is data.split_seed's")
    output_dir: str = _f("runs/default", "where the run writes its log, metrics and adapter")
    device: str = _f("auto", "where the run computes: auto (a CUDA GPU if there is one, else mps, else cpu), cpu, "
                             "cuda, cuda:N or mps; recorded in log.jsonl and metrics.json")
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    pretext: PretextConfig = field(default_factory=PretextConfig)
    task_options: Any = _f(None, "the task's options (its own dataclass), set as the section named after the task")
    model: ModelConfig = field(default_factory=ModelConfig)
    pool: list = _f([], "pretrain_backbone: list of {data: {...}, supervised: bool} entries; multitask: the tasks, "
                        "{data: {...}, kind: ..., weight: 1, head: {...}, name: ...} each")
    supervised_weight: float = _f(1.0, "pretrain_backbone: weight of the mean supervised loss (0: MAE only)")
    multitask: MultitaskConfig = field(default_factory=MultitaskConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)  # issue 24: corruption shift
    incontext: IncontextConfig = field(default_factory=IncontextConfig)  # issue 25: learned in-context model

    def to_dict(self) -> dict:
        """Plain dict of the sections the recipe reads (a run's ``config.yaml``), with adapter, pretext and data
        source options flattened back into their sections."""
        out = dataclasses.asdict(self)
        out["data"] = self.data.flat()
        for entry, flat in zip(self.pool, out["pool"]):
            flat["data"] = entry.data.flat()
            if self.recipe != "multitask":  # pretrain_backbone's config.yaml stays as it was
                for key in MULTITASK_ENTRY_KEYS:
                    flat.pop(key)
            else:  # no split or flips the run did not use (split: test, the evaluate recipe's default)
                for key in MULTITASK_UNREAD_DATA_KEYS:
                    flat["data"].pop(key)
        out["adapter"].pop("options")
        out["adapter"].update(self.adapter.resolved_options())
        out["pretext"].pop("options")
        out["pretext"].update(dataclasses.asdict(self.pretext.resolved()))
        options = out.pop("task_options")
        if options:  # the task's own section, defaults filled in
            out[self.task] = options
        from tpp.recipes.registry import RECIPES

        for dotted in RECIPES[self.recipe].ignores:  # keys of its sections the recipe never reads
            section, key = dotted.split(".")
            out.get(section, {}).pop(key, None)
        return {k: v for k, v in out.items() if k in self.sections()}

    def sections(self) -> set[str]:
        """The top-level keys the recipe reads: its sections (``tpp.recipes.registry``), with ``task`` the
        section named after the task."""
        from tpp.recipes.registry import RECIPES

        sections = set(RECIPES[self.recipe].sections)
        return sections | {self.task} if "task" in sections else sections
