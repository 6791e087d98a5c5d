"""The adapter store: one folder per site, versioned adapter directories, an atomic pointer.

Layout::

    STORE/<site>/<version>/   an adapter directory (card, safetensors weights, head); version = content hash
    STORE/<site>/current      the served version's name, replaced with ``os.replace`` (never half-written)

Publishing copies only the files an adapter directory is made of, into a temporary folder that is
renamed into place, then moves the pointer. Site names are checked so that none can leave the store.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from tpp.adapter_dir import CARD, HEAD, read_card
from tpp.errors import TppError
from tpp.rundir import write_atomic

POINTER = "current"
PEFT_CONFIG = "adapter_config.json"
_SITE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_VERSION_RE = re.compile(r"^[0-9a-f]{16}$")


def check_site(site: str) -> str:
    """Return ``site`` if it is a safe folder name (letters, digits, ``_``, ``-``; at most 64), else fail."""
    if not isinstance(site, str) or not _SITE_RE.match(site):
        raise TppError(f"site name {site!r} is not allowed: use 1-64 letters, digits, '_' or '-', "
                       "starting with a letter or digit (no paths, dots or spaces).")
    return site


@dataclass(frozen=True)
class SiteVersion:
    """One published adapter: where it is and what its card says."""
    site: str
    version: str
    path: Path
    card: dict


def adapter_files(path: Path, card: dict) -> list[str]:
    """The files an adapter directory consists of (nothing else is copied into a store)."""
    names = [CARD, HEAD]
    if card.get("weights_file"):
        names.append(card["weights_file"])
    if (path / PEFT_CONFIG).is_file():
        names.append(PEFT_CONFIG)
    missing = [n for n in names if not (path / n).is_file()]
    if missing:
        raise TppError(f"adapter directory '{path}' lacks {', '.join(missing)}.")
    return sorted(names)


def content_version(path: Path, names: list[str]) -> str:
    """First 16 hex digits of sha256 over (file name, bytes) of the adapter's files."""
    digest = hashlib.sha256()
    for name in names:
        digest.update(name.encode() + b"\0")
        digest.update((path / name).read_bytes())
    return digest.hexdigest()[:16]


def _adapter_dir(source: str | Path) -> Path:
    """A run directory (with ``adapter/``) or an adapter directory itself."""
    source = Path(source)
    if (source / "adapter" / CARD).is_file():
        return source / "adapter"
    return source


def publish(source: str | Path, store: str | Path, site: str) -> SiteVersion:
    """Add the adapter of ``source`` (run dir or adapter dir) to ``store`` as a new version of ``site``
    and make it current. Publishing identical content again only moves the pointer."""
    check_site(site)
    path = _adapter_dir(source)
    card = read_card(path)  # refuses full_model baselines and non-adapters with a clear message
    if card.get("task", {}).get("type") not in ("classification", "segmentation"):
        raise TppError(f"'{path}' has no task head (stage {card.get('stage')!r}): only fine-tuned adapters are "
                       "served. Fine-tune it first (tpp run finetune ... adapter.init_from=...).")
    names = adapter_files(path, card)
    version = content_version(path, names)
    site_dir = Path(store) / site
    target = site_dir / version
    if not target.is_dir():
        site_dir.mkdir(parents=True, exist_ok=True)
        tmp = site_dir / f".{version}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.mkdir()
            for name in names:
                shutil.copyfile(path / name, tmp / name)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    write_atomic(site_dir / POINTER, version + "\n")
    return SiteVersion(site, version, target, card)


def sites(store: str | Path) -> list[str]:
    """Site names that have a current version, sorted."""
    root = _store_root(store)
    return sorted(p.name for p in root.iterdir() if p.is_dir() and _SITE_RE.match(p.name) and (p / POINTER).is_file())


def current(store: str | Path, site: str) -> SiteVersion:
    """The version ``site`` serves now (its card read and checked)."""
    check_site(site)
    site_dir = _store_root(store) / site
    pointer = site_dir / POINTER
    if not pointer.is_file():
        raise UnknownSite(site)
    try:
        version = pointer.read_text().strip()
    except UnicodeDecodeError:
        version = "<unreadable>"
    if not _VERSION_RE.match(version) or not (site_dir / version).is_dir():
        raise TppError(f"store pointer '{pointer}' names {version!r}, which is not a published version.")
    return SiteVersion(site, version, site_dir / version, read_card(site_dir / version))


def current_version(store: str | Path, site: str) -> str | None:
    """Just the pointer's content (cheap; used to notice a newly published version)."""
    try:
        return (Path(store) / check_site(site) / POINTER).read_text().strip()
    except FileNotFoundError:
        return None


def _store_root(store: str | Path) -> Path:
    root = Path(store)
    if not root.is_dir():
        raise TppError(f"adapter store '{root}' does not exist "
                       f"(tpp adapters publish RUN_DIR {root} --site S creates it).")
    return root


class UnknownSite(TppError):
    """No adapter is published for this site."""

    def __init__(self, site: str):
        super().__init__(f"site '{site}' has no published adapter in the store (tpp adapters ls STORE lists them).")
        self.site = site


def listing(store: str | Path, backbone_hash: str | None = None) -> list[dict]:
    """One row per site for ``tpp adapters ls``: version, method, modality, task, labels, metrics, size."""
    rows = []
    for site in sites(store):
        try:
            sv = current(store, site)
        except TppError as exc:  # one broken site must not hide the others
            reason = str(exc).replace(f"{Path(store)}/", "")  # paths relative to the store keep the table narrow
            rows.append({"site": site, "version": "?", "backbone_match": "UNREADABLE", "method": reason,
                         "modality": "", "task": "", "labels": "", "test": "-", "size_kib": "", "created": ""})
            continue
        card = sv.card
        metrics = card.get("metrics", {})  # test AUROC / Dice of the fine-tuning run
        test = next(((name, metrics[key]) for key, name in (("test", "AUROC"), ("test_dice", "Dice"))
                     if isinstance(metrics.get(key), float)), None)
        card_hash = card.get("backbone", {}).get("hash")
        match = "-" if backbone_hash is None else ("yes" if card_hash == backbone_hash else "NO")
        rows.append({
            "site": site, "version": sv.version, "backbone_match": match, "method": card.get("method"),
            "modality": card.get("modality"), "task": "/".join(card.get("task", {}).get("label_names", [])),
            "labels": card.get("data", {}).get("used", {}).get("images", ""),
            "test": f"{test[0]} {test[1]:.3f}" if test else "-",
            "size_kib": f"{card['size_bytes'] / 1024:.0f}" if isinstance(card.get("size_bytes"), int) else "?",
            "created": card.get("created", ""),
        })
    return rows


def check(store: str | Path, backbone_hash: str) -> list[str]:
    """Problems with the store against a backbone: one line per site that would be refused."""
    problems = []
    for site in sites(store):
        try:
            sv = current(store, site)
        except TppError as exc:
            problems.append(f"{site}: {exc}")
            continue
        card_backbone = sv.card.get("backbone", {})
        if card_backbone.get("hash") != backbone_hash:
            problems.append(f"{site}: version {sv.version} was trained on backbone {card_backbone.get('id')} "
                            f"(hash {str(card_backbone.get('hash'))[:12]}), not this one ({backbone_hash[:12]}).")
    return problems
