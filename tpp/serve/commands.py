"""The deployment side of the ``tpp`` command: ``adapters`` (publish, ls, check, push, pull), ``predict`` and
``serve`` (:mod:`tpp.cli` adds these commands; everything heavy is imported inside the functions)."""
from __future__ import annotations

import math
import os
import sys
import warnings
from pathlib import Path

from tpp.console import action_paths, add_actions, print_table, report_check
from tpp.errors import TppError
from tpp.serve.context_commands import add_context_options, cmd_predict_context


HUB_EXAMPLES = """
  tpp adapters push STORE --site hospital_a --repo my-hospital/busi-lora              # the current version
  tpp adapters push STORE --site hospital_a --version 1f0c9a2b3d4e5f60 --repo my-hospital/busi-lora --private
  tpp adapters pull my-hospital/busi-lora STORE --site hospital_b --backbone B   # B: the serving backbone
  HF_HUB_OFFLINE=1 tpp adapters pull my-hospital/busi-lora@v2 STORE --site hospital_b   # from the local cache
push needs a token with write access (HF_TOKEN, or `hf auth login`); HF_ENDPOINT selects another Hub. pull
accepts only safetensors weights, a card that passes every store check and README.md / adapter_config.json;
anything else (a .bin or .pt file, a tampered card) is refused and the store stays as it was."""


ADAPTERS_OPTIONS = {  # each option of `tpp adapters`, defined once; ADAPTERS_ACTIONS says which action takes it
    "site": ("--site", {"required": True, "help": "the site's name in the store"}),
    "backbone_dry": ("--backbone", {"help": "first load the adapter on this backbone as tpp serve would (a dry "
                                            "load), and write nothing if it does not load"}),
    "backbone_pull": ("--backbone", {"help": "refuse unless the card's backbone hash is this backbone's"}),
    "backbone_ls": ("--backbone", {"help": "say which sites were trained on this backbone"}),
    "backbone_required": ("--backbone", {"required": True, "help": "the backbone every site is loaded on, as tpp "
                                                                   "serve would"}),
    "repo": ("--repo", {"metavar": "OWNER/NAME", "required": True, "help": "the Hub model repo (created if missing)"}),
    "push_version": ("--version", {"dest": "adapter_version", "metavar": "V",
                                   "help": "the version to push (default: the site's current one)"}),
    "pull_version": ("--version", {"dest": "adapter_version", "metavar": "V", "help": "refuse unless the pulled "
                                   "files have this content hash (the version push named)"}),
    "rollback_version": ("--version", {"dest": "adapter_version", "metavar": "V", "help": "the earlier version to "
                                       "serve again (without it: the versions held, newest first)"}),
    "revision": ("--revision", {"metavar": "BRANCH", "help": "the branch to commit to (default main; created if "
                                                             "missing)"}),
    "private": ("--private", {"action": "store_true", "help": "create the repo private (an existing repo keeps its "
                                                              "visibility)"}),
}
ADAPTERS_POSITIONALS = {
    "RUN_DIR": "a fine-tuning run's output_dir (or its adapter/ folder)",
    "STORE": "the adapter store: a folder of sites and their content-hashed versions (publish creates it)",
    "OWNER/NAME[@REVISION]": "the Hub model repo (and branch, tag or commit) to fetch from",
}
ADAPTERS_ACTIONS = [  # (action, summary, positionals, options)
    ("publish", "add a run's adapter to the store as a new version of a site and make it current",
     ("RUN_DIR", "STORE"), ("site", "backbone_dry")),
    ("ls", "the sites of a store: version, method, modality, labels, test metric, size",
     ("STORE",), ("backbone_ls",)),
    ("check", "load every site's current version as tpp serve would (exit 1 if any is refused)",
     ("STORE",), ("backbone_required",)),
    ("rollback", "serve an earlier version of a site again (checked as at publishing)",
     ("STORE",), ("site", "rollback_version", "backbone_dry")),
    ("push", "push a site's version to a Hugging Face Hub model repo", ("STORE",),
     ("site", "repo", "push_version", "revision", "private", "backbone_dry")),
    ("pull", "fetch a version from a Hub model repo, check it as hostile, publish it", ("OWNER/NAME[@REVISION]",
                                                                                          "STORE"),
     ("site", "pull_version", "backbone_pull")),
]


def add_deploy_commands(add) -> None:
    """``adapters``, ``predict`` and ``serve``: the deployment side."""
    ad = add("adapters", "manage an adapter store: publish, ls, check, rollback; push / pull a version to / "
                         "from a Hugging Face Hub model repo (`tpp adapters ACTION --help`: each one's options)")
    ad.epilog += HUB_EXAMPLES
    add_actions(ad, ADAPTERS_ACTIONS, ADAPTERS_OPTIONS, aliases={"ls": ["list"]}, positional_help=ADAPTERS_POSITIONALS)
    pr = add("predict", "probabilities and label names (or segmentation masks) per image, written as a CSV")
    pr.add_argument("images", nargs="*", help="image files or folders (PNG, JPEG, .npy, DICOM, NIfTI)")
    _common_deploy(pr, store_required=False)
    add_context_options(pr)
    pr.add_argument("--site", help="site whose adapter to use")
    pr.add_argument("--site-map", help="CSV with columns image,site (mixed-site batch; no IMAGES then); relative "
                                       "image paths are relative to the CSV's folder")
    pr.add_argument("--out", required=True, help="output CSV (written atomically); segmentation masks go to "
                                                 "the folder OUT_masks/ beside it")
    pr.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    pr.add_argument("--frame", type=int, help="frame index of multi-frame DICOM files")
    pr.add_argument("--slice", help="the slice of 3D NIfTI volumes: AXIS:INDEX (e.g. 2:40) or AXIS:middle (each "
                                    "volume's central slice)")
    pr.add_argument("--window", help="CENTER,WIDTH intensity window for DICOM / NIfTI "
                                     "(default: the file's, else min-max)")
    pr.add_argument("--max-image-pixels", type=int, default=2**26,
                    help="largest image read, in pixels (NIfTI: voxels of the whole volume), checked from the "
                         "header before decoding; default 67108864 (8192x8192)")
    pr.add_argument("--on-bad-file", choices=("skip", "fail"), default="skip",
                    help="an input that cannot be read (truncated, not an image, too large, a dangling link, a "
                         "sub-folder that cannot be listed, missing from a site map): "
                         "skip (default) predicts the others and lists it with the reason in OUT_skipped.csv; "
                         "fail stops at it and writes nothing")
    sv = add("serve", "HTTP service: one backbone, the store's site adapters")
    _common_deploy(sv)
    sv.add_argument("--host", default="127.0.0.1", help="bind address (beyond loopback needs a token or --insecure)")
    sv.add_argument("--port", type=int, default=8000, help="TCP port to listen on (default 8000)")
    sv.add_argument("--token-file", help="file holding the bearer token (else env TPP_SERVE_TOKEN)")
    sv.add_argument("--insecure", action="store_true", help="allow a non-loopback bind without a token")
    sv.add_argument("--max-batch", type=int, default=64, help="images per micro-batch")
    sv.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a batch waits for more requests")
    sv.add_argument("--loader-threads", type=int,
                    help="threads reading and verifying the files of sites not in memory, several sites at once "
                         "(default 2; --engine ray replicas read with 2 each)")
    sv.add_argument("--max-upload-mb", type=float, default=10.0, help="request body limit (413 above)")
    sv.add_argument("--max-image-pixels", type=int, default=2**26,
                    help="largest image decoded, in pixels (NIfTI: voxels of the whole volume); larger: 413 from "
                         "the header, before decoding; default 67108864 (8192x8192)")
    sv.add_argument("--max-request-pixels", type=int, default=2**27,
                    help="pixels of all images of one request together (413 above, nothing decoded); "
                         "default 134217728")
    sv.add_argument("--max-context", type=int, default=256, help="most examples of a context set, stored or inline "
                                                                  "(in-context prediction; default 256)")
    sv.add_argument("--incontext-model", action="append", metavar="DIR",
                    help="a learned in-context model (the model/ folder of a `tpp run incontext` run) that answers "
                         "method=learned on the context routes for sets of its kind; once per kind (classification, "
                         "segmentation), checked at start-up as tpp predict --method learned checks it")
    sv.add_argument("--body-timeout", type=float, default=30.0,
                    help="seconds a request body may take to arrive (408 and the connection closed after); default 30")
    sv.add_argument("--engine", choices=("fastapi", "ray"), default="fastapi",
                    help="fastapi (default): one process; ray: Ray Serve replicas multiplexing the site adapters "
                         "(needs the ray extra; docs/deployment.md, 'Serving on Ray')")
    sv.add_argument("--replicas", type=int, default=1, help="--engine ray: replicas, each with one backbone and "
                                                             "up to --max-resident sites (default 1)")
    sv.add_argument("--address", help="--engine ray: an existing Ray cluster (e.g. ray://HEAD:10001); default: a "
                                      "local Ray on 127.0.0.1, started and stopped by this command")
    for p in (pr, sv):
        p.add_argument("--device", default="auto", help="where the backbone and adapters compute: auto (default: a "
                                                        "CUDA GPU if there is one, else mps, else cpu), cpu, cuda, "
                                                        "cuda:N, mps")
        p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                       help="fp32 (default: offline and served predictions agree); bf16, or fp16 (GPU only), run the "
                            "forward under autocast: faster on GPUs, probabilities differ slightly")
        p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's, about one per core); "
                                                    "cap it on a machine shared with other jobs")


def _common_deploy(p, store_required: bool = True) -> None:
    p.add_argument("--backbone", required=True, help="backbone: builtin:NAME (shipped), a directory or a hub id")
    p.add_argument("--store", required=store_required, help="adapter store directory"
                   + ("" if store_required else " (not with --context)"))
    p.add_argument("--max-resident", type=int, default=16, help="site adapters kept in memory (LRU)")


def cmd_adapters(args) -> int:
    from tpp.serve import store

    args.paths = action_paths(args)
    if args.action in ("push", "pull"):
        return _cmd_hub(args)
    if args.action == "publish":
        read = None
        if args.backbone:  # a dry load as serving would do it, before anything is written
            from tpp.api import check_loads

            read = check_loads(args.paths[0], args.backbone)
        sv = store.publish(args.paths[0], args.paths[1], args.site, read=read)  # the bytes the dry load took
        checked = "loaded and checked against the backbone" if args.backbone else "checked structurally"
        print(f"published {args.paths[0]} as {sv.site}@{sv.version} ({sv.path}; {checked}); now current")
        return 0
    if args.action == "rollback":
        return _cmd_rollback(args)
    if args.action in ("ls", "list"):
        rows = store.listing(args.paths[0], _backbone_hash(args.backbone) if args.backbone else None)
        if not rows:
            print(f"no sites published in {args.paths[0]}")
            return 0
        print_table(list(rows[0]), [list(r.values()) for r in rows])
        return 0
    from tpp.serve.bank import AdapterBank

    results = AdapterBank(args.backbone, args.paths[0], max_resident=1).check_store()
    return report_check(results, "sites", "each loaded as tpp serve would")


def _cmd_rollback(args) -> int:
    """``tpp adapters rollback STORE --site SITE --version V``: serve an earlier version again."""
    from tpp.adapter_read import VERSION_RE
    from tpp.serve import store

    root, site, version = args.paths[0], args.site, args.adapter_version
    current = store.current_version(root, site)
    named = bool(version) and bool(VERSION_RE.fullmatch(version)) and store.holds_version(root, site, version)
    if not named:
        held = store.versions(root, site)  # every version's card read for its time: only to list them
        listed = "\n".join(f"  {v}  created {when or 'unknown'}{'  (current)' if v == current else ''}"
                           for v, when in held)
        if not version:  # the way to see what a rollback could serve again
            print(f"versions of site '{site}', newest first:\n{listed}\nserve one again: tpp adapters rollback "
                  f"{root} --site {site} --version V")
            return 0
        raise TppError(f"'{version}' is not a version of site '{site}'; the store holds (newest first):\n{listed}")
    opened = store.open_version(root, site, version)  # read once, its content hash checked
    if args.backbone:  # a dry load as serving would do it, of those bytes, before the pointer moves
        from tpp.api import check_loads

        check_loads(str(opened.path), args.backbone, read=store.version_source(opened))
    sv = store.make_current(root, site, version, opened=opened)
    if current == sv.version:
        print(f"{sv.site} already serves {sv.version}; nothing changed")
        return 0
    print(f"{sv.site} serves {sv.version} again (was {current}); a running tpp serve switches at "
          f"POST /v1/sites/{sv.site}/reload")
    return 0


def _cmd_hub(args) -> int:
    """``tpp adapters push`` / ``pull`` (tpp/serve/hub.py)."""
    from tpp.serve import hub

    if args.action == "push":
        done = hub.push(args.paths[0], args.site, args.repo, version=args.adapter_version, revision=args.revision,
                        private=args.private, backbone=args.backbone)
        removed = f"; removed {', '.join(done.deleted)} of an earlier push" if done.deleted else ""
        print(f"pushed {done.site}@{done.version} ({', '.join(done.files)}{removed}) to "
              f"{done.repo_id}@{done.revision}: {done.commit_url}")
        return 0
    done = hub.pull(args.paths[0], args.paths[1], args.site, version=args.adapter_version, backbone=args.backbone)
    sv = done.version
    print(f"pulled {done.repo_id}@{done.revision} (commit {done.commit[:12]}) as {sv.site}@{sv.version} ({sv.path}); "
          "now current")
    return 0


def _backbone_hash(path: str) -> str:
    from tpp.backbones import load_backbone

    return load_backbone(path)[1].hash


def cmd_predict(args) -> int:
    from tpp.api import open_bank
    from tpp.devices import describe
    from tpp.serve.images import PixelLimits, parse_slice, parse_window
    from tpp.serve.predict import (assign_sites, ignored_read_options, nothing_predicted, predict_files,
                                   publish_predictions, without_own_outputs)

    if args.batch_size < 1:
        raise TppError(f"--batch-size must be at least 1, got {args.batch_size}.")
    _check_device(args)
    _set_threads(args.threads)
    check_out_is_no_input(args.out, [*args.images, *([args.site_map] if args.site_map else [])])
    if args.context:
        return cmd_predict_context(args)
    if not args.store:
        raise TppError("tpp predict needs --store STORE (with --site or --site-map), or --context DIR_OR_CSV.")
    skipped = [] if args.on_bad_file == "skip" else None
    pairs = assign_sites(args.site, args.site_map, args.images, skipped)
    kept = set(without_own_outputs([file for file, _ in pairs], args.out))  # not the masks a run before wrote
    pairs = [(file, site) for file, site in pairs if file in kept]
    if args.slice:
        parse_slice(args.slice)
    if args.max_image_pixels < 1:
        raise TppError(f"--max-image-pixels must be at least 1, got {args.max_image_pixels}.")
    options = {"frame": args.frame, "slice_spec": args.slice, "window": parse_window(args.window),
               "limits": PixelLimits(args.max_image_pixels, max(args.max_image_pixels, 2**27))}
    for line in ignored_read_options([file for file, _ in pairs], options):
        warnings.warn(line, stacklevel=1)
    bank = open_bank(args.backbone, args.store, args.max_resident, args.device, args.precision)  # as tpp.load
    print(f"device {describe(bank.device)}, precision {bank.precision}", file=sys.stderr)
    rows, masks = predict_files(bank, pairs, args.batch_size, options, skipped)
    if not rows:  # every input was unreadable: say so, with the list of why (and no older batch's CSV beside it)
        raise nothing_predicted(skipped, args.out)
    images, sites = len(rows), len({r["site"] for r in rows})
    return publish_predictions(rows, masks, args.out, skipped,
                               f"{images} image{'s' * (images != 1)}, {sites} site{'s' * (sites != 1)}")


def check_out_is_no_input(out: str, inputs: list[str]) -> None:
    """``--out`` is a plain file name for the predictions table that is none of the inputs (an image, the site
    map) and no image name: predictions must never be written over what they were made from."""
    from tpp.serve.predict import SUFFIXES, check_derived_outputs

    path = Path(out)
    if path.is_dir() and not path.is_symlink():
        raise TppError(f"--out '{out}' is a folder; give the CSV file to write, e.g. --out {path / 'preds.csv'}.")
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise TppError(f"--out '{out}' exists and is not a regular file; choose another file for the predictions.")
    if path.suffix.lower() in SUFFIXES:
        raise TppError(f"--out '{out}' names an image file; give the CSV file to write, e.g. --out preds.csv.")
    for item in inputs:
        if Path(item).resolve() == path.resolve():
            raise TppError(f"--out '{out}' is one of the inputs ('{item}'); choose another file for the predictions.")
    check_derived_outputs(out, inputs)


def _check_device(args) -> None:
    """``--device`` and ``--precision`` of predict / serve, before any file is read or model loaded."""
    from tpp.devices import check_precision, resolve

    check_precision(args.precision, resolve(args.device, "--device"))


def _set_threads(threads: int | None) -> None:
    """``--threads``: torch's intra-op CPU threads for this process (None: leave torch's default)."""
    if threads is None:
        return
    if threads < 1:
        raise TppError(f"--threads must be at least 1, got {threads}.")
    import torch

    torch.set_num_threads(threads)


def cmd_serve(args) -> int:
    from tpp.serve.images import PixelLimits

    try:
        from tpp.serve.server import serve
    except ImportError as exc:
        raise TppError(f"tpp serve needs the serve extra ({exc.name} is missing): pip install 'tpp[serve]'.") from None

    token = os.environ.get("TPP_SERVE_TOKEN") or None
    if args.token_file:
        try:
            token = Path(args.token_file).read_text().strip()
        except OSError as exc:
            raise TppError(f"cannot read --token-file '{args.token_file}' ({exc.strerror}).") from None
        if not token:
            raise TppError(f"--token-file '{args.token_file}' is empty.")
    check_serve_numbers(args)
    if args.max_request_pixels < args.max_image_pixels:
        raise TppError(f"--max-request-pixels ({args.max_request_pixels}) must be at least --max-image-pixels "
                       f"({args.max_image_pixels}): otherwise such an image could never be sent.")
    _check_device(args)
    _set_threads(args.threads)
    if args.engine == "ray":
        if args.loader_threads is not None:
            raise TppError("--loader-threads is an option of the default engine (--engine fastapi); Ray replicas "
                           "read sites with 2 threads each.")
        return _serve_ray(args, token)
    if args.replicas != 1 or args.address:
        raise TppError("--replicas and --address are options of --engine ray.")
    check_port_free(args.host, args.port)
    try:
        serve(args.backbone, args.store, args.host, args.port, token=token, insecure=args.insecure,
              max_resident=args.max_resident, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
              max_upload_bytes=int(args.max_upload_mb * 2**20), body_timeout_s=args.body_timeout,
              limits=PixelLimits(args.max_image_pixels, args.max_request_pixels), device=args.device,
              precision=args.precision, max_context=args.max_context, incontext_models=args.incontext_model,
              loader_threads=2 if args.loader_threads is None else args.loader_threads)
    except KeyboardInterrupt:  # uvicorn shut down gracefully, then re-raised Ctrl-C / SIGTERM
        print("tpp serve stopped", file=sys.stderr)
    return 0


def check_serve_numbers(args) -> None:
    """Every number option of ``tpp serve`` in its range, before anything loads: ``--max-batch 0`` killed the
    inference thread at the first request, a port above 65535 was taken modulo 65536."""
    finite = math.isfinite
    rules = [("--port", args.port, 1 <= args.port <= 65535, "lie in 1..65535"),
             ("--max-batch", args.max_batch, args.max_batch >= 1, "be at least 1"),
             ("--max-resident", args.max_resident, args.max_resident >= 1, "be at least 1"),
             ("--loader-threads", args.loader_threads, args.loader_threads is None or 1 <= args.loader_threads <= 64,
              "lie in 1..64"),
             ("--max-context", args.max_context, args.max_context >= 1, "be at least 1"),
             ("--max-image-pixels", args.max_image_pixels, args.max_image_pixels >= 1, "be at least 1"),
             ("--max-request-pixels", args.max_request_pixels, args.max_request_pixels >= 1, "be at least 1"),
             ("--max-wait-ms", args.max_wait_ms, finite(args.max_wait_ms) and args.max_wait_ms >= 0, "be 0 or more"),
             ("--max-upload-mb", args.max_upload_mb, finite(args.max_upload_mb) and args.max_upload_mb > 0,
              "be positive"),
             ("--body-timeout", args.body_timeout, finite(args.body_timeout) and args.body_timeout > 0, "be positive")]
    for flag, value, ok, need in rules:
        if not ok:
            raise TppError(f"{flag} must {need}, got {value}.")


def check_port_free(host: str, port: int) -> None:
    """Bind ``host:port`` once and let go, so that a port in use is one clear error before the backbone loads
    (uvicorn says so only after start-up, and exits with its own code)."""
    import socket

    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no use
            probe.bind((host, port))
    except OSError as exc:
        raise TppError(f"cannot listen on {host}:{port} ({exc.strerror or exc}): is another service on that port? "
                       "Choose another with --port, or stop it.") from None


def _serve_ray(args, token: str | None) -> int:
    """``tpp serve --engine ray`` (tpp/serve/ray_engine.py)."""
    from tpp.serve.images import PixelLimits

    if args.replicas < 1:
        raise TppError(f"--replicas must be at least 1, got {args.replicas}.")
    try:
        from tpp.serve.ray_engine import serve_ray
    except ImportError as exc:
        raise TppError(f"tpp serve --engine ray needs the ray extra ({exc.name} is missing): "
                       "pip install 'tpp[ray]'.") from None
    try:
        serve_ray(args.backbone, args.store, args.host, args.port, replicas=args.replicas, address=args.address,
                  token=token, insecure=args.insecure, max_resident=args.max_resident, max_batch=args.max_batch,
                  max_wait_ms=args.max_wait_ms, max_upload_bytes=int(args.max_upload_mb * 2**20),
                  body_timeout_s=args.body_timeout, limits=PixelLimits(args.max_image_pixels, args.max_request_pixels),
                  device=args.device, precision=args.precision, max_context=args.max_context, threads=args.threads,
                  incontext_models=args.incontext_model)
    except KeyboardInterrupt:
        print("tpp serve stopped (Ray shut down)", file=sys.stderr)
    return 0
