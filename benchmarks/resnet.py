"""ResNet-18 (28) from scratch, MedMNIST v2 style: the task-specific reference for the classification suite.

A compact own BasicBlock network (no torchvision / timm in tpp's dependencies): the CIFAR-style ResNet-18 that
MedMNIST v2 trains at 28 px, i.e. a 3x3 stride-1 stem without max-pool, four stages of two BasicBlocks
(64, 128, 256, 512 channels, strides 1, 2, 2, 2), global average pool, one linear layer. Training as in the
paper: cross-entropy, Adam lr 1e-3, batch 128, 100 epochs, lr x0.1 at epochs 50 and 75, no augmentation,
pixels normalised with mean 0.5 and std 0.5; the model of the last epoch is tested (the paper's code picks the
epoch by validation AUC; with few labels there is no big validation set, so the suite keeps the last one, like
every other cell). Input: the image as stored (1 or 3 channels, 28 x 28). Trains on ``device`` (``auto``: a CUDA GPU
where there is one, as tpp's recipes): a GPU finishes in minutes the cells that take hours on a CPU; each cell
records where it ran.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from report import CellPaused

PROTOCOL = {"epochs": 100, "batch_size": 128, "lr": 1e-3, "milestones": [50, 75], "gamma": 0.1,
            "optimizer": "Adam", "augmentation": "none", "normalise": "mean 0.5, std 0.5",
            "selection": "last epoch"}


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and a projected shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    """``forward(x (B, C, H, W)) -> logits (B, K)``; MedMNIST v2's ResNet-18 (28) for ``widths=(64, 128, 256, 512)``
    (11.2 M parameters for 1 input channel and 2 classes); smaller widths give the tests' tiny network."""

    def __init__(self, channels: int, num_classes: int, widths=(64, 128, 256, 512), blocks: int = 2):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(channels, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]),
                                  nn.ReLU())
        layers, cin = [], widths[0]
        for i, width in enumerate(widths):
            for b in range(blocks):
                layers.append(BasicBlock(cin, width, 2 if (b == 0 and i > 0) else 1))
                cin = width
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1).flatten(1))


def pixels(images) -> torch.Tensor:
    """uint8 images (N, H, W) or (N, H, W, C) -> float (N, C, H, W) normalised to [-1, 1] (mean 0.5, std 0.5)."""
    x = torch.from_numpy(images).float().div(255)
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    return (x - 0.5) / 0.5


def evaluate(model: nn.Module, images, labels, batch: int = 256) -> dict:
    """AUROC (macro one-vs-rest for more than two classes, as tpp.metrics) and accuracy on one split (the
    batches on the model's device)."""
    from tpp.metrics import quick_metrics

    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad():
        probs = torch.cat([model(b.to(device)).softmax(1).cpu() for b in pixels(images).split(batch)])
    return quick_metrics(probs, torch.from_numpy(labels).long())


def train_resnet(dataset, fraction: float, seed: int, protocol: dict = PROTOCOL, widths=(64, 128, 256, 512),
                 on_epoch=None, checkpoint: Path | None = None, deadline: float | None = None,
                 device: str = "auto") -> dict:
    """Train on a stratified ``fraction`` of the training labels (the same nested subset as every other cell
    of that seed) and return ``{"test": {"auroc", "accuracy"}, "trainable_parameters", "train_examples",
    "wall_time_s", "epoch_s", "device"}``. ``on_epoch(epoch, seconds)`` is called after each epoch. ``device``: where
    it trains (tpp's ``device`` values; ``auto``: a CUDA GPU where there is one).

    ``checkpoint`` (a ``.pt`` path): the training state is saved there every :data:`SAVE_EVERY_S` seconds and,
    once ``deadline`` (a ``time.time()`` value) has passed, after the epoch in progress, raising
    :class:`report.CellPaused`; a later call with the same arguments continues from it and ends exactly as an
    uninterrupted run would (``wall_time_s`` counts every segment). A checkpoint of another cell or protocol is
    ignored; the file is removed when the cell finishes."""
    from tpp.data.subsets import label_fraction_index
    from tpp.devices import describe, resolve

    start, where = time.time(), resolve(device)
    train = dataset.split("train")
    index = label_fraction_index(train.labels, fraction, dataset.name, seed)
    x, y = pixels(train.images[index]).to(where), torch.from_numpy(train.labels[index]).long().to(where)
    tag = json.dumps([STATE_FORMAT, dataset.name, fraction, seed, protocol, list(widths), len(index)])
    state = TrainingState.fresh(x.shape[1], dataset.num_classes, widths, protocol, seed, tag, where)
    epoch_s, earlier_s = [], 0.0
    if checkpoint is not None:
        try:
            epoch_s, earlier_s = state.restore(checkpoint)
        except Exception as exc:  # noqa: BLE001 (its tag fits but its tensors do not: the network's code changed)
            print(f"  {checkpoint}: does not load into this network ({type(exc).__name__}: {str(exc)[:120]}); "
                  "starting the cell from epoch 0", flush=True)
            checkpoint.unlink(missing_ok=True)
            state = TrainingState.fresh(x.shape[1], dataset.num_classes, widths, protocol, seed, tag, where)
    model, optimizer, schedule, gen = state.model, state.optimizer, state.schedule, state.generator
    saved = time.time()
    for epoch in range(len(epoch_s), protocol["epochs"]):
        t0 = time.time()
        model.train()
        for idx in torch.randperm(len(x), generator=gen).to(where).split(protocol["batch_size"]):
            if len(idx) < 2 and len(x) >= 2:  # batch norm needs two images; a lone last one waits a round
                continue
            loss = F.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        schedule.step()
        epoch_s.append(time.time() - t0)
        if on_epoch:
            on_epoch(epoch, epoch_s[-1])
        last = epoch + 1 == protocol["epochs"]
        if checkpoint is not None and not last and (time.time() - saved > SAVE_EVERY_S
                                                   or (deadline is not None and time.time() > deadline)):
            state.save(checkpoint, epoch_s, earlier_s + time.time() - start)
            saved = time.time()
            if deadline is not None and time.time() > deadline:
                raise CellPaused(f"{dataset.name} resnet18 {fraction:.0%} seed {seed} after epoch {epoch + 1} "
                                 f"of {protocol['epochs']} (its state: {checkpoint}); run again to continue")
    test = dataset.split("test")
    metrics = evaluate(model, test.images, test.labels)
    if checkpoint is not None:
        checkpoint.unlink(missing_ok=True)
        checkpoint.with_suffix(".json").unlink(missing_ok=True)
    return {"test": metrics, "trainable_parameters": sum(p.numel() for p in model.parameters()),
            "train_examples": len(index), "wall_time_s": round(earlier_s + time.time() - start, 1),
            "epoch_s": round(sum(epoch_s) / max(len(epoch_s), 1), 2), "device": describe(where)}


SAVE_EVERY_S = 600.0  # a killed cell loses at most this much training
STATE_FORMAT = "resnet-state/1"  # in every state's tag: a later format starts its cells over


class TrainingState:
    """What continues a ResNet-18 cell exactly: weights, Adam's moments and learning rates, the schedule's epoch,
    the shuffling generator, and the seconds spent; ``tag`` names the cell and protocol it belongs to. Beside
    ``NAME.pt`` a ``NAME.json`` says how many epochs it holds (:func:`epochs_done`)."""

    def __init__(self, model, optimizer, schedule, generator, tag: str):
        self.model, self.optimizer, self.schedule, self.generator, self.tag = model, optimizer, schedule, generator, tag

    @classmethod
    def fresh(cls, channels: int, classes: int, widths, protocol: dict, seed: int, tag: str,
              device: torch.device = torch.device("cpu")) -> "TrainingState":
        """Epoch 0 of a cell: the seeded network (built on the CPU, then moved to ``device``: the same initial
        weights everywhere), Adam, the step schedule and the shuffling generator (on the CPU)."""
        torch.manual_seed(seed)
        model = ResNet18(channels, classes, widths).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=protocol["lr"])
        schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, protocol["milestones"], protocol["gamma"])
        return cls(model, optimizer, schedule, torch.Generator().manual_seed(seed), tag)

    def save(self, path: Path, epoch_s: list[float], elapsed_s: float) -> None:
        """Write the state to ``path`` through a temporary file renamed into place."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        progress = {"epochs_done": len(epoch_s), "tag": self.tag}  # what reports read without loading the state
        try:
            torch.save({"tag": self.tag, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                        "generator": self.generator.get_state(), "epoch_s": list(epoch_s), "elapsed_s": elapsed_s},
                       tmp)
            os.replace(tmp, path)
            tmp.with_suffix(".json").write_text(json.dumps(progress))
            os.replace(tmp.with_suffix(".json"), path.with_suffix(".json"))
        finally:  # a full disk: no temporary file left behind
            tmp.unlink(missing_ok=True)
            tmp.with_suffix(".json").unlink(missing_ok=True)

    def restore(self, path: Path) -> tuple[list[float], float]:
        """Load ``path`` if it holds this cell's state (``weights_only``); (seconds of each finished epoch,
        seconds spent before), or ([], 0.0) when there is nothing to continue (no file, a torn one, another cell's:
        nothing loaded). A state whose tag fits but whose tensors do not raises (part of it may be loaded)."""
        if not path.is_file():
            return [], 0.0
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a torn or foreign file: start the cell again
            print(f"  {path}: unreadable ({exc}); starting the cell from epoch 0", flush=True)
            return [], 0.0
        if not isinstance(saved, dict) or saved.get("tag") != self.tag:
            print(f"  {path}: the state of another cell or protocol; starting the cell from epoch 0", flush=True)
            return [], 0.0
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])  # the learning rates the schedule had set
        self.schedule.last_epoch = len(saved["epoch_s"])
        self.generator.set_state(saved["generator"])
        print(f"  continuing from epoch {len(saved['epoch_s'])} ({path})", flush=True)
        return list(saved["epoch_s"]), float(saved["elapsed_s"])


def epochs_done(path: Path) -> int:
    """Epochs a cell's saved state at ``path`` (``NAME.pt``) holds, from its ``NAME.json``; 0 without one."""
    try:
        return int(json.loads(path.with_suffix(".json").read_text())["epochs_done"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0
