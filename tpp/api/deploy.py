"""tpp from Python, the deployment side: :func:`load` serves a fine-tuned adapter through the same
:class:`~tpp.serve.bank.AdapterBank` and image reader as ``tpp predict`` (so Python and the command line give the
same numbers), :class:`AdapterStore` manages a store as ``tpp adapters`` does, :func:`in_context` predicts from a
context set as ``tpp predict --context``. Everything heavy is imported inside the functions.
"""
from __future__ import annotations

import io
import numbers
import os
import re
import shutil
import tempfile
import weakref
from pathlib import Path

from tpp.api.runs import adapter_path, quiet
from tpp.errors import TppError


def path_arg(value, what: str) -> str:
    """``value`` as a path string, or a TppError naming the argument (``backbone=5`` was a raw TypeError)."""
    if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
        raise TppError(f"{what} must be a path or a name (str or os.PathLike), got {value!r}.")
    return os.fspath(value)


def count_arg(value, what: str, optional: bool = False) -> int | None:
    """``value`` as a whole number of at least 1 (None passes when ``optional``), else a TppError naming it."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:  # numpy integers too
        raise TppError(f"{what} must be a whole number, at least 1, got {value!r}.")
    return int(value)

# -- loading and predicting ----------------------------------------------------------------------------------

def load(adapter_dir, backbone=None, device: str = "cpu", precision: str = "fp32") -> "Model":
    """A fine-tuned adapter (its folder, its run's folder or a :class:`RunResult`) ready to predict.

    ``backbone``: the checkpoint folder or hub id it was trained on; ``None`` takes the one its card names
    when that resolves here (else a TppError saying to pass ``backbone=``). The adapter is checked and loaded
    exactly as ``tpp predict`` and ``tpp serve`` load a published one (content hash, card, backbone hash, no
    write into the backbone). ``device``: cpu (default), auto, cuda, cuda:N or mps; ``precision``: fp32, bf16
    or fp16."""
    from tpp.serve import store as adapter_store

    source = adapter_path(adapter_dir)
    # each file read once: the card checked here and the bytes loaded are those read (a store version folder's as
    # its content hash verified them), never a second read that could find others
    path, card, files = adapter_store.read_source_card(source, inspect=check_fine_tuned)
    backbone = path_arg(backbone, "backbone") if backbone is not None else card_backbone(path, card)
    folder = tempfile.mkdtemp(prefix="tpp-load-")
    try:
        site = adapter_store.publish(source, folder, "model", read=(path, files)).site
        model = Model(open_bank(backbone, folder, 1, device, precision), site, str(source))
    except BaseException as exc:
        shutil.rmtree(folder, ignore_errors=True)
        if isinstance(exc, TppError):  # name the adapter as given, not its private copy
            message = re.sub(rf"{re.escape(folder)}/model(/[0-9a-f]+)?|model@[0-9a-f]+", str(source), str(exc))
            raise TppError(message.replace("site 'model'", f"adapter '{source}'")) from None
        raise
    weakref.finalize(model, shutil.rmtree, folder, True)  # the private copy goes with the model
    return model


def fine_tuned_adapter(source: Path) -> Path:
    """The adapter folder of ``source`` (a run folder or the adapter folder itself) if it holds a fine-tuned
    adapter with a task head; else a TppError saying what it is (a TPP-stage adapter, a full-model baseline ...)."""
    from tpp.adapter_dir import CARD
    from tpp.adapter_read import read_adapter_dir

    path = source / "adapter" if (source / "adapter" / CARD).is_file() else source
    # not an adapter folder, or a full-model baseline: a clear error naming it
    check_fine_tuned(path, read_adapter_dir(path).card)
    return path


def check_fine_tuned(path: Path, card: dict) -> None:
    """A TppError naming ``path`` unless ``card`` (its card, read and checked) is a fine-tuned adapter's, with a
    task head."""
    from tpp.tasks import task_of_card

    if task_of_card(card) is None or "input" not in card:
        raise TppError(f"'{path}' is a {card.get('stage', '?')}-stage adapter without a task head: nothing to predict "
                       "with. Fine-tune from it first: tpp.finetune(CONFIG, {'adapter.init_from': "
                       f"'{path}'}}).")


def card_backbone(adapter: Path, card: dict | None = None) -> str:
    """The backbone the card of ``adapter`` names, when it is one this machine holds: a backbone shipped with tpp
    (``builtin:NAME``) or a local checkpoint folder (absolute, or relative to the adapter folder or the current
    one). A hub id in a card is never fetched on the card's word (a card is data from whoever made the adapter):
    pass it as ``backbone=``. Else a TppError saying to pass it. ``card``: the card, already read (else it is)."""
    from tpp.adapter_read import read_adapter_dir
    from tpp.backbones import BUILTIN_PREFIX, backbone_config

    named = (read_adapter_dir(adapter).card if card is None else card).get("backbone", {}).get("id")
    if not isinstance(named, str) or not named:
        raise TppError(f"the card of '{adapter}' names no backbone; pass backbone=<checkpoint folder or hub id>.")
    beside = Path(adapter) / named  # a path relative to the adapter folder
    candidates = [str(beside)] if not Path(named).is_absolute() and beside.is_dir() else []
    candidates += [named] if named.startswith(BUILTIN_PREFIX) or Path(named).is_dir() else []
    for candidate in candidates:
        try:
            with quiet():
                backbone_config(candidate)  # a folder with config.json, or a shipped backbone
            return candidate
        except TppError:
            continue
    raise TppError(f"the backbone named by the card of '{adapter}' ('{named}') is not available here; pass "
                   "backbone=<the checkpoint folder or hub id it was trained on> to tpp.load.")


def open_bank(backbone: str, store: str, max_resident: int = 16, device: str = "cpu", precision: str = "fp32"):
    """The :class:`~tpp.serve.bank.AdapterBank` of ``backbone`` over ``store``, loaded quietly (``tpp predict``
    and :class:`Model` use this)."""
    from tpp.serve.bank import AdapterBank

    with quiet():
        return AdapterBank(backbone, store, max_resident, device=device, precision=precision)


class Model:
    """One site adapter on its backbone: ``predict(images)``. Made by :func:`load` or
    :meth:`AdapterStore.load`; holds the backbone in memory."""

    def __init__(self, bank, site: str, source: str, prepared=None):
        self.bank, self.site_name, self.source = bank, site, source
        with quiet():  # checked, loaded and tried on one image here, not at the first predict; ``prepared``: its
            self.site = bank.site(site, prepared)  # files as the bank's prepare read them for the caller

    @property
    def card(self) -> dict:
        """The adapter's card (method, task, labels, metrics, decision threshold, input pipeline ...)."""
        return self.site.card

    @property
    def labels(self) -> list[str]:
        return self.site.label_names

    @property
    def device(self):
        return self.bank.device

    def __repr__(self) -> str:
        task = self.card.get("task", {}).get("type", "?")
        return (f"Model('{self.source}', method={self.card.get('method')}, task={task}, labels={self.labels}, "
                f"device={self.device})")

    def predict(self, images, *, batch_size: int = 64, frame: int | None = None, slice: str | None = None,
                window: tuple[float, float] | None = None):
        """Predictions of one image or a list of them: file paths (PNG, JPEG, .npy, DICOM, NIfTI), PIL images
        or numpy arrays (H, W) or (H, W, 3), uint8 or floats in [0, 1], read by the same reader as
        ``tpp predict``. ``frame``, ``slice`` ("2:40") and ``window`` ((center, width)) as its options.

        Returns a dict per image (a list for a list): classification ``label`` (at the card's threshold for two
        classes), ``probabilities`` {label: p}, and for two classes ``positive_class``, ``threshold`` and
        ``threshold_source``; segmentation ``mask`` (uint8 class indices (H, W) at the image's size),
        ``classes`` and ``pixels`` per class. The numbers are those ``tpp predict`` writes."""
        from tpp.serve import images as readers

        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        batch_size = count_arg(batch_size, "batch_size")
        from tpp.serve.predict import site_read_options

        site = self.bank.site(self.site_name)
        options = site_read_options(site, {"frame": frame, "slice_spec": slice, "window": window}, set())
        arrays = [read_image(item, i, **options) for i, item in enumerate(items)]
        results = []
        with quiet():
            for start in range(0, len(arrays), batch_size):
                chunk = arrays[start:start + batch_size]
                tensors = [readers.to_model_input(a, site.input_rule) for a in chunk]
                for array, out in zip(chunk, self.bank.predict([site] * len(chunk), tensors)):
                    results.append(_entry(site, site.task.per_image(out, array)))
        return results[0] if single else results


def _entry(site, result) -> dict:
    """The service's JSON entry of one image, with a mask as the array itself (not run-length encoded)."""
    import numpy as np

    entry = site.task.json_entry(result, site.label_names)
    if isinstance(result, np.ndarray):
        entry = dict(entry, mask=result, classes=site.label_names)
    return entry


def read_image(item, index: int = 0, **options):
    """One image as ``tpp predict`` reads it -> uint8 (H, W) or (H, W, 3). A path is read from disk; an array
    or PIL image goes through the same decoder as a ``.npy`` file (values, shape and size checked alike)."""
    import numpy as np

    from tpp.serve import images as readers

    options = {k: v for k, v in options.items() if v is not None}
    try:
        if isinstance(item, (str, os.PathLike)):
            return readers.read(item, **options)
        name = f"image {index} ({type(item).__name__})"
        if _is_pil(item):
            from tpp.data.pixels import training_mode

            item = np.array(training_mode(item, name))
        if not isinstance(item, np.ndarray):
            raise TppError(f"{name}: expected a file path, a PIL image or a numpy array.")
        if item.dtype.kind in "OUSV":  # Python objects or text: no pixel values
            raise TppError(f"{name}: an array of dtype {item.dtype} is no image; give numbers (uint8, or floats in "
                           "[0, 1]).")
        if item.ndim == 4 or (item.ndim == 3 and item.shape[-1] not in (1, 3, 4)):
            raise TppError(f"{name}: shape {item.shape} is not one image ((H, W) or (H, W, 3)); pass a stack of "
                           "images as a list: model.predict(list(images)).")
        buffer = io.BytesIO()
        np.save(buffer, item, allow_pickle=False)
        return readers.decode(buffer.getvalue(), name, **options)  # recognised as .npy by its magic bytes
    except readers.ImageError as exc:
        raise TppError(str(exc)) from None


def _is_pil(item) -> bool:
    import sys

    return "PIL.Image" in sys.modules and isinstance(item, sys.modules["PIL.Image"].Image)


# -- the adapter store -----------------------------------------------------------------------------------------

class AdapterStore:
    """A folder of versioned site adapters (``tpp adapters``; layout in :mod:`tpp.serve.store`): each site's
    versions are content-hashed folders and one atomic ``current`` pointer says which one is served.

    ``store = tpp.AdapterStore("store")``; ``store.publish(result.adapter, "hospital_a")``; ``store.list()``;
    ``store.check(backbone)``; ``store.load("hospital_a", backbone)``. The folder is created by the first
    publish."""

    def __init__(self, path):
        self.path = Path(path_arg(path, "the store"))

    def __repr__(self) -> str:
        return f"AdapterStore('{self.path}')"

    def publish(self, source, site: str, *, backbone=None):
        """Add the adapter of ``source`` (adapter folder, run folder or :class:`RunResult`) as a new version of
        ``site`` and make it current; publishing identical content again only moves the pointer. With
        ``backbone``, it is first loaded on it as serving would (a TppError if it does not load; nothing is
        written). Returns the :class:`~tpp.serve.store.SiteVersion` (site, version, path, card)."""
        from tpp.serve import store as adapter_store

        source = adapter_path(source)
        read = check_loads(source, path_arg(backbone, "backbone")) if backbone is not None else None
        return adapter_store.publish(source, self.path, site, read=read)  # the bytes the dry load took, if any

    def sites(self) -> list[str]:
        """The sites with a current version, sorted."""
        from tpp.serve import store as adapter_store

        return adapter_store.sites(self.path)

    def list(self, backbone=None) -> list[dict]:
        """One row per site (the table of ``tpp adapters ls``): site, version, method, modality, task labels,
        test metric, size, created; with ``backbone``, ``backbone_match`` says whether each was trained on it."""
        from tpp.serve import store as adapter_store

        digest = None
        if backbone is not None:
            from tpp.backbones import load_backbone

            with quiet():
                digest = load_backbone(path_arg(backbone, "backbone"))[1].hash
        return adapter_store.listing(self.path, digest)

    def check(self, backbone) -> dict[str, str | None]:
        """Load every site's current version on ``backbone`` as ``tpp serve`` would, then unload it (``tpp
        adapters check``): {site: None when it loads, else why it is refused}."""
        with quiet():
            return open_bank(path_arg(backbone, "backbone"), str(self.path), 1).check_store()

    def load(self, site: str, backbone=None, device: str = "cpu", precision: str = "fp32") -> Model:
        """The current version of ``site`` as a :class:`Model` (``backbone`` as in :func:`load`)."""
        from tpp.serve import store as adapter_store

        opened = adapter_store.open_version(self.path, site)  # read once, its content hash checked
        backbone = card_backbone(opened.path, opened.card) if backbone is None else path_arg(backbone, "backbone")
        bank = open_bank(backbone, str(self.path), 1, device, precision)
        return Model(bank, site, f"{self.path}/{site}", bank.prepare(site, opened=opened))


def check_loads(source, backbone: str, read: tuple[Path, dict[str, bytes]] | None = None) -> tuple[Path, dict]:
    """Load the adapter of ``source`` on ``backbone`` exactly as serving would (in a private temporary store),
    then drop it; a TppError naming ``source`` when it does not load. Returns (its folder, its files' bytes) as read
    (:func:`tpp.serve.store.read_source`, each file once; ``read``: as the caller read them) and loaded: publish
    those (``read=``), not a second read that could find other bytes."""
    from tpp.serve import store as adapter_store

    read = adapter_store.read_source(source) if read is None else read
    with tempfile.TemporaryDirectory(prefix="tpp-publish-check-") as tmp:
        adapter_store.publish(source, tmp, "check", read=read)
        with quiet():
            reason = open_bank(backbone, tmp, 1).check_store()["check"]
    if reason:
        raise TppError(f"'{source}' does not load on backbone '{backbone}': "
                       f"{adapter_store.as_source(reason, tmp, 'check', str(source))}")
    return read


# -- in-context prediction -------------------------------------------------------------------------------------

def in_context(context, images, backbone=None, method: str = "prototype", *, k: int | None = None,
               adapter=None, image_size: int | None = None, max_k: int = 256, device: str = "cpu", model=None,
               precision: str = "fp32"):
    """Predict ``images`` from a context set of labelled examples, with no training (``tpp predict --context``).

    ``context``: a folder (class sub-folders, or ``images/`` + ``masks/``), a CSV (``image,label`` or
    ``image,mask``), or a list of ``(image, label)`` / ``(image, mask)`` pairs (images as for
    :meth:`Model.predict`; masks 0/1 or 0/255 arrays, or files as ``pathlib.Path``: a ``str`` in a pair is a
    class label). ``images``: one image or a list. ``backbone``:
    default ``builtin:mae-vit-tiny-med``; ``adapter``: a TPP / LoRA adapter folder whose features to use;
    ``method``: ``prototype`` (nearest class centroid / per-patch prototypes) or ``knn`` (``k`` neighbours,
    default about sqrt(K)), or ``learned`` (the in-context model in the folder ``model``, from ``tpp run
    incontext``); at most ``max_k`` examples; ``precision`` fp32, bf16 or fp16 (GPU) for the backbone. Returns
    a dict per image (a list for a list), as
    :meth:`Model.predict` does: ``label`` and ``probabilities``, or ``mask`` (uint8 (H, W)), ``classes`` and
    ``pixels``. No weight changes (the backbone is frozen and never written)."""
    from tpp.backbones import DEFAULT_BACKBONE
    from tpp.incontext.context import ContextSet, check, from_pairs, read_context
    from tpp.incontext.features import load_extractor
    from tpp.incontext.predict import check_method, prepare
    from tpp.serve.adapter_features import with_adapter

    check_method(method)  # before any file is read or the backbone loaded
    k, image_size = count_arg(k, "k", optional=True), count_arg(image_size, "image_size", optional=True)
    if context is None:
        raise TppError("context must be a folder, a CSV, or a list of (image, label) / (image, mask) pairs, not None.")
    if isinstance(context, (str, os.PathLike)):
        ctx = read_context(context, max_k)
    elif isinstance(context, ContextSet):
        ctx = check(context, max_k)
    else:
        ctx = from_pairs(context, read_image, max_k)
    single = not isinstance(images, (list, tuple))
    arrays = [read_image(item, i) for i, item in enumerate([images] if single else list(images))]
    with quiet():
        extractor = load_extractor(path_arg(backbone, "backbone") if backbone is not None else DEFAULT_BACKBONE, device,
                                   precision)
        if adapter is not None:
            extractor = with_adapter(extractor, path_arg(adapter, "adapter"))
        prepared = prepare(ctx, extractor, method, k, image_size,
                           model=os.fspath(model) if isinstance(model, (str, os.PathLike)) else model)
        results = []
        for result in prepared.predict(arrays):
            entry = prepared.json_entry(result)
            if ctx.task != "classification":
                entry = dict(entry, mask=result, classes=prepared.classes)
            results.append(entry)
    return results[0] if single else results
