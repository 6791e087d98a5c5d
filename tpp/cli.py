"""The ``tpp`` command: run recipes, list / copy / validate / compare configs and runs, plot. The deployment
commands (adapters, predict, serve) live in :mod:`tpp.serve.commands`, ``context`` in
:mod:`tpp.serve.context_commands`.

Errors caused by input print one paragraph and exit with code 2; ``--debug`` shows the traceback.
"""
from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
import threading
import warnings
from pathlib import Path

from tpp import __version__
from tpp.console import print_table
from tpp.errors import TppError
from tpp.recipes.registry import RECIPES
from tpp.serve.commands import add_deploy_commands, cmd_adapters, cmd_predict, cmd_serve
from tpp.serve.context_commands import add_context_command, cmd_context

EXAMPLES = {
    "run": """examples:
  tpp run finetune --config recipes/configs/breast_us/mae_vit_tiny_lora_finetune.yaml
  tpp run finetune --config CONFIG data.label_fraction=0.1 adapter.r=4 output_dir=runs/b10
  tpp run tpp --config recipes/configs/breast_us/mae_vit_tiny_lora_tpp.yaml output_dir=runs/tpp
  tpp run finetune --config CONFIG adapter.init_from=runs/tpp/adapter
  tpp run evaluate --config CONFIG adapter.path=runs/b10/adapter data.split=test output_dir=runs/eval
  tpp run finetune --config CONFIG output_dir=runs/b10 train.resume=auto                     # continue after a crash
  tpp run finetune --config CONFIG output_dir=runs/b10 train.resume=auto train.max_steps=2000   # extend a run

Relative paths in a config file (backbone.path, adapter.path, adapter.init_from, data.root) are relative to
the file's folder; on the command line, to the current folder. Everything `tpp validate` checks is checked
before output_dir is created; a failed run without a checkpoint is replaced by the next run.""",
    "ls": "examples:\n  tpp ls",
    "cp": """examples:
  tpp cp breast_us/mae_vit_tiny_lora_finetune.yaml my_site.yaml
  tpp cp breast_us/mae_vit_tiny_lora_finetune my_configs/
Relative paths in the config (relative to its folder) are written into the copy as absolute paths.""",
    "compare": """examples:
  tpp compare runs/demo/lora_10_random runs/demo/lora_10_tpp
  tpp compare runs/tpp runs/site_a runs/busi_seg runs/eval --csv results.csv   # any recipe's runs, mixed""",
    "adapters": """examples:
  tpp adapters publish runs/site_a STORE --site hospital_a   # adds a version, makes it current
  tpp adapters ls STORE --backbone builtin:mae-vit-tiny-med
  tpp adapters check STORE --backbone builtin:mae-vit-tiny-med
  tpp adapters rollback STORE --site hospital_a --version 1f0c9a2b3d4e5f60   # serve an earlier version again""",
    "predict": """examples:
  tpp predict --backbone B --store STORE --site hospital_a scans/ --out preds.csv
  tpp predict --backbone B --store STORE --site-map batch.csv --out preds.csv   # columns image,site
  tpp predict --backbone B --store STORE --site ct_site vol.nii.gz --slice 2:40 --window 40,400 --out p.csv
  tpp predict --backbone B --store STORE --site hospital_a pacs/ --out p.csv --device cuda   # skipped: p_skipped.csv
  tpp predict --backbone B --store STORE --site hospital_a scans/ --out p.csv --on-bad-file fail
  tpp predict --backbone B --context context/ scans/ --out p.csv          # in-context: no adapter, no training
  tpp predict --backbone B --context ctx.csv --method knn scans/ --out p.csv   # CSV: image,label or image,mask""",
    "context": """examples:
  tpp context publish STORE context/ --site new_task --backbone builtin:mae-vit-tiny-med   # content-hashed, a card
  tpp context list STORE
  tpp context check STORE --backbone builtin:mae-vit-tiny-med   # every set verified as tpp serve would
A context folder holds class sub-folders (DIR/<class>/<image>) or images/ + masks/ (same file stems); a CSV
has columns image,label or image,mask (paths relative to the CSV's folder).""",
    "serve": """examples:
  tpp serve --backbone builtin:mae-vit-tiny-med --store STORE        # 127.0.0.1:8000, Ctrl-C stops
  curl -F images=@img.png http://127.0.0.1:8000/v1/sites/hospital_a/predict
  TPP_SERVE_TOKEN=secret tpp serve --backbone B --store STORE --host 0.0.0.0   # other hosts need a token
  tpp serve --backbone B --store STORE --device cuda:1 --precision bf16
  tpp serve --backbone B --store STORE --engine ray --replicas 2 --threads 1   # local Ray Serve, 2 replicas
  tpp serve --backbone B --store STORE --incontext-model runs/icl_cls/model --incontext-model runs/icl_seg/model
      # method=learned on the context routes (one model per kind)""",
    "plot": """examples:
  tpp plot runs/site_a                 # runs/site_a/curves.png (loss, validation), roc.png, calibration.png
  tpp plot runs/site_a_eval            # an evaluate run: roc.png and calibration.png from predictions.csv
  tpp plot runs/site_a --out site_a.png   # the curves PNG elsewhere (roc.png, calibration.png stay in RUN_DIR)""",
    "validate": """examples:
  tpp validate recipes/configs/breast_us/mae_vit_tiny_lora_finetune.yaml
  tpp validate my_site.yaml train.lr=3e-4 data.label_fraction=0.1
  tpp validate my_site.yaml recipe=evaluate adapter.path=runs/site_a/adapter   # as evaluate would read it
  tpp validate --keys        # every config key with its type, default and help""",
}


class Once(argparse.Action):
    """An option taken once: given again (``--config a.yaml --config b.yaml``), a usage error naming both, where
    argparse keeps the last without a word (as an override given twice is refused)."""

    def __call__(self, parser, namespace, values, option_string=None):
        given = getattr(namespace, f"_given_{self.dest}", None)
        if given is not None:
            raise argparse.ArgumentError(self, f"given twice ('{given}', then '{values}'); keep one.")
        setattr(namespace, f"_given_{self.dest}", values)
        setattr(namespace, self.dest, values)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tpp", description="Parameter-efficient fine-tuning of frozen medical-imaging backbones, "
        "with target parameter pre-training (TPP).",
        epilog="Run `tpp COMMAND --help` for examples. Data root: data.root=... or env TPP_DATA_ROOT.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"tpp {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    parser.set_defaults(usage_parser=parser)  # each command's parser replaces it with its own
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name, help_text):
        p = sub.add_parser(name, help=help_text, description=help_text, epilog=EXAMPLES[name],
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--debug", action="store_true", help="show full tracebacks")
        p.set_defaults(usage_parser=p)  # argparse errors found after parsing show this command's usage
        return p

    run = add("run", "run a recipe with a YAML config and key=value overrides")
    run.add_argument("recipe", help="recipe name (tpp ls)")
    run.add_argument("--config", required=True, action=Once, help="YAML config (path, or a name from tpp ls)")
    run.add_argument("--overwrite", action="store_true",
                     help="delete a non-empty output_dir and start over (a failed run without a checkpoint is "
                          "replaced without it; train.resume=auto continues a run instead, and is refused with it)")
    run.add_argument("--num-processes", type=int, default=1, action=Once,
                     help="data-parallel processes (torchrun; gloo on CPU, NCCL on GPUs); batch_size is per process")
    run.add_argument("overrides", nargs="*", default=[], help="key=value overrides, e.g. train.lr=1e-4 or "
                     "'train={lr: 1e-4, max_steps: 50}' (merged into the section; quoted for the shell)")
    add("ls", "list recipes, adapter methods, pretexts, data sources, tasks, shipped configs and shipped backbones")
    cp = add("cp", "copy a config out for editing (relative paths in it are made absolute: they were relative "
                   "to the file's folder)")
    cp.add_argument("config", help="shipped config (as listed by tpp ls)")
    cp.add_argument("dest", help="destination file or folder")
    cmp = add("compare", "print a results table of finished runs (main metric of each task, size, time)")
    cmp.add_argument("runs", nargs="+", help=f"run directories (output_dir) of any recipe: {', '.join(RECIPES)}")
    cmp.add_argument("--csv", metavar="FILE", action=Once,
                     help="also write every column, raw numbers, to FILE (atomically)")
    val = add("validate", "check a config (and overrides) and the data it reads, without training anything")
    val.add_argument("config", nargs="?", help="YAML config (path, or a name from tpp ls)")
    val.add_argument("overrides", nargs="*", default=[], help="key=value overrides")
    val.add_argument("--keys", action="store_true", help="list every config key with type, default and help")
    pl = add("plot", "plot a run's training curves, and ROC and calibration from its predictions.csv (PNG)")
    pl.add_argument("run_dir", help="a run directory (output_dir) of any recipe (a failed or running one too: "
                                    "its curves so far)")
    pl.add_argument("--out", action=Once, help="path of the training-curves PNG (default RUN_DIR/curves.png)")
    add_deploy_commands(add)
    add_context_command(add)
    return parser


def _config_path(name: str) -> Path:
    """A config path as given, else a shipped config by its name under recipes/configs/."""
    from tpp.recipes import find_config

    return find_config(name)


def cmd_ls(args) -> int:
    from tpp.catalog import LISTED, entries
    from tpp.recipes import CONFIG_DIR, shipped_configs

    groups = [("recipes", [(name, r.summary) for name, r in RECIPES.items()])]
    groups += [(listed.title, entries(listed)) for listed in LISTED]  # without importing torch (tpp.catalog)
    for title, rows in groups:
        print(f"{title}:")
        for name, summary in rows:
            print(f"  {name:<18} {summary}")
    print(f"configs ({CONFIG_DIR}):")
    for path in shipped_configs():
        print(f"  {path.relative_to(CONFIG_DIR)}")
    _list_backbones()
    return 0


def _list_backbones() -> None:
    """The backbones shipped in the package, by the name a config or --backbone takes, with their card's hash."""
    from tpp.shipped import BUILTIN_PREFIX, DEFAULT_BACKBONE, MODELS_DIR, builtin_backbones, builtin_hash

    print(f"backbones (backbone.path, --backbone; {MODELS_DIR}):")
    for name in builtin_backbones():
        default = " (default)" if BUILTIN_PREFIX + name == DEFAULT_BACKBONE else ""
        digest = builtin_hash(name)
        print(f"  {BUILTIN_PREFIX + name:<28} encoder hash {digest[:12] if digest else 'not recorded'}...{default}")


def cmd_cp(args) -> int:
    source = _config_path(args.config)
    dest = Path(args.dest)
    above = next((p for p in dest.parents if p.exists()), None)
    if above is not None and not above.is_dir():
        raise TppError(f"'{above}' is a file, so '{dest}' cannot be written; choose another destination.")
    if dest.is_dir() or args.dest.endswith(os.sep):
        dest.mkdir(parents=True, exist_ok=True)
        dest = dest / source.name
    if dest.exists():
        raise TppError(f"'{dest}' exists; choose another destination.")
    from tpp.config.parse import parse_yaml_text, read_config_text
    from tpp.config.paths import with_absolute_paths
    from tpp.safe_write import write_atomic

    text = read_config_text(source)  # read once: a file swapped since it was checked is never opened again
    parse_yaml_text(text, source)  # not YAML, not UTF-8, empty: the clear error, before anything is written
    text, changed = with_absolute_paths(text, os.path.dirname(os.path.realpath(source)))
    dest.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(dest, text)
    print(f"copied {source.name} -> {dest}")
    if changed:  # a relative path means "beside the config file": the copy lives elsewhere
        print(f"  made absolute in the copy (they were relative to {source.parent}): {', '.join(changed)}")
    return 0


def cmd_validate(args) -> int:
    from tpp.config import help_lines, load_config

    if args.keys:
        if args.config or args.overrides:  # nothing of them would be read: said, not ignored
            given = " ".join([args.config or "", *args.overrides]).strip()
            raise TppError(f"tpp validate --keys lists every config key of every recipe and reads no config; drop "
                           f"'{given}' (or drop --keys to check it).")
        print("\n".join(help_lines()))
        return 0
    if not args.config:
        raise TppError("tpp validate needs a CONFIG (or --keys).")
    cfg = load_config(_config_path(args.config), args.overrides)
    from tpp.recipes import check_loaded_data, refuse_problems

    refuse_problems(cfg, args.config, load_adapter=True)  # what `tpp run` refuses too, before output_dir exists
    loaded, problems = check_loaded_data(cfg)  # what the run checks once its data is loaded, before training
    if problems:
        listed = "\n".join(f"  - {p}" for p in problems)
        raise TppError(f"{args.config} would not run (found with its data loaded):\n{listed}")
    print(f"ok: {args.config} (recipe {cfg.recipe}, {_what_runs(cfg)}, output_dir {cfg.output_dir})")
    if cfg.recipe == "finetune" and cfg.adapter.init_from:  # what the run prints: values the parent replaces
        from tpp.builders import inherit, parent_read

        for note in inherit(cfg.adapter, parent_read(cfg, files=False).card)[2]:
            print(f"init_from: {note}")
    if loaded:
        print(f"data {loaded}")
    return 0


def _what_runs(cfg) -> str:
    """A few words on what a validated config would train (validate's ok line)."""
    pool = ", ".join(e.name or "-".join(part for part in (e.data.name, e.kind) if part) for e in cfg.pool)
    if cfg.recipe == "pretrain_backbone":  # a backbone from scratch on a pool of datasets
        return f"pool {pool}, ViT-MAE width {cfg.model.hidden_size} depth {cfg.model.num_hidden_layers}"
    if cfg.recipe == "multitask":
        return f"scope {cfg.multitask.scope}, adapter {cfg.adapter.method}, pool {pool}"
    if cfg.recipe == "evaluate":  # the adapter's own method is on its card
        return f"adapter '{cfg.adapter.path}', data {cfg.data.name}"
    if cfg.recipe == "incontext":  # episodes of every dataset under the root but the held-out ones
        return f"{cfg.incontext.kind} in-context model, holding out {', '.join(cfg.incontext.holdout)}"
    return f"adapter {cfg.adapter.method}, data {cfg.data.name}"


def cmd_run(args) -> int:
    import time

    started = time.time()  # the reported wall time counts from here: config, backbone and data loading included
    from tpp import api

    if args.num_processes < 1:
        raise TppError(f"--num-processes must be at least 1, got {args.num_processes}.")
    if args.num_processes > 1 and "LOCAL_RANK" not in os.environ:
        return _launch(args)

    # the entry of tpp.finetune / tpp.pretrain_target_parameters / tpp.evaluate
    callers = group_initialised()  # a group the caller of main() set up is theirs to end
    try:
        result = api.run(args.recipe, _config_path(args.config), args.overrides, overwrite=args.overwrite,
                         started=started)
    except BaseException as exc:  # a worker stopped because another failed: that one's error is the one shown
        from tpp.launch import stopped_status

        status = None if args.debug else stopped_status(exc, isinstance(exc, Terminated))
        if status is None:  # its own error: main() prints it, then ends the group (ended first, the peers would
            args.end_group_after_error = not callers  # stop at once and torchrun kill this one before it said why)
            raise
        end_process_group(kept=callers)
        return status
    end_process_group(kept=callers)
    if os.environ.get("RANK", "0") == "0":  # one summary, from the process that wrote the run directory
        _print_summary(args.recipe, result.metrics, result.run_dir)
    return 0


def group_initialised() -> bool:
    """Whether a torch.distributed process group exists in this process (without importing torch for a run that
    never did)."""
    dist = sys.modules.get("torch.distributed")
    return bool(dist is not None and dist.is_available() and dist.is_initialized())


def end_process_group(kept: bool = False) -> None:
    """Destroy the process group a ``--num-processes`` worker's run set up (accelerate does not): a gloo group left
    at exit can abort the worker ('terminate called without an active exception', exit -6) after a finished run.
    ``kept``: the group existed before the run (a program that set it up and then called :func:`main`), so it is
    left to that program."""
    if not kept and group_initialised():
        import torch.distributed as dist

        dist.destroy_process_group()


def _launch(args) -> int:
    """Re-run this command under torchrun with ``--num-processes`` workers on this machine (:mod:`tpp.launch`:
    rank 0's output on the terminal, a failed run's cause shown once); the exit status of the failed worker."""
    import shlex
    import shutil
    import socket
    import subprocess
    import tempfile

    from tpp.launch import torchrun_args
    from tpp.config import load_config
    from tpp.recipes import refuse_overwrite_with_resume, refuse_problems

    # what `tpp validate` finds: now, once, not once per rank
    from tpp.rundir import refuse_if_in_use

    cfg = load_config(_config_path(args.config), args.overrides, recipe=args.recipe)
    refuse_overwrite_with_resume(cfg, args.overwrite)
    refuse_if_in_use(Path(cfg.output_dir))  # a run still going there: said first
    refuse_problems(cfg, args.config)
    if args.num_processes > (os.cpu_count() or 1) * 4:
        raise TppError(f"--num-processes {args.num_processes} is far beyond this machine's {os.cpu_count()} CPUs.")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // args.num_processes)))
    logs = tempfile.mkdtemp(prefix="tpp-workers-")  # ranks 1..'s output, read if one fails; removed on every path
    process = None
    try:
        cmd = [sys.executable, "-m", "tpp.launch", "--run-dir", str(cfg.output_dir),  # its status.json: the cause
               *torchrun_args(args.num_processes, port, logs), "-m", "tpp.cli", "run", args.recipe,
               "--config", str(_config_path(args.config)),
               *(["--overwrite"] if args.overwrite else []), *(["--debug"] if args.debug else []), *args.overrides]
        # quoted as a shell needs (an override with spaces stays one argument): a command the user can paste
        print(f"launching {args.num_processes} processes: {shlex.join(cmd)}", file=sys.stderr, flush=True)
        process = subprocess.Popen(cmd, env=env)
        code = process.wait()
        if code < 0:  # torchrun's own process killed (its workers' failures are tpp.launch's to say)
            name = signal.Signals(-code).name if -code in signal.valid_signals() else f"signal {-code}"
            print(f"error: the launcher (torchrun) was killed by {name}.", file=sys.stderr, flush=True)
        return 128 - code if code < 0 else code  # the shell's 128 + signal, not Popen's negative status
    except BaseException:  # SIGTERM / Ctrl-C of this launcher: torchrun stops its workers on SIGTERM (a SIGKILL,
        if process is None:  # as subprocess.run sends, would leave them training on); none started: nothing to stop
            raise
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
        raise
    finally:
        shutil.rmtree(logs, ignore_errors=True)


def _print_summary(recipe: str, summary: dict, path: Path) -> None:
    from tpp.recipes import get_recipe

    print(f"\n{recipe} finished in {summary.get('wall_time_s', 0):.0f}s -> {path}")
    for line in get_recipe(recipe).report(summary):
        print(f"  {line}")


def cmd_compare(args) -> int:
    from tpp.compare import compare_runs, csv_text, table
    from tpp.safe_write import write_atomic

    if args.csv is not None:
        check_table_out(Path(args.csv), args.runs)  # before anything is read or printed
    rows = compare_runs(args.runs)
    print_table(*table(rows))
    if args.csv:
        write_atomic(Path(args.csv), csv_text(rows))
        print(f"wrote {args.csv}")
    return 0


def check_table_out(out: Path, runs: list) -> None:
    """``--csv``: a file name ending in .csv that is none of a run's own files (a compared run's or another's)."""
    from tpp.run_folder import RUN_FILES

    if out.suffix.lower() != ".csv":
        raise TppError(f"--csv '{out}': give a file name ending in .csv.")
    if out.parent.exists() and not out.parent.is_dir():
        raise TppError(f"--csv '{out}': '{out.parent}' is a file, not a folder; write the table elsewhere.")
    if not out.parent.is_dir():
        raise TppError(f"--csv '{out}': the folder '{out.parent}' does not exist; create it or write elsewhere.")
    in_a_run = (out.parent / "status.json").is_file()  # any run's folder, compared or not
    if out.name in RUN_FILES and (in_a_run or any(out.resolve().parent == Path(r).resolve() for r in runs)):
        raise TppError(f"--csv '{out}' is a file of a run ('{out.parent}'); write the table elsewhere.")


def cmd_plot(args) -> int:
    from tpp.plot import plot_all

    written, notes = plot_all(args.run_dir, args.out)
    for note in notes:
        print(f"note: {note}")
    for path in written:
        print(f"wrote {path}")
    return 0


COMMANDS = {"context": cmd_context, "plot": cmd_plot,
            "adapters": cmd_adapters, "predict": cmd_predict, "serve": cmd_serve, "run": cmd_run,
            "ls": cmd_ls, "cp": cmd_cp, "validate": cmd_validate, "compare": cmd_compare}


def _quiet_hub_progress() -> None:
    """No "Loading weights" bars from transformers / huggingface_hub (tpp prints its own progress), without
    importing transformers for commands that never load a model (``ls``, ``cp``, ``compare``, ``plot``)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # read when huggingface_hub loads
    if "transformers" in sys.modules:  # already loaded (tpp called in-process): switch it off directly
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def _hint(unknown: list[str]) -> str:
    """What ``tpp run`` / ``tpp validate`` take instead of an option they do not know, when it is clear."""
    for arg in unknown:
        if arg.startswith("--resume"):
            return " (to continue a run, add the override train.resume=auto)"
        key, _, value = arg.lstrip("-").partition("=")
        if arg.startswith("-") and "." in key and value:  # --train.lr=1e-4
            return f" (overrides take no dashes: {key}={value})"
        if not arg.startswith("-"):
            return " (overrides look like key=value, e.g. train.lr=1e-4)"
    return ""


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # key=value overrides may come before or after --config
        overrides = args.command in ("run", "validate")
        unknown = [x for x in extra if not overrides or x.startswith("-") or "=" not in x]  # not the overrides
        if unknown:  # the sub-command's usage
            args.usage_parser.error(f"unrecognized arguments: {' '.join(unknown)}{_hint(unknown) if overrides else ''}")
        args.overrides = list(args.overrides) + extra
    if not args.command:  # as argparse says of a missing required sub-command, with the commands listed
        parser.print_help(sys.stderr)
        print("\ntpp: error: the following arguments are required: COMMAND", file=sys.stderr)
        return 2
    if getattr(args, "overrides", None):  # run, validate
        from tpp.config import repeated_overrides

        repeated = repeated_overrides(args.overrides)
        if repeated:  # tpp would keep the last one without a word
            args.usage_parser.error("; ".join(f"override {r}" for r in repeated) + ".")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    if not args.debug:
        warnings.filterwarnings("ignore", module="transformers")
        warnings.formatwarning = lambda msg, cat, *a, **k: f"warning: {msg}\n"
        _quiet_hub_progress()
    from tpp.recipes.resume import RunFinished

    try:
        return _run_command(args, RunFinished)
    finally:  # after its error is printed: a --num-processes worker's group (see cmd_run)
        if getattr(args, "end_group_after_error", False):
            end_process_group()


def _run_command(args, RunFinished) -> int:
    """Run ``args.command``; a TppError, an OSError of the environment, an interrupt: one paragraph and the exit
    status (never a traceback, unless ``--debug``)."""
    try:
        return COMMANDS[args.command](args)
    except TppError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `tpp validate --keys | head`: the reader left; no error to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's flush at exit must not fail too
        return 0
    except OSError as exc:  # the environment refused (disk full, no permission, a file in a path): one paragraph
        if args.debug:
            raise
        where = f": '{exc.filename}'" if exc.filename else ""
        hint = "; free some space or choose another location" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else ""
        print(f"error: {exc.strerror or exc}{where}{hint}.", file=sys.stderr)
        return 2
    except RunFinished as exc:  # train.resume=auto on a finished run: one line, nothing done
        if os.environ.get("RANK", "0") == "0":
            print(exc)
        return 0
    except KeyboardInterrupt as exc:
        print(f"interrupted{f' ({exc})' if str(exc) else ''}", file=sys.stderr)
        return 128 + (signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)  # the shells' convention


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: the run stops as on Ctrl-C, and the exit code says which signal (143, not 130)."""


def _terminate(signum, frame):
    """SIGTERM (kill, job schedulers) ends a run like Ctrl-C: the run directory records 'failed'."""
    raise Terminated("terminated by SIGTERM")


if __name__ == "__main__":
    sys.exit(main())
