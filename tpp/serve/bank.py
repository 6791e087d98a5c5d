"""AdapterBank: one frozen backbone in memory, many site adapters loaded lazily, routed per request.

- The backbone is loaded once and never wrapped or written. Every site model is a *shared-weight
  copy* of it (new module objects, the very same weight tensors), so a site costs only its adapter.
- Sites of a method that declares ``mixed_batch`` in the registry (plain LoRA, not DoRA) live together in
  one peft model per method as named adapters and run as one batch with peft's per-row ``adapter_names``;
  other sites (DoRA, linear probe, ...) get a shared-weight copy each and run as per-site sub-batches.
  ``set_adapter`` is never called. No method is named here: the registry says what each can do.
- At most ``max_resident`` sites stay loaded (least recently used first out).
- A load has two parts: :meth:`AdapterBank.prepare` reads the version's files and verifies them (content hash,
  structure, card against this backbone, safetensors parsed into CPU tensors) without touching any model or any
  state of the bank that changes, so it may run on another thread while the inference thread computes; then
  :meth:`AdapterBank.site` / :meth:`AdapterBank.reload` install the prepared site (the cheap part, on the thread
  that predicts).
- Before a site is served: its files' content hash matches its version, the card passes
  :func:`tpp.serve.integrity.check_adapter` (registered adapter method, tensor names by the method's key rule,
  head fits the labels) and names this backbone; only then is anything copied, and only into the
  site's own adapter modules. Afterwards :class:`~tpp.serve.integrity.BackboneGuard` checks that no backbone
  tensor was written (else restores it from disk and refuses the site), and one zero image runs through
  the site (a card that does not fit its tensors fails here, not in a shared batch).
- Everything computes on one ``device`` (:mod:`tpp.devices`; ``auto``: a GPU if there is one): the backbone is
  moved there once, before the guard's snapshot; a site's own tensors (adapter, head) follow it. ``precision``
  ``bf16`` / ``fp16`` runs forwards under autocast (opt-in); the weights, and the backbone, stay fp32.
- A site serves the version it was first loaded at until :meth:`AdapterBank.reload` (also after the least
  recently used site was unloaded: it comes back at that version), so a publish changes no answer by chance.
- A site that fails to load or to predict is *refused* with its reason until its store pointer moves to
  another version or that version's files change (published again: :attr:`AdapterBank.refused`;
  ``GET /v1/sites`` shows it). A reload that fails leaves the version served before in place.

Not thread-safe by itself, but for :meth:`AdapterBank.prepare`: the service calls it from one inference worker (whose
loader threads prepare, several sites at once), ``tpp predict`` from one thread.
"""
from __future__ import annotations

import copy
import warnings
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from tpp import devices
from tpp.serve import store as adapter_store
from tpp.adapter_dir import verify_backbone
from tpp.backbones import Encoder, load_backbone
from tpp.errors import TppError
from tpp.serve.images import to_model_input
from tpp.serve.integrity import BackboneGuard, CheckedAdapter, check_adapter, check_frame
from tpp.adapter_checks import attach_from_card
from tpp.model import build_head, input_frame, load_adapter_state
from tpp.tasks import Task, task_of_card

BASE = "__base__"  # peft's name for "no adapter" in ``adapter_names``


class SiteRefused(TppError):
    """A site that failed to load or to predict (HTTP 409); its requests fail, no one else's."""


@dataclass
class Site:
    """A resident site: its published version, card, head and how its rows are computed."""
    name: str
    version: str
    card: dict
    head: nn.Module
    encoder: Encoder | None  # own shared-weight copy; None when the site is an adapter of a group
    adapter_name: str = BASE
    group: str | None = None  # the method whose shared group holds the site's adapter

    @property
    def label_names(self) -> list[str]:
        return list(self.card["task"]["label_names"])

    @property
    def input_rule(self) -> dict:
        return self.card["input"]

    @property
    def reading(self) -> dict:
        """The decode keywords the adapter was trained with (frame, slice_spec, window; checked at load)."""
        from tpp.serve.reading import card_reading

        return card_reading(self.card, self.name)

    @property
    def task(self) -> Task:
        """The card's registered task: what its rows hold (probabilities, masks ...) and how they are served."""
        return task_of_card(self.card)


@dataclass
class Prepared:
    """A site version read and verified by :meth:`AdapterBank.prepare`, not loaded into any model yet: its files
    (content hash checked) and its checked card and tensors; or the error that refuses it. ``asked``: the version
    that was asked for (None: the store's current one); ``version``: the one read (on an error: the one asked for,
    else the store's current one when it failed; None if there is none); ``stamp``: on an error, that version's
    files (:func:`~tpp.serve.store.version_files_stamp`) when it failed, so a refusal ends when they are rewritten
    after that, even before the refusal is recorded."""
    site: str
    asked: str | None
    version: str | None
    sv: adapter_store.SiteVersion | None = None
    checked: CheckedAdapter | None = None
    error: Exception | None = None
    stamp: tuple | None = None


class NonFiniteOutputs(TppError):
    """A site's outputs (or the tokens it reads) hold NaN or infinite values for some input: at load (the first
    image) the site is refused; later only that request is answered with the error."""


def share_weights_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` whose parameters and buffers are the original tensors (not copies)."""
    memo = {id(t): t for t in list(module.parameters()) + list(module.buffers())}
    return copy.deepcopy(module, memo)


def mixed_batch_config(card: dict):
    """The peft config under which the card's adapter can share a forward with other sites (per-row
    ``adapter_names``), from its method's ``mixed_batch`` in the registry; None: per-site sub-batches."""
    from tpp.adapters import get_method

    method = get_method(card["method"])
    if method.mixed_batch is None:
        return None
    return method.mixed_batch(method.options_cls(**card["options"]), card["target_modules"])


class AdapterBank:
    """``predict(sites, images) -> probabilities`` for a batch whose rows may belong to different sites."""

    def __init__(self, backbone_path: str, store_path: str, max_resident: int = 16, mean=None, std=None,
                 mixed_batches: bool = True, device: str = "cpu", precision: str = "fp32"):
        """``mixed_batches=False`` runs every site as a per-site sub-batch (for comparison). ``device``: auto, cpu,
        cuda, cuda:N or mps; ``precision``: fp32 (default), bf16 or fp16 (autocast)."""
        if max_resident < 1:
            raise TppError(f"max_resident must be at least 1, got {max_resident}.")
        self.device = devices.resolve(device, "--device")
        self.precision = devices.check_precision(precision, self.device)
        self.encoder, self.info, _ = load_backbone(backbone_path, mean, std)
        self.encoder.model.to(self.device)  # before the guard's snapshot: the moved tensors are the shared ones
        self.guard = BackboneGuard(self.encoder.model, lambda: load_backbone(backbone_path, mean, std)[0].model,
                                   self.info.hash)
        self.store = store_path
        self.max_resident = max_resident
        self.mixed_batches = mixed_batches
        self.resident: OrderedDict[str, Site] = OrderedDict()
        self.groups: dict[str, Encoder] = {}  # method -> peft model on a shared-weight copy, one adapter a site
        self.loads = 0  # cold loads so far (benchmarks read it)
        self.refused: dict[str, tuple[str, str]] = {}  # site -> (version, reason) until the pointer moves
        self._refused_files: dict[str, tuple] = {}  # site -> its refused version's files (name, size, mtime)
        self.pinned: dict[str, str] = {}  # site -> the version it serves until reload (resident or not)

    # -- residency ---------------------------------------------------------------------------------
    def site(self, name: str, prepared: Prepared | None = None) -> Site:
        """The resident site (loading it, and evicting the least recently used, if needed). ``prepared``: its files
        as :meth:`prepare` read them on another thread for :meth:`version_to_load`; used if it is still that
        version, else they are read here."""
        if name in self.resident:
            self.resident.move_to_end(name)
            return self.resident[name]
        version = self.version_to_load(name)
        site = self._load_or_refuse(name, version, prepared)
        self._make_room(1)
        self.resident[name] = site
        self.pinned[name] = site.version
        return site

    def version_to_load(self, name: str) -> str | None:
        """The version :meth:`site` loads for ``name`` when it is not resident: the one it served before (see
        :meth:`_pinned_version`), else None (the store's current one). :class:`SiteRefused` when that version was
        refused and its files are unchanged since (nothing needs to be read)."""
        version = self._pinned_version(name)
        self._raise_if_refused(name, version)
        return version

    def serving(self) -> dict[str, str]:
        """{site: the version that answers it without a reload}: the resident one, else the one it served before
        it was unloaded (it comes back at that version) while the store still holds it. A site not listed loads the
        store's current version at its next request (never loaded yet, or its version was refused or deleted).
        Cheap enough for every ``GET /v1/sites``: one ``stat`` per unloaded site (as :meth:`_pinned_version` asks it),
        no folder listed."""
        served = {name: site.version for name, site in self.resident.items()}
        for name, version in self.pinned.items():
            if name not in served and adapter_store.holds_version(self.store, name, version):
                served[name] = version
        return served

    def reload(self, name: str, prepared: Prepared | None = None) -> tuple[str | None, str]:
        """Serve the store's current version of ``name``; the old one is dropped only after the new one
        loaded. ``prepared``: the store's current version as :meth:`prepare` read it on another thread (else it is
        read here). Returns (old version or None, new version)."""
        version = adapter_store.current_version(self.store, name)
        old = self.resident.get(name)
        if old is not None and old.version == version:
            return old.version, version
        self.refused.pop(name, None)  # asked for explicitly: a refused version is tried again
        try:
            new = self._load_or_refuse(name, None, prepared)
        except SiteRefused as exc:
            served = old.version if old is not None else self.pinned.get(name)
            if served is not None and served != version:
                raise SiteRefused(f"{exc} Site '{name}' still serves version {served}.") from None
            raise
        if old is not None:
            self._drop(self.resident.pop(name))
        else:
            self._make_room(1)
        self.resident[name] = new
        self.pinned[name] = new.version
        return (old.version if old else None), new.version

    def evict(self, name: str) -> None:
        """Unload a resident site (the next request loads it again from the store, at the version it served)."""
        if name in self.resident:
            self._drop(self.resident.pop(name))

    def _make_room(self, n: int) -> None:
        while len(self.resident) + n > self.max_resident:
            _, site = self.resident.popitem(last=False)
            self._drop(site)

    def _drop(self, site: Site) -> None:
        if site.group is not None:
            self._remove_from_group(site.group, site.adapter_name)

    def _remove_from_group(self, method: str, name: str) -> None:
        group = self.groups.get(method)
        if group is None:
            return
        if len(group.model.peft_config) == 1:
            del self.groups[method]  # peft keeps at least one adapter: drop the whole group copy instead
        else:
            with warnings.catch_warnings():  # "was active, now deleted": the active adapter is never used here
                warnings.simplefilter("ignore")
                group.model.delete_adapter(name)

    def refuse(self, name: str, version: str, reason: str, stamp: tuple | None = None) -> None:
        """Mark ``name`` failed at ``version`` (and unload it if that version is the resident one); requests
        for that version get :class:`SiteRefused` until the store's pointer names another version or the
        version's files change (published again) from ``stamp`` (their stamp when it failed; default: now)."""
        self.refused[name] = (version, reason)
        self._refused_files[name] = stamp or adapter_store.version_files_stamp(self.store, name, version)
        if self.pinned.get(name) == version:  # served no longer: the next request follows the store's pointer
            del self.pinned[name]
        if name in self.resident and self.resident[name].version == version:
            self.evict(name)

    def _pinned_version(self, name: str) -> str | None:
        """The version ``name`` serves until reload: the one it was loaded at while that version is still in
        the store; else None (the store's current one)."""
        version = self.pinned.get(name)
        if version is not None and not adapter_store.holds_version(self.store, name, version):
            del self.pinned[name]  # deleted from the store since: the pointer's version is the one to serve
            return None
        return version

    def _raise_if_refused(self, name: str, version: str | None = None) -> None:
        """Raise :class:`SiteRefused` when ``version`` (None: the store's current one) of ``name`` was refused
        and its files are unchanged since."""
        if name in self.refused:
            refused, reason = self.refused[name]
            pointer = adapter_store.current_version(self.store, name)
            unchanged = self._refused_files.get(name) == adapter_store.version_files_stamp(self.store, name, refused)
            if (version or pointer) == refused and unchanged:
                raise SiteRefused(reason)
            if pointer != refused or not unchanged:  # another version published, or this one again
                del self.refused[name]

    def prepare(self, name: str, version: str | None = None,
                opened: adapter_store.SiteVersion | None = None) -> Prepared:
        """The slow part of loading ``version`` of ``name`` (None: the store's current one), which needs no model:
        its files read once, their content hash, :func:`check_adapter` (safetensors parsed into CPU tensors) and
        the card against this backbone. It uses only what never changes in a bank (the store's path, the
        backbone's info), so any thread may call it while another predicts. An error is kept in the result: the
        :meth:`site` or :meth:`reload` given it raises it and refuses the version there. ``opened``: that version as
        :func:`~tpp.serve.store.open_version` read it for the caller (not read again)."""
        try:
            sv = adapter_store.open_version(self.store, name, version) if opened is None else opened
            checked = check_adapter(sv.files, str(sv.path))
            verify_backbone(checked.card, self.info, f"{sv.site}@{sv.version}")
        except Exception as exc:
            failed = version or adapter_store.current_version(self.store, name)
            stamp = adapter_store.version_files_stamp(self.store, name, failed) if failed else None
            return Prepared(name, version, failed, error=exc, stamp=stamp)
        return Prepared(name, version, sv.version, sv, checked)

    def _load_or_refuse(self, name: str, version: str | None = None, prepared: Prepared | None = None) -> Site:
        """Load ``version`` of ``name`` (None: the store's current one), from ``prepared`` if it was prepared for
        that version (else prepared here); a failure (any exception) refuses that version."""
        if prepared is None or (prepared.site, prepared.asked) != (name, version):
            prepared = self.prepare(name, version)
        try:
            if prepared.error is not None:
                raise prepared.error
            site = self._load(prepared)
        except adapter_store.UnknownSite:
            raise
        except Exception as exc:
            version = prepared.version
            reason = str(exc) if isinstance(exc, TppError) else \
                f"site '{name}' version {version} cannot be loaded ({type(exc).__name__}: {str(exc)[:200]})."
            if version is not None:
                self.refuse(name, version, reason, prepared.stamp)
            raise SiteRefused(reason) from None
        if self.refused.get(name, (None,))[0] == site.version:
            del self.refused[name]
        return site

    def _load(self, prepared: Prepared) -> Site:
        """A site built from its verified files (see the module docstring), not yet resident: the part of a load
        that touches models, on the thread that predicts."""
        sv, checked = prepared.sv, prepared.checked
        source = f"{sv.site}@{sv.version}"
        card = checked.card
        head = build_head(card, self.info.hidden_size, checked.head_state, source).to(self.device)
        state = {k: v.to(self.device) for k, v in checked.state.items()}  # compared with the loaded tensors there
        self.loads += 1
        try:
            config = mixed_batch_config(card) if self.mixed_batches else None
            if config is not None:
                name = f"{sv.site}__{sv.version}"
                check_frame(card, 0, str(sv.path))  # a PEFT group's methods keep no input frame
                self._add_to_group(card["method"], name, config, state, source)
                site = Site(sv.site, sv.version, card, head, None, name, card["method"])
            else:
                encoder = Encoder(share_weights_copy(self.encoder.model), self.encoder.family)
                attach_from_card(encoder, card, str(sv.path))
                check_frame(card, input_frame(encoder.model), str(sv.path))  # as evaluate frames its images
                move_own_tensors(encoder.model, self.device)
                load_adapter_state(encoder, state, source)
                site = Site(sv.site, sv.version, card, head, encoder.eval())
        finally:
            self.guard.check(source)  # restores the backbone and raises if anything wrote into it
        self._try_one_image(site)
        return site

    @torch.no_grad()
    def _try_one_image(self, site: Site) -> None:
        """One zero image through the site: outputs must have the card's shape (else it is dropped)."""
        rule = site.input_rule
        shape = (rule["image_size"],) * 2 + ((3,) if rule["image_channels"] == 3 else ())
        try:
            pixels = to_model_input(np.zeros(shape, np.uint8), rule)
            out = self._predict_batch([site], pixels)[0]
        except Exception:
            self._drop(site)
            raise
        expected = site.task.output_shape(site.card["task"])
        if tuple(out.shape) != expected:
            self._drop(site)
            raise TppError(f"site '{site.name}' version {site.version}: outputs of shape {tuple(out.shape)}, "
                           f"its card promises {expected}.")

    def _add_to_group(self, method: str, name: str, config, state: dict, source: str) -> None:
        """Add a site's adapter to its method's shared group. The state's keys and shapes must equal the
        new adapter's own tensors before anything is copied (nothing else of the group can be named)."""
        from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

        group = self.groups.get(method)
        if group is None:
            model = get_peft_model(share_weights_copy(self.encoder.model), config, adapter_name=name)
            group = self.groups[method] = Encoder(model, self.encoder.family)
        else:
            group.model.add_adapter(name, config)
        move_own_tensors(group.model, self.device)
        group.eval()
        own = get_peft_model_state_dict(group.model, adapter_name=name)
        if set(own) != set(state) or any(own[k].shape != state[k].shape for k in own):
            self._remove_from_group(method, name)
            raise TppError(f"adapter '{source}' does not fit its card's {method} options (tensor names or shapes "
                           "differ).")
        set_peft_model_state_dict(group.model, state, adapter_name=name)
        loaded = get_peft_model_state_dict(group.model, adapter_name=name)
        if any(not torch.equal(loaded[k], state[k].to(loaded[k].dtype)) for k in state):
            self._remove_from_group(method, name)
            raise TppError(f"adapter '{source}' did not load exactly into the {method} group (values differ).")

    def check_store(self) -> dict[str, str | None]:
        """Load every site of the store as serving would (then unload it): {site: None if it loads, else
        why it is refused}."""
        results = {}
        for name in adapter_store.sites(self.store):
            try:
                self.site(name)
                results[name] = None
            except TppError as exc:
                results[name] = str(exc)
            self.evict(name)
        return results

    # -- inference ---------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, sites: list[Site], pixels: torch.Tensor | list[torch.Tensor]) -> list[torch.Tensor]:
        """Rows of ``pixels`` through their sites' adapters and heads.

        ``pixels``: (B, C, S, S), or B tensors (1, C, S_i, S_i) when sites use different input sizes.
        ``sites[i]`` is the resident Site of row i (from :meth:`site`). Returns per row a probability
        vector (K_i,) for classification sites (label sets may differ) or a class-index mask (h_i, w_i)
        uint8 at the card's mask size for segmentation sites.
        """
        for s in sites:  # an evicted site's adapter would silently fall back to the bare backbone
            if self.resident.get(s.name) is not s:
                raise RuntimeError(f"site '{s.name}' version {s.version} is no longer resident")
        rows = list(pixels.split(1)) if isinstance(pixels, torch.Tensor) else list(pixels)
        by_size: dict[tuple, list[int]] = {}
        for i, row in enumerate(rows):
            by_size.setdefault(tuple(row.shape[-2:]), []).append(i)
        out: list = [None] * len(sites)
        for index in by_size.values():
            try:
                batch = self._predict_batch([sites[i] for i in index], torch.cat([rows[i] for i in index]))
            except NonFiniteOutputs:
                raise
            except Exception as exc:  # a site whose card does not fit its tensors: one paragraph, no traceback
                names = ", ".join(sorted({f"'{sites[i].name}'" for i in index}))
                raise TppError(f"prediction failed for site(s) {names} ({type(exc).__name__}: "
                               f"{str(exc)[:200]}).") from exc
            for i, result in zip(index, batch):
                out[i] = result
        return out

    def _predict_batch(self, sites: list[Site], pixels: torch.Tensor) -> list[torch.Tensor]:
        """Rows of one input size (B, C, S, S). A group's rows run as one batch with per-row
        ``adapter_names``; every other site's rows run as one sub-batch through its own copy."""
        rows_of: dict[int, list[int]] = {}
        group_rows: dict[str, list[int]] = {}
        for i, s in enumerate(sites):
            rows_of.setdefault(id(s), []).append(i)
            if s.group is not None:
                group_rows.setdefault(s.group, []).append(i)
        pixels = pixels.to(self.device)
        prefix = self.encoder.family.num_prefix_tokens  # CLS / register tokens: a CLS-pooled head reads them
        tokens = torch.empty(pixels.shape[0], prefix + self.encoder.num_patches(pixels), self.info.hidden_size,
                             device=self.device)
        with devices.autocast(self.device, self.precision):
            for method, rows in group_rows.items():
                out = self.groups[method](pixels[rows], adapter_names=[sites[i].adapter_name for i in rows])
                tokens[rows] = out.float()
            results: list = [None] * len(sites)
            for rows in rows_of.values():
                site = sites[rows[0]]
                if site.encoder is not None:
                    tokens[rows] = site.encoder(pixels[rows]).float()
                outputs = head_outputs(site, tokens[rows], pixels[rows], self.encoder)
                if not torch.isfinite(tokens[rows]).all() or any(
                        r.is_floating_point() and not torch.isfinite(r).all() for r in outputs):
                    raise NonFiniteOutputs(f"site '{site.name}' version {site.version} computes values that are not "
                                           "finite (NaN or infinite) from this input (a broken adapter or card, or "
                                           "an input that overflows at this precision); no label is given from them.")
                for row, r in zip(rows, outputs):
                    results[row] = (r.float() if r.is_floating_point() else r).cpu()
        return results


def move_own_tensors(module: nn.Module, device: torch.device) -> None:
    """Move the parameters and buffers of ``module`` that are not on ``device`` yet (an adapter's or a head's,
    created on the CPU) there. Tensors already on the device (the shared backbone's) are not touched at all:
    ``Module.to`` would re-assign them too."""
    for sub in module.modules():
        for table in (sub._parameters, sub._buffers):
            for name, tensor in table.items():
                if tensor is None or tensor.device == device:
                    continue
                moved = tensor.detach().to(device)
                table[name] = nn.Parameter(moved, tensor.requires_grad) if isinstance(tensor, nn.Parameter) else moved


def head_outputs(site: Site, tokens: torch.Tensor, pixels: torch.Tensor, encoder: Encoder) -> torch.Tensor:
    """The site's task predictions of a batch from the encoder's tokens (B, P + N, D): probabilities (B, K) for
    classification, masks (B, h, w) uint8 at the card's mask size for segmentation ... Heads get the patch
    tokens (B, N, D), a CLS-pooled label-mapping head every token (as :class:`tpp.model.TaskModel` does)."""
    if not getattr(site.head, "reads_prefix_tokens", False):
        tokens = encoder.patch_tokens(tokens)
    logits = site.head(tokens, encoder.grid(pixels), pixels)
    return site.task.predictions(logits, site.card["task"])
