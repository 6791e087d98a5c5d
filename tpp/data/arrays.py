"""Array files: official MedMNIST files and generic .npz files, and the helpers every source shares
(the data root, the modality code, a class filter).

Each loader returns a :class:`tpp.data.Dataset` with uint8 images per split. Errors name the file
and say what to do. The registered sources (``tpp.data.sources``) call these loaders.
"""
from __future__ import annotations

import math
import re
import os
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np

from tpp.data import KNOWN_MODALITIES, Dataset, Split
from tpp.data.medmnist_download import MD5 as DOWNLOADABLE
from tpp.data.medmnist_download import download_medmnist
from tpp.data.subsets import seeded_split_id, stratified_split
from tpp.data.tables import name_clashes
from tpp.errors import TppError

SPLITS = ("train", "val", "test")

# flag -> (modality, class names); names as in the medmnist package's INFO table
MEDMNIST = {
    "breastmnist": ("US", ["malignant", "normal, benign"]),
    "pneumoniamnist": ("DX", ["normal", "pneumonia"]),
    "bloodmnist": ("SM", ["basophil", "eosinophil", "erythroblast", "immature granulocytes", "lymphocyte",
                          "monocyte", "neutrophil", "platelet"]),
    "organamnist": ("CT", ["bladder", "femur-left", "femur-right", "heart", "kidney-left", "kidney-right",
                           "liver", "lung-left", "lung-right", "pancreas", "spleen"]),
    "dermamnist": ("XC", ["actinic keratoses and intraepithelial carcinoma", "basal cell carcinoma",
                          "benign keratosis-like lesions", "dermatofibroma", "melanoma", "melanocytic nevi",
                          "vascular lesions"]),
    "retinamnist": ("OP", ["0", "1", "2", "3", "4"]),
    "pathmnist": ("SM", ["adipose", "background", "debris", "lymphocytes", "mucus", "smooth muscle",
                         "normal colon mucosa", "cancer-associated stroma", "colorectal adenocarcinoma epithelium"]),
    "octmnist": ("OCT", ["choroidal neovascularization", "diabetic macular edema", "drusen", "normal"]),
}
MEDMNIST["organcmnist"] = MEDMNIST["organsmnist"] = MEDMNIST["organamnist"]
# licences as the MedMNIST v2/v3 documentation lists them
MEDMNIST_LICENSES = {name: "CC BY 4.0" for name in MEDMNIST} | {"dermamnist": "CC BY-NC 4.0"}
# the image collections MedMNIST sets were made from, where other public sets share them
MEDMNIST_ORIGINS = {"breastmnist": "BUSI", "pneumoniamnist": "Kermany2018", "dermamnist": "HAM10000",
                    "dermamnist_jpeg": "HAM10000"}
MEDMNIST["dermamnist_jpeg"] = MEDMNIST["dermamnist"]  # the lossy re-export in ../shared/data
MEDMNIST_LICENSES["dermamnist_jpeg"] = MEDMNIST_LICENSES["dermamnist"]
MEDMNIST_SIZE_SUFFIX = re.compile(r"_(28|64|128|224)$")  # MedMNIST+ files: breastmnist_224.npz


def known_origin(name) -> str | None:
    """The image collection behind a dataset name tpp knows, at any MedMNIST+ size (``breastmnist``,
    ``breastmnist_224`` and ``busi_64`` -> ``BUSI``), else None."""
    if not isinstance(name, str):
        return None
    base = MEDMNIST_SIZE_SUFFIX.sub("", name.lower())
    return MEDMNIST_ORIGINS.get(base) or ("BUSI" if base == "busi" else None)


MEDMNIST_HOME = "~/.medmnist"  # the MedMNIST root when no data root is set (the medmnist package's folder too)


def no_data_root(root: str | None) -> bool:
    """Neither ``data.root`` (``root``) nor env ``TPP_DATA_ROOT`` is set."""
    return not (root or os.environ.get("TPP_DATA_ROOT"))


def resolve_root(root: str | None, medmnist: bool = False) -> Path:
    """``data.root``, else env ``TPP_DATA_ROOT``; an error when neither names an existing folder. With
    ``medmnist`` (the medmnist source) and neither set: :data:`MEDMNIST_HOME`."""
    if medmnist and no_data_root(root):
        return Path(MEDMNIST_HOME).expanduser()
    root = root or os.environ.get("TPP_DATA_ROOT")
    if not root:
        raise TppError("no data root: set data.root=DIR or the environment variable TPP_DATA_ROOT "
                       "(for this repository: TPP_DATA_ROOT=../shared/data).")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise TppError(f"data root '{path}' does not exist or is not a folder. Set data.root or TPP_DATA_ROOT.")
    return path


ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip member, an empty zip: what numpy.savez writes
NPY_MAGIC = b"\x93NUMPY"


def open_npz(path: Path) -> np.lib.npyio.NpzFile:
    """The .npz archive at ``path``, opened once (a fifo or device is refused unopened, :func:`open_regular`) and
    read from that one open file, which the archive owns (closed with it): a file swapped for a fifo after a first
    open by name cannot make a second open wait for a writer for ever."""
    from tpp.data.file_kinds import open_regular

    try:
        handle = open_regular(path, TppError, "npz file ")
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the name
        raise TppError(f"'{path}' cannot be read ({type(exc).__name__}: {exc}).") from None
    try:
        return _npz_of(handle, path)
    except BaseException:
        handle.close()
        raise


def _npz_of(handle, path: Path) -> np.lib.npyio.NpzFile:
    """The archive read from ``handle`` (a seekable binary file open at its start), which it then owns."""
    try:
        head = handle.read(6)
        handle.seek(0)
    except OSError as exc:
        raise TppError(f"'{path}' cannot be read ({type(exc).__name__}: {exc}).") from None
    if not head:
        raise TppError(f"'{path}' is an empty file, not an .npz archive.")
    if head == NPY_MAGIC:
        raise TppError(f"'{path}' is a single .npy array, not an .npz archive of named arrays "
                       "(save it with numpy.savez(path, images=..., labels=...)).")
    if not head.startswith(ZIP_MAGIC):
        raise TppError(f"'{path}' is not an .npz archive: it does not start as a zip file does (first bytes "
                       f"{head!r}). Save arrays with numpy.savez(path, images=..., labels=...).")
    try:
        npz = np.lib.npyio.NpzFile(handle, own_fid=True, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise TppError(f"'{path}' is not a readable .npz file ({type(exc).__name__}: {exc}).") from None
    if not npz.files:
        npz.close()
        raise TppError(f"'{path}' is an empty .npz archive: it holds no arrays.")
    return npz


def npz_array(npz, key: str, path: Path) -> np.ndarray:
    if key not in npz.files:
        raise TppError(f"'{path}' has no key '{key}' (it has: {', '.join(npz.files)}).")
    _check_array_size(npz, key, path)
    try:
        return npz[key]
    except ValueError as exc:  # object arrays need pickle: refused; a member cut short
        if "pickle" not in str(exc).lower():
            raise TppError(f"'{path}' key '{key}' cannot be read: the file is damaged ({exc}).") from None
        raise TppError(f"'{path}' key '{key}' cannot be read without pickle ({exc}).") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:  # a truncated or corrupt member
        raise TppError(f"'{path}' key '{key}' cannot be read: the file is damaged "
                       f"({type(exc).__name__}: {exc}).") from None


def max_array_bytes() -> int:
    """The largest array an .npz member may unpack to: half of this machine's memory (a small file may claim,
    or deflate to, far more than it holds)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):  # no sysconf (Windows): 16 GiB
        return 16 * 2**30


def _check_array_size(npz, key: str, path: Path) -> None:
    """Refuse a member whose .npy header says it unpacks to more than :func:`max_array_bytes`, before any of it
    is decompressed."""
    fmt = np.lib.format
    try:
        with npz.zip.open(f"{key}.npy") as fh:
            version = fmt.read_magic(fh)
            reader = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}.get(version)
            if reader is None:
                return  # a newer header: numpy itself reads it
            shape, _, dtype = reader(fh)
    except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error):
        return  # unreadable headers are reported when the array is read
    size = math.prod(shape) * dtype.itemsize
    if size > max_array_bytes():
        raise TppError(f"'{path}' key '{key}': its header says {shape} {dtype} ({size / 2**30:,.1f} GiB unpacked), "
                       f"more than half of this machine's memory ({max_array_bytes() / 2**30:,.1f} GiB); is the file "
                       "damaged? Split a larger dataset into several files or use a folder of images.")


def label_values(raw: np.ndarray, where: str) -> np.ndarray:
    """Labels as int64 (N,): one whole number per image. Strings, NaN / inf and fractional values
    (0.7 would silently become class 0) are errors naming ``where`` (the file and key)."""
    raw = np.asarray(raw)
    if raw.ndim == 0:
        raise TppError(f"{where}: labels must be an array with one label per image, got a single value.")
    if raw.size == 0:
        return np.zeros(len(raw), dtype=np.int64)
    values = raw.reshape(len(raw), -1)
    if values.shape[1] != 1:
        raise TppError(f"{where}: labels have shape {raw.shape}; multi-label data is not supported yet.")
    values = values[:, 0]
    if values.dtype.kind in "biu":
        return values.astype(np.int64)
    if values.dtype.kind != "f":
        example = f" (e.g. {values[0].item()!r})" if len(values) else ""
        raise TppError(f"{where}: labels must be integer class indices 0..K-1, got {values.dtype} values{example}. "
                       "Map class names to indices and list the names under data.class_names_key.")
    bad = ~np.isfinite(values)
    if bad.any():
        raise TppError(f"{where}: {int(bad.sum())} labels are not finite numbers (first: {values[bad][0]}); "
                       "every image needs a class index 0..K-1.")
    bad = values != np.round(values)
    if bad.any():
        raise TppError(f"{where}: {int(bad.sum())} labels are not whole numbers (first: {values[bad][0]}); labels are "
                       "class indices 0..K-1, not scores or probabilities.")
    return values.astype(np.int64)


def _labels(raw: np.ndarray, num_classes: int, where: str) -> np.ndarray:
    labels = label_values(raw, where)
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        raise TppError(f"{where}: {bad.sum()} labels are outside 0..{num_classes - 1} "
                       f"(first bad value {labels[bad][0]}). Check data.label_key and the class list.")
    return labels


def not_empty(images: np.ndarray, where: str) -> np.ndarray:
    """The training images (or the only array of a file): none at all is an error naming ``where``."""
    if len(images) == 0:
        raise TppError(f"{where} holds no images (an empty array): add images, or check data.image_key.")
    return images


def checked_images(raw: np.ndarray, where: str) -> np.ndarray:
    if raw.ndim not in (3, 4) or (raw.ndim == 4 and raw.shape[-1] not in (1, 3)):
        raise TppError(f"{where}: images must be (N, H, W) or (N, H, W, 1|3), got shape {raw.shape}.")
    if raw.dtype != np.uint8:
        raise TppError(f"{where}: images must be uint8 (0-255), got {raw.dtype}.")
    if 0 in raw.shape[1:3]:
        raise TppError(f"{where}: images of shape {raw.shape} hold no pixels (a height or width of 0).")
    return raw


def medmnist_candidates(name: str, base: Path) -> list[Path]:
    """Where ``<name>.npz`` is looked for under a data root: the root itself, then its ``medmnist/``."""
    return [base / f"{name}.npz", base / "medmnist" / f"{name}.npz"]


def load_medmnist(name: str, root: str | None, download: bool = False, labels: bool = True) -> Dataset:
    """An official MedMNIST 2D file ``<root>/<name>.npz`` (or ``<root>/medmnist/<name>.npz``).

    With ``labels=False`` the label arrays are never read (splits hold images only): the TPP path."""
    if name not in MEDMNIST:
        raise TppError(f"unknown MedMNIST dataset '{name}'. Known: {', '.join(sorted(MEDMNIST))}. "
                       "For other files use data.source=npz or folder.")
    modality, class_names = MEDMNIST[name]
    fallback = no_data_root(root)
    base = resolve_root(root, medmnist=True)
    candidates = medmnist_candidates(name, base)
    path = next((p for p in candidates if p.is_file()), None)
    if fallback:
        _announce_fallback(name, base, path)
    if path is None:
        if not (download or fallback):
            raise TppError(f"MedMNIST file '{name}.npz' not found under '{base}' (looked in "
                           f"{', '.join(str(p.parent) for p in candidates)}). Set data.root, or allow "
                           "data.download=true to fetch it from the MedMNIST record on Zenodo.")
        path = download_medmnist(name, base)
    npz = open_npz(path)
    splits = {}
    for split in SPLITS:
        images = checked_images(npz_array(npz, f"{split}_images", path), f"'{path}' {split}_images")
        split_labels = (_labels(npz_array(npz, f"{split}_labels", path), len(class_names),
                                f"'{path}' {split}_labels ({split} split)") if labels else None)
        if split_labels is not None and len(split_labels) != len(images):
            raise TppError(f"'{path}': {split}_images has {len(images)} images but {split}_labels has "
                           f"{len(split_labels)} labels.")
        splits[split] = Split(images, split_labels)
    not_empty(splits["train"].images, f"'{path}' train_images")
    return Dataset(name, modality, list(class_names), splits, source=f"'{path}'")


def medmnist_fallback_problems(name: str) -> list[str]:
    """With no data root set, what stops the medmnist source from using :data:`MEDMNIST_HOME`
    (``tpp validate``): the file is not there and tpp cannot download it."""
    home = Path(MEDMNIST_HOME).expanduser()
    if (home / f"{name}.npz").is_file() or name in DOWNLOADABLE:
        return []
    return [_no_root_message(name)]


def _no_root_message(name: str) -> str:
    return (f"no data root for MedMNIST '{name}': set data.root=DIR or the environment variable TPP_DATA_ROOT "
            f"(for this repository: TPP_DATA_ROOT=../shared/data); {name}.npz is not in {MEDMNIST_HOME} and is "
            "no file tpp can download.")


def _announce_fallback(name: str, base: Path, path: Path | None) -> None:
    """Say where MedMNIST comes from when no data root is set (stderr: the run's own output stays clean)."""
    import sys

    what = f"reading {path}" if path else f"downloading {name}.npz into {base}"
    print(f"[tpp] no data root set (data.root / TPP_DATA_ROOT): {what}. Set TPP_DATA_ROOT to use local files.",
          file=sys.stderr)


def load_npz(name: str, root: str | None, file: str | None, *, image_key: str = "images", label_key: str = "labels",
             class_names_key: str | None = "class_names", classes: list | None = None, modality: str | None = None,
             val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0, labels: bool = True) -> Dataset:
    """A generic .npz: MedMNIST-style split keys, or one image/label array split with a seeded
    stratified split. ``classes`` keeps (and re-numbers) a subset of the named classes.

    With ``labels=False`` a file with its own split keys is read without its label arrays; a seeded
    split or a class filter still needs them (to stratify / to pick images) and reads them."""
    if not file:
        raise TppError("data.source=npz needs data.file (path of the .npz, relative to data.root).")
    path = Path(file) if Path(file).is_absolute() else resolve_root(root) / file
    if not path.exists():  # a folder or a fifo of that name: said by open_npz
        raise TppError(f"npz file '{path}' does not exist. Check data.root and data.file.")
    npz = open_npz(path)
    names = (npz_class_names(npz_array(npz, class_names_key, path), f"'{path}' {class_names_key}")
             if class_names_key and class_names_key in npz.files else None)
    if f"train_{image_key}" in npz.files and not labels and not classes:
        splits = {s: Split(checked_images(npz_array(npz, f"{s}_{image_key}", path), f"'{path}' {s}_{image_key}"), None)
                  for s in SPLITS}
        not_empty(splits["train"].images, f"'{path}' train_{image_key}")
        return Dataset(name, check_modality(modality, name), names or [], splits, split_id="the file's own",
                       source=f"'{path}'")
    if f"train_{image_key}" in npz.files:
        parts = {s: (checked_images(npz_array(npz, f"{s}_{image_key}", path), f"'{path}' {s}_{image_key}"),
                     label_values(npz_array(npz, f"{s}_{label_key}", path),
                                   f"'{path}' {s}_{label_key} ({s} split)")) for s in SPLITS}
        for split, (im, lb) in parts.items():
            if len(im) != len(lb):
                raise TppError(f"'{path}': {split}_{image_key} has {len(im)} images but {split}_{label_key} "
                               f"has {len(lb)} labels.")
        not_empty(parts["train"][0], f"'{path}' train_{image_key}")
        names = names or index_names(max(lb.max() for _, lb in parts.values() if len(lb)),
                                     f"'{path}' *_{label_key}")
        splits = {s: Split(im, _labels(lb, len(names), f"'{path}' {s}_{label_key} ({s} split)"))
                  for s, (im, lb) in parts.items()}
        _check_train_covers(splits, names, path)
    else:
        where = f"'{path}' {image_key}"
        images = not_empty(checked_images(npz_array(npz, image_key, path), where), where)
        values = label_values(npz_array(npz, label_key, path), f"'{path}' {label_key}")
        if len(images) != len(values):
            raise TppError(f"'{path}': {len(images)} images but {len(values)} labels.")
        names = names or index_names(values.max(), f"'{path}' {label_key}")
        values = _labels(values, len(names), f"'{path}' {label_key}")
        index = stratified_split(values, val_fraction, test_fraction, name, seed)
        splits = {s: Split(images[i], values[i]) for s, i in index.items()}
    if classes:
        splits, names = filter_classes(splits, names, classes, path)
    split_id = ("the file's own" if f"train_{image_key}" in npz.files
                else seeded_split_id(seed, val_fraction, test_fraction, None))
    return Dataset(name, check_modality(modality, name), names, splits, split_id=split_id, source=f"'{path}'")


MAX_INDEX_CLASSES = 100_000  # classes named by their index alone (no class names in the file)


def index_names(top: int, where: str) -> list[str]:
    """Class names '0'..'top' of a file without class names; a label past :data:`MAX_INDEX_CLASSES` is refused
    (one label of 10**12 would have listed a trillion classes)."""
    if top >= MAX_INDEX_CLASSES:
        raise TppError(f"{where}: label {int(top)} would make {int(top) + 1:,} classes (labels are class indices "
                       f"0..K-1); name the classes in the file (data.class_names_key) if there really are more than "
                       f"{MAX_INDEX_CLASSES:,}.")
    return [str(i) for i in range(int(top) + 1)]


def _check_train_covers(splits: dict, names: list, path) -> None:
    """A class with images in val or test but none in train could never be learned: an error (as for folders)."""
    train = set(np.unique(splits["train"].labels).tolist())
    elsewhere = set().union(*(np.unique(splits[s].labels).tolist() for s in ("val", "test")))
    untrained = [names[k] for k in sorted(elsewhere - train)]
    if untrained:
        raise TppError(f"'{path}': class(es) {untrained} have images in val/test but none in train; the model could "
                       "never learn them. Add training images or remove the class.")


def npz_class_names(array: np.ndarray, where: str) -> list[str]:
    """Class names by label index from a 1-D array of text (bytes decoded as UTF-8). Anything else (a 2D or 0-d
    array, numbers) is an error naming ``where`` and the shape, as is an empty name or one class named twice
    (its probability column would be lost)."""
    if array.ndim != 1 or array.dtype.kind not in "US":
        raise TppError(f"{where}: a {array.dtype} array of shape {array.shape}; it must be a 1-D array of text, "
                       "one name per class index.")
    names = [n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in array.tolist()]
    return checked_class_names(names, where)


def checked_class_names(names: list[str], where: str) -> list[str]:
    """``names`` as given, refused (naming ``where``) when one is empty or blank or two name one class."""
    empty = [i for i, n in enumerate(names) if not n.strip()]
    if empty:
        raise TppError(f"{where}: class {empty[0]} has an empty name; give every class index a name.")
    clashes = name_clashes(names)
    if clashes:
        raise TppError(f"{where}: {', '.join(map(repr, clashes[0]))} name one class more than once; give each "
                       "class index its own name.")
    return names


def filter_classes(splits: dict, names: list, classes: list, path) -> tuple[dict, list]:
    unknown = [c for c in classes if c not in names]
    if unknown:
        raise TppError(f"data.classes {unknown} are not in '{path}' (classes: {', '.join(names)}).")
    old = [names.index(c) for c in classes]
    remap = {o: n for n, o in enumerate(old)}
    out = {}
    for split_name, split in splits.items():
        keep = np.isin(split.labels, old)
        out[split_name] = Split(split.images[keep], np.array([remap[v] for v in split.labels[keep]], dtype=np.int64))
    return out, list(classes)


def check_modality(modality: str | None, name: str, required: bool = False) -> str:
    """The dataset's DICOM modality code: unset is recorded as 'unknown' with a warning (an error where
    ``required``); an explicit 'unknown' is recorded without one."""
    if not modality or modality == "unknown":
        if required:
            raise TppError(f"dataset '{name}': set data.modality to a DICOM modality code "
                           f"({', '.join(sorted(KNOWN_MODALITIES - {'unknown'}))}).")
        if not modality:  # an explicit 'unknown' (a file mixing modalities) is the config's own choice
            warnings.warn(f"dataset '{name}' has no modality (data.modality); recorded as 'unknown'. "
                          "Modality checks between pre-training and fine-tuning will not work.")
        return "unknown"
    if modality not in KNOWN_MODALITIES:
        raise TppError(f"data.modality '{modality}' is not a known DICOM modality code "
                       f"({', '.join(sorted(KNOWN_MODALITIES))}).")
    return modality
