"""The typed config schema: the single source of keys, types, defaults and help.

A YAML file plus dotted ``key=value`` overrides is turned into a :class:`RunConfig` and checked
before any heavy work. Unknown keys and wrong types raise :class:`ConfigError` naming the key path.

Precedence: ``train.max_steps`` (when set) fixes the number of optimiser steps and ``train.epochs``
is then ignored; otherwise the run lasts ``train.epochs`` passes over the training split.
"""
from __future__ import annotations

import dataclasses
import difflib
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
    """Keys common to every data source. The source's own options (``file``, ``image_key``, ``mask_key`` ...)
    are checked by its options dataclass from the source registry (``tpp.data.sources``), set flat as
    ``data.<option>`` and kept in ``options``; :meth:`resolved` gives them typed, defaults filled in."""
    name: str = _f("breastmnist", "dataset name: a MedMNIST flag (breastmnist, pneumoniamnist ...) or your own")
    source: str = _f("medmnist", "where images come from: a source from the registry (`tpp ls`); each one's "
                                 "options are listed below, tagged")
    root: Optional[str] = _f(None, "data root; default: env TPP_DATA_ROOT")
    origin: Optional[str] = _f(None, "image collection the data comes from (e.g. BUSI); an adapter pre-trained "
                                     "on the same collection under another split is refused (leakage)")
    modality: Optional[str] = _f(None, "DICOM modality code (US, CR, DX, CT, MR, SM, XC, OP ...); required for folders")
    label_fraction: float = _f(1.0, "stratified, seeded, nested fraction of training labels used")
    val_label_fraction: Optional[float] = _f(
        None, "finetune: stratified, seeded fraction of the val split used for model selection and val metrics "
              "(a few-label site has few validation labels too); default: the whole val split")
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
    recipe: str = _f("finetune", "recipe the config is written for; it may set only the sections that recipe reads "
                                 "(recipes/registry.py)")
    task: str = _f("classification", "finetune: what the head predicts, a task from the registry (`tpp ls`); its "
                                     "options are the config section named after it (segmentation.dice_weight ...)")
    site: str = _f("default", "hospital / site name recorded in the adapter card")
    seed: int = _f(0, "seed for data subsets, initialisation and shuffling")
    output_dir: str = _f("runs/default", "where the run writes its log, metrics and adapter")
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    pretext: PretextConfig = field(default_factory=PretextConfig)
    task_options: Any = _f(None, "the task's options (its own dataclass), set as the section named after the task")
    model: ModelConfig = field(default_factory=ModelConfig)
    pool: list = _f([], "pretrain_backbone: list of {data: {...}, supervised: bool} entries")
    supervised_weight: float = _f(1.0, "pretrain_backbone: weight of the mean supervised loss (0: MAE only)")

    def to_dict(self) -> dict:
        """Plain dict of the sections the recipe reads (a run's ``config.yaml``), with adapter, pretext and data
        source options flattened back into their sections."""
        out = dataclasses.asdict(self)
        out["data"] = self.data.flat()
        for entry, flat in zip(self.pool, out["pool"]):
            flat["data"] = entry.data.flat()
        out["adapter"].pop("options")
        out["adapter"].update(self.adapter.resolved_options())
        out["pretext"].pop("options")
        out["pretext"].update(dataclasses.asdict(self.pretext.resolved()))
        options = out.pop("task_options")
        if options:  # the task's own section, defaults filled in
            out[self.task] = options
        return {k: v for k, v in out.items() if k in self.sections()}

    def sections(self) -> set[str]:
        """The top-level keys the recipe reads: its sections (``tpp.recipes.registry``), with ``task`` the
        section named after the task."""
        from tpp.recipes.registry import RECIPES

        sections = set(RECIPES[self.recipe].sections)
        return sections | {self.task} if "task" in sections else sections


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


def build_dataclass(cls, data: dict, path: str = "", problems: list[str] | None = None):
    """Build dataclass ``cls`` from a nested dict, checking every key and type (and the class's own
    ``__post_init__`` checks).

    Every unknown key and wrong type is a problem naming its dotted key path (an unknown key with a close
    known one suggests it). With a ``problems`` list they are appended to it and the keys at fault keep
    their defaults; without, they are raised together as one ConfigError.
    """
    found: list[str] = []
    if not isinstance(data, dict):
        found.append(f"config key '{path or '<root>'}' must be a mapping, got {type(data).__name__}.")
        data = {}
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        key_path = f"{path}.{key}" if path else key
        if key not in fields:
            found.append(unknown_key(key_path, fields))
            continue
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = build_dataclass(tp, value, key_path, found)
            continue
        ok, coerced = _type_ok(value, tp)
        if ok:
            kwargs[key] = coerced
        else:
            found.append(f"config key '{key_path}' must be {_describe(tp)}, got {value!r}.")
    try:
        built = cls(**kwargs)
    except ConfigError as exc:  # the class's own value checks
        found.append(str(exc))
        built = cls()
    if problems is not None:
        problems.extend(found)
    elif found:
        raise config_error(found)
    return built


def unknown_key(key_path: str, known) -> str:
    """The problem line of an unknown key: the close known key if there is one, else the known keys."""
    prefix, _, key = key_path.rpartition(".")
    close = difflib.get_close_matches(key, sorted(known), n=1)
    if close:
        return f"unknown config key '{key_path}'; did you mean {prefix + '.' if prefix else ''}{close[0]}?"
    return f"unknown config key '{key_path}'. Known keys here: {', '.join(sorted(known))}."


def config_error(problems: list[str]) -> ConfigError:
    """One ConfigError for every problem found: the problem itself, or one line each under a count
    (``.problems`` lists them)."""
    error = ConfigError(problems[0] if len(problems) == 1 else
                        f"{len(problems)} config problems:\n" + "\n".join(f"  - {p}" for p in problems))
    error.problems = list(problems)
    return error


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
    """Validate a nested dict (YAML + overrides) into a RunConfig for its ``recipe`` (default finetune):
    only the sections that recipe reads (``tpp.recipes.registry``), every key and type, the method's,
    pretext's, task's and data source's options (checked by their plug-ins) and the values. Every problem
    is reported at once: one ConfigError, a line each."""
    from tpp.tasks import all_tasks

    problems: list[str] = []
    data = dict(data)
    sections = _recipe_scope(data, problems)
    for name in ("adapter", "pretext"):
        if name in data:
            data[name] = _collect(problems, _with_options, data, name, problems)
    if "task" in sections:
        data["task_options"] = _collect(problems, _task_options, data)
        for task in all_tasks():  # what _task_options left after a problem
            data.pop(task.name, None)
    if "data" in sections:
        data["data"] = _collect(problems, lambda: _data_options(_section(data, "data"), "data"))
    built = ("adapter", "pretext", "task_options", "data")  # None: their problems are listed already
    cfg = build_dataclass(RunConfig, {k: v for k, v in data.items() if k not in built or v is not None}, "", problems)
    entries = [_collect(problems, _pool_entry, entry, i) for i, entry in enumerate(cfg.pool)]
    cfg.pool = [build_dataclass(PoolEntry, {} if entry is None else entry, f"pool[{i}]", problems)
                for i, entry in enumerate(entries)]
    _check_values(cfg, problems)
    if problems:
        raise config_error(problems)
    return cfg


def _collect(problems: list[str], build, *args):
    """``build(*args)``; a ConfigError it raises joins ``problems`` (and None is returned)."""
    try:
        return build(*args)
    except ConfigError as exc:
        problems.extend(getattr(exc, "problems", None) or [str(exc)])
        return None


def _recipe_scope(data: dict, problems: list[str]) -> tuple[str, ...]:
    """The sections the config's recipe reads. Every other top-level key is dropped (in place) as a problem:
    one that names the recipe (and those that read it), or, for a key no recipe reads, an unknown key."""
    from tpp.recipes.registry import RECIPES
    from tpp.tasks import all_tasks

    recipe = data.get("recipe", RunConfig.recipe)
    if not isinstance(recipe, str) or recipe not in RECIPES:
        problems.append(unknown_recipe(recipe))
        data.pop("recipe")
        return tuple(f.name for f in dataclasses.fields(RunConfig))
    sections, tasks = RECIPES[recipe].sections, {t.name for t in all_tasks()}
    known = set(sections) | (tasks if "task" in sections else set())
    hints = typing.get_type_hints(RunConfig)
    for key in [k for k in data if k not in known]:
        value = data.pop(key)
        users = [name for name, r in RECIPES.items() if key in r.sections or (key in tasks and "task" in r.sections)]
        if not users:
            problems.append(unknown_key(str(key), known))
            continue
        paths = [f"{key}.{k}" for k in value] if isinstance(value, dict) and value else [key]
        what = f"the {key} section" if key in tasks or dataclasses.is_dataclass(hints.get(key)) else key
        readers = " and ".join([", ".join(users[:-1]), users[-1]] if len(users) > 1 else users)
        problems.append(f"{', '.join(paths[:3])}{', ...' if len(paths) > 3 else ''}: the {recipe} recipe does not "
                        f"use {what} ({readers} {'does' if len(users) == 1 else 'do'}).")
    return sections


def unknown_recipe(name) -> str:
    """The problem line of a ``recipe`` no recipe has (with a close one suggested)."""
    from tpp.recipes.registry import RECIPES

    close = difflib.get_close_matches(str(name), list(RECIPES), n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    return f"recipe: unknown recipe {name!r}; {hint}recipes: {', '.join(RECIPES)} (`tpp ls`)."


def _with_options(data: dict, section_name: str, problems: list[str]) -> dict:
    """The ``adapter`` / ``pretext`` section of ``data`` with the chosen method's / pretext's options checked
    (problems appended) and kept in ``options``."""
    from tpp.adapters import get_method  # registries live with the methods and the pretexts
    from tpp.pretext import get_pretext

    common_cls, key, get = ((AdapterConfig, "method", get_method) if section_name == "adapter"
                            else (PretextConfig, "name", get_pretext))
    section = _section(data, section_name)
    chosen = section.get(key, getattr(common_cls, key))
    options_cls = get(chosen).options_cls
    if section_name == "pretext":
        drop_other_pretexts_defaults(section, chosen)
    section["options"] = _plugin_options(section, section_name, common_cls, options_cls,
                                         f"{section_name}.{key}={chosen}", _owner_hint(section, section_name, chosen),
                                         problems, others=set(_option_fields(section_name, chosen)))
    return section


def _task_options(data: dict):
    """Pop (in place) the sections named after registered tasks; the chosen task's (``task``, default
    classification) becomes its typed options. Another task's section is an error naming the task."""
    from tpp.tasks import all_tasks, get_task

    name = data.get("task", RunConfig.task)
    task = get_task(name)
    for other in all_tasks():
        section = _section(data, other.name)
        data.pop(other.name, None)
        if other is task:
            options = build_dataclass(task.options_cls, section, task.name)
        elif section:
            raise ConfigError(f"config section '{other.name}' holds options of task {other.name}, but task={name}: "
                              f"set task={other.name} or drop the section.")
    return options


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
    """The registered methods (``adapter``), pretexts (``pretext``) or data sources (``data``), each with
    ``.name`` and ``.options_cls``."""
    from tpp.adapters import all_methods
    from tpp.data.sources import all_sources
    from tpp.pretext import all_pretexts

    return {"adapter": all_methods, "pretext": all_pretexts, "data": all_sources}[section_name]()


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


def _owner_hint(section: dict, section_name: str, chosen: str, path: str | None = None) -> str:
    """' pretext.dino_ema is an option of pretext dino: set pretext.name=dino.' for the first option in
    ``section`` that ``chosen`` lacks and other methods / pretexts / sources have ('' if none); ``path``: the
    section's key when it differs from ``section_name`` (``pool[0].data``)."""
    own = {f.name for p in _plugins(section_name) if p.name == chosen for f in dataclasses.fields(p.options_cls)}
    owners = _option_fields(section_name, chosen)
    kind, key_name = {"adapter": ("method", "method"), "pretext": ("pretext", "name"),
                      "data": ("source", "source")}[section_name]
    path = path or section_name
    for key in section:
        if key in owners and key not in own:
            names = sorted({name for name, _ in owners[key]})
            fix = f": set {path}.{key_name}={names[0]}" if len(names) == 1 else f" (set {path}.{key_name})"
            return f" {path}.{key} is an option of {kind} {', '.join(names)}{fix}."
    return ""


def _data_options(section: dict, path: str) -> dict:
    """The data section ``section`` (a copy, changed in place) with its source's options popped into ``options``,
    checked and typed by the source's options dataclass; ``path``: its key (``data``, ``pool[0].data``)."""
    from tpp.data.sources import get_source

    name = section.get("source", DataConfig.source)
    if not isinstance(name, str):
        raise ConfigError(f"config key '{path}.source' must be str, got {name!r}.")
    options_cls = get_source(name, f"{path}.source").options_cls
    section["options"] = _plugin_options(section, path, DataConfig, options_cls, f"{path}.source={name}",
                                         _owner_hint(section, "data", name, path),
                                         others=set(_option_fields("data", name)))
    return section


def _pool_entry(entry: Any, index: int) -> Any:
    """A ``pool`` entry with its data section's source options popped into ``options`` (see _data_options)."""
    if isinstance(entry, dict) and "data" in entry:
        return dict(entry, data=_data_options(_section(entry, "data"), f"pool[{index}].data"))
    return entry


def _plugin_options(section: dict, section_name: str, common_cls, options_cls, chosen: str, hint: str = "",
                    problems: list[str] | None = None, others=frozenset()) -> dict:
    """Pop the keys of ``section`` that are not ``common_cls`` fields: the chosen method's / pretext's
    options, checked (names, types, values) by its ``options_cls``. Returns them typed (YAML's ``5e-1``
    string becomes 0.5). Problems go to ``problems`` (without it, they are raised together); an unknown
    key close to a known one suggests it, unless it is an option of another plug-in (``others``: ``hint``
    says whose)."""
    found: list[str] = []
    common = {f.name for f in dataclasses.fields(common_cls)} - {"options"}
    options = {k: section.pop(k) for k in list(section) if k not in common}
    known = {f.name for f in dataclasses.fields(options_cls)}
    foreign = []
    for key in sorted(set(options) - known):
        close = [] if key in others else difflib.get_close_matches(key, sorted(known | common), n=1)
        if close:
            found.append(f"unknown config key '{section_name}.{key}' for {chosen}; did you mean "
                         f"{section_name}.{close[0]}?")
        else:
            foreign.append(key)
    if foreign:
        found.append(
            f"unknown config key {', '.join(repr(section_name + '.' + k) for k in foreign)} for {chosen} "
            f"(its options: {', '.join(sorted(known)) or 'none'}; common keys: {', '.join(sorted(common))})." + hint)
    options = {k: v for k, v in options.items() if k in known}
    typed = build_dataclass(options_cls, options, section_name, found)  # type and value checks
    if problems is not None:
        problems.extend(found)
    elif found:
        raise config_error(found)
    return {k: getattr(typed, k) for k in options}


def _check_values(cfg: RunConfig, problems: list[str]) -> None:
    """Values the types allow but that make no sense (or crash later): each one a problem appended."""
    train = cfg.train
    checks = [
        (0 < cfg.data.label_fraction <= 1, "data.label_fraction must be in (0, 1]."),
        (train.epochs >= 1, "train.epochs must be at least 1."),
        (train.max_steps is None or train.max_steps >= 1, "train.max_steps must be at least 1."),
        (train.batch_size >= 1, "train.batch_size must be at least 1."),
        (not train.lr <= 0, "train.lr must be positive."),
        (not math.isfinite(train.warmup_ratio) or 0 <= train.warmup_ratio < 1, "train.warmup_ratio must be in [0, 1)."),
        (cfg.data.split in ("train", "val", "test"), "data.split must be train, val or test."),
        (cfg.backbone.input_size is None or cfg.backbone.input_size >= 1, "backbone.input_size must be positive."),
        (0 <= cfg.seed < 2**32,  # numpy's and torch's seeding take 0 .. 2**32 - 1
         f"seed must be an integer in 0 .. 2**32 - 1 (4294967295), got {cfg.seed}."),
        (cfg.data.val_label_fraction is None or 0 < cfg.data.val_label_fraction <= 1,
         f"data.val_label_fraction must be in (0, 1], got {cfg.data.val_label_fraction}."),
        (train.checkpoint_every is None or train.checkpoint_every >= 1,
         f"train.checkpoint_every must be at least 1, got {train.checkpoint_every}."),
        (train.keep_checkpoints >= 1, f"train.keep_checkpoints must be at least 1, got {train.keep_checkpoints}."),
        (1 <= train.grad_accum_steps <= max(train.batch_size, 1), f"train.grad_accum_steps must be between 1 and "
         f"train.batch_size ({train.batch_size}), got {train.grad_accum_steps}."),
    ]
    problems += [message for ok, message in checks if not ok]
    _check_train(train, problems)
    _check_data(cfg.data, "data", problems)
    for i, entry in enumerate(cfg.pool):
        _check_data(entry.data, f"pool[{i}].data", problems)
    if train.mixed_precision == "fp16":
        import torch

        if not torch.cuda.is_available():
            problems.append("train.mixed_precision=fp16 needs a GPU; use bf16 or no on CPU.")


def _check_train(train: TrainConfig, problems: list[str]) -> None:
    """Optimiser and batch settings: values torch would take but that make no sense (or crash later)."""
    finite = {"train.lr": train.lr, "train.weight_decay": train.weight_decay,
              "train.head_lr_scale": train.head_lr_scale, "train.adam_beta2": train.adam_beta2,
              "train.warmup_ratio": train.warmup_ratio}
    problems += [f"{key} must be a finite number, got {value}." for key, value in finite.items()
                 if not math.isfinite(value)]
    checks = [
        (not train.weight_decay < 0, f"train.weight_decay must not be negative, got {train.weight_decay}."),
        (not train.head_lr_scale <= 0, f"train.head_lr_scale must be positive (it multiplies train.lr for the task "
                                       f"head), got {train.head_lr_scale}."),
        (not math.isfinite(train.adam_beta2) or 0 <= train.adam_beta2 < 1,
         f"train.adam_beta2 must lie in [0, 1) (AdamW's betas), got {train.adam_beta2}."),
        (train.eval_batch_size >= 1, f"train.eval_batch_size must be at least 1, got {train.eval_batch_size}."),
        (train.eval_every is None or train.eval_every >= 1,
         f"train.eval_every must be at least 1, got {train.eval_every}."),
    ]
    problems += [message for ok, message in checks if not ok]


def _check_data(data: DataConfig, key: str, problems: list[str]) -> None:
    """Split fractions of a data section (``data`` or a ``pool[i].data``)."""
    for name in ("val_fraction", "test_fraction"):
        value = getattr(data, name)
        if not (math.isfinite(value) and 0 <= value < 1):
            problems.append(f"{key}.{name} must lie in [0, 1) (the share of images the seeded split puts "
                            f"there), got {value}.")
    if data.val_fraction + data.test_fraction >= 1 and 0 <= data.val_fraction < 1 and 0 <= data.test_fraction < 1:
        problems.append(f"{key}.val_fraction + {key}.test_fraction must be below 1 (the rest trains), got "
                        f"{data.val_fraction} + {data.test_fraction}.")
    if not 0 <= data.num_workers <= 64:
        problems.append(f"{key}.num_workers must be between 0 and 64 (worker processes), got {data.num_workers}.")


def load_config(path: str | os.PathLike, overrides: list[str] = (), recipe: str | None = None) -> RunConfig:
    """YAML file + ``key=value`` overrides -> validated RunConfig for ``recipe`` (None: the config's own
    ``recipe``, which a ``recipe=...`` override may set); every problem of the file at once. Records which
    adapter keys the overrides set (``cfg.adapter.explicit``). An ``adapter.method`` / ``pretext.name`` /
    ``data.source`` override that changes the method / pretext / source drops the file's options for the
    one it replaces.

    The file's ``recipe:`` must be ``recipe`` or one ``recipe`` reads (``RECIPES[recipe].reads``: evaluate
    runs from the finetune config of the run it evaluates). Such a file is checked as a config of its own
    recipe, and ``recipe`` then uses only its own sections of it (``cfg.to_dict()``)."""
    data, given = load_yaml(path), apply_overrides({}, list(overrides))
    recipe = _recipe_to_run(path, data.get("recipe"), given.get("recipe"), recipe)
    _switch_plugin(data, given, "adapter", "method", AdapterConfig.method)
    _switch_plugin(data, given, "pretext", "name", PretextConfig.name)
    _switch_plugin(data, given, "data", "source", DataConfig.source)
    written = data.get("recipe", recipe)
    data = apply_overrides(data, list(overrides))
    data["recipe"] = written  # the file's keys are checked against the recipe it was written for
    cfg = build_config(data)
    cfg.recipe = recipe
    cfg.adapter.explicit = frozenset(given["adapter"]) if isinstance(given.get("adapter"), dict) else frozenset()
    return cfg


def _recipe_to_run(path, written, asked, recipe: str | None) -> str:
    """The recipe a config file runs under: ``recipe`` (``tpp run RECIPE``), else a ``recipe=`` override,
    else the file's ``recipe:`` (``written``; absent: the recipe run). A ConfigError when the file was written
    for a recipe that ``recipe`` does not read."""
    from tpp.recipes.registry import RECIPES

    if recipe is not None and asked is not None and asked != recipe:
        raise ConfigError(f"recipe={asked} on the command line, but the recipe run is {recipe}.")
    recipe = recipe or asked or written or RunConfig.recipe
    for name in (recipe, written):
        if name is not None and (not isinstance(name, str) or name not in RECIPES):
            raise ConfigError(f"config '{path}': {unknown_recipe(name)}")
    if written is None or written == recipe or written in RECIPES[recipe].reads:
        return recipe
    runs_from = " or ".join((recipe, *RECIPES[recipe].reads))
    raise ConfigError(f"config '{path}' is written for the {written} recipe (recipe: {written}), not {recipe}: run "
                      f"it with `tpp run {written}`, or give the {recipe} recipe a {runs_from} config.")


def _switch_plugin(data: dict, given: dict, section_name: str, key: str, default: str) -> None:
    """``adapter.method=X`` / ``pretext.name=X`` / ``data.source=X`` on the command line replaces the file's
    method / pretext / source:
    the file's options were written for its own choice and are dropped (in place), its common keys
    (``adapter.init_from`` ...) stay; options given on the command line are checked by X."""
    section, given = data.get(section_name), given.get(section_name)
    if not isinstance(given, dict) or key not in given or not isinstance(section, dict):
        return
    if given[key] != section.get(key, default):
        common_cls = {"adapter": AdapterConfig, "pretext": PretextConfig, "data": DataConfig}[section_name]
        common = {f.name for f in dataclasses.fields(common_cls)} - {"options"}
        data[section_name] = {k: v for k, v in section.items() if k in common}


def help_lines(cls=RunConfig, prefix: str = "", tag: str = "") -> list[str]:
    """One ``key (type, default): help`` line per config key, for ``tpp validate --keys``; for the whole
    RunConfig also every adapter method's, pretext's, data source's and task's options, tagged with their choice."""
    lines = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            lines += help_lines(tp, f"{prefix}{f.name}.")
        elif f.name not in ("options", "task_options"):
            default = _default(f)
            lines.append(f"{prefix}{f.name} ({_describe(tp)}, default {default!r}){tag}: {f.metadata.get('help', '')}")
    if cls is RunConfig:
        from tpp.adapters import all_methods
        from tpp.pretext import all_pretexts

        for method in all_methods():
            lines += help_lines(method.options_cls, "adapter.", f" [adapter.method={method.name}]")
        for pretext in all_pretexts():
            lines += help_lines(pretext.options_cls, "pretext.", f" [pretext.name={pretext.name}]")
        from tpp.data.sources import all_sources

        for source in all_sources():
            lines += help_lines(source.options_cls, "data.", f" [data.source={source.name}]")
        from tpp.tasks import all_tasks

        for task in all_tasks():
            lines += help_lines(task.options_cls, f"{task.name}.", f" [task={task.name}]")
    return lines
