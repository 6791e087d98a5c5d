"""Evaluate a saved adapter directory (with its task head: classifier, decoder ...) on any split.

    tpp run evaluate --config recipes/configs/breast_us/mae_vit_tiny_lora_finetune.yaml \
        adapter.path=runs/breast/adapter data.split=test output_dir=runs/breast_eval

The adapter card's task (``task.type``) decides the predictions and metrics. The config is an evaluate
config, or the finetune config of the run it evaluates: that file is checked as a finetune config, and
evaluate uses only its own sections (recipe, seed, output_dir, train, backbone, adapter, data), ignoring
``task``, the task's section and ``site``; the ``config.yaml`` it writes is an evaluate config. Writes
``metrics.json`` as ``{"<split>": {...}}`` and ``predictions.csv`` (one row per image of the split).
Binary classification decides with the card's threshold (``task.decision``; 0.5 for an older card without
one, said in the log and the report) and draws the card's number of bootstrap resamples.
"""
from __future__ import annotations

import copy
import math
import warnings

from tpp.adapter_dir import HEAD, verify_backbone
from tpp.adapter_read import read_adapter_dir, read_head, read_once, read_weights, take_read
from tpp.backbones import load_backbone
from tpp.builders import check_same_split, record_skipped
from tpp.data.build import load_data
from tpp.data.stream import ModelInputs
from tpp.errors import ConfigError, TppError
from tpp.model import TaskModel, build_head, input_frame, load_adapter_state
from tpp.predictions_csv import PredictionsWriter, batch_rows
from tpp.adapter_checks import attach_from_card, check_frame, check_head
from tpp.tasks import task_of_card, task_of_result
from tpp.training import build_accelerator, predict_batches


def load_task_model(path: str, backbone_path: str, mean=None, std=None, read: tuple[dict, dict] | None = None):
    """Backbone + adapter directory (verified against the card) -> (TaskModel in eval mode, card, info).
    The input size is the card's; ``task_of_card(card)`` is its task. ``read``: the folder's card and files as
    :func:`~tpp.adapter_read.read_adapter_dir` read them (default: read now), each file once: a store version
    folder's tensors loaded are the bytes its content hash verified."""
    card, files = read_adapter_dir(path, EVALUATED, weights=True, head=True)[:2] if read is None else read
    with_task_head(card, path)
    encoder, info, _ = load_backbone(backbone_path, mean, std, input_size=card.get("input", {}).get("image_size"))
    verify_backbone(card, info, path)
    attach_from_card(encoder, card, str(path))
    info.frame = input_frame(encoder.model)
    check_frame(card, info.frame, path)  # predict / serve frame by the card: both must agree
    load_adapter_state(encoder, read_weights(path, card, files), path)
    head_state = read_head(path, files)
    check_head(card, head_state, path)  # sizes from the file, before the card can size the head
    head = build_head(card, info.hidden_size, head_state, f"{path}/{HEAD}")
    return TaskModel(encoder, head).eval(), card, info


EVALUATED = ("adapter", "full_model")  # what evaluate takes: an adapter, or a full fine-tuning baseline


def with_task_head(card: dict, path) -> None:
    """An evaluated adapter has a task head (a TPP-stage adapter has none)."""
    if task_of_card(card) is None:
        raise TppError(f"adapter '{path}' has no task head (stage {card.get('stage')!r}); "
                       "fine-tune it first (tpp run finetune ... adapter.init_from=...).")


def evaluated(cfg, files: bool = True) -> tuple[dict, dict[str, bytes] | None]:
    """The card of the adapter at ``adapter.path`` (one with a task head) and its files' bytes
    (:func:`~tpp.adapter_read.read_adapter_dir`: a store version folder's as its content hash verified them), read
    once for ``cfg`` (:func:`~tpp.adapter_read.read_once`): ``tpp validate``'s and a run's checks and the run's load
    parse these same bytes (the folder was read and hashed about four times, the weights once more). Held while
    ``cfg`` lives; the bytes only until :func:`taken` (read again if asked for after that with ``files``;
    ``files=False``: the card alone will do)."""
    card, read, _ = read_once(cfg, cfg.adapter.path, EVALUATED, weights=True, head=True, files=files)
    with_task_head(card, cfg.adapter.path)
    return card, read


def taken(cfg) -> tuple[dict, dict[str, bytes]]:
    """:func:`evaluated`'s card and files, handed to the load that uses them last: the bytes (a full model's
    weights can be hundreds of MiB) are not held beyond it, the card is."""
    evaluated(cfg)
    card, files, _ = take_read(cfg, cfg.adapter.path, EVALUATED, weights=True, head=True)
    return card, files


def check(cfg) -> None:
    """What this recipe needs of the config alone (``tpp validate`` runs it too)."""
    if not cfg.adapter.path:
        raise ConfigError("the evaluate recipe needs adapter.path=DIR (an adapter directory with a head; from "
                          "Python: tpp.evaluate(config, adapter=DIR or a RunResult)).")
    corruption_plan(cfg)


def check_adapter(cfg, load: bool = True) -> None:
    """The adapter at ``adapter.path`` loads as :func:`load_task_model` loads it: its card, its method attached to
    the backbone, its weight and head files read and checked against the card (a deleted or damaged
    ``head.safetensors`` is found by ``tpp validate``, not after the run starts). Without ``load`` (the backbone
    does not load, or a run, which loads the adapter right after) its card and files, without the backbone."""
    card, files = evaluated(cfg)
    check_task_fits_data(cfg, card)
    if not load:  # the files, backbone-free: a run loads these bytes right after
        read_weights(cfg.adapter.path, card, files)
        check_head(card, read_head(cfg.adapter.path, files), cfg.adapter.path)
        return
    load_task_model(cfg.adapter.path, cfg.backbone.path, cfg.backbone.mean, cfg.backbone.std, read=taken(cfg))


def check_task_fits_data(cfg, card: dict) -> None:
    """The adapter's task (its card's) takes the configured data source (a classification adapter on a source
    of masks is refused here, before output_dir exists, naming the adapter)."""
    task = task_of_card(card)
    as_trained = copy.copy(cfg)
    as_trained.task, as_trained.task_options = task.name, task.options_cls()
    try:
        task.check_config(as_trained)
    except ConfigError as exc:
        raise TppError(f"adapter '{cfg.adapter.path}' is a {task.name} adapter, which cannot evaluate this data: "
                       f"{str(exc).rstrip('.')}.") from None


def check_data(cfg, dataset) -> dict:
    """What this recipe needs of its loaded data (``tpp validate`` loads the data and runs it too): refused as
    the run refuses it, warned about as the run warns (:func:`seen_split_note`: its own data's train/val split,
    or its own data split otherwise since training); returns {split: images evaluated}."""
    card = evaluated(cfg, files=False)[0]
    check_against_card(card, dataset, cfg.adapter.path)
    seen = seen_split_note(card, dataset, cfg.data.split, cfg.adapter.path)
    if seen:
        warnings.warn(seen, stacklevel=2)
    return {cfg.data.split: len(dataset.split(cfg.data.split))}


def input_size(cfg) -> int | None:
    """The side the data is loaded at: the adapter card's (what ``load_task_model`` gives the backbone)."""
    return (evaluated(cfg, files=False)[0].get("input") or {}).get("image_size")


def check_against_card(card: dict, dataset, path) -> None:
    """The data fits the adapter at ``path``: its task's needs, the same class names, the split it was tuned on."""
    task = task_of_card(card)
    try:
        task.check_data(dataset)
    except TppError as exc:
        raise TppError(f"adapter '{path}' is a {task.name} adapter: {exc}") from None
    names = card["task"].get("label_names")
    if list(dataset.class_names) != list(names or []):
        raise TppError(f"dataset '{dataset.name}' classes {dataset.class_names} differ from the adapter's "
                       f"{names} (its card's task.label_names).")
    check_reading(card, dataset, path)
    check_same_split(card, dataset, path)


def check_reading(card: dict, dataset, path) -> None:
    """Files are read as the adapter was trained (its card's ``data.reading``: the slice, frame and window that
    ``tpp predict`` applies by default). Its own data read otherwise is refused (the metrics would be of inputs
    predict never gives it, and the split check would take the other pixels for another split); other data read
    otherwise is warned about, as ``tpp predict`` warns about an option that differs. An option that acts on none
    of the data's files (``data.window`` on PNGs) reads them alike whatever its value, and is not compared."""
    from tpp.data.file_reading import FLAGS, compared, described, recorded_reading, same_option

    trained = recorded_reading(card.get("data") or {}, f"adapter '{path}'")
    if dataset.split_files is None:  # data not read from files (npz ...): nothing was decoded with options
        return
    given = dataset.reading or {}
    # an option the card does not record is one the adapter was trained without (a window on min-max volumes)
    keys = compared(trained, given, getattr(dataset, "file_formats", None))
    differs = {k: trained.get(k) for k in keys if not same_option(k, given.get(k), trained.get(k))}
    if not differs:
        return
    seen = card.get("data") or {}
    told = {k: given.get(k) for k in differs}
    text = (f"adapter '{path}' was trained reading each file with {described(differs)} (its card's data.reading, "
            f"what tpp predict applies by default); this config reads '{dataset.name}' with {described(told)}")
    if seen.get("name") == dataset.name or (seen.get("origin") and seen.get("origin") == dataset.origin):
        to_set = {k: v for k, v in differs.items() if v is not None}
        to_drop = " ".join(f"data.{FLAGS[k][2:]}" for k, v in differs.items() if v is None)
        how = " and ".join(([f"set {described(to_set)}"] if to_set else []) + ([f"drop {to_drop}"] if to_drop else []))
        raise TppError(f"{text}: its own data would be evaluated on other pixels than it was trained and is served "
                       f"on. {how[0].upper()}{how[1:]}.")
    warnings.warn(f"{text}: the metrics are of inputs read otherwise than its training images were.", stacklevel=2)


def run(cfg, run) -> dict:
    accelerator = build_accelerator(cfg.train.mixed_precision, cfg.seed, run, device=cfg.device)
    model, card, info = load_task_model(cfg.adapter.path, cfg.backbone.path, cfg.backbone.mean, cfg.backbone.std,
                                        read=taken(cfg))  # the bytes its checks (tpp validate's, the run's) read
    task = task_of_card(card)  # set up by the card: classification decides with its threshold
    dataset = load_data(cfg.data, cfg.seed, info.input_size)
    record_skipped([dataset], run)
    check_against_card(card, dataset, cfg.adapter.path)
    seen = seen_split_note(card, dataset, cfg.data.split, cfg.adapter.path)
    if seen:
        warnings.warn(seen, stacklevel=1)
    split = dataset.split(cfg.data.split)
    model = accelerator.prepare(model)
    targets = task.targets(split)
    size = tuple(targets.shape[1:]) or None  # e.g. the stored mask size
    rows = batch_rows(task, cfg.data.split, split, None, list(dataset.class_names))
    with PredictionsWriter(run) as csv_out:  # predictions.csv renamed into place once all below succeeded
        result = scored(cfg, accelerator, model, task, card, dataset, split.images, targets, size, info,
                        lambda start, pred, truth: csv_out.write(rows(start, pred, truth)))
        warn_undefined(result, task.main_metric, cfg.data.split, dataset)
        note = task.decision_line()
        shift = corruption_metrics(cfg, accelerator, model, task, card, dataset, split, targets, size, info, run)
        metrics = {cfg.data.split: result, **({"corruption": shift} if shift else {}),
                   **({"split_note": seen} if seen else {}),
                   "adapter": {"site": card["site"], "method": card["method"], "created": card["created"]},
                   **({"decision": note} if note else {}), "definitions": task.definitions(),
                   "wall_time_s": round(run.elapsed(), 1),
                   "device": str(accelerator.device)}
        run.log(event="evaluate", split=cfg.data.split, task=task.name,
                **{task.main_metric: result[task.main_metric]}, **({"decision": note} if note else {}))
    run.publish_json("metrics.json", metrics)
    return metrics


def scored(cfg, accelerator, model, task, card, dataset, images, targets, size, info, each=None) -> dict:
    """The split's metrics (``task.metrics``' numbers) of the stored ``images`` against ``targets`` (N, ...),
    predicted, scored (:meth:`~tpp.tasks.Task.scorer`) and handed to ``each(start, predictions (B, ...),
    targets (B, ...))`` one batch at a time: a segmentation split's masks (predicted and true) are never held
    whole, only the batch's."""
    scorer = task.scorer(dataset, cfg.seed)
    batches = predict_batches(accelerator, model, ModelInputs.for_backbone(images, info), cfg.train.eval_batch_size,
                              lambda logits: task.predictions(logits, card["task"], size), cfg.data.num_workers)
    for start, pred in batches:
        truth = targets[start:start + len(pred)]  # a mask folder's batch decoded once, for scores and rows
        scorer.add(pred, truth)
        if each is not None:
            each(start, pred, truth)
    return scorer.result()


def seen_split_note(card: dict, dataset, split: str, source: str) -> str | None:
    """A warning when the evaluated split is one the adapter learnt from (``train``) or was tuned on (``val``:
    model selection and the decision threshold) — its own dataset and split (same training images) — since its
    metrics there are optimistic; or, for any split, when its own data was split again otherwise
    (:func:`changed_split_note`, naming the adapter as ``source``); None for a held-out split or other data."""
    trained = card.get("data", {})
    train_hash = (trained.get("split_sha256") or {}).get("train")
    if train_hash and train_hash != dataset.split_sha256().get("train"):
        return changed_split_note(trained, dataset, split, source)
    if split not in ("train", "val") or not train_hash:
        return None
    how = ("was trained on these images" if split == "train" else
           "chose its checkpoint and decision threshold on (some of) these images")
    return (f"dataset '{dataset.name}': the adapter {how} (the {split} split of its own run): the metrics are "
            "optimistic, not an estimate for new images; evaluate data.split=test for that.")


def changed_split_note(trained: dict, dataset, split: str, source: str) -> str | None:
    """A warning when a card's data (``trained``: a card written since 2026-12-02, with ``collection_sha256``)
    is this dataset — the same images, or the same collection on disk (``origin``: the folder holding the files,
    a known collection, ``data.origin``) edited since — split by seed then and now, yet its training split
    (``split_sha256.train``, checked differing by the caller) is not the one recomputed now: images added or
    removed, or group ids read otherwise (``1.0`` is patient ``1`` since 2026-12-02), move images between splits,
    so the split evaluated may hold training images. None otherwise: an older card (nothing to tell by), other
    data (another folder of the same name), or a split given by the data (it is not recomputed). Its callers
    (``run``, ``check_data``) refuse the same images and the same image folder split otherwise first
    (:func:`tpp.builders.check_same_split`), so there it speaks for a collection named by ``data.origin`` (or a
    known collection) whose images changed; it describes the other cases too, for a caller without that check."""
    from tpp.builders import same_collection

    if not isinstance(trained.get("collection_sha256"), str):
        return None
    seeded = str(trained.get("split_id", "")).startswith("seeded") and dataset.split_id.startswith("seeded")
    same_origin = trained.get("origin") is not None and trained.get("origin") == dataset.origin
    if not seeded or not (same_collection(trained, dataset) or same_origin):
        return None
    how = "the same images" if same_collection(trained, dataset) else "the same collection, its images changed since"
    return (f"dataset '{dataset.name}' is the data of adapter '{source}' ({how}), but the training split recomputed "
            "now differs from the one the adapter was trained on (its card's data.split_sha256.train): "
            f"{split} images may overlap its training images, and the metrics be optimistic; evaluate images it never "
            "saw, or pin its run's split (the run folder's splits.json, as a CSV's split column).")


def warn_undefined(result: dict, metric: str, split: str, dataset) -> None:
    """A main metric that is undefined on the evaluated split (AUROC without an image of some class) is written as
    null; say so, naming the split, rather than leave a bare null in metrics.json."""
    value = result.get(metric)
    if isinstance(value, float) and math.isnan(value):
        warnings.warn(f"dataset '{dataset.name}': {metric} on the {split} split ({len(dataset.split(split))} images) "
                      "is undefined and written as null (classification: a class has no image there).", stacklevel=2)


def corruption_plan(cfg) -> tuple[str, list[str], list[int]] | None:
    """(preset, corruptions, severities) that ``evaluate.corruption`` / ``severity`` / ``corruption_preset`` ask
    for, checked; None without ``evaluate.corruption``."""
    from tpp.data.corruptions import SEVERITIES, preset

    options = cfg.evaluate
    if options.corruption is None:
        if options.severity is not None:
            raise ConfigError("evaluate.severity needs evaluate.corruption=NAME or all.")
        return None
    name = options.corruption_preset or cfg.data.name
    families = list(preset(name))
    if options.corruption != "all" and options.corruption not in families:
        raise ConfigError(f"evaluate.corruption={options.corruption} is not one of {name}'s MedMNIST-C corruptions: "
                          f"{', '.join(families)} (or all).")
    if options.severity is not None and options.severity not in SEVERITIES:
        raise ConfigError(f"evaluate.severity must be 1..5, got {options.severity}.")
    return (name, families if options.corruption == "all" else [options.corruption],
            [options.severity] if options.severity else list(SEVERITIES))


# what a split's results record beside its metrics: counts and indices (ints) and the decision threshold (a
# setting); the per-corruption entries keep them, the mean over corruptions does not
NOT_AVERAGED = frozenset({"n", "positive_class_index", "bootstrap_resamples", "threshold", "empty_predictions",
                          "hd95_undefined"})


def is_averaged(key: str, rows: list[dict]) -> bool:
    """Whether ``key`` is a metric that ``corruption.mean`` averages over the corruptions' ``rows``: a float in
    every row (scores and rates: auroc, accuracy, ece, dice ...; counts and indices are ints) and not one of
    :data:`NOT_AVERAGED`."""
    return key not in NOT_AVERAGED and all(isinstance(r[key], float) for r in rows)


def mean_over_corruptions(per: dict, families: list[str], severities: list[int]) -> dict:
    """``{"3": {metric: mean over the corruptions}}`` per severity, from ``per[corruption]["3"]``: the metrics
    every corruption has (:func:`is_averaged`)."""
    mean = {}
    for severity in map(str, severities):
        rows = [per[c][severity] for c in families]
        keys = set.intersection(*(set(r) for r in rows))
        mean[severity] = {k: sum(r[k] for r in rows) / len(rows) for k in sorted(keys) if is_averaged(k, rows)}
    return mean


def corruption_metrics(cfg, accelerator, model, task, card, dataset, split, targets, size, info, run) -> dict | None:
    """The split's scalar metrics (point estimates, no bootstrap interval) under each requested corruption and
    severity, and their mean over corruptions per severity:
    ``{"preset", "per_corruption": {name: {"3": {...}}}, "mean": {"3": {...}}}``: each corruption's entry holds
    every scalar, the mean the metrics only (:func:`is_averaged`: no ``n``, index or threshold). Images are
    corrupted as stored (before resizing), one batch at a time, image ``i`` drawing from ``seed + i``."""
    from tpp.data.corruptions import CorruptedImages

    plan = corruption_plan(cfg)
    if plan is None:
        return None
    name, families, severities = plan
    if hasattr(task, "resamples"):  # point estimates: no bootstrap interval per corruption and severity
        task = copy.copy(task)
        task.resamples = 0
    per: dict[str, dict[str, dict]] = {}
    for corruption in families:
        for severity in severities:
            images = CorruptedImages(split.images, corruption, severity, name, cfg.seed)
            result = scored(cfg, accelerator, model, task, card, dataset, images, targets, size, info)
            per.setdefault(corruption, {})[str(severity)] = {k: v for k, v in result.items()
                                                             if isinstance(v, (int, float)) and not isinstance(v, bool)}
            run.log(event="corruption", corruption=corruption, severity=severity,
                    **{task.main_metric: result.get(task.main_metric)})
    return {"preset": name, "severities": severities, "per_corruption": per,
            "mean": mean_over_corruptions(per, families, severities),
            "source": "MedMNIST-C (Di Salvo et al. 2024) families and parameters, tpp.data.corruptions"}


def report(summary: dict) -> list[str]:
    """Lines ``tpp run`` prints at the end: the split's, the corruption summary's (with ``evaluate.corruption``),
    the decision rule's."""
    lines = [task.split_line(split, m) for split, m in summary.items() if (task := task_of_result(m))]
    task = next((t for m in summary.values() if (t := task_of_result(m))), None)
    lines += [corruption_line(summary["corruption"], task.main_metric)] if task and "corruption" in summary else []
    return lines + ([f"decision: {summary['decision']}"] if isinstance(summary.get("decision"), str) else [])


def corruption_line(shift, metric: str) -> str:
    """``corruption (6 corruptions, preset breastmnist): mean auroc at severity 1: 0.712  2: 0.690 ...``: the main
    metric's mean over the corruptions at each severity (``metrics.json``'s ``corruption.mean``)."""
    shift = shift if isinstance(shift, dict) else {}
    mean = shift.get("mean") if isinstance(shift.get("mean"), dict) else {}
    per = shift.get("per_corruption") if isinstance(shift.get("per_corruption"), dict) else {}

    def value(entry) -> str:
        v = entry.get(metric) if isinstance(entry, dict) else None
        return f"{v:.3f}" if isinstance(v, (int, float)) and not isinstance(v, bool) else "n/a"

    severities = "  ".join(f"{severity}: {value(entry)}" for severity, entry in mean.items())
    count = f"{len(per)} corruption{'s' if len(per) != 1 else ''}"
    return f"corruption ({count}, preset {shift.get('preset')}): mean {metric} at severity {severities or 'n/a'}"


def compare_row(run) -> dict:
    """An evaluation: its split's metrics; method, trainable size and init from the evaluated adapter's card
    when that adapter is still where it was (and is the one evaluated: same creation time)."""
    from tpp.compare import card_of, init_label, task_metrics, dir_size_or_none

    m = run.metrics
    split = run.cfg("data", "split")
    split = split if isinstance(split, str) else None  # a hand-edited config.yaml may hold anything
    if not task_metrics(m.get(split)):
        split = next((k for k, v in m.items() if task_metrics(v)), None)
    evaluated = m.get("adapter") if isinstance(m.get("adapter"), dict) else {}
    path = run.cfg("adapter", "path")
    card = card_of(path)
    if card.get("created") != evaluated.get("created"):
        card = {}
    return {"method": evaluated.get("method") or card.get("method"), "data": run.cfg("data", "name"),
            "adapter_init": init_label(card, None) if card else None, "split": split, **task_metrics(m.get(split)),
            "trainable_parameters": card.get("trainable_parameters"),
            "saved_bytes": dir_size_or_none(path) if card else None}
