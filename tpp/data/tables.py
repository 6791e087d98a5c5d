"""Label tables a hospital keeps beside its images: a CSV (``path,label[,patient_id][,split]``) or a folder's
``metadata.csv`` (``file_name,label``). Read with the standard library; every error names the file and line."""
from __future__ import annotations

import csv
import math
import os
import re
import warnings
from decimal import Decimal
from pathlib import Path, PurePosixPath

import numpy as np

from tpp.errors import TppError

SPLIT_NAMES = {"train": "train", "val": "val", "validation": "val", "valid": "val", "test": "test"}
MAX_TABLE_BYTES = 256 * 2**20  # a label table larger than this is refused before it is parsed


def read_table(path: Path, required: tuple[str, ...]) -> tuple[list[str], list[tuple[int, dict]]]:
    """A CSV with a header row -> (columns, [(line number, {column: stripped value})]), blank lines left out.
    A missing file, a missing ``required`` column, a duplicate column, a row with too many or too few cells
    and a table without rows are errors naming the file (and line)."""
    from tpp.data.file_kinds import open_regular
    from tpp.data.images import ImageError

    try:
        with open_regular(path) as fh:  # a fifo is refused at once, never waited on
            if os.fstat(fh.fileno()).st_size > MAX_TABLE_BYTES:
                raise TppError(f"label table '{path}' is larger than {MAX_TABLE_BYTES // 2**20} MiB; is it a label "
                               "table?")
            text = fh.read().decode("utf-8-sig")  # Excel writes a byte-order mark
    except ImageError as exc:  # 'labels.csv' is not a regular file (fifo).
        raise TppError(f"label table {exc}") from None
    except (FileNotFoundError, NotADirectoryError):
        raise TppError(f"label table '{path}' does not exist. Check data.root and data.file.") from None
    except OSError as exc:  # no permission to read it
        raise TppError(f"label table '{path}' cannot be read ({exc.strerror or type(exc).__name__}).") from None
    except UnicodeDecodeError as exc:
        raise TppError(f"label table '{path}' is not UTF-8 text ({exc}); save it as CSV UTF-8.") from None
    lines = _cells(text.splitlines(), path)
    header = [c.strip() for c in next(lines, [])]
    if not any(header):
        raise TppError(f"label table '{path}' is empty; it needs a header row ({','.join(required)}) and one row "
                       "per image.")
    duplicate = sorted({c for c in header if header.count(c) > 1})
    if duplicate:
        raise TppError(f"label table '{path}': column(s) {duplicate} appear twice in the header.")
    missing = [c for c in required if c not in header]
    if missing:
        raise TppError(f"label table '{path}' lacks the column(s) {missing} (line 1 has: {', '.join(header)}); "
                       f"the header must name {', '.join(required)}.")
    rows = []
    for number, cells in enumerate(lines, start=2):
        if not any(c.strip() for c in cells):
            continue
        if len(cells) != len(header):
            raise TppError(f"label table '{path}', line {number}: {len(cells)} cells, but the header has "
                           f"{len(header)} columns (a comma inside a value needs quotes).")
        row = {k: v.strip() for k, v in zip(header, cells)}
        empty = [c for c in required if not row[c]]
        if empty:
            raise TppError(f"label table '{path}', line {number}: empty {', '.join(empty)}.")
        rows.append((number, row))
    if not rows:
        raise TppError(f"label table '{path}' has a header but no rows; add one row per image.")
    return header, rows


def _cells(lines: list[str], path: Path):
    """The cells of each CSV row; a row the csv module refuses (a field past its 128 KiB limit, such as an unclosed
    quote swallowing the lines after it) is an error naming the table and line, not a ``csv.Error``."""
    reader = csv.reader(lines)
    while True:
        try:
            yield next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise TppError(f"label table '{path}', line {reader.line_num}: not readable as CSV ({exc}); is a quote "
                           "left open?") from None


MISSING_VALUES = {"<na>", "#n/a", "n/a", "null"}  # what pandas and spreadsheets write for an empty cell, beside NaN


def is_missing(value: str) -> bool:
    """Whether a table cell marks a missing value: empty, NaN in any spelling, or one of :data:`MISSING_VALUES`."""
    try:
        return math.isnan(float(value))
    except ValueError:
        return not value.strip() or value.strip().casefold() in MISSING_VALUES


def label_value(value: str, table: Path, number: int, numbers: bool = True) -> str:
    """A table's label cell, refused when it marks a missing value (``nan``, ``NaN``, ``<NA>``, ``#N/A``, ``NULL``:
    a table exported with its empty cells written out) or, in a column of numeric labels (``numbers``:
    :func:`numeric_labels`), is infinite (``inf``, ``-inf``): it would silently become a class of its own. Beside
    word labels ``inf`` / ``Infinity`` are words (an infarct, an infection, the inferior wall): a class."""
    infinite = numbers and _is_infinite(value)
    if is_missing(value) or infinite:
        what = "is infinite" if infinite else "marks a missing value"
        raise TppError(f"label table '{table}', line {number}: label '{value}' {what}, not a class; "
                       "give the image its class or remove the row.")
    return value


def numeric_labels(labels) -> bool:
    """Whether a label column holds numbers: every label that marks no missing value reads as one (``inf`` too), and
    one at least is finite."""
    given = [value for value in labels if not is_missing(value)]
    return any(_finite(value) for value in given) and all(_finite(value) or _is_infinite(value) for value in given)


def _finite(value: str) -> bool:
    try:
        return math.isfinite(float(value))
    except ValueError:
        return False


def _is_infinite(value: str) -> bool:
    try:
        return math.isinf(float(value))
    except ValueError:
        return False


def group_value(value: str, table: Path, number: int, column: str) -> str:
    """A table's group cell (``patient_id``, ``data.group_key``) as its :func:`group_id`, refused when empty or
    marking a missing value: every such row would be one group, as if one patient, and land in one split."""
    if is_missing(value):
        shown = f"{column} '{value}' marks a missing value" if value.strip() else f"empty {column}"
        raise TppError(f"label table '{table}', line {number}: {shown}; every image needs one (else all such "
                       "images would count as one patient).")
    return group_id(value)


FLOAT_SPELLING = re.compile(r"[+-]?(\d+\.\d*|\.\d+|\d+(\.\d*)?[eE][+-]?\d+)")  # 1.0, 12., .0, 1e3, 1.5E+2
MAX_ID_DIGITS = 30  # a float-spelled id is rewritten as an integer only up to this many digits (1e999999 is not)


def group_id(value: str) -> str:
    """One spelling of a group id: a number written as a float with an integral value (``1.0``, ``12.00``,
    ``1e3``, ``-0.0``) becomes its integer spelling (``1``, ``12``, ``1000``, ``0``). pandas writes an integer
    column that has a missing value as floats, so one export's patient ``1`` is another's ``1.0``; as text they
    were two patients, and could land in two splits. Every other id is kept as written: ``1.5``, ``007`` (leading
    zeros are part of a text id) and case (``P1`` is not merged with ``p1``: :func:`group_spellings` warns)."""
    if not FLOAT_SPELLING.fullmatch(value):
        return value
    try:
        number = Decimal(value)
    except ArithmeticError:  # an exponent past decimal's range (0e99999999999999999999): an id as written
        return value
    if number.adjusted() >= MAX_ID_DIGITS or number != number.to_integral_value():
        return value
    return str(int(number))


def group_spellings(groups, where: str, column: str) -> list[list[str]]:
    """Group ids of one table that differ only in case or leading zeros (``P1`` / ``p1``, ``01`` / ``1``): kept
    apart, as two patients (an id's case can matter), but warned about in one line naming the first pair
    (``where``: the table, ``column``: the group column), since one patient written two ways can land in two
    splits and leak into the test score. Returns every such set of spellings."""
    spelled: dict = {}
    for group in dict.fromkeys(groups):
        key = (group.lstrip("0") or "0") if group.isascii() and group.isdigit() else group.casefold()  # no int():
        # a digit string past 4,300 digits is a ValueError
        spelled.setdefault(key, []).append(group)
    clashes = [sorted(v) for v in spelled.values() if len(v) > 1]
    if clashes:
        more = f" ({len(clashes)} such sets in all)" if len(clashes) > 1 else ""
        warnings.warn(f"{where}: {column} {' and '.join(repr(g) for g in clashes[0])} differ only in case or leading "
                      f"zeros{more}; they count as different patients, so their images may land in different "
                      "splits. If they are one patient, write the id one way.", stacklevel=2)
    return clashes


def relative_image(value: str, table: Path, number: int) -> str:
    """A table's image path -> a POSIX path relative to the table's folder. Paths are relative to that folder
    and must stay inside it: an absolute path or one climbing out with ``..`` is refused (a table cannot
    point training at arbitrary files of the machine; move the table up instead)."""
    posix = PurePosixPath(value.replace("\\", "/"))
    if posix.is_absolute() or Path(value).is_absolute() or ".." in posix.parts:
        raise TppError(f"label table '{table}', line {number}: image path '{value}' leaves the table's folder "
                       f"'{table.parent}'; paths must be relative to it without '..'. Put the table in a folder "
                       "above all images.")
    return posix.as_posix()


def class_names(values: list[str], where: str = "the labels") -> list[str]:
    """Sorted class names of label values: numerically when every value is an integer ('2' before '10'),
    else as text. Two values that differ only in how they are written ('1', '01' and '1.0'; 'Benign' and
    'benign') are refused, naming ``where``: as two classes they would silently split one."""
    unique = sorted(set(values))
    clashes = name_clashes(unique)
    if clashes:
        raise TppError(f"{where}: the labels {', '.join(repr(v) for v in clashes[0])} name one class written "
                       f"{len(clashes[0])} ways ({len(clashes)} such group(s)); write each class one way.")
    try:
        return sorted(unique, key=int)
    except ValueError:
        return unique


def name_clashes(names: list[str]) -> list[list[str]]:
    """Groups of names that name one class however written ('1' / '01'; 'Benign' / 'benign'; a name twice)."""
    spelled: dict = {}
    for name in names:
        spelled.setdefault(_class_key(name), []).append(name)
    return [v for v in spelled.values() if len(v) > 1]


def _class_key(value: str):
    """What a label means, however written: its number ('01', '1.0' -> 1.0), else its case-folded text."""
    try:
        return float(value)
    except ValueError:
        return value.casefold()


def label_index(values: list[str], names: list[str]) -> np.ndarray:
    """Label values -> int64 (N,) positions in ``names``."""
    position = {n: i for i, n in enumerate(names)}
    return np.array([position[v] for v in values], dtype=np.int64)


def split_value(value: str, table: Path, number: int) -> str:
    """A table's split cell -> train / val / test (validation and valid mean val)."""
    split = SPLIT_NAMES.get(value.lower())
    if split is None:
        raise TppError(f"label table '{table}', line {number}: split '{value}' is not train, val or test.")
    return split
