"""Value checks: values a config's types allow but that make no sense or crash later (a fraction outside its
range, a learning rate that is not positive, fp16 without a GPU ...), each one a problem line."""
from __future__ import annotations

import math

from tpp.config.schema import DataConfig, RunConfig, TrainConfig


def check_config_values(cfg: RunConfig, problems: list[str]) -> None:
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
    _check_device(cfg, problems)
    if train.mixed_precision == "fp16" and cfg.device.strip().lower() != "cpu":  # device=cpu: said above
        import torch

        if not torch.cuda.is_available():
            problems.append("train.mixed_precision=fp16 needs a GPU; use bf16 or no on CPU.")


def _check_device(cfg: RunConfig, problems: list[str]) -> None:
    """``device`` names a device this machine has; ``train.log_with`` a tracker whose package is installed."""
    from tpp.devices import device_problem
    from tpp.trackers import tracker_problem

    problems += [p for p in (device_problem(cfg.device), tracker_problem(cfg.train.log_with)) if p]
    if cfg.train.mixed_precision == "fp16" and cfg.device.strip().lower() == "cpu":
        problems.append("train.mixed_precision=fp16 needs a GPU, but device=cpu; use train.mixed_precision=bf16 or no.")


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


def prompt_size_problems(cfg: RunConfig) -> list[str]:
    """A visual prompt (``visual_prompt``, ``movl``, alone or a part of a composed method) is made for one input
    size, its ``input_size`` (unset: the checkpoint's image size), and the encoder is fed ``backbone.input_size``
    (unset: the same); they must be equal, or the first training step fails. Checked for the recipes that attach
    the configured method (finetune, tpp, multitask with target parameters), on the config as resolved (absolute
    paths: :func:`tpp.config.load_config` calls it). The parent's options count with ``adapter.init_from`` (they
    are inherited). The checkpoint's image size is read from its config.json only when one side is unset;
    a backbone or parent that does not resolve is left to ``tpp validate``'s own checks (nothing reported here)."""
    from tpp.errors import TppError
    from tpp.recipes.registry import RECIPES

    recipe = RECIPES.get(cfg.recipe)
    # evaluate (reads adapter.path) builds its model from the adapter's card, input size included
    if (recipe is None or not {"backbone", "adapter"} <= set(recipe.sections) or "adapter.path" not in recipe.ignores
            or (cfg.recipe == "multitask" and cfg.multitask.scope != "target")):
        return []
    inherits = "adapter.init_from" not in recipe.ignores
    parent = cfg.adapter.init_from if inherits else None
    from tpp.builders import effective_adapter

    try:
        method, options = effective_adapter(cfg, inherits)
    except TppError:
        return []  # named by the pre-run checks
    from tpp.adapters.visual_prompt import prompt_input_sizes

    try:
        prompts = prompt_input_sizes(method, options)
    except TppError:  # a parent card naming an unknown method: refused when the run reads it
        return []
    backbone_size = cfg.backbone.input_size
    checkpoint: list = []  # the checkpoint's image size, read once if needed ([None]: it does not resolve)

    def native() -> int | None:
        if not checkpoint:
            from tpp.backbones import backbone_config

            try:
                size = getattr(backbone_config(cfg.backbone.path), "image_size", None)
            except TppError:
                size = None
            size = size[0] if isinstance(size, (list, tuple)) and size else size
            checkpoint.append(size if isinstance(size, int) and not isinstance(size, bool) else None)
        return checkpoint[0]

    problems = []
    for key, size in prompts:
        if size is not None and (not isinstance(size, int) or isinstance(size, bool)):
            continue  # a malformed card: refused when the run reads it
        if size == backbone_size:  # both set and equal, or both unset (both the checkpoint's)
            continue
        fed = backbone_size if backbone_size is not None else native()
        made = size if size is not None else native()
        if fed is None or made is None or fed == made:
            continue
        problems.append(_prompt_size_problem(key, size, backbone_size, made, fed, checkpoint[0] if checkpoint else None,
                                             parent))
    return problems


def _prompt_size_problem(key: str, size, backbone_size, made: int, fed: int, native, parent) -> str:
    """One line naming both keys as written (an unset one with the checkpoint's size it means) and the fix."""
    unset = f" (unset: the backbone's {native})"
    prompt = f"{key}={size}" if size is not None else f"{key}{unset}"
    if parent:
        prompt = f"the parent adapter's {prompt} (adapter.init_from '{parent}'; inherited)"
    backbone = f"backbone.input_size={backbone_size}" if backbone_size is not None else f"backbone.input_size{unset}"
    if parent:
        fix = f"set backbone.input_size={made}, the size the parent's prompt was made for"
    elif size is not None and backbone_size is None:
        fix = f"set backbone.input_size={made} too (backbone: {{input_size: {made}}}), or drop {key}"
    elif size is None:
        fix = f"set {key}={fed} too, or drop backbone.input_size"
    else:
        fix = f"set both to the same size, e.g. {key}={fed}"
    return (f"{prompt} differs from {backbone}: a visual prompt is made for the encoder's input size, so the two "
            f"must be equal; {fix}.")


def ignored_options(cfg: RunConfig) -> list[str]:
    """Options set (away from their defaults) that the rest of the config makes the run ignore: each one a
    sentence for a warning (a user who sets a value expects it to act)."""
    found = []
    task = cfg.task_options
    if getattr(task, "output_mapping", None) == "probe" and getattr(task, "source_head", None) is not None:
        found.append(f"{cfg.task}.source_head={task.source_head!r} is ignored with {cfg.task}.output_mapping=probe "
                     "(it picks the source classifier of rlm / flm / ilm).")
    from tpp.builders import effective_adapter
    from tpp.errors import TppError

    try:
        method, options = effective_adapter(cfg)
    except TppError:  # an unreadable or conflicting parent: the config's (validation reports the parent)
        method, options = cfg.adapter.method, cfg.adapter.resolved_options()
    for key, given, defaults in _prompt_parts(method, options):
        mode, weight = given.get("mode", defaults.mode), given.get("discrepancy_weight", defaults.discrepancy_weight)
        if mode == "full" and given.get("pad", defaults.pad) != defaults.pad:
            found.append(f"{key}.pad={given['pad']} is ignored with {key}.mode=full (the prompt covers the whole "
                         "image; pad sizes the frame of mode pad).")
        if given.get("discrepancy", defaults.discrepancy) != defaults.discrepancy and weight == 0:
            found.append(f"{key}.discrepancy={given['discrepancy']} is ignored: {key}.discrepancy_weight is 0.")
    shift = cfg.evaluate  # (severity without a corruption is an error of the evaluate recipe)
    if shift.corruption is None and shift.corruption_preset is not None:
        found.append(f"evaluate.corruption_preset={shift.corruption_preset!r} is ignored without evaluate.corruption "
                     "(set evaluate.corruption=all, or one corruption).")
    return found


def _prompt_parts(method: str, options: dict) -> list[tuple[str, dict, object]]:
    """(key, options given, the method's default options) of each visual-prompt method in ``method`` (alone:
    ``adapter``; a part of a composed method: ``adapter.<part>``)."""
    from tpp.adapters import get_method
    from tpp.adapters.compose import part_names
    from tpp.adapters.visual_prompt import VisualPromptOptions

    parts = part_names(method)
    found = [(p, get_method(p).options_cls()) for p in parts]
    if len(parts) == 1:
        return [("adapter", options, d) for _, d in found if isinstance(d, VisualPromptOptions)]
    return [(f"adapter.{p}", options.get(p) or {}, d) for p, d in found if isinstance(d, VisualPromptOptions)]


FETCH_ONLY = frozenset({"download"})  # medmnist's: how the replaced source's file is fetched; dropping it loses nothing


def switched_source_problems(section: dict, given: dict, old, new) -> list[str]:
    """A ``data.source`` override (``new``, on the command line) that replaces the config file's source (``old``)
    leaves the file's options for ``old`` behind. One that holds a value other than ``old``'s default and that the
    command line does not set again would be lost (or read by ``new`` in its own way: seg_npz's ``group_key`` names
    an array, seg_folder's a metadata.csv column) without a word: each one is a problem naming it and the way out.
    ``section``: the file's data section; ``given``: the command line's. An option at its default is no problem
    (nothing is lost), nor is one that only says how ``old`` fetches its file (:data:`FETCH_ONLY`: a run's
    ``config.yaml`` with ``data.download: true`` evaluated on another site's folder); an unknown ``new`` is left to
    the source check. Nor is one both sources read alike (:func:`tpp.data.sources.carried_options`: ``data.slice``
    from folder to csv): it is carried over."""
    import dataclasses

    from tpp.config.parse import field_default
    from tpp.config.schema import DataConfig
    from tpp.data.sources import all_sources, carried_options

    sources = {s.name: {f.name: f for f in dataclasses.fields(s.options_cls)} for s in all_sources()}
    if new not in sources:
        return []
    common = {f.name for f in dataclasses.fields(DataConfig)}
    written = sources.get(old, {}) if isinstance(old, str) else {}
    problems = []
    for key in sorted(set(section) - common - set(given) - carried_options(old, new)):
        value = section[key]
        if key in written and (value == field_default(written[key]) or (key in FETCH_ONLY and key not in sources[new])):
            continue
        where = f"data.{key}={value!r} in the config file (written for data.source={old})"
        if key not in sources[new]:
            problems.append(f"{where} is not read by data.source={new} given on the command line, so it would be "
                            f"dropped: remove it from (a copy of) the config file, or keep data.source={old}.")
        else:
            meaning = sources[new][key].metadata.get("help", "")
            problems.append(f"{where}: data.source={new} given on the command line reads data.{key} too, as its own "
                            f"option{f' ({meaning})' if meaning else ''}, so the file's value is not carried over; "
                            f"give data.{key}=... on the command line for {new}, or remove it from (a copy "
                            "of) the config file.")
    return problems
