"""The episodic task distribution of the learned in-context models (leave-one-dataset-out).

Classification: every MedMNIST file under ``DATA_ROOT/medmnist`` that is not held out gives tasks of two kinds,
both on frozen backbone features: a random subset of C of its classes, and one class against the rest
(binary). Each episode draws K examples per class as its context and ``queries`` per class to answer; the
label ids are permuted per episode.

Segmentation (64 px): BUSI lesion masks (``seg/busi_64.npz``) unless held out, and the synthetic tasks of
:mod:`tpp.incontext.synthetic` on unlabeled images of every dataset not held out (MedMNIST files, MedNIST,
BUSI images): shapes, thresholded intensity, superpixel regions, and image-to-image denoising / inpainting.

Held-out datasets are never read: :func:`dataset_names` drops them before any file opens, and every episode
records the datasets it came from (``sources``) so a test can check it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tpp.errors import TppError
from tpp.incontext import synthetic

MEDMNIST = "medmnist"
BUSI_FILE = "seg/busi_64.npz"
MEDNIST_FILE = "mednist/mednist_64_every5th.npz"
ALIASES = {"breastmnist": {"busi"}, "busi": {"breastmnist"}}  # the same ultrasound images at two sizes


def dataset_name(path: Path) -> str:
    """``bloodmnist.npz`` / ``dermamnist_jpeg.npz`` -> ``bloodmnist`` / ``dermamnist``."""
    return path.name.split(".")[0].removesuffix("_jpeg")


def canonical(name: str) -> str:
    """A holdout entry as datasets are named here: ``BreastMNIST``, ``dermamnist_jpeg``, ``bloodmnist.npz``
    -> ``breastmnist``, ``dermamnist``, ``bloodmnist`` (the flag, the file and its stem name one dataset)."""
    return dataset_name(Path(str(name).strip().lower()))


def held_out(name: str, holdout: list[str]) -> bool:
    """A dataset is held out when it or an alias of the same images is listed."""
    names = {name} | ALIASES.get(name, set())
    return bool(names & {canonical(h) for h in holdout})


def drawable(root: Path) -> list[str]:
    """The datasets under ``root`` the task distribution can draw from (the MedMNIST files of either kind,
    MedNIST and BUSI for segmentation), found by file name alone: nothing is opened."""
    root = Path(root)
    folder = root / MEDMNIST
    names = {dataset_name(p) for p in folder.glob("*.npz")} if folder.is_dir() else set()
    names |= {name for name, file in (("mednist", MEDNIST_FILE), ("busi", BUSI_FILE)) if (root / file).is_file()}
    return sorted(names)


def check_holdout(holdout: list[str], root: Path | None) -> None:
    """A ConfigError naming every ``incontext.holdout`` entry that names no dataset: neither one under
    ``root`` (None: not known yet) nor an alias of one, nor an official MedMNIST flag, MedNIST or BUSI. A
    misspelt name would otherwise hold out nothing and train on the dataset meant to be held out."""
    import difflib

    from tpp.data.medmnist_download import MD5
    from tpp.errors import ConfigError

    present = drawable(root) if root is not None else []
    known = set(present) | set(MD5) | {"mednist", "busi"}
    known |= {alias for name in set(known) for alias in ALIASES.get(name, ())}
    unknown = [h for h in holdout if canonical(h) not in known]
    if not unknown:
        return
    shown = present or sorted(known)
    problems = []
    for name in unknown:
        close = difflib.get_close_matches(canonical(name), shown, n=1) or \
            difflib.get_close_matches(canonical(name), sorted(known), n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        problems.append(f"incontext.holdout: {name!r} names no dataset, so it would hold out nothing; {hint}"
                        f"datasets{f' under {root}' if present else ''}: {', '.join(shown)}"
                        f"{' (or any MedMNIST flag)' if present else ''}.")
    raise ConfigError("\n".join(problems))


def dataset_names(root: Path, holdout: list[str]) -> dict[str, Path]:
    """{name: file} of the MedMNIST files under ``root/medmnist`` that are not held out."""
    folder = Path(root) / MEDMNIST
    if not folder.is_dir():
        raise TppError(f"no MedMNIST folder '{folder}': set data.root (or TPP_DATA_ROOT) to a folder holding "
                       "medmnist/*.npz.")
    return {dataset_name(p): p for p in sorted(folder.glob("*.npz")) if not held_out(dataset_name(p), holdout)}


# -- classification ---------------------------------------------------------------------------------------

@dataclass
class LabelledFeatures:
    """One dataset's frozen features (N, D) and labels (N,) of its training split."""
    name: str
    features: torch.Tensor
    labels: np.ndarray

    @property
    def classes(self) -> np.ndarray:
        return np.unique(self.labels)


def classification_pool(root: Path, holdout: list[str], extractor, per_class: int, seed: int,
                        log=print) -> list[LabelledFeatures]:
    """Features of at most ``per_class`` training images per class of every dataset not held out."""
    pool = []
    for name, path in dataset_names(root, holdout).items():
        data = np.load(path)
        labels = data["train_labels"].reshape(len(data["train_labels"]), -1)[:, 0]
        rng = np.random.default_rng(seed)
        keep = np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class]
                                       for c in np.unique(labels)]))
        images = data["train_images"][keep]
        rule = extractor.rule(3 if images.ndim == 4 else 1)
        pool.append(LabelledFeatures(name, extractor.features(list(images), rule), labels[keep]))
        log(f"{name}: {len(keep)} images, {len(np.unique(labels))} classes")
    if not pool:
        raise TppError(f"every MedMNIST dataset under '{root}' is held out ({', '.join(holdout)}); nothing to train "
                       "on.")
    return pool


@dataclass
class ClassificationBatch:
    """``context`` (B, C * K, D), ``labels`` (B, C * K), ``queries`` (B, C * Q, D), ``targets`` (B, C * Q)."""
    context: torch.Tensor
    labels: torch.Tensor
    queries: torch.Tensor
    targets: torch.Tensor
    num_classes: int
    sources: list[str]


def classification_batch(rng: np.random.Generator, pool: list[LabelledFeatures], batch: int, max_classes: int,
                         max_k: int, queries: int, one_vs_rest: float) -> ClassificationBatch:
    """``batch`` episodes sharing C (2 .. ``max_classes``, half of them binary) and K per class (1 .. ``max_k``,
    log-uniform)."""
    most = min(max_classes, max(len(d.classes) for d in pool))
    c = 2 if rng.random() < 0.5 or most == 2 else int(rng.integers(3, most + 1))
    k = int(np.clip(np.round(2 ** rng.uniform(0, np.log2(max_k))), 1, max_k))
    fits = [d for d in pool if len(d.classes) >= c]
    ctx, lab, qry, tgt, sources = [], [], [], [], []
    for _ in range(batch):
        data = fits[rng.integers(len(fits))]
        groups = _class_groups(rng, data, c, c == 2 and rng.random() < one_vs_rest)
        perm = rng.permutation(c)  # label ids mean nothing by themselves
        picks = [rng.choice(g, k + queries, replace=len(g) < k + queries) for g in groups]
        ctx.append(torch.cat([data.features[p[:k]] for p in picks]))
        qry.append(torch.cat([data.features[p[k:]] for p in picks]))
        lab.append(torch.as_tensor(np.repeat(perm, k)))
        tgt.append(torch.as_tensor(np.repeat(perm, queries)))
        sources.append(data.name)
    return ClassificationBatch(torch.stack(ctx), torch.stack(lab).long(), torch.stack(qry), torch.stack(tgt).long(),
                               c, sources)


def _class_groups(rng, data: LabelledFeatures, c: int, one_vs_rest: bool) -> list[np.ndarray]:
    """Example indices per task class: C random classes, or one class and all the others."""
    chosen = rng.choice(data.classes, 1 if one_vs_rest else c, replace=False)
    groups = [np.flatnonzero(data.labels == v) for v in chosen]
    if one_vs_rest:
        groups.append(np.flatnonzero(data.labels != chosen[0]))
    return groups


# -- segmentation / image-to-image ------------------------------------------------------------------------

@dataclass
class SegmentationPool:
    """Unlabeled images (M, S, S) in [0, 1] (with the dataset of each), and BUSI image-mask pairs unless held
    out."""
    images: np.ndarray
    image_sources: list[str]
    busi_images: np.ndarray | None
    busi_masks: np.ndarray | None

    @property
    def index(self) -> dict[str, np.ndarray]:
        """{dataset: indices of its images in ``images``}."""
        if "_index" not in self.__dict__:
            names = np.asarray(self.image_sources)
            self.__dict__["_index"] = {n: np.flatnonzero(names == n) for n in np.unique(names).tolist()}
        return self.__dict__["_index"]

    def describe(self) -> dict:
        names, counts = np.unique(self.image_sources, return_counts=True)
        return {"unlabeled_images": dict(zip(names.tolist(), counts.tolist())),
                "busi_pairs": 0 if self.busi_images is None else len(self.busi_images)}


def to_gray(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 (M, H, W) or (M, H, W, 3) -> float32 (M, size, size) in [0, 1] (channel mean, bilinear)."""
    x = torch.as_tensor(images, dtype=torch.float32) / 255
    if x.dim() == 4:
        x = x.mean(-1)
    return F.interpolate(x[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0].clamp(0, 1).numpy()


def segmentation_pool(root: Path, holdout: list[str], per_dataset: int, size: int, seed: int,
                      log=print) -> SegmentationPool:
    """Up to ``per_dataset`` training images of every dataset not held out, at ``size`` px."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    chunks, sources = [], []
    files = dict(dataset_names(root, holdout))
    if (root / MEDNIST_FILE).is_file() and not held_out("mednist", holdout):
        files["mednist"] = root / MEDNIST_FILE
    for name, path in files.items():
        data = np.load(path)
        images = data["train_images"] if "train_images" in data.files else data["images"]
        pick = np.sort(rng.permutation(len(images))[:per_dataset])
        chunks.append(to_gray(images[pick], size))
        sources += [name] * len(pick)
        log(f"{name}: {len(pick)} unlabeled images")
    busi_images = busi_masks = None
    if (root / BUSI_FILE).is_file() and not held_out("busi", holdout):
        data = np.load(root / BUSI_FILE)
        busi_images, busi_masks = to_gray(data["images"], size), _masks(data["masks"], size)
        chunks.append(busi_images)
        sources += ["busi"] * len(busi_images)
        log(f"busi: {len(busi_images)} image-mask pairs")
    if not chunks:
        raise TppError(f"no training images left under '{root}' once {', '.join(holdout)} are held out.")
    return SegmentationPool(np.concatenate(chunks), sources, busi_images, busi_masks)


def _masks(masks: np.ndarray, size: int) -> np.ndarray:
    x = torch.as_tensor(masks > 0, dtype=torch.float32)[:, None]
    return (F.interpolate(x, size=(size, size), mode="area")[:, 0] >= 0.5).float().numpy()


@dataclass
class SegmentationBatch:
    """``target`` (B, 1, H, W), ``support_images`` / ``support_labels`` (B, S, 1, H, W), ``truth`` (B, 1, H, W),
    ``regression`` (B,) bool (image-to-image tasks), the task and source of each episode."""
    target: torch.Tensor
    support_images: torch.Tensor
    support_labels: torch.Tensor
    truth: torch.Tensor
    regression: torch.Tensor
    tasks: list[str]
    sources: list[str]


def task_weights(weights: dict, pool: SegmentationPool) -> tuple[list[str], np.ndarray]:
    """Task names and draw probabilities; ``busi`` drops out when it is held out."""
    names = [n for n, w in weights.items() if w > 0 and (n != "busi" or pool.busi_images is not None)]
    if not names:
        raise TppError("incontext.tasks leaves no segmentation task to draw (every weight 0, or only busi while it "
                       "is held out).")
    p = np.array([weights[n] for n in names], dtype=np.float64)
    return names, p / p.sum()


def segmentation_batch(rng: np.random.Generator, pool: SegmentationPool, batch: int, max_support: int,
                       weights: dict) -> SegmentationBatch:
    """``batch`` episodes sharing S (1 .. ``max_support``), each of one task drawn by ``weights``."""
    names, p = task_weights(weights, pool)
    s = int(rng.integers(1, max_support + 1))
    by_source = sorted(pool.index)
    inputs, outputs, tasks, sources = [], [], [], []
    for _ in range(batch):
        task = names[rng.choice(len(names), p=p)]
        if task == "busi":
            index = rng.choice(len(pool.busi_images), s + 1, replace=False)
            x, y = pool.busi_images[index], pool.busi_masks[index]
            used = ["busi"]
        else:
            source = by_source[rng.integers(len(by_source))]  # one dataset's images per episode
            sub = rng.choice(pool.index[source], min(len(pool.index[source]), 64), replace=False)
            x, y = synthetic.GENERATORS[task](rng, pool.images[sub], s + 1)
            used = [source] if task != "shapes" else []  # shapes draws no real image
        inputs.append(x)
        outputs.append(y)
        tasks.append(task)
        sources.append(",".join(used))
    x = torch.as_tensor(np.stack(inputs))[:, :, None]  # (B, S + 1, 1, H, W)
    y = torch.as_tensor(np.stack(outputs))[:, :, None]
    regression = torch.tensor([t in synthetic.REGRESSION_TASKS for t in tasks])
    return SegmentationBatch(x[:, -1], x[:, :-1], y[:, :-1], y[:, -1], regression, tasks, sources)
