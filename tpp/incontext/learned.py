"""Learned in-context models (Neuralizer / UniverSeg style): the task comes from a context set of input-output
pairs, answered in one forward pass with no gradient step.

- :class:`SetClassifier`: on frozen backbone features (:class:`tpp.incontext.features.Extractor`). Context
  tokens = projected feature + a label embedding; a few transformer layers let the context tokens attend to
  each other (no positions: permutation-equivariant), then each query token attends to the context and to
  itself only (never to the other queries: an answer does not depend on what else was sent with it); the
  logit of class c is the scaled dot product of a query with the mean of class c's context outputs
  (permutation-invariant, any K, any number of classes up to ``max_classes``). Training permutes the label
  ids per episode, so no label id means anything by itself.
- :class:`CrossConvNet`: segmentation / image-to-image at 64 px in the spirit of UniverSeg's CrossConv: each
  (target, support pair) is convolved jointly, the target is updated with the mean over the S supports, the
  supports with their own outputs; a small U-Net of such blocks gives one output channel (a foreground
  logit, or an intensity logit for image-to-image tasks).

Checkpoints are a folder with ``model.safetensors`` and ``icl_card.json`` (architecture, task distribution,
held-out datasets); :func:`load` reads only those (no pickle).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from tpp.errors import TppError
from tpp.incontext import learned_card
from tpp.capped_read import file_sha256
from tpp.safe_write import finite_json

CARD = "icl_card.json"
WEIGHTS = "model.safetensors"
FORMAT = "tpp-incontext/2"  # /2: the classifier's queries are independent of each other; the card has weights_sha256
KINDS = ("classification", "segmentation")
# formats read per kind: a /1 segmenter is the same network (without the weights hash); a /1 classifier let the
# queries of one call attend to each other, so its answer for an image depended on the other images sent with it
FORMATS = {"classification": (FORMAT,), "segmentation": ("tpp-incontext/1", FORMAT)}


class SetClassifier(nn.Module):
    """``forward(context (B, K, D), labels (B, K) int in [0, C), queries (B, Q, D), num_classes C) -> logits
    (B, Q, C)``. Features are centred on the context mean and L2-normalised first (as the training-free
    methods do), so the model sees the same statistics whatever the backbone's scale."""

    def __init__(self, feature_dim: int, hidden: int = 128, layers: int = 2, heads: int = 4, max_classes: int = 16):
        super().__init__()
        self.config = {"feature_dim": feature_dim, "hidden": hidden, "layers": layers, "heads": heads,
                       "max_classes": max_classes}
        self.max_classes = max_classes
        self.proj = nn.Sequential(nn.Linear(feature_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.label = nn.Embedding(max_classes, hidden)
        self.context_layers = nn.ModuleList(
            nn.TransformerEncoderLayer(hidden, heads, 2 * hidden, dropout=0.0, batch_first=True, norm_first=True)
            for _ in range(layers))
        self.query_layers = nn.ModuleList(
            nn.TransformerDecoderLayer(hidden, heads, 2 * hidden, dropout=0.0, batch_first=True, norm_first=True)
            for _ in range(layers))
        self.norm_c, self.norm_q = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.scale = nn.Parameter(torch.tensor(math.log(10.0)))

    def forward(self, context: torch.Tensor, labels: torch.Tensor, queries: torch.Tensor,
                num_classes: int) -> torch.Tensor:
        if not 2 <= num_classes <= self.max_classes:
            raise TppError(f"the learned in-context classifier handles 2 to {self.max_classes} classes, got "
                           f"{num_classes}; use --method prototype or knn.")
        mean = context.mean(1, keepdim=True)
        ctx = F.normalize(context - mean, dim=-1)
        qry = F.normalize(queries - mean, dim=-1)
        c = self.proj(ctx) + self.label(labels)  # (B, K, H)
        for layer in self.context_layers:
            c = layer(c)
        c = self.norm_c(c)
        q = self.proj(qry)  # (B, Q, H)
        alone = ~torch.eye(q.shape[1], dtype=torch.bool, device=q.device)  # a query attends to itself only
        for layer in self.query_layers:
            q = layer(q, c, tgt_mask=alone)
        q = self.norm_q(q)
        onehot = F.one_hot(labels, num_classes).to(c.dtype)  # (B, K, C)
        protos = onehot.transpose(1, 2) @ c / onehot.sum(1)[..., None].clamp_min(1)  # (B, C, H)
        protos = protos + self.label.weight[:num_classes]
        return self.scale.exp() * torch.einsum("bqh,bch->bqc", F.normalize(q, dim=-1), F.normalize(protos, dim=-1))


def _conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(4, cout), nn.GELU())


class CrossBlock(nn.Module):
    """One CrossConv block: target (B, C, H, W) and supports (B, S, C, H, W) -> (B, O, H, W), (B, S, O, H, W)."""

    def __init__(self, cin_target: int, cin_support: int, cout: int):
        super().__init__()
        self.cross = _conv(cin_target + cin_support, cout)
        self.target = _conv(cout, cout)
        self.support = _conv(cout, cout)

    def forward(self, target: torch.Tensor, support: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, s = support.shape[:2]
        pairs = torch.cat([target[:, None].expand(-1, s, -1, -1, -1), support], dim=2).flatten(0, 1)
        z = self.cross(pairs)  # (B * S, O, H, W)
        t = self.target(z.view(b, s, *z.shape[1:]).mean(1))  # the permutation-invariant aggregation
        u = self.support(z).view(b, s, *z.shape[1:])
        return t, u


class CrossConvNet(nn.Module):
    """``forward(target (B, 1, H, W), support_images (B, S, 1, H, W), support_labels (B, S, 1, H, W)) ->
    logits (B, 1, H, W)``; H, W a multiple of 2 ** (levels - 1). Inputs in [0, 1]."""

    def __init__(self, channels: tuple[int, ...] = (16, 32, 32, 32)):
        super().__init__()
        self.config = {"channels": list(channels)}
        self.down = nn.ModuleList()
        ct, cs = 1, 2
        for c in channels:
            self.down.append(CrossBlock(ct, cs, c))
            ct = cs = c
        self.up = nn.ModuleList()
        for skip in reversed(channels[:-1]):
            self.up.append(CrossBlock(ct + skip, cs + skip, skip))
            ct = cs = skip
        self.out = nn.Conv2d(ct, 1, 1)

    def forward(self, target: torch.Tensor, support_images: torch.Tensor,
                support_labels: torch.Tensor) -> torch.Tensor:
        t, s = target, torch.cat([support_images, support_labels], dim=2)
        skips = []
        for i, block in enumerate(self.down):
            t, s = block(t, s)
            if i < len(self.down) - 1:
                skips.append((t, s))
                t, s = F.avg_pool2d(t, 2), _pool_support(s)
        for block, (st, ss) in zip(self.up, reversed(skips)):
            t = F.interpolate(t, scale_factor=2, mode="bilinear", align_corners=False)
            s = _up_support(s)
            t, s = block(torch.cat([t, st], 1), torch.cat([s, ss], 2))
        return self.out(t)


def _pool_support(s: torch.Tensor) -> torch.Tensor:
    b, n = s.shape[:2]
    return F.avg_pool2d(s.flatten(0, 1), 2).view(b, n, *s.shape[2:3], s.shape[3] // 2, s.shape[4] // 2)


def _up_support(s: torch.Tensor) -> torch.Tensor:
    b, n = s.shape[:2]
    up = F.interpolate(s.flatten(0, 1), scale_factor=2, mode="bilinear", align_corners=False)
    return up.view(b, n, *up.shape[1:])


def build(kind: str, config: dict) -> nn.Module:
    """A fresh model of ``kind`` from its architecture ``config`` (as the card stores it)."""
    if kind == "classification":
        return SetClassifier(**config)
    if kind == "segmentation":
        return CrossConvNet(tuple(config["channels"]))
    raise TppError(f"unknown in-context model kind {kind!r}; one of {', '.join(KINDS)}.")


def save(model: nn.Module, kind: str, path: Path, card: dict) -> None:
    """Write ``model.safetensors`` + ``icl_card.json`` into the folder ``path`` (created if needed)."""
    from safetensors.torch import save_file

    Path(path).mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(Path(path) / WEIGHTS))
    full = {"format": FORMAT, "kind": kind, "architecture": model.config, **card,
            "weights_sha256": file_sha256(Path(path) / WEIGHTS)}
    (Path(path) / CARD).write_text(json.dumps(finite_json(full), indent=2, allow_nan=False))


def load(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """(model in eval mode with frozen parameters, its card) from a model folder or a run folder holding
    ``model/``. Every problem is a TppError naming the path: the card is checked (:mod:`learned_card`) and the
    model built on the meta device and matched against the weights file's header before any memory is taken;
    the weights file is then read once, its sha256 checked against the card's and those same bytes loaded
    (``model.weights_sha256``). Format 1 segmenters have no recorded hash (nothing to check it against)."""
    import hashlib

    from safetensors import SafetensorError
    from safetensors.torch import load as safetensors_load

    folder = Path(path)
    if (folder / "model" / CARD).is_file():
        folder = folder / "model"
    if not (folder / CARD).is_file() or not (folder / WEIGHTS).is_file():
        raise TppError(f"in-context model '{path}' is not a folder with {CARD} and {WEIGHTS}; give the model/ "
                       "folder of a `tpp run incontext` run (or the run folder).")
    try:
        card = learned_card.read_card(folder / CARD, FORMATS)
        with torch.device("meta"):  # no memory until the weights file is known to fit
            model = build(card["kind"], card["architecture"])
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        learned_card.check_header(folder / WEIGHTS, expected)
        raw = learned_card.read_weights(folder / WEIGHTS, expected)  # the bytes hashed are the bytes loaded
        digest = hashlib.sha256(raw).hexdigest()
        if "weights_sha256" in card or card["format"] == FORMAT:
            learned_card.check_hash(card.get("weights_sha256"), digest, WEIGHTS)
        state = {k: v.float() for k, v in safetensors_load(raw).items()}
        model.load_state_dict(state, strict=True, assign=True)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as exc:
        what = str(exc) if type(exc) is ValueError else f"{type(exc).__name__}: {exc}"
        raise TppError(f"in-context model '{folder}' cannot be read ({what}); give the model/ folder a "
                       "`tpp run incontext` run wrote, unchanged.") from None
    model.to(device).eval().requires_grad_(False)
    model.weights_sha256 = digest  # of the bytes the parameters came from
    return model, card


def parameter_hash(model: nn.Module) -> str:
    """sha256 over every parameter and buffer (name, shape, bytes): equal before and after prediction."""
    import hashlib

    digest = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        digest.update(name.encode() + str(tuple(value.shape)).encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


# -- prediction (no gradient, no parameter change) ----------------------------------------------------------

def check_kind(card: dict, task: str, path: str, backbone_hash: str | None = None) -> None:
    """The model was trained for ``task``; a classifier also on the features of the backbone in use."""
    if card.get("kind") != task:
        raise TppError(f"in-context model '{path}' is a {card.get('kind')} model but the context set is a {task} "
                       f"task; give a model trained with incontext.kind={task}.")
    trained = card.get("task_distribution", {}).get("backbone", {})
    if task == "classification" and backbone_hash and trained.get("hash") and trained["hash"] != backbone_hash:
        raise TppError(f"in-context model '{path}' was trained on features of backbone {trained.get('id')} (hash "
                       f"{trained['hash'][:12]}), not of the backbone in use (hash {backbone_hash[:12]}); use "
                       "--backbone with the model's backbone.")


@torch.no_grad()
def classify(model: SetClassifier, context: torch.Tensor, labels: torch.Tensor, num_classes: int,
             queries: torch.Tensor) -> torch.Tensor:
    """Context features (K, D), labels (K,) in [0, C), query features (Q, D) -> probabilities (Q, C).

    The logits are averaged over the C cyclic relabellings of the classes (class c answered under id
    (c + r) mod C, r = 0..C-1), so the answer does not depend on which id each class got: training permutes
    the ids per episode, but a briefly trained model can still keep a preference for an id."""
    device = next(model.parameters()).device
    context, labels, queries = context[None].to(device), labels[None].to(device), queries[None].to(device)
    total = 0
    for shift in range(num_classes):
        logits = model(context, (labels + shift) % num_classes, queries, num_classes)[0].float()  # (Q, C)
        total = total + logits.roll(-shift, dims=-1)  # column c <- id (c + shift) mod C
    return torch.softmax(total / num_classes, dim=-1).cpu()


@torch.no_grad()
def segment(model: CrossConvNet, images: torch.Tensor, masks: torch.Tensor, queries: torch.Tensor,
            chunk: int = 8) -> torch.Tensor:
    """Context images (K, S, S) and binary masks (K, S, S), query images (Q, S, S), all in [0, 1] ->
    foreground probabilities (Q, S, S)."""
    device = next(model.parameters()).device
    support_images = images[None, :, None].to(device)
    support_labels = masks[None, :, None].float().to(device)
    out = []
    for start in range(0, len(queries), chunk):
        target = queries[start:start + chunk, None].to(device)
        b = len(target)
        logits = model(target, support_images.expand(b, -1, -1, -1, -1), support_labels.expand(b, -1, -1, -1, -1))
        out.append(torch.sigmoid(logits[:, 0].float()).cpu())
    return torch.cat(out)
