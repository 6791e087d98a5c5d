"""Site adapters for the deployment tests: real fine-tuning runs on a tiny backbone, published to a store."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from conftest import make_backbone, make_medmnist

from tpp.cli import main

# site -> extra overrides: plain LoRA (two ranks, shared-batch path); DoRA, a linear probe and LoHa (sub-batches)
SITES = {
    "site_a": ["adapter.r=2", "seed=0"],
    "site_b": ["adapter.r=4", "seed=1"],
    "site_c": ["adapter.r=2", "adapter.use_dora=true", "seed=2"],
    "site_d": ["adapter={method: linear_probe}", "seed=3"],
    "site_e": ["adapter={method: loha, r: 2}", "seed=4"],  # LoHa: peft has no mixed batches for it
}


def finetune_site(backbone: Path, root: Path, out: Path, extra: list[str]) -> Path:
    code = main(["run", "finetune", "--config", "breast_us/mae_vit_tiny_lora_finetune.yaml",
                 f"backbone.path={backbone}", f"data.root={root}", f"output_dir={out}", "train.max_steps=6",
                 "train.batch_size=16", "train.lr=1e-2", *extra])
    assert code == 0
    return out


def build_store(base: Path) -> dict:
    """A tiny backbone, four fine-tuned sites published to ``base/store``, and test images."""
    from tpp import store

    backbone = make_backbone(base / "backbone", "vit_mae")
    root = make_medmnist(base / "data")
    runs = {site: finetune_site(backbone, root, base / "runs" / site, extra) for site, extra in SITES.items()}
    for site, run in runs.items():
        store.publish(run, base / "store", site)
    images = np.load(root / "breastmnist.npz")["test_images"][:12]
    return {"backbone": backbone, "root": root, "runs": runs, "store": base / "store", "images": images}


def offline_probs(backbone: Path, adapter: Path, images: np.ndarray) -> torch.Tensor:
    """Reference: the evaluate recipe's model (one adapter, no bank) on uint8 images (N, H, W)."""
    from tpp.images import to_model_input
    from tpp.recipes.evaluate import load_task_model

    model, card, _ = load_task_model(str(adapter), str(backbone))
    x = torch.cat([to_model_input(im, card["input"]) for im in images])
    with torch.no_grad():
        return model(x).softmax(-1)
