"""The command line of in-context prediction: ``tpp predict --context`` and ``tpp context publish|list|check``
(:mod:`tpp.cli` adds these options and commands; everything heavy is imported inside the functions)."""
from __future__ import annotations

import warnings
from pathlib import Path

from tpp.console import action_paths, add_actions, print_table, printable, report_check
from tpp.errors import TppError


def add_context_options(pr) -> None:
    """``tpp predict --context``: in-context prediction from labelled examples (:mod:`tpp.incontext`)."""
    pr.add_argument("--context", metavar="DIR_OR_CSV",
                    help="predict from this context set of labelled examples instead of an adapter: a folder of "
                         "class sub-folders or of images/ + masks/, or a CSV image,label / image,mask (no --store)")
    pr.add_argument("--method", choices=("prototype", "knn", "learned"), default="prototype",
                    help="--context: nearest class centroid / per-patch prototypes (default), k nearest neighbours, "
                         "or a learned in-context model (--model)")
    pr.add_argument("--model", metavar="DIR", help="--context --method learned: the in-context model (the model/ "
                                                   "folder of a `tpp run incontext` run, or the run folder)")
    pr.add_argument("--neighbours", type=int, help="--context --method knn: neighbours (default about sqrt(K))")
    pr.add_argument("--max-context", type=int, default=256, help="--context: most examples a set may hold "
                                                                  "(default 256)")
    pr.add_argument("--adapter", help="--context: features of the backbone with this TPP / LoRA adapter "
                                      "(its folder or run folder) instead of the frozen backbone alone")
    pr.add_argument("--image-size", type=int, help="--context: pixels fed to the encoder (default: the "
                                                   "backbone's size for classification, 64 for segmentation)")


CONTEXT_POSITIONALS = {
    "STORE": "the store: a folder of context sets and adapters (publish creates it)",
    "DIR_OR_CSV": ("the context set: a folder of class folders (or images/ + masks/), or a CSV with columns "
                   "image,label (or image,mask), paths relative to its folder"),
}
CONTEXT_ACTIONS = [  # (action, summary, positionals, options)
    ("publish", "publish a context set (folder or CSV) to a store as a new version of a site and make it current",
     ("STORE", "DIR_OR_CSV"), ("site", "backbone_recorded", "max_context")),
    ("list", "the context sets of a store", ("STORE",), ()),
    ("check", "verify every published context set as tpp serve would (exit 1 if any is refused)",
     ("STORE",), ("backbone_check", "max_context")),
]
CONTEXT_OPTIONS = {
    "site": ("--site", {"required": True, "help": "the name the set is served under"}),
    "backbone_recorded": ("--backbone", {"help": "the backbone recorded in the card (default "
                                                 "builtin:mae-vit-tiny-med)"}),
    "backbone_check": ("--backbone", {"help": "refuse sets published for another backbone"}),
    "max_context": ("--max-context", {"type": int, "default": 256, "help": "most examples a set may hold "
                                                                            "(default 256)"}),
}


def add_context_command(add) -> None:
    cx = add("context", "context sets for in-context prediction: publish to a store (content-hashed, with a card), "
                        "list, check (`tpp context ACTION --help`: each one's options)")
    add_actions(cx, CONTEXT_ACTIONS, CONTEXT_OPTIONS, aliases={"list": ["ls"]}, positional_help=CONTEXT_POSITIONALS)


def check_publish_order(store: str, source: str, site: str) -> None:
    """``tpp context publish`` takes STORE first (unlike ``tpp adapters publish RUN_DIR STORE``): when the set
    named second does not exist and the store named first exists but is no store (a CSV, or a folder without any
    published set or adapter), the two were most likely swapped: say so, with the command as meant."""
    from tpp.capped_read import list_folder
    from tpp.serve.contexts import FOLDER
    from tpp.serve.store import has_pointer

    first = Path(store)
    if Path(source).exists() or not first.exists():
        return
    is_store = first.is_dir() and ((first / FOLDER).is_dir() or any(  # unlistable: a TppError naming the store
        has_pointer(Path(child.path)) for child in list_folder(first)))
    if not is_store:
        raise TppError(f"context '{source}' does not exist, and '{store}' is no store: tpp context publish takes "
                       f"the STORE first, then the set: tpp context publish {source} {store} --site {site}")


def check_max_context(value: int) -> None:
    """``--max-context`` is a number of examples: 0 or less refused every set as "more than the maximum" (and
    ``tpp context check`` reported each stored set as refused)."""
    if value < 1:
        raise TppError(f"--max-context must be at least 1, got {value}.")


def cmd_context(args) -> int:
    from tpp.serve import contexts

    args.paths = action_paths(args)
    if getattr(args, "max_context", None) is not None:  # publish and check
        check_max_context(args.max_context)
    if args.action == "publish":
        check_publish_order(*args.paths, args.site)
        from tpp.api import quiet
        from tpp.backbones import DEFAULT_BACKBONE, load_backbone

        backbone = args.backbone or DEFAULT_BACKBONE
        with quiet():
            info = load_backbone(backbone)[1]
        cv = contexts.publish(args.paths[1], args.paths[0], args.site, {"id": backbone, "hash": info.hash},
                              args.max_context)
        print(printable(f"published {args.paths[1]} ({cv.ctx.task}, K={cv.ctx.k}, classes {'/'.join(cv.ctx.classes)}) "
                        f"as context {cv.site}@{cv.version} ({cv.path}); now current"))  # a name's bytes escaped
        return 0
    if not Path(args.paths[0]).is_dir():
        raise TppError(f"store '{args.paths[0]}' does not exist (or is not a folder): check the path; "
                       "`tpp context publish STORE CONTEXT --site S` creates one.")
    if args.action in ("list", "ls"):
        rows = contexts.listing(args.paths[0])
        if not rows:
            print(f"no context sets published in {args.paths[0]}")
            return 0
        print_table(list(rows[0]), [list(r.values()) for r in rows])
        return 0
    from tpp.api import quiet
    from tpp.backbones import load_backbone

    with quiet():
        backbone_hash = load_backbone(args.backbone)[1].hash if args.backbone else None
    results = contexts.check_store(args.paths[0], args.max_context, backbone_hash)
    return report_check(results, "context sets", "each verified as tpp serve would")


def cmd_predict_context(args) -> int:
    """``tpp predict --context``: in-context prediction, written as ``tpp predict`` writes adapter predictions."""
    from tpp.data.filesets import image_stem
    from tpp.incontext.context import read_context
    from tpp.incontext.predict import prepare
    from tpp.serve import images as readers
    from tpp.serve.images import PixelLimits, parse_window
    from tpp.serve.predict import (Skipped, collect, ignored_read_options, nothing_predicted, publish_predictions,
                                   record_unreadable, without_own_outputs)

    if args.store or args.site or args.site_map:
        raise TppError("--context predicts from labelled examples, not from a store: drop --store / --site / "
                       "--site-map (or drop --context).")
    if not args.images:
        raise TppError("no images given: pass image files or folders after --context DIR_OR_CSV.")
    if args.max_image_pixels < 1:
        raise TppError(f"--max-image-pixels must be at least 1, got {args.max_image_pixels}.")
    check_max_context(args.max_context)
    limits = PixelLimits(args.max_image_pixels, max(args.max_image_pixels, 2**27))
    skipped: list[Skipped] | None = [] if args.on_bad_file == "skip" else None
    files = without_own_outputs(collect(args.images, skipped), args.out)
    if args.method == "learned" and not args.model:
        raise TppError("--method learned needs --model DIR (the model/ folder of a `tpp run incontext` run).")
    ctx = read_context(args.context, args.max_context, limits)  # every context problem before the backbone loads
    extractor = _extractor(args.backbone, args.adapter, args.device, args.precision)
    prepared = prepare(ctx, extractor, args.method, args.neighbours, args.image_size, model=args.model)
    name = Path(args.context).name.split(".")[0] or "context"
    options = {"frame": args.frame, "slice_spec": args.slice, "window": parse_window(args.window), "limits": limits}
    for line in ignored_read_options(files, options):
        warnings.warn(line, stacklevel=1)
    rows, masks, good, arrays = [], {}, [], []
    for i, file in enumerate(files):
        try:
            arrays.append(readers.read(file, **options))
            good.append(i)
        except (readers.ImageError, OSError, ValueError) as exc:
            record_unreadable((file, name), exc, skipped)
    if not good:
        raise nothing_predicted(skipped or [], args.out)
    for i, array, result in zip(good, arrays, prepared.predict(arrays, args.batch_size)):
        row = {"image": str(files[i]), "site": f"context:{name}", "version": prepared.version}
        columns, written = prepared.csv_entry(result, f"{i:05d}_{image_stem(files[i])}")
        row.update(columns)
        masks.update(written)
        rows.append(row)
    return publish_predictions(rows, masks, args.out, skipped,
                               f"{len(rows)} images predicted in context ({ctx.task}, K={ctx.k}, {args.method})")


def _extractor(backbone: str, adapter: str | None, device: str, precision: str = "fp32"):
    """The backbone (with ``adapter`` on top, checked) on ``device`` in ``precision``, loaded quietly."""
    from tpp.api import quiet
    from tpp.incontext.features import load_extractor
    from tpp.serve.adapter_features import with_adapter

    with quiet():
        extractor = load_extractor(backbone, device, precision)
        return with_adapter(extractor, adapter) if adapter else extractor


