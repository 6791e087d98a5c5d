"""Small builders the recipes share: input tensors, the card's input rule, parent hand-off checks."""
from __future__ import annotations

import dataclasses
import json
import warnings

import numpy as np
import torch

from tpp.adapter_dir import parent_summary, verify_backbone
from tpp.adapter_read import AdapterRead, read_once, read_weights, take_read
from tpp.backbones import BackboneInfo
from tpp.data import Dataset, same_modality
from tpp.data.build import channel_rule, image_channels, to_model_tensor
from tpp.data.images import FILE_RESIZE
from tpp.errors import ConfigError, TppError
from tpp.model import attach_adapter, input_frame, load_adapter_state


def input_rule(dataset: Dataset, info: BackboneInfo) -> dict:
    """The intensity pipeline applied to images, recorded in the card and reused at inference. Data read from
    files (folders, CSV) were brought to ``image_size`` when read (``file_resize``): inference does the same
    to each image, so a file gives bit-identical model input in training and serving."""
    images = dataset.split(next(iter(dataset.splits))).images
    channels = image_channels(images)
    rule = {"image_channels": channels, "channels": info.channels,
            "channel_rule": channel_rule(channels, info.channels),
            "image_size": info.input_size, "resize": "bilinear, antialiased, to image_size",
            "resolution": info.resolution_note(),
            **({"frame": info.frame, "resize": "bilinear, antialiased, to image_size - 2 x frame (none at that size), "
                "then a frame-px zero border"} if info.frame else {}),
            "scale": "uint8 / 255", "mean": info.mean, "std": info.std}
    if dataset.file_resize:  # already at image_size: the tensor resize does nothing
        rule["resize"] = rule["file_resize"] = FILE_RESIZE
    return rule


def tensors(images: np.ndarray, info: BackboneInfo) -> torch.Tensor:
    """uint8 images -> normalised model input (N, C, S, S) for this backbone."""
    return to_model_tensor(images, info.channels, info.input_size, info.mean, info.std, info.frame)


def parent_read(cfg, files: bool = True) -> AdapterRead:
    """The parent adapter (``adapter.init_from``): its card and weights file, read once for ``cfg``
    (:func:`tpp.adapter_read.read_once`): the config's checks (``tpp validate``, a run's before its folder exists) and
    the run's hand-off parse the same bytes, a store version folder's as its content hash verified them.
    ``files=False``: the card alone will do."""
    return read_once(cfg, cfg.adapter.init_from, weights=True, files=files)


def parent_adapter(cfg, info: BackboneInfo, modality: str) -> tuple[dict, dict, str, dict, list[str]]:
    """The ``init_from`` card and tensors (:func:`parent_read`'s bytes, handed over and no longer held) with options
    merged: method and inherited options come from the parent. A different value given on the command line is a
    config error; one from the config file gives way to the parent's (reported in the returned notes). Warns (or
    fails with ``adapter.require_same_modality``) when the parent saw another modality.

    Returns (parent card, parent tensors, method name, options, notes on config-file values replaced).
    """
    adapter_cfg = cfg.adapter
    source = adapter_cfg.init_from
    card, files, _ = take_read(cfg, source, weights=True)
    weights = read_weights(source, card, files)
    verify_backbone(card, info, source)
    method, options, notes = inherit(adapter_cfg, card)
    check_parent_modality(card, source, modality, adapter_cfg.require_same_modality)
    return card, weights, method, options, notes


def inherit(adapter_cfg, card: dict) -> tuple[str, dict, list[str]]:
    """The method and options of a fine-tune from the parent adapter's ``card`` (``adapter.init_from``): the
    method and its inherited options are the parent's; a different value given explicitly (command line, or a
    config dict's adapter section) is a ConfigError, one from the config file gives way (a note says so).

    Returns (method name, options, notes on config-file values replaced)."""
    source = adapter_cfg.init_from
    explicit = adapter_cfg.explicit  # None: every key counts as given explicitly
    is_explicit = (lambda key: True) if explicit is None else (lambda key: key in explicit)
    notes, given = [], dict(adapter_cfg.options)
    if adapter_cfg.method != card["method"]:
        if is_explicit("method"):
            raise ConfigError(f"adapter.method={adapter_cfg.method} conflicts with the parent adapter '{source}' "
                              f"({card['method']}); drop the override or set adapter.method={card['method']}.")
        notes.append(f"adapter.method={adapter_cfg.method} from the config file replaced by the parent's "
                     f"{card['method']} (its options too)")
        given = {k: v for k, v in given.items() if is_explicit(k)}
    from tpp.adapters import get_method

    method = get_method(card["method"])
    options = dict(card["options"])
    foreign = sorted(set(given) - {f.name for f in dataclasses.fields(method.options_cls)})
    if foreign:
        raise ConfigError(f"{', '.join('adapter.' + k for k in foreign)}: not an option of the parent adapter's "
                          f"method {card['method']} ('{source}').")
    for key, value in given.items():
        if key in method.inherited and not _same_inherited(key, value, options.get(key), card):
            if is_explicit(key):
                raise ConfigError(f"adapter.{key}={value!r} conflicts with the parent adapter '{source}' "
                                  f"({key}={options.get(key)!r}); it is inherited, drop the override.")
            notes.append(f"adapter.{key}={value!r} from the config file replaced by the parent's {options.get(key)!r}")
            continue
        options[key] = value
    return card["method"], options, notes


def _same_inherited(key: str, value, parent_value, card: dict) -> bool:
    """Whether a given inherited option asks for what the parent has: equal, or for ``target_modules`` the
    leaf names of the layers the parent's default (None: per backbone family) chose (its card lists them)."""
    if value == parent_value:
        return True
    if key == "target_modules" and parent_value is None and isinstance(value, list):
        chosen = {str(path).rsplit(".", 1)[-1] for path in card.get("target_modules") or []}
        return bool(chosen) and set(map(str, value)) == chosen
    return False


def effective_adapter(cfg, inherits: bool = True) -> tuple[str, dict]:
    """The method and options (a dict, defaults filled in) the run attaches: the config's, or with
    ``adapter.init_from`` (when the recipe reads it: ``inherits``) the parent card's merged with the config's by
    :func:`inherit`. Raises TppError for a parent that cannot be read or an override that conflicts with it."""
    if inherits and cfg.adapter.init_from:
        method, options, _ = inherit(cfg.adapter, parent_read(cfg, files=False).card)
        return method, options
    return cfg.adapter.method, cfg.adapter.resolved_options()


def check_parent_modality(card: dict, source: str, modality: str, required: bool) -> None:
    """Warn (or fail when ``required``) if the parent adapter was pre-trained on another modality (a
    multi-task parent: on none of its tasks' modalities)."""
    from tpp.multitask_build import card_modalities

    seen = card_modalities(card)
    if not any(same_modality(m, modality) for m in seen):
        parent_modality = seen[0] if len(seen) == 1 else f"{'/'.join(seen)} (a multi-task pool)"
        message = (f"adapter.init_from '{source}' was pre-trained on modality {parent_modality}, but the "
                   f"fine-tuning data is {modality}; pre-training on another modality can hurt.")
        if required:
            raise TppError(message + " (adapter.require_same_modality=true)")
        warnings.warn(message)


def record_skipped(datasets: list[Dataset], run) -> None:
    """What loading decided about files, recorded in the run dir: the seeded split of file sources
    (:func:`record_splits`), and files left out with ``data.on_bad_file=skip`` (``skipped.csv``, a log line,
    a warning)."""
    record_splits(datasets, run)
    rows = [(d.name, f, reason) for d in datasets for f, reason in d.skipped]
    if not rows:
        return
    import csv
    import io

    from tpp.safe_write import write_atomic

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["dataset", "file", "reason"])
    writer.writerows(rows)
    if run.main:
        write_atomic(run.path / "skipped.csv", buffer.getvalue())
    run.log(event="skipped_files", count=len(rows))
    warnings.warn(f"{len(rows)} unreadable file(s) were left out (data.on_bad_file=skip); each is listed with its "
                  f"reason in {run.path / 'skipped.csv'}.")


def record_splits(datasets: list[Dataset], run) -> None:
    """``splits.json`` in the run dir for data read from files: per dataset its split id, and per split the
    files (relative to the folder or CSV) with the hash the card records (``split_files_sha256``). Nothing is
    written into the data folder; the split is recomputed from the files and seed on every load."""
    files = [d for d in datasets if d.split_files is not None]
    if not files or not run.main:
        return
    from tpp.safe_write import write_atomic

    listed = {d.name: {"split_id": d.split_id, "split_files_sha256": d.split_files_sha256(),
                       **{s: list(f) for s, f in d.split_files.items()}}
              for d in files}
    write_atomic(run.path / "splits.json", json.dumps(listed, indent=1))
    run.log(event="splits", file="splits.json",
            counts={d.name: {s: len(f) for s, f in d.split_files.items()} for d in files})


def check_leakage(parent_card: dict, dataset: Dataset, source: str, label_fraction: float = 1.0) -> None:
    """Refuse a parent adapter pre-trained on the same image collection (``origin``; known for MedMNIST
    sets, e.g. BreastMNIST's is BUSI; for folders and CSVs the folder, by hash; or, whatever it was called, the
    very same training images) unless it saw exactly this dataset's training split and nothing else: otherwise it
    may have seen this run's validation or test images. A parent that also read that split's labels (a
    supervised multi-task entry) is refused for a run with fewer of them (``label_fraction`` < 1): its result
    would not be the few-label result it is reported as."""
    tasks = (parent_card.get("multitask") or {}).get("tasks") or []  # a multi-task parent: every task's data
    for seen in [parent_card.get("data", {})] + [t.get("data") or {} for t in tasks if isinstance(t, dict)]:
        _check_seen(seen, dataset, source, label_fraction)


def _check_seen(seen: dict, dataset: Dataset, source: str, label_fraction: float) -> None:
    """:func:`check_leakage` for one dataset the parent saw (its card's ``data`` entry)."""
    from tpp.data.arrays import known_origin

    # a card with collection_sha256 recorded the origin its file's name gave (None: unknown); an older one's
    # MedMNIST name is the best evidence left
    origin = seen.get("origin") or (None if "collection_sha256" in seen else known_origin(seen.get("name")))
    parent_train = seen.get("split_sha256", {}).get("train")
    same_images = parent_train is not None and parent_train == dataset.split_sha256().get("train")
    collection = same_collection(seen, dataset)
    if (not origin or origin != dataset.origin) and not same_images and not collection and \
            not legacy_default_name(seen, dataset):
        if origin and origin in (dataset.held_out_origins or ()):  # a sub-folder of this data, or one above it
            raise TppError(
                f"adapter.init_from '{source}' was pre-trained on '{seen.get('name')}', images of a folder that "
                f"holds validation or test images of '{dataset.name}' (split '{dataset.split_id}'), or of a folder "
                "above them: it may have seen them. Pre-train on this dataset's own training split (the same data "
                "section, with data.split_seed and the split fractions of this run).")
        return
    used = seen.get("used") or {}
    used_splits = list(used.get("splits", [used.get("split", "train")]))
    # cards written before split hashes: the same dataset name is the best evidence
    same_train = same_images if parent_train is not None else seen.get("name") == dataset.name
    if not (same_train and used_splits == ["train"]):
        same = ("perhaps the same data under the old default name" if legacy_default_name(seen, dataset) else
                "the very same images" if collection and not (origin and origin == dataset.origin) else
                "read from the same image folder" if str(origin).startswith("files:") else
                f"made from the same {origin} images")
        decoded = (" (If the parent was trained before 2026-12-01 on photos with an EXIF orientation tag or on 8-bit "
                   "DICOM files, these images now decode differently: pre-train it again.)"
                   if seen.get("split_id") == dataset.split_id and used_splits == ["train"] else "")
        if seen.get("name") == "breastmnist" != dataset.name:
            decoded += LEGACY_NAME_HINT
        decoded += reading_hint(seen, dataset)
        raise TppError(
            f"adapter.init_from '{source}' was pre-trained on '{seen.get('name')}' ({', '.join(used_splits)} of split "
            f"'{seen.get('split_id')}'), {same} as '{dataset.name}' (split "
            f"'{dataset.split_id}'), but not on exactly this run's training images: it may have seen this run's "
            "validation or test images. Pre-train on this dataset's own training split (same data.name, file, "
            "data.split_seed, label_key, group_key and split fractions)." + decoded)
    read = _labels_read(used)
    if read > label_fraction:
        raise TppError(
            f"adapter.init_from '{source}' was trained on the labels of '{seen.get('name')}' ({read:.0%} of its "
            f"training split: {used.get('images')} images), the training images of '{dataset.name}', but this run "
            f"uses data.label_fraction={label_fraction:g} of those labels: it would report a few-label result from "
            f"a parent that read more labels. Fine-tune with data.label_fraction={read:g} or more, or from a parent "
            f"that read none of them (a TPP adapter, or a multi-task pool that uses '{dataset.name}' only through a "
            "self-supervised task such as kind: mae, or leaves it out).")


def reading_hint(seen: dict, dataset: Dataset) -> str:
    """A sentence for a refusal when the parent read its files with other ``data.slice`` / ``data.frame`` /
    ``data.window`` than this run (its card's ``data.reading``): the same files then hash as other images."""
    from tpp.data.file_reading import compared, described, recorded_reading, same_option

    try:
        parent = recorded_reading(seen, "the parent's card")
    except TppError:
        return ""
    mine = getattr(dataset, "reading", None) or {}
    keys = compared(parent, mine, getattr(dataset, "file_formats", None))  # what acts on this run's files
    if getattr(dataset, "split_files", None) is None or all(same_option(k, parent.get(k), mine.get(k)) for k in keys):
        return ""
    return (f" (The parent read each file with {described({k: parent.get(k) for k in keys})}, this run with "
            f"{described({k: mine.get(k) for k in keys})}: the same files read otherwise are other images here; "
            "read them as the parent did.)")


def _labels_read(used: dict) -> float:
    """The share of a training split's labels a parent read: a supervised multi-task entry all of them
    (``labels_read``), a fine-tuned parent its ``label_fraction``, a pretext none."""
    if used.get("labels_read"):
        return 1.0
    fraction = used.get("label_fraction")
    return float(fraction) if isinstance(fraction, (int, float)) and not isinstance(fraction, bool) else 0.0


def label_fraction_of(cfg) -> float:
    """The share of the training labels a run uses (1 for a recipe that reads no ``data.label_fraction``)."""
    fraction = getattr(cfg.data, "label_fraction", 1.0)
    return 1.0 if fraction is None else float(fraction)


def same_collection(seen: dict, dataset: Dataset) -> bool:
    """Whether a card's data (``seen``) holds exactly this dataset's images, whatever it was named or how it was
    split (``collection_sha256``; cards written before 2026-12-02 have none)."""
    recorded = seen.get("collection_sha256")
    return isinstance(recorded, str) and recorded == dataset.collection_sha256()


def legacy_default_name(seen: dict, dataset: Dataset) -> bool:
    """Whether a card's data (``seen``) may be this dataset under the name every source defaulted to before
    2026-12-02 (``breastmnist``; a seeded split depends on the name): the same split id and as many images, in a
    card written before then (one with ``collection_sha256`` is newer: :func:`same_collection` tells)."""
    if "collection_sha256" in seen:  # written since 2026-12-02: its name was no old default, its images tell
        return False
    counts = seen.get("counts") or {}
    total = sum(v for v in counts.values() if isinstance(v, int)) if isinstance(counts, dict) else None
    return (seen.get("name") == "breastmnist" != dataset.name and seen.get("split_id") == dataset.split_id
            and total == sum(len(s) for s in dataset.splits.values()))


LEGACY_NAME_HINT = (" (Before 2026-12-02 data.name defaulted to 'breastmnist' for every data source, and a seeded "
                    "split depends on data.name: if that run's config left data.name out, give this run "
                    "data.name=breastmnist to split as it did.)")


def check_same_split(card: dict, dataset: Dataset, source: str) -> None:
    """Evaluation: refuse an adapter trained on another split of this dataset (its training images may
    be in the split evaluated now). A card with ``collection_sha256`` is this dataset if it holds these very
    images or was read from this very image folder (``files:`` origin: a folder whose images changed since);
    its ``data.name`` alone tells nothing (two sites' folders both called ``scans`` are other data, not another
    split). For an older card the same ``data.name`` (or the old default name, :func:`legacy_default_name`) is
    the best evidence left."""
    trained = card.get("data", {})
    train_hash = trained.get("split_sha256", {}).get("train")
    legacy = legacy_default_name(trained, dataset)
    same_name = trained.get("name") == dataset.name and "collection_sha256" not in trained
    same_images = same_collection(trained, dataset)
    origin = trained.get("origin")
    same_folder = isinstance(origin, str) and origin.startswith("files:") and origin == dataset.origin
    if not (same_name or legacy or same_images or same_folder) or not train_hash or \
            train_hash == dataset.split_sha256().get("train"):
        return
    renamed = trained.get("name") != dataset.name and not legacy
    what = (f" (the same images, named '{trained.get('name')}' there)" if renamed and same_images else
            " (read from the same image folder, whose images may have changed since)" if not same_images
            and same_folder else "")
    if not renamed and not legacy and trained.get("split_id") == dataset.split_id:  # its settings: the data changed
        raise TppError(f"adapter '{source}' was trained on another split of '{dataset.name}'{what}, with the same "
                       f"split settings ({dataset.split_id}) and data.name as this config: "
                       f"{changed_data_cause(trained, dataset, same_images)} Its training images may be in the split "
                       "evaluated now, and no split setting brings its split back: evaluate images it never saw "
                       "(another folder or data.file), pin its run's split (the run folder's splits.json, as a "
                       "CSV's split column), or re-train on the data as it is now.")
    raise TppError(f"adapter '{source}' was trained on another split of '{dataset.name}'{what}"
                   f" ({trained.get('split_id')}; this config gives {dataset.split_id}): its training images may "
                   "be in the split evaluated now. Use the split settings of its run (data.split_seed; a run "
                   "made before data.split_seed existed was split by its seed: set data.split_seed to it)."
                   + (f" A seeded split depends on data.name too: give data.name={trained.get('name')}."
                      if renamed else "") + (LEGACY_NAME_HINT if legacy else ""))


def changed_data_cause(trained: dict, dataset: Dataset, same_images: bool) -> str:
    """Why the same split settings split a card's data (``trained``) otherwise now: one sentence naming what
    changed in the data since (its images, or with the same images their group ids, labels or files)."""
    counts = trained.get("counts") or {}
    then = sum(v for v in counts.values() if isinstance(v, int)) if isinstance(counts, dict) else 0
    now = sum(len(s) for s in dataset.splits.values())
    if not dataset.split_id.startswith("seeded"):
        return (f"the data's own split changed since it was trained (its split column or split folders edited; "
                f"{then} images then, {now} now).")
    if same_images:
        return ("the same images, so the data changed around them since it was trained: their group ids read "
                "otherwise (since 2026-12-02 a group id '1.0' is read as '1', the same patient), their labels "
                "edited, or their files moved or renamed.")
    return (f"the data changed since it was trained (images added, removed or edited; {then} images then, "
            f"{now} now), and a seeded split draws every image's split anew.")


def attach_target_parameters(cfg, encoder, info, dataset: Dataset, run, head: str) -> tuple:
    """Add the configured method to ``encoder``: fresh, or inherited from ``adapter.init_from`` (options
    merged and checked, leakage refused, every parent tensor loaded and logged; ``head`` names what starts
    fresh). Returns (method, typed options, targets, parent summary or None)."""
    method_name, options, parent = cfg.adapter.method, cfg.adapter.typed(), None  # typed once, in the config
    if cfg.adapter.init_from:
        parent_card, parent_weights, method_name, options, notes = parent_adapter(cfg, info, dataset.modality)
        check_leakage(parent_card, dataset, cfg.adapter.init_from, label_fraction_of(cfg))
        parent = parent_summary(parent_card, cfg.adapter.init_from)
        for note in notes:
            print(f"init_from: {note}")
            run.log(event="init_from_option", note=note)
    method, typed, targets = attach_adapter(encoder, method_name, options)
    info.frame = input_frame(encoder.model)
    if parent and isinstance(parent_card.get("input"), dict):  # a parent framed by its card must agree with its method
        from tpp.adapter_checks import check_frame

        check_frame(parent_card, info.frame, cfg.adapter.init_from)
    if parent:
        load_adapter_state(encoder, parent_weights, cfg.adapter.init_from)
        run.log(event="init_from", parent=parent, loaded_tensors=len(parent_weights), note=f"{head} newly initialised")
    return method, typed, targets, parent
