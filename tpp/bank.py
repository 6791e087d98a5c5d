"""AdapterBank: one frozen backbone in memory, many site adapters loaded lazily, routed per request.

- The backbone is loaded once and never wrapped or written. Every site model is a *shared-weight
  copy* of it (new module objects, the very same weight tensors), so a site costs only its adapter.
- Plain LoRA sites (not DoRA) live together in one peft model as named adapters and run as one
  batch with peft's per-row ``adapter_names``; other methods (DoRA, linear probe, ...) get a
  shared-weight copy each and run as per-site sub-batches. ``set_adapter`` is never called.
- At most ``max_resident`` sites stay loaded (least recently used first out).
- Cards are verified (kind, task, backbone hash) before a site is served.

Not thread-safe by itself: the service calls it from one inference worker; ``tpp predict`` from one thread.
"""
from __future__ import annotations

import copy
import warnings
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn as nn

from tpp import store as adapter_store
from tpp.adapter_dir import read_weights, verify_backbone
from tpp.backbones import Encoder, load_backbone
from tpp.errors import TppError
from tpp.model import attach_adapter, load_adapter_state, load_head

BASE = "__base__"  # peft's name for "no adapter" in ``adapter_names``
SERVED_TASKS = ("classification", "segmentation")


@dataclass
class Site:
    """A resident site: its published version, card, head and how its rows are computed."""
    name: str
    version: str
    card: dict
    head: nn.Module
    encoder: Encoder | None  # own shared-weight copy; None when the site is an adapter of the LoRA group
    adapter_name: str = BASE

    @property
    def label_names(self) -> list[str]:
        return list(self.card["task"]["label_names"])

    @property
    def input_rule(self) -> dict:
        return self.card["input"]

    @property
    def task(self) -> str:
        """``classification`` (rows give probabilities) or ``segmentation`` (rows give masks)."""
        return self.card["task"]["type"]


def share_weights_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` whose parameters and buffers are the original tensors (not copies)."""
    memo = {id(t): t for t in list(module.parameters()) + list(module.buffers())}
    return copy.deepcopy(module, memo)


def in_lora_group(card: dict) -> bool:
    """Sites whose adapter supports peft's mixed-batch ``adapter_names`` (plain LoRA, not DoRA)."""
    return card.get("method") == "lora" and not card.get("options", {}).get("use_dora", False)


class AdapterBank:
    """``predict(sites, images) -> probabilities`` for a batch whose rows may belong to different sites."""

    def __init__(self, backbone_path: str, store_path: str, max_resident: int = 16, mean=None, std=None,
                 lora_group: bool = True):
        """``lora_group=False`` runs plain-LoRA sites as per-site sub-batches too (for comparison)."""
        if max_resident < 1:
            raise TppError(f"max_resident must be at least 1, got {max_resident}.")
        self.encoder, self.info, _ = load_backbone(backbone_path, mean, std)
        self.store = store_path
        self.max_resident = max_resident
        self.use_lora_group = lora_group
        self.resident: OrderedDict[str, Site] = OrderedDict()
        self.group: Encoder | None = None  # peft LoRA model on a shared-weight copy, one adapter per site
        self.loads = 0  # cold loads so far (benchmarks read it)

    # -- residency ---------------------------------------------------------------------------------
    def site(self, name: str) -> Site:
        """The resident site (loading it, and evicting the least recently used, if needed)."""
        if name in self.resident:
            self.resident.move_to_end(name)
            return self.resident[name]
        site = self._load(adapter_store.current(self.store, name))
        self._make_room(1)
        self.resident[name] = site
        return site

    def reload(self, name: str) -> tuple[str | None, str]:
        """Serve the store's current version of ``name``; the old one is dropped only after the new one
        loaded. Returns (old version or None, new version)."""
        sv = adapter_store.current(self.store, name)
        old = self.resident.get(name)
        if old is not None and old.version == sv.version:
            return old.version, sv.version
        new = self._load(sv)
        if old is not None:
            self._drop(self.resident.pop(name))
        else:
            self._make_room(1)
        self.resident[name] = new
        return (old.version if old else None), new.version

    def evict(self, name: str) -> None:
        """Unload a resident site (the next request loads it again from the store)."""
        if name in self.resident:
            self._drop(self.resident.pop(name))

    def _make_room(self, n: int) -> None:
        while len(self.resident) + n > self.max_resident:
            _, site = self.resident.popitem(last=False)
            self._drop(site)

    def _drop(self, site: Site) -> None:
        if site.encoder is None:
            self._remove_from_group(site.adapter_name)

    def _remove_from_group(self, name: str) -> None:
        if self.group is None:
            return
        if len(self.group.model.peft_config) == 1:
            self.group = None  # peft keeps at least one adapter: drop the whole group copy instead
        else:
            with warnings.catch_warnings():  # "was active, now deleted": the active adapter is never used here
                warnings.simplefilter("ignore")
                self.group.model.delete_adapter(name)

    def _load(self, sv: adapter_store.SiteVersion) -> Site:
        card = sv.card
        verify_backbone(card, self.info, str(sv.path))
        if card.get("task", {}).get("type") not in SERVED_TASKS or "input" not in card:
            raise TppError(f"'{sv.path}' has no task head; only fine-tuned adapters are served.")
        head = load_head(sv.path, card, self.info.hidden_size)
        state = read_weights(sv.path, card)
        self.loads += 1
        if self.use_lora_group and in_lora_group(card):
            name = f"{sv.site}__{sv.version}"
            self._add_to_group(name, card, state, str(sv.path))
            return Site(sv.site, sv.version, card, head, None, name)
        encoder = Encoder(share_weights_copy(self.encoder.model), self.encoder.family)
        attach_adapter(encoder, card["method"], card["options"], card["target_modules"])
        load_adapter_state(encoder, state, str(sv.path))
        encoder.eval()
        return Site(sv.site, sv.version, card, head, encoder)

    def _add_to_group(self, name: str, card: dict, state: dict, source: str) -> None:
        from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

        from tpp.adapters import get_method
        from tpp.adapters.lora import lora_config

        config = lora_config(get_method("lora").options_cls(**card["options"]), card["target_modules"])
        if self.group is None:
            model = get_peft_model(share_weights_copy(self.encoder.model), config, adapter_name=name)
            self.group = Encoder(model, self.encoder.family)
        else:
            self.group.model.add_adapter(name, config)
        self.group.eval()
        set_peft_model_state_dict(self.group.model, state, adapter_name=name)
        loaded = get_peft_model_state_dict(self.group.model, adapter_name=name)
        if set(loaded) != set(state) or any(not torch.equal(loaded[k], state[k]) for k in state):
            self._remove_from_group(name)
            raise TppError(f"adapter '{source}' did not load exactly into the LoRA group (keys or values differ).")

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
            batch = self._predict_batch([sites[i] for i in index], torch.cat([rows[i] for i in index]))
            for i, result in zip(index, batch):
                out[i] = result
        return out

    def _predict_batch(self, sites: list[Site], pixels: torch.Tensor) -> list[torch.Tensor]:
        """Rows of one input size (B, C, S, S). LoRA-group rows run as one batch with per-row
        ``adapter_names``; every other site's rows run as one sub-batch through its own copy."""
        rows_of: dict[int, list[int]] = {}
        for i, s in enumerate(sites):
            rows_of.setdefault(id(s), []).append(i)
        tokens = torch.empty(pixels.shape[0], self.encoder.num_patches(pixels), self.info.hidden_size)
        group_rows = [i for i, s in enumerate(sites) if s.encoder is None]
        if group_rows:
            out = self.group(pixels[group_rows], adapter_names=[sites[i].adapter_name for i in group_rows])
            tokens[group_rows] = self.group.patch_tokens(out)
        results: list = [None] * len(sites)
        for rows in rows_of.values():
            site = sites[rows[0]]
            if site.encoder is not None:
                tokens[rows] = site.encoder.patch_tokens(site.encoder(pixels[rows]))
            for row, r in zip(rows, head_outputs(site, tokens[rows], pixels[rows], self.encoder)):
                results[row] = r
        return results


def head_outputs(site: Site, tokens: torch.Tensor, pixels: torch.Tensor, encoder: Encoder) -> torch.Tensor:
    """Probabilities (B, K) for a classification site; masks (B, h, w) uint8 for a segmentation site."""
    if site.task == "segmentation":
        from tpp.segmentation import to_mask_size

        logits = site.head(tokens, encoder.grid(pixels), pixels)
        return to_mask_size(logits, site.card["task"]["mask_size"]).argmax(dim=1).to(torch.uint8)
    return site.head(tokens).softmax(dim=-1)
