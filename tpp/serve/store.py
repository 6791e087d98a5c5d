"""The adapter store: one folder per site, versioned adapter directories, an atomic pointer.

Layout::

    STORE/<site>/<version>/   an adapter directory (card, safetensors weights, head, README.md model card);
                              version = content hash of those files
    STORE/<site>/current      the served version's name, replaced with ``os.replace`` (never half-written)

Publishing reads the adapter's files once, checks them (:func:`tpp.serve.integrity.check_adapter`), and writes
those very bytes into a temporary folder that is renamed into place, then moves the pointer. Loading
(:func:`open_version`) reads a version's files once and re-checks their content hash before anything is
used, so flipped bytes are refused, not served under the old version id. Site names are checked, and
no path of the store may be a symbolic link or lead outside the store root.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path

from tpp.adapter_dir import CARD, HEAD, PEFT_CONFIG
from tpp.adapter_read import content_hash, is_version_folder, parse_card, read_adapter_dir, read_version_folder
from tpp.capped_read import list_folder
from tpp.capped_read import read_regular as _read_regular
from tpp.errors import TppError
from tpp.model_card import README
from tpp.serve.integrity import check_adapter
from tpp.run_folder import damaged_status, run_state
from tpp.safe_write import write_atomic

POINTER = "current"
POINTER_LIMIT = 64  # bytes read at most from a pointer (a version name and a newline)
_SITE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
ISO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[0-9.:+Z-]*")  # a card's created time
_VERSION_RE = re.compile(r"^[0-9a-f]{16}$")


def check_site(site: str) -> str:
    """Return ``site`` if it is a safe folder name (letters, digits, ``_``, ``-``; at most 64), else fail."""
    if not isinstance(site, str) or not _SITE_RE.fullmatch(site):
        raise TppError(f"site name {site!r} is not allowed: use 1-64 letters, digits, '_' or '-', "
                       "starting with a letter or digit (no paths, dots or spaces).")
    return site


@dataclass(frozen=True)
class SiteVersion:
    """One published adapter: where it is, what its card says and (from :func:`open_version`) the bytes
    of its files, whose content hash matched the version."""
    site: str
    version: str
    path: Path
    card: dict
    files: dict = field(default_factory=dict, repr=False, compare=False)


def adapter_files(path: Path, card: dict, held: dict[str, bytes] | None = None) -> list[str]:
    """The files an adapter directory consists of (nothing else is copied into a store); ``held``: the folder's
    files already read (a version folder's, verified), looked up there instead of on disk."""
    present = (lambda name: name in held) if held is not None else (lambda name: (path / name).is_file())
    names = [CARD, HEAD]
    if card.get("weights_file"):
        names.append(card["weights_file"])
    names += [name for name in (PEFT_CONFIG, README) if present(name)]
    missing = [n for n in names if not present(n)]
    if HEAD in missing and card.get("stage") not in (None, "finetune"):  # e.g. a TPP parent: no task head yet
        raise TppError(f"adapter directory '{path}' lacks {HEAD}: it is a {card.get('stage')!r}-stage adapter with "
                       f"no task head, and only fine-tuned adapters are published. Fine-tune it first (tpp run "
                       f"finetune ... adapter.init_from={path}).")
    if missing:
        raise TppError(f"adapter directory '{path}' lacks {', '.join(missing)}.")
    return sorted(names)


def adapter_dir_of(source: str | Path) -> Path:
    """A run directory (with ``adapter/``) or an adapter directory itself. A run directory whose run did not
    succeed is refused: its ``adapter/`` is from an earlier state (an extension of a finished run that failed)."""
    source = Path(source)
    if (source / "adapter" / CARD).is_file():
        state = run_state(source)
        if state["damaged"]:
            raise TppError(f"'{source}' {damaged_status(source, state)}, so whether its adapter/ is that run's "
                           f"result is unknown. Publish '{source / 'adapter'}' itself if it is the one you want.")
        status = state["status"]
        if status not in (None, "succeeded"):
            raise TppError(f"the run in '{source}' is {status}, so its adapter/ is not that run's result (it is "
                           "from before; an interrupted extension leaves it so). Resume it (train.resume=auto) "
                           f"or publish '{source / 'adapter'}' itself if that earlier adapter is the one you want.")
        return source / "adapter"
    return source


def read_source(source: str | Path) -> tuple[Path, dict[str, bytes]]:
    """The adapter directory of a run (or the directory itself) and its files' bytes, each read once
    (:func:`read_source_card`)."""
    path, _, files = read_source_card(source)
    return path, files


def read_source_card(source: str | Path, inspect=None) -> tuple[Path, dict, dict[str, bytes]]:
    """The adapter directory of a run (or the directory itself), its card and its files' bytes, each file read once:
    the card parsed and checked is the card's bytes returned; a store version folder's (named by 16 hex digits) are
    the bytes its content hash verified (a folder whose files changed since publishing is refused, naming it), so a
    file swapped after that read is never what gets published or loaded. Full-model baselines and non-adapters are
    refused with a clear message. ``inspect(path, card)``, when given, runs on the card before the folder's other
    files are looked for (a caller's own refusal of what the card says comes first)."""
    path = adapter_dir_of(source)
    card, read, _ = read_adapter_dir(path, follow=False)  # another folder's card: never through a link
    if inspect is not None:
        inspect(path, card)
    names = adapter_files(path, card, read if is_version_folder(path) else None)
    return path, card, {name: read[name] if name in read else _read_regular(path / name) for name in names}


def version_source(sv: SiteVersion) -> tuple[Path, dict[str, bytes]]:
    """(folder, files) of a version :func:`open_version` read, as :func:`read_source` gives them for that folder
    (the files an adapter consists of), from the bytes its content hash verified: nothing is read again."""
    return sv.path, {name: sv.files[name] for name in adapter_files(sv.path, sv.card, sv.files)}


def publish(source: str | Path, store: str | Path, site: str,
            read: tuple[Path, dict[str, bytes]] | None = None) -> SiteVersion:
    """Add the adapter of ``source`` (run dir or adapter dir) to ``store`` as a new version of ``site``
    and make it current, after :func:`tpp.serve.integrity.check_adapter` passed on the very bytes that are
    written. Publishing identical content again only moves the pointer. ``read``: (folder, files) of ``source``
    as :func:`read_source` gave them to a caller that checked them already (a dry load): those bytes are
    published, nothing is read again."""
    check_site(site)
    if Path(store).exists() and not Path(store).is_dir():
        raise TppError(f"adapter store '{store}' is a file, not a folder.")
    path, files = read_source(source) if read is None else read
    card = check_adapter(files, str(path)).card
    version, target = write_version(Path(store) / site, files)
    return SiteVersion(site, version, target, card)


def write_version(site_dir: Path, files: dict[str, bytes]) -> tuple[str, Path]:
    """Write ``files`` as the version folder named by their content hash under ``site_dir`` (a temp folder
    renamed into place: it appears whole or not at all; identical content is not written again) and make it
    current. Returns (version, its folder)."""
    version = content_hash(files)
    if site_dir.is_symlink() or (site_dir.exists() and not site_dir.is_dir()):
        raise TppError(f"'{site_dir}' is not a plain folder of the store.")
    target = site_dir / version
    if not holds_exactly(target, files):  # absent, or damaged since it was written: written (again) whole
        site_dir.mkdir(parents=True, exist_ok=True)
        tmp = site_dir / f".{version}.{os.getpid()}.tmp"
        damaged = site_dir / f".{version}.{os.getpid()}.damaged.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.mkdir()
            for name, data in files.items():
                (tmp / name).write_bytes(data)
            if target.exists():
                os.replace(target, damaged)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(damaged, ignore_errors=True)
    write_atomic(site_dir / POINTER, version + "\n")
    return version, target


def versions(store: str | Path, site: str) -> list[tuple[str, str | None]]:
    """The version folders of ``site`` as (version, when its adapter was created or None), newest first: by the
    card's ``created`` (a copied or restored store keeps it, unlike the folders' times), then by modification
    time for versions whose card does not say."""
    check_site(site)
    folder = _store_root(store) / site
    if not folder.is_dir():
        raise UnknownSite(site)
    found = [(e, created(Path(e.path))) for e in list_folder(folder)  # unlistable: a TppError naming the folder
             if _VERSION_RE.fullmatch(e.name) and _is_folder(e)]
    return [(e.name, when) for e, when in sorted(found, key=lambda f: (f[1] or "", _mtime(f[0])), reverse=True)]


def _is_folder(entry: os.DirEntry) -> bool:
    """Whether a listed entry is a folder itself (not a link to one); False when it cannot be told (gone since)."""
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


def _mtime(entry: os.DirEntry) -> int:
    try:
        return entry.stat(follow_symlinks=False).st_mtime_ns
    except OSError:  # removed since it was listed
        return 0


def created(version_folder: Path) -> str | None:
    """The ``created`` time (ISO 8601) of a version's card, or None when the card cannot say (only listed by this,
    never trusted: loading a version checks it whole)."""
    try:
        when = json.loads(_read_regular(version_folder / CARD)).get("created")
    except (TppError, ValueError, AttributeError):
        return None
    return when if isinstance(when, str) and ISO_TIME.fullmatch(when) else None


def make_current(store: str | Path, site: str, version: str, opened: SiteVersion | None = None) -> SiteVersion:
    """Point ``site`` at ``version``, one it already holds (a rollback), after its files passed the same checks
    as at publishing (content hash, :func:`tpp.serve.integrity.check_adapter`). ``opened``: that version as
    :func:`open_version` read it for the caller (a dry load's bytes): those bytes are checked, nothing is read again."""
    if opened is not None and (opened.site, opened.version) != (site, version):
        raise ValueError(f"opened is {opened.site}@{opened.version}, not {site}@{version}")
    sv = open_version(store, site, version) if opened is None else opened
    check_adapter(sv.files, str(sv.path))
    write_atomic(_store_root(store) / site / POINTER, version + "\n")
    return sv


def holds_exactly(folder: Path, files: dict[str, bytes]) -> bool:
    """Whether ``folder`` is a plain folder holding exactly ``files`` (names and bytes); a :class:`TppError` naming
    it when it cannot be listed."""
    if folder.is_symlink() or not folder.is_dir() or [e.name for e in list_folder(folder)] != sorted(files):
        return False
    try:
        return all(_read_regular(folder / name) == data for name, data in files.items())
    except TppError:
        return False


def sites(store: str | Path) -> list[str]:
    """Site names that have a current version, sorted. A store that cannot be listed is a :class:`TppError` naming
    it; a site whose pointer cannot be looked at (no permission to search its folder) is listed, so that reading it
    says why."""
    root = _store_root(store)
    return sorted(e.name for e in list_folder(root) if _SITE_RE.fullmatch(e.name) and has_pointer(Path(e.path)))


def has_pointer(site_dir: Path) -> bool:
    """Whether ``site_dir`` is a folder holding a pointer file; True also when that cannot be told (an error other than
    a missing path, e.g. permission denied), so that opening the site names the problem instead of hiding it."""
    try:
        return stat.S_ISDIR(os.stat(site_dir).st_mode) and stat.S_ISREG(os.stat(site_dir / POINTER).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True


def card_of(store: str | Path, site: str, version: str) -> dict:
    """The card of ``version`` of ``site``, read and checked alone (its content hash is not checked here: whoever
    loads the version checks all its files, and refuses it if the card was changed)."""
    site_dir, version = _named_version(store, site, version)
    return parse_card(_read_regular(site_dir / version / CARD), str(site_dir / version))


def current(store: str | Path, site: str) -> SiteVersion:
    """The version ``site`` serves now (its card read and checked; contents not re-hashed)."""
    site_dir, version = _pointed_version(store, site)
    folder = site_dir / version
    return SiteVersion(site, version, folder, parse_card(_read_regular(folder / CARD), str(folder)))


def open_version(store: str | Path, site: str, version: str | None = None) -> SiteVersion:
    """``version`` of ``site`` (None: the current one) with its files' bytes, read once; refused unless their
    content hash is the version's name (a flipped byte after publishing is caught here, before anything is
    used)."""
    site_dir, version = _pointed_version(store, site) if version is None else _named_version(store, site, version)
    folder = site_dir / version
    files = read_version_folder(folder, version)
    return SiteVersion(site, version, folder, parse_card(files.get(CARD), str(folder)), files)


def _pointed_version(store: str | Path, site: str) -> tuple[Path, str]:
    """(site folder, version name) from the site's pointer; every path inside the store, no links."""
    check_site(site)
    root = _store_root(store)
    site_dir = root / site
    pointer = site_dir / POINTER
    if not _lexists(site_dir):
        raise UnknownSite(site)
    _inside(root, site_dir, folder=True)
    if not _lexists(pointer):
        raise UnknownSite(site)
    version = _read_regular(pointer, limit=POINTER_LIMIT).decode("ascii", errors="replace").strip()
    if not _VERSION_RE.fullmatch(version):
        raise TppError(f"store pointer '{pointer}' does not name a version (16 hex digits).")
    _inside(root, site_dir / version, folder=True)
    return site_dir, version


def _lexists(path: Path) -> bool:
    """Whether ``path`` exists (a link counts); a :class:`TppError` naming it when that cannot be told (no permission
    to search its folder), never a raw ``OSError``."""
    try:
        os.lstat(path)
        return True
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as exc:
        raise TppError(f"'{path}' cannot be looked at ({exc.strerror or type(exc).__name__}); refused.") from None


def _named_version(store: str | Path, site: str, version: str) -> tuple[Path, str]:
    """(site folder, version) of a version named by the caller; inside the store, no links."""
    check_site(site)
    if not _VERSION_RE.fullmatch(version):
        raise TppError(f"site '{site}': a version is named by 16 hex digits.")
    root = _store_root(store)
    if not (root / site).is_dir():
        raise UnknownSite(site)
    _inside(root, root / site, folder=True)
    _inside(root, root / site / version, folder=True)
    return root / site, version


def holds_version(store: str | Path, site: str, version: str) -> bool:
    """Whether the store still holds ``version`` of ``site`` (its folder is there): one ``stat``, nothing read or
    listed, so asking it for every site a service once loaded stays cheap."""
    return (Path(store) / site / version).is_dir()


def version_files_stamp(store: str | Path, site: str, version: str) -> tuple | None:
    """(name, size, modification time) of each file of a version folder, from the directory alone (nothing
    read): it changes when the version is written again. None when the folder is not there."""
    folder = Path(store) / site / version
    try:
        return tuple(sorted((e.name, e.stat(follow_symlinks=False).st_size, e.stat(follow_symlinks=False).st_mtime_ns)
                            for e in os.scandir(folder)))
    except OSError:
        return None


def _inside(root: Path, path: Path, folder: bool) -> None:
    """``path`` is a real folder (or file) of the store: not a symbolic link, and resolving inside root."""
    if path.is_symlink() or not path.resolve().is_relative_to(root.resolve()):
        raise TppError(f"'{path}' is a symbolic link or leads outside the store; refused.")
    if not (path.is_dir() if folder else path.is_file()):
        raise TppError(f"'{path}' is not a published {'version folder' if folder else 'file'}.")


def current_version(store: str | Path, site: str) -> str | None:
    """Just the pointer's name (cheap; used to notice a newly published version); None if unpublished
    or not a plain pointer file."""
    pointer = Path(store) / check_site(site) / POINTER
    try:
        return _read_regular(pointer, limit=POINTER_LIMIT).decode("ascii", errors="replace").strip()
    except TppError:
        return None


def _store_root(store: str | Path) -> Path:
    root = Path(store)
    if root.exists() and not root.is_dir():
        raise TppError(f"adapter store '{root}' is a file, not a store folder.")
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
    """Card-level problems against a backbone (cheap: reads cards only; ``tpp serve`` warns with them at
    start). ``tpp adapters check`` loads every site instead (:meth:`tpp.serve.bank.AdapterBank.check_store`)."""
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


def as_source(reason: str, store: str | Path, site: str, source: str) -> str:
    """A refusal from a temporary store made to dry-load one adapter, naming ``source`` (what the user gave)
    instead of the temporary folder and the ``site@version`` it was published under there."""
    reason = reason.replace(f"{store}/{site}/", "")
    return re.sub(rf"{re.escape(site)}@[0-9a-f]+", source, reason)
