"""``tpp adapters push`` / ``pull``: one published adapter version to and from a Hugging Face Hub model repo.

- :func:`push` reads one version of a site from the store, verifies it as ``tpp adapters check`` does (content
  hash = version name, structural checks of :func:`tpp.serve.integrity.check_adapter`; with a backbone, a
  load as serving does it), and commits exactly those bytes to ``OWNER/NAME`` with ``HfApi.create_commit``;
  the commit message names site, version and content hash.
- :func:`pull` fetches a repo revision with ``snapshot_download`` (so ``HF_HUB_OFFLINE`` and the local
  cache are honoured) and treats it as hostile: only the file names an adapter folder has, bounded sizes,
  safetensors weights only (pickle formats such as ``.bin``/``.pt``/``.pkl`` are refused, never opened),
  every check of :func:`check_adapter`, the card's backbone hash against ``--backbone``. Only then is it
  published through :func:`tpp.serve.store.publish` (content hash, version, atomic rename): a refusal
  leaves the store as it was.

Every failure of the Hub (unknown repo, missing token, offline with nothing cached) becomes one
:class:`~tpp.errors.TppError` line.
"""
from __future__ import annotations

import contextlib
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tpp.adapter_dir import ADAPTER_FILES
from tpp.adapter_read import read_version_folder
from tpp.capped_read import MIB, file_limit, list_folder, read_regular
from tpp.errors import TppError
from tpp.serve import store as adapter_store
from tpp.serve.integrity import check_adapter

README = "README.md"  # the Hugging Face model card, when the adapter folder has one
GITATTRIBUTES = ".gitattributes"  # every Hub repo starts with one; never copied into the store
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")
_REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_REVISION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$")


@dataclass(frozen=True)
class Pushed:
    """What :func:`push` committed: the version, the files, and where."""
    site: str
    version: str
    repo_id: str
    revision: str
    files: tuple[str, ...]
    commit_url: str
    deleted: tuple[str, ...] = ()  # adapter files of an earlier push that this version lacks


@dataclass(frozen=True)
class Pulled:
    """What :func:`pull` published: the store entry and the Hub commit it came from."""
    version: adapter_store.SiteVersion
    repo_id: str
    revision: str
    commit: str


# -- names ---------------------------------------------------------------------------------------------

def parse_repo(spec: str) -> tuple[str, str | None]:
    """``OWNER/NAME`` or ``OWNER/NAME@REVISION`` -> (repo id, revision or None); anything else is refused."""
    repo_id, _, revision = str(spec).partition("@")
    check_repo_id(repo_id)
    if revision and (not _REVISION_RE.fullmatch(revision) or ".." in revision):
        raise TppError(f"revision {revision!r} of '{spec}' is not a branch, tag or commit name.")
    return repo_id, revision or None


def check_repo_id(repo_id: str) -> str:
    """A Hub model repo id ``OWNER/NAME`` (letters, digits, ``.``, ``_``, ``-``), else a clear error."""
    if not _REPO_RE.fullmatch(repo_id or "") or ".." in repo_id or repo_id.endswith((".git", ".")):
        raise TppError(f"'{repo_id}' is not a Hugging Face repo id: use OWNER/NAME, e.g. my-hospital/busi-lora.")
    return repo_id


def allowed_names() -> frozenset[str]:
    """File names a pulled repo may hold: the store's adapter files, the model card and .gitattributes."""
    return frozenset(ADAPTER_FILES) | {README, GITATTRIBUTES}


def screen_name(name: str, source: str) -> None:
    """Refuse a repo file that is no part of an adapter folder; pickle formats are named as such."""
    if name.lower().endswith(PICKLE_SUFFIXES):
        raise TppError(f"'{source}' holds '{name[:80]}', a pickle-based file; tpp loads weights only from "
                       "safetensors and never unpickles. Refused: nothing was published.")
    if name not in allowed_names():
        allowed = ", ".join(sorted(allowed_names()))
        raise TppError(f"'{source}' holds '{name[:80]}', which is no part of a tpp adapter folder (allowed: "
                       f"{allowed}). Refused: nothing was published.")


def size_limit(name: str) -> int:
    """The most bytes a repo file ``name`` may have: the limit a store reads it with
    (:func:`tpp.capped_read.file_limit`)."""
    return file_limit(name)


def screen_size(name: str, size: int | None, source: str) -> None:
    if size is not None and size > size_limit(name):
        raise TppError(f"'{source}/{name}' has {size / MIB:.1f} MiB, more than the {size_limit(name) / MIB:.0f} MiB "
                       "a file of an adapter folder may have. Refused: nothing was published.")


# -- push ----------------------------------------------------------------------------------------------

def push(store: str | Path, site: str, repo: str, *, version: str | None = None, revision: str | None = None,
         private: bool = False, backbone: str | None = None) -> Pushed:
    """Commit one verified version of ``site`` (default: the current one) to the Hub model repo ``repo``
    (created if missing; ``private`` applies when it is created) on branch ``revision`` (default main)."""
    repo_id = check_repo_id(repo)
    if revision is not None:
        parse_repo(f"{repo_id}@{revision}")
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, constants, get_token

    if constants.HF_HUB_OFFLINE:
        raise TppError("HF_HUB_OFFLINE is set, so nothing can be pushed: unset it (or set HF_HUB_OFFLINE=0).")
    if not get_token():
        raise TppError("pushing needs a Hugging Face token with write access: set HF_TOKEN, or run "
                       "`hf auth login` (huggingface-cli login) once.")
    files, version = verified_version(store, site, version, backbone)
    api = HfApi()
    branch = revision or constants.DEFAULT_REVISION
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=data) for name, data in sorted(files.items())]
    with hub_errors(repo_id, branch):
        api.create_repo(repo_id, repo_type="model", private=private or None, exist_ok=True)
        if branch != constants.DEFAULT_REVISION:
            api.create_branch(repo_id, repo_type="model", branch=branch, exist_ok=True)
        stale = stale_files(api, repo_id, branch, files)
        operations += [CommitOperationDelete(path_in_repo=name) for name in stale]
        info = api.create_commit(
            repo_id, operations, repo_type="model", revision=branch,
            commit_message=f"tpp adapter: site {site}, version {version}, content hash {version}",
            commit_description=f"Published by `tpp adapters push` from site '{site}' of an adapter store. The content "
                               f"hash (sha256 over the adapter files, first 16 hex digits) is {version}; "
                               f"`tpp adapters pull {repo_id}@{branch} STORE --site S --version {version}` "
                               "checks it.")
    return Pushed(site, version, repo_id, branch, tuple(sorted(files)), str(info.commit_url), tuple(stale))


def stale_files(api, repo_id: str, branch: str, files: dict[str, bytes]) -> list[str]:
    """Adapter files of an earlier push that this version lacks (deleted in the same commit, so the branch
    holds exactly one adapter). A file that is no part of an adapter folder is never deleted: the push is
    refused, since ``pull`` would refuse the repo."""
    from huggingface_hub import RepoFile

    present = [f.path for f in api.list_repo_tree(repo_id, revision=branch, recursive=True, repo_type="model")
               if isinstance(f, RepoFile)]
    foreign = sorted(name for name in present if name not in allowed_names())
    if foreign:
        names = ", ".join(n[:64] for n in foreign[:3])
        raise TppError(f"'{repo_id}' (branch {branch}) holds {names}, no part of a tpp adapter folder, so a pull "
                       "would refuse it: push to a new repo or branch (--revision), or remove those files. Nothing "
                       "was pushed.")
    return sorted(name for name in present if name not in files and name != GITATTRIBUTES)


def verified_version(store: str | Path, site: str, version: str | None, backbone: str | None
                     ) -> tuple[dict[str, bytes], str]:
    """The files of one published version, refused unless they verify as ``tpp adapters check`` verifies
    them: content hash = version name, :func:`check_adapter`, and with ``backbone`` a load as serving does.
    README.md (the model card) is one of the store's adapter files, covered by the content hash."""
    if version is None:
        version = adapter_store.current(store, site).version
    folder = published_folder(store, site, version)
    try:
        files = read_version_folder(folder, version)
    except TppError as exc:
        raise TppError(f"{exc} Nothing was pushed.") from None
    check_adapter(files, str(folder))
    if backbone:
        dry_load(files, backbone, str(folder))
    return files, version


def published_folder(store: str | Path, site: str, version: str) -> Path:
    """``STORE/SITE/VERSION`` of a published version: a real folder inside the store, no links."""
    adapter_store.check_site(site)
    if not re.fullmatch(r"[0-9a-f]{16}", str(version)):
        raise TppError(f"version {version!r} is not a version name (16 hex digits; tpp adapters ls shows them).")
    root = adapter_store._store_root(store)
    folder = root / site / version
    if not folder.exists() and not folder.is_symlink():
        raise TppError(f"site '{site}' has no version {version} in '{root}' (tpp adapters ls {root} lists them).")
    adapter_store._inside(root, root / site, folder=True)
    adapter_store._inside(root, folder, folder=True)
    return folder


def dry_load(files: dict[str, bytes], backbone: str, source: str) -> None:
    """Load these very bytes over ``backbone`` exactly as serving would, from a temporary store."""
    from tpp.serve.bank import AdapterBank

    with tempfile.TemporaryDirectory(prefix="tpp-hub-check-") as tmp:
        folder = Path(tmp) / "adapter"
        folder.mkdir()
        for name, data in files.items():
            (folder / name).write_bytes(data)
        adapter_store.publish(folder, Path(tmp) / "store", "check")
        reason = AdapterBank(backbone, str(Path(tmp) / "store"), max_resident=1).check_store()["check"]
    if reason:
        reason = adapter_store.as_source(reason, f"{tmp}/store", "check", source)
        raise TppError(f"'{source}' does not load on backbone '{backbone}': {reason} Refused: nothing was pushed.")


# -- pull ----------------------------------------------------------------------------------------------

def pull(spec: str, store: str | Path, site: str, *, backbone: str | None = None,
         version: str | None = None) -> Pulled:
    """Fetch ``OWNER/NAME[@REVISION]`` (the local cache when ``HF_HUB_OFFLINE=1``), check it as hostile
    input, and publish it as the current version of ``site``. ``backbone``: refuse a card trained on
    another backbone (by weight hash); ``version``: refuse unless the content hash is this version."""
    adapter_store.check_site(site)
    if Path(store).exists() and not Path(store).is_dir():
        raise TppError(f"adapter store '{store}' is a file, not a folder.")
    repo_id, revision = parse_repo(spec)
    source = f"{repo_id}@{revision or 'main'}"
    snapshot = download(repo_id, revision, source)
    copied = read_snapshot(snapshot, source)
    card = check_adapter(copied, source).card  # messages name the repo, not a temporary folder
    with tempfile.TemporaryDirectory(prefix="tpp-pull-") as tmp:
        for name, data in copied.items():
            (Path(tmp) / name).write_bytes(data)
        read = adapter_store.read_source(tmp)  # the files publish stores, read once, so the hash is the version's
        files = read[1]
        backbone_hash = _backbone_hash(backbone) if backbone else None  # loaded only for a repo that passed
        if backbone_hash is not None and card.get("backbone", {}).get("hash") != backbone_hash:
            card_backbone = card.get("backbone", {})
            raise TppError(f"'{source}' was trained on backbone '{card_backbone.get('id')}' (hash "
                           f"{str(card_backbone.get('hash'))[:12]}), not on --backbone (hash {backbone_hash[:12]}). "
                           "Refused: nothing was published.")
        got = adapter_store.content_hash(files)
        if version is not None and got != version:
            raise TppError(f"'{source}' has content hash {got}, not the expected version {version}: its files are not "
                           "the ones pushed as that version. Refused: nothing was published.")
        published = adapter_store.publish(tmp, store, site, read=read)  # these bytes, not a second read
    return Pulled(published, repo_id, revision or "main", snapshot.name)


def _backbone_hash(path: str) -> str:
    from tpp.backbones import load_backbone

    return load_backbone(path)[1].hash


def download(repo_id: str, revision: str | None, source: str) -> Path:
    """The repo's snapshot folder in the Hugging Face cache. Online, its file list and sizes are screened
    before anything is downloaded (a pickle file is refused unread), and the snapshot must be the commit
    screened; offline or unreachable, ``snapshot_download`` uses the cached snapshot."""
    from huggingface_hub.utils import httpx  # httpx2 under huggingface_hub 2.x, httpx under 1.31+
    from huggingface_hub import HfApi, constants, snapshot_download

    with hub_errors(repo_id, revision or "main"):
        screened = None
        if not constants.HF_HUB_OFFLINE:
            try:
                info = HfApi().model_info(repo_id, revision=revision, files_metadata=True)
            except httpx.TransportError:  # no network: the cache may still hold it (snapshot_download decides)
                info = None
            if info is not None:
                for sibling in info.siblings or []:
                    screen_name(sibling.rfilename, source)
                    screen_size(sibling.rfilename, sibling.size, source)
                screened = info.sha
        # only the names a tpp adapter folder may hold: a branch moved since the screening cannot bring other
        # files into the cache (and the commit check below refuses the moved branch)
        snapshot = Path(snapshot_download(repo_id, revision=revision, repo_type="model",
                                          allow_patterns=sorted(allowed_names())))
    if screened and snapshot.name != screened:
        raise TppError(f"'{source}' changed while it was pulled (commit {screened[:12]}, then {snapshot.name[:12]}); "
                       "nothing was published: run the pull again.")
    return snapshot


def read_snapshot(snapshot: Path, source: str) -> dict[str, bytes]:
    """The snapshot's adapter files (name -> bytes), each screened by name and size; the cache's links may
    only lead into the repo's own cache folder. ``.gitattributes`` is skipped."""
    repo_cache = snapshot.parent.parent.resolve()  # models--owner--name/ (snapshots/<commit>/ below it)
    files = {}
    for entry in [e.name for e in list_folder(snapshot)]:  # one that cannot be listed: a TppError naming it
        screen_name(entry, source)
        if entry == GITATTRIBUTES:
            continue
        path = snapshot / entry
        real = path.resolve()
        if not real.is_relative_to(repo_cache):
            raise TppError(f"'{source}/{entry}' in the Hugging Face cache leads outside the repo's cache folder; "
                           "refused.")
        files[entry] = read_bounded(real, entry, source)
    return files


def read_bounded(path: Path, name: str, source: str) -> bytes:
    """A regular file's bytes (``path``: the resolved cache blob of ``name``), at most :func:`size_limit` of them
    (checked before and while reading, :func:`tpp.capped_read.read_regular`; a FIFO cannot block)."""
    try:
        return read_regular(path, size_limit(name), shown=f"{source}/{name}")
    except TppError as exc:
        raise TppError(f"{exc} Nothing was published.") from None


# -- errors --------------------------------------------------------------------------------------------

@contextlib.contextmanager
def hub_errors(repo_id: str, revision: str):
    """Errors of huggingface_hub (and of the network under it) as one TppError line naming the repo."""
    from huggingface_hub.utils import httpx  # httpx2 under huggingface_hub 2.x, httpx under 1.31+
    from huggingface_hub import constants
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    where = f"'{repo_id}' on {constants.ENDPOINT}"
    login = "set HF_TOKEN, or run `hf auth login` (huggingface-cli login)"
    try:
        yield
    except TppError:
        raise
    except GatedRepoError:
        raise TppError(f"{where} is gated: accept its conditions on the Hub and {login}.") from None
    except RepositoryNotFoundError:
        raise TppError(f"{where} was not found, or it is private and no valid token was sent: check the name; "
                       f"for a private repo {login}.") from None
    except RevisionNotFoundError:
        raise TppError(f"{where} has no revision '{revision}' (a branch, tag or commit).") from None
    except LocalEntryNotFoundError:
        raise TppError(f"'{repo_id}' (revision {revision}) is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) "
                       "and the Hub cannot be reached (HF_HUB_OFFLINE=1, or no network): pull it once with network "
                       "access, or unset HF_HUB_OFFLINE.") from None
    except OfflineModeIsEnabled:
        raise TppError(f"HF_HUB_OFFLINE is set, so {where} cannot be reached: unset it.") from None
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status == 401:
            raise TppError(f"{where} refused the token (401: missing or invalid): {login}.") from None
        if status == 403:
            raise TppError(f"{where}: the token has no access there (403); push needs a token with write access "
                           f"to '{repo_id.split('/')[0]}' ({login}).") from None
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise TppError(f"{where} answered with an error ({status}): {first}") from None
    except ValueError as exc:  # e.g. the Hub's check of README.md front matter (BadRequestError is one, above)
        message = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise TppError(f"{where} refused the commit: {message}") from None
    except (httpx.TransportError, ConnectionError) as exc:
        raise TppError(f"the Hub at {constants.ENDPOINT} cannot be reached ({type(exc).__name__}): check the network, "
                       "or pull from the local cache with HF_HUB_OFFLINE=1.") from None
