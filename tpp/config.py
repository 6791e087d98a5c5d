"""The typed config schema: the single source of keys, types, defaults and help.

A YAML file plus dotted ``key=value`` overrides is turned into a :class:`RunConfig` and checked
before any heavy work. Unknown keys and wrong types raise :class:`ConfigError` naming the key path.

Precedence: ``train.max_steps`` (when set) fixes the number of optimiser steps and ``train.epochs``
is then ignored; otherwise the run lasts ``train.epochs`` passes over the training split.
"""
from __future__ import annotations

import dataclasses
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from tpp.errors import ConfigError


def _f(default, help: str, **kw):
    """A dataclass field with help text stored in its metadata."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


@dataclass
class BackboneConfig:
    path: str = _f("../shared/models/mae-vit-tiny-med",
                   "hub id or local directory of a transformers ViT / ViT-MAE / DINOv2 checkpoint")
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
    :func:`load_config`; ``None`` = every key counts as explicit) must agree with it."""
    explicit: typing.ClassVar[Optional[frozenset]] = None
    method: str = _f("lora", "adapter method from the registry (`tpp ls` lists them)")
    path: Optional[str] = _f(None, "adapter directory to load (evaluate)")
    init_from: Optional[str] = _f(None, "adapter directory whose target parameters start fine-tuning (TPP)")
    require_same_modality: bool = _f(False, "fail instead of warn when init_from was pre-trained on another modality")
    options: dict = _f({}, "method options given by the user, flat as adapter.<option>")

    def resolved_options(self) -> dict:
        """The method's options with its defaults filled in."""
        from tpp.adapters import get_method

        return dataclasses.asdict(get_method(self.method).options_cls(**self.options))


@dataclass
class DataConfig:
    name: str = _f("breastmnist", "dataset name: a MedMNIST flag (breastmnist, pneumoniamnist ...) or your own")
    source: Literal["medmnist", "npz", "folder", "unlabeled_folder", "seg_npz", "seg_folder"] = _f(
        "medmnist", "where images come from; seg_npz (images + masks keys) and seg_folder (images/ + masks/) "
                    "carry segmentation masks")
    root: Optional[str] = _f(None, "data root; default: env TPP_DATA_ROOT")
    file: Optional[str] = _f(None, "npz source: file path (relative to root)")
    image_key: str = _f("images", "npz source: key of the image array")
    label_key: str = _f("labels", "npz source: key of the label array")
    class_names_key: Optional[str] = _f("class_names", "npz source: key of the class names, if any")
    mask_key: str = _f("masks", "seg_npz source: key of the uint8 class-index masks (N, H, W)")
    mask_classes: Literal["binary", "indices", "from_label"] = _f(
        "binary", "segmentation: binary masks (0/1 or 0/255); indices (values 0..K-1 named by data.classes); "
                  "from_label (foreground = 1 + the image's label, data.label_key: background / per-label lesion)")
    origin: Optional[str] = _f(None, "image collection the data comes from (e.g. BUSI); an adapter pre-trained "
                                     "on the same collection under another split is refused (leakage)")
    classes: Optional[list] = _f(None, "keep only these class names (npz and folder sources)")
    modality: Optional[str] = _f(None, "DICOM modality code (US, CR, DX, CT, MR, SM, XC, OP ...); required for folders")
    label_fraction: float = _f(1.0, "stratified, seeded, nested fraction of training labels used")
    val_label_fraction: Optional[float] = _f(
        None, "finetune: stratified, seeded fraction of the val split used for model selection and val metrics "
              "(a few-label site has few validation labels too); default: the whole val split")
    split: str = _f("test", "split evaluated by the evaluate recipe")
    val_fraction: float = _f(0.1, "seeded split when the data has none: fraction for val")
    test_fraction: float = _f(0.2, "seeded split when the data has none: fraction for test")
    group_key: Optional[str] = _f(None, "seeded splits keep each group in one split: a metadata.csv column "
                                        "(folders) or an array key (seg_npz), e.g. a patient id or dup_group")
    download: bool = _f(False, "MedMNIST: download through the medmnist package when the file is absent")
    hflip: bool = _f(True, "random horizontal flips during training")
    use_eval_splits: bool = _f(False, "TPP only: also pre-train on val/test images (recorded in the card)")
    license: Optional[str] = _f(None, "licence of the data, recorded in cards (known for MedMNIST; else declare it)")
    on_bad_file: Literal["error", "skip"] = _f(
        "error", "folder sources: an unreadable image fails the run naming it (error) or is left out and listed in "
                 "skipped.csv (skip)")


@dataclass
class TrainConfig:
    epochs: int = _f(10, "passes over the training split (ignored when max_steps is set)")
    max_steps: Optional[int] = _f(None, "optimiser steps; takes precedence over epochs")
    batch_size: int = _f(64, "images per optimiser step")
    log_with: Optional[Literal["tensorboard"]] = _f(None, "also log through an Accelerate tracker (into output_dir; "
                                                          "pip install tensorboard)")
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
    select_best: bool = _f(True, "finetune: keep the weights of the best validation AUROC; false: the last step's, "
                                 "without validating during training (fixed step budget)")


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
class SegmentationConfig:
    """The light decoder on the frozen encoder's patch tokens (``task: segmentation``)."""
    decoder_channels: list = _f([64, 32], "channels of the progressive upsampling stages (each stage x2)")
    pixel_skip: bool = _f(True, "concatenate features of the input image before the last stage (sharper edges)")
    dice_weight: float = _f(1.0, "loss = cross-entropy + dice_weight * soft Dice loss on foreground classes")
    augment_scale: list = _f([0.8, 1.0], "joint flip + zoom-in crop of image and mask: crop side range")
    overlays: int = _f(16, "test images saved as PNG overlays (ground truth green, prediction red)")


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
    """One dataset of a pre-training pool: a data section, and whether its labels train a head."""
    data: DataConfig = field(default_factory=DataConfig)
    supervised: bool = _f(True, "train a linear head on this dataset's labels (UMedPT-style multi-task)")


@dataclass
class RunConfig:
    recipe: str = _f("finetune", "recipe the config is meant for")
    task: Literal["classification", "segmentation"] = _f("classification", "finetune: what the head predicts")
    site: str = _f("default", "hospital / site name recorded in the adapter card")
    seed: int = _f(0, "seed for data subsets, initialisation and shuffling")
    output_dir: str = _f("runs/default", "where the run writes its log, metrics and adapter")
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    pretext: PretextConfig = field(default_factory=PretextConfig)
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pool: list = _f([], "pretrain_backbone: list of {data: {...}, supervised: bool} entries")
    supervised_weight: float = _f(1.0, "pretrain_backbone: weight of the mean supervised loss (0: MAE only)")

    def to_dict(self) -> dict:
        """Plain dict with adapter options flattened back into the adapter section."""
        out = dataclasses.asdict(self)
        out["adapter"].pop("options")
        out["adapter"].update(self.adapter.resolved_options())
        out["pretext"].pop("options")
        out["pretext"].update(dataclasses.asdict(self.pretext.resolved()))
        return out


def _type_ok(value: Any, tp: Any) -> tuple[bool, Any]:
    """Check ``value`` against a type annotation; returns (ok, possibly-coerced value)."""
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return True, None
        for arg in args:
            if arg is type(None):
                continue
            ok, v = _type_ok(value, arg)
            if ok:
                return True, v
        return False, value
    if origin is Literal:
        if isinstance(value, bool):  # YAML 1.1 reads no/off as False, yes/on as True
            value = {False: "no", True: "yes"}[value]
        return value in typing.get_args(tp), value
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        if isinstance(value, str) and _looks_float(value):  # YAML reads 1e-4 as a string
            return True, float(value)
        return False, value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp in (list, dict, str, bool):
        return isinstance(value, tp), value
    if origin in (list, dict):
        return isinstance(value, origin), value
    return True, value


def _describe(tp: Any) -> str:
    if typing.get_origin(tp) is typing.Union:
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def build_dataclass(cls, data: dict, path: str = ""):
    """Build dataclass ``cls`` from a nested dict, checking every key and type.

    Raises ConfigError naming the dotted key path of the first unknown key or wrong type.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"config key '{path or '<root>'}' must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        key_path = f"{path}.{key}" if path else key
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"unknown config key '{key_path}'. Known keys here: {known}.")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = build_dataclass(tp, value, key_path)
            continue
        ok, coerced = _type_ok(value, tp)
        if not ok:
            raise ConfigError(f"config key '{key_path}' must be {_describe(tp)}, got {value!r}.")
        kwargs[key] = coerced
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``'train.lr=1e-4'`` -> (['train', 'lr'], 0.0001). Values are parsed as YAML scalars."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key=value (for example train.lr=1e-4).")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{text}' has an empty key.")
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def _looks_float(raw: str) -> bool:
    try:
        float(raw)
        return True
    except ValueError:
        return False


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply dotted overrides to a nested dict (in place) and return it."""
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{text}': '{key}' is not a section.")
        node[keys[-1]] = value
    return data


def load_yaml(path: str | os.PathLike) -> dict:
    """Read a YAML config file into a dict, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist. `tpp ls` lists the shipped configs.")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file '{path}' is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping of keys, got {type(data).__name__}.")
    return data


def build_config(data: dict) -> RunConfig:
    """Validate a nested dict (YAML + overrides) into a RunConfig, including method and pretext options."""
    from tpp.adapters import get_method  # registries live with the methods and the pretexts
    from tpp.pretext import get_pretext

    data = dict(data)
    adapter, pretext = _section(data, "adapter"), _section(data, "pretext")
    method_name = adapter.get("method", AdapterConfig.method)
    adapter["options"] = _plugin_options(adapter, "adapter", AdapterConfig, get_method(method_name).options_cls,
                                         f"adapter.method={method_name}", _owner_hint(adapter, "adapter", method_name))
    data["adapter"] = adapter
    pretext_name = pretext.get("name", PretextConfig.name)
    drop_other_pretexts_defaults(pretext, pretext_name)
    pretext["options"] = _plugin_options(pretext, "pretext", PretextConfig, get_pretext(pretext_name).options_cls,
                                         f"pretext.name={pretext_name}", _owner_hint(pretext, "pretext", pretext_name))
    data["pretext"] = pretext
    cfg = build_dataclass(RunConfig, data)
    cfg.pool = [build_dataclass(PoolEntry, entry, f"pool[{i}]") for i, entry in enumerate(cfg.pool)]
    _check_values(cfg)
    return cfg


def _section(data: dict, name: str) -> dict:
    """A copy of the mapping ``data[name]`` ({} when absent); anything else is a ConfigError."""
    section = data.get(name)
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise ConfigError(f"config key '{name}' must be a mapping, got {type(section).__name__} ({section!r}); "
                          f"set its keys, e.g. {name}.<key>=value.")
    return dict(section)


def _plugins(section_name: str) -> list:
    """The registered methods (``adapter``) or pretexts (``pretext``), each with ``.name`` and ``.options_cls``."""
    from tpp.adapters import all_methods
    from tpp.pretext import all_pretexts

    return all_methods() if section_name == "adapter" else all_pretexts()


def _option_fields(section_name: str, chosen: str) -> dict[str, list[tuple[str, dataclasses.Field]]]:
    """Option name -> [(plugin, field)] over the plugins of a section other than ``chosen``."""
    owners: dict[str, list] = {}
    for plugin in _plugins(section_name):
        if plugin.name != chosen:
            for f in dataclasses.fields(plugin.options_cls):
                owners.setdefault(f.name, []).append((plugin.name, f))
    return owners


def drop_other_pretexts_defaults(section: dict, chosen: str) -> None:
    """Remove (in place) options of pretexts other than ``chosen`` that hold their defaults: configs saved
    before pretext options were per pretext list every pretext's options. A changed value stays (an error)."""
    from tpp.pretext import get_pretext

    own = {f.name for f in dataclasses.fields(get_pretext(chosen).options_cls)}
    for key, owners in _option_fields("pretext", chosen).items():
        if key in section and key not in own and any(section[key] == _default(f) for _, f in owners):
            del section[key]


def _default(f: dataclasses.Field):
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def _owner_hint(section: dict, section_name: str, chosen: str) -> str:
    """' pretext.dino_ema is an option of pretext dino: set pretext.name=dino.' for the first option in
    ``section`` that ``chosen`` lacks and other methods / pretexts have ('' if none)."""
    own = {f.name for p in _plugins(section_name) if p.name == chosen for f in dataclasses.fields(p.options_cls)}
    owners = _option_fields(section_name, chosen)
    kind, key_name = ("method", "method") if section_name == "adapter" else ("pretext", "name")
    for key in section:
        if key in owners and key not in own:
            names = sorted({name for name, _ in owners[key]})
            fix = f": set {section_name}.{key_name}={names[0]}" if len(names) == 1 else ""
            return f" {section_name}.{key} is an option of {kind} {', '.join(names)}{fix}."
    return ""


def _plugin_options(section: dict, section_name: str, common_cls, options_cls, chosen: str, hint: str = "") -> dict:
    """Pop the keys of ``section`` that are not ``common_cls`` fields: the chosen method's / pretext's
    options, checked (names, types, values) by its ``options_cls``. Returns them typed (YAML's ``5e-1``
    string becomes 0.5)."""
    common = {f.name for f in dataclasses.fields(common_cls)} - {"options"}
    options = {k: section.pop(k) for k in list(section) if k not in common}
    known = {f.name for f in dataclasses.fields(options_cls)}
    foreign = sorted(set(options) - known)
    if foreign:
        raise ConfigError(
            f"unknown config key {', '.join(repr(section_name + '.' + k) for k in foreign)} for {chosen} "
            f"(its options: {', '.join(sorted(known)) or 'none'}; common keys: {', '.join(sorted(common))})." + hint)
    typed = build_dataclass(options_cls, options, section_name)  # type and value checks
    return {k: getattr(typed, k) for k in options}


def _check_values(cfg: RunConfig) -> None:
    checks = [
        (0 < cfg.data.label_fraction <= 1, "data.label_fraction must be in (0, 1]"),
        (cfg.train.epochs >= 1, "train.epochs must be at least 1"),
        (cfg.train.max_steps is None or cfg.train.max_steps >= 1, "train.max_steps must be at least 1"),
        (cfg.train.batch_size >= 1, "train.batch_size must be at least 1"),
        (cfg.train.lr > 0, "train.lr must be positive"),
        (0 <= cfg.train.warmup_ratio < 1, "train.warmup_ratio must be in [0, 1)"),
        (cfg.data.split in ("train", "val", "test"), "data.split must be train, val or test"),
        (cfg.backbone.input_size is None or cfg.backbone.input_size >= 1, "backbone.input_size must be positive"),
        (len(cfg.segmentation.decoder_channels) >= 1 and all(isinstance(c, int) and c >= 1
                                                            for c in cfg.segmentation.decoder_channels),
         "segmentation.decoder_channels must be a non-empty list of positive integers"),
        (len(cfg.segmentation.augment_scale) == 2 and 0 < min(cfg.segmentation.augment_scale)
         <= max(cfg.segmentation.augment_scale) <= 1, "segmentation.augment_scale must be [low, high] in (0, 1]"),
        (cfg.segmentation.dice_weight >= 0 and cfg.segmentation.overlays >= 0,
         "segmentation.dice_weight and segmentation.overlays must not be negative"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message + ".")
    _check_train(cfg.train)
    if not 0 <= cfg.seed < 2**32:  # numpy's and torch's seeding take 0 .. 2**32 - 1
        raise ConfigError(f"seed must be an integer in 0 .. 2**32 - 1 (4294967295), got {cfg.seed}.")
    _check_data(cfg.data, "data")
    for i, entry in enumerate(cfg.pool):
        _check_data(entry.data, f"pool[{i}].data")
    if cfg.data.val_label_fraction is not None and not 0 < cfg.data.val_label_fraction <= 1:
        raise ConfigError(f"data.val_label_fraction must be in (0, 1], got {cfg.data.val_label_fraction}.")
    if cfg.train.checkpoint_every is not None and cfg.train.checkpoint_every < 1:
        raise ConfigError(f"train.checkpoint_every must be at least 1, got {cfg.train.checkpoint_every}.")
    if cfg.train.keep_checkpoints < 1:
        raise ConfigError(f"train.keep_checkpoints must be at least 1, got {cfg.train.keep_checkpoints}.")
    if not 1 <= cfg.train.grad_accum_steps <= cfg.train.batch_size:
        raise ConfigError(f"train.grad_accum_steps must be between 1 and train.batch_size ({cfg.train.batch_size}), "
                          f"got {cfg.train.grad_accum_steps}.")
    if cfg.train.mixed_precision == "fp16":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("train.mixed_precision=fp16 needs a GPU; use bf16 or no on CPU.")


def _check_train(train: TrainConfig) -> None:
    """Optimiser and batch settings: values torch would take but that make no sense (or crash later)."""
    finite = {"train.lr": train.lr, "train.weight_decay": train.weight_decay,
              "train.head_lr_scale": train.head_lr_scale, "train.adam_beta2": train.adam_beta2,
              "train.warmup_ratio": train.warmup_ratio}
    for key, value in finite.items():
        if not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number, got {value}.")
    if train.weight_decay < 0:
        raise ConfigError(f"train.weight_decay must not be negative, got {train.weight_decay}.")
    if train.head_lr_scale <= 0:
        raise ConfigError(f"train.head_lr_scale must be positive (it multiplies train.lr for the task head), "
                          f"got {train.head_lr_scale}.")
    if not 0 <= train.adam_beta2 < 1:
        raise ConfigError(f"train.adam_beta2 must lie in [0, 1) (AdamW's betas), got {train.adam_beta2}.")
    if train.eval_batch_size < 1:
        raise ConfigError(f"train.eval_batch_size must be at least 1, got {train.eval_batch_size}.")
    if train.eval_every is not None and train.eval_every < 1:
        raise ConfigError(f"train.eval_every must be at least 1, got {train.eval_every}.")


def _check_data(data: DataConfig, key: str) -> None:
    """Split fractions of a data section (``data`` or a ``pool[i].data``)."""
    for name in ("val_fraction", "test_fraction"):
        value = getattr(data, name)
        if not (math.isfinite(value) and 0 <= value < 1):
            raise ConfigError(f"{key}.{name} must lie in [0, 1) (the share of images the seeded split puts "
                              f"there), got {value}.")
    if data.val_fraction + data.test_fraction >= 1:
        raise ConfigError(f"{key}.val_fraction + {key}.test_fraction must be below 1 (the rest trains), got "
                          f"{data.val_fraction} + {data.test_fraction}.")


def load_config(path: str | os.PathLike, overrides: list[str] = ()) -> RunConfig:
    """YAML file + ``key=value`` overrides -> validated RunConfig; records which adapter keys the
    overrides set (``cfg.adapter.explicit``). An ``adapter.method`` / ``pretext.name`` override that
    changes the method / pretext drops the file's options for the one it replaces."""
    data, given = load_yaml(path), apply_overrides({}, list(overrides))
    _switch_plugin(data, given, "adapter", "method", AdapterConfig.method)
    _switch_plugin(data, given, "pretext", "name", PretextConfig.name)
    cfg = build_config(apply_overrides(data, list(overrides)))
    cfg.adapter.explicit = frozenset(given["adapter"]) if isinstance(given.get("adapter"), dict) else frozenset()
    return cfg


def _switch_plugin(data: dict, given: dict, section_name: str, key: str, default: str) -> None:
    """``adapter.method=X`` / ``pretext.name=X`` on the command line replaces the file's method / pretext:
    the file's options were written for its own choice and are dropped (in place), its common keys
    (``adapter.init_from`` ...) stay; options given on the command line are checked by X."""
    section, given = data.get(section_name), given.get(section_name)
    if not isinstance(given, dict) or key not in given or not isinstance(section, dict):
        return
    if given[key] != section.get(key, default):
        common_cls = AdapterConfig if section_name == "adapter" else PretextConfig
        common = {f.name for f in dataclasses.fields(common_cls)} - {"options"}
        data[section_name] = {k: v for k, v in section.items() if k in common}


def help_lines(cls=RunConfig, prefix: str = "", tag: str = "") -> list[str]:
    """One ``key (type, default): help`` line per config key, for ``tpp validate --keys``; for the whole
    RunConfig also every adapter method's and pretext's options, tagged with the method / pretext."""
    lines = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            lines += help_lines(tp, f"{prefix}{f.name}.")
        elif f.name != "options":
            default = _default(f)
            lines.append(f"{prefix}{f.name} ({_describe(tp)}, default {default!r}){tag}: {f.metadata.get('help', '')}")
    if cls is RunConfig:
        from tpp.adapters import all_methods
        from tpp.pretext import all_pretexts

        for method in all_methods():
            lines += help_lines(method.options_cls, "adapter.", f" [adapter.method={method.name}]")
        for pretext in all_pretexts():
            lines += help_lines(pretext.options_cls, "pretext.", f" [pretext.name={pretext.name}]")
    return lines
