"""Learned in-context models in ``tpp serve`` (``--incontext-model DIR``, at most one per kind): loaded and checked
at start-up as ``tpp predict --context --method learned`` checks them, then used by ``method=learned`` on both
context routes (:mod:`tpp.serve.context`) for sets of their kind.

Checks (a folder is hostile until they pass; any failure is one :class:`~tpp.errors.TppError` naming the folder and
the option, before the service listens): :func:`tpp.incontext.learned.load` (card fields and ranges, the weights
file's header against the architecture, safetensors only), finite weights, a classifier trained on the features
of the served backbone (card hash and feature width), one model per kind. ``learned.load`` reads the weights
file once, checks its sha256 against the card's (format 2; format 1 segmenters record none) and loads those very
bytes; that sha256 is listed (``GET /v1/contexts``) for operators to compare with the model they meant to serve.
The models live on the bank (``bank.incontext_models``: in-process, and on every replica of ``--engine ray``),
frozen and in eval mode; nothing writes into them or into the backbone.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tpp.errors import TppError, UnsupportedRequest

OPTION = "--incontext-model"


class NoLearnedModel(UnsupportedRequest):
    """``method=learned`` for a set of a kind no in-context model was loaded for (the service answers 400)."""


def no_model(kind: str, loaded: list[str]) -> NoLearnedModel:
    """The error for a ``kind`` with no model, saying what is loaded and which option to pass."""
    have = f"only a {' and a '.join(loaded)} model is loaded" if loaded else "no in-context model is loaded"
    return NoLearnedModel(f"method learned needs a learned {kind} in-context model, but {have}: start tpp serve with "
                          f"{OPTION} DIR (the model/ folder of a `tpp run incontext` run with incontext.kind={kind}), "
                          "or ask for method prototype or knn.")


@dataclass
class LoadedModel:
    """One checked in-context model: its kind, folder, frozen network, card and the sha256 of its weights file."""
    kind: str
    path: str
    net: object  # tpp.incontext.learned.SetClassifier | CrossConvNet, eval mode, no gradients
    card: dict
    weights_hash: str

    def describe(self) -> dict:
        """What ``GET /v1/contexts`` and ``GET /v1/sites`` say of it (no paths)."""
        trained = self.card.get("task_distribution", {}).get("backbone", {})
        return {"kind": self.kind, "weights_sha256": self.weights_hash, "holdout": list(self.card.get("holdout", [])),
                "trained_on_backbone": trained.get("hash") or None,
                "parameters": sum(p.numel() for p in self.net.parameters())}


def load_one(path: str, backbone_hash: str, feature_dim: int, device="cpu", expected_hash: str | None = None
             ) -> LoadedModel:
    """Load and check one ``--incontext-model`` folder for a backbone of ``backbone_hash`` whose features have
    ``feature_dim`` entries. ``expected_hash``: refuse unless the weights file still has this sha256 (a Ray
    replica loading what the driver checked)."""
    from tpp.incontext import learned

    folder = Path(path)
    if not folder.is_dir():
        raise TppError(f"{OPTION} '{path}' is not a folder: give the model/ folder of a `tpp run incontext` run.")
    try:
        net, card = learned.load(folder, device)
        kind = card["kind"]
        learned.check_kind(card, kind, str(path), backbone_hash)
    except TppError as exc:
        raise TppError(f"{OPTION} refused: {exc}") from None
    bad = next((name for name, value in net.state_dict().items() if not value.isfinite().all()), None)
    if bad is not None:
        raise TppError(f"{OPTION} refused: in-context model '{path}' has non-finite values (NaN or inf) in tensor "
                       f"{bad}; give the model/ folder a `tpp run incontext` run wrote, unchanged.")
    if kind == "classification" and net.config["feature_dim"] != feature_dim:
        raise TppError(f"{OPTION} refused: in-context model '{path}' reads {net.config['feature_dim']}-dim features "
                       f"but the served backbone gives {feature_dim}; serve it with the model's backbone.")
    digest = net.weights_sha256  # of the bytes the parameters were loaded from
    if expected_hash is not None and digest != expected_hash:
        raise TppError(f"{OPTION} refused: the weights of '{path}' changed after tpp serve checked them; start again "
                       "once the folder is no longer being written.")
    return LoadedModel(kind, str(path), net, card, digest)


def load_models(paths: list[str] | None, backbone_hash: str, feature_dim: int, device="cpu",
                expected: dict[str, str] | None = None) -> dict[str, LoadedModel]:
    """{kind: model} of the ``--incontext-model`` folders; two folders of one kind are refused. ``expected``:
    {folder: weights sha256} the loaded files must still have."""
    models: dict[str, LoadedModel] = {}
    for path in paths or []:
        model = load_one(path, backbone_hash, feature_dim, device, (expected or {}).get(path))
        if model.kind in models:
            raise TppError(f"{OPTION} '{path}' and '{models[model.kind].path}' are both {model.kind} models; give at "
                           "most one model per kind (one classification, one segmentation).")
        models[model.kind] = model
    return models


def on_bank(bank) -> dict[str, LoadedModel]:
    """The models a bank serves (none unless the service loaded some)."""
    return getattr(bank, "incontext_models", None) or {}


def model_for(bank, kind: str) -> LoadedModel:
    """The bank's model of ``kind``; :class:`NoLearnedModel` if there is none."""
    models = on_bank(bank)
    if kind not in models:
        raise no_model(kind, sorted(models))
    return models[kind]


def describe(models: dict[str, LoadedModel]) -> list[dict]:
    return [models[kind].describe() for kind in sorted(models)]


def attach(bank, paths: list[str] | None) -> list[dict]:
    """Load and check ``paths`` for ``bank``'s backbone, on its device, and make them the bank's models; their
    description (for :func:`tpp.serve.server.create_app`)."""
    bank.incontext_models = load_models(paths, bank.info.hash, bank.info.hidden_size, bank.device)
    return describe(bank.incontext_models)


def cache_key(bank) -> tuple:
    """(kind, weights sha256) of every model of the bank: part of a prepared set's cache key under method learned."""
    return tuple((kind, m.weights_hash) for kind, m in sorted(on_bank(bank).items()))
