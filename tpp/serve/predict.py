"""``tpp predict``: per-image probabilities and label names for files or folders, written as one CSV.

Images of one site, or of many sites through a mapping CSV (columns ``image,site``): a mixed-site
batch goes through the AdapterBank in one pass per batch. Segmentation sites give masks: PNG files of
class indices (``<index>_<stem>.png`` in a masks folder beside the CSV) listed in the CSV's ``mask``
column with the fraction of pixels per class. The CSV and the masks folder appear whole or not at all.
"""
from __future__ import annotations

import contextlib
import csv
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from tpp.data.file_reading import ACTS_ON, FLAGS, FORMAT_NAMES, file_format, named_format
from tpp.data.filesets import dangling_link, image_stem, unlistable, walk_files
from tpp.data.file_kinds import irregular, open_regular
from tpp.data.images import ImageError
from tpp.serve import images as readers
from tpp.serve.bank import AdapterBank
from tpp.errors import TppError
from tpp.safe_write import write_atomic, write_error

SUFFIXES = readers.PIL_SUFFIXES | {".npy", ".dcm", ".dicom", ".nii", ".gz"}
ON_BAD_FILE = ("skip", "fail")


@dataclass
class Skipped:
    """An input that was not predicted and why (one row of ``<OUT stem>_skipped.csv``)."""
    image: str
    site: str
    reason: str


DOCUMENT_SUFFIXES = frozenset({".txt", ".csv", ".tsv", ".json", ".xml", ".md", ".pdf", ".log", ".yaml", ".yml",
                               ".html", ".htm"})  # a folder's manifests and notes: no images, and not bad ones


def _is_image(path: Path) -> bool:
    """By suffix, else by content: extensionless DICOM (PACS style ``IM00001``), ``.npy``, NIfTI, PNG, JPEG."""
    return path.suffix.lower() in SUFFIXES or file_format(path) is not None


def ignored_read_options(files: list[Path], options: dict | None) -> list[str]:
    """One warning for each reading option given (``frame``, ``slice_spec``, ``window``) that acts on no input
    (e.g. ``--window`` for PNG files only; what acts on what: :data:`tpp.data.file_reading.ACTS_ON`, as training
    decides it): it would change nothing, which the user should know. The files' names tell most formats; a
    header is read (that of a file its name does not tell) only while an asked format is still not found."""
    asked = [key for key in ACTS_ON if (options or {}).get(key) is not None]
    named = {Path(f): named_format(f) for f in files} if asked else {}
    found, unnamed = set(named.values()), iter([f for f, kind in named.items() if kind is None])
    while not all(found & set(ACTS_ON[key]) for key in asked) and (file := next(unnamed, None)) is not None:
        found.add(file_format(file))
    return [f"{FLAGS[key]} acts on {' and '.join(FORMAT_NAMES[k] for k in ACTS_ON[key])} files only; "
            f"none of the {len(files)} inputs is one, so it changes nothing."
            for key in asked if not found & set(ACTS_ON[key])]


INPUT_COLUMNS = ("image", "site", "version")  # what was asked; never a file the task wrote, whatever its name


def collect(inputs: list[str], skipped: list[Skipped] | None = None) -> list[Path]:
    """Files as given, folders expanded (recursively, sorted; as training reads folders: hidden files and
    folders left out, linked folders followed) to the image files they hold, by suffix or by content; documents
    (:data:`DOCUMENT_SUFFIXES`: a manifest, notes) are left out, as training leaves them out; any other entry of a
    folder (a file that is no image, a dangling symbolic link, a pipe) is appended to ``skipped`` with its reason
    (``None``: an error naming it), and so is a sub-folder that cannot be listed (no read permission, removed
    mid-walk). A folder without any image file is an error naming it."""
    files = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            refused = []  # [(sub-folder, why)]: a folder that cannot be listed, its images unseen
            listed = sorted(Path(folder, name) for folder, name in walk_files(
                path, lambda folder, exc: refused.append((Path(folder), unlistable(exc)))))
            if refused and skipped is None:
                raise TppError(f"folder '{refused[0][0]}' {refused[0][1]}, so its images cannot be predicted. Pass "
                               "--on-bad-file skip to predict the other images and list it in OUT_skipped.csv.")
            entries = [p for p in listed if p.is_file()]
            documents = [p for p in entries if p.suffix.lower() in DOCUMENT_SUFFIXES]
            entries = [p for p in entries if p.suffix.lower() not in DOCUMENT_SUFFIXES]
            kinds = [_is_image(p) for p in entries]
            found = [p for p, image in zip(entries, kinds) if image]
            others = sorted([(p, "not an image file tpp reads (PNG, JPEG, .npy, DICOM, NIfTI)")
                             for p, image in zip(entries, kinds) if not image]
                            + [(p, dangling_link(str(p)) or _not_a_file(p)) for p in listed if not p.is_file()])
            if not found:
                rest = [p for p, _ in others] + documents
                seen = f" (it holds {len(rest)} other file(s), e.g. '{rest[0].name}')" if rest else " (it is empty)"
                if refused:
                    seen = f" (its sub-folder '{refused[0][0]}' {refused[0][1]})"
                raise TppError(f"folder '{path}' holds no image files{seen}; tpp predict reads "
                               f"{', '.join(sorted(SUFFIXES))} and DICOM files without a suffix.")
            others += [(folder, f"folder {why}: its images are left out") for folder, why in refused]
            for other, reason in sorted(others):
                if skipped is None:
                    raise TppError(f"'{other}': {reason}. Pass --on-bad-file skip to predict the other images "
                                   "and list this one in OUT_skipped.csv.")
                skipped.append(Skipped(str(other), "", reason))
            files += found
        elif path.is_file():
            files.append(path)
        elif irregular(path):  # a fifo: reading it would wait for a writer for ever
            raise TppError(f"input '{path}' is not a regular file ({irregular(path)}); give image files or folders.")
        else:
            raise TppError(f"input '{path}' does not exist.")
    return files


def _not_a_file(path: Path) -> str:
    """Why an entry of a folder that is no regular file is not read: ``not a regular file (fifo)``, as everywhere."""
    kind = irregular(path)
    return f"not a regular file ({kind})" if kind else "does not exist (removed while its folder was read)"


def read_site_map(path: str) -> list[tuple[str, str]]:
    """Mapping CSV with columns ``image`` and ``site`` -> [(image path, site)], one per row in file order.
    An image may appear on several rows (e.g. under two sites): every row is answered."""
    file = Path(path)
    if file.is_dir():
        raise TppError(f"site map '{file}' is a folder; --site-map takes a CSV with columns image,site (a folder of "
                       "images goes after --site SITE).")
    if irregular(file):
        raise TppError(f"site map '{file}' is not a regular file ({irregular(file)}); give a CSV file.")
    if not file.is_file():
        raise TppError(f"site map '{file}' does not exist.")
    try:  # opened only as a regular file: one swapped for a fifo since the look is refused, never waited on
        with open_regular(file, TppError, "site map ") as raw, \
                io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or not {"image", "site"} <= set(reader.fieldnames):
                raise TppError(f"site map '{file}' needs the columns image,site (found {reader.fieldnames}).")
            rows = []
            for row in reader:
                image, site = (row["image"] or "").strip(), (row["site"] or "").strip()
                if not image or not site:
                    raise TppError(f"site map '{file}' line {reader.line_num}: every row needs an image and a site "
                                   f"(got image {image!r}, site {site!r}).")
                rows.append((image, site))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise TppError(f"site map '{file}' is not a readable UTF-8 CSV ({exc}).") from None
    except OSError as exc:  # removed or made unreadable since the look
        raise TppError(f"site map '{file}' cannot be read ({exc.strerror or type(exc).__name__}).") from None
    if not rows:
        raise TppError(f"site map '{file}' has no rows.")
    return rows


def without_own_outputs(files: list[Path], out: str) -> list[Path]:
    """``files`` less what this command writes for ``--out`` (the masks of ``<OUT stem>_masks/``) and the masks
    of any folder tpp predict marked (:data:`MASKS_MARK`): a folder holding an earlier run's outputs is read
    again without them, or each run would predict the masks of the one before
    (the CSV and skipped list are documents, never read). An explicit file in that folder is refused earlier
    (:func:`tpp.serve.predict.check_derived_outputs`)."""
    folder = masks_path(out).resolve()
    marked = {p for p in {f.parent for f in files} if (p / MASKS_MARK).is_file()}  # one look per folder
    kept = [f for f in files if f.parent not in marked and folder not in f.resolve().parents]
    if files and not kept:
        raise TppError(f"no images to predict: the inputs hold only the masks an earlier run wrote to "
                       f"'{masks_path(out)}' (--out), which are not read as inputs.")
    return kept


def assign_sites(site: str | None, site_map: str | None, inputs: list[str],
                 skipped: list[Skipped] | None = None) -> list[tuple[Path, str]]:
    """(image file, site) pairs from ``--site`` or ``--site-map`` (exactly one of them). With a ``skipped``
    list (``--on-bad-file skip``), entries of folders that are no images (:func:`collect`), and site-map images
    that do not exist or are folders, go there instead of failing."""
    if (site is None) == (site_map is None):
        raise TppError("give exactly one of --site SITE or --site-map CSV.")
    if site is not None:
        if not inputs:
            raise TppError("no images given: pass image files or folders after --site SITE (or use --site-map CSV).")
        found = collect(inputs, skipped)
        for entry in skipped or []:
            entry.site = entry.site or site
        return [(f, site) for f in found]
    mapping = read_site_map(site_map)
    if inputs:
        raise TppError("with --site-map the images come from its image column; pass no IMAGES.")
    base = Path(site_map).parent
    pairs = [((base / img) if not Path(img).is_absolute() else Path(img), s) for img, s in mapping]
    present = []
    for file, name in pairs:
        if file.is_file():
            present.append((file, name))
            continue
        problem = ("is a folder, not an image file" if file.is_dir() else
                   f"is not a regular file ({irregular(file)})" if irregular(file) else "does not exist")
        if skipped is None:
            raise TppError(f"site map '{site_map}': image '{file}' {problem}.")
        skipped.append(Skipped(str(file), name, f"listed in site map '{site_map}' but {problem}"))
    return present


def plan_batches(pairs: list[tuple[Path, str]], batch_size: int, max_sites: int) -> list[list[int]]:
    """Indices of ``pairs`` grouped by site (fewer adapter loads), cut into batches of at most
    ``batch_size`` images and ``max_sites`` distinct sites (loading one never evicts another of the batch)."""
    batches, current, sites = [], [], set()
    for i in sorted(range(len(pairs)), key=lambda k: pairs[k][1]):
        site = pairs[i][1]
        if len(current) == batch_size or (site not in sites and len(sites) == max_sites):
            batches.append(current)
            current, sites = [], set()
        current.append(i)
        sites.add(site)
    return batches + ([current] if current else [])


def predict_files(bank: AdapterBank, pairs: list[tuple[Path, str]], batch_size: int = 64,
                  read_options: dict | None = None,
                  skipped: list[Skipped] | None = None) -> tuple[list[dict], dict[str, np.ndarray]]:
    """One row per predicted image, in input order: image, site, version, then label + prob_<label> per label
    name (classification) or mask file + frac_<class> per class (segmentation).

    A file that cannot be read (truncated, not an image, too large ...) goes to ``skipped`` with the reason,
    and the others are predicted; without a ``skipped`` list it is an error naming the file.
    Returns (rows, {mask file name: uint8 class-index mask (h, w)})."""
    rows: list = [None] * len(pairs)
    masks: dict[str, np.ndarray] = {}
    batches = plan_batches(pairs, batch_size, bank.max_resident)
    warned: set = set()
    for batch in tqdm(batches, desc="predict", unit="batch", disable=len(batches) <= 1):
        good, sites, arrays, x = [], [], [], []
        for i in batch:
            site = bank.site(pairs[i][1])
            options = site_read_options(site, read_options or {}, warned)
            try:
                array = readers.read(pairs[i][0], **options)
                tensor = readers.to_model_input(array, site.input_rule)
            except (readers.ImageError, OSError, ValueError) as exc:
                record_unreadable(pairs[i], exc, skipped)
                continue
            good.append(i)
            sites.append(site)
            arrays.append(array)
            x.append(tensor)
        outputs = bank.predict(sites, x) if good else []
        for i, site, array, out in zip(good, sites, arrays, outputs):
            row = {"image": str(pairs[i][0]), "site": site.name, "version": site.version}
            stem = f"{i:05d}_{image_stem(pairs[i][0])}"
            columns, files = site.task.csv_entry(site.task.per_image(out, array), site.label_names, stem)
            row.update(columns)
            masks.update(files)
            rows[i] = row
    return [r for r in rows if r is not None], masks


def site_read_options(site, given: dict, warned: set) -> dict:
    """``given`` decode options over the site's training ones (its card's ``data.reading``); a warning, once per
    site and option, where one given differs (``warned`` remembers them)."""
    from tpp.serve.reading import with_card_reading

    options, notes = with_card_reading(site.reading, given)
    for note in notes:
        if (site.name, note) not in warned:
            warned.add((site.name, note))
            warnings.warn(f"site '{site.name}': {note}.", stacklevel=2)
    return options


def record_unreadable(pair: tuple[Path, str], exc: Exception, skipped: list[Skipped] | None) -> None:
    """Record an unreadable input in ``skipped``, or (``None``) fail naming it and the way around."""
    reason = str(exc) if isinstance(exc, TppError) else f"'{pair[0]}' cannot be read ({type(exc).__name__}: {exc})"
    if skipped is None:
        raise TppError(f"{reason.rstrip('.')}. Nothing was written; pass --on-bad-file skip to predict the other "
                       "images and list this one in OUT_skipped.csv.") from None
    skipped.append(Skipped(str(pair[0]), pair[1], reason))


def skipped_path(out: str | Path) -> Path:
    """``<OUT stem>_skipped.csv`` beside the predictions CSV."""
    path = Path(out)
    return path.with_name(path.stem + "_skipped.csv")


def masks_path(out: str | Path) -> Path:
    """``<OUT stem>_masks/`` beside the predictions CSV."""
    path = Path(out)
    return path.with_name(path.stem + "_masks")


MASKS_MARK = ".tpp-predict-masks"  # an empty file in every masks folder tpp predict writes
SKIPPED_HEADER = "image,site,reason"  # the first line of every skipped list tpp predict writes


def _ours(path: Path) -> bool:
    """Whether ``path`` is absent, or a masks folder / skipped list an earlier ``tpp predict`` wrote (only those
    are ever replaced or removed: a user's own ``study_masks/`` beside ``--out study.csv`` is not)."""
    if path.is_symlink():
        return False
    if not path.exists():
        return True
    if path.name.endswith("_masks"):
        return path.is_dir() and (path / MASKS_MARK).is_file()
    try:
        with open_regular(path) as fh:  # a fifo is no list of ours, and never waited on
            return fh.read(len(SKIPPED_HEADER) + 2).decode("utf-8", "replace").strip() == SKIPPED_HEADER
    except (OSError, ImageError):
        return False


def check_derived_outputs(out: str, inputs: list[str]) -> None:
    """What ``tpp predict`` writes beside ``--out`` (``<OUT stem>_masks/``, ``<OUT stem>_skipped.csv``) may
    replace only what an earlier ``tpp predict`` wrote there, and never an input or a folder holding one."""
    for derived in (masks_path(out), skipped_path(out)):
        target = derived.resolve()
        for item in inputs:
            given = Path(item).resolve()
            if given == target or target in given.parents:
                raise TppError(f"--out '{out}' would replace '{derived}', which is an input or holds one ('{item}'); "
                               "choose another --out.")
        if not _ours(derived):
            what = ("masks folder (marked by a .tpp-predict-masks file; one an older tpp wrote has no mark: delete "
                    "it)") if derived.name.endswith("_masks") else f"skipped list (first line {SKIPPED_HEADER})"
            raise TppError(f"'{derived}' exists and is no {what} that tpp predict wrote, so the outputs of --out "
                           f"'{out}' would replace it; move it, or choose another --out.")


def write_skipped(skipped: list[Skipped], out: str | Path) -> Path | None:
    """The list of inputs not predicted (columns image, site, reason), atomically, beside ``out``; with none,
    a list left by an earlier run is removed (it would describe other inputs). Returns its path or None."""
    path = skipped_path(out)
    if not _ours(path):
        raise TppError(f"'{path}' is no skipped list that tpp predict wrote; it was left as it is.")
    if not skipped:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return None
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["image", "site", "reason"])
    writer.writerows([s.image, s.site, s.reason] for s in skipped)
    write_atomic(path, buffer.getvalue())
    return path


def remove_outputs(out: str | Path) -> list[Path]:
    """Remove the predictions CSV at ``out`` and its masks folder left by an earlier run; the removed paths."""
    import shutil

    path = _out_path(out)
    folder = masks_path(path)
    ours = _ours(folder)  # never a folder tpp predict did not write (checked before any input is read)
    removed = [p for p in (path, folder) if p.exists() and (p == path or ours)]
    if path.is_file():
        path.unlink()
    if ours:
        shutil.rmtree(folder, ignore_errors=True)
    return removed


def nothing_predicted(skipped: list[Skipped], out: str | Path) -> TppError:
    """The error when every input was unreadable: the skipped list is written beside ``out`` (each input with its
    reason) and an earlier run's predictions there are removed (they were not of these inputs)."""
    listed = write_skipped(skipped, out)
    stale = remove_outputs(out)
    reasons = "".join(f"\n  - '{s.image}': {s.reason}" for s in skipped[:SHOWN_REASONS])  # a few: said here too
    return TppError(f"none of the {len(skipped)} inputs could be predicted; {listed} lists each with its reason"
                    + (f" (the earlier predictions at {', '.join(map(str, stale))} were removed: they were not "
                       "of these inputs)." if stale else ".") + reasons
                    + (f"\n  ... and {len(skipped) - SHOWN_REASONS} more" if len(skipped) > SHOWN_REASONS else ""))


SHOWN_REASONS = 3  # inputs whose reason the error itself names


def publish_predictions(rows: list[dict], masks: dict[str, np.ndarray], out: str, skipped: list[Skipped] | None,
                        summary: str) -> int:
    """:func:`write_outputs`, then the lines ``tpp predict`` prints: the masks folder, ``summary -> CSV`` and a
    warning naming the skipped list. Exit status 0."""
    import sys

    path, folder = write_outputs(rows, masks, out, skipped or [])
    if folder:
        print(f"{len(masks)} files (PNG; segmentation: class-index masks at each image's size) -> {folder}")
    print(f"{summary} -> {path}")
    if skipped:
        print(f"warning: {len(skipped)} input(s) skipped (missing or not readable as images); reasons in "
              f"{skipped_path(path)}", file=sys.stderr)
    return 0


def write_outputs(rows: list[dict], masks: dict[str, np.ndarray], out: str,
                  skipped: list[Skipped] = ()) -> tuple[Path, Path | None]:
    """The CSV and, where the sites' tasks write files (segmentation: class-index mask PNGs),
    ``<OUT stem>_masks/`` (the CSV column naming each file points into it), and ``<OUT stem>_skipped.csv``
    listing the inputs not predicted. They are staged first and then moved into place, replacing older
    outputs; a stale masks folder or skipped list from an earlier run is removed. Returns
    (CSV path, masks folder or None)."""
    import os
    import shutil

    from PIL import Image

    path = _out_path(out)
    folder = masks_path(path)
    if not _ours(folder):
        raise TppError(f"'{folder}' is no masks folder that tpp predict wrote; nothing was written.")
    tmp, old = folder.with_name(f".{folder.name}.tmp"), folder.with_name(f".{folder.name}.old")
    for leftover in (tmp, old):
        shutil.rmtree(leftover, ignore_errors=True)
    moved = placed = False
    try:
        if masks:
            tmp.mkdir()
            (tmp / MASKS_MARK).touch()
            for name, array in masks.items():  # uint8 (h, w) or (h, w, 3), as the task gave it
                Image.fromarray(np.asarray(array, dtype=np.uint8)).save(tmp / name)
            for row in rows:  # a column naming a file the task wrote points into the folder
                row.update({k: f"{folder.name}/{v}" for k, v in row.items()
                            if k not in INPUT_COLUMNS and isinstance(v, str) and v in masks})
        if folder.exists():
            os.replace(folder, old)
            moved = True
        if masks:
            os.replace(tmp, folder)
            placed = True
        write_csv(rows, out)  # first: refused, it leaves the earlier skipped list with the earlier CSV
        write_skipped(list(skipped), path)
    except BaseException as exc:  # disk full ...: no new masks without their CSV, the earlier outputs stay
        if placed:
            shutil.rmtree(folder, ignore_errors=True)
        if moved:
            with contextlib.suppress(OSError):
                os.replace(old, folder)
        if isinstance(exc, OSError):
            raise write_error(Path(exc.filename) if exc.filename else path, exc) from exc
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return path, (folder if masks else None)


def _out_path(out: str) -> Path:
    """``--out`` as a Path whose folder exists; a folder named like the CSV, or a file in its way, is an error."""
    path = Path(out)
    if path.is_dir():
        raise TppError(f"--out '{path}' is a folder; give the CSV file to write, e.g. --out {path / 'preds.csv'}.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(path.parent, exc, "cannot create the folder of --out") from None
    return path


def write_csv(rows: list[dict], out: str) -> Path:
    """Write rows (union of columns, blanks where a site lacks a label) atomically."""
    columns = ["image", "site", "version"] + [c for c in ("label", "mask") if any(c in r for r in rows)]
    for row in rows:
        columns += [k for k in row if k not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="")
    writer.writeheader()
    writer.writerows(rows)
    path = _out_path(out)
    write_atomic(path, buffer.getvalue())  # the temp file goes on failure; disk full is a TppError naming the CSV
    return path
