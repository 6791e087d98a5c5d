"""Training-free in-context predictors: pure functions of context features, context labels and query features.

Classification (K context examples, C classes, D feature dims, Q queries):

- ``prototype``: nearest class centroid by cosine similarity; ``knn``: the k most similar context examples
  vote with weights ``exp(similarity / T)``.
- Features are centred on the context mean and L2-normalised first (so that similarities spread over
  [-1, 1] instead of crowding near 1, as raw ViT features do).
- The softmax temperature ``T`` is chosen on the context set itself by leave-one-out: each context example is
  predicted from the others and the T of least mean negative log-likelihood on a fixed log grid wins. The
  centring mean is the whole context's, left-out example included (a 1/K share of the mean; exact
  leave-one-out would re-centre and re-normalise K times). Only T is chosen this way, never a test score.

Segmentation (binary: background / foreground): per-patch-token prototypes. Context masks are brought to the
patch grid by area averaging (the foreground fraction of each patch); the foreground prototype is the
fraction-weighted mean of context patch tokens, the background one the (1 - fraction)-weighted mean. Each query
token gets a softmax over its two cosine similarities; the (h, w) probability grid is upsampled bilinearly to
the image size. ``knn`` instead averages the foreground fractions of the k most similar context tokens.

Nothing here has parameters or changes any: the results depend only on the sets, never on their order
(up to float rounding).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tpp.errors import TppError

METHODS = ("prototype", "knn")
TEMPERATURES = torch.logspace(-3, 0, 31)  # the leave-one-out grid (cosine similarities lie in [-1, 1])
DEFAULT_T = 0.1  # when no context example can be left out (one example per class)
EPS = 1e-6  # probability floor of kNN (a class none of the k neighbours has)


def check_method(method: str) -> str:
    if method not in METHODS:
        raise TppError(f"in-context method {method!r} is not one of {', '.join(METHODS)}.")
    return method


def default_k(n: int) -> int:
    """Neighbours of kNN for ``n`` context items: about sqrt(n), at least 1, at most 20."""
    return max(1, min(20, round(math.sqrt(n))))


def centre(context: torch.Tensor, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(K, D), (Q, D) -> both centred on the context mean and L2-normalised (float32)."""
    mean = context.float().mean(0, keepdim=True)
    return F.normalize(context.float() - mean, dim=-1), F.normalize(queries.float() - mean, dim=-1)


# -- classification ---------------------------------------------------------------------------------------

def _prototype_logp(sims: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Cosine similarities to the C prototypes (..., C) and temperatures (T,) -> log-probabilities (T, ..., C)."""
    return torch.log_softmax(sims[None] / t.view(-1, *([1] * sims.dim())), dim=-1)


def _knn_logp(sims: torch.Tensor, onehot: torch.Tensor, k: int, t: torch.Tensor) -> torch.Tensor:
    """Similarities to the context (Q, K) (``-inf`` = not a neighbour), one-hot labels (K, C), temperatures (T,)
    -> log-probabilities (T, Q, C): the k nearest vote with weights exp(s / T), floored at EPS."""
    top, index = sims.topk(min(k, sims.shape[1]), dim=1)  # (Q, k)
    labels = onehot[index]  # (Q, k, C)
    scaled = top[None] / t.view(-1, 1, 1)  # (T, Q, k)
    weights = torch.softmax(scaled, dim=-1)
    weights = torch.where(torch.isfinite(top)[None], weights, torch.zeros_like(weights))
    probs = torch.einsum("tqk,qkc->tqc", weights, labels)
    probs = probs / probs.sum(-1, keepdim=True).clamp_min(1e-12)
    return torch.log((1 - EPS * onehot.shape[1]) * probs + EPS)


def _centroids(features: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
    """(K, D), (K, C) -> normalised class means (C, D)."""
    return F.normalize(onehot.T @ features / onehot.sum(0)[:, None].clamp_min(1), dim=-1)


def loo_temperature(features: torch.Tensor, labels: torch.Tensor, num_classes: int, method: str,
                    k: int | None = None) -> float:
    """Temperature of least leave-one-out NLL on the context set (centred features (K, D), labels (K,)).

    Prototype: example i against centroids that leave it out (examples alone in their class are not scored).
    kNN: example i against its k nearest other examples. Without any scorable example: ``DEFAULT_T``."""
    onehot = F.one_hot(labels, num_classes).float()
    counts = onehot.sum(0)
    scorable = counts[labels] > 1  # (K,)
    if not bool(scorable.any()):
        return DEFAULT_T
    if method == "prototype":
        sums = onehot.T @ features  # (C, D)
        own = sums[labels] - features  # each example's class sum without itself (K, D)
        others = sums[None].expand(len(labels), -1, -1).clone()  # (K, C, D)
        others[torch.arange(len(labels)), labels] = own
        sizes = counts[None].expand(len(labels), -1) - onehot
        cents = F.normalize(others / sizes[..., None].clamp_min(1), dim=-1)
        sims = torch.einsum("kd,kcd->kc", features, cents)
        sims = torch.where(sizes > 0, sims, torch.full_like(sims, -1e4))  # a class left empty cannot win
        logp = _prototype_logp(sims, TEMPERATURES)  # (T, K, C)
    else:
        sims = features @ features.T
        sims.fill_diagonal_(float("-inf"))
        logp = _knn_logp(sims, onehot, k or default_k(len(labels) - 1), TEMPERATURES)
    nll = -(logp.gather(-1, labels[None, :, None].expand(len(TEMPERATURES), -1, 1))[..., 0])  # (T, K)
    score = nll[:, scorable].mean(1)
    return float(TEMPERATURES[int(torch.argmin(score))])


def classify(context: torch.Tensor, labels: torch.Tensor, num_classes: int, queries: torch.Tensor,
             method: str = "prototype", k: int | None = None, t: float | None = None) -> tuple[torch.Tensor, float]:
    """Class probabilities of the queries.

    ``context`` (K, D) features, ``labels`` (K,) class indices 0..C-1 (every class present), ``queries``
    (Q, D); ``t``: a temperature this context already calibrated (else calibrated here). Returns
    (probabilities (Q, C), the temperature)."""
    check_method(method)
    present = torch.bincount(labels, minlength=num_classes)
    if num_classes < 2 or bool((present == 0).any()):
        raise TppError(f"a classification context set needs examples of at least two classes and of every class "
                       f"it names (examples per class: {present.tolist()}).")
    ctx, qry = centre(context, queries)
    k = k or default_k(len(labels))
    t = loo_temperature(ctx, labels, num_classes, method, k) if t is None else t
    onehot = F.one_hot(labels, num_classes).float()
    if method == "prototype":
        logp = _prototype_logp(qry @ _centroids(ctx, onehot).T, torch.tensor([t]))[0]
    else:
        logp = _knn_logp(qry @ ctx.T, onehot, k, torch.tensor([t]))[0]
    return logp.exp(), t


# -- segmentation -----------------------------------------------------------------------------------------

def masks_to_grid(masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Binary masks (K, H, W) -> foreground fraction of each patch (K, h * w), raster order (area averaging)."""
    pooled = F.interpolate(masks.float()[:, None], size=grid, mode="area")
    return pooled.flatten(1)


def check_masks(fractions: torch.Tensor) -> None:
    """The context masks hold some foreground and some background on the patch grid (K, N)."""
    if not bool((fractions > 0).any()):
        raise TppError("every context mask is empty: at least one context mask must mark some foreground "
                       "(empty masks are fine next to it).")
    if not bool((fractions < 1).any()):
        raise TppError("every context mask is all foreground: the context needs some background pixels.")


def _seg_prototypes(tokens: torch.Tensor, fractions: torch.Tensor) -> torch.Tensor:
    """Centred tokens (M, D) and foreground fractions (M,) -> normalised [background, foreground] (2, D)."""
    weights = torch.stack([1 - fractions, fractions], dim=1)  # (M, 2)
    return F.normalize(weights.T @ tokens / weights.sum(0)[:, None].clamp_min(1e-12), dim=-1)


def _seg_fg_logp(tokens: torch.Tensor, context: torch.Tensor, fractions: torch.Tensor, method: str, k: int,
                 t: torch.Tensor) -> torch.Tensor:
    """Centred query tokens (Q, D) against the context tokens (M, D) with foreground fractions (M,) ->
    log [p(background), p(foreground)] (T, Q, 2)."""
    if method == "prototype":
        return _prototype_logp(tokens @ _seg_prototypes(context, fractions).T, t)
    soft = torch.stack([1 - fractions, fractions], dim=1)
    return _knn_logp(tokens @ context.T, soft, k, t)


def segment(context_tokens: torch.Tensor, context_masks: torch.Tensor, query_tokens: torch.Tensor,
            grid: tuple[int, int], method: str = "prototype", k: int | None = None,
            t: float | None = None) -> tuple[torch.Tensor, float]:
    """Foreground probability per patch of each query.

    ``context_tokens`` (K, N, D) patch tokens (N = h * w of ``grid``), ``context_masks`` (K, H, W) binary
    masks at the context images' model-input size, ``query_tokens`` (Q, N, D). The temperature is chosen by
    leaving one context image out (in-sample when K = 1) unless ``t`` gives the one this context
    calibrated. Returns (foreground probabilities (Q, h, w), T)."""
    check_method(method)
    fractions = masks_to_grid(context_masks, grid)  # (K, N)
    check_masks(fractions)
    num, n, d = context_tokens.shape
    ctx, qry = centre(context_tokens.reshape(-1, d), query_tokens.reshape(-1, d))
    ctx_k = ctx.view(num, n, d)
    k = k or default_k(num)
    t = _seg_temperature(ctx_k, fractions, method, k) if t is None else t
    logp = _seg_fg_logp(qry, ctx, fractions.flatten(), method, k, torch.tensor([t]))[0]
    return logp[:, 1].exp().view(-1, *grid), t


def _seg_temperature(tokens: torch.Tensor, fractions: torch.Tensor, method: str, k: int) -> float:
    """Least soft-label NLL over the grid of each context image (K, N, D) predicted from the others."""
    num = len(tokens)
    total, scored = torch.zeros(len(TEMPERATURES)), 0
    for i in range(num):
        rest = [j for j in range(num) if j != i] or [i]
        rest_f = fractions[rest].flatten()
        if not (bool((rest_f > 0).any()) and bool((rest_f < 1).any())):
            continue
        logp = _seg_fg_logp(tokens[i], tokens[rest].flatten(0, 1), rest_f, method, k, TEMPERATURES)
        target = torch.stack([1 - fractions[i], fractions[i]], dim=1)  # (N, 2)
        total += -(logp * target[None]).sum(-1).mean(-1)
        scored += 1
    return float(TEMPERATURES[int(torch.argmin(total))]) if scored else DEFAULT_T


def upsample(probabilities: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """One foreground probability grid (h, w) -> (H, W), bilinear."""
    return F.interpolate(probabilities[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
