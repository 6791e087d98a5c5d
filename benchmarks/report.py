"""Statistics, Markdown tables and plots for benchmark cells.

A *cell* is one fine-tuning result: ``{"target", "method", "fraction", "seed", "test_auroc",
"test_accuracy", "trainable_parameters", "finetune_s", "tpp_s"}``.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections import defaultdict
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np

# Yang et al., MedMNIST v2, Scientific Data 2023: ResNet-18 (28) from scratch, test AUC / ACC
MEDMNIST_V2_RESNET18_28 = {"breastmnist": (0.901, 0.863), "pneumoniamnist": (0.944, 0.854)}


def machine() -> dict:
    """What every result states about the machine it ran on."""
    import torch

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "gpu": torch.cuda.is_available()}


def current_rss_mib() -> float:
    """This process's resident set size now (VmRSS), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def peak_rss_mib() -> float:
    """This process's peak resident set size so far (ru_maxrss), MiB; it never resets, hence one
    configuration per fresh subprocess."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_worker(script: str, args: list[str], env: dict | None = None) -> dict:
    """Run ``python script ARGS`` in a fresh subprocess (``env``: variables on top of this process's); its last
    stdout line is a JSON result."""
    out = subprocess.run([sys.executable, script, *args], capture_output=True, text=True,
                         env=dict(os.environ, HF_HUB_OFFLINE="1", **(env or {})))
    if out.returncode != 0:
        raise RuntimeError(f"{script} {' '.join(args)} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def publish(out, stem: str, machine: dict, command: str, description: str, table: str, data: dict) -> str:
    """Write ``out/<stem>.json`` (machine, command, data) and ``out/<stem>.md`` (machine, command, what was
    measured, the table), print the Markdown and return it."""
    text = f"Machine: {json.dumps(machine)}\nCommand: `{command}`\n{description}\n\n{table}\n"
    out = Path(out)
    from tpp.safe_write import finite_json

    payload = finite_json({"machine": machine, "command": command, **data})  # strict JSON: undefined is null
    write_atomic(out / f"{stem}.json", json.dumps(payload, indent=1, allow_nan=False))
    write_atomic(out / f"{stem}.md", text)
    print("\n" + text)
    return text


def backbone_fingerprint(backbone: str) -> str:
    """What a cached cell depends on in its backbone: for a local folder, the SHA-256 of its config and
    weight files (so caches survive moving or symlinking the folder; builtin:NAME is the shipped folder); for a
    hub id, the id itself."""
    from tpp.backbones import resolve_backbone

    folder = Path(resolve_backbone(backbone))
    if not folder.is_dir():
        return backbone
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.json")) + sorted(folder.glob("*.safetensors")):
        digest.update(path.name.encode())
        if path.name == "config.json":
            digest.update(_config_bytes(path))
            continue
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def backbone_cache(cache, backbone: str) -> Path:
    """The folder a bench keeps ``backbone``'s cells and TPP adapters in: ``cache`` itself for the shipped default
    (the layout of published reports and earlier caches), ``cache/backbones/<id>`` for any other (id: 16 hex digits
    of the sha256 of its :func:`backbone_fingerprint`, so the same weights by another path share it), so the cells
    of two backbones never share a path (a cell of one would replace the other's). The default named by its name
    costs no hashing."""
    from tpp.backbones import DEFAULT_BACKBONE

    if backbone == DEFAULT_BACKBONE:
        return Path(cache)
    fingerprint = backbone_fingerprint(backbone)
    if fingerprint == backbone_fingerprint(DEFAULT_BACKBONE):
        return Path(cache)
    return Path(cache) / "backbones" / hashlib.sha256(fingerprint.encode()).hexdigest()[:16]


def _config_bytes(path: Path) -> bytes:
    """``config.json`` as it was before saved ViT-MAE configs set ``mask_ratio`` 0.0 (tpp applies the pretext's
    ratio itself, so the key changes no result: 20-step TPP and fine-tuning runs were bit-identical with 0.75 and
    0.0), so the shipped default and ../shared's copy key the same cache cells."""
    raw = path.read_bytes()
    try:
        config = json.loads(raw)
    except ValueError:
        return raw
    if not isinstance(config, dict) or config.get("mask_ratio") not in (0.0, 0.75):
        return raw
    config["mask_ratio"] = 0.75  # the value every cached cell was computed with
    return json.dumps(config, indent=2, sort_keys=True).encode() + b"\n"


def protocol_id(protocol: dict, backbone: str, **extra) -> str:
    """12 hex digits naming (protocol, backbone content, extra settings): a cached cell is reused only
    under the same id."""
    key = json.dumps({"protocol": protocol, "backbone": backbone_fingerprint(backbone), **extra}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:12]


class CellPaused(Exception):
    """A cell that saves its state and stops at the budget's end (``str()``: where it stopped); the next
    invocation continues it."""


class CellClaims:
    """Which cells of a shared cache a live invocation is running: ``claim(cell)`` holds an exclusive lock file
    under ``folder`` (one per cell, named by a hash of ``repr(cell)``) while the cell runs, so two invocations of
    one bench on one cache (one per core) split the grid instead of running a cell twice (a ResNet cell's saved
    state written by both). The lock is the kernel's (``flock``): it ends with its process, a killed run leaves
    nothing stale. Without ``fcntl`` (Windows) every claim succeeds."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    @contextmanager
    def claim(self, cell):
        """Yields True while this process holds ``cell``, False (at once) when another live process does."""
        try:
            import fcntl
        except ImportError:
            yield True
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / f"{hashlib.sha256(repr(cell).encode()).hexdigest()[:24]}.lock", "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def fill(run_cell, cached, cells: list[tuple], budget_s: float, kind, describe, first_estimate_s: float,
         pausable=lambda cell: False, claims: CellClaims | None = None, label=str):
    """Run the cells that ``cached(*cell)`` does not have, in order, until the next one would exceed the
    budget (estimated from the last cell of the same ``kind(cell)``). ``pausable(cell)`` cells come after the
    others and get what budget the others leave: one starts while any is left and raises :class:`CellPaused` at
    the budget's end, to be continued next time (so a cell longer than any budget never holds up the short ones).
    A failing cell is reported and skipped, never loses the others; a cell that another invocation on the same
    cache has finished by the time it comes up is skipped, and with ``claims`` one it is running is too (left
    to it). ``label(cell)``: how the skip and failure lines name a cell. Returns (results, cells left for the
    next run, error lines)."""
    start, done, errors, last, skipped = time.time(), [], [], {}, []
    claim = claims.claim if claims is not None else (lambda cell: nullcontext(True))
    todo = [c for c in cells if not cached(*c)]
    short = [c for c in todo if not pausable(c)]
    todo = short + [c for c in todo if pausable(c)]
    print(f"{len(cells) - len(todo)} of {len(cells)} cells cached; {len(todo)} to run", flush=True)
    i = 0
    while i < len(todo):
        cell = todo[i]
        if cached(*cell):  # another invocation sharing the cache finished it meanwhile
            i += 1
            continue
        elapsed = time.time() - start
        if elapsed + (0.0 if pausable(cell) else last.get(kind(cell), first_estimate_s)) > budget_s:
            if i < len(short) < len(todo) and elapsed < budget_s:  # what is left goes to the pausable cells
                skipped += [c for c in todo[i:len(short)] if not cached(*c)]
                i = len(short)
                continue
            return done, skipped + [c for c in todo[i:] if not cached(*c)], errors
        t0 = time.time()
        with claim(cell) as mine:
            if not mine or cached(*cell):  # another invocation is running it, or finished it while we waited
                if not mine:
                    print(f"  {label(cell)}: another invocation is running it; skipped", flush=True)
                    skipped.append(cell)
                i += 1
                continue
            try:
                result = run_cell(*cell)
            except CellPaused as exc:
                print(f"  paused: {exc}", flush=True)
                return done, skipped + [c for c in todo[i:] if not cached(*c)], errors
            except Exception as exc:  # one broken cell must not lose the others
                errors.append(f"{label(cell)}: {type(exc).__name__}: {exc}")
                print(f"  FAILED {label(cell)}: {exc}", flush=True)
                i += 1
                continue
        last[kind(cell)] = time.time() - t0
        print(f"  [{i + 1}/{len(todo)}] {describe(cell, result)} ({last[kind(cell)]:.0f} s)", flush=True)
        done.append(result)
        i += 1
    return done, skipped, errors


def finish(missing: list, errors: list[str]) -> int:
    """The closing lines of a cached grid run: how many cells the budget left, each failure; the exit code."""
    if missing:
        print(f"budget reached: {len(missing)} cells left; run the same command again to continue.")
    for e in errors:
        print(f"failed: {e}", file=sys.stderr)
    return 1 if errors else 0


def write_atomic(path, text: str) -> None:
    """Write ``text`` to ``path`` through a file of this process renamed into place: readers (and other
    processes writing the same file) see the old or the new content, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp_{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def store_cell(path, cell: dict) -> None:
    write_atomic(path, json.dumps(cell, indent=1))


class CellCache:
    """Cells as JSON files under ``folder/<id>/``, one per key (``key(cell)``: the arguments of :meth:`cached`,
    ``name(*key)``: the file name), the id naming the protocol: cells of another protocol live in another folder,
    and a file that does not carry the id (a foreign or hand-edited one) is no cell of it."""

    def __init__(self, folder: Path, id: str, key, name):
        self.id, self.folder, self._key, self._name = id, Path(folder) / id, key, name

    def path(self, *key) -> Path:
        return self.folder / self._name(*key)

    def _read(self, path: Path) -> dict | None:
        """The cell in ``path`` if it is one of this id (a missing, unreadable or foreign file is None)."""
        try:
            cell = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return cell if isinstance(cell, dict) and cell.get("protocol_id") == self.id else None

    def cached(self, *key) -> dict | None:
        return self._read(self.path(*key))

    def cells(self) -> list[dict]:
        """Every cell cached under this id (a report covers them all, not only the requested grid's)."""
        return [c for c in map(self._read, sorted(self.folder.glob("*.json"))) if c]

    def store(self, cell: dict) -> None:
        store_cell(self.path(*self._key(cell)), {**cell, "protocol_id": self.id})

    def adopt(self, published) -> int:
        """``--from-results``: the cells of a published report measured under this id."""
        return adopt(published, self.id, self._key, self.cached, self.store)


def check_grid_args(parser, targets=(), fractions=(), seeds: int | None = None, budget_min: float | None = None,
                    allowed_fractions=None, seeds_flag: str = "--seeds") -> None:
    """Refuse (``parser.error``: usage and one line, exit 2) grid arguments that could only fail when their cells
    run or give an empty grid: a target that is no MedMNIST dataset, a label fraction outside (0, 1] (or not one
    of ``allowed_fractions``), fewer than one seed, a negative budget."""
    import difflib

    from tpp.data.arrays import MEDMNIST

    for target in targets:
        if target not in MEDMNIST:
            close = difflib.get_close_matches(target, list(MEDMNIST), n=1)
            meant = f" (did you mean {close[0]}?)" if close else ""
            parser.error(f"--targets: '{target}' is no MedMNIST dataset{meant}")
    for fraction in fractions:
        if not 0 < fraction <= 1 or (allowed_fractions is not None and fraction not in allowed_fractions):
            allowed = ", ".join(map(str, allowed_fractions)) if allowed_fractions is not None else "(0, 1]"
            parser.error(f"--fractions: {fraction} is no label fraction of this grid (one of {allowed})")
    if seeds is not None and seeds < 1:
        parser.error(f"{seeds_flag} must be at least 1, got {seeds}")
    if budget_min is not None and not budget_min >= 0:
        parser.error(f"--budget-min must be 0 or more minutes, got {budget_min}")


def add_from_results_option(parser) -> None:
    parser.add_argument("--from-results", nargs="+", default=[], metavar="JSON",
                        help="first copy into the cache the cells of published reports (this script's JSON under "
                             "benchmarks/results) measured under this protocol and backbone")


def adopt(published, protocol_id: str, cell_args, cached, store) -> int:
    """Copy into a cell cache the cells of a published report (its JSON's ``cells``) measured under
    ``protocol_id`` and not cached yet. The cache is not in git and the reports are, so a fresh clone
    continues a grid, or renders a report again, instead of redoing it. ``cell_args(cell)`` gives the
    arguments of ``cached``. Returns how many were copied; ValueError names the file if it is no report."""
    try:
        cells = json.loads(Path(published).read_text())["cells"]
        fresh = [c for c in cells if c.get("protocol_id") == protocol_id and not cached(*cell_args(c))]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{published}: not a benchmark report with cells ({type(exc).__name__}: {exc})") from None
    for cell in fresh:
        store(cell)
    return len(fresh)


def adopt_all(parser, paths: list, adopt_one, cache, own: Path | None = None) -> None:
    """``--from-results``: adopt every report, or stop with a usage error naming the bad file. ``own`` is the
    report this run will write: when it exists its cells are adopted too, so that a run on a fresh cache (a new
    clone or machine) never replaces a published report with one that lost the cells it had."""
    if own is not None and Path(own).is_file() and all(Path(p).resolve() != Path(own).resolve() for p in paths):
        paths = [*paths, own]
    for published in paths:
        try:
            print(f"{published}: {adopt_one(published)} cells copied into {cache}")
        except ValueError as exc:
            parser.error(f"--from-results: {exc}")


def defined(values: list) -> list[float]:
    """The defined values: None (an undefined metric, as metrics.json writes the AUROC of a one-class split) and
    NaN are dropped."""
    return [float(v) for v in values if v is not None and not math.isnan(v)]


def num(value, spec: str = ".3f") -> str:
    """``value`` formatted with ``spec``, or "undefined" for None / NaN (an AUROC of a one-class split)."""
    return "undefined" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def mean_std(values: list) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (0 for a single value) of the defined values (:func:`defined`);
    (None, None) when none is defined."""
    arr = np.asarray(defined(values), dtype=float)
    if not len(arr):
        return None, None
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def t_interval(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and two-sided Student-t confidence interval of the mean: (mean, low, high).

    With one value the interval is unbounded (nan); it says nothing without replicates. Undefined values (None,
    NaN) are left out; with none defined everything is nan.
    """
    from scipy.stats import t

    arr = np.asarray(defined(values), dtype=float)
    if not len(arr):
        return math.nan, math.nan, math.nan
    mean = float(arr.mean())
    if len(arr) < 2:
        return mean, math.nan, math.nan
    half = float(t.ppf(0.5 + level / 2, len(arr) - 1)) * float(arr.std(ddof=1)) / math.sqrt(len(arr))
    return mean, mean - half, mean + half


def summarise(cells: list[dict]) -> list[dict]:
    """One row per (target, method, fraction): n seeds, AUROC / accuracy mean ± std over the seeds where it is
    defined (``auroc_n`` / ``accuracy_n`` of them; mean and std None when none is), cost."""
    groups = defaultdict(list)
    for c in cells:
        groups[(c["target"], c["method"], c["fraction"])].append(c)
    rows = []
    for (target, method, fraction), group in sorted(groups.items()):
        aurocs, accs = [c["test_auroc"] for c in group], [c["test_accuracy"] for c in group]
        auroc, acc = mean_std(aurocs), mean_std(accs)
        rows.append({"target": target, "method": method, "fraction": fraction, "n": len(group),
                     "auroc_mean": auroc[0], "auroc_std": auroc[1], "accuracy_mean": acc[0], "accuracy_std": acc[1],
                     "auroc_n": len(defined(aurocs)), "accuracy_n": len(defined(accs)),
                     "trainable_parameters": group[0]["trainable_parameters"],
                     "finetune_s": float(np.mean([c["finetune_s"] for c in group])),
                     "tpp_s": float(np.mean([c.get("tpp_s") or 0.0 for c in group]))})
    return rows


def paired(cells: list[dict], method: str, reference: str, metric: str = "test_auroc") -> list[dict]:
    """Per (target, fraction): ``metric`` of ``method`` minus ``reference`` on the same seed (so the same
    label subset), mean and 95% t-interval over seeds. Only seeds that both finished count."""
    by_key = {(c["target"], c["method"], c["fraction"], c["seed"]): c[metric] for c in cells
              if defined([c.get(metric)])}  # a seed with the metric undefined has no pair
    out = []
    for target, fraction in sorted({(c["target"], c["fraction"]) for c in cells if c["method"] == method}):
        diffs = [by_key[(target, method, fraction, s)] - by_key[(target, reference, fraction, s)]
                 for (t, m, f, s) in sorted(by_key) if (t, m, f) == (target, method, fraction)
                 and (target, reference, fraction, s) in by_key]
        if diffs:
            mean, low, high = t_interval(diffs)
            out.append({"target": target, "fraction": fraction, "method": method, "reference": reference,
                        "n": len(diffs), "diff_mean": mean, "ci95_low": low, "ci95_high": high})
    return out


def _pm(mean: float | None, std: float | None, n: int, of: int | None = None) -> str:
    """'mean ± std' over ``n`` defined values (of ``of`` seeds, said when fewer); 'undefined' when none is."""
    if mean is None:
        return "undefined"
    text = f"{mean:.3f} ± {std:.3f}" if n > 1 else f"{mean:.3f}"
    return text if of is None or n == of else f"{text} ({n} of {of} defined)"


def markdown_results(rows: list[dict]) -> str:
    """Mean ± std per cell, with the published MedMNIST v2 ResNet-18 (28) numbers beside the 100% rows."""
    lines = ["| target | labels | method | seeds | test AUROC | test accuracy | trainable | fine-tune s | TPP s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['target']} | {r['fraction']:.0%} | {r['method']} | {r['n']} | "
                     f"{_pm(r['auroc_mean'], r['auroc_std'], r.get('auroc_n', r['n']), r['n'])} | "
                     f"{_pm(r['accuracy_mean'], r['accuracy_std'], r.get('accuracy_n', r['n']), r['n'])} | "
                     f"{r['trainable_parameters']:,} | {r['finetune_s']:.0f} | {r['tpp_s']:.0f} |")
    for target in sorted({r["target"] for r in rows if r["fraction"] == 1.0} & set(MEDMNIST_V2_RESNET18_28)):
        auc, acc = MEDMNIST_V2_RESNET18_28[target]
        lines.append(f"| {target} | 100% | ResNet-18 (28) from scratch, MedMNIST v2 (published) | – | {auc:.3f} | "
                     f"{acc:.3f} | 11.2 M | – | – |")
    return "\n".join(lines)


def markdown_paired(diffs: list[dict]) -> str:
    lines = ["| target | labels | comparison | pairs | AUROC difference | 95% CI |", "|---|---|---|---|---|---|"]
    for d in diffs:
        ci = "n/a (1 pair)" if math.isnan(d["ci95_low"]) else f"[{d['ci95_low']:+.3f}, {d['ci95_high']:+.3f}]"
        lines.append(f"| {d['target']} | {d['fraction']:.0%} | {d['method']} − {d['reference']} | {d['n']} | "
                     f"{d['diff_mean']:+.3f} | {ci} |")
    return "\n".join(lines)


def plot(rows: list[dict], path) -> None:
    """AUROC (mean ± std) against label fraction, one panel per target, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = sorted({r["target"] for r in rows})
    fig, axes = plt.subplots(1, len(targets), figsize=(5.5 * len(targets), 4), squeeze=False)
    for ax, target in zip(axes[0], targets):
        for method in sorted({r["method"] for r in rows if r["target"] == target}):
            pts = sorted((r["fraction"], r["auroc_mean"], r["auroc_std"]) for r in rows
                         if r["target"] == target and r["method"] == method and r["auroc_mean"] is not None)
            if not pts:  # AUROC undefined at every fraction
                continue
            x, y, e = zip(*pts)
            ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=method)
        if target in MEDMNIST_V2_RESNET18_28:
            ax.axhline(MEDMNIST_V2_RESNET18_28[target][0], color="gray", ls=":", label="ResNet-18 (28), MedMNIST v2")
        ax.set(xscale="log", xlabel="fraction of training labels", ylabel="test AUROC", title=target)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = Path(path).with_name(f".{Path(path).name}.tmp_{os.getpid()}")
    fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    os.replace(tmp, path)
