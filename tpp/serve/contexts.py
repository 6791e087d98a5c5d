"""Context sets stored like adapters: content-hashed versions with a card, verified on every load.

Layout (inside an adapter store; ``_contexts`` can never be a site name, so adapters and contexts do not mix)::

    STORE/_contexts/<site>/<version>/   context.json (task, classes, examples), README.md (card), 0000.png ...,
                                        0000_mask.png ... (segmentation); version = content hash of those files
    STORE/_contexts/<site>/current      the served version's name (replaced atomically)

Loading (:func:`open_context`) reads every file once, refuses any file that is not part of a context set, a
content hash that differs from the version, more than ``max_k`` examples (before any image is decoded), an
image over the pixel budget (from its header), a set with one class or without foreground, and (when a
backbone is given) a card published for another backbone.
"""
from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tpp.adapter_dir import card_json
from tpp.capped_read import METADATA_LIMIT, list_folder
from tpp.errors import TppError
from tpp.safe_write import ESCAPED_BYTES
from tpp.incontext.context import CLASSIFICATION, MAX_K, SEGMENTATION, ContextSet, binary_mask, check, read_context
from tpp.serve import images as readers
from tpp.serve import store as adapter_store

FOLDER = "_contexts"
MANIFEST, CARD = "context.json", "README.md"
FORMAT = "tpp-context/1"
_FILE_RE = re.compile(r"[0-9]{4}(_mask)?\.png")  # fullmatch: ASCII digits, no trailing newline
TEXT_LIMIT = METADATA_LIMIT  # context.json and README.md: far above what 256 examples need


@dataclass
class ContextVersion:
    """A published (or opened) context set: site, version, folder, manifest and (opened) the checked set."""
    site: str
    version: str
    path: Path
    manifest: dict
    ctx: ContextSet | None = None


def _root(store: str | Path) -> Path:
    root = Path(store)
    if root.exists() and not root.is_dir():
        raise TppError(f"store '{store}' is a file, not a folder.")
    return root / FOLDER


def png(array: np.ndarray) -> bytes:
    """A uint8 image (H, W) or (H, W, 3) as the PNG bytes a store version keeps."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
    return buffer.getvalue()


def card_text(ctx: ContextSet, backbone: dict, version_note: str = "") -> str:
    """The README.md card: task, K, classes with counts, backbone, image sizes."""
    sizes = sorted({f"{a.shape[1]}x{a.shape[0]}" for a in ctx.images})
    if ctx.task == CLASSIFICATION:
        counts = {c: ctx.labels.count(c) for c in ctx.classes}
        classes = ", ".join(f"{c} ({n})" for c, n in counts.items())
    else:
        classes = f"background / foreground ({sum(int(m.any()) for m in ctx.masks)} of {ctx.k} masks non-empty)"
    return "\n".join([
        "---", "tags: [tpp, in-context, context-set]", "---", "", "# tpp context set", "",
        "A context set of labelled examples for training-free in-context prediction (`tpp predict --context`, "
        "`tpp serve`). No weights: the task is defined by these examples.", "",
        f"- task: {ctx.task}", f"- K (examples): {ctx.k}", f"- classes: {classes}",
        f"- backbone: {backbone.get('id')} (hash {backbone.get('hash')})",
        f"- image sizes (width x height): {', '.join(sizes[:10])}{' ...' if len(sizes) > 10 else ''}",
        f"- channels: {'RGB' if ctx.channels == 3 else 'gray'}", version_note, ""])


def publish(source: str | Path, store: str | Path, site: str, backbone: dict, max_k: int = MAX_K,
            limits: readers.PixelLimits = readers.DEFAULT_LIMITS) -> ContextVersion:
    """Read and check the context folder / CSV ``source``, write it as a new version of ``site`` and make it
    current. ``backbone``: {"id", "hash"} recorded in the manifest and card. Identical content only moves
    the pointer."""
    adapter_store.check_site(site)
    ctx = read_context(source, max_k, limits)
    files, examples = {}, []
    for i in range(ctx.k):
        entry = {"image": f"{i:04d}.png"}
        files[entry["image"]] = png(ctx.images[i])
        if ctx.task == SEGMENTATION:
            entry["mask"] = f"{i:04d}_mask.png"
            files[entry["mask"]] = png(ctx.masks[i] * 255)
        else:
            entry["label"] = ctx.labels[i]
        examples.append(entry)
    manifest = {"format": FORMAT, "task": ctx.task, "classes": ctx.classes, "k": ctx.k,
                "backbone": {"id": str(backbone.get("id")), "hash": str(backbone.get("hash"))}, "examples": examples}
    files[MANIFEST] = json.dumps(manifest, indent=1, sort_keys=True).encode()
    files[CARD] = card_text(ctx, manifest["backbone"]).encode("utf-8", ESCAPED_BYTES)  # a non-UTF-8 folder name
    version, target = adapter_store.write_version(_root(store) / site, files)
    return ContextVersion(site, version, target, manifest, ctx)


def sites(store: str | Path) -> list[str]:
    """Context sites with a current version, sorted (none when the store has no contexts); a folder of them that
    cannot be listed is a :class:`TppError` naming it, and a folder named like no site is none (as
    :func:`tpp.serve.store.sites`: listing or checking the store would refuse all of it for that one name)."""
    root = _root(store)
    if not root.is_dir():
        return []
    return sorted(e.name for e in list_folder(root) if adapter_store._SITE_RE.fullmatch(e.name)
                  and not e.is_symlink() and adapter_store.has_pointer(Path(e.path)))


def current_version(store: str | Path, site: str) -> str | None:
    """The pointer's version name, or None if ``site`` has no published context set."""
    root = _root(store)
    return adapter_store.current_version(root, site) if root.is_dir() else None


def open_context(store: str | Path, site: str, max_k: int = MAX_K,
                 limits: readers.PixelLimits = readers.DEFAULT_LIMITS,
                 backbone_hash: str | None = None) -> ContextVersion:
    """The current version of ``site``, verified (module docstring), with its checked :class:`ContextSet`. A set
    withdrawn or deleted while it is read is :class:`UnknownContext`, as one never published."""
    adapter_store.check_site(site)
    if current_version(store, site) is None:
        raise UnknownContext(site)
    try:
        return _open_current(store, site, max_k, limits, backbone_hash)
    except TppError:
        if current_version(store, site) is None:  # its pointer went away meanwhile: the set is gone, not damaged
            raise UnknownContext(site) from None
        raise


def _open_current(store: str | Path, site: str, max_k: int, limits: readers.PixelLimits,
                  backbone_hash: str | None) -> ContextVersion:
    """:func:`open_context` once the pointer was found."""
    root = _root(store)
    if root.is_symlink():
        raise TppError(f"'{root}' is a symbolic link; refused.")
    site_dir, version = adapter_store._pointed_version(root, site)
    folder = site_dir / version
    where = f"context set {site}@{version}"
    names = [entry.name for entry in list_folder(folder)]
    if len(names) > 2 * max_k + 2:
        raise TppError(f"{where} holds {len(names)} files, more than a set of at most {max_k} examples can; "
                       "refused (--max-context).")
    files = {}
    for name in names:
        if name not in (MANIFEST, CARD) and not _FILE_RE.fullmatch(name):
            raise TppError(f"'{folder}' holds '{name[:64]}', which is not part of a context set; refused.")
        files[name] = adapter_store._read_regular(folder / name, limit=_file_limit(name, limits))
    if adapter_store.content_hash(files) != version:
        raise TppError(f"'{folder}': the files' content hash does not match version {version}; they changed after "
                       "publishing (tampering or disk corruption). Refused; publish the context set again.")
    manifest = _manifest(files, where, max_k)
    recorded = manifest["backbone"].get("hash")
    if backbone_hash is not None and recorded != backbone_hash:
        raise TppError(f"{where} was published for backbone {manifest['backbone'].get('id')} (hash "
                       f"{str(recorded)[:12]}), not the loaded one ({backbone_hash[:12]}); publish it again with "
                       "--backbone set to this backbone.")
    ctx = _context(files, manifest, where, limits)
    return ContextVersion(site, version, folder, manifest, check(ctx, max_k))


def _manifest(files: dict, where: str, max_k: int) -> dict:
    try:
        manifest = card_json(files.get(MANIFEST, b"").decode("utf-8"))  # NaN / Infinity refused
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise TppError(f"{where}: {MANIFEST} is missing or not valid JSON; refused.") from None
    if not isinstance(manifest, dict):
        raise TppError(f"{where}: {MANIFEST} is not a {FORMAT} manifest; refused.")
    examples = manifest.get("examples")
    if manifest.get("format") != FORMAT or manifest.get("task") not in (CLASSIFICATION, SEGMENTATION) or \
            not isinstance(examples, list) or not isinstance(manifest.get("backbone"), dict):
        raise TppError(f"{where}: {MANIFEST} is not a {FORMAT} manifest; refused.")
    if len(examples) > max_k:
        raise TppError(f"{where} holds {len(examples)} examples, more than the maximum of {max_k} (--max-context); "
                       "refused.")
    return manifest


def _context(files: dict, manifest: dict, where: str, limits) -> ContextSet:
    """Decode the manifest's images (each checked against ``limits`` from its header first)."""
    seg = manifest["task"] == SEGMENTATION
    keys = ("image", "mask") if seg else ("image", "label")
    for entry in manifest["examples"]:
        if not isinstance(entry, dict) or any(not isinstance(entry.get(k), str) for k in keys) or \
                entry["image"] not in files or (seg and entry["mask"] not in files):
            raise TppError(f"{where}: an example of {MANIFEST} is malformed or names a missing file; refused.")
    try:
        readers.check_request([(files[e[k]], e[k]) for e in manifest["examples"] for k in keys[:1 + seg]], limits)
        images = [readers.decode(files[e["image"]], e["image"], limits=limits) for e in manifest["examples"]]
        masks = [binary_mask(readers.decode(files[e["mask"]], e["mask"], limits=limits), e["mask"])
                 for e in manifest["examples"]] if seg else None
    except readers.ImageError as exc:
        raise TppError(f"{where}: {exc}; refused.") from None
    labels = None if seg else [e["label"] for e in manifest["examples"]]
    return ContextSet(manifest["task"], images, labels, masks, [e["image"] for e in manifest["examples"]], where)


def _file_limit(name: str, limits: readers.PixelLimits) -> int:
    """Bytes read at most from one file of a version: a PNG within the pixel budget (8 bytes a pixel covers
    16-bit RGBA) plus headers, or ``TEXT_LIMIT`` for the manifest and the card."""
    return TEXT_LIMIT if name in (MANIFEST, CARD) else 8 * limits.max_pixels + TEXT_LIMIT


def listing(store: str | Path) -> list[dict]:
    """One row per context site for ``tpp context list`` (from the manifests, hashes not re-checked)."""
    rows = []
    for site in sites(store):
        version = current_version(store, site)
        try:  # the pointer checked (a version name, inside the store) as open_context checks it
            site_dir, version = adapter_store._pointed_version(_root(store), site)
            manifest = card_json(adapter_store._read_regular(site_dir / version / MANIFEST,
                                                             limit=TEXT_LIMIT).decode("utf-8"))
            classes = manifest.get("classes", [])
            rows.append({"site": site, "version": version, "task": manifest.get("task"), "k": manifest.get("k"),
                         "classes": "/".join(map(str, classes if isinstance(classes, list) else [classes])),
                         "backbone": str(manifest.get("backbone", {}).get("hash"))[:12]})
        except (TppError, ValueError, AttributeError) as exc:  # a manifest that is no mapping: AttributeError
            rows.append({"site": site, "version": version, "task": "UNREADABLE", "k": "", "classes": str(exc)[:80],
                         "backbone": ""})
    return rows


def check_store(store: str | Path, max_k: int = MAX_K, backbone_hash: str | None = None,
                limits: readers.PixelLimits = readers.DEFAULT_LIMITS) -> dict[str, str | None]:
    """Open every context site as the service would: {site: None if it loads, else why it is refused}."""
    results = {}
    for site in sites(store):
        try:
            open_context(store, site, max_k, limits, backbone_hash)
            results[site] = None
        except TppError as exc:
            results[site] = str(exc)
    return results


class UnknownContext(TppError):
    """No context set is published under this name."""

    def __init__(self, site: str):
        super().__init__(f"no context set is published as '{site}' (tpp context list STORE lists them).")
        self.site = site


class Refusals:
    """The context-set versions a server refused, with their reason, until the site's pointer moves.

    A stored set that fails verification (tampered files, another backbone, over a limit) is read in full to find
    out; without this memo every request naming it would read and hash it again. A version's files never change
    legitimately (its name is their content hash), so its refusal stands until another version is published
    (or rolled back to). At most ``size`` versions are remembered, the oldest forgotten first. Thread-safe: the
    service opens sets in threads, several at once."""

    def __init__(self, size: int = 64):
        import threading
        from collections import OrderedDict

        self.size, self._memo = size, OrderedDict()  # (site, version) -> reason
        self._lock = threading.Lock()  # guards _memo, never held while files are read

    def open(self, store: str | Path, site: str, *args) -> ContextVersion:
        """:func:`open_context` ``(store, site, *args)``, or the remembered refusal of the current version."""
        version = current_version(store, site)
        with self._lock:
            reason = self._memo.get((site, version))
            if reason is not None:
                self._memo.move_to_end((site, version))
        if reason is not None:
            raise TppError(reason)
        try:
            return open_context(store, site, *args)
        except UnknownContext:
            raise
        except TppError as exc:
            if version is not None and current_version(store, site) == version:  # not a pointer moving meanwhile
                self._remember(site, version, str(exc))
            raise

    def _remember(self, site: str, version: str, reason: str) -> None:
        with self._lock:
            self._memo[(site, version)] = reason
            while len(self._memo) > self.size:
                self._memo.popitem(last=False)
