"""In-context prediction (issue 25): prototype and kNN on frozen features, per-patch prototypes for
segmentation; context sets from folders / CSVs, ``tpp predict --context``, the store and the service."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tpp.errors import TppError
from tpp.incontext import methods
from tpp.incontext.context import CLASSIFICATION, SEGMENTATION, ContextSet, check


def _blobs(n_per_class=(5, 5), d=16, seed=0):
    """Separable features (K, D) and labels (K,): class c around a random centre."""
    rng = torch.Generator().manual_seed(seed)
    centres = torch.randn(len(n_per_class), d, generator=rng) * 3
    feats, labels = [], []
    for c, n in enumerate(n_per_class):
        feats.append(centres[c] + torch.randn(n, d, generator=rng))
        labels += [c] * n
    return torch.cat(feats), torch.tensor(labels), centres


@pytest.mark.parametrize("method", methods.METHODS)
def test_classify_is_order_invariant_and_right(method):
    feats, labels, centres = _blobs((6, 4, 5))
    queries = centres + 0.1
    probs, t = methods.classify(feats, labels, 3, queries, method)
    assert probs.shape == (3, 3) and torch.allclose(probs.sum(1), torch.ones(3), atol=1e-5)
    assert probs.argmax(1).tolist() == [0, 1, 2]
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(3))
    probs_perm, t_perm = methods.classify(feats[perm], labels[perm], 3, queries, method)
    assert t_perm == t
    assert torch.allclose(probs, probs_perm, atol=1e-5)


def test_loo_temperature_is_calibrated_not_a_constant():
    """Well separated classes get a sharper temperature than overlapping ones."""
    sharp, labels, _ = _blobs((8, 8), seed=1)
    noisy = sharp + torch.randn(sharp.shape, generator=torch.Generator().manual_seed(2)) * 6
    t_sharp = methods.loo_temperature(*methods.centre(sharp, sharp[:1])[:1], labels, 2, "prototype")
    t_noisy = methods.loo_temperature(*methods.centre(noisy, noisy[:1])[:1], labels, 2, "prototype")
    assert t_sharp < t_noisy


@pytest.mark.parametrize("method", methods.METHODS)
def test_one_example_per_class_works(method):
    feats, labels, centres = _blobs((1, 1))
    probs, t = methods.classify(feats, labels, 2, centres, method)
    assert t == methods.DEFAULT_T
    assert probs.argmax(1).tolist() == [0, 1]


def test_one_class_is_an_error():
    feats, labels, _ = _blobs((4,))
    with pytest.raises(TppError, match="two classes"):
        methods.classify(feats, labels, 1, feats[:1])
    ctx = ContextSet(CLASSIFICATION, [np.zeros((8, 8), np.uint8)] * 3, ["a"] * 3, names=["x"] * 3, source="ctx")
    with pytest.raises(TppError, match="one class only"):
        check(ctx)


def _seg_world(k=4, size=16, seed=0):
    """Tokens whose foreground patches lie along a direction: (K, N, D) tokens, (K, S, S) masks, grid."""
    rng = torch.Generator().manual_seed(seed)
    grid = (4, 4)
    masks = torch.zeros(k, size, size)
    for i in range(k):
        r, c = (i % 3) * 4, (i % 2) * 4
        masks[i, r:r + 8, c:c + 8] = 1
    fg = methods.masks_to_grid(masks, grid)  # (K, 16)
    direction = torch.randn(8, generator=rng)
    tokens = torch.randn(k, 16, 8, generator=rng) * 0.3 + fg[..., None] * direction * 2
    return tokens, masks, grid, direction


@pytest.mark.parametrize("method", methods.METHODS)
def test_segment_finds_foreground_order_invariant(method):
    tokens, masks, grid, direction = _seg_world()
    query = torch.zeros(1, 16, 8)
    query[0, :4] += direction * 2  # first grid row is foreground
    fg, t = methods.segment(tokens, masks, query, grid, method)
    assert fg.shape == (1, 4, 4)
    assert bool((fg[0, 0] > 0.5).all()) and bool((fg[0, 1:] < 0.5).all())
    perm = torch.tensor([2, 0, 3, 1])
    fg2, t2 = methods.segment(tokens[perm], masks[perm], query, grid, method)
    assert t2 == t and torch.allclose(fg, fg2, atol=1e-5)
    assert methods.upsample(fg[0], (16, 16)).shape == (16, 16)


def test_segment_empty_masks_allowed_unless_all_empty():
    tokens, masks, grid, _ = _seg_world()
    masks[1:] = 0  # one non-empty mask: fine
    fg, _ = methods.segment(tokens, masks, tokens[:1], grid)
    assert fg.shape == (1, 4, 4)
    with pytest.raises(TppError, match="every context mask is empty"):
        methods.segment(tokens, torch.zeros_like(masks), tokens[:1], grid)
    images = [np.zeros((16, 16), np.uint8)] * 2
    ctx = ContextSet(SEGMENTATION, images, masks=[np.zeros((16, 16), np.uint8)] * 2, names=["a", "b"], source="s")
    with pytest.raises(TppError, match="every mask is empty"):
        check(ctx)


def test_segment_with_one_context_image():
    tokens, masks, grid, _ = _seg_world(k=1)
    fg, t = methods.segment(tokens, masks, tokens, grid)
    assert fg.shape == (1, 4, 4) and 0 < t <= 1
    assert bool(((fg[0] > 0.5).float().flatten() == methods.masks_to_grid(masks, grid)[0].round()).all())


def _images(n, size=28, seed=0, bright=0):
    rng = np.random.default_rng(seed)
    return [np.clip(rng.integers(0, 100, (size, size)) + bright, 0, 255).astype(np.uint8) for _ in range(n)]


def _state_hash(module: torch.nn.Module) -> str:
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode() + tensor.detach().cpu().numpy().tobytes())
    return digest.hexdigest()


def test_no_parameter_changes_and_k1_on_a_backbone(tiny_mae):
    from tpp.incontext.features import load_extractor
    from tpp.incontext.predict import prepare

    extractor = load_extractor(str(tiny_mae))
    before = _state_hash(extractor.encoder)
    ctx = check(ContextSet(CLASSIFICATION, _images(1) + _images(1, seed=1, bright=120), ["dark", "light"],
                           names=["a", "b"], source="k1"))
    prepared = prepare(ctx, extractor, "knn")
    probs = prepared.predict(_images(3, seed=5) + _images(3, seed=6, bright=120))
    assert [prepared.classes[int(np.argmax(p))] for p in probs] == ["dark"] * 3 + ["light"] * 3
    masks = [np.zeros((32, 32), np.uint8) for _ in range(2)]
    masks[0][8:24, 8:24] = 1
    seg = check(ContextSet(SEGMENTATION, _images(2, size=32), masks=masks, names=["a", "b"], source="seg"))
    out = prepare(seg, extractor, image_size=32).predict(_images(1, size=40))
    assert out[0].shape == (40, 40) and out[0].dtype == np.uint8
    assert _state_hash(extractor.encoder) == before
    assert not any(p.requires_grad for p in extractor.encoder.parameters())
